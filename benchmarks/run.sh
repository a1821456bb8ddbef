#!/usr/bin/env bash
# Builds and runs the side-by-side comparison (release profile), printing a
# markdown table. COMPARE_ENTRIES (default 1000000) sizes bulk load, reopen
# and memory; COMPARE_DIR (default: a temp dir here) is where files go.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --quiet --manifest-path legacy/Cargo.toml
cargo build --release --quiet --manifest-path compare/Cargo.toml
export LEGACY_BIN="$PWD/legacy/target/release/persistent-map-legacy-bench"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -sr)" >&2
compare/target/release/persistent-map-compare

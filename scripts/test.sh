#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test (unit,
# integration, conformance, doctests), docs without warnings, each crate
# checked on its own so none compiles only thanks to another's features, and
# each published crate packaged and built from its package.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, warnings denied)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "tests (against real PostgreSQL and Redis servers, found or started by scripts/test-servers.sh)"
export PERSISTENT_MAP_REQUIRE_SERVERS=1
if cargo nextest --version >/dev/null 2>&1; then
    ./scripts/test-servers.sh sh -c \
        'cargo nextest run --workspace --all-features --no-fail-fast && cargo test --workspace --all-features --doc'
else
    ./scripts/test-servers.sh cargo test --workspace --all-features --no-fail-fast
fi

step "cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps

step "each crate on its own"
for package in persistent-map-core persistent-map-memory persistent-map-sqlite \
    persistent-map-csv persistent-map-server-support persistent-map-postgres persistent-map-redis \
    persistent-map-conformance persistent-map-cli; do
    cargo check --quiet -p "$package"
done
cargo check --quiet -p persistent-map-core --features metrics
cargo check --quiet -p persistent-map --no-default-features
for feature in sqlite csv_backend in_memory postgres redis metrics; do
    cargo check --quiet -p persistent-map --no-default-features --features "$feature"
done

# As `cargo publish --workspace` would: each crate is packaged and built from its
# package, its sibling crates taken from the packages beside it, so a file left
# out of a package or a dependency cycle between crates fails here, not at release
# time. --all-features builds the facade with every backend, as docs.rs does.
# --allow-dirty lets the script run before a commit; a release runs without it.
step "cargo package (every crate meant for the registry, verified)"
# Verification builds each package against the others through a temporary
# local registry (target/package/tmp-registry), unpacked under
# registry/src/-<hash>/. Cargo takes a registry crate of an unchanged version
# for unchanged, so an earlier run's unpacked copies and compiled artifacts
# would be used instead of this run's: remove them first.
rm -rf target/package "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/persistent-map-*
clean=()
for package in persistent-map-core persistent-map-memory persistent-map-sqlite persistent-map-csv \
    persistent-map-server-support persistent-map-postgres persistent-map-redis persistent-map-conformance persistent-map \
    persistent-map-cli; do
    clean+=(-p "$package")
done
cargo clean --quiet "${clean[@]}"
cargo package --workspace --all-features --allow-dirty \
    --exclude persistent-map-benches --exclude persistent-map-reliability \
    --exclude persistent-map-examples

step "all checks passed"

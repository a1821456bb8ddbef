#!/usr/bin/env bash
# The copy benchmark of the command-line tool: `persistent-map copy` of
# 1,000,000 entries (COPY_BENCH_ENTRIES) from SQLite to PostgreSQL, side by
# side with a raw bulk insert (COPY FROM STDIN) of the same entries into the
# same table, on a release build. Prints one figures[...] line; the target
# is speed_ratio >= 0.5. Needs a PostgreSQL server (found or started by
# scripts/test-servers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
exec ./scripts/test-servers.sh cargo test --release -p persistent-map-cli --test copy_bench \
    -- --ignored --nocapture

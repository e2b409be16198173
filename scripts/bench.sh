#!/usr/bin/env bash
# Builds hermit-relay and its load generator in release mode and runs every benchmark
# scenario against the relay and the baseline in one run (a few minutes; --quick: ~1 min).
# Prints a Markdown table and writes it to bench-results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p hermit-relay -p hermit-relay-bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec target/release/hermit-relay-bench run --relay target/release/hermit-relay --out bench-results.md "$@"

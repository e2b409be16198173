#!/usr/bin/env bash
# Builds hermit-relay and its load generator in release mode, then either
#   runs every rate scenario against the relay and the baseline in one run (a few minutes;
#   --quick: about 1 min) and writes the table to bench-results.md, or
#   with --count, counts instructions and allocations under valgrind (callgrind, dhat) and
#   writes the table to target/bench-count/bench-count.md, beside the profiles.
# Other arguments go to hermit-relay-bench: --before PATH (an older relay build, run as a
# third server in the same run), --quick, --only NAME. --only cross (never part of a full
# run) measures the relay on one node against a two-node cluster, mac and browser on
# different nodes; it needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (user
# postgres, trust auth) and psql. See BENCHMARKS.md, "Cross-node".
set -euo pipefail
cd "$(dirname "$0")/.."
mode=run
args=()
for arg in "$@"; do
    if [[ "$arg" == "--count" ]]; then mode=count; else args+=("$arg"); fi
done
cargo build --release --locked -p hermit-relay -p hermit-relay-bench
# The idle-memory scenario and the counted mode's 10,000 waiting macs need many sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
bench=(target/release/hermit-relay-bench "$mode" --relay target/release/hermit-relay)
if [[ "$mode" == count ]]; then
    command -v valgrind >/dev/null || { echo "bench.sh --count needs valgrind" >&2; exit 1; }
    mkdir -p target/bench-count
    exec "${bench[@]}" --profiles target/bench-count --out target/bench-count/bench-count.md "${args[@]}"
fi
exec "${bench[@]}" --out bench-results.md "${args[@]}"

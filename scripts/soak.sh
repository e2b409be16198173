#!/usr/bin/env bash
# A churn soak against the release relay (not run in CI): quick pairs made and dropped,
# agents and clients attaching and exchanging data, login floods and join guesses, all at
# once for SOAK_SECS (default 600 s; plus ~2 min of warm-up and settling). Samples the
# relay's resident memory (VmRSS) and open descriptors (/proc/PID/fd) before, during and
# after; fails if they do not come back near their baseline. Prints the table and writes
# it to target/soak.md. See the "Soak" section of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p hermit-relay -p hermit-relay-bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec target/release/hermit-relay-bench soak --relay target/release/hermit-relay \
    --secs "${SOAK_SECS:-600}" --out target/soak.md

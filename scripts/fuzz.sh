#!/usr/bin/env bash
# A long property-test campaign (not run in CI, which runs proptest's default 256 cases):
# every property of tests/properties.rs (wire messages, forwarding headers, settings),
# tests/models.rs (the pairing and machine-directory rules against reference models) and
# the frame decoder's (src/transport/decode_props.rs), with PROPTEST_CASES cases each
# (default 200000; the whole campaign takes about an hour on two cores in release mode).
# A failure is shrunk to a minimal case, printed, and its seed saved under
# proptest-regressions/ beside the test, so the next plain `cargo test` replays it first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES="${PROPTEST_CASES:-200000}"
cargo test --release --locked --no-run --lib --test properties --test models
start=$SECONDS
run() {
    local began=$SECONDS
    cargo test --release --locked "$@" -- --test-threads 2
    echo "== $* : $((SECONDS - began)) s with PROPTEST_CASES=$PROPTEST_CASES"
}
run --lib transport::decode::props
run --test properties
run --test models
echo "== campaign: $((SECONDS - start)) s"

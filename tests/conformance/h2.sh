#!/usr/bin/env bash
# HTTP/2 conformance: runs the httpwg suite (RFC 9113, `cargo install httpwg-cli`)
# against the plain listener speaking h2c, and fails if fewer than MIN cases pass.
# Usage: tests/conformance/h2.sh [GATEHOUSE_BINARY]   (default target/release/gatehouse)
# The cases that still fail are HTTP/2 library error codes, listed in README.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/release/gatehouse}")
cd "$ROOT/tests/conformance"
MIN=${MIN:-86}
HTTPWG=${HTTPWG:-$(command -v httpwg || echo "$HOME/.cargo/bin/httpwg")}
python3 origin.py 18089 2>/dev/null & ORIGIN=$!
"$BIN" run -c gatehouse.yaml >/tmp/gatehouse-h2-conformance.log 2>&1 & PROXY=$!
trap 'kill $PROXY $ORIGIN 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf --http2-prior-knowledge -o /dev/null http://127.0.0.1:18088/ && break; sleep 0.1; done
OUT=$(timeout 300 "$HTTPWG" -a 127.0.0.1:18088 --frame-timeout 2000 2>&1 | sed 's/\x1b\[[0-9;]*m//g' || true)
echo "$OUT" | grep -E "Test failed" | sed 's/.*Test failed: /failed: /' || true
PASSED=$(echo "$OUT" | sed -nE 's/.*Passed ([0-9]+)\/([0-9]+) tests.*/\1/p')
TOTAL=$(echo "$OUT" | sed -nE 's/.*Passed ([0-9]+)\/([0-9]+) tests.*/\2/p')
echo "httpwg: ${PASSED:-0}/${TOTAL:-?} cases pass (at least $MIN required)"
[ "${PASSED:-0}" -ge "$MIN" ]

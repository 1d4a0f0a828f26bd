#!/usr/bin/env bash
# Slow-client check with Debian's slowhttptest against the running demo, bounded in time.
# Starts `gatehouse demo` (ports 8443/8080/8404), runs slowhttptest in slowloris mode
# (-H) with 300 connections for 20 s, checks that a normal client is served meanwhile,
# and prints slowhttptest's summary. Usage: tests/slowloris.sh [path-to-gatehouse]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/gatehouse}
[ -x "$bin" ] || cargo build --release --quiet --bin gatehouse
work=$(mktemp -d)
"$bin" demo --workdir "$work" > "$work/demo.out" 2> "$work/demo.err" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s http://127.0.0.1:8404/healthz >/dev/null && break; sleep 0.2; done
# The demo's request-header timeout is 10 s: every slow connection must be cut by then.
( timeout 40 slowhttptest -H -c 300 -r 100 -i 5 -s 8192 -t GET -l 20 -x 10 -p 3 \
    -u "https://127.0.0.1:8443/" -g -o "$work/slowloris" > "$work/slowhttptest.out" 2>&1 || true ) &
slow=$!
sleep 8
code=$(curl -s --cacert "$work/certs/ca.pem" --resolve data.localhost:8443:127.0.0.1 -o /dev/null -w '%{http_code}' https://data.localhost:8443/)
wait "$slow"
echo "normal client during the attack: HTTP $code"
grep -E "test type|number of connections|interval between follow|test duration|Exit status|pending|connected|closed" "$work/slowhttptest.out" | tail -12 || true
[ -f "$work/slowloris.csv" ] && { echo "per-second (seconds,closed,pending,connected,available):"; tail -n +2 "$work/slowloris.csv" | awk -F, 'NR%4==1' | head -8; }
[ "$code" = 200 ]

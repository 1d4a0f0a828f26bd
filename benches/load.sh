#!/usr/bin/env bash
# The load benchmark: gatehouse vs haproxy vs nginx on loopback. See docs/performance.md.
#   benches/load.sh            full run (3 interleaved rounds)
#   benches/load.sh --quick    one short round (under 3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 benches/load.py "$@"

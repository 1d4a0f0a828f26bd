#!/usr/bin/env bash
# Builds (once) a Debian 13 "trixie" chroot holding the current peers, HAProxy 3.0 LTS and
# nginx 1.26 with OpenSSL 3.5, from Debian's own archive and nothing else, and prints its path.
# Cached outside the repository: $GATEHOUSE_PEERS, else ~/.cache/gatehouse-peers/trixie.
# benches/load.py runs the chroot's binaries through the chroot's own dynamic loader and
# libraries (no mounts: the bench's temporary files keep their paths), as `haproxy3`/`nginx3`.
#   benches/peers/debian13.sh          build if missing, print the path
#   benches/peers/debian13.sh --check  print the path and versions, fail if not built
set -euo pipefail
root="${GATEHOUSE_PEERS:-$HOME/.cache/gatehouse-peers/trixie}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

versions() {
    "$root/lib64/ld-linux-x86-64.so.2" --library-path "$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu" \
        "$root/usr/sbin/haproxy" -v | sed -n 1p >&2
    "$root/lib64/ld-linux-x86-64.so.2" --library-path "$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu" \
        "$root/usr/sbin/nginx" -V 2>&1 | sed -n 1,2p >&2
}

if [[ "${1:-}" == "--check" ]]; then
    [[ -f "$root/.gatehouse-peers-done" ]] || { echo "no peers chroot at $root: run $0" >&2; exit 1; }
    versions
    echo "$root"
    exit 0
fi

if [[ ! -f "$root/.gatehouse-peers-done" ]]; then
    command -v debootstrap >/dev/null || apt-get install -y debootstrap >&2
    rm -rf "$root"
    mkdir -p "$(dirname "$root")"
    # minbase: no init system or daemons; the two proxies and what they link.
    debootstrap --variant=minbase --include=haproxy,nginx trixie "$root" "$mirror" >&2
    touch "$root/.gatehouse-peers-done"
fi
versions
echo "$root"

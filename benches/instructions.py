#!/usr/bin/env python3
"""User-space instructions per request of one or more gatehouse builds, counted by valgrind
(callgrind): deterministic to about 1 %, where wall-clock CPU on a shared VM swings by 10 %.

For A/B work on the hot path: a change that saves 2 % of the proxy's own instructions is
invisible in req/s here but plain in this count. It says nothing about the kernel's share
(about 70 % of plain HTTP/1.1 CPU on loopback); benches/load.sh stays the measure of record.

    python3 benches/instructions.py [-n 5000] [--scenarios plain,h2,https1,1m,newtls] [--keep DIR]
        [--access-log off|text|haproxy|json] [--log-to file|stderr] [--limit local|redis]
        BINARY...

The same nginx origin and gatehouse config as benches/load.sh (benches/peers/); h2load sends
the requests (HTTP/1.1 keep-alive over 32 connections, or HTTP/2 over 16 × 10 streams);
counting starts after a warm-up. With --keep, the callgrind files are kept for
`callgrind_annotate --inclusive=yes FILE`. Needs valgrind (apt-get install valgrind).
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the load harness: config rendering, port waits)

SCENARIOS = {
    "plain": ["--h1", "-c", "32", "http://localhost:18080/small"],
    "https1": ["--h1", "-c", "32", "https://localhost:18443/small"],
    "h2": ["-c", "16", "-m", "10", "https://localhost:18443/small"],
    # Record-file downloads: 1 MiB bodies over HTTPS keep-alive (use a smaller -n, e.g. 500).
    "1m": ["--h1", "-c", "16", "https://localhost:18443/1m.bin"],
    # New TLS connections: one request per connection (as many connections as requests).
    "newtls": ["--h1", "-c", "{n}", "https://localhost:18443/small"],
}


def h2load(args, n):
    *opts, url = [a.replace("{n}", str(n)) for a in args]
    r = subprocess.run(["h2load", *opts, "-n", str(n), url], capture_output=True, text=True, timeout=600)
    ok = re.search(r"(\d+) succeeded", r.stdout)
    return int(ok.group(1)) if ok else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5000, help="requests counted per scenario")
    ap.add_argument("--scenarios", default="plain,h2,https1")
    ap.add_argument("--keep", help="directory for the callgrind files")
    ap.add_argument("--access-log", default="off",
                    help="access log format (off, text, haproxy, json), written to a file")
    ap.add_argument("--log-to", default="file", choices=["file", "stderr"],
                    help="where the access log goes (stderr: as under journald, no syslog prefix)")
    ap.add_argument("--limit", choices=["local", "redis"],
                    help="a rate limit on the route (never reached), judged locally or by a "
                         "redis-server on 127.0.0.1:18379 (limits_store)")
    ap.add_argument("binaries", nargs="+")
    a = ap.parse_args()
    for tool in ["valgrind", "callgrind_control", "h2load", "nginx", "openssl"]:
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"missing {tool}: apt-get install valgrind nginx nghttp2-client openssl")
    d = tempfile.mkdtemp(prefix="gatehouse-instr-")
    os.makedirs(os.path.join(d, "www"))
    os.makedirs(os.path.join(d, "tmp"))
    for name, size in [("1k.bin", 1024), ("100k.bin", 100 * 1024), ("1m.bin", 1 << 20)]:
        with open(os.path.join(d, "www", name), "wb") as f:
            f.write(b"x" * size)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", os.path.join(d, "bench.key"), "-out", os.path.join(d, "bench.crt")],
                   check=True, capture_output=True)
    load.render(os.path.join(load.PEERS, "origin-nginx.conf"), os.path.join(d, "origin.conf"), d)
    load.render(os.path.join(load.PEERS, "gatehouse", "gatehouse.yaml"), os.path.join(d, "gatehouse.yaml"), d)
    if a.access_log != "off":
        # The cost of the access log itself: each format written to a file.
        cfg = os.path.join(d, "gatehouse.yaml")
        with open(cfg) as f:
            text = f.read()
        to = f"\naccess_log_to: {d}/access.log" if a.log_to == "file" else ""
        text = text.replace("access_log: off", f"access_log: {a.access_log}{to}")
        with open(cfg, "w") as f:
            f.write(text)
    shutil.copy(os.path.join(load.PEERS, "gatehouse", "rules.yaml"), os.path.join(d, "rules.yaml"))
    redis = None
    if a.limit:
        # The cost of a rate limit: counted on every request, never refusing.
        with open(os.path.join(d, "rules.yaml")) as f:
            rules = f.read()
        rules = rules.replace("pools:", "limits:\n  bench: { rate: 1000000/s, burst: 1000000 }\npools:")
        rules = rules.replace("service: origin }", "service: origin, limit: bench }")
        with open(os.path.join(d, "rules.yaml"), "w") as f:
            f.write(rules)
        if a.limit == "redis":
            with open(os.path.join(d, "gatehouse.yaml"), "a") as f:
                f.write("limits_store: redis://127.0.0.1:18379\n")
            redis = subprocess.Popen(["redis-server", "--port", "18379", "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL)
    origin = subprocess.Popen(["nginx", "-c", os.path.join(d, "origin.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"{'binary':24} {'scenario':8} {'requests':>8} {'instructions/request':>21}")
    failed = []
    try:
        load.wait_port(18000)
        for b in a.binaries:
            for s in a.scenarios.split(","):
                out = os.path.join(d, "callgrind.out")
                for f in glob.glob(out + "*"):
                    os.remove(f)
                with open(os.path.join(d, "valgrind.log"), "w") as log:
                    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                                          "--instr-atstart=no", os.path.abspath(b), "run", "-c",
                                          os.path.join(d, "gatehouse.yaml")],
                                         stdout=subprocess.DEVNULL, stderr=log)
                try:
                    load.wait_port(18080, 120)
                    load.wait_port(18443, 120)
                    h2load(SCENARIOS[s], max(a.n // 10, 100))  # warm: pools, caches, sessions
                    subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], capture_output=True, check=True)
                    ok = h2load(SCENARIOS[s], a.n)
                    subprocess.run(["callgrind_control", "-i", "off", str(p.pid)], capture_output=True, check=True)
                finally:
                    p.terminate()
                    p.wait(120)
                total = 0
                for f in glob.glob(out + "*"):
                    for line in open(f):
                        if line.startswith("totals:"):
                            total += int(line.split()[1])
                            break
                    if a.keep:
                        os.makedirs(a.keep, exist_ok=True)
                        shutil.copy(f, os.path.join(a.keep, f"{os.path.basename(b)}-{s}.callgrind"))
                note = "" if ok == a.n else f"  ({a.n - ok} failed)"
                if ok < a.n or total == 0:
                    failed.append(f"{b} {s}")
                print(f"{os.path.basename(b):24} {s:8} {ok:>8} {total / max(ok, 1):>21,.0f}{note}", flush=True)
    finally:
        origin.terminate()
        origin.wait()
        if redis:
            redis.terminate()
            redis.wait()
        shutil.rmtree(d, ignore_errors=True)
    if failed:
        sys.exit("not counted (failed requests or nothing recorded): " + ", ".join(failed))


if __name__ == "__main__":
    main()

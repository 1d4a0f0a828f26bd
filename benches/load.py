#!/usr/bin/env python3
"""Side-by-side load benchmark: gatehouse, haproxy and nginx on loopback.

One origin (nginx, its own core, never the bottleneck); each proxy in turn on the other
core (taskset), with the same P-256 certificate, keep-alive to the origin, one worker,
no access logs. Proxies are interleaved (A B C A B C ...), medians are reported with the
ratio to the best peer of each scenario from the same run. Run: benches/load.sh [--quick]
[--rounds N]. Debian 12's HAProxy 2.6 and nginx 1.22 are `haproxy` and `nginx`; Debian 13's
HAProxy 3.0 and nginx 1.26 (OpenSSL 3.5) are `haproxy3` and `nginx3`, run from the chroot
that benches/peers/debian13.sh builds once (they join the default run when it exists).
Ratios are information, never a pass/fail: only a broken harness fails.
"""
import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "benches", "peers")
HTTPS = "https://localhost:18443"
HTTP = "http://localhost:18080"
PROXY_CPU = "0"
LOAD_CPU = "1"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def render(src, dst, d):
    with open(src) as f:
        text = f.read().replace("@DIR@", d)
    with open(dst, "w") as f:
        f.write(text)


def proc_stat_cpu(pid, user_only=False):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + (0 if user_only else int(fields[12]))) / ticks


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def wait_port(port, timeout=10):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


class Proxy:
    def __init__(self, name, argv, d, env=None):
        self.name, self.argv, self.dir, self.p, self.env = name, argv, d, None, env

    def start(self):
        log = open(os.path.join(self.dir, f"{self.name}.log"), "w")
        self.p = subprocess.Popen(["taskset", "-c", PROXY_CPU] + self.argv, stdout=log, stderr=log, env=self.env)
        try:
            wait_port(18443)
            wait_port(18080)
        except RuntimeError:
            log.close()
            sys.exit(f"{self.name} did not start:\n" + open(os.path.join(self.dir, f"{self.name}.log")).read()[-2000:])
        time.sleep(0.3)

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()
        self.p = None
        time.sleep(0.3)


def peers_root():
    """The Debian 13 chroot of benches/peers/debian13.sh, if it has been built."""
    root = os.environ.get("GATEHOUSE_PEERS", os.path.expanduser("~/.cache/gatehouse-peers/trixie"))
    return root if os.path.exists(os.path.join(root, ".gatehouse-peers-done")) else None


def in_chroot(root, binary):
    """argv running a chroot's binary through its own loader and libraries: no mounts, and
    the bench's files keep their paths. OpenSSL reads no host config (its defaults)."""
    libs = ":".join(os.path.join(root, p) for p in ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"])
    env = dict(os.environ, OPENSSL_CONF="/dev/null")
    return [os.path.join(root, "lib64", "ld-linux-x86-64.so.2"), "--library-path", libs,
            os.path.join(root, binary.lstrip("/"))], env


def start_strace(pid, d):
    """strace -c attached to every thread of the proxy (it slows the proxy: rates taken
    with it say nothing; counts per request do)."""
    out = os.path.join(d, f"strace-{pid}.txt")
    t = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(pid)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return t, out


def stop_strace(tracer, requests):
    """The summary's calls per request, largest first."""
    t, out = tracer
    t.send_signal(signal.SIGINT)
    t.wait(30)
    calls = {}
    for line in open(out):
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            calls[f[-1]] = int(f[3])
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:8]
    return ", ".join(f"{k} {v / max(requests, 1):.2f}" for k, v in top)


def run_wrk(url, conns, dur, headers=()):
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{dur}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    out = sh(cmd + [url]).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    tr = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    scale = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[tr.group(2)]
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return None
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]

    return {"value": rps, "mbps": float(tr.group(1)) * scale / 1e6, "total": total, "p50": pct(50), "p99": pct(99),
            "errors": int(errors.group(1)) if errors else 0,
            "sock_errors": sum(int(x) for x in sock_err.groups()) if sock_err else 0}


def run_h2load(url, dur):
    cmd = ["taskset", "-c", LOAD_CPU, "h2load", "-t1", "-c64", "-m10", f"-D{dur}", "--warm-up-time=1", url]
    out = sh(cmd).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    return {"value": rps, "total": int(m.group(3)), "p50": None, "p99": None, "errors": int(m.group(4)), "sock_errors": 0}


SCENARIOS = [
    # name, unit, function(dur)
    ("HTTPS h1 keep-alive, small", "req/s", lambda d: run_wrk(f"{HTTPS}/small", 64, d)),
    ("HTTPS h2 (64 conns x 10 streams), small", "req/s", lambda d: run_h2load(f"{HTTPS}/small", d)),
    ("New TLS connections", "conn/s", lambda d: run_wrk(f"{HTTPS}/small", 32, d, ["Connection: close"])),
    ("100 KiB downloads", "MB/s", lambda d: run_wrk(f"{HTTPS}/100k.bin", 16, d)),
    ("1 MiB downloads", "MB/s", lambda d: run_wrk(f"{HTTPS}/1m.bin", 16, d)),
    ("Plain h1 keep-alive, small", "req/s", lambda d: run_wrk(f"{HTTP}/small", 64, d)),
]


async def hold_idle(n, tls=True):
    """Opens n keep-alive connections (TLS or plain), one request each, and keeps them open."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    conns, sem = [], asyncio.Semaphore(200)

    async def one():
        async with sem:
            try:
                if tls:
                    r, w = await asyncio.open_connection("127.0.0.1", 18443, ssl=ctx, server_hostname="localhost")
                else:
                    r, w = await asyncio.open_connection("127.0.0.1", 18080)
                w.write(b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n")
                await w.drain()
                await asyncio.wait_for(r.readuntil(b"ok\n"), 10)
                conns.append(w)
            except Exception:
                pass

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


# Idle figures are read after this many seconds of quiet, for every proxy alike: "idle"
# means the burst that opened the connections (or the load) is over. Gatehouse gives the
# heap pages that burst freed back to the system within 5 s (src/memory.rs).
SETTLE = 7


def idle_memory(proxy, n, tls=True):
    """RSS while holding n idle keep-alive connections (after one request each)."""
    pid = proxy.p.pid
    loop = asyncio.new_event_loop()
    conns = loop.run_until_complete(hold_idle(n, tls))
    time.sleep(SETTLE)
    held = proc_status(pid, "VmRSS:")
    for w in conns:
        w.close()
    loop.run_until_complete(asyncio.sleep(0.5))
    loop.close()
    time.sleep(1)
    return held, len(conns)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs, one round (under 3 minutes)")
    ap.add_argument("--smoke", action="store_true", help="CI: prove the harness works (seconds)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--idle", type=int, default=9900, help="idle keep-alive connections for the memory row (HAProxy 2.6 tops out at ~9,990 under the 20,000-fd hard limit of these machines)")
    ap.add_argument("--only", default=None,
                    help="proxies to run (default gatehouse,haproxy,nginx, plus haproxy3,nginx3 when the "
                         "Debian 13 chroot of benches/peers/debian13.sh exists)")
    ap.add_argument("--scenarios", default="", help="comma-separated words; run only scenarios whose name contains one (e.g. h2,plain)")
    ap.add_argument("--no-memory", action="store_true", help="skip the idle-memory row")
    ap.add_argument("--syscalls", action="store_true",
                    help="count each proxy's system calls per request under strace -c (rates are then meaningless)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=BINARY",
                    help="another gatehouse binary run with the same config, for A/B runs (name it in --only)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results", "latest.md"))
    a = ap.parse_args()
    global SCENARIOS, SETTLE
    if a.scenarios:
        words = [w.strip().lower() for w in a.scenarios.split(",") if w.strip()]
        SCENARIOS = [s for s in SCENARIOS if any(w in s[0].lower() for w in words)]
    if a.quick:
        a.rounds, a.duration = 1, 4
    if a.smoke:
        a.rounds, a.duration, a.idle = 1, 1, 200
        SETTLE = 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    root = peers_root()
    if a.only is None:
        a.only = "gatehouse,haproxy,nginx" + (",haproxy3,nginx3" if root else "")
    if not root and any(n in a.only.split(",") for n in ["haproxy3", "nginx3"]):
        sys.exit("haproxy3/nginx3 need the Debian 13 chroot: run benches/peers/debian13.sh")
    for tool in ["wrk", "h2load", "haproxy", "nginx", "taskset", "openssl"]:
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"missing {tool}: run .ci/run (or apt-get install haproxy nginx wrk nghttp2-client)")
    gh = os.path.join(ROOT, "target", "release", "gatehouse")
    sh(["cargo", "build", "--release", "--quiet", "--bin", "gatehouse"], cwd=ROOT)

    d = tempfile.mkdtemp(prefix="gatehouse-bench-")
    os.makedirs(os.path.join(d, "www"))
    os.makedirs(os.path.join(d, "tmp"))
    for name, size in [("1k.bin", 1024), ("100k.bin", 100 * 1024), ("1m.bin", 1 << 20)]:
        with open(os.path.join(d, "www", name), "wb") as f:
            f.write(bytes(i % 251 for i in range(size)))
    sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
        "-keyout", os.path.join(d, "bench.key"), "-out", os.path.join(d, "bench.crt")])
    with open(os.path.join(d, "bench.pem"), "w") as f:
        f.write(open(os.path.join(d, "bench.crt")).read() + open(os.path.join(d, "bench.key")).read())
    render(os.path.join(PEERS, "origin-nginx.conf"), os.path.join(d, "origin.conf"), d)
    render(os.path.join(PEERS, "haproxy.cfg"), os.path.join(d, "haproxy.cfg"), d)
    render(os.path.join(PEERS, "nginx-proxy.conf"), os.path.join(d, "nginx-proxy.conf"), d)
    # nginx 1.26 takes HTTP/2 as a server directive (the listen flag is deprecated); its
    # pid and error log apart from 1.22's.
    with open(os.path.join(d, "nginx-proxy.conf")) as f:
        conf3 = f.read().replace("ssl http2 reuseport", "ssl reuseport").replace(
            "        ssl_certificate ", "        http2 on;\n        ssl_certificate ", 1).replace(
            "nginx-proxy.", "nginx3-proxy.")
    with open(os.path.join(d, "nginx3-proxy.conf"), "w") as f:
        f.write(conf3)
    render(os.path.join(PEERS, "gatehouse", "gatehouse.yaml"), os.path.join(d, "gatehouse.yaml"), d)
    shutil.copy(os.path.join(PEERS, "gatehouse", "rules.yaml"), os.path.join(d, "rules.yaml"))

    origin = subprocess.Popen(["taskset", "-c", LOAD_CPU, "nginx", "-c", os.path.join(d, "origin.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(18000)
    all_proxies = {
        "gatehouse": Proxy("gatehouse", [gh, "run", "-c", os.path.join(d, "gatehouse.yaml")], d),
        "haproxy": Proxy("haproxy", ["haproxy", "-db", "-f", os.path.join(d, "haproxy.cfg")], d),
        "nginx": Proxy("nginx", ["nginx", "-c", os.path.join(d, "nginx-proxy.conf")], d),
    }
    if root:
        argv, env = in_chroot(root, "/usr/sbin/haproxy")
        all_proxies["haproxy3"] = Proxy("haproxy3", argv + ["-db", "-f", os.path.join(d, "haproxy.cfg")], d, env)
        argv, env = in_chroot(root, "/usr/sbin/nginx")
        all_proxies["nginx3"] = Proxy("nginx3", argv + ["-c", os.path.join(d, "nginx3-proxy.conf")], d, env)
    for v in a.variant:
        name, _, binary = v.partition("=")
        all_proxies[name] = Proxy(name, [os.path.abspath(binary), "run", "-c", os.path.join(d, "gatehouse.yaml")], d)
    proxies = [all_proxies[n] for n in a.only.split(",")]
    results = {(p.name, s[0]): [] for p in proxies for s in SCENARIOS}
    cpu = {(p.name, s[0]): [] for p in proxies for s in SCENARIOS}
    mem = {}
    fresh = {}
    start = time.time()
    try:
        for rnd in range(a.rounds):
            for p in proxies:
                p.start()
                try:
                    if rnd == 0:
                        # Idle at start: nothing served yet.
                        fresh[p.name] = proc_status(p.p.pid, "VmRSS:")
                    for name, unit, fn in SCENARIOS:
                        c0, u0 = proc_stat_cpu(p.p.pid), proc_stat_cpu(p.p.pid, True)
                        tracer = start_strace(p.p.pid, d) if a.syscalls else None
                        r = fn(a.duration)
                        if tracer:
                            print(f"round {rnd + 1} {p.name:9} {name:42} syscalls per request: "
                                  f"{stop_strace(tracer, r['total'])}", flush=True)
                        c1, u1 = proc_stat_cpu(p.p.pid), proc_stat_cpu(p.p.pid, True)
                        if r["total"] == 0 or r["errors"] > r["total"] * 0.01:
                            raise RuntimeError(f"{p.name}: {name}: {r}")
                        if unit == "MB/s":
                            r["value"] = r["mbps"]
                        results[(p.name, name)].append(r)
                        cpu[(p.name, name)].append((c1 - c0) / max(r["total"], 1) * 1e6)
                        # User-space CPU apart: the kernel's share of loopback traffic
                        # swings with the host far more than the proxy's own code does.
                        per = 1e6 / max(r["total"], 1)
                        print(f"round {rnd + 1} {p.name:9} {name:42} {r['value']:>12.1f} {unit}"
                              f"  cpu {(c1 - c0) * per:.1f} µs/req (user {(u1 - u0) * per:.1f})", flush=True)
                    if rnd == 0 and not a.no_memory:
                        time.sleep(SETTLE)
                        after = proc_status(p.p.pid, "VmRSS:")
                        peak = proc_status(p.p.pid, "VmHWM:")
                        # Each idle-connection figure on a fresh process: freed memory is
                        # not given back to the kernel at once, so a second figure taken
                        # in the same process would only show the first one's high water.
                        p.stop()
                        p.start()
                        held, n = idle_memory(p, a.idle, tls=True)
                        p.stop()
                        p.start()
                        held_plain, n_plain = idle_memory(p, a.idle, tls=False)
                        mem[p.name] = (fresh[p.name], after, held, n, held_plain, n_plain, peak)
                        print(f"round 1 {p.name:9} memory at start {fresh[p.name] >> 20} MiB, after load {after >> 20} MiB, "
                              f"{n} idle TLS conns {held >> 20} MiB, {n_plain} idle plain conns {held_plain >> 20} MiB, peak {peak >> 20} MiB", flush=True)
                finally:
                    p.stop()
    finally:
        origin.send_signal(signal.SIGKILL)
        origin.wait()

    names = [p.name for p in proxies]
    peers = [n for n in names if n in ("haproxy", "nginx", "haproxy3", "nginx3")] or names[:1]
    med = {k: statistics.median(r["value"] for r in rs) for k, rs in results.items()}
    mcpu = {k: statistics.median(c) for k, c in cpu.items()}
    what = "the best peer" if peers != names[:1] else names[0]
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M')} · {a.rounds} round(s) × {a.duration}s · proxy pinned to CPU {PROXY_CPU}, "
             f"load + origin on CPU {LOAD_CPU} · {os.cpu_count()} cores · {time.time() - start:.0f}s total", "",
             f"Ratios are to {what} of each scenario (highest median among {', '.join(peers)}).", "",
             "| scenario | proxy | median | ratio | p50 ms | p99 ms | CPU µs/req | CPU ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for name, unit, _ in SCENARIOS:
        best = max(peers, key=lambda n: med[(n, name)])
        for p in proxies:
            rs = results[(p.name, name)]
            v, c = med[(p.name, name)], mcpu[(p.name, name)]
            p50 = [r["p50"] for r in rs if r["p50"] is not None]
            p99 = [r["p99"] for r in rs if r["p99"] is not None]
            lat = f"{statistics.median(p50):.2f} | {statistics.median(p99):.2f}" if p50 else "– | –"
            mark = " (best peer)" if p.name == best and len(peers) > 1 else ""
            lines.append(f"| {name} | {p.name}{mark} | {v:,.1f} {unit} | {v / med[(best, name)]:.2f} | {lat} | "
                         f"{c:.1f} | {c / mcpu[(best, name)]:.2f} |")
    lines += ["", "| memory | proxy | idle RSS at start | idle RSS after the load | peak RSS under the load | idle TLS keep-alive conns | RSS holding them (fresh process) | idle plain keep-alive conns | RSS holding them (fresh process) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for p in [p for p in proxies if p.name in mem]:
        start_rss, after, held, n, held_plain, n_plain, peak = mem[p.name]
        lines.append(f"| memory | {p.name} | {start_rss / 2**20:.1f} MiB | {after / 2**20:.1f} MiB | {peak / 2**20:.1f} MiB | "
                     f"{n} | {held / 2**20:.1f} MiB | {n_plain} | {held_plain / 2**20:.1f} MiB |")
    table = "\n".join(lines)
    print("\n" + table)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(table + "\n")
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()

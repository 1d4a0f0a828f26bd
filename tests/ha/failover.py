#!/usr/bin/env python3
"""An HA pair for real: two Gatehouse instances sharing one virtual address through
Debian's keepalived, each in a network namespace this test creates, and a client namespace
sending a steady stream of HTTPS requests (a new TLS connection each) to that address.

    sudo tests/ha/failover.py [--requests N] [--clients C] BINARY

    namespaces (made here, removed at the end)
      gh-ha-<pid>-sw : bridge br0 (the "switch")
      gh-ha-<pid>-a  : eth0 192.0.2.1/24, keepalived (deploy/ha/keepalived.conf), gatehouse, nginx
      gh-ha-<pid>-b  : eth0 192.0.2.2/24, the same
      gh-ha-<pid>-c  : eth0 192.0.2.100/24, the client; the virtual address is 192.0.2.10

Three failovers, each while the client runs (20 clients, each starting a request at most
every 20 ms):
  graceful          SIGTERM to the master's gatehouse (the shipped drain_delay_mode: hold):
                    /healthz turns 503 at once, new SYNs are dropped unanswered (the
                    client's kernel sends them again after 1 s, by then to the other node),
                    connections open finish, keepalived moves the address, the old instance
                    drains after timeouts.drain_delay. Must lose nothing.
  hard              SIGKILL to the master's gatehouse: the address moves within a few
                    seconds; connections in flight and those refused until then fail
                    (reported, not asserted).
  graceful, accept  SIGTERM with drain_delay_mode: accept (for balancers and DNS, which stop
                    sending by themselves): connections in flight when the address moves
                    are cut (reported, not asserted).
Prints, for each: requests, failed, the gap (longest time without a completed request)
and when the address moved. Exits 1 when the graceful failover lost a request or the
address did not move within 10 s.
Needs root (namespaces), keepalived, nginx, openssl, curl; only 192.0.2.0/24 (TEST-NET-1),
inside the namespaces.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VIP = "192.0.2.10"
HOST = "repo.example.test"
NODES = {"a": "192.0.2.1", "b": "192.0.2.2"}


def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


class Net:
    """The namespaces and the bridge; removed by close()."""

    def __init__(self):
        self.prefix = f"gh-ha-{os.getpid()}"
        self.made = []

    def ns(self, name):
        return f"{self.prefix}-{name}"

    def build(self):
        for n in ["sw", "a", "b", "c"]:
            sh("ip", "netns", "add", self.ns(n))
            self.made.append(self.ns(n))
            sh("ip", "-n", self.ns(n), "link", "set", "lo", "up")
        sw = self.ns("sw")
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        for n, addr in [*NODES.items(), ("c", "192.0.2.100")]:
            sh("ip", "-n", sw, "link", "add", f"p{n}", "type", "veth", "peer", "name", "eth0",
               "netns", self.ns(n))
            sh("ip", "-n", sw, "link", "set", f"p{n}", "master", "br0", "up")
            sh("ip", "-n", self.ns(n), "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", self.ns(n), "link", "set", "eth0", "up")

    def holds_vip(self, n):
        return f"inet {VIP}/" in sh("ip", "-n", self.ns(n), "addr", "show", "dev", "eth0").stdout

    def close(self):
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)


class Node:
    """One machine: nginx (the origin), gatehouse, keepalived, in its namespace."""

    def __init__(self, net, name, binary, d):
        self.net, self.name, self.binary = net, name, binary
        self.dir = os.path.join(d, name)
        os.makedirs(os.path.join(self.dir, "tmp"))
        self.procs = {}

    def write_configs(self, d):
        with open(os.path.join(self.dir, "origin.conf"), "w") as f:
            f.write(f"""worker_processes 1; master_process off; daemon off;
pid {self.dir}/origin.pid; error_log {self.dir}/origin.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {self.dir}/tmp; proxy_temp_path {self.dir}/tmp;
  fastcgi_temp_path {self.dir}/tmp; uwsgi_temp_path {self.dir}/tmp; scgi_temp_path {self.dir}/tmp;
  server {{ listen 127.0.0.1:18000; location / {{ default_type text/plain; return 200 "ok {self.name}\\n"; }} }} }}
""")
        self.write_gatehouse(d, "hold")
        shutil.copy(os.path.join(ROOT, "deploy/ha/rules.yaml"), os.path.join(self.dir, "rules.yaml"))
        ka = open(os.path.join(ROOT, "deploy/ha/keepalived.conf")).read()
        peer = [a for n, a in NODES.items() if n != self.name][0]
        ka = ka.replace("192.0.2.1  # this node", f"{NODES[self.name]}  # this node")
        ka = ka.replace("192.0.2.2  # the other node", f"{peer}  # the other node")
        ka = ka.replace("router_id gatehouse_a", f"router_id gatehouse_{self.name}")
        with open(os.path.join(self.dir, "keepalived.conf"), "w") as f:
            f.write(ka)

    def write_gatehouse(self, d, mode):
        """The shipped deploy/ha/gatehouse.yaml (drain_delay_mode: hold), or with `accept`."""
        shipped = open(os.path.join(ROOT, "deploy/ha/gatehouse.yaml")).read()
        text = shipped.replace("/etc/gatehouse/certs", d).replace("/etc/gatehouse/rules", self.dir)
        assert "drain_delay_mode: hold" in text
        with open(os.path.join(self.dir, "gatehouse.yaml"), "w") as f:
            f.write(text.replace("drain_delay_mode: hold", f"drain_delay_mode: {mode}"))

    def run(self, key, args):
        log = open(os.path.join(self.dir, f"{key}.log"), "a")
        self.procs[key] = subprocess.Popen(["ip", "netns", "exec", self.net.ns(self.name), *args],
                                           stdout=log, stderr=subprocess.STDOUT)

    def start_origin(self):
        self.run("origin", ["nginx", "-c", os.path.join(self.dir, "origin.conf")])

    def start_gatehouse(self):
        self.run("gatehouse", [self.binary, "run", "-c", os.path.join(self.dir, "gatehouse.yaml")])

    def start_keepalived(self):
        d = self.dir
        self.run("keepalived", ["keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp",
                                "-f", f"{d}/keepalived.conf", "-p", f"{d}/ka.pid", "-r", f"{d}/vrrp.pid",
                                "-c", f"{d}/checkers.pid"])

    def healthy(self):
        r = sh("ip", "netns", "exec", self.net.ns(self.name), "curl", "-sf", "-m", "1",
               "http://127.0.0.1:8404/healthz", check=False)
        return r.returncode == 0

    def signal(self, key, sig):
        # `ip netns exec` execs the program: the PID is the program's own.
        self.procs[key].send_signal(sig)

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait(what, cond, within):
    start = time.time()
    while time.time() - start < within:
        if cond():
            return time.time() - start
        time.sleep(0.05)
    raise SystemExit(f"failover: {what} not within {within} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000, help="requests per failover (three failovers)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("binary")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("failover: needs root (network namespaces)")
    for tool in ["ip", "keepalived", "nginx", "openssl", "curl"]:
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"failover: missing {tool} (apt-get install iproute2 keepalived nginx openssl curl)")
    binary = os.path.abspath(a.binary)
    d = tempfile.mkdtemp(prefix="gatehouse-ha-")
    os.chmod(d, 0o755)
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
       "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}",
       "-keyout", os.path.join(d, "ha.key"), "-out", os.path.join(d, "ha.pem"))
    net = Net()
    nodes = {n: Node(net, n, binary, d) for n in NODES}
    results = {}
    try:
        net.build()
        for n in nodes.values():
            n.write_configs(d)
            n.start_origin()
            n.start_gatehouse()
        for n in nodes.values():
            wait(f"gatehouse {n.name} healthy", n.healthy, 30)
        for n in nodes.values():
            n.start_keepalived()
        wait("a master", lambda: any(net.holds_vip(n) for n in nodes), 15)
        # The stopped instance comes back with the mode the third case needs: the first
        # master returns as `accept`, is master again after the hard case, and is stopped
        # gracefully in that mode.
        cases = [("graceful", signal.SIGTERM, "accept"), ("hard", signal.SIGKILL, "hold"),
                 ("graceful, accept", signal.SIGTERM, "hold")]
        for case, sig, comes_back_as in cases:
            results[case] = failover(net, nodes, case, sig, a, d, comes_back_as)
    finally:
        for n in nodes.values():
            n.stop()
        net.close()
    print()
    print(f"{'failover':18} {'requests':>9} {'failed':>7} {'gap (s)':>8} {'address moved after (s)':>24}")
    for case, r in results.items():
        print(f"{case:18} {r['requests']:>9} {r['failed']:>7} {r['gap']:>8.2f} {r['moved']:>24.2f}")
    errors = [e for r in results.values() for e in r["errors"][:5]]
    if errors:
        print("first errors:", *errors, sep="\n  ")
    bad = results["graceful"]["failed"] > 0
    shutil.rmtree(d, ignore_errors=True)
    if bad:
        sys.exit("failover: the graceful failover lost requests")


def failover(net, nodes, case, sig, a, d, comes_back_as):
    """One failover under load: the client runs, the master's gatehouse gets `sig` once a
    third of the requests are done; the client stops at `a.requests`. The stopped gatehouse
    is started again afterwards (it comes back as the backup: nopreempt)."""
    master = next(n for n in nodes.values() if net.holds_vip(n.name))
    out = os.path.join(d, f"client-{case.replace(' ', '')}.json")
    client = subprocess.Popen(["ip", "netns", "exec", net.ns("c"), sys.executable, os.path.join(HERE, "client.py"),
                               "--to", VIP, "--host", HOST, "--ca", os.path.join(d, "ha.pem"),
                               "--clients", str(a.clients), "--requests", str(a.requests),
                               "--progress", out + ".progress", "--out", out])
    progress = out + ".progress"

    def done():
        try:
            return int(open(progress).read() or 0)
        except (OSError, ValueError):
            return 0

    wait("a third of the requests", lambda: done() >= a.requests // 3, 120)
    at = time.time()
    master.signal("gatehouse", sig)
    moved = wait("the address to move", lambda: not net.holds_vip(master.name)
                 and any(net.holds_vip(n) for n in nodes if n != master.name), 10)
    moved = time.time() - at
    client.wait(300)
    r = json.load(open(out))
    master.procs["gatehouse"].wait(60)
    master.write_gatehouse(d, comes_back_as)
    master.start_gatehouse()
    wait(f"gatehouse {master.name} healthy again", master.healthy, 30)
    time.sleep(2)  # keepalived's rise 2: the restarted node is a backup again
    r["moved"] = moved
    return r


if __name__ == "__main__":
    main()

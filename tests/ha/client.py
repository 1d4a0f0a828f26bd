#!/usr/bin/env python3
"""The failover test's client: C threads, each sending HTTPS GETs, a new TCP and TLS
connection per request (the worst case for an address move), at most one per --interval
per thread, until N requests are done.
Writes {requests, failed, gap, errors} as JSON; `gap` is the longest time in which no
request completed. A request fails on any error or a status other than 200; each waits
at most 10 s (a SYN lost while the address moves is retried by the kernel after 1 s)."""
import argparse
import json
import socket
import ssl
import threading
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", required=True)
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--host", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--interval", type=float, default=0.02,
                    help="each client starts a request at most this often (s): a steady stream, "
                         "so a refused connection is one failure, not a burst of instant retries")
    ap.add_argument("--progress", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ctx = ssl.create_default_context(cafile=a.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    lock = threading.Lock()
    state = {"started": 0, "done": [], "failed": 0, "errors": []}
    request = f"GET / HTTP/1.1\r\nHost: {a.host}\r\nConnection: close\r\n\r\n".encode()

    def one():
        with socket.create_connection((a.to, a.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=a.host) as s:
                s.sendall(request)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
        status = data.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            raise RuntimeError(f"status {status!r}")

    def worker():
        while True:
            with lock:
                if state["started"] >= a.requests:
                    return
                state["started"] += 1
            t0 = time.time()
            try:
                one()
                with lock:
                    state["done"].append(time.time())
            except Exception as e:  # every failure is counted and kept
                with lock:
                    state["failed"] += 1
                    state["errors"].append(f"{t0:.3f} {type(e).__name__}: {e}")
            time.sleep(max(0.0, t0 + a.interval - time.time()))
            n = len(state["done"]) + state["failed"]
            if n % 50 == 0:
                with open(a.progress, "w") as f:
                    f.write(str(n))

    threads = [threading.Thread(target=worker) for _ in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = sorted(state["done"])
    gap = max((b - a_ for a_, b in zip(done, done[1:])), default=0.0)
    with open(a.out, "w") as f:
        json.dump({"requests": a.requests, "failed": state["failed"], "gap": gap,
                   "errors": state["errors"]}, f)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Resident memory per idle connection: the kv example (request mode, and
one fiber per connection) beside memcached, side by side in one run.

Each server is started on 127.0.0.1 with the same thread count; N client
connections each store one item (`set`) and then stay open and silent; the
server's VmRSS is read before the connections and once they are all idle,
and the difference is divided by N. Servers alternate A B C A B C for
ROUNDS rounds; the table gives the median per connection.

    ulimit -n 20000
    cargo build --release --example kv
    python3 scripts/bench-kv-idle.py --conns 15000 --rounds 3

Needs memcached on PATH (Debian: apt-get install memcached).
"""

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_port(port, proc, deadline=20.0):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not come up")


def measure(cmd, port, conns):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        socks = []
        for i in range(conns):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(b"set key%d 0 0 5\r\nvalue\r\n" % i)
            got = b""
            while not got.endswith(b"\r\n"):
                chunk = s.recv(64)
                if not chunk:
                    raise RuntimeError(f"connection {i} closed")
                got += chunk
            if got != b"STORED\r\n":
                raise RuntimeError(f"connection {i}: {got!r}")
            socks.append(s)
        time.sleep(1.0)
        after = rss_kib(proc.pid)
        for s in socks:
            s.close()
        return before, after
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=15000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv", default="target/release/examples/kv")
    ap.add_argument("--memcached", default="memcached")
    ap.add_argument("--port", type=int, default=21311)
    args = ap.parse_args()
    need = args.conns + 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    t, c, p = str(args.threads), str(args.conns + 100), str(args.port)
    servers = [
        ("kv (request mode)", [args.kv, "-l", "127.0.0.1", "-p", p, "-t", t, "-c", c, "-m", "64"]),
        ("kv --fiber-per-connection",
         [args.kv, "-l", "127.0.0.1", "-p", p, "-t", t, "-c", c, "-m", "64", "--fiber-per-connection"]),
        ("memcached", [args.memcached, "-p", p, "-l", "127.0.0.1", "-t", t, "-c", c,
                       "-m", "64", "-U", "0"] + (["-u", "root"] if os.geteuid() == 0 else [])),
    ]
    per = {name: [] for name, _ in servers}
    total = {name: [] for name, _ in servers}
    for r in range(args.rounds):
        for name, cmd in servers:
            before, after = measure(cmd, args.port, args.conns)
            d = after - before
            per[name].append(d * 1024 / args.conns)
            total[name].append(d)
            print(f"round {r + 1}: {name}: {before} KiB -> {after} KiB, "
                  f"{d * 1024 / args.conns:.0f} B per connection", file=sys.stderr)
    mc = statistics.median(per["memcached"])
    print(f"{args.conns} idle connections (each stored one item), {args.threads} threads, "
          f"median of {args.rounds} rounds (A B C alternating)\n")
    print("| server | resident per idle connection | all connections | vs memcached |")
    print("|---|---|---|---|")
    for name, _ in servers:
        m = statistics.median(per[name])
        print(f"| {name} | {m:.0f} B ({m / 1024:.2f} KiB) | "
              f"{statistics.median(total[name]) / 1024:.1f} MiB | {m / mc:.2f}x |")


if __name__ == "__main__":
    main()

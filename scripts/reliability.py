#!/usr/bin/env python3
"""Client side of scripts/reliability.sh: connection churn, slow (slowloris)
clients, and connection floods against a memcached-compatible server on
127.0.0.1. Standard library only. Every loop is bounded by a count and a
deadline; the last line of each command is machine-readable
(`RESULT key=value ...`).
"""

import argparse
import os
import select
import socket
import sys
import threading
import time


def proc_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def proc_cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rfind(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def connect(port, timeout=10.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_until(s, end, limit=1 << 20):
    buf = b""
    while not buf.endswith(end):
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed by server")
        buf += chunk
        if len(buf) > limit:
            raise RuntimeError("reply too long")
    return buf


def stat(port, name):
    with connect(port) as s:
        s.sendall(b"stats\r\n")
        out = read_until(s, b"END\r\n").decode()
    for line in out.split("\r\n"):
        parts = line.split(" ")
        if len(parts) == 3 and parts[1] == name:
            return int(parts[2])
    raise RuntimeError(f"no stat {name}")


def wait_stat(port, name, pred, secs):
    """Polls a stat until pred(value) holds or secs pass; returns the value."""
    end = time.time() + secs
    v = stat(port, name)
    while not pred(v) and time.time() < end:
        time.sleep(0.05)
        v = stat(port, name)
    return v


def cmd_churn(a):
    """Connect, one request, close; `cycles` times over `threads` threads.
    Compares the server's descriptors, resident memory and open
    connections before and after."""
    with connect(a.port) as s:
        s.sendall(b"set churn 0 0 5\r\nhello\r\n")
        read_until(s, b"\r\n")
    errors = []
    done = [0]
    lock = threading.Lock()
    deadline = time.time() + a.max_secs

    def worker(n):
        ok = 0
        try:
            for _ in range(n):
                if time.time() > deadline:
                    break
                with connect(a.port) as s:
                    s.sendall(b"get churn\r\n")
                    r = read_until(s, b"END\r\n")
                    if not r.startswith(b"VALUE churn 0 5\r\nhello\r\n"):
                        raise RuntimeError(f"bad reply {r!r}")
                ok += 1
        except Exception as e:  # reported, fails the run
            errors.append(repr(e))
        with lock:
            done[0] += ok

    def run(total):
        per = total // a.threads
        ts = [threading.Thread(target=worker, args=(per,)) for _ in range(a.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    # Warm up (stack pool, buffers, allocator arenas), then measure.
    run(min(2000, a.cycles // 10 or 1))
    wait_stat(a.port, "curr_connections", lambda v: v <= 1, 10)
    fds0, rss0 = proc_fds(a.pid), proc_rss_kib(a.pid)
    done[0] = 0
    t0 = time.time()
    run(a.cycles)
    secs = time.time() - t0
    curr = wait_stat(a.port, "curr_connections", lambda v: v <= 1, 10)
    # Descriptors are released when the fibers end; allow a moment.
    end = time.time() + 10
    fds1 = proc_fds(a.pid)
    while fds1 > fds0 and time.time() < end:
        time.sleep(0.05)
        fds1 = proc_fds(a.pid)
    rss1 = proc_rss_kib(a.pid)
    print(f"churn: {done[0]} cycles in {secs:.1f} s ({done[0] / secs:.0f}/s), "
          f"{len(errors)} client errors {errors[:3]}")
    print(f"churn: fds {fds0} -> {fds1}, VmRSS {rss0} -> {rss1} KiB, "
          f"curr_connections after {curr} (the stats connection itself)")
    print(f"RESULT cycles={done[0]} errors={len(errors)} fds_before={fds0} fds_after={fds1} "
          f"rss_before_kib={rss0} rss_after_kib={rss1} curr_connections={curr}")


def cmd_slow(a):
    """Opens `conns` connections that each send a storage command one byte
    per `interval` seconds for `trickle_secs`, then go silent (holding the
    socket open) for up to `silent_secs`, and reports how many the server
    closed. Writes `ready` to stdout once all are open and trickling."""
    req = b"set slowloris 0 0 1048576\r\n" + b"x" * 1024
    socks = []
    for i in range(a.conns):
        try:
            socks.append(connect(a.port))
        except OSError as e:
            print(f"slow: connection {i} failed: {e}", file=sys.stderr)
            break
    for s in socks:
        s.setblocking(False)
    opened = len(socks)
    print(f"slow: {opened} slow connections open", flush=True)
    pos = [0] * len(socks)
    closed = set()

    def poll_closed(timeout):
        live = [s for s in socks if s.fileno() not in closed]
        if not live:
            return
        r, _, _ = select.select(live, [], [], timeout)
        for s in r:
            try:
                if s.recv(4096) == b"":
                    closed.add(s.fileno())
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed.add(s.fileno())

    end = time.time() + a.trickle_secs
    announced = False
    while time.time() < end:
        tick = time.time()
        for i, s in enumerate(socks):
            if s.fileno() in closed:
                continue
            try:
                s.send(req[pos[i] % len(req):pos[i] % len(req) + 1])
                pos[i] += 1
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                closed.add(s.fileno())
        if not announced:
            print("ready", flush=True)
            announced = True
        poll_closed(max(0.0, a.interval - (time.time() - tick)))
    trickled_closed = len(closed)
    t_silent = time.time()
    end = t_silent + a.silent_secs
    while len(closed) < opened and time.time() < end:
        poll_closed(0.2)
    reclaim_secs = time.time() - t_silent
    print(f"slow: {trickled_closed} closed while trickling; after going silent, "
          f"{len(closed)}/{opened} closed by the server within {reclaim_secs:.1f} s")
    print(f"RESULT opened={opened} closed_while_trickling={trickled_closed} "
          f"closed={len(closed)} reclaim_secs={reclaim_secs:.1f}")
    for s in socks:
        s.close()


def cmd_flood(a):
    """Holds `conns` connections (each asks for the version), measures the
    server's CPU over `secs` seconds while they are held, releases them,
    then checks that `after` fresh connections are served."""
    socks = []
    for _ in range(a.conns):
        try:
            s = connect(a.port)
            s.sendall(b"version\r\n")
            socks.append(s)
        except OSError:
            break
    time.sleep(0.5)
    answered = 0
    refused = 0
    for s in socks:
        s.setblocking(False)
        try:
            d = s.recv(4096)
            if d.startswith(b"VERSION "):
                answered += 1
            elif d == b"":
                refused += 1
        except BlockingIOError:
            pass
        except ConnectionResetError:
            refused += 1
    fds = proc_fds(a.pid)
    t0 = proc_cpu_ticks(a.pid)
    time.sleep(a.secs)
    ticks = proc_cpu_ticks(a.pid) - t0
    hz = os.sysconf("SC_CLK_TCK")
    cpu_pct = 100.0 * ticks / hz / a.secs
    for s in socks:
        s.close()
    served_after = 0
    deadline = time.time() + 30
    for _ in range(a.after):
        while time.time() < deadline:
            try:
                with connect(a.port) as s:
                    s.sendall(b"version\r\n")
                    if read_until(s, b"\r\n").startswith(b"VERSION "):
                        served_after += 1
                        break
            except (OSError, ConnectionError):
                time.sleep(0.01)
    alive = os.path.exists(f"/proc/{a.pid}")
    print(f"flood: {len(socks)} held, {answered} answered, {refused} closed at once, "
          f"{len(socks) - answered - refused} waiting; server fds {fds}; "
          f"CPU {cpu_pct:.1f}% of a core over {a.secs} s; "
          f"{served_after}/{a.after} served after release; alive={alive}")
    print(f"RESULT held={len(socks)} answered={answered} refused={refused} fds={fds} "
          f"cpu_pct={cpu_pct:.1f} served_after={served_after} alive={int(alive)}")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("churn")
    c.add_argument("--cycles", type=int, default=10000)
    c.add_argument("--threads", type=int, default=4)
    c.add_argument("--max-secs", type=float, default=300)
    c = sub.add_parser("slow")
    c.add_argument("--conns", type=int, default=1000)
    c.add_argument("--interval", type=float, default=1.0)
    c.add_argument("--trickle-secs", type=float, default=20)
    c.add_argument("--silent-secs", type=float, default=30)
    c = sub.add_parser("flood")
    c.add_argument("--conns", type=int, default=500)
    c.add_argument("--secs", type=float, default=3)
    c.add_argument("--after", type=int, default=100)
    a = p.parse_args()
    {"churn": cmd_churn, "slow": cmd_slow, "flood": cmd_flood}[a.cmd](a)


if __name__ == "__main__":
    main()

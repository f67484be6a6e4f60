"""Fills a memcached-protocol server and measures what it holds.

Usage: fill_measure.py PORT PID WORKLOAD N NAME
Prints one markdown table row (see scripts/bench-kv-memory.sh).
"""
import random
import socket
import sys
import time

port, pid, workload, n, name = (
    int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])


def connect():
    for _ in range(500):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            time.sleep(0.02)
    sys.exit(f"server on port {port} did not start")


def key(i):
    return b"k%013d" % i if workload != "mixed" else b"key-%012d" % i


rng = random.Random(42)


def value_len(i):
    if workload == "small":
        return 10
    if workload == "medium":
        return 1024
    return int(10 * (1638.4 ** rng.random()))  # 10 B .. 16 KiB, log-uniform


def recv_until(s, buf, marker):
    while marker not in buf:
        chunk = s.recv(1 << 20)
        if not chunk:
            sys.exit("server closed the connection")
        buf += chunk
    return buf


s = connect()
lens = {}
batch = []
sent = 0
for i in range(n):
    ln = value_len(i)
    lens[i] = ln
    k = key(i)
    batch.append(b"set %s 0 0 %d noreply\r\n%s\r\n" % (k, ln, b"v" * ln))
    if len(batch) >= 2000:
        s.sendall(b"".join(batch))
        batch = []
        sent += 1
        if sent % 20 == 0:
            # Let the server keep up: a round trip every 40,000 sets.
            s.sendall(b"version\r\n")
            recv_until(s, b"", b"\r\n")
s.sendall(b"".join(batch) + b"version\r\n")
recv_until(s, b"", b"\r\n")


def stats():
    s.sendall(b"stats\r\n")
    buf = recv_until(s, b"", b"END\r\n")
    out = {}
    for line in buf.decode().split("\r\n"):
        p = line.split(" ")
        if len(p) == 3 and p[0] == "STAT":
            out[p[1]] = p[2]
    return out


st = stats()
# Data held: for fixed sizes, items held times key plus value; for mixed
# sizes, every key a multi-get still finds, with its value.
held_bytes = 0
f = s.makefile("rb")
if workload != "mixed":
    held_bytes = int(st["curr_items"]) * (len(key(0)) + value_len(0))
for start in range(0, n if workload == "mixed" else 0, 100):
    ks = [key(i) for i in range(start, min(n, start + 100))]
    s.sendall(b"get " + b" ".join(ks) + b"\r\n")
    while True:
        line = f.readline()
        if line == b"END\r\n":
            break
        _, k, _, ln = line.split()
        f.read(int(ln) + 2)
        held_bytes += len(k) + int(ln)
with open(f"/proc/{pid}/status") as fh:
    rss_kib = next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:"))
items = int(st["curr_items"])
rss = rss_kib / 1024
limit = int(st["limit_maxbytes"]) / (1 << 20)
print(f"| {workload} | {name} | {n} | {items} | {held_bytes / (1 << 20):.1f} | {rss:.1f} | "
      f"{st['evictions']} | {items / rss:.0f} | {rss / limit:.2f} |")

#!/usr/bin/env python3
"""Byte-for-byte comparison of a memcached-compatible server with memcached.

Usage: memcached_diff.py KV_HOST:PORT [CASE-SUBSTRING...]

Starts memcached (the `memcached` on PATH, or $MEMCACHED) on a free loopback
port with its default limits, the ones kv has too. Every case below is a
request script. It is sent on a fresh connection to each server (after a
`flush_all` on another connection), the sending side is then shut down, and
everything the server writes until it closes is the reply. The two replies
must be identical. Nothing here says what the answer should be: memcached's
own reply is the reference. Cases marked fresh run against a memcached
started for them alone (its slab statistics remember earlier cases).

Some reply bytes differ between any two servers for reasons that are not
protocol (process id, uptime, CAS counters, connection numbers), so a case
may name masks: each is a regular expression whose capture groups are
replaced, in both replies, by `<n>`, where n numbers the distinct captured
values in order of appearance. Equal values stay equal and different values
stay different, so a CAS that must round-trip is still checked. An "any"
mask replaces every captured value by `<*>` (statistics are compared by
their names and order, not their values).

Exits non-zero if any case differs, and prints both replies of each.
WARNING: flushes both servers.
"""

import os
import re
import socket
import subprocess
import sys
import time

# Values that are not protocol: masked wherever they occur.
CAS_IN_VALUE = rb"VALUE \S+ \d+ \d+ (\d+)\r\n"
# A STAT line's value (stats output is compared by names and order): an
# "any" mask, every captured value becomes `<*>`.
STAT_VALUE = ("any", rb"STAT \S+ ([^\r]*)\r\n")
# Connection numbers of `stats conns`.
CONN_ID = ("any", rb"STAT (\d+):")
# The CAS a meta reply returns (`c` flag).
META_CAS = rb" c(\d+)"
# Times in seconds that a clock tick between two servers' replies may
# change: TTL left (`t`, but not `t-1`), seconds since last access (`l`),
# and `me`'s `exp=` (but not `exp=-1`) and `la=`.
TIMES = ("any", rb"(?: t| l|la=|exp=-?)(?!1\b)(\d+)")


def case(name, data, masks=(), fresh=False, keep=None):
    if isinstance(data, str):
        data = data.encode("latin-1")
    return (name, data, tuple(masks), fresh, keep)


def own_conns(reply):
    """Of a `stats conns` reply, the listener and the connection asking:
    other connections (a previous case's, still closing) come and go."""
    lines = reply.split(b"\r\n")
    keep = {l.split(b":")[0] for l in lines if l.endswith((b":state conn_listening", b":state conn_parse_cmd"))}
    return b"\r\n".join(l for l in lines if not l.startswith(b"STAT ") or l.split(b":")[0] in keep)


def big_get(n, verb="get"):
    keys = " ".join(f"key{i}" for i in range(n))
    return f"set key7 0 0 1\r\nx\r\n{verb} {keys} key7\r\nget key7\r\n"


CASES = [
    # Retrieval with many keys: client libraries send these for batch reads.
    case("multiget of 6000 keys (47 KiB line)", big_get(6000)),
    case("multiget of 15000 keys (128 KiB line)", big_get(15000)),
    case("gets of 15000 keys", big_get(15000, "gets"), [CAS_IN_VALUE]),
    case("get without keys", "get\r\nget \r\nversion x\r\n".replace("version x", "get a")),
    case("get with a 251-byte key", "get " + "k" * 251 + "\r\nget a\r\n"),
    case("get with a 250-byte key", "set " + "k" * 250 + " 0 0 1\r\nx\r\nget " + "k" * 250 + "\r\n"),
    case("line of 3000 bytes in one piece", "x" * 3000 + "\r\nget a\r\n"),
    # noreply: nothing at all comes back for that command, errors included.
    case("delete with a time and noreply", "delete a 10 noreply\r\ndelete a 10\r\nget a\r\n"),
    case(
        "noreply on every storage and arithmetic command",
        "set a 0 0 1 noreply\r\n1\r\nadd a 0 0 1 noreply\r\n2\r\nreplace a 0 0 1 noreply\r\n3\r\n"
        "append a 0 0 1 noreply\r\n4\r\nprepend a 0 0 1 noreply\r\n5\r\ncas a 0 0 1 1 noreply\r\n6\r\n"
        "incr a 1 noreply\r\ndecr a 1 noreply\r\ntouch a 10 noreply\r\nget a\r\n"
        "delete a noreply\r\ndelete a 0 noreply\r\nflush_all noreply\r\nflush_all 0 noreply\r\n"
        "verbosity 1 noreply\r\nget a\r\n",
    ),
    case(
        "noreply on failing commands",
        "incr nothing 1 noreply\r\nset t 0 0 2\r\nab\r\nincr t 1 noreply\r\nincr t x noreply\r\n"
        "touch a x noreply\r\nflush_all x noreply\r\nverbosity x noreply\r\n"
        "set " + "k" * 251 + " 0 0 1 noreply\r\nx\r\nset a x 0 1 noreply\r\nget t\r\n",
    ),
    case(
        "noreply on a too large value and a bad chunk",
        "set big 0 0 2000000 noreply\r\n" + "v" * 2000000 + "\r\nset a 0 0 1 noreply\r\nxyz\r\nget a big\r\n",
    ),
    # Error wording and what happens to the rest of the connection.
    case("flush_all forms", "flush_all invalid\r\nflush_all 0\r\nflush_all -1\r\nflush_all 1 2\r\nflush_all 0 noreply\r\nflush_all noreply\r\nflush_all\r\n"),
    case("flush_all with a delay", "set a 0 0 1\r\nx\r\nflush_all 100\r\nget a\r\nflush_all 0\r\nget a\r\n"),
    case(
        "storage command lines",
        "set a 0 0\r\nset a x 0 1\r\nz\r\nset a 0 0 -1\r\nset a 0 0 x\r\n"
        "set a 0 x 1\r\nz\r\ncas a 0 0 1\r\ncas a 0 0 1 x\r\nz\r\nset a 0 0 1 noreply extra\r\nget a\r\n"
        "set a 0 0 1 extra\r\nz\r\nset a -1 0 1\r\nz\r\nset a 0 0 2147483647\r\nget a\r\n",
    ),
    case("set with a 251-byte key", "set " + "k" * 251 + " 0 0 1\r\nx\r\nget a\r\n"),
    case("bad data chunk", "set a 0 0 1\r\nxyz\r\nget a\r\nset a 0 0 1\r\nx\r\nget a\r\nset b 0 0 2\r\nab\nget b\r\n"),
    case(
        "too large value is swallowed",
        "set a 0 0 1\r\nx\r\nset a 0 0 2000000\r\n" + "v" * 2000000 + "\r\nget a\r\n"
        "set b 0 0 1\r\ny\r\nadd b 0 0 2000000\r\n" + "v" * 2000000 + "\r\nget b\r\n"
        "append b 0 0 2000000\r\n" + "v" * 2000000 + "\r\nget b\r\n",
    ),
    case(
        "append past the item limit",
        "set a 0 0 1000000\r\n" + "v" * 1000000 + "\r\nappend a 0 0 100000\r\n" + "w" * 100000 + "\r\nget b\r\n",
    ),
    case(
        "incr and decr",
        "incr n 1\r\nset n 0 0 2\r\n10\r\nincr n 5\r\ndecr n 100\r\nset n 0 0 20\r\n18446744073709551615\r\n"
        "incr n 1\r\nset t 0 0 2\r\nab\r\nincr t 1\r\nincr n -1\r\nincr n abc\r\n"
        "incr n 18446744073709551616\r\nincr n\r\nincr n 1 2\r\ndecr n x\r\nincr " + "k" * 251 + " 1\r\n"
        "set l 0 0 2\r\n99\r\nincr l 1\r\nget l\r\nset s 0 0 3\r\n 12\r\nincr s 1\r\n"
        "set p 0 0 3\r\n1 2\r\nincr p 1\r\nget p\r\nset q 0 0 3\r\n+05\r\ndecr q 4\r\nget q\r\n"
        "set r 0 0 5\r\n12abc\r\nincr r 1\r\nset m 0 0 2\r\n-1\r\nincr m 1\r\nset z 0 0 2\r\n-0\r\nincr z 1\r\n"
        "set b 0 0 5\r\n10000\r\ndecr b 9999\r\nget b\r\nma b v\r\nmg b v\r\n",
    ),
    case(
        "delete forms",
        "set a 0 0 1\r\n1\r\ndelete a\r\ndelete a\r\nset a 0 0 1\r\n1\r\ndelete a 0\r\ndelete a 5\r\n"
        "delete\r\ndelete a b c d\r\ndelete a noreply x\r\ndelete " + "k" * 251 + "\r\n",
    ),
    case(
        "touch, gat and gats",
        "set a 0 0 1\r\nx\r\ntouch a 10\r\ntouch b 10\r\ntouch a xx\r\ntouch a\r\ngat 100 a b\r\n"
        "gat x a\r\ngat 100\r\ngat\r\ngats 100 a\r\ntouch " + "k" * 251 + " 1\r\n",
        [CAS_IN_VALUE],
    ),
    case("negative expiry", "set n 0 -1 1\r\nx\r\nget n\r\nadd n 0 0 1\r\ny\r\nget n\r\n"),
    case(
        "add, replace, append, prepend, cas",
        "add k 0 0 1\r\na\r\nadd k 0 0 1\r\nb\r\nreplace x 0 0 1\r\nc\r\nreplace k 0 0 1\r\nd\r\n"
        "append k 0 0 2\r\nef\r\nprepend k 0 0 2\r\nbc\r\nappend x 0 0 1\r\nz\r\nget k\r\n"
        "cas x 0 0 1 1\r\nz\r\ncas k 0 0 1 999\r\nz\r\nprepend x 0 0 1\r\nz\r\n",
    ),
    case(
        "verbosity and misc",
        "verbosity\r\nverbosity 1\r\nverbosity x\r\nverbosity 1 2\r\nverbosity 1 2 3\r\n"
        "bogus\r\n\r\n   \r\nshutdown\r\nGET a\r\nversion\r\n",
        [rb"VERSION ([^\r]*)\r\n"],
    ),
    case("cache_memlimit", "cache_memlimit\r\ncache_memlimit x\r\ncache_memlimit 0\r\ncache_memlimit 64\r\ncache_memlimit 64 noreply\r\n"),
    case("quit ends the connection", "set a 0 0 1\r\nx\r\nquit\r\nget a\r\n"),
    case("bare newlines and empty values", "set a 0 0 0\n\r\nget a\nget nothing\n"),
    # Meta commands.
    case(
        "meta get flags",
        "ms foo 3 T0 F5 c\r\nbar\r\nmg foo v c f s t k O123 h l\r\nmg foo h l q k\r\nmg miss v q\r\n"
        "mg miss v k O9\r\nmg miss\r\nmn\r\nmg foo h l t f u\r\nmg foo h\r\nmg foo\r\n",
        [META_CAS, TIMES],
    ),
    case(
        "meta vivify, invalidate and recache",
        "mg viv N30 v c t\r\nmg viv N30 v c t\r\nms foo 3\r\nbar\r\nmd foo I T30\r\nmg foo v c\r\n"
        "mg foo v c\r\nms foo 3 I\r\nnew\r\nmg foo v\r\nmg foo R30 v t\r\nms ttl 2 T10\r\nhi\r\n"
        "mg ttl R30 v t\r\nmg ttl R30 v t\r\nms foo 2 C1\r\nhi\r\nmg foo c\r\n",
        [META_CAS, TIMES],
    ),
    case(
        "meta set modes and CAS",
        "ms a 1 ME\r\n1\r\nms a 1 ME\r\n2\r\nms a 1 MA\r\n3\r\nms a 1 MP\r\n0\r\nms b 1 MR\r\nx\r\n"
        "ms a 1 MR c\r\n9\r\nmg a v\r\nms a 1 MS F7 T100\r\n5\r\nmg a v f t\r\nms b 1 MA\r\nx\r\n"
        "ms b 1 MP\r\nx\r\nms m 1 MA N30\r\nx\r\nms a 1 C1\r\nz\r\nms nope 1 C1\r\nz\r\n"
        "ms a 1 q\r\ny\r\nms b 1 MR q\r\ny\r\nms a 1 k O5 b\r\ny\r\nmn\r\n",
        [META_CAS, TIMES],
    ),
    case(
        "meta delete",
        "ms a 1\r\n1\r\nmd a\r\nmd a\r\nms a 1\r\n1\r\nmd a q\r\nmd a q\r\nmd a O5 k\r\n"
        "ms a 1\r\n1\r\nmd a C1\r\nmd a\r\nmn\r\n",
    ),
    case(
        "meta arithmetic",
        "ma cnt\r\nma cnt N0 J10 v\r\nma cnt v MD D3 t c\r\nma cnt q\r\nma cnt M+ D100 v\r\n"
        "ma cnt M- D1000 v\r\nms txt 1\r\nx\r\nma txt\r\nma cnt MI v T100 t\r\nma foo N0 J5 O7 k c\r\n"
        "ma nope q\r\nma cnt C1 v\r\nma cnt Mi D18446744073709551615 v\r\nmn\r\n",
        [META_CAS, TIMES],
    ),
    case(
        "meta odds and ends",
        "ms a 1 Ms\r\n1\r\nms a 1 Ma\r\n2\r\nmg a v\r\nms a 2 T100\r\nhi\r\nmg a t T30\r\nmg a T50 t\r\n"
        "mg a s\r\nmg a q s k\r\nmg Zm9v b k\r\nmg a O1 q\r\nma x N100 t v\r\nma x t\r\nmn\r\n"
        "ms c 0\r\n\r\nmg c v s\r\nma c\r\nmd a x\r\nmg a v\r\nmn\r\n",
        [TIMES],
    ),
    case("meta debug", "ms foo 3\r\nbar\r\nmg foo\r\nme foo\r\nme nothere\r\nme\r\nms f2 5 F3 T100\r\nhello\r\nme f2\r\n", [rb"cas=(\d+)", TIMES]),
    case(
        "meta base64 keys",
        "ms Zm9v 2 b k\r\nhi\r\nmg foo v\r\nmg Zm9v b v k c\r\nmg !!! b v\r\nms foo 2 b\r\nhi\r\n"
        "md Zm9v b k\r\nmg foo v\r\nmn\r\n",
        [META_CAS, TIMES],
    ),
    case(
        "meta errors",
        "mg\r\nmg foo zz\r\nmg foo v v\r\nmg " + "k" * 251 + " v\r\nms foo\r\nms foo x\r\n"
        "ms foo 2 MX\r\nhi\r\nms foo 2 Fx\r\nhi\r\nms foo 2 T\r\nhi\r\nms foo 2 c\r\nhix\r\n"
        "md\r\nmd foo Cx\r\nma foo Dx\r\nma foo MX\r\nmn x\r\nme\r\n"
        "mg foo O12345678901234567890123456789012345 v\r\nma\r\nmn\r\n",
    ),
    case(
        "meta too large value",
        "ms big 2000000 T0\r\n" + "v" * 2000000 + "\r\nmg big s\r\nms big 1 T0\r\nx\r\n"
        "ms big 2000000 MA\r\n" + "v" * 2000000 + "\r\nmg big s v\r\n",
    ),
    case(
        "classic and meta mixed",
        "set a 5 0 2\r\nhi\r\nmg a v f\r\nms a 3 F9\r\nbye\r\nget a\r\nincr n 1\r\nma n N0 J41\r\n"
        "incr n 1\r\nmg n v\r\ndelete a\r\nmg a v\r\nmn\r\n",
    ),
    # Statistics, compared by names and order (values masked).
    case("stats", "stats\r\n", [STAT_VALUE]),
    case("stats settings", "stats settings\r\n", [STAT_VALUE]),
    case(
        "stats items and slabs",
        "set a 0 0 1\r\nx\r\nset b 5 0 2000\r\n" + "y" * 2000 + "\r\nset c 0 0 600000\r\n" + "z" * 600000
        + "\r\nset d 0 0 100000\r\n" + "z" * 100000 + "\r\nstats items\r\nstats slabs\r\n",
        [STAT_VALUE],
        fresh=True,
    ),
    case("stats items and slabs when empty", "stats items\r\nstats slabs\r\n", [STAT_VALUE], fresh=True),
    case("stats sizes", "stats sizes\r\n", [STAT_VALUE]),
    case("stats conns", "stats conns\r\n", [STAT_VALUE, CONN_ID], keep=own_conns),
    case("stats reset and unknown stats", "stats reset\r\nstats bogus\r\nstats reset x\r\n"),
]


def talk(addr, data, timeout=10.0):
    s = socket.create_connection(addr, timeout=timeout)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            try:
                b = s.recv(1 << 16)
            except socket.timeout:
                return out + b"<<no close within %ds>>" % int(timeout)
            except ConnectionResetError:
                return out + b"<<reset>>"
            if not b:
                return out
            out += b
    finally:
        s.close()


def flush(addr):
    reply = talk(addr, b"flush_all\r\n")
    if reply != b"OK\r\n":
        sys.exit(f"flush_all on {addr} answered {reply!r}")


def mask(reply, masks):
    seen = {}
    for m in masks:
        any_value = isinstance(m, tuple)
        if any_value:
            m = m[1]

        def sub(match):
            text = match.group(0)
            start = match.start(0)
            # Replace groups from the right so offsets stay valid.
            for g in range(len(match.groups()), 0, -1):
                if match.group(g) is None:
                    continue
                v = match.group(g)
                a, b = match.start(g) - start, match.end(g) - start
                if any_value:
                    text = text[:a] + b"<*>" + text[b:]
                else:
                    n = seen.setdefault(v, len(seen))
                    text = text[:a] + b"<%d>" % n + text[b:]
            return text

        reply = re.sub(m, sub, reply)
    return reply


def show(b):
    s = repr(b)[2:-1]
    if len(s) > 4000:
        s = s[:2000] + " ... " + s[-1500:]
    return s.replace("\\r\\n", "\\r\\n\n    ")


class Memcached:
    """A memcached on a free loopback port, stopped on exit."""

    def __init__(self):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.addr = probe.getsockname()
        probe.close()
        binary = os.environ.get("MEMCACHED", "memcached")
        cmd = [binary, "-l", "127.0.0.1", "-p", str(self.addr[1]), "-U", "0"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(self.addr, timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    sys.exit(f"memcached did not start: {' '.join(cmd)}")
                time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    host, port = sys.argv[1].rsplit(":", 1)
    kv = (host, int(port))
    only = sys.argv[2:]
    shared = Memcached()
    try:
        failed, ran = run_cases(kv, shared.addr, only)
    finally:
        shared.stop()
    print(f"{ran - failed} of {ran} cases identical")
    sys.exit(1 if failed else 0)


def run_cases(kv, ref, only):
    failed = 0
    ran = 0
    for name, data, masks, fresh, keep in CASES:
        keep = keep or (lambda r: r)
        if only and not any(o in name for o in only):
            continue
        ran += 1
        flush(kv)
        got = mask(keep(talk(kv, data)), masks)
        if fresh:
            own = Memcached()
            try:
                want = mask(keep(talk(own.addr, data)), masks)
            finally:
                own.stop()
        else:
            flush(ref)
            want = mask(keep(talk(ref, data)), masks)
        if got == want:
            print(f"same: {name}")
        else:
            failed += 1
            print(f"DIFFERENT: {name}\n  memcached:\n    {show(want)}\n  kv:\n    {show(got)}")
    return failed, ran


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Exercises a memcached-compatible server with pymemcache and checks every
result. Usage: conformance_pymemcache.py HOST PORT. Exits non-zero on the
first failed check."""

import sys

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError, MemcacheServerError


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    c = Client((host, port), connect_timeout=5, timeout=10, default_noreply=False)

    c.flush_all()
    check(c.set("a", b"1", expire=0) is True, "set")
    check(c.get("a") == b"1", "get after set")
    check(c.get("missing") is None, "get of a missing key")
    check(c.add("a", b"2") is False, "add on a present key")
    check(c.add("b", b"2") is True, "add on a missing key")
    check(c.replace("zz", b"x") is False, "replace on a missing key")
    check(c.replace("b", b"3") is True, "replace on a present key")
    check(c.append("b", b"4") is True, "append")
    check(c.prepend("b", b"2") is True, "prepend")
    check(c.get("b") == b"234", "append/prepend result")
    check(c.get_many(["a", "b", "missing"]) == {"a": b"1", "b": b"234"}, "get_many")

    value, cas = c.gets("a")
    check(value == b"1" and cas is not None, "gets returns a CAS unique")
    check(c.cas("a", b"new", cas) is True, "cas with the current unique")
    check(c.cas("a", b"newer", cas) is False, "cas with a stale unique")
    check(c.cas("nope", b"x", cas) is None, "cas on a missing key")
    check(c.get("a") == b"new", "value after cas")

    check(c.set("n", b"10") is True, "set a number")
    check(c.incr("n", 5) == 15, "incr")
    check(c.decr("n", 100) == 0, "decr floors at 0")
    check(c.set("n", b"18446744073709551615") is True, "set 2^64-1")
    check(c.incr("n", 1) == 0, "incr wraps at 2^64")
    check(c.incr("missing", 1) is None, "incr of a missing key")
    try:
        c.incr("a", 1)
        check(False, "incr of a non-numeric value fails")
    except MemcacheClientError as e:
        check("non-numeric" in str(e), "incr of a non-numeric value fails")

    check(c.touch("a", 100) is True, "touch a present key")
    check(c.touch("missing", 100) is False, "touch a missing key")
    # pymemcache has no gat(): send it raw (raw_command strips END).
    check(c.raw_command(b"gat 0 a", b"END\r\n") == b"VALUE a 0 3\r\nnew\r\n", "gat")
    check(c.delete("a") is True, "delete")
    check(c.delete("a") is False, "delete of a missing key")

    check(c.set("neg", b"x", expire=-1) is True, "set with negative expiry")
    check(c.get("neg") is None, "negative expiry is already expired")

    # Just under 1 MiB (memcached counts its item header against -I too).
    big = bytes(range(256)) * 4000
    check(c.set("big", big) is True, "set a ~1 MiB value")
    check(c.get("big") == big, "get a ~1 MiB value")
    try:
        c.set("toobig", b"x" * (1024 * 1024 + 1))
        check(False, "a value over 1 MiB is refused")
    except MemcacheServerError as e:
        check("too large" in str(e), "a value over 1 MiB is refused")
    check(c.get("toobig") is None, "the refused value is not stored")

    try:
        c.get("k" * 251)
        check(False, "a key over 250 bytes is refused")
    except MemcacheClientError:
        check(True, "a key over 250 bytes is refused")

    c.set("q", b"1", noreply=True)
    check(c.get("q") == b"1", "noreply set")

    stats = c.stats()
    for name in (b"pid", b"uptime", b"curr_connections", b"total_connections", b"cmd_get",
                 b"cmd_set", b"get_hits", b"get_misses", b"curr_items", b"total_items",
                 b"bytes", b"evictions", b"limit_maxbytes", b"threads"):
        check(name in stats, f"stats has {name.decode()}")
    check(c.version().startswith(b"1."), "version")

    check(c.flush_all() is True, "flush_all")
    check(c.get("b") is None, "flush_all removed items")
    c.close()
    print("pymemcache: all checks passed")


if __name__ == "__main__":
    main()

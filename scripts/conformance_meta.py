#!/usr/bin/env python3
"""Exercises a memcached-compatible server's meta commands through a real
meta-protocol client (the `meta-memcache` package) and checks every result.
Usage: conformance_meta.py HOST PORT. Exits non-zero on the first failed
check. The same checks pass against memcached 1.6. WARNING: flushes the
server."""

import socket
import sys
import threading

from meta_memcache import (
    CacheClient,
    Key,
    LeasePolicy,
    RecachePolicy,
    ServerAddress,
    SetMode,
    StalePolicy,
    connection_pool_factory_builder,
)


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def client(host, port):
    return CacheClient.cache_client_from_servers(
        servers=[ServerAddress(host=host, port=port)],
        connection_pool_factory_fn=connection_pool_factory_builder(recv_timeout=10),
    )


def flush(host, port):
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"flush_all\r\n")
        check(s.recv(64) == b"OK\r\n", "flush_all")


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    flush(host, port)
    c = client(host, port)
    run = "meta-conformance"

    def k(name):
        return f"{run}:{name}"

    # Plain reads and writes, with every serialised type the client has.
    for name, v in [("str", "hello"), ("bytes", b"\x00\xff\r\n"), ("int", 42), ("dict", {"a": [1, 2]})]:
        check(c.set(k(name), v, ttl=60), f"set {name}")
        check(c.get(k(name)) == v, f"get {name} back")
    check(c.get(k("missing")) is None, "get of a missing key")
    got = c.multi_get([k("str"), k("int"), k("missing")])
    check(got == {Key(k("str")): "hello", Key(k("int")): 42, Key(k("missing")): None}, "multi_get")
    # A key that is not plain text goes base64 (the `b` flag).
    odd = Key("spaces and ünïcode " * 4)
    check(c.set(odd, "odd", ttl=60), "set of a base64 key")
    check(c.get(odd) == "odd", "get of a base64 key")

    # Set modes.
    check(c.set(k("add"), "1", ttl=60, set_mode=SetMode.ADD), "add on a missing key")
    check(not c.set(k("add"), "2", ttl=60, set_mode=SetMode.ADD), "add on a present key")
    check(c.refill(k("add2"), "r", ttl=60), "refill on a missing key")
    check(not c.refill(k("add2"), "s", ttl=60), "refill on a present key")
    check(not c.set(k("nope"), "x", ttl=60, set_mode=SetMode.REPLACE), "replace on a missing key")
    check(c.set(k("add"), "3", ttl=60, set_mode=SetMode.REPLACE), "replace on a present key")
    check(c.set(k("add"), "4", ttl=60, set_mode=SetMode.APPEND), "append")
    check(c.set(k("add"), "2", ttl=60, set_mode=SetMode.PREPEND), "prepend")
    check(c.get(k("add")) == "234", "append and prepend result")

    # CAS.
    v, cas = c.get_cas(k("str"))
    check(v == "hello" and isinstance(cas, int), "get_cas")
    new_cas = c.set_cas(k("str"), "v2", ttl=60, cas_token=cas)
    check(new_cas is not None and new_cas != cas, "set with the right CAS returns a new one")
    check(not c.set(k("str"), "v3", ttl=60, cas_token=cas), "set with a stale CAS fails")
    check(c.get(k("str")) == "v2", "value after a failed CAS")

    # Delete, invalidate, touch.
    check(c.delete(k("int")), "delete of a present key")
    check(not c.delete(k("int")), "delete of a missing key")
    check(c.invalidate(k("int")), "invalidate of a missing key")
    check(c.touch(k("str"), ttl=100), "touch of a present key")
    check(not c.touch(k("gone"), ttl=100), "touch of a missing key")

    # Counters.
    check(c.delta_initialize_and_get(k("n"), 5, initial_value=10, initial_ttl=60) == 10, "counter created")
    check(c.delta_and_get(k("n"), 5) == 15, "counter incremented")
    check(c.delta_and_get(k("n"), -20) == 0, "counter decrement stops at 0")
    check(c.delta(k("n"), 3), "delta without a value")
    check(c.delta_and_get(k("nothing"), 1) is None, "delta of a missing counter")

    # Herd control: a missing key is leased to exactly one of many clients
    # (the `N` vivify flag and the W win token); the others wait for the
    # winner's value.
    lease = LeasePolicy(ttl=30, miss_retries=50, miss_retry_wait=0.02, wait_backoff_factor=1.0, miss_max_retry_wait=0.05)
    winners = []
    values = []
    start = threading.Barrier(8)

    def reader():
        mine = client(host, port)
        start.wait()
        v = mine.get_or_lease(k("lease"), lease_policy=lease)
        if v is None:
            winners.append(1)
            mine.set(k("lease"), "computed", ttl=60)
        else:
            values.append(v)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(len(winners) == 1, f"one lease winner among 8 clients (got {len(winners)})")
    check(values == ["computed"] * 7, "the others read the winner's value")

    # Stale-while-revalidate: a delete marks the item stale; one reader wins
    # the right to recompute, the others keep reading the stale value.
    stale = StalePolicy(mark_stale_on_deletion_ttl=30)
    check(c.set(k("swr"), "old", ttl=60), "set before invalidation")
    check(c.delete(k("swr"), stale_policy=stale), "delete marks stale")
    first = c.get_or_lease(k("swr"), lease_policy=lease)
    second = c.get_or_lease(k("swr"), lease_policy=lease)
    check(first is None, "the first reader of a stale item wins the recache")
    check(second == "old", "a later reader gets the stale value")
    check(c.set(k("swr"), "new", ttl=60), "the winner stores a fresh value")
    check(c.get(k("swr")) == "new", "fresh value after recache")

    # Recache before expiry: with the TTL under the recache threshold one
    # reader is told to refresh, the rest keep the value.
    check(c.set(k("rc"), "v", ttl=10), "set with a short TTL")
    rp = RecachePolicy(ttl=30)
    a = c.get_or_lease(k("rc"), lease_policy=lease, recache_policy=rp)
    b = c.get_or_lease(k("rc"), lease_policy=lease, recache_policy=rp)
    check(a is None and b == "v", "one recache winner, then the value")

    print("meta-memcache suite: all passed")


if __name__ == "__main__":
    main()

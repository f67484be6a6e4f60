#!/usr/bin/env python3
"""Byte-for-byte comparison of the kv example's defenses against memcached.

Usage: security_compare.py KV_BIN MEMCACHED_BIN AUTH_FILE CERT KEY

Starts six servers on free loopback ports: kv and memcached each plain,
each with ASCII authentication (-Y AUTH_FILE, which must hold alice:secret
and bob:hunter2), and each with TLS (-Z -o ssl_chain_cert=CERT,ssl_key=KEY,
CERT self-signed for 127.0.0.1). Sends every case below to both servers of a pair, each
case on a fresh connection, one chunk at a time with a short pause between
chunks, then reads until the server closes or stays quiet. The replies and
whether the connection was closed must be identical. Cases are chosen to be
deterministic: none depends on how the server happens to split its reads.
Before authentication each chunk carries one request at most: memcached
answers only the last of several requests that arrive in one read there,
where kv answers each (a documented difference).

Exits non-zero on any difference (printing both sides).
"""

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

QUIET = 0.4  # seconds of silence that end a reply
PAUSE = 0.05  # between chunks


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(cmd):
    """Starts a server, returns (process, port) once it accepts."""
    for _ in range(5):
        port = free_port()
        p = subprocess.Popen(
            [c.replace("{port}", str(port)) for c in cmd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(500):
            if p.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return p, port
            except OSError:
                time.sleep(0.01)
        p.kill()
        p.wait()
    raise SystemExit("server did not start: %s" % " ".join(cmd))


def talk(port, chunks):
    """Sends the chunks; returns (reply bytes, 'closed' or 'open')."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = b""
    state = "open"
    try:
        for ch in chunks:
            s.sendall(ch)
            time.sleep(PAUSE)
        s.settimeout(QUIET)
        while True:
            d = s.recv(65536)
            if not d:
                state = "closed"
                break
            data += d
    except socket.timeout:
        pass
    except (ConnectionResetError, BrokenPipeError):
        state = "closed"
    finally:
        s.close()
    return data, state


AUTH = b"set auth 0 0 12\r\nalice secret\r\n"

# Cases for the servers with -Y. Each is a list of chunks.
AUTH_CASES = [
    [b"get a\r\n"],
    [b"stats\r\n"],
    [b"quit\r\n"],
    [b"bogus\r\n", b"get a\r\n"],
    [b"\r\n"],
    [b"\n"],
    [b"\n", b"\n"],
    [b"set a\r\n"],
    [b"set a 0 0\r\n"],
    [b"add a 0 0 12\r\n", b"alice secret\r\n"],
    [b"SET a 0 0 12\r\n", b"alice secret\r\n"],
    [b"set a 0 0 -1\r\n", b"alice secret\r\n"],
    [b"set a 0 0 12x\r\n", b"alice secret\r\n"],
    [b"set a 0 0 5\r\nhello\r\n"],
    [b"set a 0 0 12\r\nalice:secret\r\n"],
    [b"set a 0 0 12\r\nalice secreT\r\n", b"get a\r\n"],
    [b"set a 0 0 12\r\nalice secre\r\n"],
    [b"set a 0 0 13\r\nalice secrets\r\n", b"get a\r\n"],
    [b"set a 0 0 11\r\nbob hunter2\r\n", b"get a\r\n"],
    [AUTH, b"get auth\r\n", b"set k 0 0 5\r\nhello\r\n", b"get k\r\n"],
    [b"set x 5 100 12 noreply\r\nalice secret\r\n", b"get x\r\n"],
    [b"set a 0 0 +12\r\nalice secret\r\n", b"get a\r\n"],
    [b"set a 0 0 12\tx\r\nalice secret\r\n", b"get a\r\n"],
    [b"set  a  0 0 12 \r\nalice secret\r\n", b"get a\r\n"],
    [b"set a x y 12\r\nalice secret\r\n"],
    [b"set a 0 0 12\nalice secret\r\n", b"get a\r\n"],
    [b"set a 0 0 13\r\nalice  secret\r\n"],
    [b"set a 0 0 13\r\nalice secret \r\n"],
    [b"set a 0 0 13\r\n alice secret\r\n"],
    [b"set a 0 0 18\r\nalice secret extra\r\n"],
    [b"set a 0 0 12\r\nalice\x00secret\r\n"],
    [b"set a 0 0 12\r\nalice\tsecret\r\n"],
    [b"set a 0 0 6\r\nalice \r\n"],
    [b"set a 0 0 0\r\n\r\n"],
    [b"set a 0 0 3\r\nabcd\r\n"],
    [b"set a 0 0 12\r\nalice secret\n\n"],
    [b"set a 0 0 3\r\n", b"abcd\r\n"],
    [b"set a 0 0 12\r\n", b"alice ", b"secret\r\n", b"get a\r\n"],
    [b"set a 0 0 12\r\nalice secreT\r\n", AUTH, b"get a\r\n"],
    [b"x" * 3000],
    [b"x" * 3000, b"\r\n" + AUTH],
    [b"x" * 2000, b"\r\n"],
    [b"set a 0 0 100000\r\n", b"alice secret\r\n"],
    [b"set a 0 0 100000\r\n", b"z" * 17000],
    [b"set a 0 0 16380\r\n", b"y" * 16382],
    [b"GET / HTTP/1.1\r\n", b"get a\r\n"],
    [AUTH, b"GET / HTTP/1.1\r\n"],
    [AUTH, b"get a\r\n", b"quit\r\n"],
    [AUTH, AUTH, b"get auth\r\n"],
    [AUTH, b"set a 0 0 12\r\nalice secreT\r\n", b"get a\r\n"],
]

# Cases for the servers without -Y: the HTTP hang-up and its neighbours.
PLAIN_CASES = [
    [b"GET / HTTP/1.0\r\n"],
    [b"PUT /path HTTP/1.1\r\n"],
    [b"DELETE HTTP/1.1\r\n"],
    [b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"],
    [b"GET / HTTP/1.0\n"],
    [b"GET / HTTP/1.0 \r\n"],
    [b"GET / HTTP/1.0\x00junk\r\n"],
    [b"GET / HTTP/1.1\rX\r\n"],
    [b"HTTP/1.1\r\n"],
    [b"xx HTTP/1.1\r\n"],
    [b"FOO bar HTTP/\r\n"],
    [b"FOO bar HTTP/2\r\n"],
    [b"OPTIONS * HTTP/1.1\r\n"],
    [b"set k 0 0 1\r\nx\r\n", b"GET / HTTP/1.0\r\n", b"get k\r\n"],
    [b"set k 0 0 1\r\nx\r\n", b"HEAD / HTTP/1.0\r\n"],
    [b"GET / HTTP/1.0 extra\r\n"],
    [b"GET /\r\n"],
    [b"GET / HTTP/1.0"],
    [b"FOO bar HTTPX\r\n"],
    [b"FOO bar http/1.1\r\n"],
    [b"HTTP/1.1 x\r\n"],
    [b"X HTTP/1.1\r\n"],
    [b"x  HTTP/1.1\r\n"],
    [b"GE\x00T / HTTP/1.0\r\n"],
    [b"get / HTTP/1.0\r\n"],
    [b"delete HTTP/1.1\r\n"],
    [b"gxx / HTTP/1.1\r\n"],
    [b"sxx / HTTP/1.1\r\n"],
    [b"axx / HTTP/1.1\r\n"],
    [b"cxx / HTTP/1.1\r\n"],
    [b"ixx / HTTP/1.1\r\n"],
    [b"dxx / HTTP/1.1\r\n"],
    [b"txx / HTTP/1.1\r\n"],
    [b"bxx / HTTP/1.1\r\n"],
    [b"zxx / HTTP/1.1\r\n"],
    [b"lru / HTTP/1.1\r\n"],
    [b"watch / HTTP/1.1\r\n"],
    [b"lru_crawler / HTTP/1.1\r\n"],
    [b"quit / HTTP/1.1\r\n"],
    [b"set HTTP/1.1 0 0 1\r\nx\r\n", b"get HTTP/1.1\r\n"],
    [b"incr HTTP/1.1\r\n"],
    [b"FOO " + b" ".join(b"a%d" % i for i in range(21)) + b" HTTP/1.1 more\r\n"],
    [b"FOO " + b" ".join(b"a%d" % i for i in range(22)) + b" HTTP/1.1\r\n"],
]


# Plaintext sent to the TLS servers: nothing may come back.
PLAINTEXT_TO_TLS_CASES = [
    [b"version\r\n"],
    [b"set k 0 0 1\r\nx\r\nget k\r\n"],
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"],
    [b"\x80\x0b" + b"\x00" * 22],
]

# Sessions inside TLS: the same replies as in plaintext.
TLS_SESSIONS = [
    [b"set k 0 0 5\r\nhello\r\n", b"get k\r\n", b"delete k\r\n", b"get k\r\n"],
    [b"incr n 1\r\n", b"set n 0 0 1\r\n9\r\n", b"incr n 1\r\n", b"bogus\r\n"],
    [b"GET / HTTP/1.1\r\n", b"get k\r\n"],
]


def tls_talk(port, cert, chunks):
    """Like talk(), inside a TLS session that verifies the server."""
    ctx = ssl.create_default_context(cafile=cert)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    data = b""
    state = "open"
    try:
        for ch in chunks:
            s.sendall(ch)
            time.sleep(PAUSE)
        s.settimeout(QUIET)
        while True:
            d = s.recv(65536)
            if not d:
                state = "closed"
                break
            data += d
    except socket.timeout:
        pass
    except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
        state = "closed"
    finally:
        s.close()
    return data, state


def pymemcache_tls(port, cert):
    """A real client over TLS: pymemcache with an ssl context."""
    from pymemcache.client.base import Client

    ctx = ssl.create_default_context(cafile=cert)
    c = Client(("127.0.0.1", port), tls_context=ctx, timeout=5, connect_timeout=5)
    out = []
    out.append(c.set("tls-key", b"over tls", noreply=False))
    out.append(c.get("tls-key"))
    out.append(c.add("tls-key", b"again", noreply=False))
    out.append(c.incr("tls-n", 1))
    out.append(c.set("tls-n", b"41", noreply=False))
    out.append(c.incr("tls-n", 1))
    out.append(c.get_many(["tls-key", "tls-n", "absent"]))
    out.append(c.delete("tls-key", noreply=False))
    big = bytes(range(256)) * 4096  # 1 MiB less 48 bytes of framing
    out.append(c.set("tls-big", big[: 1000 * 1000], noreply=False))
    out.append(c.get("tls-big") == big[: 1000 * 1000])
    c.close()
    return out


def stat(port, name, chunks=()):
    """A stat's value on a fresh connection (after sending `chunks`)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    for ch in chunks:
        s.sendall(ch)
    s.sendall(b"stats\r\n")
    buf = b""
    while not buf.endswith(b"END\r\n"):
        d = s.recv(65536)
        if not d:
            break
        buf += d
    s.close()
    for line in buf.split(b"\r\n"):
        parts = line.split(b" ")
        if len(parts) == 3 and parts[0] == b"STAT" and parts[1] == name:
            return int(parts[2])
    raise SystemExit("no stat %s" % name.decode())


def compare(label, kv_port, mc_port, cases):
    failures = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        kv = list(pool.map(lambda c: talk(kv_port, c), cases))
        mc = list(pool.map(lambda c: talk(mc_port, c), cases))
    for case, k, m in zip(cases, kv, mc):
        shown = b"".join(case)
        if len(shown) > 80:
            shown = shown[:60] + b"...(%d bytes)" % len(shown)
        if k != m:
            failures += 1
            print("DIFF %s %r\n  kv:        %r\n  memcached: %r" % (label, shown, k, m))
        else:
            print("same %s %r -> %r" % (label, shown, m))
    return failures


def main():
    kv_bin, mc_bin, auth_file, cert, key = sys.argv[1:6]
    tls = ["-Z", "-o", "ssl_chain_cert=%s,ssl_key=%s" % (cert, key)]
    mc_user = ["-u", "nobody"] if os.getuid() == 0 else []
    procs = []
    try:
        servers = {}
        for name, cmd in [
            ("kv", [kv_bin, "-l", "127.0.0.1", "-p", "{port}", "-t", "2"]),
            ("kv-auth", [kv_bin, "-l", "127.0.0.1", "-p", "{port}", "-t", "2", "-Y", auth_file]),
            ("mc", [mc_bin, *mc_user, "-U", "0", "-l", "127.0.0.1", "-p", "{port}", "-t", "2"]),
            (
                "mc-auth",
                [mc_bin, *mc_user, "-U", "0", "-l", "127.0.0.1", "-p", "{port}", "-t", "2", "-Y", auth_file],
            ),
            ("kv-tls", [kv_bin, "-l", "127.0.0.1", "-p", "{port}", "-t", "2", *tls]),
            ("mc-tls", [mc_bin, *mc_user, "-U", "0", "-l", "127.0.0.1", "-p", "{port}", "-t", "2", *tls]),
        ]:
            p, port = start(cmd)
            procs.append(p)
            servers[name] = port
        failures = compare("plain", servers["kv"], servers["mc"], PLAIN_CASES)
        failures += compare("auth", servers["kv-auth"], servers["mc-auth"], AUTH_CASES)
        failures += compare(
            "plaintext-to-tls", servers["kv-tls"], servers["mc-tls"], PLAINTEXT_TO_TLS_CASES
        )
        for case in TLS_SESSIONS:
            k = tls_talk(servers["kv-tls"], cert, case)
            m = tls_talk(servers["mc-tls"], cert, case)
            if k != m:
                failures += 1
                print("DIFF tls %r\n  kv:        %r\n  memcached: %r" % (b"".join(case), k, m))
            else:
                print("same tls %r -> %r" % (b"".join(case), m))
        k = pymemcache_tls(servers["kv-tls"], cert)
        m = pymemcache_tls(servers["mc-tls"], cert)
        if k != m:
            failures += 1
            print("DIFF pymemcache over tls\n  kv:        %r\n  memcached: %r" % (k, m))
        else:
            print("same pymemcache over tls -> %r" % (m,))
        # The failure counters: one good and two bad attempts.
        deltas = []
        for name in ("kv-auth", "mc-auth"):
            port = servers[name]
            before = (stat(port, b"auth_cmds", [AUTH]), stat(port, b"auth_errors", [AUTH]))
            for creds in (b"alice secreT", b"bob secret", b"alice secret"):
                talk(port, [b"set a 0 0 %d\r\n%s\r\n" % (len(creds), creds)])
            after = (stat(port, b"auth_cmds", [AUTH]), stat(port, b"auth_errors", [AUTH]))
            deltas.append((after[0] - before[0], after[1] - before[1]))
        if deltas[0] != deltas[1]:
            failures += 1
            print("DIFF stats auth_cmds/auth_errors deltas: kv %r, memcached %r" % tuple(deltas))
        else:
            print("same stats auth_cmds/auth_errors deltas %r" % (deltas[0],))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    total = len(PLAIN_CASES) + len(AUTH_CASES) + len(PLAINTEXT_TO_TLS_CASES) + len(TLS_SESSIONS) + 2
    if failures:
        print("security comparison: %d of %d cases differ" % (failures, total))
        sys.exit(1)
    print("security comparison: all %d cases identical to memcached" % total)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# KV benchmark: the kv example against memcached, same worker threads, same
# load generator (examples/kv_load.rs: 50 connections, 1:9 set:get over
# 100k keys, 100-byte values), at pipeline depth 1 and 16.
#
# Servers alternate (kv memcached kv memcached ...) for ROUNDS rounds per
# depth; each run starts a fresh server on 127.0.0.1, loads it for SECS
# seconds (at most MAX_OPS requests), and stops it by PID. The table shows
# medians: requests/s, p99 latency, and server CPU microseconds per request
# (utime + stime from /proc/PID/stat over the measured window), with the
# ratio kv/memcached.
#
# Usage: scripts/bench-kv.sh
# Environment (defaults in brackets):
#   THREADS [2]       worker threads of both servers
#   CONNS [50]        client connections
#   DEPTHS ["1 16"]   pipeline depths
#   ROUNDS [3]        runs per server and depth
#   SECS [5]          measured seconds per run
#   MAX_OPS [50000000] request cap per run
#   OUT []            also write the markdown table to this file
#   CARGO_TARGET_DIR  where to build (default: target)
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-2}
CONNS=${CONNS:-50}
DEPTHS=${DEPTHS:-"1 16"}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-5}
MAX_OPS=${MAX_OPS:-50000000}
OUT=${OUT:-}
TARGET=${CARGO_TARGET_DIR:-target}

for v in THREADS CONNS ROUNDS SECS MAX_OPS; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
        echo "bench-kv: $v must be a whole number, got '${!v}'" >&2
        exit 2
    fi
done

if ! command -v memcached >/dev/null 2>&1; then
    echo "== installing memcached" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq memcached >/dev/null 2>&1 || {
        apt-get update -qq && apt-get install -y -qq memcached
    }
fi

echo "== building release binaries" >&2
cargo build --release --quiet --example kv --example kv_load
KV="$TARGET/release/examples/kv"
LOAD="$TARGET/release/examples/kv_load"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

server_pid=
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap stop_server EXIT

start_server() { # name port
    case $1 in
        kv) "$KV" -l 127.0.0.1 -p "$2" -t "$THREADS" -m 1024 -c 4096 & ;;
        memcached) memcached -l 127.0.0.1 -p "$2" -U 0 -t "$THREADS" -m 1024 -c 4096 -u "$(id -un)" & ;;
    esac
    server_pid=$!
    # Wait (bounded) until it answers.
    for _ in $(seq 1 500); do
        if python3 - "$2" <<'PY' 2>/dev/null; then return 0; fi
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"version\r\n")
assert s.recv(100).startswith(b"VERSION")
PY
        sleep 0.01
    done
    echo "bench-kv: $1 did not start" >&2
    exit 1
}

# shellcheck source=scripts/lib/ab-load.sh
. scripts/lib/ab-load.sh
ab_run kv memcached start_server stop_server server_pid

table=$(
    ab_table kv memcached server
    echo
    echo "$THREADS server threads, $CONNS connections, 1:9 set:get, 100k keys, 100-byte values;"
    echo "medians of $ROUNDS runs of ${SECS} s each, servers alternated; $(nproc) cores, loopback."
)
echo "$table"
if [ -n "$OUT" ]; then
    echo "$table" >"$OUT"
fi

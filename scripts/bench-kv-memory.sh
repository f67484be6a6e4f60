#!/usr/bin/env bash
# Memory benchmark: how much the kv example and memcached hold under the
# same -m, and what that costs the process.
#
# For each workload, each server (alternating kv memcached kv ...) starts
# fresh on 127.0.0.1 with the same -m and thread count, is filled with
# `set ... noreply` over one pipelined connection (well past -m, so both
# evict), and is then measured: items held (`curr_items`), data bytes held
# (keys plus values of the items held; for mixed sizes, of every item a
# multi-get still finds), VmRSS from
# /proc/PID/status, evictions, and items per MiB of resident memory.
#
# Workloads:
#   small   14-byte keys, 10-byte values, SMALL_N sets
#   medium  14-byte keys, 1 KiB values, MEDIUM_N sets
#   mixed   16-byte keys, values of 10 B to 16 KiB (log-uniform, seeded),
#           MIXED_N sets
#
# Usage: scripts/bench-kv-memory.sh
# Environment (defaults in brackets):
#   MEM [100]          -m of both servers, MiB
#   THREADS [1]        worker threads of both servers
#   WORKLOADS ["small medium mixed"]
#   SMALL_N [3000000]  MEDIUM_N [300000]  MIXED_N [200000]
#   OUT []             also write the markdown table to this file
#   KV []              a kv binary to measure instead of building one
#   CARGO_TARGET_DIR   where to build (default: target)
set -euo pipefail
cd "$(dirname "$0")/.."

MEM=${MEM:-100}
THREADS=${THREADS:-1}
WORKLOADS=${WORKLOADS:-"small medium mixed"}
SMALL_N=${SMALL_N:-3000000}
MEDIUM_N=${MEDIUM_N:-300000}
MIXED_N=${MIXED_N:-200000}
OUT=${OUT:-}
TARGET=${CARGO_TARGET_DIR:-target}

for v in MEM THREADS SMALL_N MEDIUM_N MIXED_N; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
        echo "bench-kv-memory: $v must be a whole number, got '${!v}'" >&2
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

if [ -z "${KV:-}" ]; then
    echo "== building the release binary" >&2
    cargo build --release --quiet --example kv
    KV="$TARGET/release/examples/kv"
fi

server_pid=
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap stop_server EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_server() { # name port
    case $1 in
        kv) "$KV" -l 127.0.0.1 -p "$2" -t "$THREADS" -m "$MEM" -c 64 2>/dev/null & ;;
        memcached) memcached -l 127.0.0.1 -p "$2" -U 0 -t "$THREADS" -m "$MEM" -c 64 -u "$(id -un)" & ;;
    esac
    server_pid=$!
}

rows=()
for w in $WORKLOADS; do
    case $w in
        small) n=$SMALL_N ;;
        medium) n=$MEDIUM_N ;;
        mixed) n=$MIXED_N ;;
        *) echo "bench-kv-memory: unknown workload '$w'" >&2; exit 2 ;;
    esac
    for server in kv memcached; do
        port=$(free_port)
        start_server "$server" "$port"
        echo "== $w: $server" >&2
        row=$(python3 scripts/lib/fill_measure.py "$port" "$server_pid" "$w" "$n" "$server")
        rows+=("$row")
        stop_server
    done
done

table=$(
    echo "| workload | server | sets | items held | data held (MiB) | VmRSS (MiB) | evictions | items per MiB RSS | RSS / -m |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for r in "${rows[@]}"; do echo "$r"; done
    echo
    echo "-m $MEM and $THREADS worker thread(s) for both servers; memcached $(memcached -V | cut -d' ' -f2); one pipelined client per fill, \`set noreply\`."
)
echo "$table"
if [ -n "$OUT" ]; then
    echo "$table" >"$OUT"
fi

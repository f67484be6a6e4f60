#!/usr/bin/env bash
# KV benchmark across builds: two kv binaries (a base build and a new one),
# the new one again with --fiber-per-connection, and memcached, with the
# load of scripts/bench-kv.sh (examples/kv_load.rs: CONNS connections, 1:9
# set:get over 100k keys, 100-byte values) at each pipeline depth.
#
# Every round runs each server in turn (base new new-fpc memcached base new
# ...), each started fresh on 127.0.0.1, loaded for SECS seconds and
# stopped by PID. The table shows medians (requests/s, p99, server CPU
# microseconds per request) and each server's ratio to memcached and to
# the base build.
#
# Usage: KV_BASE=path/to/old/kv KV_NEW=path/to/new/kv scripts/bench-kv-builds.sh
# Environment (defaults in brackets):
#   KV_BASE, KV_NEW   the two kv binaries (release builds)
#   LOAD [target/release/examples/kv_load]  the load generator
#   THREADS [2]  CONNS [50]  DEPTHS ["1 16"]  ROUNDS [5]  SECS [5]
#   MAX_OPS [50000000]
#   OUT []            also write the markdown table to this file
set -euo pipefail
cd "$(dirname "$0")/.."

: "${KV_BASE:?set KV_BASE to the base kv binary}"
: "${KV_NEW:?set KV_NEW to the new kv binary}"
LOAD=${LOAD:-target/release/examples/kv_load}
THREADS=${THREADS:-2}
CONNS=${CONNS:-50}
DEPTHS=${DEPTHS:-"1 16"}
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-5}
MAX_OPS=${MAX_OPS:-50000000}
OUT=${OUT:-}
SERVERS="base new new-fpc memcached"

for v in THREADS CONNS ROUNDS SECS MAX_OPS; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
        echo "bench-kv-builds: $v must be a whole number, got '${!v}'" >&2
        exit 2
    fi
done
for b in "$KV_BASE" "$KV_NEW" "$LOAD"; do
    [ -x "$b" ] || {
        echo "bench-kv-builds: $b is not an executable" >&2
        exit 2
    }
done
command -v memcached >/dev/null || {
    echo "bench-kv-builds: memcached is not installed" >&2
    exit 2
}

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
        base) "$KV_BASE" -l 127.0.0.1 -p "$2" -t "$THREADS" -m 1024 -c 4096 & ;;
        new) "$KV_NEW" -l 127.0.0.1 -p "$2" -t "$THREADS" -m 1024 -c 4096 & ;;
        new-fpc)
            "$KV_NEW" -l 127.0.0.1 -p "$2" -t "$THREADS" -m 1024 -c 4096 \
                --fiber-per-connection &
            ;;
        memcached) memcached -l 127.0.0.1 -p "$2" -U 0 -t "$THREADS" -m 1024 -c 4096 -u "$(id -un)" & ;;
    esac
    server_pid=$!
    for _ in $(seq 1 500); do
        if python3 - "$2" <<'PY' 2>/dev/null; then return 0; fi
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"version\r\n")
assert s.recv(100).startswith(b"VERSION")
PY
        sleep 0.01
    done
    echo "bench-kv-builds: $1 did not start" >&2
    exit 1
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "na"; else print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a=="na" || b=="na" || b==0) print "na"; else printf "%.2f", a/b }'; }

results=$(mktemp)
trap 'stop_server; rm -f "$results"' EXIT
for depth in $DEPTHS; do
    for round in $(seq 1 "$ROUNDS"); do
        for name in $SERVERS; do
            port=$(free_port)
            start_server "$name" "$port"
            line=$(timeout $((SECS + 120)) "$LOAD" --addr "127.0.0.1:$port" --conns "$CONNS" \
                --depth "$depth" --secs "$SECS" --max-ops "$MAX_OPS" --server-pid "$server_pid" |
                grep '^RESULT')
            stop_server
            echo "$name depth=$depth round=$round $line" >&2
            echo "$name $depth $line" >>"$results"
        done
    done
done

field() { # name depth key
    grep "^$1 $2 " "$results" | tr ' ' '\n' | grep "^$3=" | cut -d= -f2 | median
}

table=$(
    echo "| depth | server | requests/s | p99 (µs) | CPU µs/request | req/s vs memcached | CPU vs memcached | req/s vs base | CPU vs base |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for depth in $DEPTHS; do
        mc_ops=$(field memcached "$depth" ops_per_sec)
        mc_cpu=$(field memcached "$depth" server_cpu_us_per_op)
        base_ops=$(field base "$depth" ops_per_sec)
        base_cpu=$(field base "$depth" server_cpu_us_per_op)
        for name in $SERVERS; do
            ops=$(field "$name" "$depth" ops_per_sec)
            cpu=$(field "$name" "$depth" server_cpu_us_per_op)
            echo "| $depth | $name | $ops | $(field "$name" "$depth" p99_us) | $cpu | $(ratio "$ops" "$mc_ops") | $(ratio "$cpu" "$mc_cpu") | $(ratio "$ops" "$base_ops") | $(ratio "$cpu" "$base_cpu") |"
        done
    done
    echo
    echo "$THREADS server threads, $CONNS connections, 1:9 set:get, 100k keys, 100-byte values;"
    echo "medians of $ROUNDS runs of ${SECS} s each, servers alternated; $(nproc) cores, loopback."
)
echo "$table"
if [ -n "$OUT" ]; then
    echo "$table" >"$OUT"
fi

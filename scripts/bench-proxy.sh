#!/usr/bin/env bash
# Proxy benchmark: the kv_proxy example against twemproxy (nutcracker), both
# in front of the same two kv backends, under the same load
# (examples/kv_load.rs: 1:9 set:get over 100k keys, 100-byte values), at
# pipeline depth 1 and 16.
#
# The two backends start once and serve every run. The proxies alternate
# (kv_proxy nutcracker kv_proxy nutcracker ...) for ROUNDS rounds per depth;
# each run starts a fresh proxy on 127.0.0.1, loads it for SECS seconds (at
# most MAX_OPS requests), and stops it by PID. The table shows medians:
# requests/s, p99 latency, and the proxy's CPU microseconds per request
# (utime + stime from /proc/PID/stat over the measured window), with the
# ratio kv_proxy/twemproxy.
#
# Usage: scripts/bench-proxy.sh
# Environment (defaults in brackets):
#   PROXY_THREADS [1]  kv_proxy worker threads (twemproxy has one thread)
#   CONNS [50]         client connections
#   DEPTHS ["1 16"]    pipeline depths
#   ROUNDS [3]         runs per proxy and depth
#   SECS [5]           measured seconds per run
#   MAX_OPS [50000000] request cap per run
#   OUT []             also write the markdown table to this file
#   JSON [OUT with .json, else docs/bench-proxy.json]  the figures as JSON
#                      (scripts/lib/bench-json.sh)
#   CHARTS [1]         0 skips drawing the charts (scripts/bench-report.sh)
#   CARGO_TARGET_DIR   where to build (default: target)
set -euo pipefail
cd "$(dirname "$0")/.."

PROXY_THREADS=${PROXY_THREADS:-1}
CONNS=${CONNS:-50}
DEPTHS=${DEPTHS:-"1 16"}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-5}
MAX_OPS=${MAX_OPS:-50000000}
OUT=${OUT:-}
if [ -n "$OUT" ]; then
    JSON=${JSON:-${OUT%.md}.json}
else
    JSON=${JSON:-docs/bench-proxy.json}
fi
TARGET=${CARGO_TARGET_DIR:-target}

for v in PROXY_THREADS CONNS ROUNDS SECS MAX_OPS; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
        echo "bench-proxy: $v must be a whole number, got '${!v}'" >&2
        exit 2
    fi
done

if ! command -v nutcracker >/dev/null 2>&1; then
    echo "== installing nutcracker (twemproxy)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq nutcracker >/dev/null 2>&1 || {
        apt-get update -qq && apt-get install -y -qq nutcracker
    }
fi

echo "== building release binaries" >&2
cargo build --release --quiet --example kv --example kv_proxy --example kv_load
KV="$TARGET/release/examples/kv"
PROXY="$TARGET/release/examples/kv_proxy"
LOAD="$TARGET/release/examples/kv_load"

work=$(mktemp -d)
backend_pids=()
proxy_pid=
stop_proxy() {
    if [ -n "$proxy_pid" ]; then
        kill "$proxy_pid" 2>/dev/null || true
        wait "$proxy_pid" 2>/dev/null || true
        proxy_pid=
    fi
}
cleanup() {
    stop_proxy
    for p in "${backend_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${backend_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() { # name port
    for _ in $(seq 1 500); do
        if python3 - "$2" <<'PY' 2>/dev/null; then return 0; fi
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"version\r\n")
assert s.recv(100).startswith(b"VERSION")
PY
        sleep 0.01
    done
    echo "bench-proxy: $1 did not start" >&2
    exit 1
}

backends=()
for i in 1 2; do
    p=$(free_port)
    "$KV" -l 127.0.0.1 -p "$p" -t 1 -m 1024 -c 4096 &
    backend_pids+=($!)
    backends+=("127.0.0.1:$p")
    wait_ready "kv$i" "$p"
done
echo "== kv backends on ${backends[*]}" >&2

start_proxy() { # name port
    # Local: ab_run, which calls this, keeps its second server's name in b.
    local b args=()
    case $1 in
        kv_proxy)
            for b in "${backends[@]}"; do args+=(--backend "$b"); done
            "$PROXY" --listen "127.0.0.1:$2" -t "$PROXY_THREADS" -c 4096 "${args[@]}" &
            ;;
        twemproxy)
            cat >"$work/nutcracker.yml" <<YML
kv:
  listen: 127.0.0.1:$2
  hash: fnv1a_64
  distribution: ketama
  timeout: 2000
  auto_eject_hosts: false
  servers:
   - ${backends[0]}:1 kv1
   - ${backends[1]}:1 kv2
YML
            nutcracker -c "$work/nutcracker.yml" -a 127.0.0.1 -s "$(free_port)" \
                -o "$work/nutcracker.log" &
            ;;
    esac
    proxy_pid=$!
    wait_ready "$1" "$2"
}

# shellcheck source=scripts/lib/ab-load.sh
. scripts/lib/ab-load.sh
# shellcheck source=scripts/lib/bench-json.sh
. scripts/lib/bench-json.sh
ab_run kv_proxy twemproxy start_proxy stop_proxy proxy_pid

json_begin
json_meta benchmark '"proxy"'
json_meta title '"kv_proxy against twemproxy"'
json_meta source '"scripts/bench-proxy.sh"'
json_machine
json_meta server_threads "$(json_num "$PROXY_THREADS")"
json_meta client_threads null
json_meta connections "$(json_num "$CONNS")"
json_meta secs "$(json_num "$SECS")"
json_meta rounds "$(json_num "$ROUNDS")"
json_meta scenario_label '"pipeline depth"'
json_meta server_label '"proxy"'
json_meta throughput_unit '"requests/s"'
json_meta cpu_unit '"µs/request"'
json_meta baseline '"twemproxy"'
ab_json kv_proxy twemproxy "$JSON"

table=$(
    ab_table kv_proxy twemproxy proxy
    echo
    echo "kv_proxy with $PROXY_THREADS worker thread(s), twemproxy (one thread); two kv backends"
    echo "with one thread each; $CONNS connections, 1:9 set:get, 100k keys, 100-byte values;"
    echo "medians of $ROUNDS runs of ${SECS} s each, proxies alternated; $(nproc) cores, loopback."
    echo
    json_links "${OUT:-$JSON}" "$JSON" proxy
)
echo "$table"
if [ -n "$OUT" ]; then
    echo "$table" >"$OUT"
fi
json_charts "$JSON"

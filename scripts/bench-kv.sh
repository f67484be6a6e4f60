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
# MODE=tls measures what TLS costs instead: kv in plaintext against kv with
# -Z (a throwaway certificate from openssl), the load generator speaking TLS
# to the second (kv_load --tls-ca); same alternation, same table, ratio
# TLS/plaintext.
#
# Usage: scripts/bench-kv.sh
# Environment (defaults in brackets):
#   MODE [memcached]  memcached: kv against memcached; tls: kv-tls against kv
#   THREADS [2]       worker threads of both servers
#   CONNS [50]        client connections
#   DEPTHS ["1 16"]   pipeline depths
#   ROUNDS [3]        runs per server and depth
#   SECS [5]          measured seconds per run
#   MAX_OPS [50000000] request cap per run
#   OUT []            also write the markdown table to this file
#   JSON [OUT with .json, else docs/bench-kv.json; docs/bench-kv-tls.json
#         with MODE=tls]  the figures as JSON (scripts/lib/bench-json.sh)
#   CHARTS [1]        0 skips drawing the charts (scripts/bench-report.sh)
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
MODE=${MODE:-memcached}
if [ -n "$OUT" ]; then
    JSON=${JSON:-${OUT%.md}.json}
elif [ "$MODE" = tls ]; then
    JSON=${JSON:-docs/bench-kv-tls.json}
else
    JSON=${JSON:-docs/bench-kv.json}
fi
TARGET=${CARGO_TARGET_DIR:-target}

for v in THREADS CONNS ROUNDS SECS MAX_OPS; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
        echo "bench-kv: $v must be a whole number, got '${!v}'" >&2
        exit 2
    fi
done

case $MODE in
    memcached | tls) ;;
    *)
        echo "bench-kv: MODE must be memcached or tls, got '$MODE'" >&2
        exit 2
        ;;
esac

if [ "$MODE" = memcached ] && ! command -v memcached >/dev/null 2>&1; then
    echo "== installing memcached" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq memcached >/dev/null 2>&1 || {
        apt-get update -qq && apt-get install -y -qq memcached
    }
fi

echo "== building release binaries" >&2
cargo build --release --quiet --example kv --example kv_load
KV="$TARGET/release/examples/kv"
LOAD_BIN="$TARGET/release/examples/kv_load"

certdir=
if [ "$MODE" = tls ]; then
    certdir=$(mktemp -d)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -addext basicConstraints=critical,CA:FALSE \
        -keyout "$certdir/key.pem" -out "$certdir/cert.pem" 2>/dev/null
    # The load generator speaks TLS while start_server has exported
    # KV_LOAD_TLS_CA (a wrapper, since ab_run runs $LOAD under timeout).
    cat >"$certdir/load" <<EOF
#!/usr/bin/env bash
if [ -n "\${KV_LOAD_TLS_CA:-}" ]; then
    exec "$LOAD_BIN" --tls-ca "\$KV_LOAD_TLS_CA" "\$@"
fi
exec "$LOAD_BIN" "\$@"
EOF
    chmod +x "$certdir/load"
    LOAD="$certdir/load"
else
    LOAD="$LOAD_BIN"
fi

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
trap 'stop_server; [ -z "$certdir" ] || rm -rf "$certdir"' EXIT

start_server() { # name port
    if [ "$1" = kv-tls ]; then
        export KV_LOAD_TLS_CA="$certdir/cert.pem"
    else
        unset KV_LOAD_TLS_CA
    fi
    case $1 in
        kv) "$KV" -l 127.0.0.1 -p "$2" -t "$THREADS" -m 1024 -c 4096 & ;;
        kv-tls)
            "$KV" -l 127.0.0.1 -p "$2" -t "$THREADS" -m 1024 -c 4096 \
                -Z -o "ssl_chain_cert=$certdir/cert.pem,ssl_key=$certdir/key.pem" &
            ;;
        memcached) memcached -l 127.0.0.1 -p "$2" -U 0 -t "$THREADS" -m 1024 -c 4096 -u "$(id -un)" & ;;
    esac
    server_pid=$!
    # Wait (bounded) until it answers.
    for _ in $(seq 1 500); do
        if python3 - "$2" "${certdir:+$certdir/cert.pem}" "$1" <<'PY' 2>/dev/null; then return 0; fi
import socket, ssl, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
if sys.argv[3] == "kv-tls":
    s = ssl.create_default_context(cafile=sys.argv[2]).wrap_socket(s, server_hostname="127.0.0.1")
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
# shellcheck source=scripts/lib/bench-json.sh
. scripts/lib/bench-json.sh
if [ "$MODE" = tls ]; then
    A=kv-tls B=kv NAME=kv-tls TITLE="kv with TLS against kv in plaintext"
else
    A=kv B=memcached NAME=kv TITLE="kv against memcached"
fi
ab_run "$A" "$B" start_server stop_server server_pid

json_begin
json_meta benchmark "$(json_str "$NAME")"
json_meta title "$(json_str "$TITLE")"
json_meta source '"scripts/bench-kv.sh"'
json_machine
json_meta server_threads "$(json_num "$THREADS")"
json_meta client_threads null
json_meta connections "$(json_num "$CONNS")"
json_meta secs "$(json_num "$SECS")"
json_meta rounds "$(json_num "$ROUNDS")"
json_meta scenario_label '"pipeline depth"'
json_meta server_label '"server"'
json_meta throughput_unit '"requests/s"'
json_meta cpu_unit '"µs/request"'
json_meta baseline "$(json_str "$B")"
ab_json "$A" "$B" "$JSON"

table=$(
    ab_table "$A" "$B" server
    echo
    echo "$THREADS server threads, $CONNS connections, 1:9 set:get, 100k keys, 100-byte values;"
    if [ "$MODE" = tls ]; then
        echo "kv-tls: TLS 1.3 (rustls, ring; P-256 certificate), handshakes outside the measured window;"
    fi
    echo "medians of $ROUNDS runs of ${SECS} s each, servers alternated; $(nproc) cores, loopback."
    echo
    json_links "${OUT:-$JSON}" "$JSON" "$NAME"
)
echo "$table"
if [ -n "$OUT" ]; then
    echo "$table" >"$OUT"
fi
json_charts "$JSON"

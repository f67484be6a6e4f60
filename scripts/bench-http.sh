#!/usr/bin/env bash
# HTTP benchmark: the weave HTTP example (examples/http.rs) against
# may_minihttp and the same protocol code on tokio (bench/examples/
# http_may.rs, http_tokio.rs), loaded by wrk, same worker count, in one run.
#
# For every scenario (connections / requests per write / path) each server is
# started fresh on 127.0.0.1, loaded by `wrk --latency` for SECS seconds and
# stopped; servers alternate (A B C A B C ...) for ROUNDS rounds and the
# table shows medians. Pipelined scenarios use scripts/lib/wrk-pipeline.lua
# (DEPTH requests per write; wrk counts every response).
#
# Server CPU per request: utime + stime of the server process from
# /proc/PID/stat right before and right after wrk, divided by the requests
# wrk completed. wrk saturates a core on a small machine, so requests/s
# mostly measures wrk; CPU per request is the figure that compares servers.
#
# Usage: scripts/bench-http.sh   (needs wrk: apt-get install wrk)
# Environment (defaults in brackets):
#   WORKERS [1]        worker threads of every server
#   WRK_THREADS [1]    wrk threads
#   ROUNDS [3]         rounds per scenario
#   SECS [5]           seconds per run
#   SERVERS ["weave may tokio"]
#   SCENARIOS ["64:1:/ 64:16:/ 64:1:/json"] conns:depth:path
#   BASE [may]         the server the CPU ratio column divides by
#   OUT [docs/bench-http.md]  where the markdown report goes
#   CARGO_TARGET_DIR   where to build (default: target)
set -euo pipefail

cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-1}
WRK_THREADS=${WRK_THREADS:-1}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-5}
SERVERS=${SERVERS:-"weave may tokio"}
SCENARIOS=${SCENARIOS:-"64:1:/ 64:16:/ 64:1:/json"}
BASE=${BASE:-may}
OUT=${OUT:-docs/bench-http.md}
TARGET=${CARGO_TARGET_DIR:-target}
BIN="$TARGET/release/examples"
LUA=scripts/lib/wrk-pipeline.lua

for v in WORKERS WRK_THREADS ROUNDS SECS; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then
        echo "bench-http: $v must be a positive whole number, got '${!v}'" >&2
        exit 2
    fi
done
if ! command -v wrk >/dev/null; then
    echo "bench-http: wrk not found (Debian: apt-get install wrk)" >&2
    exit 2
fi

echo "== building release binaries" >&2
cargo build --release --quiet --example http
PEERS=()
for s in $SERVERS; do
    case $s in may | tokio) PEERS+=(--example "http_$s") ;; esac
done
if [ ${#PEERS[@]} -gt 0 ]; then
    cargo build --release --quiet -p weave-bench "${PEERS[@]}"
fi

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

server_bin() {
    case $1 in
        weave) echo "$BIN/http" ;;
        may) echo "$BIN/http_may" ;;
        tokio) echo "$BIN/http_tokio" ;;
        *) echo "bench-http: unknown server '$1'" >&2; exit 2 ;;
    esac
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_server NAME: sets SERVER_PID and PORT once the server answers GET /.
start_server() {
    local bin
    bin=$(server_bin "$1")
    PORT=$(free_port)
    RUST_LOG=warn "$bin" --addr "127.0.0.1:$PORT" --workers "$WORKERS" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        if python3 - "$PORT" <<'PY' 2>/dev/null; then
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
assert s.recv(4096).startswith(b"HTTP/1.1 200")
PY
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
        sleep 0.05
    done
    echo "bench-http: server $1 did not start:" >&2
    cat "$WORK/server.log" >&2
    exit 1
}

# shellcheck source=scripts/lib/server.sh
. scripts/lib/server.sh

# CPU ticks (utime + stime) of a process.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# wrk's latency figures in microseconds ("123.45us", "1.20ms", "2.00s").
to_us() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) printf "%.0f", v + 0;
        else if (v ~ /ms$/) printf "%.0f", v * 1000;
        else if (v ~ /s$/) printf "%.0f", v * 1000000;
        else print "na" }'
}

# shellcheck source=scripts/lib/stats.sh
. scripts/lib/stats.sh

HZ=$(getconf CLK_TCK)
declare -A RES
echo "== servers [$SERVERS], $WORKERS worker(s) each, wrk $WRK_THREADS thread(s), $ROUNDS x ${SECS}s per server and scenario" >&2
for sc in $SCENARIOS; do
    IFS=: read -r conns depth path <<<"$sc"
    script=()
    if [ "$depth" -gt 1 ]; then script=(-s "$LUA"); fi
    for round in $(seq 1 "$ROUNDS"); do
        for s in $SERVERS; do
            start_server "$s"
            before=$(cpu_ticks "$SERVER_PID")
            DEPTH=$depth PATH_=$path timeout $((SECS + 60)) wrk --latency -t "$WRK_THREADS" \
                -c "$conns" -d "${SECS}s" "${script[@]}" "http://127.0.0.1:$PORT$path" \
                >"$WORK/wrk.out" 2>&1 || true
            after=$(cpu_ticks "$SERVER_PID")
            stop_server
            reqs=$(awk '/requests in/ { print $1 }' "$WORK/wrk.out")
            rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$WORK/wrk.out")
            p50=$(to_us "$(awk '$1 == "50%" { print $2 }' "$WORK/wrk.out")")
            p99=$(to_us "$(awk '$1 == "99%" { print $2 }' "$WORK/wrk.out")")
            errs=$(awk '/Non-2xx|Socket errors/ { print }' "$WORK/wrk.out" | tr '\n' ' ')
            if [ -z "$reqs" ] || [ "$reqs" -eq 0 ]; then
                echo "bench-http: no result for $s at $sc:" >&2
                cat "$WORK/wrk.out" >&2
                cpu=na rps=${rps:-na}
            else
                cpu=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$reqs" \
                    'BEGIN { printf "%.3f", t / hz * 1000000 / n }')
            fi
            key="$sc|$s"
            RES[$key.rps]+=" ${rps:-na}"
            RES[$key.p50]+=" ${p50:-na}"
            RES[$key.p99]+=" ${p99:-na}"
            RES[$key.cpu]+=" $cpu"
            printf '  %-12s round %d  %-6s rps=%s p50_us=%s p99_us=%s cpu_us_per_req=%s %s\n' \
                "$sc" "$round" "$s" "${rps:-na}" "${p50:-na}" "${p99:-na}" "$cpu" "$errs" >&2
        done
    done
done

{
    echo "# HTTP benchmark"
    echo
    echo "Generated by \`scripts/bench-http.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores"
    echo "($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo))."
    echo "Every server runs $WORKERS worker thread(s); wrk $(wrk --version 2>&1 | head -1 | awk '{print $2}')"
    echo "runs $WRK_THREADS thread(s). Medians of $ROUNDS runs of ${SECS} s per server,"
    echo "servers alternating. Loopback only. CPU is the server's utime + stime over"
    echo "the run divided by the requests wrk completed. Depth > 1: that many"
    echo "requests per write (\`scripts/lib/wrk-pipeline.lua\`); latency is then per"
    echo "response, from the write of its batch."
    echo
    echo "| conns | depth | path | server | requests/s | p50 (µs) | p99 (µs) | server CPU µs/request | CPU / $BASE |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for sc in $SCENARIOS; do
        IFS=: read -r conns depth path <<<"$sc"
        # shellcheck disable=SC2086 # the values are space-separated on purpose
        base=$(median ${RES[$sc|$BASE.cpu]:-na})
        for s in $SERVERS; do
            key="$sc|$s"
            # shellcheck disable=SC2086
            cpu=$(median ${RES[$key.cpu]})
            # shellcheck disable=SC2086
            echo "| $conns | $depth | \`$path\` | $s | $(median ${RES[$key.rps]}) | $(median ${RES[$key.p50]}) | $(median ${RES[$key.p99]}) | $cpu | $(ratio "$cpu" "$base") |"
        done
    done
} >"$OUT.new"
mv "$OUT.new" "$OUT"
echo "== wrote $OUT" >&2

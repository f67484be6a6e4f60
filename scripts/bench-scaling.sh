#!/usr/bin/env bash
# Scaling: the echo servers (weave, tokio, may, the hand-written mio loop)
# and the KV servers (the kv example, memcached) at 1, 2, 4 and 8 worker
# threads, each server pinned to cores 0..W-1 and its load generator to the
# cores after them, so that the two never share a core.
#
# Every run starts a fresh server on 127.0.0.1, loads it for SECS seconds
# and stops it by PID; servers alternate within a round, ROUNDS rounds, and
# the tables show medians. Server CPU per request comes from the load
# generators (utime + stime of the server over the measured window).
#
# Needs at least 2 x W cores for a worker count W: on a smaller machine the
# counts that do not fit are skipped, and the report says so.
#
# Usage: scripts/bench-scaling.sh
# Environment (defaults in brackets):
#   WORKERS_LIST ["1 2 4 8"]  worker counts
#   ROUNDS [2]            rounds per worker count
#   SECS [3]              measured seconds per run
#   ECHO_SERVERS ["weave tokio may mio"]  echo servers ("" skips echo)
#   ECHO_CONNS [1000]     echo connections (64-byte messages, one in flight)
#   KV_SERVERS ["kv memcached"]  KV servers ("" skips kv)
#   KV_CONNS [64]         kv_load connections (one client thread each;
#                         1:9 set:get, 100-byte values, depth 1)
#   BIN [target/release/examples]  where the binaries are; they are built
#                         there first unless NO_BUILD=1
#   MEMCACHED [memcached]  the memcached binary
#   OUT [docs/bench-scaling.md]  the markdown report
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS_LIST=${WORKERS_LIST:-"1 2 4 8"}
ROUNDS=${ROUNDS:-2}
SECS=${SECS:-3}
ECHO_SERVERS=${ECHO_SERVERS-"weave tokio may mio"}
ECHO_CONNS=${ECHO_CONNS:-1000}
KV_SERVERS=${KV_SERVERS-"kv memcached"}
KV_CONNS=${KV_CONNS:-64}
BIN=${BIN:-target/release/examples}
MEMCACHED=${MEMCACHED:-memcached}
OUT=${OUT:-docs/bench-scaling.md}

for v in ROUNDS SECS ECHO_CONNS KV_CONNS; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then
        echo "bench-scaling: $v must be a positive whole number, got '${!v}'" >&2
        exit 2
    fi
done
for w in $WORKERS_LIST; do
    if ! [[ $w =~ ^[0-9]+$ ]] || [ "$w" -eq 0 ]; then
        echo "bench-scaling: WORKERS_LIST holds '$w', not a positive whole number" >&2
        exit 2
    fi
done

if [ "${NO_BUILD:-0}" != 1 ]; then
    echo "== building release binaries" >&2
    cargo build --release --quiet --example echo --example echo_load --example kv --example kv_load
    peers=()
    for s in $ECHO_SERVERS; do
        case $s in tokio | may | mio) peers+=(--example "echo_$s") ;; esac
    done
    if [ ${#peers[@]} -gt 0 ]; then
        cargo build --release --quiet -p weave-bench "${peers[@]}"
    fi
fi

CORES=$(nproc)
if command -v taskset >/dev/null 2>&1; then PIN=1; else PIN=0; fi

# pin_prefix FIRST LAST: the command prefix that pins to cores FIRST..LAST
# (empty without taskset). taskset execs its command, so a server started
# behind it keeps the PID that `$!` reports.
pin_prefix() {
    if [ "$PIN" = 1 ]; then echo "taskset -c $1-$2"; fi
}

# A port nobody listens on (bash's /dev/tcp: no python needed), below the
# kernel's ephemeral range, where the load generator's own sockets are.
free_port() {
    local p lo
    lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    while :; do
        p=$((10000 + RANDOM % (lo - 10000)))
        if ! { exec 4<>"/dev/tcp/127.0.0.1/$p"; } 2>/dev/null; then
            echo "$p"
            return
        fi
        exec 4>&-
    done
}

WORK=$(mktemp -d)
SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
trap 'stop_server; rm -rf "$WORK"' EXIT

# start_server NAME PORT W: starts NAME with W workers on cores 0..W-1 and
# waits (bounded) until it answers; sets SERVER_PID.
start_server() {
    local name=$1 port=$2 w=$3 srv
    # shellcheck disable=SC2207
    srv=($(pin_prefix 0 $(($3 - 1))))
    case $name in
        weave) "${srv[@]}" "$BIN/echo" --addr "127.0.0.1:$port" --workers "$w" >"$WORK/server.log" 2>&1 & ;;
        tokio | may | mio) "${srv[@]}" "$BIN/echo_$name" --addr "127.0.0.1:$port" --workers "$w" >"$WORK/server.log" 2>&1 & ;;
        kv) "${srv[@]}" "$BIN/kv" -l 127.0.0.1 -p "$port" -t "$w" -m 1024 -c 4096 >"$WORK/server.log" 2>&1 & ;;
        memcached) "${srv[@]}" "$MEMCACHED" -l 127.0.0.1 -p "$port" -U 0 -t "$w" -m 1024 -c 4096 -u "$(id -un)" >"$WORK/server.log" 2>&1 & ;;
        *)
            echo "bench-scaling: unknown server '$name'" >&2
            exit 2
            ;;
    esac
    SERVER_PID=$!
    local reply
    for _ in $(seq 1 200); do
        if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
            case $name in
                kv | memcached)
                    printf 'version\r\n' >&3
                    reply=
                    read -r -t 2 reply <&3 || true
                    exec 3>&-
                    if [[ $reply == VERSION* ]]; then return 0; fi
                    ;;
                *)
                    exec 3>&-
                    sleep 0.2 # let the probe connection's handler finish
                    return 0
                    ;;
            esac
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
        sleep 0.05
    done
    echo "bench-scaling: $name did not start:" >&2
    cat "$WORK/server.log" >&2
    exit 1
}

# shellcheck source=scripts/lib/stats.sh
. scripts/lib/stats.sh

declare -A RES

# run_one KIND SERVER W ROUND RATE_KEY CPU_KEY LOAD...: one run of SERVER
# with W workers under the load generator LOAD (given the address, the
# duration and the server's PID here), pinned to the other cores; keeps
# its throughput, p99 and server CPU per request.
run_one() {
    local kind=$1 s=$2 w=$3 round=$4 rate=$5 cpu=$6 port line
    shift 6
    port=$(free_port)
    start_server "$s" "$port" "$w"
    line=$(timeout $((SECS + 120)) "${client[@]}" "$@" --addr "127.0.0.1:$port" \
        --secs "$SECS" --server-pid "$SERVER_PID" 2>"$WORK/load.err" | grep '^RESULT' || true)
    stop_server
    [ -n "$line" ] || line="RESULT $rate=na p99_us=na $cpu=na"
    echo "  $kind w=$w round $round $s $line" >&2
    RES[$kind,$w,$s,rps]+=" $(field "$rate" "$line")"
    RES[$kind,$w,$s,p99]+=" $(field p99_us "$line")"
    RES[$kind,$w,$s,cpu]+=" $(field "$cpu" "$line")"
}

RAN=()
SKIPPED=()
for w in $WORKERS_LIST; do
    if [ $((2 * w)) -gt "$CORES" ]; then
        SKIPPED+=("$w")
        continue
    fi
    RAN+=("$w")
    first=$w
    last=$((CORES - 1))
    # The load generator gets every core the server does not have.
    client_workers=$((CORES - w))
    # shellcheck disable=SC2207
    client=($(pin_prefix "$first" "$last"))
    for round in $(seq 1 "$ROUNDS"); do
        for s in $ECHO_SERVERS; do
            run_one echo "$s" "$w" "$round" msgs_per_s server_cpu_us_per_msg \
                "$BIN/echo_load" --conns "$ECHO_CONNS" --size 64 --depth 1 --workers "$client_workers"
        done
        for s in $KV_SERVERS; do
            run_one kv "$s" "$w" "$round" ops_per_sec server_cpu_us_per_op \
                "$BIN/kv_load" --conns "$KV_CONNS" --depth 1
        done
    done
done

med() { # KIND W SERVER KEY
    # shellcheck disable=SC2086
    median ${RES[$1,$2,$3,$4]:-na}
}

# table KIND SERVERS BASELINE UNIT: UNIT names one message ("msg"), UNITs
# per second the throughput column.
table() {
    local kind=$1 servers=$2 base=$3 unit=$4 w s one
    echo "| workers | server | ${unit}s/s | p99 µs | CPU µs/$unit | ${unit}s/s vs 1 worker | ${unit}s/s vs $base | CPU/$unit vs $base |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|"
    for w in "${RAN[@]}"; do
        for s in $servers; do
            one=$(med "$kind" "${RAN[0]}" "$s" rps)
            echo "| $w | $s | $(med "$kind" "$w" "$s" rps) | $(med "$kind" "$w" "$s" p99) | $(med "$kind" "$w" "$s" cpu) | $(ratio "$(med "$kind" "$w" "$s" rps)" "$one") | $(ratio "$(med "$kind" "$w" "$s" rps)" "$(med "$kind" "$w" "$base" rps)") | $(ratio "$(med "$kind" "$w" "$s" cpu)" "$(med "$kind" "$w" "$base" cpu)") |"
        done
    done
}

{
    echo "# Scaling with worker threads"
    echo
    echo "Generated by \`scripts/bench-scaling.sh\` on $(date -u +%Y-%m-%d), $CORES cores"
    echo "($(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //' || echo unknown CPU))."
    if [ "$PIN" = 1 ]; then
        echo "Each server runs W workers pinned to cores 0..W-1; its load generator"
        echo "runs on the other $CORES - W cores."
    else
        echo "taskset was missing: servers and load generators ran unpinned."
    fi
    echo "Medians of $ROUNDS runs of $SECS s per server and worker count, servers alternating."
    echo "Loopback only. \"vs 1 worker\" is the throughput at W workers over the"
    echo "same server's at the first worker count measured (${RAN[0]:-none})."
    if [ ${#SKIPPED[@]} -gt 0 ]; then
        echo
        echo "Not measured (fewer than twice as many cores): ${SKIPPED[*]} workers."
    fi
    if [ -n "$ECHO_SERVERS" ] && [ ${#RAN[@]} -gt 0 ]; then
        echo
        echo "## Echo: $ECHO_CONNS connections, 64-byte messages, one in flight each"
        echo
        table echo "$ECHO_SERVERS" mio msg
    fi
    if [ -n "$KV_SERVERS" ] && [ ${#RAN[@]} -gt 0 ]; then
        echo
        echo "## KV: $KV_CONNS connections, depth 1, 1:9 set:get, 100-byte values"
        echo
        table kv "$KV_SERVERS" memcached request
    fi
} >"$OUT"
cat "$OUT"
echo "== written to $OUT" >&2

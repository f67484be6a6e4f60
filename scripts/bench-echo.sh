#!/usr/bin/env bash
# Echo benchmark: weave against tokio, may and a hand-written mio event loop
# (the ceiling), same load generator, same worker count, in one run.
#
# For every scenario (connections / message size / messages in flight per
# connection) each server is started fresh on 127.0.0.1, loaded by
# examples/echo_load.rs for SECS seconds, and stopped; servers alternate
# (A B C D A B C D ...) for ROUNDS rounds and the table shows medians. The
# load generator reads the server's CPU time (utime + stime from
# /proc/PID/stat) at the start and end of its measured window, so the table
# also shows server CPU microseconds per message: on a small machine the load
# generator saturates a core and throughput alone hides what the server
# costs.
#
# Then idle memory: each server gets IDLE_CONNS connections that echo one
# message each and stay open; VmRSS of the server before and after, divided
# by the connection count.
#
# Usage: scripts/bench-echo.sh
# Environment (defaults in brackets):
#   WORKERS [1]         worker threads of every server
#   CLIENT_WORKERS [1]  worker threads of the load generator
#   ROUNDS [2]          rounds per scenario
#   SECS [3]            measured seconds per run
#   IDLE_CONNS [10000]  connections for the memory measurement (0 skips it)
#   SERVERS ["weave tokio may mio"]; add weave_net (the echo on the bare
#           net layer) to measure the server framework's overhead, and
#           weave_single (one listener and acceptor instead of one per
#           worker) to compare accept strategies, weave_req (the echo in
#           request mode: idle connections hold no fiber), and weave_alt (the echo
#           binary at WEAVE_ALT_BIN, built from another revision) to compare
#           two builds of weave side by side
#   WEAVE_ALT_BIN       the echo binary weave_alt runs
#   SCENARIOS ["1:64:1 64:64:1 64:4096:1 1000:64:1 64:64:16"] conns:size:depth;
#           a depth of "churn" makes each client connect, echo one message
#           and close in a loop (msgs/s is then connections per second)
#   OUT [docs/bench-echo.md]  where the markdown report goes
#   JSON [OUT with .json]  the figures as JSON (scripts/lib/bench-json.sh)
#   CHARTS [1]          0 skips drawing the charts (scripts/bench-report.sh)
#   CARGO_TARGET_DIR    where to build (default: target)
set -euo pipefail

cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-1}
CLIENT_WORKERS=${CLIENT_WORKERS:-1}
ROUNDS=${ROUNDS:-2}
SECS=${SECS:-3}
IDLE_CONNS=${IDLE_CONNS:-10000}
SERVERS=${SERVERS:-"weave tokio may mio"}
SCENARIOS=${SCENARIOS:-"1:64:1 64:64:1 64:4096:1 1000:64:1 64:64:16"}
OUT=${OUT:-docs/bench-echo.md}
JSON=${JSON:-${OUT%.md}.json}
TARGET=${CARGO_TARGET_DIR:-target}
BIN="$TARGET/release/examples"

for v in WORKERS CLIENT_WORKERS ROUNDS SECS IDLE_CONNS; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
        echo "bench-echo: $v must be a whole number, got '${!v}'" >&2
        exit 2
    fi
done

# Both sides of 10,000 connections need descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CONNS + 100)) ]; then
    echo "bench-echo: open-files limit $(ulimit -n) is too low for IDLE_CONNS=$IDLE_CONNS" >&2
    exit 2
fi

echo "== building release binaries" >&2
cargo build --release --quiet --example echo --example echo_net --example echo_load
# The peers live in the bench/ workspace member (same target directory);
# only those being measured are built.
PEERS=()
for s in $SERVERS; do
    case $s in tokio | may | mio) PEERS+=(--example "echo_$s") ;; esac
done
if [ ${#PEERS[@]} -gt 0 ]; then
    cargo build --release --quiet -p weave-bench "${PEERS[@]}"
fi

WORK=$(mktemp -d)
SERVER_PID=""
CLIENT_PID=""
cleanup() {
    if [ -n "$CLIENT_PID" ]; then kill "$CLIENT_PID" 2>/dev/null || true; fi
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

server_bin() {
    case $1 in
        weave) echo "$BIN/echo" ;;
        weave_net) echo "$BIN/echo_net" ;;
        weave_single) echo "$BIN/echo" ;;
        weave_req) echo "$BIN/echo" ;;
        weave_alt) echo "${WEAVE_ALT_BIN:?bench-echo: set WEAVE_ALT_BIN for weave_alt}" ;;
        tokio) echo "$BIN/echo_tokio" ;;
        may) echo "$BIN/echo_may" ;;
        mio) echo "$BIN/echo_mio" ;;
        *) echo "bench-echo: unknown server '$1'" >&2; exit 2 ;;
    esac
}

# A port nothing listens on (the kernel's pick for an ephemeral bind).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_server NAME: sets SERVER_PID and PORT; waits (bounded) until the
# server accepts connections.
start_server() {
    local bin
    bin=$(server_bin "$1")
    PORT=$(free_port)
    local extra=()
    if [ "$1" = weave_single ]; then extra=(--single-acceptor); fi
    if [ "$1" = weave_req ]; then extra=(--request-mode); fi
    "$bin" --addr "127.0.0.1:$PORT" --workers "$WORKERS" "${extra[@]}" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            sleep 0.2 # let the probe connection's handler finish
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
        sleep 0.05
    done
    echo "bench-echo: server $1 did not start:" >&2
    cat "$WORK/server.log" >&2
    exit 1
}

# shellcheck source=scripts/lib/server.sh
. scripts/lib/server.sh
# shellcheck source=scripts/lib/bench-json.sh
. scripts/lib/bench-json.sh

# shellcheck source=scripts/lib/stats.sh
. scripts/lib/stats.sh

vmrss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

declare -A RES
echo "== throughput: servers [$SERVERS], $WORKERS worker(s) each, load generator $CLIENT_WORKERS worker(s), $ROUNDS x ${SECS}s per server and scenario" >&2
for sc in $SCENARIOS; do
    IFS=: read -r conns size depth <<<"$sc"
    mode=()
    if [ "$depth" = churn ]; then mode=(--churn); depth=1; fi
    for round in $(seq 1 "$ROUNDS"); do
        for s in $SERVERS; do
            start_server "$s"
            line=$(timeout $((SECS + 90)) "$BIN/echo_load" --addr "127.0.0.1:$PORT" \
                --conns "$conns" --size "$size" --depth "$depth" --secs "$SECS" "${mode[@]}" \
                --workers "$CLIENT_WORKERS" --server-pid "$SERVER_PID" 2>"$WORK/load.err" |
                grep '^RESULT' || true)
            stop_server
            if [ -z "$line" ]; then
                echo "bench-echo: no result for $s at $sc:" >&2
                cat "$WORK/load.err" >&2
                line="RESULT msgs_per_s=na p50_us=na p99_us=na p999_us=na server_cpu_us_per_msg=na errors=na"
            fi
            key="$sc|$s"
            RES[$key.mps]+=" $(field msgs_per_s "$line")"
            RES[$key.p50]+=" $(field p50_us "$line")"
            RES[$key.p99]+=" $(field p99_us "$line")"
            RES[$key.p999]+=" $(field p999_us "$line")"
            RES[$key.cpu]+=" $(field server_cpu_us_per_msg "$line")"
            RES[$key.err]+=" $(field errors "$line")"
            printf '  %-12s round %d  %-6s %s\n' "$sc" "$round" "$s" "${line#RESULT }" >&2
        done
    done
done

json_begin
json_meta benchmark '"echo"'
json_meta title '"Echo servers"'
json_meta source '"scripts/bench-echo.sh"'
json_machine
json_meta server_threads "$(json_num "$WORKERS")"
json_meta client_threads "$(json_num "$CLIENT_WORKERS")"
json_meta connections null
json_meta secs "$(json_num "$SECS")"
json_meta rounds "$(json_num "$ROUNDS")"
json_meta scenario_label '"conns / size / in flight"'
json_meta server_label '"server"'
json_meta throughput_unit '"msgs/s"'
json_meta cpu_unit '"µs/msg"'
json_meta baseline '"mio"'

{
    echo "# Echo benchmark"
    echo
    echo "Generated by \`scripts/bench-echo.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores"
    echo "($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo))."
    echo "Every server runs $WORKERS worker thread(s); the load generator"
    echo "(\`examples/echo_load.rs\`, on weave) runs $CLIENT_WORKERS. Medians of $ROUNDS"
    echo "runs of ${SECS} s per server, servers alternating. Loopback only."
    echo
    json_links "$OUT" "$JSON" echo
    echo
    echo "- **msgs/s**: echoed messages per second, all connections together."
    echo "- **p99 us**: 99th percentile of the time from writing a message to"
    echo "  reading its echo in full."
    echo "- **CPU us/msg**: server CPU time (user + system) over the measured"
    echo "  window, per message. With the load generator saturating a core,"
    echo "  this is the column that shows what each server costs."
    echo "- **vs mio**: ratio to the hand-written mio event loop (msgs/s: higher"
    echo "  is better; CPU/msg: lower is better)."
    echo
    echo "| scenario (conns / size / in flight) | server | msgs/s | p99 us | CPU us/msg | msgs/s vs mio | CPU/msg vs mio | errors |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    for sc in $SCENARIOS; do
        IFS=: read -r conns size depth <<<"$sc"
        # shellcheck disable=SC2086
        {
            base_mps=$(median ${RES[$sc|mio.mps]:-na})
            base_cpu=$(median ${RES[$sc|mio.cpu]:-na})
        }
        for s in $SERVERS; do
            key="$sc|$s"
            # shellcheck disable=SC2086
            {
                mps=$(median ${RES[$key.mps]})
                p50=$(median ${RES[$key.p50]})
                p99=$(median ${RES[$key.p99]})
                p999=$(median ${RES[$key.p999]})
                cpu=$(median ${RES[$key.cpu]})
                errs=$(printf '%s\n' ${RES[$key.err]} | awk '$1 != "na" { t += $1 } $1 == "na" { n = 1 } END { print n ? "na" : t + 0 }')
            }
            if [ "$mps" != na ]; then mps=$(printf '%.0f' "$mps"); fi
            if [ "$p99" != na ]; then p99=$(printf '%.0f' "$p99"); fi
            if [ "$cpu" != na ]; then cpu=$(printf '%.2f' "$cpu"); fi
            printf '| %s / %s B / %s | %s | %s | %s | %s | %s | %s | %s |\n' \
                "$conns" "$size" "$depth" "$s" "$mps" "$p99" "$cpu" \
                "$(ratio "$mps" "$base_mps")" "$(ratio "$cpu" "$base_cpu")" "$errs"
            json_record "$conns / $size B / $depth" "$s" median na "$mps" "$p50" "$p99" "$p999" \
                "$cpu" "$(ratio "$mps" "$base_mps")" na "$(ratio "$cpu" "$base_cpu")" "$errs"
        done
    done
} >"$WORK/table.md"

# The single runs, in the JSON only.
for sc in $SCENARIOS; do
    IFS=: read -r conns size depth <<<"$sc"
    for s in $SERVERS; do
        key="$sc|$s"
        read -r -a mps <<<"${RES[$key.mps]}"
        read -r -a p50 <<<"${RES[$key.p50]}"
        read -r -a p99 <<<"${RES[$key.p99]}"
        read -r -a p999 <<<"${RES[$key.p999]}"
        read -r -a cpu <<<"${RES[$key.cpu]}"
        read -r -a err <<<"${RES[$key.err]}"
        for i in "${!mps[@]}"; do
            json_record "$conns / $size B / $depth" "$s" run $((i + 1)) "${mps[$i]}" "${p50[$i]}" \
                "${p99[$i]}" "${p999[$i]}" "${cpu[$i]}" na na na "${err[$i]}"
        done
    done
done
json_end "$JSON"

if [ "$IDLE_CONNS" -gt 0 ]; then
    echo "== idle memory: $IDLE_CONNS connections per server" >&2
    {
        echo
        echo "## Resident memory per idle connection"
        echo
        echo "$IDLE_CONNS connections, each echoes one 64 B message and then stays"
        echo "open. VmRSS of the server before the connections and once all are"
        echo "up; per connection = delta / connections. Each server has a 64 KiB"
        echo "read buffer per connection, of which only the touched pages become"
        echo "resident."
        echo
        echo "| server | VmRSS before (KiB) | VmRSS with conns (KiB) | per connection (bytes) |"
        echo "|---|---:|---:|---:|"
    } >>"$WORK/table.md"
    for s in $SERVERS; do
        start_server "$s"
        before=$(vmrss_kib "$SERVER_PID")
        "$BIN/echo_load" --addr "127.0.0.1:$PORT" --idle-conns "$IDLE_CONNS" --size 64 \
            --hold 30 --workers "$CLIENT_WORKERS" >"$WORK/idle.out" 2>"$WORK/idle.err" &
        CLIENT_PID=$!
        ready=""
        for _ in $(seq 1 600); do
            if grep -q '^READY' "$WORK/idle.out"; then ready=1; break; fi
            if ! kill -0 "$CLIENT_PID" 2>/dev/null; then break; fi
            sleep 0.1
        done
        if [ -n "$ready" ]; then
            sleep 0.5
            after=$(vmrss_kib "$SERVER_PID")
            per=$(( (after - before) * 1024 / IDLE_CONNS ))
        else
            echo "bench-echo: idle connections to $s did not come up:" >&2
            cat "$WORK/idle.err" >&2
            after=na
            per=na
        fi
        kill "$CLIENT_PID" 2>/dev/null || true
        wait "$CLIENT_PID" 2>/dev/null || true
        CLIENT_PID=""
        stop_server
        printf '| %s | %s | %s | %s |\n' "$s" "$before" "$after" "$per" >>"$WORK/table.md"
        echo "  $s: before ${before} KiB, after ${after} KiB, ${per} B/conn" >&2
    done
fi

mkdir -p "$(dirname "$OUT")"
cp "$WORK/table.md" "$OUT"
cat "$WORK/table.md"
echo >&2
echo "== written to $OUT and $JSON" >&2
json_charts "$JSON"

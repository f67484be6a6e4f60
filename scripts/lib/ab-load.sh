# Shared by scripts/bench-kv.sh and scripts/bench-proxy.sh: runs two servers
# in turn under examples/kv_load.rs and tabulates the medians.
#
# The caller sets DEPTHS, ROUNDS, SECS, CONNS, MAX_OPS and LOAD, and defines
# free_port plus a start and a stop function for its servers; the start
# function takes a name and a port and leaves the server's PID in the
# variable named to ab_run.

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "na"; else print a[int((NR+1)/2)]}'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a=="na" || b=="na" || b==0) print "na"; else printf "%.2f", a/b }'; }

AB_RESULTS=

# ab_run A B START STOP PIDVAR: for every depth, ROUNDS rounds of A then B,
# each started fresh on a free port and loaded for SECS seconds. Per-run
# lines go to stderr; results are kept for ab_field.
ab_run() {
    local a=$1 b=$2 start=$3 stop=$4 pidvar=$5 depth round name port line
    AB_RESULTS=$(mktemp)
    for depth in $DEPTHS; do
        for round in $(seq 1 "$ROUNDS"); do
            for name in "$a" "$b"; do
                port=$(free_port)
                "$start" "$name" "$port"
                line=$(timeout $((SECS + 120)) "$LOAD" --addr "127.0.0.1:$port" --conns "$CONNS" \
                    --depth "$depth" --secs "$SECS" --max-ops "$MAX_OPS" --server-pid "${!pidvar}" |
                    grep '^RESULT')
                "$stop"
                echo "$name depth=$depth round=$round $line" >&2
                echo "$name $depth $line" >>"$AB_RESULTS"
            done
        done
    done
}

ab_field() { # name depth key: the median over rounds
    grep "^$1 $2 " "$AB_RESULTS" | tr ' ' '\n' | grep "^$3=" | cut -d= -f2 | median
}

# ab_table A B WHAT: the markdown table of medians and A/B ratios; WHAT
# names the column of servers ("server", "proxy").
ab_table() {
    local a=$1 b=$2 what=$3 depth name k
    echo "| depth | $what | requests/s | p99 (µs) | $what CPU µs/request |"
    echo "|---|---|---|---|---|"
    for depth in $DEPTHS; do
        for name in "$a" "$b"; do
            echo "| $depth | $name | $(ab_field "$name" "$depth" ops_per_sec) | $(ab_field "$name" "$depth" p99_us) | $(ab_field "$name" "$depth" server_cpu_us_per_op) |"
        done
        printf '| %s | %s / %s ' "$depth" "$a" "$b"
        for k in ops_per_sec p99_us server_cpu_us_per_op; do
            printf '| %s ' "$(ratio "$(ab_field "$a" "$depth" $k)" "$(ab_field "$b" "$depth" $k)")"
        done
        echo "|"
    done
    rm -f "$AB_RESULTS"
}

# ab_json A B FILE: writes the figures of ab_table as JSON (see
# scripts/lib/bench-json.sh) to FILE, from the same per-run results: a
# median record per depth and server (with the A/B ratios on A's), then
# one record per run. The caller has called json_begin and json_meta for
# the metadata; call it before ab_table, which removes the results.
ab_json() {
    local a=$1 b=$2 file=$3 depth name k round line
    local -A seen=()
    for depth in $DEPTHS; do
        for name in "$a" "$b"; do
            local v=()
            for k in ops_per_sec p50_us p99_us p999_us server_cpu_us_per_op; do
                v+=("$(ab_field "$name" "$depth" $k)")
            done
            local r=(na na na)
            if [ "$name" = "$a" ]; then
                r=()
                for k in ops_per_sec p99_us server_cpu_us_per_op; do
                    r+=("$(ratio "$(ab_field "$a" "$depth" $k)" "$(ab_field "$b" "$depth" $k)")")
                done
            fi
            json_record "$depth" "$name" median na "${v[@]}" "${r[@]}" na
        done
    done
    while read -r name depth line; do
        round=$((${seen[$name $depth]:-0} + 1))
        seen[$name $depth]=$round
        local v=()
        for k in ops_per_sec p50_us p99_us p999_us server_cpu_us_per_op; do
            v+=("$(tr ' ' '\n' <<<"$line" | sed -n "s/^$k=//p")")
        done
        json_record "$depth" "$name" run "$round" "${v[@]}" na na na na
    done <"$AB_RESULTS"
    json_end "$file"
}

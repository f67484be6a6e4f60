# Shared by the load benchmark scripts (bench-echo.sh, bench-kv.sh,
# bench-proxy.sh): writes the figures of their markdown table as JSON, the
# input of scripts/bench-report.sh. Sourced, not run.
#
# The schema (bench/src/bin/bench_report.rs reads it): one object with the
# run's metadata and a "records" array, one record per (scenario, server,
# median or single run):
#
#   {"benchmark": "kv", "title": "...", "source": "scripts/bench-kv.sh",
#    "date": "2026-12-01", "cores": 2, "cpu_model": "...",
#    "server_threads": 2, "client_threads": null, "connections": 50,
#    "secs": 4, "rounds": 3, "scenario_label": "pipeline depth",
#    "server_label": "server", "throughput_unit": "requests/s",
#    "cpu_unit": "µs/request", "baseline": "memcached",
#    "records": [{"scenario": "1", "server": "kv", "stat": "median",
#                 "round": null, "throughput": 40622, "p50_us": 1161,
#                 "p99_us": 2913, "p999_us": 5967, "cpu_us": 20.84,
#                 "throughput_ratio": 1.00, "p99_ratio": 0.86,
#                 "cpu_ratio": 1.00, "errors": null}, ...]}
#
# A figure a run could not produce ("na" in the table) is null.
#
# Use: json_begin; json_meta KEY VALUE...; json_record ... (once per
# record); json_end FILE.

JSON_META=()
JSON_RECORDS=()

# json_num V: V as a JSON number, or null for "na" or nothing.
json_num() {
    if [[ ${1:-} =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; then
        printf '%s' "$1"
    else
        printf 'null'
    fi
}

# json_str S: S as a JSON string.
json_str() {
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\t'/ }
    s=${s//$'\n'/ }
    printf '"%s"' "$s"
}

json_begin() {
    JSON_META=()
    JSON_RECORDS=()
}

# json_meta KEY RAW: a metadata field; RAW is already JSON (json_str,
# json_num).
json_meta() {
    JSON_META+=("$(json_str "$1"): $2")
}

# json_record SCENARIO SERVER STAT ROUND THROUGHPUT P50 P99 P999 CPU
#             THROUGHPUT_RATIO P99_RATIO CPU_RATIO ERRORS
# STAT is median or run; ROUND is the run's number (or na for a median);
# the figures are numbers or "na".
json_record() {
    local r
    r="{\"scenario\": $(json_str "$1"), \"server\": $(json_str "$2"), \"stat\": $(json_str "$3")"
    r+=", \"round\": $(json_num "$4"), \"throughput\": $(json_num "$5")"
    r+=", \"p50_us\": $(json_num "$6"), \"p99_us\": $(json_num "$7"), \"p999_us\": $(json_num "$8")"
    r+=", \"cpu_us\": $(json_num "$9"), \"throughput_ratio\": $(json_num "${10}")"
    r+=", \"p99_ratio\": $(json_num "${11}"), \"cpu_ratio\": $(json_num "${12}")"
    r+=", \"errors\": $(json_num "${13}")}"
    JSON_RECORDS+=("$r")
}

# json_end FILE: writes the report.
json_end() {
    local i
    mkdir -p "$(dirname "$1")"
    {
        echo "{"
        for i in "${JSON_META[@]}"; do echo "  $i,"; done
        echo '  "records": ['
        for i in "${!JSON_RECORDS[@]}"; do
            if [ "$i" -lt $((${#JSON_RECORDS[@]} - 1)) ]; then
                echo "    ${JSON_RECORDS[$i]},"
            else
                echo "    ${JSON_RECORDS[$i]}"
            fi
        done
        echo "  ]"
        echo "}"
    } >"$1"
}

# json_machine: the date, cores and CPU model of this machine as metadata.
json_machine() {
    json_meta date "$(json_str "$(date -u +%Y-%m-%d)")"
    json_meta cores "$(json_num "$(nproc)")"
    json_meta cpu_model "$(json_str "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)")"
}

# json_links MD JSON NAME: the line the markdown gets, naming the JSON and
# the charts scripts/bench-report.sh draws from it (NAME is the JSON's
# "benchmark"; links relative to MD).
json_links() {
    local md_dir json_rel name=$3 charts
    md_dir=$(dirname "$1")
    json_rel=$(realpath -m --relative-to="$md_dir" "$2")
    charts=$(realpath -m --relative-to="$md_dir" "$(dirname "$2")/charts")
    echo "Figures as JSON: [$json_rel]($json_rel); charts (\`scripts/bench-report.sh\`):" \
        "[throughput]($charts/$name-throughput.svg), [CPU]($charts/$name-cpu.svg)," \
        "[latency]($charts/$name-latency.svg)."
}

# json_charts JSON: draws JSON's charts unless CHARTS=0; a failure to draw
# is reported, not fatal (the figures are already written).
json_charts() {
    if [ "${CHARTS:-1}" = 0 ]; then return 0; fi
    scripts/bench-report.sh "$1" >&2 || echo "warning: charts not drawn (scripts/bench-report.sh $1)" >&2
}

#!/usr/bin/env bash
# One-off: writes docs/bench-{echo,kv,kv-tls,proxy}.json from the figures
# already in docs/bench-echo.md, docs/bench-kv.md and docs/bench-proxy.md,
# which were measured before the benchmark scripts wrote JSON. Rerunning
# them on this 2-core shared machine would replace curated figures with
# noisier ones, so the existing runs are converted instead, with the
# scripts' own JSON code (scripts/lib/bench-json.sh, ab_json in
# scripts/lib/ab-load.sh):
#
# - kv, kv-tls, proxy: from the per-run RESULT lines the docs keep; the
#   medians and ratios come out of ab_json exactly as ab_table computed
#   the tables (checked below against the tables in the docs).
# - echo: from the markdown table of the latest run (the 2026-12-01 rerun),
#   which has medians only: no single runs, and no p50 (the script did not
#   keep it then).
#
# The dates and settings are those of the runs, as the docs state them.
# "source" in each file says it was converted. Run from the repository root:
#   scripts/lib/bench-md-to-json.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

. scripts/lib/bench-json.sh
. scripts/lib/ab-load.sh

common_meta() { # name title date threads conns secs rounds server_label baseline source
    json_meta benchmark "$(json_str "$1")"
    json_meta title "$(json_str "$2")"
    json_meta source "$(json_str "${10}")"
    json_meta date "$(json_str "$3")"
    json_meta cores 2
    json_meta cpu_model null
    json_meta server_threads "$(json_num "$4")"
    json_meta client_threads null
    json_meta connections "$(json_num "$5")"
    json_meta secs "$(json_num "$6")"
    json_meta rounds "$(json_num "$7")"
    json_meta scenario_label '"pipeline depth"'
    json_meta server_label "$(json_str "$8")"
    json_meta throughput_unit '"requests/s"'
    json_meta cpu_unit '"µs/request"'
    json_meta baseline "$(json_str "$9")"
}

# per_run MD SECTION: the "NAME depth=D round=R RESULT ..." lines of the
# markdown section whose heading matches SECTION ("" = before the first
# "## "), as ab_run records them ("NAME D RESULT ...").
per_run() {
    awk -v want="$2" '
        /^## / { section = $0 }
        (want == "" && section == "") || (want != "" && index(section, want)) {
            if ($2 ~ /^depth=/ && $3 ~ /^round=/ && $4 == "RESULT") {
                d = $2; sub(/^depth=/, "", d)
                $2 = d; $3 = ""
                line = $0; gsub(/  +/, " ", line)
                print line
            }
        }' "$1"
}

# check_table MD SECTION A B WHAT: ab_table over the converted runs must
# reproduce the table in the markdown section, row for row.
check_table() {
    local md=$1 section=$2 want got
    want=$(awk -v want="$section" '
        /^## / { section = $0 }
        ((want == "" && section == "") || (want != "" && index(section, want))) && /^\| [0-9]+ \|/' "$md")
    got=$(ab_table "$3" "$4" "$5" | grep '^| [0-9]')
    if [ "$want" != "$got" ]; then
        echo "bench-md-to-json: converted $md ($section) does not reproduce its table:" >&2
        diff <(echo "$want") <(echo "$got") >&2 || true
        exit 1
    fi
}

DEPTHS="1 16"

ab_convert() { # md section a b what json
    AB_RESULTS=$(mktemp)
    per_run "$1" "$2" >"$AB_RESULTS"
    ab_json "$3" "$4" "$6"
    check_table "$1" "$2" "$3" "$4" "$5"
}

json_begin
common_meta kv "kv against memcached" 2026-12-01 2 50 4 3 server memcached \
    "scripts/bench-kv.sh, converted from the per-run lines in docs/bench-kv.md"
ab_convert docs/bench-kv.md "" kv memcached server docs/bench-kv.json

json_begin
common_meta kv-tls "kv with TLS against kv in plaintext" 2026-12-02 2 50 4 3 server kv \
    "MODE=tls scripts/bench-kv.sh, converted from the per-run lines in docs/bench-kv.md"
ab_convert docs/bench-kv.md "What TLS costs" kv-tls kv server docs/bench-kv-tls.json

json_begin
common_meta proxy "kv_proxy against twemproxy" 2026-12-01 1 50 3 3 proxy twemproxy \
    "scripts/bench-proxy.sh, converted from the per-run lines in docs/bench-proxy.md"
ab_convert docs/bench-proxy.md "" kv_proxy twemproxy proxy docs/bench-proxy.json

# Echo: the rerun's table, medians only.
json_begin
json_meta benchmark '"echo"'
json_meta title '"Echo servers"'
json_meta source '"scripts/bench-echo.sh, converted from the 2026-12-01 table in docs/bench-echo.md"'
json_meta date '"2026-12-01"'
json_meta cores 2
json_meta cpu_model '"AMD EPYC"'
json_meta server_threads 1
json_meta client_threads 1
json_meta connections null
json_meta secs 3
json_meta rounds 3
json_meta scenario_label '"conns / size / in flight"'
json_meta server_label '"server"'
json_meta throughput_unit '"msgs/s"'
json_meta cpu_unit '"µs/msg"'
json_meta baseline '"mio"'
rows=0
while IFS='|' read -r _ sc server mps p99 cpu vs_mps vs_cpu errs _; do
    sc=$(xargs <<<"$sc")
    json_record "$sc" "$(xargs <<<"$server")" median na "$(xargs <<<"$mps")" na "$(xargs <<<"$p99")" na \
        "$(xargs <<<"$cpu")" "$(xargs <<<"$vs_mps")" na "$(xargs <<<"$vs_cpu")" "$(xargs <<<"$errs")"
    rows=$((rows + 1))
done < <(awk '/^## / { section = $0 } index(section, "Rerun, 2026-12-01") && /^\| [0-9]+ \/ /' docs/bench-echo.md)
if [ "$rows" -ne 25 ]; then
    echo "bench-md-to-json: expected 25 rows in the echo rerun table, found $rows" >&2
    exit 1
fi
json_end docs/bench-echo.json
echo "written: docs/bench-echo.json docs/bench-kv.json docs/bench-kv-tls.json docs/bench-proxy.json" >&2

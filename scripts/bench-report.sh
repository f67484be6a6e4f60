#!/usr/bin/env bash
# Draws SVG charts from the JSON the load benchmarks write beside their
# markdown (scripts/bench-echo.sh, bench-kv.sh, bench-proxy.sh): per file,
# throughput, server CPU per message or request, and p50/p99 latency, one
# panel per scenario and one bar per server, into a charts/ directory
# beside the file (docs/bench-kv.json -> docs/charts/kv-*.svg, named after
# the file's "benchmark" field). The program is bench/src/bin/bench_report.rs
# (plotters, SVG backend only).
#
# Usage: scripts/bench-report.sh [FILE.json...]   (default: docs/bench-*.json)
# Environment:
#   CARGO_TARGET_DIR  where to build (default: target)
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${CARGO_TARGET_DIR:-target}

files=("$@")
if [ ${#files[@]} -eq 0 ]; then
    shopt -s nullglob
    files=(docs/bench-*.json)
    shopt -u nullglob
fi
if [ ${#files[@]} -eq 0 ]; then
    echo "bench-report: no JSON files given and none in docs/" >&2
    exit 2
fi

echo "== building bench_report" >&2
cargo build --release --quiet -p weave-bench --bin bench_report

status=0
for f in "${files[@]}"; do
    "$TARGET/release/bench_report" --out "$(dirname "$f")/charts" "$f" || status=1
done
exit $status

#!/usr/bin/env bash
# valgrind memcheck over a fast subset of the runtime's tests: the library's
# unit tests, the fiber API tests, the server framework tests and the TCP
# tests that finish quickly.
# Fails on any invalid read or write, use of uninitialised memory, or bad
# free (leaks are not checked: worker threads and pooled stacks live for the
# whole process by design).
#
# Fiber stacks: corosensei (0.3) registers every stack it allocates with
# valgrind through client requests (VALGRIND_STACK_REGISTER, a no-op on real
# hardware), and weave's stacks are corosensei's DefaultStack, so no
# suppressions or special flags are needed for the stack switches.
#
# Tests that cannot run under valgrind are skipped by name: stack overflow
# (valgrind handles the guard-page fault itself) and timing-heavy stress.
#
# Usage: scripts/valgrind.sh [extra test-name filters for every binary]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "valgrind not found; installing it with apt-get"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq valgrind >/dev/null
fi
valgrind --version

# Build the test binaries and find their paths.
mapfile -t BINS < <(cargo test --no-run --lib --test fiber_basic --test net_tcp --test server \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"] + " " + m["executable"])
')

# Per binary: the tests to skip: too slow under valgrind's ~50x slowdown,
# or checking readiness right after a read, which valgrind's serialised
# threads delay (the pool's readiness-hint tests).
skips_for() {
    case "$1" in
        net_tcp) echo "--skip stress_1000_connections --skip full_duplex_100_mib" ;;
        weave) echo "--skip pool::tests::readiness_hint" ;;
        *) echo "" ;;
    esac
}

status=0
for entry in "${BINS[@]}"; do
    name=${entry%% *}
    bin=${entry#* }
    echo "==> valgrind memcheck: $name"
    rc=0
    # shellcheck disable=SC2046
    timeout 900 valgrind --tool=memcheck --error-exitcode=99 --leak-check=no \
        --track-origins=no --quiet \
        "$bin" --test-threads=1 $(skips_for "$name") "$@" || rc=$?
    case "$rc" in
        0) ;;
        99) echo "valgrind: memory errors in $name"; status=1 ;;
        *) echo "valgrind: $name failed under valgrind (exit $rc)"; status=1 ;;
    esac
done
if [ "$status" = 0 ]; then
    echo "valgrind: no invalid reads, writes or frees in ${#BINS[@]} test binaries"
fi
exit "$status"

#!/usr/bin/env bash
# Conformance of a memcached-compatible server at HOST PORT:
#   1. memccapable (libmemcached-tools) in ascii mode, then binary mode;
#   2. a pymemcache suite (scripts/conformance_pymemcache.py);
#   3. a meta-protocol suite through the meta-memcache client
#      (scripts/conformance_meta.py);
#   4. a byte-for-byte comparison with Debian's memcached, which the script
#      starts itself (scripts/memcached_diff.py).
# Installs what is missing (apt-get for libmemcached-tools and memcached,
# pip for pymemcache and meta-memcache). The server must run with memcached's default limits
# (-m 64, -I 1m). WARNING: flushes the server. Exits non-zero on any failure.
#
# Usage: scripts/conformance.sh HOST PORT
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 HOST PORT" >&2
    exit 2
fi
host=$1
port=$2
here=$(cd "$(dirname "$0")" && pwd)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    echo "== installing $1" >&2
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y -qq "$1" >/dev/null 2>&1 || {
        as_root apt-get update -qq
        as_root apt-get install -y -qq "$1"
    }
}
command -v memccapable >/dev/null 2>&1 || apt_install libmemcached-tools
# The reference server; the package starts a system instance, which the
# comparison does not use.
command -v memcached >/dev/null 2>&1 || apt_install memcached

python=python3
pip_install() {
    echo "== installing $1" >&2
    "$python" -m pip install --quiet "$1" 2>/dev/null ||
        "$python" -m pip install --quiet --break-system-packages "$1"
}
"$python" -c 'import pymemcache' 2>/dev/null || pip_install pymemcache
"$python" -c 'import meta_memcache' 2>/dev/null || pip_install meta-memcache

failed=0
run_capable() {
    local mode=$1 flag=$2 out
    echo "== memccapable ($mode) against $host:$port"
    # memccapable exits 0 even when tests fail: judge by its summary line.
    out=$(timeout 120 memccapable -h "$host" -p "$port" "$flag" 2>&1) || true
    echo "$out"
    if ! grep -q "All tests passed" <<<"$out"; then
        echo "memccapable ($mode): FAILED" >&2
        failed=1
    fi
}
run_capable ascii -a
run_capable binary -b

echo "== pymemcache suite against $host:$port"
if ! timeout 120 "$python" "$here/conformance_pymemcache.py" "$host" "$port"; then
    echo "pymemcache suite: FAILED" >&2
    failed=1
fi

echo "== meta-memcache suite against $host:$port"
if ! timeout 120 "$python" "$here/conformance_meta.py" "$host" "$port"; then
    echo "meta-memcache suite: FAILED" >&2
    failed=1
fi

echo "== byte-for-byte comparison with memcached against $host:$port"
if ! timeout 300 "$python" "$here/memcached_diff.py" "$host:$port"; then
    echo "memcached comparison: FAILED" >&2
    failed=1
fi

if [ "$failed" -ne 0 ]; then
    echo "conformance: FAILED" >&2
    exit 1
fi
echo "conformance: all passed"

#!/usr/bin/env bash
# kv's defenses (ASCII authentication with -Y, the hang-up on HTTP request
# lines, TLS) compared byte for byte with Debian's memcached: both run side
# by side on free loopback ports and get the same requests
# (scripts/security_compare.py). Installs memcached with apt-get when it is
# missing (its service is not needed: the script starts its own servers).
#
# Usage: scripts/security-compare.sh [KV_BINARY]
#   (default: target/release/examples/kv, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

kv=${1:-target/release/examples/kv}
if [ ! -x "$kv" ]; then
    cargo build --release --example kv
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

mc=$(command -v memcached || true)
if [ -z "$mc" ]; then
    echo "== installing memcached" >&2
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y -qq memcached >/dev/null 2>&1 || {
        as_root apt-get update -qq
        as_root apt-get install -y -qq memcached
    }
    mc=$(command -v memcached)
fi
echo "== $("$mc" -V) against $kv"

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
chmod 755 "$dir"
printf 'alice:secret\nbob:hunter2\n' >"$dir/auth"
# memcached drops to user nobody when started as root: it must read the file.
chmod 644 "$dir/auth"

timeout 300 python3 scripts/security_compare.py "$kv" "$mc" "$dir/auth"

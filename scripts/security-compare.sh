#!/usr/bin/env bash
# kv's defenses (ASCII authentication with -Y, the hang-up on HTTP request
# lines, TLS with -Z) compared byte for byte with Debian's memcached: both
# run side by side on free loopback ports and get the same requests, raw and
# from pymemcache over TLS (scripts/security_compare.py). Installs memcached
# and openssl with apt-get and pymemcache with pip when missing (memcached's
# service is not needed: the script starts its own servers).
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
if ! command -v openssl >/dev/null 2>&1; then
    as_root apt-get install -y -qq openssl >/dev/null 2>&1 || {
        as_root apt-get update -qq
        as_root apt-get install -y -qq openssl
    }
fi
python=python3
if ! "$python" -c 'import pymemcache' 2>/dev/null; then
    echo "== installing pymemcache" >&2
    "$python" -m pip install --quiet pymemcache 2>/dev/null ||
        "$python" -m pip install --quiet --break-system-packages pymemcache
fi
echo "== $("$mc" -V) against $kv"

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
chmod 755 "$dir"
printf 'alice:secret\nbob:hunter2\n' >"$dir/auth"
# memcached drops to user nobody when started as root: it must read the file.
chmod 644 "$dir/auth"

# A throwaway self-signed certificate for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
chmod 644 "$dir/key.pem" "$dir/cert.pem"

timeout 300 "$python" scripts/security_compare.py "$kv" "$mc" "$dir/auth" "$dir/cert.pem" "$dir/key.pem"

#!/usr/bin/env bash
# Three kv instances behind twemproxy (nutcracker), all on loopback: a client
# stores and reads back KEYS keys through the proxy, then each instance's
# `stats` shows how the keys were spread, and the proxy's stats port is
# read. Everything started here is stopped by PID on exit.
#
# Usage: scripts/cluster.sh
# Environment: KEYS [3000], CARGO_TARGET_DIR (default: target).
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-3000}
TARGET=${CARGO_TARGET_DIR:-target}

if ! command -v nutcracker >/dev/null 2>&1; then
    echo "== installing nutcracker (twemproxy)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq nutcracker >/dev/null 2>&1 || {
        apt-get update -qq && apt-get install -y -qq nutcracker
    }
fi
echo "== building the kv example" >&2
cargo build --release --quiet --example kv
KV="$TARGET/release/examples/kv"

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() { # port
    python3 - "$1" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
for _ in range(500):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        s.sendall(b"version\r\n")
        if s.recv(100).startswith(b"VERSION"):
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.01)
sys.exit("server on port %d did not start" % port)
PY
}

ports=()
for i in 1 2 3; do
    p=$(free_port)
    "$KV" -l 127.0.0.1 -p "$p" -t 1 -m 64 &
    pids+=($!)
    ports+=("$p")
done
for p in "${ports[@]}"; do wait_ready "$p"; done
echo "== kv instances on ports ${ports[*]}"

proxy_port=$(free_port)
stats_port=$(free_port)
cat >"$work/nutcracker.yml" <<YML
kv:
  listen: 127.0.0.1:$proxy_port
  hash: fnv1a_64
  distribution: ketama
  timeout: 2000
  auto_eject_hosts: false
  servers:
   - 127.0.0.1:${ports[0]}:1 kv1
   - 127.0.0.1:${ports[1]}:1 kv2
   - 127.0.0.1:${ports[2]}:1 kv3
YML
nutcracker -t -c "$work/nutcracker.yml" >/dev/null
# -i: aggregate proxy stats every 100 ms (default 30 s).
nutcracker -c "$work/nutcracker.yml" -a 127.0.0.1 -s "$stats_port" -i 100 -o "$work/nutcracker.log" &
pids+=($!)
wait_ready "$proxy_port"
echo "== twemproxy on 127.0.0.1:$proxy_port (stats on $stats_port)"

python3 - "$proxy_port" "$stats_port" "$KEYS" "${ports[@]}" <<'PY'
import json, socket, sys

proxy, stats_port, nkeys = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
backends = [int(p) for p in sys.argv[4:]]

def conn(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s, s.makefile("rb")

def expect(f, want):
    got = f.readline()
    if got != want:
        sys.exit(f"expected {want!r}, got {got!r}")

s, f = conn(proxy)
batch = 100
for start in range(0, nkeys, batch):
    req = b"".join(b"set key:%d 0 0 %d\r\nvalue-%d\r\n" % (k, len(b"value-%d" % k), k)
                   for k in range(start, min(nkeys, start + batch)))
    s.sendall(req)
    for _ in range(start, min(nkeys, start + batch)):
        expect(f, b"STORED\r\n")
for k in range(nkeys):
    s.sendall(b"get key:%d\r\n" % k)
    expect(f, b"VALUE key:%d 0 %d\r\n" % (k, len(b"value-%d" % k)))
    expect(f, b"value-%d\r\n" % k)
    expect(f, b"END\r\n")
print(f"stored and read back {nkeys} keys through the proxy")

counts = []
for i, port in enumerate(backends, 1):
    bs, bf = conn(port)
    bs.sendall(b"stats\r\n")
    stats = {}
    while True:
        line = bf.readline().decode().strip()
        if line == "END":
            break
        _, name, value = line.split(" ", 2)
        stats[name] = value
    counts.append(int(stats["curr_items"]))
    print(f"kv{i} (port {port}): curr_items={stats['curr_items']} cmd_set={stats['cmd_set']} get_hits={stats['get_hits']}")
if sum(counts) != nkeys or min(counts) == 0:
    sys.exit(f"keys not spread over all instances: {counts}")

st = socket.create_connection(("127.0.0.1", stats_port), timeout=10)
raw = b""
while True:
    chunk = st.recv(65536)
    if not chunk:
        break
    raw += chunk
pool = json.loads(raw)["kv"]
for name in ("kv1", "kv2", "kv3"):
    srv = pool[name]
    print(f"twemproxy {name} (as of its last 100 ms aggregation): requests={srv['requests']} "
          f"responses={srv['responses']} server_err={srv['server_err']}")
print("cluster: keys spread over all three instances")
PY

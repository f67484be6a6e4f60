#!/usr/bin/env bash
# Packs what scripts/bench-scaling.sh needs into .scaling/ (git-ignored), for
# a machine with more cores that has no compiler, no registry and no
# memcached package: stripped release builds of the servers and load
# generators, this machine's memcached with the libraries it links, and
# .scaling/run.sh, which runs the repository's bench-scaling.sh on them.
#
# On the other machine, from a copy of the repository that holds .scaling/:
#   bash .scaling/run.sh [OUTDIR]
# which writes OUTDIR/bench-scaling.md (default: the current directory), with
# the environment of bench-scaling.sh passed through (WORKERS_LIST, ROUNDS,
# SECS, ...).
#
# The machine this was written for (16 cores, lent now and then) runs its
# programs under gVisor, whose network stack is its own: there, loopback
# TCP costs what gVisor's stack costs, so compare servers within one run
# rather than with the 2-core figures in docs/.
#
# Usage: scripts/scaling-kit.sh
set -euo pipefail
cd "$(dirname "$0")/.."

KIT=.scaling
TARGET=${CARGO_TARGET_DIR:-target}
rm -rf "$KIT"
mkdir -p "$KIT/bin" "$KIT/lib"

echo "== building release binaries" >&2
cargo build --release --quiet --example echo --example echo_load --example kv --example kv_load
cargo build --release --quiet -p weave-bench --example echo_tokio --example echo_may --example echo_mio
for b in echo echo_load kv kv_load echo_tokio echo_may echo_mio; do
    strip -o "$KIT/bin/$b" "$TARGET/release/examples/$b"
done

if ! command -v memcached >/dev/null 2>&1; then
    echo "== installing memcached (Debian package)" >&2
    apt-get install -y -qq memcached >/dev/null
fi
cp "$(command -v memcached)" "$KIT/bin/memcached"
# The shared libraries memcached links, except the C library and the
# loader, which the other machine has in its own version.
ldd "$KIT/bin/memcached" | awk '/=> \// { print $3 }' | while read -r lib; do
    case $(basename "$lib") in
        libc.so.* | ld-linux*) ;;
        *) cp -L "$lib" "$KIT/lib/" ;;
    esac
done

cat >"$KIT/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the repository's scripts/bench-scaling.sh on the binaries packed
# beside this file (see scripts/scaling-kit.sh). Argument: where the report
# goes [.].
set -euo pipefail
kit=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$kit")
mkdir -p "${1:-.}"
out=$(cd "${1:-.}" && pwd) # bench-scaling.sh runs from the repository root
export LD_LIBRARY_PATH="$kit/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$kit/bin/memcached" -h >/dev/null 2>&1 || echo "scaling kit: memcached does not run here; KV_SERVERS=kv" >&2
BIN="$kit/bin" MEMCACHED="$kit/bin/memcached" NO_BUILD=1 OUT="$out/bench-scaling.md" \
    bash "$repo/scripts/bench-scaling.sh"
RUN
chmod +x "$KIT/run.sh"
du -sh "$KIT" >&2
echo "== packed into $KIT; run it with: bash $KIT/run.sh OUTDIR" >&2

#!/usr/bin/env bash
# benches/callgrind.sh: user-space instructions per proxied request, counted
# by callgrind (repeatable whatever else the machine is doing, unlike time).
#
# One `meshd echo` upstream, meshd (`run --workers 1`) under callgrind with
# instrumentation off; wrk warms it up, then instrumentation is switched on
# for exactly one wrk run of CONNECTIONS keep-alive connections and off
# again. Instructions per request = the instructions meshd executed in that
# window / the requests wrk completed in it.
#
#   benches/callgrind.sh                                  # defaults
#   benches/callgrind.sh --request-headers-timeout 0      # extra `meshd run` flags
#   MESHD_BIN=target/release/meshd REPEAT=3 benches/callgrind.sh
#
# Parameters (environment): MESHD_BIN (default: cargo build --release),
# CONNECTIONS=16, SECONDS_=5 (the measured wrk run), REPEAT=1 (windows
# measured, one line each), PORT_BASE=18401 (PORT_BASE..+2 must be free).
# Needs valgrind, wrk, curl.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
CONNECTIONS=${CONNECTIONS:-16}
SECONDS_=${SECONDS_:-5}
REPEAT=${REPEAT:-1}
PORT_BASE=${PORT_BASE:-18401}
HOST=echo.default.svc.cluster.local
MESHD_PORT=$((PORT_BASE + 1))
ADMIN_PORT=$((PORT_BASE + 2))

die() { echo "callgrind: $*" >&2; exit 1; }
# shellcheck source=benches/lib.sh
source "$here/lib.sh"
for tool in valgrind callgrind_control wrk curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

meshd=${MESHD_BIN:-}
if [[ -z $meshd ]]; then
    (cd "$root" && cargo build --release --quiet) || die "cargo build failed"
    meshd=$root/target/release/meshd
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/meshd-callgrind.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n ${KEEP_TMP:-} ]] || rm -rf "$tmp"
}
trap cleanup EXIT

"$meshd" echo --listen "127.0.0.1:$PORT_BASE" --name e0 >/dev/null 2>&1 &
pids+=($!)
echo_service_entry "$HOST" "$PORT_BASE" >"$tmp/mesh.yaml"

# An empty GLIBC_TUNABLES stops meshd's one re-exec, which valgrind would
# not follow.
GLIBC_TUNABLES= valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$tmp/callgrind.out" \
    "$meshd" run --workers 1 --config "$tmp/mesh.yaml" \
    --listen "127.0.0.1:$MESHD_PORT" --admin "127.0.0.1:$ADMIN_PORT" "$@" \
    >"$tmp/meshd.log" 2>&1 &
pid=$!
pids+=("$pid")
wait_http meshd "$pid" "http://127.0.0.1:$ADMIN_PORT/ready" -f

load() {
    wrk -t1 -c"$CONNECTIONS" -d"$1" -H "Host: $HOST" "http://127.0.0.1:$MESHD_PORT/" \
        | awk '/requests in/ {print $1}'
}
load 2s >/dev/null # warm-up: connections, pools, caches

echo "callgrind: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown), \`meshd run --workers 1 $*\`, $CONNECTIONS connections, ${SECONDS_}s per window" >&2
for round in $(seq "$REPEAT"); do
    callgrind_control --zero "$pid" >/dev/null 2>&1
    callgrind_control --instr=on "$pid" >/dev/null 2>&1
    requests=$(load "${SECONDS_}s")
    callgrind_control --instr=off "$pid" >/dev/null 2>&1
    callgrind_control --dump="round$round" "$pid" >/dev/null 2>&1
    dump=$(ls -t "$tmp"/callgrind.out* | head -1)
    instructions=$(awk '/^totals:/ {print $2}' "$dump")
    [[ $requests -gt 0 ]] || die "wrk completed no request"
    echo "round $round: $requests requests, $instructions instructions, $((instructions / requests)) per request"
done

#!/usr/bin/env bash
# benches/soak.sh: meshd under load for a long time while everything around
# it changes (issue 8, scope 7).
#
# wrk holds keep-alive load on meshd, which balances over three `meshd echo`
# upstreams with outlier detection. Meanwhile:
#   - the configuration is rewritten every RELOAD_EVERY (100 ms), flipping
#     the endpoints' weights between 1/1/1 and 5/1/1 (meshd reloads on the
#     file change);
#   - every KILL_EVERY (10 s) one upstream is killed (SIGKILL: its
#     connections reset, new ones are refused) and the one killed before is
#     started again, round robin.
# The report gives total and failed requests (non-2xx + socket errors, as
# wrk counts them), the kills, failed requests per kill, p50/p99 latency,
# the reloads meshd applied, and meshd's RSS at the start and the end.
#
#   benches/soak.sh > soak-report.md            # 10 minutes, retries on
#   RETRIES=off DURATION=600 benches/soak.sh
#
# Parameters (environment): DURATION=600 (seconds), RETRIES=on|off
# (VirtualService retries: {attempts: 2, retryOn: connect-failure,reset,5xx}
# or none), CONNECTIONS=32, THREADS=1, RELOAD_EVERY=0.1, KILL_EVERY=10,
# PORT_BASE=18301 (PORT_BASE..+12 must be free), MESHD_BIN=path (default:
# cargo build --release).
#
# Exit status: 0 when the failures per kill are at most
# consecutive5xxErrors (5) with retries off, or zero with retries on; 2
# otherwise.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

DURATION=${DURATION:-600}
RETRIES=${RETRIES:-on}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
RELOAD_EVERY=${RELOAD_EVERY:-0.1}
KILL_EVERY=${KILL_EVERY:-10}
PORT_BASE=${PORT_BASE:-18301}
THRESHOLD=5
HOST=echo.default.svc.cluster.local
MESHD_PORT=$((PORT_BASE + 10))
ADMIN_PORT=$((PORT_BASE + 11))

die() { echo "soak: $*" >&2; exit 1; }
command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/meshd-soak.XXXXXX")
pids=()
echo_pids=(0 0 0)
cleanup() {
    for p in "${pids[@]}" "${echo_pids[@]}"; do
        [[ $p != 0 ]] && kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

if [[ -n ${MESHD_BIN:-} ]]; then
    meshd=$MESHD_BIN
else
    (cd "$root" && cargo build --release --quiet) >&2
    meshd=${CARGO_TARGET_DIR:-$root/target}/release/meshd
fi
[[ -x $meshd ]] || die "no meshd binary at $meshd"

start_echo() { # start_echo I: (re)starts upstream I
    "$meshd" echo --listen "127.0.0.1:$((PORT_BASE + $1))" --name "e$1" >/dev/null 2>&1 &
    echo_pids[$1]=$!
}
for i in 0 1 2; do start_echo "$i"; done

case $RETRIES in
on) retries='retries: {attempts: 2, retryOn: "connect-failure,reset,5xx"}' ;;
off) retries='retries: {attempts: 0}' ;;
*) die "RETRIES is on or off" ;;
esac

write_config() { # write_config W0: the first endpoint's weight
    cat >"$tmp/mesh/next.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: default}
spec:
  hosts: [$HOST]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: $PORT_BASE}, weight: $1}
  - {address: 127.0.0.1, ports: {http: $((PORT_BASE + 1))}}
  - {address: 127.0.0.1, ports: {http: $((PORT_BASE + 2))}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: $HOST
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: $THRESHOLD, interval: 1s, baseEjectionTime: 5s, maxEjectionPercent: 50}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [$HOST]
  http:
  - $retries
    route:
    - destination: {host: $HOST}
EOF
    # An atomic replace, as a ConfigMap update is: never a half-written file.
    mv "$tmp/mesh/next.yaml" "$tmp/mesh/mesh.yaml"
}
mkdir -p "$tmp/mesh"
write_config 1

"$meshd" run --config "$tmp/mesh/mesh.yaml" --listen "127.0.0.1:$MESHD_PORT" --admin "127.0.0.1:$ADMIN_PORT" \
    >"$tmp/meshd.log" 2>&1 &
meshd_pid=$!
pids+=("$meshd_pid")
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null || die "meshd did not become ready: $(cat "$tmp/meshd.log")"
curl -fs -H "Host: $HOST" "http://127.0.0.1:$MESHD_PORT/" >/dev/null || die "no 200 through meshd"

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$meshd_pid/status"; }
# A few seconds of load first, so the start figure has its pools and
# buffers, as the end one does.
wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -H "Host: $HOST" "http://127.0.0.1:$MESHD_PORT/" >/dev/null 2>&1
rss_start=$(rss_kb)

echo "soak: ${DURATION}s, $CONNECTIONS connections, retries $RETRIES, reload every ${RELOAD_EVERY}s, kill every ${KILL_EVERY}s" >&2
wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Host: $HOST" "http://127.0.0.1:$MESHD_PORT/" \
    >"$tmp/wrk.txt" 2>&1 &
wrk_pid=$!

# The weight flipper.
(
    weight=1
    while kill -0 "$wrk_pid" 2>/dev/null; do
        weight=$((weight == 1 ? 5 : 1))
        write_config "$weight"
        sleep "$RELOAD_EVERY"
    done
) &
flipper=$!

kills=0
victim=0
killed=-1
end=$((SECONDS + DURATION))
while ((SECONDS + KILL_EVERY <= end)) && kill -0 "$wrk_pid" 2>/dev/null; do
    sleep "$KILL_EVERY"
    if ((killed >= 0)); then start_echo "$killed"; fi
    kill -KILL "${echo_pids[$victim]}" 2>/dev/null || true
    echo_pids[$victim]=0
    killed=$victim
    victim=$(((victim + 1) % 3))
    kills=$((kills + 1))
done
wait "$wrk_pid" || true
wait "$flipper" 2>/dev/null || true
rss_end=$(rss_kb)

requests=$(awk '/requests in/ {print $1}' "$tmp/wrk.txt")
non2xx=$(awk -F': ' '/Non-2xx or 3xx responses/ {print $2}' "$tmp/wrk.txt")
socket_errors=$(awk -F'[ ,]+' '/Socket errors/ {print $4 + $6 + $8 + $10}' "$tmp/wrk.txt")
failed=$((${non2xx:-0} + ${socket_errors:-0}))
p50=$(awk '$1 == "50%" {print $2}' "$tmp/wrk.txt")
p99=$(awk '$1 == "99%" {print $2}' "$tmp/wrk.txt")
stats=$(curl -fs "http://127.0.0.1:$ADMIN_PORT/stats/prometheus")
stat() { awk -v name="$1" -v labels="${2:-}" '$1 ~ "^"name"\\{" && index($1, labels) {sum += $2} END {print sum + 0}' <<<"$stats"; }
per_kill=$(awk -v f="$failed" -v k="$kills" 'BEGIN {printf "%.1f", (k > 0 ? f / k : f)}')

cat <<EOF
## Soak

\`RETRIES=$RETRIES DURATION=$DURATION benches/soak.sh\` ($(date -u +%Y-%m-%d), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) CPUs):
three \`meshd echo\` upstreams, wrk ${DURATION}s with $CONNECTIONS connections, the configuration rewritten every ${RELOAD_EVERY}s
(endpoint weights flipped), one upstream killed every ${KILL_EVERY}s (the previous one restarted).

| requests | failed | kills | failed per kill | p50 | p99 | reloads applied | ejections | RSS start → end |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| $requests | $failed | $kills | $per_kill | $p50 | $p99 | $(stat meshd_config_reloads_total 'result="applied"') | $(stat envoy_cluster_outlier_detection_ejections_enforced_total) | $((rss_start / 1024)) MB → $((rss_end / 1024)) MB |
EOF

if [[ -n ${SOAK_DEBUG:-} ]]; then grep "^istio_requests_total{" <<<"$stats" | sed -E "s/.*response_code=\"([0-9]+)\".*response_flags=\"([^\"]*)\".*\} ([0-9.e+]+)$/\1 \2 \3/" | sort >&2; grep -E "Socket errors|Non-2xx" "$tmp/wrk.txt" >&2 || true; fi
if [[ $RETRIES == on ]] && ((failed > 0)); then
    echo "soak: $failed requests failed with retries on" >&2
    exit 2
fi
if [[ $RETRIES == off ]] && ((kills > 0)) && ((failed > THRESHOLD * kills)); then
    echo "soak: $failed requests failed over $kills kills, more than $THRESHOLD per kill" >&2
    exit 2
fi

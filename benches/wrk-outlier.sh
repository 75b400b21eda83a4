#!/usr/bin/env bash
# benches/wrk-outlier.sh: one upstream killed in the middle of a wrk run.
#
# meshd balances keep-alive GETs over three `meshd echo` upstreams with
# outlier detection and retries on:
#   outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}
#   retries: {attempts: 2, retryOn: "connect-failure,reset,5xx"}
# Half way through the run one upstream is killed with SIGKILL (its open
# connections reset, new ones are refused). The report says how many
# requests failed (non-2xx or socket errors seen by wrk), and what meshd
# counted: ejections, retries, and requests by response code and flags.
#
#   benches/wrk-outlier.sh > outlier-report.md
#
# Parameters (environment): DURATION=10s (KILL_AFTER defaults to half),
# CONNECTIONS=64, THREADS=1, PORT_BASE=18201 (PORT_BASE..+12 must be free),
# MESHD_BIN=path (default: cargo build --release).
#
# Exit status: 0 when the failed requests are at most consecutive5xxErrors
# (5), 2 otherwise.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

DURATION=${DURATION:-10s}
seconds=${DURATION%s}
KILL_AFTER=${KILL_AFTER:-$((seconds / 2))}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
PORT_BASE=${PORT_BASE:-18201}
THRESHOLD=5
HOST=echo.default.svc.cluster.local
MESHD_PORT=$((PORT_BASE + 10))
ADMIN_PORT=$((PORT_BASE + 11))

die() { echo "wrk-outlier: $*" >&2; exit 1; }
# shellcheck source=benches/lib.sh
source "$here/lib.sh"
command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/meshd-outlier.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

if [[ -n ${MESHD_BIN:-} ]]; then
    meshd=$MESHD_BIN
else
    (cd "$root" && cargo build --release --quiet) >&2
    meshd=${CARGO_TARGET_DIR:-$root/target}/release/meshd
fi
[[ -x $meshd ]] || die "no meshd binary at $meshd"

echo_pids=()
for i in 0 1 2; do
    "$meshd" echo --listen "127.0.0.1:$((PORT_BASE + i))" --name "e$i" >/dev/null 2>&1 &
    pids+=($!)
    echo_pids+=($!)
done

{
echo_service_entry "$HOST" "$PORT_BASE" $((PORT_BASE + 1)) $((PORT_BASE + 2))
cat <<EOF
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: $HOST
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: $THRESHOLD, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [$HOST]
  http:
  - retries: {attempts: 2, retryOn: "connect-failure,reset,5xx"}
    route:
    - destination: {host: $HOST}
EOF
} >"$tmp/mesh.yaml"

"$meshd" run --config "$tmp/mesh.yaml" --listen "127.0.0.1:$MESHD_PORT" --admin "127.0.0.1:$ADMIN_PORT" \
    >"$tmp/meshd.log" 2>&1 &
pids+=($!)
wait_http meshd "${pids[-1]}" "http://127.0.0.1:$ADMIN_PORT/ready" -f
curl -fs -H "Host: $HOST" "http://127.0.0.1:$MESHD_PORT/" >/dev/null || die "no 200 through meshd"

echo "wrk: $DURATION, $CONNECTIONS connections; killing e1 after ${KILL_AFTER}s" >&2
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -H "Host: $HOST" "http://127.0.0.1:$MESHD_PORT/" >"$tmp/wrk.txt" 2>&1 &
wrk_pid=$!
sleep "$KILL_AFTER"
kill -KILL "${echo_pids[1]}"
wait "$wrk_pid" || true

requests=$(awk '/requests in/ {print $1}' "$tmp/wrk.txt")
non2xx=$(awk -F': ' '/Non-2xx or 3xx responses/ {print $2}' "$tmp/wrk.txt")
socket_errors=$(awk -F'[ ,]+' '/Socket errors/ {print $4 + $6 + $8 + $10}' "$tmp/wrk.txt")
failed=$((${non2xx:-0} + ${socket_errors:-0}))
stats=$(curl -fs "http://127.0.0.1:$ADMIN_PORT/stats/prometheus")
stat() { awk -v name="$1" '$1 ~ "^"name"\\{" {sum += $2} END {print sum + 0}' <<<"$stats"; }
by_code=$(grep '^istio_requests_total{' <<<"$stats" |
    sed -E 's/.*response_code="([0-9]+)".*response_flags="([^"]*)".*\} ([0-9.e+]+)$/\1 \2 \3/' | sort)

cat <<EOF
## An upstream killed under load

\`benches/wrk-outlier.sh\` ($(date -u +%Y-%m-%d), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) CPUs):
three \`meshd echo\` upstreams, \`consecutive5xxErrors: $THRESHOLD\`, \`retries: {attempts: 2, retryOn: connect-failure,reset,5xx}\`,
wrk $DURATION with $CONNECTIONS connections, one upstream killed (SIGKILL) after ${KILL_AFTER}s.

| requests | failed (non-2xx + socket errors) | ejections enforced | retries | pending overflow |
|---:|---:|---:|---:|---:|
| $requests | $failed | $(stat envoy_cluster_outlier_detection_ejections_enforced_total) | $(stat envoy_cluster_upstream_rq_retry) | $(stat envoy_cluster_upstream_rq_pending_overflow) |

Requests by response code and flags (\`istio_requests_total\`):

\`\`\`
$by_code
\`\`\`
EOF

if ((failed > THRESHOLD)); then
    echo "wrk-outlier: $failed requests failed, more than consecutive5xxErrors ($THRESHOLD)" >&2
    exit 2
fi

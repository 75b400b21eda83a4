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
#     connections reset, new ones are refused), round robin; DOWN_FOR (3 s)
#     later it is started again, and the script waits until it answers
#     before the next kill. Exactly one upstream is down at a time, as the
#     issue has it ("killing and restarting one of three upstreams").
#
# meshd writes its access log (text); the lines of requests that did not
# get a 200 are kept (grep) and classified:
#   - "to the killed upstream before its ejection": 503 with `UF` or `UC`
#     (connect failure, reset) whose upstream host is the one killed last,
#     started between one second before the kill (requests in flight) and
#     that host's ejection (meshd's "endpoint ejected" log line), or its
#     restart if it was not ejected;
#   - everything else, and every socket error wrk saw, is attributed to
#     meshd.
# The report gives total and failed requests (non-2xx + socket errors, as
# wrk counts them), that split with the worst kill, the failures by status
# and response flags, p50/p99 latency, the reloads meshd applied, the
# ejections, and meshd's RSS at the start, every minute and at the end.
#
#   benches/soak.sh > soak-report.md            # 10 minutes, retries on
#   RETRIES=off DURATION=600 benches/soak.sh
#
# Parameters (environment): DURATION=600 (seconds), RETRIES=on|off
# (VirtualService retries: {attempts: 2, retryOn: connect-failure,reset,5xx}
# or none), CONNECTIONS=32, THREADS=1, RELOAD_EVERY=0.1, KILL_EVERY=10,
# DOWN_FOR=3 (seconds an upstream stays dead; at most KILL_EVERY),
# PORT_BASE=18301 (PORT_BASE..+12 must be free), MESHD_BIN=path (default:
# cargo build --release), KEEP_LOGS=dir (copy meshd's log, the kept access
# log lines, the kill events and wrk's output there).
#
# Exit status: 0 when no failure is attributed to meshd and, with retries
# off, no kill cost more than consecutive5xxErrors (5) requests to the
# killed upstream, or, with retries on, nothing failed at all; 2 otherwise.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

DURATION=${DURATION:-600}
RETRIES=${RETRIES:-on}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
RELOAD_EVERY=${RELOAD_EVERY:-0.1}
KILL_EVERY=${KILL_EVERY:-10}
DOWN_FOR=${DOWN_FOR:-3}
PORT_BASE=${PORT_BASE:-18301}
THRESHOLD=5
HOST=echo.default.svc.cluster.local
MESHD_PORT=$((PORT_BASE + 10))
ADMIN_PORT=$((PORT_BASE + 11))

die() { echo "soak: $*" >&2; exit 1; }
# shellcheck source=benches/lib.sh
source "$here/lib.sh"
command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"
awk -v d="$DOWN_FOR" -v k="$KILL_EVERY" 'BEGIN {exit !(d > 0 && d <= k)}' || die "DOWN_FOR must be > 0 and <= KILL_EVERY"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/meshd-soak.XXXXXX")
pids=()
echo_pids=(0 0 0)
cleanup() {
    for p in "${pids[@]}" "${echo_pids[@]}"; do
        [[ $p != 0 ]] && kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ -n ${KEEP_LOGS:-} ]]; then
        mkdir -p "$KEEP_LOGS" && cp "$tmp"/{meshd.log,access.log,events,wrk.txt,rss,stats.txt} "$KEEP_LOGS"/ 2>/dev/null || true
    fi
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
answers() { curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$1/"; }
wait_echo() { # wait_echo I: until upstream I answers (at most 10 s)
    for _ in $(seq 500); do
        answers "$((PORT_BASE + $1))" && return 0
        sleep 0.02
    done
    die "upstream $1 did not come back"
}
now() { date -u +%Y-%m-%dT%H:%M:%S.%3NZ; }
for i in 0 1 2; do start_echo "$i"; done
for i in 0 1 2; do wait_echo "$i"; done

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

# The access log goes through a FIFO to grep, which keeps the lines of
# requests that did not get a 200 (a few in ten million).
mkfifo "$tmp/access.fifo"
grep -v '" 200 ' <"$tmp/access.fifo" >"$tmp/access.log" &
grep_pid=$!
"$meshd" run --config "$tmp/mesh/mesh.yaml" --listen "127.0.0.1:$MESHD_PORT" --admin "127.0.0.1:$ADMIN_PORT" \
    --access-log text --log-format json >"$tmp/access.fifo" 2>"$tmp/meshd.log" &
meshd_pid=$!
pids+=("$meshd_pid")
wait_http meshd "$meshd_pid" "http://127.0.0.1:$ADMIN_PORT/ready" -f
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

soak_start=$SECONDS
# meshd's RSS every minute.
(
    minute=0
    while kill -0 "$wrk_pid" 2>/dev/null; do
        sleep 1
        if ((SECONDS >= soak_start + 60 * (minute + 1))); then
            minute=$((minute + 1))
            echo "$minute $(rss_kb)" >>"$tmp/rss"
        fi
    done
) &
sampler=$!

# The killer: kill, DOWN_FOR later restart and wait until it answers, so
# that exactly one upstream is down at a time. Events (ISO times) go to
# $tmp/events for the classification below.
kills=0
victim=0
end=$((SECONDS + DURATION))
: >"$tmp/events"
while ((SECONDS + KILL_EVERY <= end)) && kill -0 "$wrk_pid" 2>/dev/null; do
    sleep "$(awk -v k="$KILL_EVERY" -v d="$DOWN_FOR" 'BEGIN {print k - d}')"
    echo "kill $(now) 127.0.0.1:$((PORT_BASE + victim))" >>"$tmp/events"
    kill -KILL "${echo_pids[$victim]}" 2>/dev/null || true
    echo_pids[$victim]=0
    kills=$((kills + 1))
    sleep "$DOWN_FOR"
    start_echo "$victim"
    wait_echo "$victim"
    echo "up $(now) 127.0.0.1:$((PORT_BASE + victim))" >>"$tmp/events"
    victim=$(((victim + 1) % 3))
done
wait "$wrk_pid" || true
wait "$flipper" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
sleep 2 # the access log is flushed every second
rss_end=$(rss_kb)
requests=$(awk '/requests in/ {print $1}' "$tmp/wrk.txt")
non2xx=$(awk -F': ' '/Non-2xx or 3xx responses/ {print $2}' "$tmp/wrk.txt")
socket_errors=$(awk -F'[ ,]+' '/Socket errors/ {print $4 + $6 + $8 + $10}' "$tmp/wrk.txt")
failed=$((${non2xx:-0} + ${socket_errors:-0}))
p50=$(awk '$1 == "50%" {print $2}' "$tmp/wrk.txt")
p99=$(awk '$1 == "99%" {print $2}' "$tmp/wrk.txt")
stats=$(curl -fs "http://127.0.0.1:$ADMIN_PORT/stats/prometheus")
stat() { awk -v name="$1" -v labels="${2:-}" '$1 ~ "^"name"\\{" && index($1, labels) {sum += $2} END {print sum + 0}' <<<"$stats"; }
printf '%s\n' "$stats" >"$tmp/stats.txt"
kill -TERM "$meshd_pid" 2>/dev/null || true
wait "$meshd_pid" 2>/dev/null || true
wait "$grep_pid" 2>/dev/null || true

# The classification (see the top of the file): one stream of tagged
# events, times in ms since the epoch's day 0.
classified=$(
    {
        cat "$tmp/events"
        sed -n 's/.*"timestamp":"\([^"]*\)".*"message":"endpoint ejected".*"endpoint":"\([^"]*\)".*/eject \1 \2/p' "$tmp/meshd.log"
        awk -F'"' '{split($3, r, " "); t = $1; gsub(/[][ ]/, "", t); print "fail", t, $14, r[1], r[2]}' "$tmp/access.log"
    } | awk -v threshold="$THRESHOLD" '
        function days(y, m, d) { if (m <= 2) { y--; m += 12 } return 365 * y + int(y / 4) - int(y / 100) + int(y / 400) + int((153 * (m - 3) + 2) / 5) + d }
        function ms(t,   a, d, c) { gsub(/Z/, "", t); split(t, a, "T"); split(a[1], d, "-"); split(a[2], c, ":"); return ((days(d[1] + 0, d[2] + 0, d[3] + 0) * 24 + c[1]) * 60 + c[2]) * 60000 + c[3] * 1000 }
        $1 == "kill" { n++; kill_t[n] = ms($2); kill_h[n] = $3 }
        $1 == "up" || $1 == "eject" { m++; back_t[m] = ms($2); back_h[m] = $3 }
        $1 == "fail" { f++; fail_t[f] = ms($2); fail_h[f] = $3; fail_code[f] = $4; fail_flags[f] = $5; by[$4 " " $5]++ }
        END {
            for (i = 1; i <= n; i++) {
                end_t[i] = kill_t[i] + 3600000
                for (j = 1; j <= m; j++) if (back_h[j] == kill_h[i] && back_t[j] >= kill_t[i] && back_t[j] < end_t[i]) end_t[i] = back_t[j]
            }
            for (k = 1; k <= f; k++) {
                hit = 0
                if (fail_code[k] == 503 && fail_flags[k] ~ /(^|,)(UF|UC)(,|$)/)
                    for (i = 1; i <= n && !hit; i++)
                        if (fail_h[k] == kill_h[i] && fail_t[k] >= kill_t[i] - 1000 && fail_t[k] <= end_t[i]) {
                            per[i]++; hit = 1
                            if (fail_flags[k] ~ /(^|,)UF(,|$)/) { refused[i]++; refused_all++ } else reset_all++
                        }
                if (hit) killed++; else other++
            }
            worst = 0; worst_refused = 0; over = 0
            for (i = 1; i <= n; i++) {
                if (per[i] > worst) worst = per[i]
                if (refused[i] > worst_refused) worst_refused = refused[i]
                if (per[i] > threshold) over++
            }
            flags = ""
            for (key in by) flags = flags (flags == "" ? "" : ", ") by[key] " × `" key "`"
            printf "%d %d %d %d %d %d %d %d %s\n", f, killed, worst, over, other, reset_all, refused_all, worst_refused, (flags == "" ? "none" : flags)
        }'
)
read -r logged killed worst over_kills logged_other killed_reset killed_refused worst_refused by_flags <<<"$classified"
meshd_failed=$((failed - killed))
rss_minutes=$(awk '{printf "%s%d", (NR > 1 ? ", " : ""), $2 / 1024}' "$tmp/rss" 2>/dev/null || true)

cat <<EOF
## Soak

\`RETRIES=$RETRIES DURATION=$DURATION benches/soak.sh\` ($(date -u +%Y-%m-%d), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) CPUs):
three \`meshd echo\` upstreams, wrk ${DURATION}s with $CONNECTIONS connections, the configuration rewritten every ${RELOAD_EVERY}s
(endpoint weights flipped), one upstream killed every ${KILL_EVERY}s and restarted ${DOWN_FOR}s later (one down at a time).

| requests | failed | to the killed upstream before ejection (worst kill) | attributed to meshd | kills | p50 | p99 | reloads applied | ejections | retries | RSS start → end |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| $requests | $failed | $killed ($worst) | $meshd_failed | $kills | $p50 | $p99 | $(stat meshd_config_reloads_total 'result="applied"') | $(stat envoy_cluster_outlier_detection_ejections_enforced_total) | $(stat envoy_cluster_upstream_rq_retry) | $((rss_start / 1024)) MB → $((rss_end / 1024)) MB |

Failures by status and flags (access log, $logged lines): $by_flags. wrk: ${non2xx:-0} non-2xx, ${socket_errors:-0} socket errors.
To the killed upstream before its ejection: $killed_reset reset in flight (\`UC\`: sent before the kill, or on a pooled connection
the kill had closed), $killed_refused refused (\`UF\`: new connections before the ejection; worst kill $worst_refused).
RSS every minute (MB): ${rss_minutes:-none}.
EOF

status=0
if ((meshd_failed > 0)); then
    echo "soak: $meshd_failed failed requests attributed to meshd" >&2
    status=2
fi
if [[ $RETRIES == on ]] && ((failed > 0)); then
    echo "soak: $failed requests failed with retries on" >&2
    status=2
fi
if [[ $RETRIES == off ]] && ((over_kills > 0)); then
    echo "soak: $over_kills kills cost more than $THRESHOLD requests to the killed upstream (worst: $worst)" >&2
    status=2
fi
exit "$status"

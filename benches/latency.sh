#!/usr/bin/env bash
# benches/latency.sh: latency a proxy adds, at a fixed request rate.
#
# wrk (benches/wrk.sh) is closed-loop: a slow answer delays the next request,
# so the stall is never measured (coordinated omission) and, at saturation,
# latency is mostly queueing. Here oha sends requests on a fixed schedule
# (`-q RATE`, open loop) and, with `--latency-correction`, times each one from
# the moment the schedule released it, so a request that waited for a busy
# connection is charged for the wait.
#
# For each rate in RATES and each target (direct: straight to one `meshd echo`
# upstream; meshd, nginx, HAProxy: through the proxy, one worker each, to two
# `meshd echo` upstreams, round robin, configured as in benches/wrk.sh), oha
# runs CONNECTIONS keep-alive HTTP/1.1 connections with
# `Host: echo.default.svc.cluster.local` for DURATION. The targets alternate,
# REPEAT times. The report gives per rate and target the median p50 and p99
# (oha keeps every latency, so they are exact) and the latency the proxy
# added, target minus direct from the same repetition (median over the
# repetitions), in µs; also the achieved rate and how busy the proxy process
# kept its CPU (utime+stime from /proc/PID/stat over the run, as wrk.sh; the
# kernel samples it at its tick, so at these low loads it is coarse).
#
# Pinning matters for the tail here: with the proxy alone on CPU 0 (the
# default, as wrk.sh), each request wakes that CPU from idle two times; on a
# VM that costs a host-side vCPU wake-up, which shows up as added p99 of a
# millisecond or more for every proxy alike (PROXY_CPUS=1, all on one CPU,
# or PIN=0 give a much lower p99; compare the proxies within one run).
#
# The report (Markdown) goes to stdout, progress to stderr:
#   benches/latency.sh > latency-report.md
#
# Parameters (environment):
#   RATES="1000 5000"  request rates (req/s); a list runs each
#   DURATION=10s       measured oha run, per target, rate and repetition
#   WARMUP=2s          unmeasured oha run at the same rate just before
#   CONNECTIONS=16     oha -c (keep-alive connections)
#   OHA_THREADS=1      oha --worker-threads (its tokio runtime)
#   REPEAT=3           repetitions (targets alternate within each); medians
#                      are the middle value (mean of the two middle ones
#                      when REPEAT is even)
#   PROXIES="direct meshd nginx haproxy"   targets, in the order they
#                      alternate; "added" needs direct
#   PIN=1              taskset pinning (0 disables; off by itself below 2 CPUs)
#   PROXY_CPUS=0       CPUs of the proxy under test
#   LOAD_CPUS=1        CPUs of oha and the echo upstreams
#   PORT_BASE=18201    ports PORT_BASE..PORT_BASE+30 on 127.0.0.1 must be free
#   MESHD_BIN=path     meshd binary to use; when unset, the script runs
#                      `cargo build --release` and uses target/release/meshd
#   OHA_BIN=path       oha binary to use; when unset, `oha` on PATH or in
#                      ~/.cargo/bin, else the script installs it with
#                      `nice -n 19 cargo install oha --locked --version
#                      $OHA_VERSION` (a few minutes of compiling, once)
#   OHA_VERSION=1.16.0 the version it installs (its flags are the ones used
#                      below; it builds with rustc 1.88 and later)
#
# Exit status: 0 when every target answered 200 and oha saw no errors or
# non-2xx answers, 2 when a target was skipped, a run had errors, or a run
# fell more than 5 % short of its rate (the table is printed anyway).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

RATES=${RATES:-1000 5000}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-16}
OHA_THREADS=${OHA_THREADS:-1}
REPEAT=${REPEAT:-3}
PROXIES=${PROXIES:-direct meshd nginx haproxy}
PIN=${PIN:-1}
PROXY_CPUS=${PROXY_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
PORT_BASE=${PORT_BASE:-18201}
OHA_VERSION=${OHA_VERSION:-1.16.0}

HOST_HEADER=echo.default.svc.cluster.local
ECHO1_PORT=$PORT_BASE
ECHO2_PORT=$((PORT_BASE + 1))
MESHD_PORT=$((PORT_BASE + 10))
MESHD_ADMIN_PORT=$((PORT_BASE + 11))
NGINX_PORT=$((PORT_BASE + 20))
HAPROXY_PORT=$((PORT_BASE + 30))

log() { printf '[latency.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup
# shellcheck source=benches/lib.sh
source "$here/lib.sh"
with_cleanup latency

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v nginx >/dev/null || need_pkgs+=(nginx)
command -v haproxy >/dev/null || need_pkgs+=(haproxy)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v jq >/dev/null || need_pkgs+=(jq)
install_pkgs "${need_pkgs[@]}"

if [[ -n ${OHA_BIN:-} ]]; then
    oha=$OHA_BIN
elif command -v oha >/dev/null; then
    oha=$(command -v oha)
elif [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/oha ]]; then
    oha=${CARGO_HOME:-$HOME/.cargo}/bin/oha
else
    command -v cargo >/dev/null || die "oha is missing and there is no cargo to install it (set OHA_BIN)"
    log "installing oha $OHA_VERSION: nice -n 19 cargo install oha --locked --version $OHA_VERSION (a few minutes)"
    nice -n 19 cargo install oha --locked --version "$OHA_VERSION" >&2 || die "cargo install oha failed"
    oha=${CARGO_HOME:-$HOME/.cargo}/bin/oha
fi
[[ -x $oha ]] || die "no oha binary at $oha"
oha_version=$("$oha" --version 2>&1 | head -1 || true)
[[ $oha_version == oha* ]] || die "$oha --version printed '$oha_version', not 'oha X.Y.Z'"
for flag in --latency-correction --output-format --no-tui --worker-threads; do
    "$oha" --help 2>&1 | grep -q -- "$flag" || die "$oha_version has no $flag (use OHA_VERSION=$OHA_VERSION)"
done

find_meshd

pin_cpus

clk_tck=$(getconf CLK_TCK)

# ---------------------------------------------------------------- helpers
# in benches/lib.sh: quote, start, port_in_use, wait_http, children,
# cpu_ticks, machine_ticks, children_ticks

# median: the median of the numbers on stdin, one a line ("-" when none).
median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        if (NR % 2) printf "%.0f\n", v[(NR + 1) / 2]
        else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ---------------------------------------------------------------- configs
# The configurations of benches/wrk.sh (lib.sh), with one worker each.
write_configs
measure_busy

# ---------------------------------------------------------------- start
log "starting upstreams and proxies in $tmp"
start echo1 "${pin_load[@]}" "$meshd" echo --listen "127.0.0.1:$ECHO1_PORT" --name v1 --workers 1
echo1_pid=$last_pid
start echo2 "${pin_load[@]}" "$meshd" echo --listen "127.0.0.1:$ECHO2_PORT" --name v2 --workers 1
echo2_pid=$last_pid
wait_http echo1 "$echo1_pid" "http://127.0.0.1:$ECHO1_PORT/"
wait_http echo2 "$echo2_pid" "http://127.0.0.1:$ECHO2_PORT/"

declare -A url pids skipped
url[direct]="http://127.0.0.1:$ECHO1_PORT/"
pids[direct]=$echo1_pid   # "proxy" CPU of the direct row: the echo upstream's

for proxy in $PROXIES; do
    case $proxy in
    direct) ;;
    meshd)
        start meshd "${pin_proxy[@]}" "$meshd" run --config "$tmp/meshd-config" \
            --listen "127.0.0.1:$MESHD_PORT" --admin "127.0.0.1:$MESHD_ADMIN_PORT" --workers 1 --log warn
        pids[meshd]=$last_pid
        wait_http meshd "$last_pid" "http://127.0.0.1:$MESHD_ADMIN_PORT/ready" -f
        url[meshd]="http://127.0.0.1:$MESHD_PORT/"
        ;;
    nginx)
        start nginx "${pin_proxy[@]}" nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log"
        nginx_pid=$last_pid
        wait_http nginx "$nginx_pid" "http://127.0.0.1:$NGINX_PORT/"
        pids[nginx]="$nginx_pid $(children "$nginx_pid" | tr '\n' ' ')"
        url[nginx]="http://127.0.0.1:$NGINX_PORT/"
        ;;
    haproxy)
        start haproxy "${pin_proxy[@]}" haproxy -db -f "$tmp/haproxy/haproxy.cfg"
        pids[haproxy]=$last_pid
        wait_http haproxy "$last_pid" "http://127.0.0.1:$HAPROXY_PORT/"
        url[haproxy]="http://127.0.0.1:$HAPROXY_PORT/"
        ;;
    *) die "unknown proxy '$proxy' in PROXIES" ;;
    esac
done

targets=()
for proxy in $PROXIES; do
    code=$(curl -s -o "$tmp/preflight-$proxy" -w '%{http_code}' -H "Host: $HOST_HEADER" "${url[$proxy]}" || true)
    if [[ $code == 200 ]]; then
        targets+=("$proxy")
    else
        skipped[$proxy]="answered HTTP $code for Host: $HOST_HEADER"
        log "skipping $proxy: ${skipped[$proxy]}"
    fi
done
if [[ " ${targets[*]} " != *" direct "* ]]; then
    log "warning: no direct target: the added-latency columns stay empty"
fi

# ---------------------------------------------------------------- measure
# -w: at the deadline, wait for requests in flight instead of counting them
# as errors ("aborted due to deadline").
oha_cmd() { # oha_cmd RATE DURATION URL: the command line, as an array in $ohac
    ohac=("${pin_load[@]}" "$oha" --no-tui --output-format json -q "$1" --latency-correction
        -z "$2" -w -c "$CONNECTIONS" --http-version 1.1 --worker-threads "$OHA_THREADS"
        -H "Host: $HOST_HEADER" "$3")
}

# oha's JSON: latencies in seconds (exact: it sorts every one), counts per
# status code and per error. Prints: req/s p50_us p99_us p999_us max_us
# total non2xx errors.
oha_summary='
  def us: if . == null then -1 else . * 1e6 end;
  [ .summary.requestsPerSec,
    (.latencyPercentiles.p50 | us), (.latencyPercentiles.p99 | us),
    (.latencyPercentiles["p99.9"] | us), (.summary.slowest | us),
    (([.statusCodeDistribution[]] | add // 0) + ([.errorDistribution[]] | add // 0)),
    ([.statusCodeDistribution | to_entries[] | select(.key | test("^2") | not) | .value] | add // 0),
    ([.errorDistribution[]] | add // 0) ]
  | map(if type == "number" then (. * 10 | round / 10) else . end) | @tsv'

# One line per run: target rate rep req/s p50 p99 p99.9 max total non2xx
# errors cpu_us/req background_cpus steal_cpus cpu_percent (latencies in µs).
results=$tmp/results
: >"$results"
declare -A shown_cmd
status=0
log "$((REPEAT * ${#targets[@]} * $(wc -w <<<"$RATES"))) runs of $WARMUP + $DURATION each"

for ((rep = 1; rep <= REPEAT; rep++)); do
    for rate in $RATES; do
        for proxy in "${targets[@]}"; do
            oha_cmd "$rate" "$WARMUP" "${url[$proxy]}"
            "${ohac[@]}" >/dev/null
            oha_cmd "$rate" "$DURATION" "${url[$proxy]}"
            if [[ -z ${shown_cmd[$proxy/$rate]:-} ]]; then
                commands+=("$(quote "${ohac[@]}")")
                shown_cmd[$proxy/$rate]=1
            fi
            # shellcheck disable=SC2086  # pids is a list
            read -r user0 sys0 <<<"$(cpu_ticks ${pids[$proxy]})"
            read -r mach0 steal0 <<<"$(machine_ticks)"
            read -r up_u0 up_s0 <<<"$(cpu_ticks "$echo1_pid" "$echo2_pid")"
            children_ticks
            load0=$child_ticks
            t0=$(date +%s%N)
            "${ohac[@]}" >"$tmp/oha.json" 2>"$tmp/oha.err" || { cat "$tmp/oha.err" >&2; die "oha failed"; }
            t1=$(date +%s%N)
            children_ticks
            load1=$child_ticks
            read -r up_u1 up_s1 <<<"$(cpu_ticks "$echo1_pid" "$echo2_pid")"
            read -r mach1 steal1 <<<"$(machine_ticks)"
            # shellcheck disable=SC2086
            read -r user1 sys1 <<<"$(cpu_ticks ${pids[$proxy]})"
            cp "$tmp/oha.json" "$tmp/oha-$proxy-$rate-$rep.json"
            read -r rps p50 p99 p999 max total non2xx errors <<<"$(jq -r "$oha_summary" "$tmp/oha.json")"
            secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
            cpu_us=$(awk -v t=$((user1 + sys1 - user0 - sys0)) -v hz="$clk_tck" -v n="$total" \
                'BEGIN { printf "%.2f", (n > 0 ? t * 1e6 / hz / n : 0) }')
            ours=$((up_u1 + up_s1 - up_u0 - up_s0 + load1 - load0))
            if [[ $proxy != direct ]]; then ours=$((ours + user1 + sys1 - user0 - sys0)); fi
            read -r bg steal <<<"$(awk -v m=$((mach1 - mach0 - ours)) -v st=$((steal1 - steal0)) \
                -v hz="$clk_tck" -v d="$secs" 'BEGIN {
                    if (m < 0) m = 0
                    printf "%.2f %.2f", m / hz / d, st / hz / d }')"
            cpu_pct=$(awk -v t=$((user1 + sys1 - user0 - sys0)) -v hz="$clk_tck" -v d="$secs" \
                'BEGIN { printf "%.1f", t / hz / d * 100 }')
            echo "$proxy $rate $rep $rps $p50 $p99 $p999 $max $total $non2xx $errors $cpu_us $bg $steal $cpu_pct" >>"$results"
            log "rep $rep  rate $rate  $proxy  $rps req/s  p50 ${p50}us  p99 ${p99}us  p99.9 ${p999}us  max ${max}us" \
                " CPU ${cpu_pct} % (${cpu_us} us/req)  non-2xx $non2xx  errors $errors  background ${bg} CPUs, steal ${steal}"
            if ((non2xx + errors > 0)); then status=2; fi
            if awk -v r="$rps" -v q="$rate" 'BEGIN { exit !(r < 0.95 * q) }'; then
                log "warning: $proxy reached only $rps of $rate req/s"
                status=2
            fi
        done
    done
done

# ---------------------------------------------------------------- report
cpu_model=$(awk -F: '/^model name/ { sub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)

# field PROXY RATE FIELD: that field of the target's runs at RATE, one a line.
field() { awk -v p="$1" -v r="$2" -v f="$3" '$1 == p && $2 == r { print $f }' "$results"; }
# added PROXY RATE FIELD: target minus direct, per repetition, one a line.
added() {
    awk -v p="$1" -v r="$2" -v f="$3" '
        $2 == r && $1 == "direct" { d[$3] = $f }
        $2 == r && $1 == p { t[$3] = $f }
        END { for (k in t) if (k in d) print t[k] - d[k] }' "$results"
}

echo "## Added latency at a fixed request rate (oha, open loop): meshd vs nginx vs HAProxy"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, Linux $(uname -r); $busy_before CPUs busy just before the run"
echo "- $meshd_version ($meshd_source), $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v | head -1 | cut -d' ' -f1-3), $oha_version"
echo "- parameters: RATES=\"$RATES\" DURATION=$DURATION WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS OHA_THREADS=$OHA_THREADS REPEAT=$REPEAT PIN=$PIN$(
    if [[ $PIN == 1 ]]; then echo " (proxy on CPU $PROXY_CPUS, oha and upstreams on CPU $LOAD_CPUS)"; fi)"
echo "- one worker per proxy; HTTP/1.1 keep-alive; latency timed from each request's scheduled start (\`--latency-correction\`)"
if [[ $PIN == 1 && $PROXY_CPUS != "$LOAD_CPUS" ]]; then
    echo "- the proxy has its CPU to itself and it idles between requests: waking it costs the tail (on a VM a vCPU wake-up), the same for every proxy; see the header of benches/latency.sh"
fi
echo "- p50 / p99: median over $REPEAT repetitions; added = target − direct in the same repetition, median over the repetitions; all in µs"
echo
echo "| rate (req/s) | target | achieved req/s | p50 µs | p99 µs | added p50 µs | added p99 µs | CPU % (µs/req) | non-2xx / errors |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
for rate in $RATES; do
    for proxy in $PROXIES; do
        label=$proxy
        if [[ $proxy == direct ]]; then label="direct (no proxy)"; fi
        if [[ -n ${skipped[$proxy]:-} ]]; then
            echo "| $rate | $label | skipped: ${skipped[$proxy]} | | | | | | |"
            status=2
            continue
        fi
        rps=$(field "$proxy" "$rate" 4 | median)
        p50=$(field "$proxy" "$rate" 5 | median)
        p99=$(field "$proxy" "$rate" 6 | median)
        # the run with the median CPU %, and its µs/req
        cpu=$(awk -v p="$proxy" -v r="$rate" '$1 == p && $2 == r { print $15, $12 }' "$results" | sort -g |
            awk '{ v[NR] = $1 " % (" $2 ")" } END { if (NR) print v[int((NR + 1) / 2)] }')
        bad=$(awk -v p="$proxy" -v r="$rate" '$1 == p && $2 == r { n += $10; e += $11 } END { printf "%d / %d", n, e }' "$results")
        if [[ $proxy == direct ]]; then
            a50="—"
            a99="—"
        else
            a50=$(added "$proxy" "$rate" 5 | median)
            a99=$(added "$proxy" "$rate" 6 | median)
        fi
        echo "| $rate | $label | $rps | $p50 | $p99 | $a50 | $a99 | $cpu | $bad |"
    done
done
echo
echo "CPU: the proxy process's utime+stime over the run's wall time (tick-sampled, coarse at these loads), and per request. At a fixed rate below saturation every request pays a wake-up, so µs/req is far above the saturated figure of benches/wrk.sh. The direct row's CPU is the echo upstream's own. The proxies spread requests over two upstreams, direct uses one."
echo
read -r bg_median bg_max steal_max <<<"$(awk '{ print $13, $14 }' "$results" | sort -g | awk '
    { b[NR] = $1; if ($1 > bmax) bmax = $1; if ($2 > smax) smax = $2 }
    END { printf "%.2f %.2f %.2f", b[int(NR / 2) + 1], bmax, smax }')"
echo "Other processes used a median $bg_median CPUs (max $bg_max) during the measured runs; hypervisor steal at most $steal_max CPUs.$(
    if awk -v b="$bg_max" 'BEGIN { exit !(b > 0.1) }'; then echo " The machine was not idle: treat the numbers with care."; fi)"
echo
echo "Per repetition (p50 / p99 / p99.9 / max, µs):"
echo
for rate in $RATES; do
    for proxy in "${targets[@]}"; do
        echo "- $rate req/s, $proxy: $(awk -v p="$proxy" -v r="$rate" '$1 == p && $2 == r {
            printf "%s%s / %s / %s / %s", sep, $5, $6, $7, $8; sep = "; " }' "$results")"
    done
done
echo
echo "Commands (\$TMP is the script's temp dir; the configs it writes there are in benches/lib.sh, write_configs):"
echo
echo '```'
printf '%s\n' "${commands[@]}" | sed "s|$tmp|\$TMP|g"
echo '```'
exit "$status"

#!/usr/bin/env bash
# benches/wrk.sh: HTTP/1.1 proxy benchmark on loopback.
#
# wrk sends keep-alive GETs through each proxy to two `meshd echo` upstreams
# (round robin), and straight to one upstream as the baseline ("direct").
# Proxies compared, configured alike: meshd, nginx, HAProxy, WORKERS workers
# (threads / processes) each.
# For every proxy it reports requests/s, p50 and p99 latency (wrk's own
# histogram, read by a Lua done() hook) and the proxy process's CPU time per
# request (utime+stime from /proc/PID/stat before and after the measured run,
# divided by the requests wrk completed).
#
# The report (Markdown) goes to stdout, progress to stderr:
#   benches/wrk.sh > bench-report.md
#
# Parameters (environment):
#   DURATION=10s       measured wrk run, per proxy and repetition
#   WARMUP=2s          unmeasured wrk run just before each measured one
#   CONNECTIONS="64 256"  wrk connections; a list runs each
#   WORKERS=1          worker threads (meshd --workers, nginx worker_processes,
#                      HAProxy nbthread); above 1, PIN defaults to 0 (the
#                      proxy needs every CPU)
#   THREADS=1          wrk threads
#   REPEAT=3           repetitions; the table shows the median run by req/s
#                      (the faster of the two middle ones when REPEAT is even)
#   PROXIES="direct meshd nginx haproxy"   targets, in the order they alternate
#   PIN=1              taskset pinning (0 disables; off by itself below 2 CPUs)
#   PROXY_CPUS=0       CPUs of the proxy under test
#   LOAD_CPUS=1        CPUs of wrk and the echo upstreams
#   PORT_BASE=18101    ports PORT_BASE..PORT_BASE+30 on 127.0.0.1 must be free
#   MESHD_BIN=path     meshd binary to use; when unset, the script runs
#                      `cargo build --release` and uses target/release/meshd
#   SYSCALLS=0         1: afterwards, one extra run per proxy under
#                      `strace -c -f` and a syscalls-per-request summary
#   SYSCALL_DURATION=3s  length of that run
#   INSTRUCTIONS=1     also count user-space instructions per request with
#                      `perf stat -e instructions:u` in one extra run per
#                      proxy, where the machine exposes the counter
#   TLS=0              1: the proxies terminate TLS 1.3 (keep-alive) with one
#                      self-signed certificate (meshd on a Gateway HTTPS
#                      port); the direct row and the upstreams stay plain
#
# Exit status: 0 when every target answered 200 and wrk saw no errors, 2 when
# a target was skipped or a run had errors (the table is printed anyway).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64 256}
WORKERS=${WORKERS:-1}
THREADS=${THREADS:-1}
REPEAT=${REPEAT:-3}
PROXIES=${PROXIES:-direct meshd nginx haproxy}
if ((WORKERS > 1)); then PIN=${PIN:-0}; else PIN=${PIN:-1}; fi
PROXY_CPUS=${PROXY_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
PORT_BASE=${PORT_BASE:-18101}
SYSCALLS=${SYSCALLS:-0}
SYSCALL_DURATION=${SYSCALL_DURATION:-3s}
INSTRUCTIONS=${INSTRUCTIONS:-1}

HOST_HEADER=echo.default.svc.cluster.local
ECHO1_PORT=$PORT_BASE
ECHO2_PORT=$((PORT_BASE + 1))
MESHD_PORT=$((PORT_BASE + 10))
MESHD_ADMIN_PORT=$((PORT_BASE + 11))
MESHD_TLS_PORT=$((PORT_BASE + 12))
TLS=${TLS:-0}
NGINX_PORT=$((PORT_BASE + 20))
HAPROXY_PORT=$((PORT_BASE + 30))

log() { printf '[wrk.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup
# shellcheck source=benches/lib.sh
source "$here/lib.sh"
with_cleanup wrk

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v nginx >/dev/null || need_pkgs+=(nginx)
command -v haproxy >/dev/null || need_pkgs+=(haproxy)
command -v curl >/dev/null || need_pkgs+=(curl)
if [[ $TLS == 1 ]] && ! command -v openssl >/dev/null; then need_pkgs+=(openssl); fi
if [[ $SYSCALLS == 1 ]] && ! command -v strace >/dev/null; then need_pkgs+=(strace); fi
install_pkgs "${need_pkgs[@]}"

find_meshd

pin_cpus

clk_tck=$(getconf CLK_TCK)

# ---------------------------------------------------------------- helpers
# in benches/lib.sh: quote, start, port_in_use, wait_http, children,
# cpu_ticks, machine_ticks, children_ticks

# ---------------------------------------------------------------- configs
write_configs

cat >"$tmp/report.lua" <<'EOF'
-- Prints one machine-readable line; latencies are in microseconds.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT %d %d %.0f %.0f %d %d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
EOF

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
            --listen "127.0.0.1:$MESHD_PORT" --admin "127.0.0.1:$MESHD_ADMIN_PORT" --workers "$WORKERS" --log warn \
            --gateway-bind-address 127.0.0.1
        pids[meshd]=$last_pid
        wait_http meshd "$last_pid" "http://127.0.0.1:$MESHD_ADMIN_PORT/ready" -f
        url[meshd]="http://127.0.0.1:$MESHD_PORT/"
        if [[ $TLS == 1 ]]; then
            url[meshd]="https://127.0.0.1:$MESHD_TLS_PORT/"
            wait_http meshd "$last_pid" "${url[meshd]}" -k
        fi
        ;;
    nginx)
        start nginx "${pin_proxy[@]}" nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log"
        nginx_pid=$last_pid
        url[nginx]="$scheme://127.0.0.1:$NGINX_PORT/"
        wait_http nginx "$nginx_pid" "${url[nginx]}" -k
        # master + worker(s); the master is idle but counted all the same
        pids[nginx]="$nginx_pid $(children "$nginx_pid" | tr '\n' ' ')"
        ;;
    haproxy)
        start haproxy "${pin_proxy[@]}" haproxy -db -f "$tmp/haproxy/haproxy.cfg"
        pids[haproxy]=$last_pid
        url[haproxy]="$scheme://127.0.0.1:$HAPROXY_PORT/"
        wait_http haproxy "$last_pid" "${url[haproxy]}" -k
        ;;
    *) die "unknown proxy '$proxy' in PROXIES" ;;
    esac
done

# Every target must answer 200 with the Host header before it is measured.
targets=()
for proxy in $PROXIES; do
    code=$(curl -sk -o "$tmp/preflight-$proxy" -w '%{http_code}' -H "Host: $HOST_HEADER" "${url[$proxy]}" || true)
    if [[ $code == 200 ]]; then
        targets+=("$proxy")
    else
        skipped[$proxy]="answered HTTP $code for Host: $HOST_HEADER"
        log "skipping $proxy: ${skipped[$proxy]}"
    fi
done

# ---------------------------------------------------------------- measure
wrk_cmd() { # wrk_cmd CONNS DURATION URL: the command line, as an array in $wrk
    wrk=("${pin_load[@]}" wrk -t "$THREADS" -c "$1" -d "$2" -s "$tmp/report.lua" -H "Host: $HOST_HEADER" "$3")
}

# One line per run: proxy conns rep rps p50_us p99_us cpu_us/req errors
# status_errors user_us/req sys_us/req background_cpus steal_cpus.
# background: CPUs used by processes other than wrk, the upstreams and the
# proxy during the run (another build, say); steal: taken by the hypervisor.
results=$tmp/results
: >"$results"
declare -A shown_cmd
status=0
nreq_runs=$((REPEAT * ${#targets[@]} * $(wc -w <<<"$CONNECTIONS")))
log "$nreq_runs runs of $WARMUP + $DURATION each"

for ((rep = 1; rep <= REPEAT; rep++)); do
    for conns in $CONNECTIONS; do
        for proxy in "${targets[@]}"; do
            wrk_cmd "$conns" "$WARMUP" "${url[$proxy]}"
            "${wrk[@]}" >/dev/null
            wrk_cmd "$conns" "$DURATION" "${url[$proxy]}"
            if [[ -z ${shown_cmd[$proxy]:-} ]]; then
                commands+=("$(quote "${wrk[@]}")")
                shown_cmd[$proxy]=1
            fi
            # shellcheck disable=SC2086  # pids is a list
            read -r user0 sys0 <<<"$(cpu_ticks ${pids[$proxy]})"
            read -r mach0 steal0 <<<"$(machine_ticks)"
            read -r up_u0 up_s0 <<<"$(cpu_ticks "$echo1_pid" "$echo2_pid")"
            children_ticks
            wrk0=$child_ticks
            out=$("${wrk[@]}")
            children_ticks
            wrk1=$child_ticks
            read -r up_u1 up_s1 <<<"$(cpu_ticks "$echo1_pid" "$echo2_pid")"
            read -r mach1 steal1 <<<"$(machine_ticks)"
            # shellcheck disable=SC2086
            read -r user1 sys1 <<<"$(cpu_ticks ${pids[$proxy]})"
            read -r _ requests dur_us p50 p99 errors status_errors <<<"$(grep '^WRKRESULT' <<<"$out")"
            read -r cpu_us user_us sys_us <<<"$(awk -v u=$((user1 - user0)) -v s=$((sys1 - sys0)) \
                -v hz="$clk_tck" -v n="$requests" 'BEGIN {
                    k = n > 0 ? 1e6 / hz / n : 0
                    printf "%.2f %.2f %.2f", (u + s) * k, u * k, s * k }')"
            rps=$(awk -v n="$requests" -v d="$dur_us" 'BEGIN { printf "%.0f", n / (d / 1e6) }')
            ours=$((up_u1 + up_s1 - up_u0 - up_s0 + wrk1 - wrk0))
            if [[ $proxy != direct ]]; then ours=$((ours + user1 + sys1 - user0 - sys0)); fi
            read -r bg steal <<<"$(awk -v m=$((mach1 - mach0 - ours)) -v st=$((steal1 - steal0)) \
                -v hz="$clk_tck" -v d="$dur_us" 'BEGIN {
                    if (m < 0) m = 0
                    printf "%.2f %.2f", m / hz / (d / 1e6), st / hz / (d / 1e6) }')"
            echo "$proxy $conns $rep $rps $p50 $p99 $cpu_us $errors $status_errors $user_us $sys_us $bg $steal" >>"$results"
            log "rep $rep  $proxy  c=$conns  $rps req/s  p50 ${p50}us  p99 ${p99}us" \
                " CPU ${cpu_us} us/req (user $user_us, sys $sys_us)  errors $errors/$status_errors" \
                " background ${bg} CPUs, steal ${steal}"
            if ((errors + status_errors > 0)); then status=2; fi
        done
    done
done

# ---------------------------------------------------------------- syscalls
syscall_report=$tmp/syscalls.md
: >"$syscall_report"
if [[ $SYSCALLS == 1 ]]; then
    for proxy in "${targets[@]}"; do
        attach=()
        # shellcheck disable=SC2086
        for pid in ${pids[$proxy]}; do attach+=(-p "$pid"); done
        strace -c -f -o "$tmp/strace-$proxy" "${attach[@]}" 2>/dev/null &
        strace_pid=$!
        sleep 1
        wrk_cmd "${CONNECTIONS%% *}" "$SYSCALL_DURATION" "${url[$proxy]}"
        out=$("${wrk[@]}")
        kill -INT "$strace_pid" 2>/dev/null || true
        wait "$strace_pid" 2>/dev/null || true
        read -r _ requests _ <<<"$(grep '^WRKRESULT' <<<"$out")"
        awk -v p="$proxy" -v n="$requests" '
            $NF == "total" { total = $4 }
            $1 ~ /^[0-9.]+$/ && $NF != "total" { calls[$NF] = $4 }
            END {
                if (n == 0 || total == 0) { printf "- %s: no data (strace failed?)\n", p; exit }
                line = sprintf("- %s: %.2f syscalls/request (%d requests under strace):", p, total / n, n)
                k = 0
                while (k < 6) {
                    best = ""; for (s in calls) if (best == "" || calls[s] > calls[best]) best = s
                    if (best == "") break
                    line = line sprintf(" %s %.2f,", best, calls[best] / n); delete calls[best]; k++
                }
                sub(/,$/, "", line); print line
            }' "$tmp/strace-$proxy" >>"$syscall_report"
    done
fi

# ---------------------------------------------------------------- instructions
instr_report=$tmp/instructions.md
: >"$instr_report"
if [[ $INSTRUCTIONS == 1 ]] && command -v perf >/dev/null; then
    if perf stat -x, -e instructions:u true 2>&1 | grep -q '^[0-9]'; then
        for proxy in "${targets[@]}"; do
            [[ $proxy == direct ]] && continue
            perf_pids=$(tr ' ' ',' <<<"${pids[$proxy]}" | sed 's/,*$//')
            perf stat -x, -e instructions:u -p "$perf_pids" -o "$tmp/perf-$proxy" &
            perf_pid=$!
            sleep 0.5
            wrk_cmd "${CONNECTIONS%% *}" "$SYSCALL_DURATION" "${url[$proxy]}"
            out=$("${wrk[@]}")
            kill -INT "$perf_pid" 2>/dev/null || true
            wait "$perf_pid" 2>/dev/null || true
            read -r _ requests _ <<<"$(grep '^WRKRESULT' <<<"$out")"
            awk -F, -v p="$proxy" -v n="$requests" '$3 ~ /instructions/ && n > 0 {
                printf "- %s: %.0f user-space instructions/request\n", p, $1 / n }' "$tmp/perf-$proxy" >>"$instr_report"
        done
    else
        echo "- perf stat -e instructions:u: the counter is not exposed on this machine (use callgrind, benches/README-bench.md)" >>"$instr_report"
    fi
fi

# ---------------------------------------------------------------- report
cpu_model=$(awk -F: '/^model name/ { sub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)
ms() { awk -v u="$1" 'BEGIN { printf "%.3f ms", u / 1000 }'; }

if [[ $TLS == 1 ]]; then echo "## wrk benchmark over HTTPS (TLS 1.3, keep-alive): meshd vs nginx vs HAProxy"; else echo "## wrk benchmark: meshd vs nginx vs HAProxy"; fi
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, Linux $(uname -r); $busy_before CPUs busy just before the run"
echo "- $meshd_version ($meshd_source), $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v | head -1 | cut -d' ' -f1-3), $({ wrk --version 2>&1 || true; } | head -1 | cut -d' ' -f1-2)"
echo "- parameters: TLS=$TLS WORKERS=$WORKERS DURATION=$DURATION WARMUP=$WARMUP CONNECTIONS=\"$CONNECTIONS\" THREADS=$THREADS REPEAT=$REPEAT PIN=$PIN$(
    if [[ $PIN == 1 ]]; then echo " (proxy on CPU $PROXY_CPUS, wrk and upstreams on CPU $LOAD_CPUS)"; fi)"
echo "- each row is the median of $REPEAT runs by req/s; CPU µs/req is the proxy process's utime+stime over requests served"
echo
echo "| proxy | workers | conns | req/s | p50 | p99 | CPU µs/req |"
echo "|---|---:|---:|---:|---:|---:|---:|"
declare -A median_cpu
split=()
for conns in $CONNECTIONS; do
    for proxy in $PROXIES; do
        label=$proxy
        if [[ $proxy == direct ]]; then label="direct (no proxy)"; fi
        if [[ -n ${skipped[$proxy]:-} ]]; then
            echo "| $label | $WORKERS | $conns | skipped: ${skipped[$proxy]} | | | |"
            status=2
            continue
        fi
        row=$(awk -v p="$proxy" -v c="$conns" '$1 == p && $2 == c' "$results" | sort -k4,4n |
            awk '{ r[NR] = $0 } END { print r[int(NR / 2) + 1] }')
        read -r _ _ _ rps p50 p99 cpu_us errors status_errors user_us sys_us _ <<<"$row"
        note=""
        if ((errors + status_errors > 0)); then note=" (errors: $errors, non-2xx: $status_errors)"; fi
        echo "| $label | $WORKERS | $conns | $rps$note | $(ms "$p50") | $(ms "$p99") | $cpu_us |"
        median_cpu[$proxy/$conns]=$cpu_us
        split+=("$label, $conns conns: $user_us user + $sys_us sys")
    done
done
echo
if [[ " $PROXIES " == *" direct "* ]]; then
    echo "The direct row's CPU column is the echo upstream's own CPU per request (no proxy in the path)."
    echo
fi
read -r bg_median bg_max steal_max <<<"$(awk '{ print $12, $13 }' "$results" | sort -n | awk '
    { b[NR] = $1; if ($1 > bmax) bmax = $1; if ($2 > smax) smax = $2 }
    END { printf "%.2f %.2f %.2f", b[int(NR / 2) + 1], bmax, smax }')"
echo "Other processes used a median $bg_median CPUs (max $bg_max) during the measured runs; hypervisor steal at most $steal_max CPUs.$(
    if awk -v b="$bg_max" 'BEGIN { exit !(b > 0.1) }'; then echo " The machine was not idle: treat the numbers with care."; fi)"
echo
if ((${#split[@]})); then
    echo "CPU µs/req split into user and kernel time (same runs):"
    echo
    printf -- '- %s\n' "${split[@]}"
    echo
fi
for conns in $CONNECTIONS; do
    m=${median_cpu[meshd/$conns]:-}
    for peer in nginx haproxy; do
        p=${median_cpu[$peer/$conns]:-}
        if [[ -n $m && -n $p ]]; then
            awk -v m="$m" -v p="$p" -v peer="$peer" -v c="$conns" \
                'BEGIN { printf "meshd CPU/request ÷ %s CPU/request (%s conns): %.2f (%s µs vs %s µs)\n", peer, c, m / p, m, p }'
        fi
    done
done
for conns in $CONNECTIONS; do
    m=$(awk -v p=meshd -v c="$conns" '$1 == p && $2 == c { print $4 }' "$results" | sort -n | awk '{ r[NR] = $1 } END { if (NR) print r[int(NR / 2) + 1] }')
    best=0
    for peer in nginx haproxy; do
        p=$(awk -v p="$peer" -v c="$conns" '$1 == p && $2 == c { print $4 }' "$results" | sort -n | awk '{ r[NR] = $1 } END { if (NR) print r[int(NR / 2) + 1] }')
        if [[ -n $p ]] && ((p > best)); then best=$p; fi
    done
    if [[ -n $m ]] && ((best > 0)); then
        awk -v m="$m" -v b="$best" -v c="$conns" -v w="$WORKERS" \
            'BEGIN { printf "meshd req/s ÷ the better of nginx and HAProxy (%s conns, %s workers): %.2f\n", c, w, m / b }'
    fi
done
if [[ -s $instr_report ]]; then
    echo
    echo "Instructions per request (perf stat, $SYSCALL_DURATION of wrk -c ${CONNECTIONS%% *}):"
    echo
    cat "$instr_report"
fi
if [[ -s $syscall_report ]]; then
    echo
    echo "Syscalls per request (strace -c -f on the proxy, $SYSCALL_DURATION of wrk -c ${CONNECTIONS%% *}; strace slows the proxy, so only the counts mean anything):"
    echo
    cat "$syscall_report"
fi
echo
echo "Commands (\$TMP is the script's temp dir; the configs it writes there are in benches/lib.sh, write_configs):"
echo
echo '```'
printf '%s\n' "${commands[@]}" | sed "s|$tmp|\$TMP|g"
echo '```'
exit "$status"

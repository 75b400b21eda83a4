#!/usr/bin/env bash
# benches/h2.sh: HTTP/2 (h2c, prior knowledge) proxy benchmark on loopback.
#
# h2load opens CONNECTIONS cleartext HTTP/2 connections (prior knowledge, no
# Upgrade) with STREAMS concurrent streams each and sends `GET /` with
# `:authority: echo.default.svc.cluster.local` through each proxy, which
# forwards over HTTP/1.1 keep-alive to two `meshd echo` upstreams (round
# robin). Proxies compared, configured alike (routing, x-forwarded-*,
# request id, upstream keep-alive as in benches/wrk.sh), one worker each:
# meshd (`run --workers 1`), nginx (`listen ... http2`, worker_processes 1),
# HAProxy (`bind ... proto h2`, nbthread 1). The load saturates the proxy.
# For every proxy it reports requests/s and the proxy process's CPU time per
# request (utime+stime from /proc/PID/stat before and after the measured
# run, divided by the requests h2load completed), median of REPEAT runs with
# the proxies alternating. There is no "direct" row: `meshd echo` speaks
# HTTP/1.1 only.
#
# The report (Markdown) goes to stdout, progress to stderr:
#   benches/h2.sh > h2-report.md
#
# Parameters (environment):
#   DURATION=10s       measured h2load run (-D), per proxy and repetition
#   WARMUP=2s          unmeasured h2load run just before each measured one
#   CONNECTIONS=64     h2load -c
#   STREAMS=10         h2load -m (concurrent streams per connection)
#   THREADS=1          h2load -t
#   REPEAT=3           repetitions; the table shows the median run by req/s
#   PROXIES="meshd nginx haproxy"   proxies, in the order they alternate
#   PIN=1              taskset pinning (0 disables; off by itself below 2 CPUs)
#   PROXY_CPUS=0       CPUs of the proxy under test
#   LOAD_CPUS=1        CPUs of h2load and the echo upstreams
#   PORT_BASE=18301    ports PORT_BASE..PORT_BASE+30 on 127.0.0.1 must be free
#   MESHD_BIN=path     meshd binary to use; when unset, the script runs
#                      `cargo build --release` and uses target/release/meshd
#
# Exit status: 0 when every proxy answered 200 over h2c and h2load saw no
# failures, 2 when a proxy was skipped or a run had failures (the table is
# printed anyway).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
STREAMS=${STREAMS:-10}
THREADS=${THREADS:-1}
REPEAT=${REPEAT:-3}
PROXIES=${PROXIES:-meshd nginx haproxy}
PIN=${PIN:-1}
PROXY_CPUS=${PROXY_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
PORT_BASE=${PORT_BASE:-18301}

HOST_HEADER=echo.default.svc.cluster.local
ECHO1_PORT=$PORT_BASE
ECHO2_PORT=$((PORT_BASE + 1))
MESHD_PORT=$((PORT_BASE + 10))
MESHD_ADMIN_PORT=$((PORT_BASE + 11))
NGINX_PORT=$((PORT_BASE + 20))
HAPROXY_PORT=$((PORT_BASE + 30))

log() { printf '[h2.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup
# shellcheck source=benches/lib.sh
source "$here/lib.sh"
with_cleanup h2

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v h2load >/dev/null || need_pkgs+=(nghttp2-client)
command -v nginx >/dev/null || need_pkgs+=(nginx)
command -v haproxy >/dev/null || need_pkgs+=(haproxy)
command -v curl >/dev/null || need_pkgs+=(curl)
install_pkgs "${need_pkgs[@]}"

find_meshd

pin_cpus

clk_tck=$(getconf CLK_TCK)

# ---------------------------------------------------------------- helpers
# in benches/lib.sh: quote, start, port_in_use, wait_http, children,
# cpu_ticks, machine_ticks, children_ticks

# ---------------------------------------------------------------- configs
for port in "$ECHO1_PORT" "$ECHO2_PORT" "$MESHD_PORT" "$MESHD_ADMIN_PORT" "$NGINX_PORT" "$HAPROXY_PORT"; do
    if port_in_use "$port"; then die "127.0.0.1:$port is in use (set PORT_BASE)"; fi
done

mkdir -p "$tmp/meshd-config" "$tmp/nginx" "$tmp/haproxy"

# The same configurations as benches/wrk.sh, with an h2c listener: meshd
# takes HTTP/1.1 and h2c prior knowledge on the same port; nginx's
# `listen ... http2` without ssl is h2c prior knowledge only; HAProxy's
# `proto h2` likewise. Upstreams stay HTTP/1.1.
cat >"$tmp/meshd-config/echo.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [$HOST_HEADER]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: $ECHO1_PORT}}
  - {address: 127.0.0.1, ports: {http: $ECHO2_PORT}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: $HOST_HEADER
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
EOF

# keepalive_requests also bounds the requests of an HTTP/2 connection (nginx
# 1.19.7 on; it sends GOAWAY after 1000 by default): raised as in wrk.sh.
nginx_user=""
if [[ $(id -u) == 0 ]]; then nginx_user="user root root;"; fi
cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
$nginx_user
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream echo_up {
        server 127.0.0.1:$ECHO1_PORT;
        server 127.0.0.1:$ECHO2_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT http2 default_server;
        return 404;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT http2;
        server_name $HOST_HEADER;
        location / {
            proxy_pass http://echo_up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Request-ID \$request_id;
        }
    }
}
EOF

# HAProxy turns :authority into Host, so the hdr(host) ACL works for h2.
cat >"$tmp/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT proto h2
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Request-ID %[uuid()]
    use_backend echo if { hdr(host) -i $HOST_HEADER }
backend echo
    balance roundrobin
    server e1 127.0.0.1:$ECHO1_PORT
    server e2 127.0.0.1:$ECHO2_PORT
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
h2c=(--http2-prior-knowledge)
for proxy in $PROXIES; do
    case $proxy in
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
        wait_http nginx "$nginx_pid" "http://127.0.0.1:$NGINX_PORT/" "${h2c[@]}"
        pids[nginx]="$nginx_pid $(children "$nginx_pid" | tr '\n' ' ')"
        url[nginx]="http://127.0.0.1:$NGINX_PORT/"
        ;;
    haproxy)
        start haproxy "${pin_proxy[@]}" haproxy -db -f "$tmp/haproxy/haproxy.cfg"
        pids[haproxy]=$last_pid
        wait_http haproxy "$last_pid" "http://127.0.0.1:$HAPROXY_PORT/" "${h2c[@]}"
        url[haproxy]="http://127.0.0.1:$HAPROXY_PORT/"
        ;;
    *) die "unknown proxy '$proxy' in PROXIES (direct has no h2c upstream to hit)" ;;
    esac
done

# Every proxy must answer 200 over HTTP/2 (h2c prior knowledge) with the
# authority before it is measured (for another host meshd and nginx answer
# 404, HAProxy 503).
targets=()
for proxy in $PROXIES; do
    read -r code version <<<"$(curl -s "${h2c[@]}" -o "$tmp/preflight-$proxy" -w '%{http_code} %{http_version}' \
        -H "Host: $HOST_HEADER" "${url[$proxy]}" || true)"
    if [[ $code == 200 && $version == 2 ]]; then
        targets+=("$proxy")
    else
        skipped[$proxy]="answered HTTP/${version:-?} $code over h2c for :authority $HOST_HEADER"
        log "skipping $proxy: ${skipped[$proxy]}"
    fi
done

# ---------------------------------------------------------------- measure
h2load_cmd() { # h2load_cmd DURATION URL: the command line, as an array in $h2l
    h2l=("${pin_load[@]}" h2load -c "$CONNECTIONS" -m "$STREAMS" -t "$THREADS" -D "$1"
        -H ":authority: $HOST_HEADER" "$2")
}

# One line per run: proxy rep rps requests cpu_us/req user_us sys_us failed
# non2xx mean_request_time background_cpus steal_cpus load_side_busy_percent.
results=$tmp/results
: >"$results"
status=0
shown=0
log "$((REPEAT * ${#targets[@]})) runs of $WARMUP + $DURATION each"

for ((rep = 1; rep <= REPEAT; rep++)); do
    for proxy in "${targets[@]}"; do
        h2load_cmd "$WARMUP" "${url[$proxy]}"
        "${h2l[@]}" >/dev/null
        h2load_cmd "$DURATION" "${url[$proxy]}"
        if ((shown < ${#targets[@]})); then
            commands+=("$(quote "${h2l[@]}")")
            shown=$((shown + 1))
        fi
        # shellcheck disable=SC2086  # pids is a list
        read -r user0 sys0 <<<"$(cpu_ticks ${pids[$proxy]})"
        read -r mach0 steal0 <<<"$(machine_ticks)"
        read -r up_u0 up_s0 <<<"$(cpu_ticks "$echo1_pid" "$echo2_pid")"
        children_ticks
        load0=$child_ticks
        "${h2l[@]}" >"$tmp/h2load.out" 2>&1 || true
        children_ticks
        load1=$child_ticks
        read -r up_u1 up_s1 <<<"$(cpu_ticks "$echo1_pid" "$echo2_pid")"
        read -r mach1 steal1 <<<"$(machine_ticks)"
        # shellcheck disable=SC2086
        read -r user1 sys1 <<<"$(cpu_ticks ${pids[$proxy]})"
        cp "$tmp/h2load.out" "$tmp/h2load-$proxy-$rep.out"
        # "finished in 10.00s, 51234.50 req/s, 6.00MB/s"
        # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
        # "status codes: N 2xx, N 3xx, N 4xx, N 5xx"
        # "time for request:   min   max   mean   sd   +/- sd"
        read -r secs done_n _ failed non2xx mean_req <<<"$(awk '
            /^finished in/ { s = $3; sub(/s,$/, "", s) }
            /^requests:/ { d = $6; ok = $8; bad = $10 + $12 + $14 }
            /^status codes:/ { n = $5 + $7 + $9 }
            /^time for request:/ { m = $6 }
            END { printf "%s %d %d %d %d %s\n", s == "" ? 0 : s, d, ok, bad, n, m == "" ? "-" : m }' "$tmp/h2load.out")"
        if ((done_n == 0)); then
            cat "$tmp/h2load.out" >&2
            log "rep $rep $proxy: h2load completed no request"
        fi
        read -r rps cpu_us user_us sys_us <<<"$(awk -v u=$((user1 - user0)) -v s=$((sys1 - sys0)) \
            -v hz="$clk_tck" -v n="$done_n" -v d="$secs" 'BEGIN {
                k = n > 0 ? 1e6 / hz / n : 0
                printf "%.0f %.2f %.2f %.2f", (d > 0 ? n / d : 0), (u + s) * k, u * k, s * k }')"
        ours=$((up_u1 + up_s1 - up_u0 - up_s0 + load1 - load0 + user1 + sys1 - user0 - sys0))
        read -r bg steal <<<"$(awk -v m=$((mach1 - mach0 - ours)) -v st=$((steal1 - steal0)) \
            -v hz="$clk_tck" -v d="$secs" 'BEGIN {
                if (m < 0) m = 0
                if (d <= 0) d = 1
                printf "%.2f %.2f", m / hz / d, st / hz / d }')"
        load_busy=$(awk -v t=$((up_u1 + up_s1 - up_u0 - up_s0 + load1 - load0)) -v hz="$clk_tck" -v d="$secs" \
            'BEGIN { printf "%.0f", (d > 0 ? t / hz / d * 100 : 0) }')
        echo "$proxy $rep $rps $done_n $cpu_us $user_us $sys_us $failed $non2xx $mean_req $bg $steal $load_busy" >>"$results"
        log "rep $rep  $proxy  $rps req/s  CPU ${cpu_us} us/req (user $user_us, sys $sys_us)" \
            " failed $failed  non-2xx $non2xx  mean $mean_req  load side ${load_busy} %  background ${bg} CPUs, steal ${steal}"
        if ((failed + non2xx > 0 || done_n == 0)); then status=2; fi
    done
done

# ---------------------------------------------------------------- report
cpu_model=$(awk -F: '/^model name/ { sub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)

echo "## h2load benchmark (HTTP/2 h2c prior knowledge downstream, HTTP/1.1 upstream): meshd vs nginx vs HAProxy"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, Linux $(uname -r); $busy_before CPUs busy just before the run"
echo "- $meshd_version ($meshd_source), $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(h2load --version 2>&1 | head -1)"
echo "- parameters: DURATION=$DURATION WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS STREAMS=$STREAMS THREADS=$THREADS REPEAT=$REPEAT PIN=$PIN$(
    if [[ $PIN == 1 ]]; then echo " (proxy on CPU $PROXY_CPUS, h2load and upstreams on CPU $LOAD_CPUS)"; fi)"
echo "- one worker per proxy; each row is the median of $REPEAT runs by req/s; CPU µs/req is the proxy process's utime+stime over requests completed; proxy CPU busy = req/s × CPU µs/req (near 100 % the proxy is the bottleneck); load side CPU busy = h2load + both upstreams (with PIN=1 they share CPU $LOAD_CPUS: near 100 % per CPU there, they are the bottleneck)"
echo
echo "| proxy | conns × streams | req/s | CPU µs/req | user + sys µs/req | proxy CPU busy | load side CPU busy | mean request time | failed / non-2xx |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
declare -A median_cpu median_rps
for proxy in $PROXIES; do
    if [[ -n ${skipped[$proxy]:-} ]]; then
        echo "| $proxy | $CONNECTIONS × $STREAMS | skipped: ${skipped[$proxy]} | | | | | | |"
        status=2
        continue
    fi
    row=$(awk -v p="$proxy" '$1 == p' "$results" | sort -k3,3n |
        awk '{ r[NR] = $0 } END { if (NR) print r[int(NR / 2) + 1] }')
    [[ -n $row ]] || continue
    read -r _ _ rps _ cpu_us user_us sys_us failed non2xx mean_req _ _ load_busy <<<"$row"
    busy=$(awk -v r="$rps" -v c="$cpu_us" 'BEGIN { printf "%.0f %%", r * c / 1e4 }')
    echo "| $proxy | $CONNECTIONS × $STREAMS | $rps | $cpu_us | $user_us + $sys_us | $busy | $load_busy % | $mean_req | $failed / $non2xx |"
    median_cpu[$proxy]=$cpu_us
    median_rps[$proxy]=$rps
done
echo
read -r bg_median bg_max steal_max <<<"$(awk '{ print $11, $12 }' "$results" | sort -n | awk '
    { b[NR] = $1; if ($1 > bmax) bmax = $1; if ($2 > smax) smax = $2 }
    END { printf "%.2f %.2f %.2f", b[int(NR / 2) + 1], bmax, smax }')"
echo "Other processes used a median $bg_median CPUs (max $bg_max) during the measured runs; hypervisor steal at most $steal_max CPUs.$(
    if awk -v b="$bg_max" 'BEGIN { exit !(b > 0.1) }'; then echo " The machine was not idle: treat the numbers with care."; fi)"
echo
echo "Per repetition (req/s, CPU µs/req):"
echo
for proxy in "${targets[@]}"; do
    echo "- $proxy: $(awk -v p="$proxy" '$1 == p { printf "%s%s req/s %s µs", sep, $3, $5; sep = "; " }' "$results")"
done
echo
m=${median_cpu[meshd]:-}
for peer in nginx haproxy; do
    p=${median_cpu[$peer]:-}
    if [[ -n $m && -n $p ]]; then
        awk -v m="$m" -v p="$p" -v peer="$peer" -v mr="${median_rps[meshd]}" -v pr="${median_rps[$peer]}" \
            'BEGIN { printf "meshd ÷ %s: CPU/request %.2f (%s µs vs %s µs), req/s %.2f\n", peer, m / p, m, p, mr / pr }'
    fi
done
echo
echo "Commands (\$TMP is the script's temp dir; the configs it writes there are in benches/h2.sh):"
echo
echo '```'
printf '%s\n' "${commands[@]}" | sed "s|$tmp|\$TMP|g"
echo '```'
exit "$status"

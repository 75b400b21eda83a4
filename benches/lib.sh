# benches/lib.sh: shell helpers shared by wrk.sh, latency.sh, h2.sh and
# (echo_service_entry, wait_http) wrk-outlier.sh, soak.sh and callgrind.sh.
# Sourced, not run. The caller defines `die`, `$tmp` (its temp dir),
# `$clk_tck` (getconf CLK_TCK) and the arrays `commands` and
# `started_pids`; `start` sets `$last_pid`. `log`, `die` and `$root` come
# from the caller too.
# shellcheck shell=bash disable=SC2154,SC2034  # $tmp, $clk_tck: set by the caller; $last_pid: read by it

# echo_service_entry HOST PORT...: a STATIC ServiceEntry `echo` for HOST
# (port 80, HTTP) with one 127.0.0.1 endpoint per PORT, as YAML on stdout.
echo_service_entry() {
    local host=$1 port
    shift
    printf 'apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: echo, namespace: default}\n'
    printf 'spec:\n  hosts: [%s]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints:\n' "$host"
    for port in "$@"; do
        printf '  - {address: 127.0.0.1, ports: {http: %s}}\n' "$port"
    done
}

# with_cleanup NAME: makes the temp dir $tmp and the list started_pids, and
# on exit (or INT, TERM) stops every PID in it and removes $tmp.
with_cleanup() {
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/meshd-$1.XXXXXX")
    started_pids=()
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# shellcheck disable=SC2317  # called from the trap
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317  # called from the trap
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${started_pids[@]}"; do
        stop_pid "$pid"
    done
    rm -rf "$tmp"
    exit "$rc"
}
# install_pkgs PKG...: apt-get installs the Debian packages named (none: nothing).
install_pkgs() {
    (($#)) || return 0
    local sudo=()
    if [[ $(id -u) != 0 ]]; then sudo=(sudo); fi
    log "installing $*"
    "${sudo[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >&2
}

# find_meshd: sets $meshd (MESHD_BIN, else `cargo build --release` in
# $root), $meshd_source (what it is) and $meshd_version.
find_meshd() {
    if [[ -n ${MESHD_BIN:-} ]]; then
        meshd=$MESHD_BIN
        meshd_source="binary $MESHD_BIN"
    else
        log "cargo build --release"
        (cd "$root" && cargo build --release >&2) || die "cargo build --release failed"
        meshd=${CARGO_TARGET_DIR:-$root/target}/release/meshd
        meshd_source="built from commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        if [[ -n $(git -C "$root" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
            meshd_source+=" with uncommitted changes"
        fi
    fi
    [[ -x $meshd ]] || die "no meshd binary at $meshd"
    meshd_version=$("$meshd" --version 2>&1 || true)
    [[ $meshd_version == meshd* ]] || die "$meshd --version printed '$meshd_version', not 'meshd X.Y.Z'"
}

# pin_cpus: with PIN=1 and two CPUs or more, sets the taskset prefixes
# pin_proxy (PROXY_CPUS) and pin_load (LOAD_CPUS); else PIN=0 and both empty.
pin_cpus() {
    pin_proxy=()
    pin_load=()
    if [[ $PIN == 1 ]] && (($(nproc) >= 2)); then
        pin_proxy=(taskset -c "$PROXY_CPUS")
        pin_load=(taskset -c "$LOAD_CPUS")
    else
        PIN=0
    fi
}

quote() { # quote ARG...: the words as one shell-pasteable line
    local a words=()
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then
            words+=("$a")
        elif [[ $a != *\'* ]]; then
            words+=("'$a'")
        else
            words+=("$(printf '%q' "$a")")
        fi
    done
    echo "${words[*]}"
}

# start NAME CMD...: starts CMD in the background, logs to $tmp/NAME.log.
start() {
    local name=$1
    shift
    commands+=("$(quote "$@")")
    "$@" >"$tmp/$name.log" 2>&1 &
    started_pids+=("$!")
    last_pid=$!
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_http NAME PID URL [CURL_OPTION...]: waits up to 15 s for URL to
# answer (any status; give -f to wait for a 2xx).
wait_http() {
    local name=$1 pid=$2 url=$3 i
    shift 3
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || { cat "$tmp/$name.log" >&2; die "$name exited"; }
        if curl -s "$@" -o /dev/null --max-time 1 "$url"; then return 0; fi
        sleep 0.1
    done
    cat "$tmp/$name.log" >&2
    die "$name did not answer on $url"
}

# children PID: the PIDs whose parent is PID.
children() {
    local stat rest
    local -a f
    for stat in /proc/[0-9]*/stat; do
        { read -r rest <"$stat"; } 2>/dev/null || continue
        rest=${rest##*) }
        read -r -a f <<<"$rest"
        if [[ ${f[1]} == "$1" ]]; then
            stat=${stat#/proc/}
            echo "${stat%/stat}"
        fi
    done
}

# cpu_ticks PID...: "utime stime" (all threads) summed over the PIDs, in ticks.
cpu_ticks() {
    local user=0 sys=0 pid rest
    local -a f
    for pid in "$@"; do
        rest=$(<"/proc/$pid/stat")
        rest=${rest##*) }  # fields from 3 (state) on; utime is 14, stime 15
        read -r -a f <<<"$rest"
        user=$((user + f[11]))
        sys=$((sys + f[12]))
    done
    echo "$user $sys"
}

# machine_ticks: busy ticks of the whole machine (user, nice, system, irq,
# softirq: a process's stime also holds the softirq work done in its
# context), then steal ticks.
machine_ticks() {
    local _cpu u n s irq sirq st
    read -r _cpu u n s _ _ irq sirq st _ </proc/stat
    echo "$((u + n + s + irq + sirq)) $st"
}

# children_ticks: sets $child_ticks to the user+system ticks of this shell's
# finished children (the load tool). Not to be called in $(...): a subshell's `times`
# does not see its parent's children.
children_ticks() {
    times >"$tmp/times"
    child_ticks=$(awk -v hz="$clk_tck" 'NR == 2 {
        split($1, u, /[ms]/); split($2, s, /[ms]/)
        printf "%.0f\n", ((u[1] + s[1]) * 60 + u[2] + s[2]) * hz }' "$tmp/times")
}


# write_configs: checks the ports are free, then writes the configurations
# of the proxies under test, alike (routing by Host, forwarding headers, a
# request id, upstream keep-alive, no logging, ${WORKERS:-1} workers):
# $tmp/meshd-config/echo.yaml, $tmp/nginx/nginx.conf, $tmp/haproxy/haproxy.cfg.
write_configs() {
    for port in "$ECHO1_PORT" "$ECHO2_PORT" "$MESHD_PORT" "$MESHD_ADMIN_PORT" "$NGINX_PORT" "$HAPROXY_PORT"; do
        if port_in_use "$port"; then die "127.0.0.1:$port is in use (set PORT_BASE)"; fi
    done

    mkdir -p "$tmp/meshd-config" "$tmp/nginx" "$tmp/haproxy"

    # TLS=1: every proxy terminates TLS on its port with the same
    # self-signed certificate (meshd through a Gateway HTTPS server on
    # $MESHD_TLS_PORT), TLS 1.3 only; the upstreams stay plain.
    scheme=http
    if [[ ${TLS:-0} == 1 ]]; then
        scheme=https
        mkdir -p "$tmp/tls"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -keyout "$tmp/tls/key.pem" -out "$tmp/tls/cert.pem" -subj "/CN=$HOST_HEADER" \
            -addext "subjectAltName=DNS:$HOST_HEADER" 2>/dev/null || die "openssl could not make a certificate"
        cat "$tmp/tls/cert.pem" "$tmp/tls/key.pem" >"$tmp/tls/combined.pem"
        cat >"$tmp/meshd-config/gateway.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bench}
spec:
  servers:
  - port: {number: $MESHD_TLS_PORT, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, serverCertificate: $tmp/tls/cert.pem, privateKey: $tmp/tls/key.pem, minProtocolVersion: TLSV1_3}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench}
spec:
  hosts: [$HOST_HEADER]
  gateways: [bench]
  http:
  - route: [{destination: {host: $HOST_HEADER}}]
EOF
    fi
    nginx_tls="" haproxy_tls=""
    if [[ $scheme == https ]]; then
        nginx_tls=" ssl;
        ssl_certificate $tmp/tls/cert.pem;
        ssl_certificate_key $tmp/tls/key.pem;
        ssl_protocols TLSv1.3"
        haproxy_tls=" ssl crt $tmp/tls/combined.pem ssl-min-ver TLSv1.3"
    fi

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

    # nginx: like meshd, routes by Host, adds x-forwarded-for/-proto and a request
    # id, keeps upstream connections alive and never closes a client connection
    # after N requests (nginx's default keepalive_requests is 1000).
    nginx_user=""
    if [[ $(id -u) == 0 ]]; then nginx_user="user root root;"; fi
    cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes ${WORKERS:-1};
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
        listen 127.0.0.1:$NGINX_PORT default_server$nginx_tls;
        return 404;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT$nginx_tls;
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

    # HAProxy: the same, in one thread, no logging, no health checks.
    cat >"$tmp/haproxy/haproxy.cfg" <<EOF
global
    nbthread ${WORKERS:-1}
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
    bind 127.0.0.1:$HAPROXY_PORT$haproxy_tls
    option forwardfor
    http-request set-header X-Forwarded-Proto $scheme
    http-request set-header X-Request-ID %[uuid()]
    use_backend echo if { hdr(host) -i $HOST_HEADER }
backend echo
    balance roundrobin
    server e1 127.0.0.1:$ECHO1_PORT
    server e2 127.0.0.1:$ECHO2_PORT
EOF
}

# measure_busy: sets $busy_before, the CPUs other processes used in one
# second, and warns when the machine is not idle.
measure_busy() {
    read -r mach0 _ <<<"$(machine_ticks)"
    sleep 1
    read -r mach1 _ <<<"$(machine_ticks)"
    busy_before=$(awk -v t=$((mach1 - mach0)) -v hz="$clk_tck" 'BEGIN { printf "%.2f", t / hz }')
    if awk -v b="$busy_before" 'BEGIN { exit !(b > 0.1) }'; then
        log "warning: other processes used $busy_before CPUs in the second before the run; results will be noisy"
    fi
}

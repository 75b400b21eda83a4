#!/usr/bin/env bash
# benches/footprint.sh: memory, start-up and reload costs of meshd.
#
# What it measures (meshd run --workers 1, everything on 127.0.0.1):
#   - idle RSS (VmRSS from /proc/PID/status, SETTLE after /ready is 200)
#     with config/demo, and with a generated configuration of SERVICES
#     services (benches/gen-services.sh: by default 1,000 ServiceEntries
#     with 10,000 endpoints, 1,000 DestinationRules, 1,000 VirtualServices);
#   - RSS per idle downstream keep-alive connection: a python3 client opens
#     CONNS connections, each sends one HTTP/1.1 keep-alive GET to service 0
#     (routed to a real `meshd echo` upstream) and reads the whole response,
#     then holds them idle: (RSS after − RSS before) / CONNS; then one more
#     request must still get 200;
#   - start: ms from exec of `meshd run` to the first 200 from /ready
#     (polled every 0.2 ms), median of STARTS, with config/demo and with
#     the generated configuration;
#   - reload of the generated configuration, median of RELOADS: a rewritten
#     file is renamed into the watched directory and the script waits for
#     meshd's "configuration applied" log line; the time shown excludes
#     meshd's fixed 100 ms debounce. Two kinds: the VirtualServices change
#     (weights 90/10 ↔ 80/20, every cluster kept) and the ServiceEntries
#     change (all endpoints move to other ports). When meshd logs the
#     phases (load_ms, compile_ms, apply_ms) they are shown as well;
#   - reload under load: wrk at saturation through meshd to service 0 (two
#     `meshd echo` upstreams) for DURATION without reloads, then DURATION
#     while the VirtualServices file is rewritten every RELOAD_EVERY seconds
#     (alternating 90/10 and 80/20, so no reload is skipped as unchanged):
#     req/s of both, the drop, wrk's non-2xx + socket errors (must be 0) and
#     the reloads applied (meshd_config_reloads_total{result="applied"}),
#     and the CPUs meshd used in each run. The rewrites come from one
#     python process (helper.py flip), not a cp/mv/sleep loop: forking
#     three processes every 100 ms cost ~0.06 CPUs, more than the drop
#     this row is meant to see.
#
# The report (Markdown) goes to stdout, progress to stderr:
#   benches/footprint.sh > footprint-report.md
#   CONNS=1000 STARTS=3 RELOADS=3 DURATION=3s benches/footprint.sh   # quick look
#
# Parameters (environment):
#   MESHD_BIN=path      meshd binary; when unset the script runs
#                       `cargo build --release` and uses target/release/meshd
#   SERVICES=1000       services in the generated configuration
#   ENDPOINTS=10        endpoints per service
#   CONNS=10000         idle downstream connections
#   HOLD_CONCURRENCY=32 connections the client opens at a time (it bounds
#                       the upstream connections meshd opens meanwhile)
#   STARTS=5            starts per configuration
#   RELOADS=5           reloads of each kind
#   DURATION=10s        each wrk run of the reload-under-load test (seconds)
#   WARMUP=2s           unmeasured wrk run before them (seconds)
#   CONNECTIONS=64      wrk connections
#   THREADS=1           wrk threads
#   RELOAD_EVERY=0.1    seconds between rewrites under load
#   SETTLE=1            seconds to wait before reading an RSS
#   PIN=1               meshd on PROXY_CPUS, wrk, upstreams and the python
#                       client on LOAD_CPUS (0 disables; off below 2 CPUs)
#   PROXY_CPUS=0 LOAD_CPUS=1
#   PORT_BASE=18351     ports PORT_BASE..PORT_BASE+11 on 127.0.0.1 must be
#                       free (endpoints of services 1.. use 20000..29999 on
#                       127.0.0.1 and are never dialled)
#
# Needs python3 (stdlib only), curl and wrk (installed with apt-get when
# missing). Raises `ulimit -n` to CONNS + 4096 (the hard limit too, as root).
# On exit, even on Ctrl-C, it stops every process it started and removes
# its temp dir.
#
# Exit status: 0 when every check passed (all CONNS connections answered 200
# and stayed open, the request after them got 200, both wrk runs had no
# errors, reloads applied), 2 otherwise (the report is printed anyway).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

SERVICES=${SERVICES:-1000}
ENDPOINTS=${ENDPOINTS:-10}
CONNS=${CONNS:-10000}
HOLD_CONCURRENCY=${HOLD_CONCURRENCY:-32}
STARTS=${STARTS:-5}
RELOADS=${RELOADS:-5}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
RELOAD_EVERY=${RELOAD_EVERY:-0.1}
SETTLE=${SETTLE:-1}
PIN=${PIN:-1}
PROXY_CPUS=${PROXY_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
PORT_BASE=${PORT_BASE:-18351}

ECHO1_PORT=$PORT_BASE
ECHO2_PORT=$((PORT_BASE + 1))
LISTEN_PORT=$((PORT_BASE + 10))
ADMIN_PORT=$((PORT_BASE + 11))
NAMESPACE=bench
HOST=svc-0.$NAMESPACE.svc.cluster.local
DEBOUNCE_MS=100   # src/server/mod.rs DEBOUNCE: every reload waits this long first

log() { printf '[footprint.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $DURATION =~ ^[1-9][0-9]*s$ && $WARMUP =~ ^[1-9][0-9]*s$ ]] || die "DURATION and WARMUP are whole seconds, like 10s"

# ---------------------------------------------------------------- cleanup
# shellcheck source=benches/lib.sh
source "$here/lib.sh"
with_cleanup footprint

# ---------------------------------------------------------------- tools
command -v python3 >/dev/null || die "python3 is needed"
need_pkgs=()
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v curl >/dev/null || need_pkgs+=(curl)
install_pkgs "${need_pkgs[@]}"

find_meshd
wrk_version=$({ wrk -v 2>&1 || true; } | head -1 | cut -d' ' -f1-2)

pin_cpus
proxy_cpus=-
if [[ $PIN == 1 ]]; then proxy_cpus=$PROXY_CPUS; fi

# Every process (meshd, the python client) holds CONNS sockets plus a few.
want_fds=$((CONNS + 4096))
if (($(ulimit -n) < want_fds)); then
    if (($(ulimit -Hn) < want_fds)); then ulimit -Hn "$want_fds" 2>/dev/null || true; fi
    ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
(($(ulimit -n) >= CONNS + 64)) || die "ulimit -n is $(ulimit -n), too low for CONNS=$CONNS (lower CONNS or raise the hard limit)"
clk_tck=$(getconf CLK_TCK)

# ---------------------------------------------------------------- helpers
commands=()   # what was run, for the report
# quote (the words as one shell-pasteable line): benches/lib.sh
note_cmd() { commands+=("$(quote "$@")"); }

# start NAME CMD...: starts CMD in the background, output to $tmp/NAME.log;
# sets $last_pid.
start() {
    local name=$1
    shift
    note_cmd "$@"
    "$@" >"$tmp/$name.log" 2>&1 &
    last_pid=$!
    started_pids+=("$last_pid")
}

# forget PID: stops PID and drops it from the cleanup list.
forget() {
    local pid=$1 p keep=()
    stop_pid "$pid"
    for p in "${started_pids[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    started_pids=("${keep[@]}")
}


# wait_http NAME PID URL [CURL_OPTION...]: waits up to 60 s for URL (give -f
# to wait for a 2xx).
wait_http() {
    local name=$1 pid=$2 url=$3 i
    shift 3
    for ((i = 0; i < 6000; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$tmp/$name.log" >&2; die "$name exited"; }
        if curl -s "$@" -o /dev/null --max-time 1 "$url"; then return 0; fi
        sleep 0.01
    done
    tail -20 "$tmp/$name.log" >&2
    die "$name did not answer on $url"
}

# status_kb PID FIELD: a field of /proc/PID/status, in kB.
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1024 }'; }
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

# median / range over the numbers on stdin ("failed" lines are dropped).
median() { grep -E '^[0-9.]+$' | sort -n | awk '{ v[NR] = $1 } END { if (!NR) { print "n/a"; exit }
    print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { grep -E '^[0-9.]+$' | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR) printf "%s–%s", lo, hi; else print "n/a" }'; }

# metric NAME{LABELS}: a value from the admin's Prometheus page (which is
# several MB with 1,000 services: only read between measurements).
metric() {
    { curl -s --max-time 30 "http://127.0.0.1:$ADMIN_PORT/stats/prometheus" || true; } |
        awk -v m="$1" 'index($0, m " ") == 1 { print $2; found = 1; exit } END { if (!found) print 0 }'
}

# cpu_ticks PID...: utime+stime (all threads) summed over the PIDs, in ticks.
cpu_ticks() {
    local total=0 pid rest
    local -a f
    for pid in "$@"; do
        rest=$(<"/proc/$pid/stat")
        rest=${rest##*) }
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
machine_ticks() {
    local _cpu u n s irq sirq
    read -r _cpu u n s _ _ irq sirq _ </proc/stat
    echo "$((u + n + s + irq + sirq))"
}
# children_ticks: sets $child_ticks to the CPU ticks of this shell's reaped
# children (wrk); not in $(...), where `times` sees the subshell's.
children_ticks() {
    times >"$tmp/times"
    child_ticks=$(awk -v hz="$clk_tck" 'NR == 2 {
        split($1, u, /[ms]/); split($2, s, /[ms]/)
        printf "%.0f\n", ((u[1] + s[1]) * 60 + u[2] + s[2]) * hz }' "$tmp/times")
}

# ---------------------------------------------------------------- configs
for port in "$ECHO1_PORT" "$ECHO2_PORT" "$LISTEN_PORT" "$ADMIN_PORT"; do
    if port_in_use "$port"; then die "127.0.0.1:$port is in use (set PORT_BASE)"; fi
done
[[ -d $root/config/demo ]] || die "no config/demo in $root"

cat >"$tmp/helper.py" <<'EOF'
"""benches/footprint.sh's client side (python3 stdlib only).

  start PORT CPUS TIMEOUT ARGV...   ms from exec of ARGV to the first 200
                                    from http://127.0.0.1:PORT/ready (CPUS:
                                    the child's affinity, or -); then SIGTERM
  hold PORT HOST N CONCURRENCY OUT  N keep-alive connections, one GET each
                                    (response read whole), then held idle;
                                    writes "open ok failed" to OUT; on
                                    SIGUSR1 appends "alive N" and exits
  reload LOG SRC DST TIMEOUT        os.replace(SRC, DST), then waits for the
                                    next "configuration applied" line of the
                                    JSON log LOG; prints the ms in between,
                                    the version, and load/compile/apply ms
                                    when meshd logs them (else -)
  flip A B DST EVERY COUNT          until killed: writes A's then B's
                                    bytes (alternating) to DST.tmp and
                                    renames it to DST every EVERY seconds,
                                    keeping the number of renames in COUNT
"""
import asyncio, json, os, signal, socket, subprocess, sys, time


def ready(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def start(port, cpus, timeout, argv):
    affinity = {int(c) for c in cpus.split(",")} if cpus != "-" else None
    pre = (lambda: os.sched_setaffinity(0, affinity)) if affinity else None
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pre)
    ms = None
    try:
        while True:
            if ready(port):
                ms = (time.monotonic() - t0) * 1000
                break
            if p.poll() is not None or time.monotonic() - t0 > timeout:
                break
            time.sleep(0.0002)
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    print("%.1f" % ms if ms is not None else "failed")


async def one(port, request, sem, conns, stats):
    async with sem:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            stats["ok" if head.startswith(b"HTTP/1.1 200") else "failed"] += 1
            conns.append((reader, writer))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            stats["failed"] += 1


async def hold(port, host, n, concurrency, out):
    request = ("GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: footprint-hold\r\n\r\n" % host).encode()
    sem = asyncio.Semaphore(concurrency)
    conns, stats = [], {"ok": 0, "failed": 0}
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, done.set)
    await asyncio.gather(*(one(port, request, sem, conns, stats) for _ in range(n)))
    with open(out + ".tmp", "w") as f:
        f.write("%d %d %d\n" % (len(conns), stats["ok"], stats["failed"]))
    os.replace(out + ".tmp", out)
    await done.wait()
    await asyncio.sleep(0.05)   # let the loop see any EOF that arrived
    alive = sum(1 for r, w in conns if not r.at_eof() and not w.is_closing())
    with open(out, "a") as f:
        f.write("alive %d\n" % alive)
    for _, w in conns:
        w.close()


def applied(path):
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            if '"configuration applied"' in line:
                try:
                    out.append(json.loads(line[line.index("{"):]))
                except ValueError:
                    out.append({})
    return out


def reload(log, src, dst, timeout):
    before = len(applied(log))
    t0 = time.monotonic()
    os.replace(src, dst)
    while time.monotonic() - t0 < timeout:
        lines = applied(log)
        if len(lines) > before:
            ms = (time.monotonic() - t0) * 1000
            fields = lines[before].get("fields", {})
            phases = [fields.get(k) for k in ("load_ms", "compile_ms", "apply_ms")]
            print("%.1f %s %s" % (ms, fields.get("version", "?"),
                                  " ".join("-" if v is None else str(v) for v in phases)))
            return
        time.sleep(0.001)
    print("failed")


def flip(a, b, dst, every, count):
    texts = [open(a, "rb").read(), open(b, "rb").read()]
    n = 0
    while True:
        with open(dst + ".tmp", "wb") as f:
            f.write(texts[(n + 1) % 2])
        os.replace(dst + ".tmp", dst)
        n += 1
        with open(count, "w") as f:
            f.write("%d\n" % n)
        time.sleep(every)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "start":
        start(int(args[0]), args[1], float(args[2]), args[3:])
    elif mode == "hold":
        asyncio.run(hold(int(args[0]), args[1], int(args[2]), int(args[3]), args[4]))
    elif mode == "reload":
        reload(args[0], args[1], args[2], float(args[3]))
    elif mode == "flip":
        flip(args[0], args[1], args[2], float(args[3]), args[4])
    else:
        sys.exit("unknown mode " + mode)
EOF

log "generating $SERVICES services × $ENDPOINTS endpoints in $tmp"
gen() { # gen DIR [VAR=VALUE...]
    local dir=$1
    shift
    env SERVICES="$SERVICES" ENDPOINTS="$ENDPOINTS" NAMESPACE="$NAMESPACE" \
        UPSTREAMS="$ECHO1_PORT $ECHO2_PORT" "$@" "$here/gen-services.sh" "$dir" 2>/dev/null
}
gen "$tmp/big"                                          # the configuration served
gen "$tmp/gen-w80" V1_WEIGHT=80                         # VirtualServices differ
gen "$tmp/gen-ports" DEAD_PORT_BASE=30000               # ServiceEntries differ
note_cmd env SERVICES="$SERVICES" ENDPOINTS="$ENDPOINTS" UPSTREAMS="$ECHO1_PORT $ECHO2_PORT" benches/gen-services.sh "$tmp/big"
note_cmd env SERVICES="$SERVICES" ENDPOINTS="$ENDPOINTS" UPSTREAMS="$ECHO1_PORT $ECHO2_PORT" V1_WEIGHT=80 benches/gen-services.sh "$tmp/gen-w80"
note_cmd env SERVICES="$SERVICES" ENDPOINTS="$ENDPOINTS" UPSTREAMS="$ECHO1_PORT $ECHO2_PORT" DEAD_PORT_BASE=30000 benches/gen-services.sh "$tmp/gen-ports"
mkdir -p "$tmp/variants"
cp "$tmp/big/virtual-services.yaml" "$tmp/variants/vs-a"
cp "$tmp/gen-w80/virtual-services.yaml" "$tmp/variants/vs-b"
cp "$tmp/big/service-entries.yaml" "$tmp/variants/se-a"
cp "$tmp/gen-ports/service-entries.yaml" "$tmp/variants/se-b"
for d in big gen-w80 gen-ports; do
    "$meshd" validate "$tmp/$d" >"$tmp/validate-$d.log" 2>&1 || { cat "$tmp/validate-$d.log" >&2; die "$d does not validate"; }
done
note_cmd "$meshd" validate "$tmp/big"
config_size=$(cat "$tmp/big"/*.yaml | wc -c)

read -r mach0 <<<"$(machine_ticks)"
sleep 1
read -r mach1 <<<"$(machine_ticks)"
busy_before=$(awk -v t=$((mach1 - mach0)) -v hz="$clk_tck" 'BEGIN { printf "%.2f", t / hz }')
if awk -v b="$busy_before" 'BEGIN { exit !(b > 0.1) }'; then
    log "warning: other processes used $busy_before CPUs in the second before the run; results will be noisy"
fi

status=0
fail() { log "check failed: $*"; problems+=("$*"); status=2; }
problems=()

# ---------------------------------------------------------------- upstreams
start echo1 "${pin_load[@]}" "$meshd" echo --listen "127.0.0.1:$ECHO1_PORT" --name v1
echo1_pid=$last_pid
start echo2 "${pin_load[@]}" "$meshd" echo --listen "127.0.0.1:$ECHO2_PORT" --name v2
echo2_pid=$last_pid
wait_http echo1 "$echo1_pid" "http://127.0.0.1:$ECHO1_PORT/"
wait_http echo2 "$echo2_pid" "http://127.0.0.1:$ECHO2_PORT/"

run_args() { # run_args CONFIG: meshd's arguments, the same for every run
    run=("$meshd" run --config "$1" --listen "127.0.0.1:$LISTEN_PORT" --admin "127.0.0.1:$ADMIN_PORT"
        --workers 1 --log-format json --log info)
}

# ---------------------------------------------------------------- idle RSS, demo
log "idle RSS with config/demo"
run_args "$root/config/demo"
start meshd-demo "${pin_proxy[@]}" "${run[@]}"
demo_pid=$last_pid
wait_http meshd-demo "$demo_pid" "http://127.0.0.1:$ADMIN_PORT/ready" -f
sleep "$SETTLE"
rss_demo=$(status_kb "$demo_pid" VmRSS) hwm_demo=$(status_kb "$demo_pid" VmHWM)
anon_demo=$(status_kb "$demo_pid" RssAnon) threads_demo=$(awk '$1 == "Threads:" { print $2 }' "/proc/$demo_pid/status")
forget "$demo_pid"

# ---------------------------------------------------------------- idle RSS, big
log "idle RSS with $SERVICES services"
run_args "$tmp/big"
start meshd "${pin_proxy[@]}" "${run[@]}"
meshd_pid=$last_pid
wait_http meshd "$meshd_pid" "http://127.0.0.1:$ADMIN_PORT/ready" -f
sleep "$SETTLE"
rss_big=$(status_kb "$meshd_pid" VmRSS) hwm_big=$(status_kb "$meshd_pid" VmHWM)
anon_big=$(status_kb "$meshd_pid" RssAnon)
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST" "http://127.0.0.1:$LISTEN_PORT/" || true)
[[ $code == 200 ]] || fail "GET / Host: $HOST answered $code before the connection test"

# ---------------------------------------------------------------- idle connections
# On the fresh process: no admin page has been built yet, so little freed
# memory is waiting in the allocator to absorb the connections' allocations.
log "$CONNS idle keep-alive connections"
sleep "$SETTLE"
rss_c0=$(status_kb "$meshd_pid" VmRSS) fds_c0=$(fds "$meshd_pid")
hold_cmd=("${pin_load[@]}" python3 "$tmp/helper.py" hold "$LISTEN_PORT" "$HOST" "$CONNS" "$HOLD_CONCURRENCY" "$tmp/hold.out")
note_cmd "${hold_cmd[@]}"
"${hold_cmd[@]}" 2>"$tmp/hold.log" &
hold_pid=$!
started_pids+=("$hold_pid")
t_hold=$SECONDS
until [[ -s $tmp/hold.out ]]; do
    kill -0 "$hold_pid" 2>/dev/null || { cat "$tmp/hold.log" >&2; die "the python client exited"; }
    ((SECONDS - t_hold < 300)) || die "the python client did not open $CONNS connections in 300 s"
    sleep 0.1
done
read -r held held_ok held_failed <"$tmp/hold.out"
hold_secs=$((SECONDS - t_hold))
sleep "$SETTLE"
rss_c1=$(status_kb "$meshd_pid" VmRSS) fds_c1=$(fds "$meshd_pid")
# (not meshd_downstream_connections_active: a scrape of the multi-MB
# Prometheus page would grow the RSS read next)
if command -v ss >/dev/null; then
    established=$(ss -Htn state established "( sport = :$LISTEN_PORT )" | wc -l)
else
    established="n/a (no ss)"
fi
after_code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST" "http://127.0.0.1:$LISTEN_PORT/" || true)
kill -USR1 "$hold_pid"
wait "$hold_pid" || true
forget "$hold_pid"
alive=$(awk '$1 == "alive" { print $2 }' "$tmp/hold.out")
sleep "$SETTLE"
rss_c2=$(status_kb "$meshd_pid" VmRSS)
per_conn=$(awk -v a="$rss_c1" -v b="$rss_c0" -v n="$held" 'BEGIN { if (n > 0) printf "%.2f", (a - b) / n; else print "n/a" }')
upstream_conns=$((fds_c1 - fds_c0 - held))
((held == CONNS && held_ok == CONNS)) || fail "$held of $CONNS connections open, $held_ok answered 200, $held_failed failed"
[[ ${alive:-0} == "$held" ]] || fail "only ${alive:-?} of $held connections were still open when released"
[[ $after_code == 200 ]] || fail "the request after the $CONNS connections answered $after_code"
log "  $held open ($held_ok × 200) in ${hold_secs}s; RSS $rss_c0 → $rss_c1 kB: $per_conn kB/connection; then HTTP $after_code"

# sizes of the admin pages (each scrape grows the RSS, so only now)
clusters=$(curl -s --max-time 30 "http://127.0.0.1:$ADMIN_PORT/stats/prometheus" | awk '/^envoy_cluster_membership_total/ { n++ } END { print n + 0 }')
prom_bytes=$(curl -s --max-time 30 "http://127.0.0.1:$ADMIN_PORT/stats/prometheus" | wc -c)
dump_bytes=$(curl -s --max-time 30 "http://127.0.0.1:$ADMIN_PORT/config_dump" | wc -c)

# ---------------------------------------------------------------- reload timing
# reload_series KIND FILE: renames the next variant of KIND (vs: virtual-services.yaml,
# se: service-entries.yaml) into the served directory, RELOADS times.
reload_series() {
    local kind=$1 file=$2 i variant out
    : >"$tmp/reload-$kind"
    for ((i = 1; i <= RELOADS; i++)); do
        if ((i % 2)); then variant=b; else variant=a; fi
        cp "$tmp/variants/$kind-$variant" "$tmp/next.yaml"
        out=$(python3 "$tmp/helper.py" reload "$tmp/meshd.log" "$tmp/next.yaml" "$tmp/big/$file" 60)
        [[ $out != failed ]] || { fail "reload $kind #$i: no 'configuration applied' within 60 s"; continue; }
        echo "$out" >>"$tmp/reload-$kind"
        log "  $kind #$i: $out (ms from rename to the log line, version, load/compile/apply ms)"
        sleep 0.5
    done
    # leave variant a in place
    if ((RELOADS % 2)); then
        cp "$tmp/variants/$kind-a" "$tmp/next.yaml"
        python3 "$tmp/helper.py" reload "$tmp/meshd.log" "$tmp/next.yaml" "$tmp/big/$file" 60 >/dev/null
        sleep 0.5
    fi
}
log "reload timing: $RELOADS × VirtualServices, $RELOADS × ServiceEntries"
applied_t0=$(metric 'meshd_config_reloads_total{result="applied"}')
sleep "$SETTLE"
rss_r0=$(status_kb "$meshd_pid" VmRSS)
reload_series vs virtual-services.yaml
reload_series se service-entries.yaml
sleep "$SETTLE"
rss_r=$(status_kb "$meshd_pid" VmRSS) hwm_r=$(status_kb "$meshd_pid" VmHWM)
applied_t1=$(metric 'meshd_config_reloads_total{result="applied"}')
dump_version=$(curl -s --max-time 30 "http://127.0.0.1:$ADMIN_PORT/config_dump" |
    python3 -c 'import json, sys; print(json.load(sys.stdin).get("version", "?"))' 2>/dev/null || echo "?")
log_version=$(grep '"configuration applied"' "$tmp/meshd.log" | tail -n 1 | sed -n 's/.*"version":\([0-9]*\).*/\1/p')
# col N of a series, minus the debounce for column 1
series() { awk -v c="$2" -v d="$DEBOUNCE_MS" '{ v = $c; if (v == "-") next; if (c == 1) v -= d; printf "%.1f\n", v }' "$tmp/reload-$1"; }
phases() { # phases KIND: "load / compile / apply ms (medians)" or "not logged"
    local l c a
    l=$(series "$1" 3 | median) c=$(series "$1" 4 | median) a=$(series "$1" 5 | median)
    if [[ $l == n/a ]]; then echo "not logged by this binary"; else echo "load $l, compile $c, apply $a ms"; fi
}
reload_vs=$(series vs 1 | median) reload_vs_range=$(series vs 1 | range)
reload_se=$(series se 1 | median) reload_se_range=$(series se 1 | range)
phases_vs=$(phases vs) phases_se=$(phases se)

# ---------------------------------------------------------------- reload under load
wrk_cmd() { wrk=("${pin_load[@]}" wrk -t "$THREADS" -c "$CONNECTIONS" -d "$1" -H "Host: $HOST" "http://127.0.0.1:$LISTEN_PORT/"); }
# wrk_run NAME: one measured wrk run (output in $tmp/wrk-NAME.out); sets
# w_rps, w_req, w_err (non-2xx + socket errors) and w_bg (CPUs used by
# everything but meshd, the upstreams and wrk during the run: other work on
# the machine and, under reloads, the script's own flipper) and w_cpu (CPUs
# meshd used: near 1 when its one worker is the bottleneck).
wrk_run() {
    local name=$1 m0 m1 o0 o1 p0 p1 w0 w1 out
    wrk_cmd "$DURATION"
    p0=$(cpu_ticks "$meshd_pid")
    o0=$(cpu_ticks "$meshd_pid" "$echo1_pid" "$echo2_pid")
    m0=$(machine_ticks)
    children_ticks
    w0=$child_ticks
    out=$("${wrk[@]}")
    children_ticks
    w1=$child_ticks
    m1=$(machine_ticks)
    o1=$(cpu_ticks "$meshd_pid" "$echo1_pid" "$echo2_pid")
    p1=$(cpu_ticks "$meshd_pid")
    echo "$out" >"$tmp/wrk-$name.out"
    w_rps=$(awk '/^Requests\/sec/ { printf "%.0f", $2 }' <<<"$out")
    w_req=$(awk '/requests in/ { print $1 }' <<<"$out")
    w_err=$(awk '/Non-2xx/ { n += $NF } /Socket errors/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$out")
    w_bg=$(awk -v m=$((m1 - m0 - (o1 - o0) - (w1 - w0))) -v hz="$clk_tck" -v d="${DURATION%s}" \
        'BEGIN { if (m < 0) m = 0; printf "%.2f", m / hz / d }')
    w_cpu=$(awk -v t=$((p1 - p0)) -v hz="$clk_tck" -v d="${DURATION%s}" 'BEGIN { printf "%.2f", t / hz / d }')
}
log "reload under load: wrk $WARMUP warm-up, $DURATION without reloads, $DURATION with a rewrite every ${RELOAD_EVERY}s"
wrk_cmd "$WARMUP"
"${wrk[@]}" >/dev/null
wrk_cmd "$DURATION"
note_cmd "${wrk[@]}"
wrk_run base
rps_base=$w_rps req_base=$w_req err_base=$w_err bg_base=$w_bg cpu_base=$w_cpu
log "  no reloads: $rps_base req/s, $err_base errors, meshd $cpu_base CPUs, background $bg_base CPUs"
applied_l0=$(metric 'meshd_config_reloads_total{result="applied"}')
unchanged_l0=$(metric 'meshd_config_reloads_total{result="unchanged"}')
rejected_l0=$(metric 'meshd_config_reloads_total{result="rejected"}')
echo 0 >"$tmp/flips"
"${pin_load[@]}" python3 "$tmp/helper.py" flip "$tmp/variants/vs-a" "$tmp/variants/vs-b" \
    "$tmp/big/virtual-services.yaml" "$RELOAD_EVERY" "$tmp/flips" &
flipper_pid=$!
started_pids+=("$flipper_pid")
note_cmd "${pin_load[@]}" python3 "$tmp/helper.py" flip vs-a vs-b "\$TMP/big/virtual-services.yaml" "$RELOAD_EVERY" "\$TMP/flips"
wrk_run reload
rps_reload=$w_rps req_reload=$w_req err_reload=$w_err bg_reload=$w_bg cpu_reload=$w_cpu
forget "$flipper_pid"
flips=$(<"$tmp/flips")
sleep 2   # the last reload finishes
applied_l1=$(metric 'meshd_config_reloads_total{result="applied"}')
unchanged_l1=$(metric 'meshd_config_reloads_total{result="unchanged"}')
rejected_l1=$(metric 'meshd_config_reloads_total{result="rejected"}')
applied_load=$((applied_l1 - applied_l0))
unchanged_load=$((unchanged_l1 - unchanged_l0))
rejected_load=$((rejected_l1 - rejected_l0))
log "  with reloads: $rps_reload req/s, $err_reload errors, $applied_load applied, $unchanged_load unchanged, $rejected_load rejected ($flips rewrites), meshd $cpu_reload CPUs, background $bg_reload CPUs"
drop=$(awk -v a="$rps_base" -v b="$rps_reload" 'BEGIN { if (a > 0) printf "%.1f", (a - b) * 100 / a; else print "n/a" }')
((err_base == 0)) || fail "wrk without reloads: $err_base non-2xx + socket errors"
((err_reload == 0)) || fail "wrk with reloads: $err_reload non-2xx + socket errors"
((applied_load > 0)) || fail "no reload applied under load"
((rejected_load == 0)) || fail "$rejected_load reloads rejected under load"
# meshd's own view: every request counted by istio_requests_total should be 200
non200=$(curl -s --max-time 30 "http://127.0.0.1:$ADMIN_PORT/stats/prometheus" |
    awk '/^istio_requests_total\{/ && !/response_code="200"/ { n += $NF } END { print n + 0 }')
((non200 == 0)) || fail "istio_requests_total counts $non200 non-200 responses"
rss_l=$(status_kb "$meshd_pid" VmRSS) hwm_l=$(status_kb "$meshd_pid" VmHWM)
grep -q '"level":"ERROR"' "$tmp/meshd.log" && fail "meshd logged errors (first: $(grep -m1 '"level":"ERROR"' "$tmp/meshd.log"))"
forget "$meshd_pid"

# ---------------------------------------------------------------- start time
log "start to /ready: $STARTS × config/demo, $STARTS × $SERVICES services (alternating)"
: >"$tmp/start-demo"
: >"$tmp/start-big"
for ((i = 1; i <= STARTS; i++)); do
    for which in demo big; do
        if [[ $which == demo ]]; then run_args "$root/config/demo"; else run_args "$tmp/big"; fi
        if ((i == 1)); then note_cmd "${pin_load[@]}" python3 "$tmp/helper.py" start "$ADMIN_PORT" "$proxy_cpus" 60 "${run[@]}"; fi
        "${pin_load[@]}" python3 "$tmp/helper.py" start "$ADMIN_PORT" "$proxy_cpus" 60 "${run[@]}" >>"$tmp/start-$which"
        log "  $which #$i: $(tail -1 "$tmp/start-$which") ms"
        for ((k = 0; k < 100; k++)); do port_in_use "$ADMIN_PORT" || break; sleep 0.05; done
    done
done
grep -q failed "$tmp/start-demo" "$tmp/start-big" && fail "a start did not reach /ready 200 within 60 s"
start_demo=$(median <"$tmp/start-demo") start_demo_range=$(range <"$tmp/start-demo")
start_big=$(median <"$tmp/start-big") start_big_range=$(range <"$tmp/start-big")

# ---------------------------------------------------------------- report
cpu_model=$(awk -F: '/^model name/ { sub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)
n_endpoints=$((SERVICES * ENDPOINTS))
echo "## meshd footprint: memory, start-up, reload"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, Linux $(uname -r); $busy_before CPUs busy just before the run"
echo "- $meshd_version ($meshd_source), $wrk_version, $(python3 --version 2>&1)"
echo "- meshd: \`run --workers 1 --log-format json\`$(if [[ $PIN == 1 ]]; then echo " on CPU $PROXY_CPUS; wrk, the two \`meshd echo\` upstreams and the python client on CPU $LOAD_CPUS"; else echo ", not pinned"; fi)"
echo "- generated configuration (benches/gen-services.sh): $SERVICES ServiceEntries with $n_endpoints endpoints, $SERVICES DestinationRules, $SERVICES VirtualServices, $((config_size / 1024)) KiB of YAML; $clusters clusters; /stats/prometheus $((prom_bytes / 1024)) KiB, /config_dump $((dump_bytes / 1024)) KiB"
echo "- parameters: CONNS=$CONNS HOLD_CONCURRENCY=$HOLD_CONCURRENCY STARTS=$STARTS RELOADS=$RELOADS DURATION=$DURATION WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS THREADS=$THREADS RELOAD_EVERY=$RELOAD_EVERY SETTLE=$SETTLE PIN=$PIN"
echo
echo "| measure | value |"
echo "|---|---:|"
echo "| RSS idle, config/demo | $(mb "$rss_demo") (anon $(mb "$anon_demo"), peak $(mb "$hwm_demo"), $threads_demo threads) |"
echo "| RSS idle, $SERVICES services / $n_endpoints endpoints | $(mb "$rss_big") (anon $(mb "$anon_big"), peak $(mb "$hwm_big")) |"
echo "| RSS with $held idle keep-alive connections | $(mb "$rss_c1") (from $(mb "$rss_c0")) |"
echo "| **RSS per idle downstream connection** | **$per_conn KB** |"
echo "| connections answered 200 / established at meshd's port (ss) / still open when released | $held_ok / $established / ${alive:-?} |"
echo "| upstream connections meshd opened meanwhile (fds) | $upstream_conns |"
echo "| RSS $SETTLE s after closing them | $(mb "$rss_c2") |"
echo "| a request with the connections held | HTTP $after_code |"
echo "| start to /ready 200, config/demo (median of $STARTS; range) | $start_demo ms ($start_demo_range) |"
echo "| start to /ready 200, $SERVICES services (median of $STARTS; range) | $start_big ms ($start_big_range) |"
echo "| reload, VirtualServices changed (median of $RELOADS; range) | $reload_vs ms ($reload_vs_range); $phases_vs |"
echo "| reload, ServiceEntries changed: every endpoint moves (median of $RELOADS; range) | $reload_se ms ($reload_se_range); $phases_se |"
echo "| RSS before → after those reloads | $(mb "$rss_r0") → $(mb "$rss_r") (peak $(mb "$hwm_r")) |"
echo "| wrk $DURATION, no reloads | $rps_base req/s ($req_base requests), $err_base non-2xx + socket errors; meshd used $cpu_base CPUs |"
echo "| wrk $DURATION, VirtualServices rewritten every ${RELOAD_EVERY}s | $rps_reload req/s ($req_reload requests), $err_reload non-2xx + socket errors; meshd used $cpu_reload CPUs |"
echo "| reloads during that run: applied / unchanged / rejected (rewrites) | $applied_load / $unchanged_load / $rejected_load ($flips) |"
echo "| **throughput drop under reloads** | **$drop %** |"
echo "| RSS after the reload-under-load run (and a few Prometheus scrapes) | $(mb "$rss_l") (peak $(mb "$hwm_l")) |"
echo
echo "How to read it:"
echo
echo "- RSS is VmRSS from /proc/PID/status, read $SETTLE s after /ready answered 200 (idle rows) or after the last connection got its answer; \"peak\" is VmHWM."
echo "- Per connection: (RSS with the connections − RSS just before) ÷ $held, on a meshd that had served one request and no admin page (freed memory kept by the allocator would absorb part of the connections' memory and bias the figure low); the client opened them $HOLD_CONCURRENCY at a time, so meshd also opened $upstream_conns upstream connections (pooled, kept), which are in the difference."
echo "- RSS shrinks little when the connections close or an old configuration is dropped: meshd uses the system allocator (glibc malloc), which keeps small freed blocks for reuse (meshd fixes its mmap threshold at 128 KiB, so large blocks do go back). Each reload holds the old and the new configuration for a moment, so a meshd that has reloaded sits above its idle RSS."
echo "- Start: from just before the python client forks and execs meshd to the first 200 from /ready (polled every 0.2 ms on a fresh connection)."
echo "- Reload: from the rename of a rewritten file into the watched directory to meshd's \"configuration applied\" log line (polled every 1 ms), minus meshd's fixed $DEBOUNCE_MS ms debounce: read, parse, validate, compile, reconcile clusters and swap. The admin pages grow with the configuration (here /stats/prometheus $((prom_bytes / 1024)) KiB, /config_dump $((dump_bytes / 1024)) KiB): polling them would load meshd and dominate the time, so the log line is used; the reloads counter ($((applied_t1 - applied_t0)) applied for the $((2 * RELOADS + 2 * (RELOADS % 2))) renames of that phase) and /config_dump's version ($dump_version; last logged: $log_version) agree with it."
echo "- Under load: the rewrites come every ${RELOAD_EVERY}s, but meshd runs one reload at a time after a ${DEBOUNCE_MS} ms debounce, so at most about one reload per ($DEBOUNCE_MS ms + reload time) applies; \"unchanged\" counts reloads that found the content they had last applied. A reload that finds meshd serving runs under SCHED_IDLE (src/server/background.rs): with the worker saturated it gets only the CPU the worker leaves, so fewer reloads apply than on an idle machine."
echo "- Other processes used $bg_base CPUs during the run without reloads and $bg_reload CPUs during the run with them (machine busy time minus meshd, the upstreams and wrk).$(
    if awk -v a="$bg_base" -v b="$bg_reload" -v c="$busy_before" 'BEGIN { exit !(a > 0.1 || b > 0.1 || c > 0.1) }'; then echo " The machine was not idle: treat the numbers with care."; fi)"
if ((${#problems[@]})); then
    echo
    echo "Checks that failed:"
    echo
    printf -- '- %s\n' "${problems[@]}"
fi
echo
echo "Commands (\$TMP is the script's temp dir):"
echo
echo '```'
printf '%s\n' "${commands[@]}" | sed "s|$tmp|\$TMP|g; s|$root/||g"
echo '```'
exit "$status"

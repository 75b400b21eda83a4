# benches/lib.sh: shell helpers shared by wrk.sh, latency.sh and h2.sh.
# Sourced, not run. The caller defines `die`, `$tmp` (its temp dir),
# `$clk_tck` (getconf CLK_TCK) and the arrays `commands` and
# `started_pids`; `start` sets `$last_pid`. `log`, `die` and `$root` come
# from the caller too.
# shellcheck shell=bash disable=SC2154,SC2034  # $tmp, $clk_tck: set by the caller; $last_pid: read by it

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


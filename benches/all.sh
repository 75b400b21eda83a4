#!/usr/bin/env bash
# benches/all.sh: every row of issue 4's table in one run, one script after
# the other on the same machine, with the same meshd binary.
#
#   benches/all.sh [OUT_DIR]      # default: target/bench-report
#
# Runs, in this order (each installs its own tools and stops what it
# started; see each script's header for what it measures):
#   1. wrk.sh                                   rows 1-2, 1 worker, 64 and 256 conns
#   2. WORKERS=2 CONNECTIONS=64 wrk.sh           row 2, 2 workers
#   3. latency.sh                               row 3 (oha, fixed rate)
#   4. footprint.sh                             rows 4-6
#   5. h2.sh                                    row 7, h2c (h2load)
#   6. TLS=1 CONNECTIONS=64 wrk.sh               row 7, HTTPS (TLS 1.3)
# Each report goes to OUT_DIR/NAME.md and, concatenated under one header
# (date, machine, commit, binary), to OUT_DIR/report.md, which is also
# printed. Takes ~30 minutes on 2 CPUs.
#
# Parameters (environment): MESHD_BIN (else `cargo build --release` once,
# and every script uses target/release/meshd); SKIP="latency h2" leaves
# scripts out (names: wrk wrk2 latency footprint h2 https). Any other variable is
# passed through to the scripts (REPEAT, DURATION, PIN, ...).
#
# Exit status: 0 when every script passed its own checks, 2 otherwise (the
# report is written anyway).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
out=${1:-$root/target/bench-report}
SKIP=${SKIP:-}

log() { printf '[all.sh] %s\n' "$*" >&2; }

mkdir -p "$out" || exit 1
if [[ -z ${MESHD_BIN:-} ]]; then
    log "building meshd (release)"
    (cd "$root" && cargo build --release --quiet) || { log "error: cargo build failed"; exit 1; }
    MESHD_BIN=$root/target/release/meshd
fi
export MESHD_BIN

# name | command (run from the project root)
runs=(
    "wrk|benches/wrk.sh"
    "wrk2|env WORKERS=2 CONNECTIONS=64 benches/wrk.sh"
    "latency|benches/latency.sh"
    "footprint|benches/footprint.sh"
    "h2|benches/h2.sh"
    "https|env TLS=1 CONNECTIONS=64 benches/wrk.sh"
)

status=0
summary=()
for entry in "${runs[@]}"; do
    name=${entry%%|*} cmd=${entry#*|}
    if [[ " $SKIP " == *" $name "* ]]; then
        summary+=("- $name: skipped (SKIP)")
        continue
    fi
    log "$name: $cmd"
    started=$SECONDS
    # shellcheck disable=SC2086  # cmd is a fixed word list from above
    (cd "$root" && $cmd) >"$out/$name.md" 2>"$out/$name.log"
    rc=$?
    ((rc == 0)) || status=2
    summary+=("- $name: \`$cmd\`, exit $rc, $((SECONDS - started)) s")
done

{
    echo "# meshd benchmarks: one run of benches/all.sh"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), Linux $(uname -r)"
    echo "- meshd: commit $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown), binary $MESHD_BIN"
    printf '%s\n' "${summary[@]}"
    for entry in "${runs[@]}"; do
        name=${entry%%|*}
        [[ -s $out/$name.md ]] || continue
        echo
        # Each report starts with its own "## ..." title.
        cat "$out/$name.md"
    done
} >"$out/report.md"
cat "$out/report.md"
log "report: $out/report.md (progress logs: $out/*.log)"
exit "$status"

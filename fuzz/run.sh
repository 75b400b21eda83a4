#!/usr/bin/env bash
# fuzz/run.sh: build the libFuzzer targets on the stable toolchain and run
# each for SECONDS (default 40: the short run in .ci/run).
#
# cargo-fuzz would ask for nightly only for its sanitizer flags; meshd
# forbids unsafe code, so AddressSanitizer adds nothing, and the coverage
# instrumentation libFuzzer needs (SanitizerCoverage) is reachable through
# stable `-C` flags. This script passes the flags `cargo fuzz build -s none`
# passes, with debug assertions and overflow checks on, and `--target` so
# that build scripts are not instrumented.
#
#   fuzz/run.sh                       # 40 s per target
#   fuzz/run.sh 1800                  # the long run (30 min per target)
#   TARGETS=config_loader fuzz/run.sh 600
#
# Corpora live in $FUZZ_DIR (default target/fuzz/corpus/NAME, kept between
# runs); config_loader is seeded with config/*.yaml and, when it sits beside
# the project, ../shared/corpus/istio. A crash leaves its input in
# $FUZZ_DIR/artifacts/NAME/ and fails the script; make it a regression test
# in tests/fuzz_props.rs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
SECONDS_PER_TARGET=${1:-40}
TARGETS=${TARGETS:-config_loader route_matcher outlier_detector}
FUZZ_DIR=${FUZZ_DIR:-$root/target/fuzz}
triple=$(rustc -vV | awk '/^host:/ {print $2}')

export CARGO_TARGET_DIR=$FUZZ_DIR/build
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cdebug-assertions -Coverflow-checks"
(cd "$here" && cargo build --locked --release --bins --target "$triple")

seeds=$FUZZ_DIR/corpus/config_loader
mkdir -p "$seeds"
find "$root/config" "$root/../shared/corpus/istio" -name '*.yaml' 2>/dev/null |
    while read -r file; do cp "$file" "$seeds/seed-$(sha1sum <"$file" | cut -c1-16).yaml"; done

status=0
for name in $TARGETS; do
    corpus=$FUZZ_DIR/corpus/$name
    artifacts=$FUZZ_DIR/artifacts/$name
    mkdir -p "$corpus" "$artifacts"
    echo "fuzz: $name for ${SECONDS_PER_TARGET}s" >&2
    if "$CARGO_TARGET_DIR/$triple/release/$name" "$corpus" \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 \
        >"$FUZZ_DIR/$name.log" 2>&1; then
        runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$FUZZ_DIR/$name.log")
        echo "fuzz: $name clean: $runs inputs, corpus $(ls "$corpus" | wc -l) files" >&2
    else
        echo "fuzz: $name FAILED; input in $artifacts; log:" >&2
        tail -40 "$FUZZ_DIR/$name.log" >&2
        status=1
    fi
done
exit $status

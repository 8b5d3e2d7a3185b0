#!/bin/sh
# Runs every fuzz target (fuzz/fuzz_targets, libFuzzer through
# libfuzzer-sys) for a fixed budget, starting from the committed seeds in
# fuzz/corpus/<target>/, and fails on a crash, a panic, a slow input
# (-timeout), an allocation over -malloc_limit_mb or a process over
# -rss_limit_mb.
#
#   tests/fuzz.sh                 # 20 s per target, 3 targets: about 60 s
#   FUZZ_SECS=300 tests/fuzz.sh   # longer, by hand
#
# Builds the targets as `cargo fuzz build` does (cargo-fuzz 0.13's
# RUSTFLAGS: SanitizerCoverage, AddressSanitizer, --cfg fuzzing, debug
# assertions and so overflow checks; release with line tables, one codegen
# unit), with plain cargo, so that a fresh machine need not build cargo-fuzz
# first. libFuzzer needs unstable compiler flags;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. A failing input is
# saved in fuzz/artifacts/<target>/ and replayed by running the target's
# binary (target/fuzz/<host triple>/release/<target>) on that file, or with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>` where cargo-fuzz is
# installed.
set -eu
cd "$(dirname "$0")/../fuzz"
secs=${FUZZ_SECS:-20}
# Build output and the inputs found stay under the repository's target/.
out=../target/fuzz
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTC_BOOTSTRAP=1
RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cllvm-args=-sanitizer-coverage-stack-depth \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
--cfg fuzzing -Zsanitizer=address -Ccodegen-units=1 -Cdebug-assertions" \
    cargo build --manifest-path Cargo.toml --target "$triple" --release \
    --config 'profile.release.debug="line-tables-only"' \
    --bins --target-dir "$out"
export ASAN_OPTIONS=detect_odr_violation=0
for src in fuzz_targets/*.rs; do
    target=$(basename "$src" .rs)
    # New inputs go to a scratch directory; the committed seeds stay as
    # they are.
    work=$out/corpus/$target
    mkdir -p "$work" "artifacts/$target"
    echo "fuzz: $target for ${secs} s"
    "$out/$triple/release/$target" -artifact_prefix="artifacts/$target/" \
        "$work" "corpus/$target" \
        -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=1024 -malloc_limit_mb=8 \
        -print_final_stats=1
done
echo "fuzz: all targets ran ${secs} s each without a crash, timeout or OOM"

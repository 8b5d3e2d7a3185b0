#!/bin/sh
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for a fixed budget,
# starting from the committed seeds in fuzz/corpus/<target>/, and fails on a
# crash, a panic, a slow input (-timeout), an allocation over
# -malloc_limit_mb or a process over -rss_limit_mb.
#
#   tests/fuzz.sh                 # 20 s per target, 3 targets: about 60 s
#   FUZZ_SECS=300 tests/fuzz.sh   # longer, by hand
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). libFuzzer needs
# unstable compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. A failing input is saved in fuzz/artifacts/<target>/ and can
# be replayed with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`.
set -eu
cd "$(dirname "$0")/../fuzz"
secs=${FUZZ_SECS:-20}
# Build output and the inputs found stay under the repository's target/.
out=../target/fuzz
export RUSTC_BOOTSTRAP=1
cargo fuzz build --target-dir "$out"
for target in $(cargo fuzz list); do
    # New inputs go to a scratch directory; the committed seeds stay as
    # they are.
    work=$out/corpus/$target
    mkdir -p "$work"
    echo "fuzz: $target for ${secs} s"
    cargo fuzz run --target-dir "$out" "$target" "$work" "corpus/$target" -- \
        -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=1024 -malloc_limit_mb=8 \
        -print_final_stats=1
done
echo "fuzz: all targets ran ${secs} s each without a crash, timeout or OOM"

#!/bin/sh
# The whole test suite, as CI runs it (as root: some tests make device nodes
# and mount filesystems, others boot QEMU guests). tests/install-deps.sh
# first on a fresh machine. docs/testing.md says which command runs what.
set -eu
cd "$(dirname "$0")/.."
start=$(date +%s)
# Each section's heading says when it began, so a run's log shows where the
# time goes.
section() { echo "== $* (at $(($(date +%s) - start)) s)"; }

section "format and lints"
cargo fmt --check
cargo clippy --all-targets -- -D warnings

section "static musl binaries"
# Each as rust-target-cpu:what file(1) calls that machine. x86_64 links as
# static-pie, aarch64 as a plain static executable (the Rust targets'
# defaults).
for arch in x86_64:x86-64 aarch64:'ARM aarch64'; do
    bin=target/${arch%%:*}-unknown-linux-musl/release/vport-bootargs
    cargo build --release --target "${arch%%:*}-unknown-linux-musl"
    what=$(file -b "$bin")
    case $what in
        *"${arch#*:}"*) ;;
        *) echo "$bin is not ${arch#*:}: $what" >&2; exit 1 ;;
    esac
    if ! echo "$what" | grep -q 'statically linked\|static-pie linked'; then
        echo "$bin is not static: $what" >&2
        exit 1
    fi
    echo "$bin: $(stat -c %s "$bin") bytes, static"
done

section "tests: unit, fake trees, send, hostile input (plain cargo test)"
cargo test

# #[ignore]d in plain `cargo test` because they need root.
section "fake-tree tests that need root (mknod, tmpfs mounts, chown)"
cargo test --test fetch --test hostile --test barrier -- --ignored

section "an earlier build of the helper against the framed message"
cargo test --test framing -- --ignored

# The suites that boot guests are #[ignore]d, so that a contributor's
# `cargo test` stays quick and needs no QEMU; here they run, and a guest
# that cannot boot fails its test.
section "QEMU guests with the real virtio_console driver (x86_64)"
cargo test --test vm -- --ignored

section "Debian image with the package and its unit"
cargo test --test image -- --ignored

section "arm64: the package, and the scenarios in QEMU aarch64 guests"
cargo test --test package_arm64 -- --ignored
cargo test --test vm_arm64 -- --ignored
cat target/vm-aarch64/report.txt

section "libvirt: the image as CloudStack's KVM agent runs it"
# The tests start libvirtd themselves and boot their domains side by side in
# one shared run; two test threads are enough to wait on it.
cargo test --test libvirt -- --ignored --test-threads=2

section "current CloudStack under libvirt: only the guest agent's channel"
cargo test --test libvirt_qga -- --ignored
cargo test --test libvirt_send -- --ignored

section "fuzzing"
tests/fuzz.sh
section "all suites passed"

#!/bin/sh
# The whole test suite, as CI runs it (as root: the tests make device nodes,
# mount filesystems and boot QEMU guests). tests/install-deps.sh first on a
# fresh machine.
set -eu
cd "$(dirname "$0")/.."

echo "== format and lints"
cargo fmt --check
cargo clippy --all-targets -- -D warnings

echo "== static musl binary"
cargo build --release --target x86_64-unknown-linux-musl
bin=target/x86_64-unknown-linux-musl/release/vport-bootargs
if ! file "$bin" | grep -q 'statically linked\|static-pie linked'; then
    echo "$bin is not static: $(file "$bin")" >&2
    exit 1
fi
echo "$bin: $(stat -c %s "$bin") bytes, static"

echo "== tests: unit, fake trees, send, hostile input, QEMU guests, Debian image"
cargo test

echo "== libvirt: the image as CloudStack's KVM agent runs it"
# The tests start libvirtd themselves and boot their domains side by side in
# one shared run; two test threads are enough to wait on it.
cargo test --test libvirt -- --ignored --test-threads=2

echo "== fuzzing"
tests/fuzz.sh

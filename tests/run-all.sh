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

echo "== tests: unit, fake trees, send, hostile input (plain cargo test)"
cargo test

echo "== an earlier build of the helper against the framed message"
cargo test --test framing -- --ignored

# The suites that boot guests are #[ignore]d, so that a contributor's
# `cargo test` stays quick and needs no QEMU; here they run, and a guest
# that cannot boot fails its test.
echo "== QEMU guests with the real virtio_console driver (x86_64)"
cargo test --test vm -- --ignored

echo "== Debian image with the package and its unit"
cargo test --test image -- --ignored

echo "== fuzzing"
tests/fuzz.sh

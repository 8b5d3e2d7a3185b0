#!/bin/sh
# Installs, on a fresh Debian bookworm machine (as root), everything the
# test suite (tests/run-all.sh) needs. Safe to run again.
set -eu

apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    ca-certificates build-essential file git dash util-linux \
    qemu-system-x86 busybox-static cpio strace \
    mmdebstrap e2fsprogs debhelper dpkg-dev fakeroot lintian systemd \
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients

rustup component add rustfmt clippy
rustup target add x86_64-unknown-linux-musl
# cargo-fuzz for tests/fuzz.sh (built from crates.io; kept across runs).
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

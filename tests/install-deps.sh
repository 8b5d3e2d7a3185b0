#!/bin/sh
# Installs, on a fresh Debian bookworm machine (as root), everything the
# test suite (tests/run-all.sh) needs. Safe to run again.
set -eu

# arm64 packages (Debian's arm64 kernel, busybox-static:arm64) are fetched
# with apt-get download for the arm64 VM tests; none is installed.
dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
apt-get update -q
# qemu-system-arm has qemu-system-aarch64; binutils-aarch64-linux-gnu is
# what debhelper strips the arm64 package's binary with; xz-utils and zstd
# unpack the guest kernel (tests/vm/pvh-kernel.sh).
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    ca-certificates build-essential file git dash util-linux \
    qemu-system-x86 qemu-system-arm busybox-static cpio strace \
    mmdebstrap e2fsprogs debhelper dpkg-dev fakeroot lintian systemd \
    binutils-aarch64-linux-gnu xz-utils zstd \
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients

rustup component add rustfmt clippy
rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl

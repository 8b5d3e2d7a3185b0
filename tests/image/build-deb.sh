#!/bin/sh
# Builds the Debian package from this checkout and prints the .deb's path.
#
#   tests/image/build-deb.sh [--host-arch ARCH] [OUT_DIR]   (default: target/image)
#
# ARCH is a Debian architecture the package is built for (amd64 or arm64;
# default: this machine's). Another architecture than this machine's is a
# cross build (dpkg-buildpackage --host-arch): cargo builds the static
# binary for that architecture's musl target (rustup target add
# <cpu>-unknown-linux-musl), and debhelper strips it with the cross
# binutils (binutils-<gnu-type>, e.g. binutils-aarch64-linux-gnu).
#
# dpkg-buildpackage writes its results next to the source tree, so it builds
# a copy of the tracked (and new, not ignored) files under OUT_DIR/src
# (OUT_DIR/src-ARCH for a cross build). Its cargo build tree is this
# checkout's target/ (CARGO_TARGET_DIR overrides it): the crates it depends
# on are then built once, for `cargo build --release --target ...` and the
# tests as for the package, and only this crate is compiled again (its
# source is at another path). On a fresh machine that is most of the
# package build's time. The unit tests run in
# `cargo test` already, so the package build skips them (nocheck).
set -eu
die() { echo "build-deb: $*" >&2; exit 1; }

build_arch=$(dpkg-architecture -qDEB_BUILD_ARCH)
arch=$build_arch
if [ "${1:-}" = --host-arch ]; then
    [ $# -ge 2 ] || die "--host-arch needs an architecture, e.g. arm64"
    arch=$2
    shift 2
fi
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mkdir -p "${1:-$repo/target/image}" && cd "${1:-$repo/target/image}" && pwd)
version=$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Version)

cross=
tag=
if [ "$arch" != "$build_arch" ]; then
    cross="--host-arch $arch"
    tag=-$arch
    gnu_type=$(dpkg-architecture -a"$arch" -qDEB_HOST_GNU_TYPE 2>/dev/null) ||
        die "unknown Debian architecture $arch"
    command -v "$gnu_type-strip" >/dev/null ||
        die "$gnu_type-strip is missing (apt-get install binutils-$gnu_type)"
fi
rust_target=$(dpkg-architecture -a"$arch" -qDEB_HOST_GNU_CPU 2>/dev/null)-unknown-linux-musl
rustup target list --installed 2>/dev/null | grep -qx "$rust_target" ||
    die "rust target $rust_target is missing (rustup target add $rust_target)"

src=$out/src$tag/vport-bootargs-$version
log=$out/dpkg-buildpackage$tag.log
rm -rf "$out/src$tag"
mkdir -p "$src"
cd "$repo"
git ls-files -z --cached --others --exclude-standard |
    tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null |
    tar -xf - -C "$src"

cd "$src"
# shellcheck disable=SC2086 # $cross is empty or two words
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target} DEB_BUILD_OPTIONS="nocheck ${DEB_BUILD_OPTIONS:-}" \
    dpkg-buildpackage -us -uc -b $cross >"$log" 2>&1 || {
    tail -n 40 "$log" >&2
    die "dpkg-buildpackage failed; full log: $log"
}
deb=$out/src$tag/vport-bootargs_${version}_$arch.deb
test -f "$deb"
echo "$deb"

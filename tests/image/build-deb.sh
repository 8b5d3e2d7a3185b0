#!/bin/sh
# Builds the Debian package from this checkout and prints the .deb's path.
#
#   tests/image/build-deb.sh [OUT_DIR]      (default: target/image)
#
# dpkg-buildpackage writes its results next to the source tree, so it builds
# a copy of the tracked (and new, not ignored) files under OUT_DIR/src; the
# cargo build tree OUT_DIR/cargo is kept between runs. The unit tests run in
# `cargo test` already, so the package build skips them (nocheck).
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mkdir -p "${1:-$repo/target/image}" && cd "${1:-$repo/target/image}" && pwd)
version=$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Version)
src=$out/src/vport-bootargs-$version

rm -rf "$out/src"
mkdir -p "$src"
cd "$repo"
git ls-files -z --cached --others --exclude-standard |
    tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null |
    tar -xf - -C "$src"

cd "$src"
CARGO_TARGET_DIR=$out/cargo DEB_BUILD_OPTIONS="nocheck ${DEB_BUILD_OPTIONS:-}" \
    dpkg-buildpackage -us -uc -b >"$out/dpkg-buildpackage.log" 2>&1 || {
    tail -n 40 "$out/dpkg-buildpackage.log" >&2
    echo "build-deb: dpkg-buildpackage failed; full log: $out/dpkg-buildpackage.log" >&2
    exit 1
}
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb=$out/src/vport-bootargs_${version}_$arch.deb
test -f "$deb"
echo "$deb"

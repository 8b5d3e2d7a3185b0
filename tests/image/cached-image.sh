#!/bin/sh
# Prints the directory of the test image for this .deb, building it first
# if it is not cached yet:
#
#   tests/image/cached-image.sh DEB [OUT_DIR]     (default: target/image)
#
# The cache key is the sha256 of the .deb (reproducible: dpkg-buildpackage
# clamps file times to the changelog date) and of the image recipe
# (build-image.sh, guest/, ../vm/pvh-kernel.sh). One image is kept: older ones are removed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
deb=$(realpath "$1")
out=$(mkdir -p "${2:-$here/../../target/image}" && cd "${2:-$here/../../target/image}" && pwd)

key=$(cd "$here" && sha256sum "$deb" build-image.sh guest/* ../vm/pvh-kernel.sh | sed 's| .*/| |' | sha256sum | cut -c1-16)
dir=$out/image-$key
if [ -f "$dir/complete" ]; then
    echo "cached-image: using $dir" >&2
else
    rm -rf "$out"/image-*
    echo "cached-image: building $dir (log: $out/build-image.log)" >&2
    if ! "$here/build-image.sh" "$deb" "$dir" >"$out/build-image.log" 2>&1; then
        tail -n 30 "$out/build-image.log" >&2
        echo "cached-image: building the image failed; full log: $out/build-image.log" >&2
        exit 1
    fi
    touch "$dir/complete"
fi
echo "$dir"

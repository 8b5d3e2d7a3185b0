#!/bin/sh
# The demo: on a Debian bookworm machine, as root (no sudo needed), from a
# checkout:
#
#   tests/image/demo.sh
#
# installs what it needs (apt packages; the Rust toolchain must be rustup's),
# builds the Debian package, builds a Debian bookworm system VM image with it
# installed, boots that image once under QEMU with the two virtio-serial
# channels a CloudStack system VM has, sends sample boot parameters with
# `vport-bootargs send --wait-ack`, and prints what the guest stored.
# Everything goes under target/image/ (the image is cached there).
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=$repo/target/image
demo=$out/demo
vm=s-1-VM

say() { printf '\n== %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "demo: run as root (mmdebstrap builds the image tree as root)" >&2
    exit 77
fi
# rustup puts cargo and itself in ~/.cargo/bin, which a root shell that did
# not source ~/.cargo/env (or sudo, which resets PATH) does not have.
if { ! command -v cargo || ! command -v rustup; } >/dev/null && [ -x "$HOME/.cargo/bin/rustup" ]; then
    PATH=$HOME/.cargo/bin:$PATH
fi
if ! command -v cargo >/dev/null || ! command -v rustup >/dev/null; then
    echo "demo: no cargo or rustup for root; install Rust with rustup (https://rustup.rs) as root, then run again" >&2
    exit 69
fi

say "1/5 installing the tools (apt-get, rustup target)"
pkgs="build-essential debhelper dpkg-dev lintian mmdebstrap e2fsprogs qemu-system-x86 git ca-certificates"
# shellcheck disable=SC2086
missing=$(dpkg-query -W -f '${db:Status-Status} ${Package}\n' $pkgs 2>&1 | grep -v '^installed ' || true)
if [ -n "$missing" ]; then
    apt-get update -q
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs
fi
rustup target add "$(uname -m)-unknown-linux-musl"

say "2/5 building the Debian package (dpkg-buildpackage -us -uc -b)"
deb=$("$repo/tests/image/build-deb.sh" "$out")
echo "$deb"
lintian --fail-on error,warning "$deb" && echo "lintian: no errors, no warnings"

say "3/5 building a Debian bookworm image with it (mmdebstrap, mke2fs -d; cached)"
images=$("$repo/tests/image/cached-image.sh" "$deb" "$out")
echo "$images"

say "4/5 booting it under QEMU (TCG) and sending sample parameters"
rm -rf "$demo"
mkdir -p "$demo"
sockets=$(mktemp -d /tmp/vport-demo.XXXXXX)
trap 'rm -rf "$sockets"' EXIT
cp --sparse=always "$images/image.raw" "$demo/disk.raw"
echo "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZtLXRlc3Qta2V5LWZvci12cG9ydC1ib290YXJncw demo@host" \
    >"$demo/id_rsa.pub.cloud"
# The guest powers itself off 5 s after it has reported.
IMAGE_CHECK_LINGER=5 "$repo/tests/image/run-vm.sh" "$images" "$demo/disk.raw" "$sockets" "$vm" \
    >"$demo/console.log" 2>&1 &
qemu=$!
echo "console: $demo/console.log"
# The binary the package build made (static, runs on the host too). As
# CloudStack's agent would, send starts before the guest is up and stays
# connected until the guest acknowledges.
bin=$out/cargo/$(uname -m)-unknown-linux-musl/release/vport-bootargs
cmdline="template=domP%type=secstorage%host=10.1.1.1%port=8250%name=$vm%zone=1%pod=1%guid=$vm%eth0ip=169.254.3.4%eth0mask=255.255.0.0"
echo "+ vport-bootargs send --socket $sockets/$vm.agent -p '$cmdline' --pubkey-file $demo/id_rsa.pub.cloud --wait-ack 180"
"$bin" send --socket "$sockets/$vm.agent" -p "$cmdline" \
    --pubkey-file "$demo/id_rsa.pub.cloud" --wait-ack 180 || {
    kill "$qemu" 2>/dev/null || true
    echo "demo: send failed; console: $demo/console.log" >&2
    exit 1
}
i=0
while kill -0 "$qemu" 2>/dev/null && [ $i -lt 240 ]; do
    sleep 1
    i=$((i + 1))
done
kill "$qemu" 2>/dev/null || true
wait "$qemu" 2>/dev/null || true

say "5/5 what the guest stored (from its serial console)"
facts=$(sed -n 's/\r$//; s/^@@ //p' "$demo/console.log")
[ -n "$facts" ] || {
    echo "demo: the guest reported nothing; console: $demo/console.log" >&2
    exit 1
}
unit=$(echo "$facts" | grep '^unit vport-bootargs.service ')
echo "vport-bootargs.service:$(for k in ActiveState SubState Result; do
    echo "$unit" | grep -o " $k=[^ ]*"
done | tr -d '\n')"
echo "$facts" | grep '^file ' | while read -r _ path mode owner data; do
    if [ "$mode" = missing ]; then
        echo "$path: missing"
    else
        printf '%s (%s %s):\n    %s\n' "$path" "$mode" "$owner" "$(echo "$data" | base64 -d)"
    fi
done
echo "vport-bootargs show --format env, in the guest:"
echo "$facts" | sed -n 's/^show /    /p'
echo "its log (journal and console):"
echo "$facts" | sed -n 's/^journal /    /p'

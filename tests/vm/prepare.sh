#!/bin/sh
# Prepares what the VM tests boot, for one guest architecture:
#
#   tests/vm/prepare.sh [x86_64|aarch64]      (default x86_64)
#
# x86_64 is for tests/vm.rs, under $CARGO_TARGET_DIR/vm (default target/vm);
# aarch64 for tests/vm_arm64.rs, under $CARGO_TARGET_DIR/vm-aarch64:
#   vmlinuz, modules/    Debian bookworm's kernel and its virtio modules,
#                        from linux-image-amd64 or linux-image-arm64
#                        (downloaded and unpacked, never installed);
#   vmlinux              (x86_64) that kernel uncompressed, which QEMU
#                        boots at its PVH entry (pvh-kernel.sh);
#   initramfs.gz         busybox-static (the arm64 one downloaded the same
#                        way), those modules, the static musl build of
#                        vport-bootargs for that architecture and
#                        tests/vm/init;
#   manifest             key=value lines the harness reads.
# Run it again at will: the kernel is kept while the package stays the same,
# the binary is rebuilt by cargo when the source changed, and the initramfs
# is rebuilt when anything in it changed.
# Host packages it needs are installed when missing (as root): qemu-system-x86
# or qemu-system-arm, busybox-static, cpio (and dpkg, apt, gzip, which Debian
# has); for aarch64 also dpkg's arm64 architecture, for apt-get download.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
case $target in /*) ;; *) target=$repo/$target ;; esac
arch=${1:-x86_64}
# Load order: each module's depends= must come before it (checked below).
case $arch in
    x86_64)
        out=$target/vm
        debarch=amd64
        qemu=qemu-system-x86_64
        qemupkg=qemu-system-x86
        modules="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_console"
        ;;
    aarch64)
        out=$target/vm-aarch64
        debarch=arm64
        qemu=qemu-system-aarch64
        qemupkg=qemu-system-arm
        # Debian's arm64 kernel has virtio and virtio_ring built in.
        modules="virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_console"
        ;;
    *)
        echo "vm/prepare: error: unknown architecture $arch (x86_64 or aarch64)" >&2
        exit 1
        ;;
esac
musl=$arch-unknown-linux-musl
# The guest's busybox is the host's own when the architectures match;
# otherwise busybox-static:$debarch, downloaded like the kernel.
native=
[ "$(dpkg --print-architecture)" = "$debarch" ] && native=1

say() { echo "vm/prepare: $*" >&2; }
die() { say "error: $*"; exit 1; }

mkdir -p "$out"
# One preparation at a time per target directory (parallel test runs).
exec 9>"$out/.lock"
flock 9

# --- host packages --------------------------------------------------------
missing=
command -v "$qemu" >/dev/null || missing="$missing $qemupkg"
# The guest needs the static busybox; Debian's plain `busybox` is dynamic.
dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' ||
    missing="$missing busybox-static"
command -v cpio >/dev/null || missing="$missing cpio"
if [ -n "$missing" ]; then
    [ "$(id -u)" = 0 ] || die "missing packages:$missing (apt-get install --no-install-recommends$missing)"
    say "installing$missing"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2
fi
if [ -z "$native" ] && ! dpkg --print-foreign-architectures | grep -qx "$debarch"; then
    [ "$(id -u)" = 0 ] || die "dpkg does not know $debarch packages (dpkg --add-architecture $debarch; apt-get update)"
    say "adding dpkg architecture $debarch"
    dpkg --add-architecture "$debarch"
    apt-get update -q >&2
fi

# --- kernel ---------------------------------------------------------------
# apt-cache names a foreign package with its architecture (:arm64).
kpkg() {
    apt-cache depends "linux-image-$debarch:$debarch" 2>/dev/null |
        sed -n "s/^ *Depends: \\(linux-image-[0-9][^ ]*-$debarch\\)\\(:$debarch\\)\\{0,1\\}\$/\\1/p" | head -n 1
}
pkg=$(kpkg)
if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
    apt-get update -q >&2
    pkg=$(kpkg)
fi
if [ -z "$pkg" ] && [ -f "$out/kernel.pkg" ]; then
    pkg=$(cat "$out/kernel.pkg")
    say "apt-cache cannot resolve linux-image-$debarch; using the cached $pkg"
fi
[ -n "$pkg" ] || die "cannot resolve linux-image-$debarch with apt-cache (run apt-get update)"

if [ "$(cat "$out/kernel.pkg" 2>/dev/null)" != "$pkg" ] || [ ! -f "$out/vmlinuz" ]; then
    say "fetching $pkg"
    rm -rf "$out/dl" "$out/modules" "$out/vmlinuz" "$out/vmlinux" "$out/kernel.pkg"
    mkdir -p "$out/dl/root"
    # apt-get download as root warns that _apt cannot write here; harmless.
    (cd "$out/dl" && apt-get download -q "$pkg:$debarch" >&2)
    dpkg-deb -x "$out"/dl/"$pkg"_*.deb "$out/dl/root"
    kver=${pkg#linux-image-}
    cp "$out/dl/root/boot/vmlinuz-$kver" "$out/vmlinuz"
    mkdir -p "$out/modules"
    for m in $modules; do
        ko=$(find "$out/dl/root/lib/modules/$kver" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -n 1)
        [ -n "$ko" ] || die "$m.ko is not in $pkg"
        # busybox insmod takes only plain .ko files.
        case $ko in
            *.xz) xz -dc "$ko" >"$out/modules/$m.ko" ;;
            *.zst) zstd -qdc "$ko" >"$out/modules/$m.ko" ;;
            *) cp "$ko" "$out/modules/$m.ko" ;;
        esac
    done
    echo "$kver" >"$out/kernel.version"
    rm -rf "$out/dl"
    echo "$pkg" >"$out/kernel.pkg"
fi

# What -kernel boots: on x86_64 the uncompressed kernel at its PVH entry
# when it has one (pvh-kernel.sh), else vmlinuz.
kernel=$out/vmlinuz
if [ "$arch" = x86_64 ]; then
    kernel=$out/vmlinux
    if [ ! -f "$kernel" ] || [ "$out/vmlinuz" -nt "$kernel" ] || [ "$here/pvh-kernel.sh" -nt "$kernel" ]; then
        "$here/pvh-kernel.sh" "$out/vmlinuz" "$kernel"
    fi
fi

# The order above must satisfy each module's own depends= (modinfo field).
loaded=
for m in $modules; do
    deps=$(grep -a -o 'depends=[a-z0-9_,-]*' "$out/modules/$m.ko" | head -n 1 | cut -d= -f2 | tr , ' ')
    for d in $deps; do
        case " $loaded " in *" $d "*) ;; *) die "$m needs $d loaded first" ;; esac
    done
    loaded="$loaded $m"
done

# --- the static binary ----------------------------------------------------
# A pure-Rust crate: rustup's musl target links with its own self-contained
# crt and libc, so musl-tools is not needed (aarch64 links with rust-lld,
# see .cargo/config.toml).
rustup target list --installed 2>/dev/null | grep -qx "$musl" ||
    die "rust target $musl is missing: rustup target add $musl"
say "building the static binary ($musl, release)"
(cd "$repo" && CARGO_TARGET_DIR=$target cargo build -q --release --target "$musl" --bin vport-bootargs >&2)
bin=$target/$musl/release/vport-bootargs
[ -x "$bin" ] || die "no binary at $bin"

# --- busybox --------------------------------------------------------------
if [ -n "$native" ]; then
    busybox=$(command -v busybox) || die "busybox not found"
else
    bbver=$(apt-cache policy "busybox-static:$debarch" 2>/dev/null | sed -n 's/^ *Candidate: //p')
    [ -n "$bbver" ] && [ "$bbver" != "(none)" ] ||
        die "cannot resolve busybox-static:$debarch with apt-cache (run apt-get update)"
    if [ "$(cat "$out/busybox.version" 2>/dev/null)" != "$bbver" ] || [ ! -f "$out/busybox" ]; then
        say "fetching busybox-static:$debarch $bbver"
        rm -rf "$out/dl" "$out/busybox" "$out/busybox.version"
        mkdir -p "$out/dl/root"
        (cd "$out/dl" && apt-get download -q "busybox-static:$debarch=$bbver" >&2)
        dpkg-deb -x "$out"/dl/busybox-static_*.deb "$out/dl/root"
        cp "$out/dl/root/bin/busybox" "$out/busybox"
        rm -rf "$out/dl"
        echo "$bbver" >"$out/busybox.version"
    fi
    busybox=$out/busybox
fi

# --- initramfs ------------------------------------------------------------
key=$(cat "$here/init" "$bin" "$busybox" "$out"/modules/*.ko | sha256sum | cut -d' ' -f1)
if [ "$(cat "$out/initramfs.key" 2>/dev/null)" != "$key" ] || [ ! -f "$out/initramfs.gz" ]; then
    say "building the initramfs"
    stage=$out/initramfs.d
    rm -rf "$stage"
    mkdir -p "$stage/bin" "$stage/lib/modules" "$stage/dev" "$stage/proc" "$stage/sys" \
        "$stage/tmp" "$stage/root" "$stage/var"
    cp "$busybox" "$stage/bin/busybox"
    if [ -n "$native" ]; then
        for applet in $("$busybox" --list); do
            [ -e "$stage/bin/$applet" ] || ln -s busybox "$stage/bin/$applet"
        done
    else
        # It cannot run here to list its applets: the guest's init makes
        # the links itself (busybox --install).
        ln -s busybox "$stage/bin/sh"
    fi
    cp "$bin" "$stage/bin/vport-bootargs"
    cp "$out"/modules/*.ko "$stage/lib/modules/"
    echo "$modules" >"$stage/lib/modules/order"
    cp "$here/init" "$stage/init"
    chmod 755 "$stage/init"
    (cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1 >"$out/initramfs.gz.new")
    mv "$out/initramfs.gz.new" "$out/initramfs.gz"
    rm -rf "$stage"
    echo "$key" >"$out/initramfs.key"
fi

cat >"$out/manifest.new" <<EOF
arch=$arch
qemu=$qemu
rust_target=$musl
kernel=$kernel
initrd=$out/initramfs.gz
kernel_package=$pkg
kernel_version=$(cat "$out/kernel.version")
binary=$bin
binary_size=$(wc -c <"$bin")
EOF
mv "$out/manifest.new" "$out/manifest"
say "ready: $out/manifest"

#!/bin/sh
# Builds a Debian bookworm system VM image with the package installed:
#
#   tests/image/build-image.sh DEB OUT_DIR
#
# leaves OUT_DIR/image.raw (ext4, the whole disk is the root filesystem),
# OUT_DIR/vmlinuz and OUT_DIR/initrd.img (the image's own kernel and initrd),
# and OUT_DIR/vmlinux, the kernel the tests boot (tests/vm/pvh-kernel.sh).
# Needs root, mmdebstrap and e2fsprogs; no loop mounts.
#
# dbus is there as in a real template: qemu-guest-agent's guest-shutdown
# goes through logind. The package goes in the way a template build installs it: `apt-get
# install ./vport-bootargs_*.deb` in the chroot. The test's guest files
# (guest/) add stand-ins for cloud-preinit.service (init.sh's qemu-ga start
# and poll) and cloud-early-config.service, a shorter deadline for the
# cmdline file in vport-bootargs.service, and a unit that prints
# what the boot did to the serial console.
set -eu
deb=$(realpath "$1")
out=$2
here=$(cd "$(dirname "$0")" && pwd)
guest=$here/guest

# systemd's generators but the fstab and debug ones, masked: each costs a
# fraction of a second of guest CPU at every boot under TCG, and none has
# anything to do in this image (no encrypted, verity, GPT-auto or
# hibernation devices, no SysV scripts or rc.local; serial-getty is masked
# anyway). The debug generator stays: it applies systemd.mask= from the
# kernel command line, which tests/libvirt_qga.rs uses.
generators="systemd-cryptsetup-generator \
systemd-getty-generator systemd-gpt-auto-generator \
systemd-hibernate-resume-generator systemd-integritysetup-generator \
systemd-rc-local-generator systemd-run-generator \
systemd-system-update-generator systemd-sysv-generator \
systemd-veritysetup-generator"

mkdir -p "$out"
out=$(cd "$out" && pwd)
# The package goes in as an upgrade from the two-unit layout (0.1.0): one
# unit must be left enabled, nothing of the old barrier unit.
"$guest/old-layout-deb.sh" "$out/old-layout.deb"
tree=$out/tree
rm -rf "$tree" "$out/image.raw" "$out/vmlinuz" "$out/vmlinux" "$out/initrd.img"

# Smaller and faster: no docs or locales, no kernel
# modules for hardware a VM does not have, an initrd with what a virtio
# guest needs.
mmdebstrap --variant=minbase --mode=root \
    --include=systemd-sysv,udev,dbus,qemu-guest-agent,linux-image-amd64 \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/gpu/*' \
    --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/media/*' \
    --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/net/wireless/*' \
    --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/net/ethernet/*' \
    --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/infiniband/*' \
    --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/staging/*' \
    --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/iio/*' \
    --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/bluetooth/*' \
    --dpkgopt='path-exclude=/lib/modules/*/kernel/sound/*' \
    --dpkgopt='path-exclude=/lib/modules/*/kernel/net/wireless/*' \
    --dpkgopt='path-exclude=/lib/modules/*/kernel/net/mac80211/*' \
    --setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d"' \
    --setup-hook='mkdir -p "$1/etc/initramfs-tools/hooks"' \
    --setup-hook="upload '$guest/initramfs.conf' /etc/initramfs-tools/conf.d/image-test.conf" \
    --setup-hook="upload '$guest/initramfs-hook' /etc/initramfs-tools/hooks/image-test" \
    --setup-hook='chmod 0755 "$1/etc/initramfs-tools/hooks/image-test"' \
    --customize-hook="upload '$out/old-layout.deb' /tmp/old-layout.deb" \
    --customize-hook='chroot "$1" dpkg -i /tmp/old-layout.deb' \
    --customize-hook='rm "$1/tmp/old-layout.deb"' \
    --customize-hook="upload '$deb' /tmp/vport-bootargs.deb" \
    --customize-hook='chroot "$1" apt-get install -y --no-install-recommends /tmp/vport-bootargs.deb' \
    --customize-hook='rm "$1/tmp/vport-bootargs.deb"' \
    --customize-hook="upload '$guest/cloud-early-config.service' /etc/systemd/system/cloud-early-config.service" \
    --customize-hook="upload '$guest/cloud-early-config' /usr/local/sbin/cloud-early-config" \
    --customize-hook="upload '$guest/cloud-preinit.service' /etc/systemd/system/cloud-preinit.service" \
    --customize-hook="upload '$guest/cloud-preinit' /usr/local/sbin/cloud-preinit" \
    --customize-hook='mkdir -p "$1/etc/systemd/system/vport-bootargs.service.d"' \
    --customize-hook="upload '$guest/boot-image-test.conf' /etc/systemd/system/vport-bootargs.service.d/image-test.conf" \
    --customize-hook="upload '$guest/image-check.service' /etc/systemd/system/image-check.service" \
    --customize-hook="upload '$guest/image-check' /usr/local/sbin/image-check" \
    --customize-hook='chmod 0755 "$1/usr/local/sbin/cloud-early-config" "$1/usr/local/sbin/cloud-preinit" "$1/usr/local/sbin/image-check"' \
    --customize-hook='chroot "$1" systemctl enable cloud-preinit.service cloud-early-config.service image-check.service' \
    --customize-hook='chroot "$1" systemctl mask serial-getty@ttyS0.service getty@tty1.service' \
    --customize-hook='mkdir -p "$1/etc/systemd/system-generators"' \
    --customize-hook="for g in $generators; do ln -s /dev/null \"\$1/etc/systemd/system-generators/\$g\"; done" \
    --customize-hook='echo systemvm >"$1/etc/hostname"' \
    --customize-hook='echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" >"$1/etc/fstab"' \
    bookworm "$tree"

cp "$(realpath "$tree/vmlinuz")" "$out/vmlinuz"
"$here/../vm/pvh-kernel.sh" "$out/vmlinuz" "$out/vmlinux"
# The initrd as a plain cpio archive, which the kernel takes as well: it
# spares the guest the decompression, seconds under TCG.
case $(file -b "$(realpath "$tree/initrd.img")") in
    gzip*) gzip -dc "$tree/initrd.img" >"$out/initrd.img" ;;
    Zstandard*) zstd -qdc "$tree/initrd.img" >"$out/initrd.img" ;;
    XZ*) xz -dc "$tree/initrd.img" >"$out/initrd.img" ;;
    *) cp "$(realpath "$tree/initrd.img")" "$out/initrd.img" ;;
esac
size=$(du -sm "$tree" | cut -f1)
mke2fs -q -t ext4 -L root -d "$tree" "$out/image.raw" "$((size + size / 2 + 64))M"
rm -rf "$tree"

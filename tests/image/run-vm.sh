#!/bin/sh
# Boots the test image under QEMU with the two virtio-serial channels laid
# out as libvirt lays them out for a CloudStack system VM:
#
#   tests/image/run-vm.sh IMAGE_DIR DISK RUN_DIR VM_NAME [QEMU_ARG...]
#
# IMAGE_DIR holds vmlinux and initrd.img, DISK is the raw root disk (written
# to). QEMU listens (libvirt's <source mode='bind'>) on
# RUN_DIR/VM_NAME.agent for the guest's VM_NAME.vport port and on
# RUN_DIR/VM_NAME.org.qemu.guest_agent.0 for qemu-guest-agent's port. The
# guest agent's channel comes first, so the *.vport port is the second one
# (vportNp2), the case that broke the old by-number lookup. The serial
# console is QEMU's standard output. TCG, not KVM: KVM guests hang on the
# machines this runs on. IMAGE_CHECK_LINGER (seconds, default 60) is how
# long the guest waits after its report before powering itself off.
# IMAGE_CHANNELS=ga-only leaves the *.vport channel out, as CloudStack 4.11.3
# and later define the VM (only org.qemu.guest_agent.0). IMAGE_APPEND adds
# words to the kernel command line: imagecheck.analyze=1 has the guest's
# report run systemd-analyze verify and security as well (seconds of guest
# CPU under TCG, so only where a test reads them), preinit.polls=N shortens
# the cloud-preinit stand-in's wait for a cmdline.
set -eu
images=$1 disk=$2 run=$3 vm=$4
shift 4
vport="-chardev socket,id=charchannel1,path=$run/$vm.agent,server=on,wait=off
-device virtserialport,bus=virtio-serial0.0,nr=2,chardev=charchannel1,id=channel1,name=$vm.vport"
[ "${IMAGE_CHANNELS:-both}" = ga-only ] && vport=
# $vport is a list of words (paths without spaces).
# shellcheck disable=SC2086
exec qemu-system-x86_64 \
    -machine pc,accel=tcg -cpu max -smp 1 -m 768 \
    -display none -monitor none -serial stdio -no-reboot \
    -kernel "$images/vmlinux" -initrd "$images/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 quiet panic=1 imagecheck.linger=${IMAGE_CHECK_LINGER:-60} ${IMAGE_APPEND:-}" \
    -drive "file=$disk,format=raw,if=virtio" \
    -nic none \
    -device virtio-serial-pci,id=virtio-serial0 \
    -chardev "socket,id=charchannel0,path=$run/$vm.org.qemu.guest_agent.0,server=on,wait=off" \
    -device virtserialport,bus=virtio-serial0.0,nr=1,chardev=charchannel0,id=channel0,name=org.qemu.guest_agent.0 \
    $vport \
    "$@"

#!/bin/sh
# Benchmark, by hand (not part of CI): what the unit's sandbox costs on the
# boot's critical path. Boots the test image ROUNDS times with the unit as
# shipped and ROUNDS times with a drop-in that turns its sandbox settings off,
# alternately, each from a fresh copy of the disk, with the host's message
# already waiting in the socket (`send --wait-ack` started before QEMU), and
# prints the unit's start-to-exit time from systemd's own timestamps
# (ExecMainStartTimestamp is taken at fork: systemd's setup of the sandbox
# is inside it).
#
#   tests/image/sandbox-boots.sh IMAGE_DIR [ROUNDS]      (default 2)
#
# VARIANTS (default "sandbox none") picks what is compared: `sandbox` (as
# shipped), `none` (every setting off), or one group off: `no-ipdeny`
# (IPAddressDeny=), `no-netns` (PrivateNetwork=), `no-seccomp` (the settings
# systemd enforces with seccomp filters), `no-mountns` (the settings that
# need a mount namespace), `fs-only` (of those, only ProtectSystem=,
# ReadWritePaths= and ProtectHome= kept), `no-ktunables`, `no-privatetmp`,
# `no-devices` (DevicePolicy= and DeviceAllow=: the device cgroup),
# `no-clock` (ProtectClock=), `no-filter` (SystemCallFilter= and
# SystemCallArchitectures= alone), `lean` (the filter as a deny list, and
# no RestrictRealtime=, ProtectClock=, LockPersonality=), `af-only` (of the
# seccomp settings only RestrictAddressFamilies=);
# `core` (the unit without what it adds to the system-call filter, the
# capabilities and NoNewPrivileges=: PrivateNetwork=, the device cgroup,
# ProtectClock=), `mountns` (the unit with the mount-namespace settings it
# had before Landlock replaced them). `checkout` puts this checkout's unit
# (systemd/) over the image's; `checkout-X` adds variant X's drop-in.
#
# BIN=PATH puts that binary on every disk as /usr/sbin/vport-bootargs (a
# static release build, e.g. target/x86_64-unknown-linux-musl/release/
# vport-bootargs), so a unit and a program can be measured before a new
# image is built. The lines end with the unit's result; the summary
# gives each variant's median.
#
# IMAGE_DIR is what tests/image/cached-image.sh prints. Needs debugfs
# (e2fsprogs) to put the drop-in on the disk copy, and a built
# target/debug/vport-bootargs for the host side.
set -eu
images=$1
rounds=${2:-2}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=$repo/target/debug/vport-bootargs
[ -x "$bin" ] || { echo "build $bin first (cargo build)" >&2; exit 1; }
work=$(mktemp -d /tmp/vb-sandbox.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Every sandbox setting of the unit, reset to what no setting means.
cat >"$work/nosandbox.conf" <<'EOF'
[Service]
DevicePolicy=auto
DeviceAllow=
ProtectSystem=no
ReadWritePaths=
ProtectHome=no
PrivateTmp=no
PrivateNetwork=no
IPAddressDeny=
RestrictAddressFamilies=
CapabilityBoundingSet=~
NoNewPrivileges=no
ProtectKernelTunables=no
ProtectKernelModules=no
ProtectKernelLogs=no
ProtectControlGroups=no
ProtectClock=no
ProtectHostname=no
ProtectProc=default
ProcSubset=all
RestrictNamespaces=no
RestrictRealtime=no
RestrictSUIDSGID=no
LockPersonality=no
MemoryDenyWriteExecute=no
SystemCallArchitectures=
SystemCallFilter=
RemoveIPC=no
UMask=0022
EOF

printf '[Service]\nIPAddressDeny=\n' >"$work/no-ipdeny.conf"
printf '[Service]\nPrivateNetwork=no\n' >"$work/no-netns.conf"
printf '[Service]\n%s\n' SystemCallFilter= SystemCallArchitectures= RestrictAddressFamilies= \
    MemoryDenyWriteExecute=no LockPersonality=no RestrictRealtime=no RestrictNamespaces=no \
    RestrictSUIDSGID=no ProtectClock=no >"$work/no-seccomp.conf"
printf '[Service]\n%s\n' ProtectSystem=no ReadWritePaths= ProtectHome=no PrivateTmp=no \
    ProtectKernelTunables=no ProtectKernelModules=no ProtectKernelLogs=no \
    ProtectControlGroups=no ProtectProc=default ProcSubset=all >"$work/no-mountns.conf"
printf '[Service]\n%s\n' PrivateTmp=no ProtectKernelTunables=no ProtectKernelModules=no \
    ProtectKernelLogs=no ProtectControlGroups=no ProtectProc=default ProcSubset=all \
    >"$work/fs-only.conf"
printf '[Service]\nProtectKernelTunables=no\n' >"$work/no-ktunables.conf"
printf '[Service]\n%s\n' DevicePolicy=auto DeviceAllow= >"$work/no-devices.conf"
printf '[Service]\nProtectClock=no\n' >"$work/no-clock.conf"
printf '[Service]\n%s\n' SystemCallFilter= SystemCallArchitectures= >"$work/no-filter.conf"
# The filter as a deny list, without the settings the capability bounding
# set already covers (RestrictRealtime=, ProtectClock=, LockPersonality=).
printf '[Service]\n%s\n' SystemCallFilter= \
    'SystemCallFilter=~@clock @cpu-emulation @debug @module @mount @obsolete @privileged @raw-io @reboot @resources @swap' \
    RestrictRealtime=no ProtectClock=no LockPersonality=no >"$work/lean.conf"
# Of the seccomp settings, only RestrictAddressFamilies= kept.
grep -v '^RestrictAddressFamilies=' "$work/no-seccomp.conf" >"$work/af-only.conf"
printf '[Service]\nPrivateTmp=no\n' >"$work/no-privatetmp.conf"
cp "$work/nosandbox.conf" "$work/none.conf"
printf '[Service]\nExecStartPre=-/bin/sh -c %s\n' \
    "'echo \"@@ lsm \$\$(cat /sys/kernel/security/lsm)\"'" >"$work/lsm.conf"
printf '[Service]\n%s\n' PrivateNetwork=no DevicePolicy=auto DeviceAllow= ProtectClock=no \
    >"$work/core.conf"
# The one unit's sandbox before Landlock: its mount-namespace settings.
printf '[Service]\n%s\n' ProtectSystem=strict ReadWritePaths=-/root/.ssh ProtectHome=read-only \
    PrivateTmp=yes ProtectKernelTunables=yes ProtectKernelModules=yes ProtectKernelLogs=yes \
    ProtectControlGroups=yes ProtectHostname=yes ProcSubset=pid IPAddressDeny=any \
    DevicePolicy=auto DeviceAllow= >"$work/mountns.conf"

boot() { # $1 label, $2 variant
    run=$work/$1
    mkdir -p "$run"
    cp --sparse=always "$images/image.raw" "$run/disk.raw"
    if [ -n "${BIN:-}" ]; then
        debugfs -w -R "rm /usr/sbin/vport-bootargs" "$run/disk.raw" >/dev/null 2>&1
        debugfs -w -R "write $BIN /usr/sbin/vport-bootargs" "$run/disk.raw" >/dev/null 2>&1
        debugfs -w -R "sif /usr/sbin/vport-bootargs mode 0100755" "$run/disk.raw" >/dev/null 2>&1
    fi
    case $2 in checkout*)
        debugfs -w -R "write $repo/systemd/vport-bootargs.service /etc/systemd/system/vport-bootargs.service" \
            "$run/disk.raw" >/dev/null 2>&1
    esac
    # Which LSMs this kernel runs (is Landlock among them?), on the
    # console; before the main process, so outside the figure.
    d=/etc/systemd/system/vport-bootargs.service.d
    debugfs -w -R "mkdir $d" "$run/disk.raw" >/dev/null 2>&1
    debugfs -w -R "write $work/lsm.conf $d/lsm.conf" "$run/disk.raw" >/dev/null 2>&1
    conf=${2#checkout-}
    if [ "$conf" != sandbox ] && [ "$conf" != checkout ]; then
        d=/etc/systemd/system/vport-bootargs.service.d
        debugfs -w -R "mkdir $d" "$run/disk.raw" >/dev/null 2>&1
        debugfs -w -R "write $work/$conf.conf $d/bench.conf" "$run/disk.raw" >/dev/null 2>&1
    fi
    "$bin" -q send --socket "$run/s-1-VM.agent" --no-pubkey --raw \
        -p "type=secstorage name=s-1-VM" --wait-ack 400 &
    sender=$!
    IMAGE_CHECK_LINGER=1 "$here/run-vm.sh" "$images" "$run/disk.raw" "$run" s-1-VM \
        >"$run/console" 2>&1 &
    qemu=$!
    i=0
    while ! grep -q '^@@ unit vport-bootargs.service' "$run/console" && [ $i -lt 800 ]; do
        sleep 0.5
        i=$((i + 1))
    done
    line=$(grep '^@@ unit vport-bootargs.service' "$run/console" || true)
    grep -ao '@@ lsm .*' "$run/console" | head -n 1 || true
    kill "$qemu" 2>/dev/null || true
    wait "$qemu" 2>/dev/null || true
    wait "$sender" 2>/dev/null || true
    start=$(echo "$line" | sed -n 's/.*ExecMainStartTimestampMonotonic=\([0-9]*\).*/\1/p')
    end=$(echo "$line" | sed -n 's/.*ExecMainExitTimestampMonotonic=\([0-9]*\).*/\1/p')
    result=$(echo "$line" | sed -n 's/.* Result=\([a-z-]*\).*/\1/p')
    if [ -n "$start" ] && [ -n "$end" ]; then
        echo "$2 $(((end - start) / 1000)) ms result=$result"
        echo "$2 $(((end - start) / 1000))" >>"$work/figures"
    else
        echo "$2 ? (no unit line; console in $run/console)"
        trap - EXIT
    fi
}

r=1
while [ $r -le "$rounds" ]; do
    for v in ${VARIANTS:-sandbox none}; do
        boot "$v-$r" "$v"
    done
    r=$((r + 1))
done
echo "medians over $rounds rounds ($(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)):"
for v in ${VARIANTS:-sandbox none}; do
    ms=$(sed -n "s/^$v \([0-9]*\)$/\1/p" "$work/figures" 2>/dev/null | sort -n)
    n=$(echo "$ms" | grep -c . || true)
    [ "$n" -gt 0 ] || { echo "  $v: no figure"; continue; }
    echo "  $v: $(echo "$ms" | sed -n "$(((n + 1) / 2))p") ms (of $n: $(echo $ms))"
done

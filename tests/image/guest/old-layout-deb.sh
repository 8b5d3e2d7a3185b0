#!/bin/sh
# Builds a stand-in for the 0.1.0 package, the two-unit layout
# (vport-bootargs.service running fetch, vport-bootargs-barrier.service
# running barrier), enabled at install as dh_installsystemd's postinst
# does it:
#
#   tests/image/guest/old-layout-deb.sh OUT.deb
#
# build-image.sh installs it before the package under test, so that the
# image is an upgrade from that layout. Only the units and their
# enablement matter here: the binary is not in it (the image never boots
# with it).
set -eu
out=$1
here=$(cd "$(dirname "$0")" && pwd)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
mkdir -p "$root/DEBIAN" "$root/lib/systemd/system"
for unit in vport-bootargs.service vport-bootargs-barrier.service; do
    cp "$here/old-layout-$unit" "$root/lib/systemd/system/$unit"
done
cat >"$root/DEBIAN/control" <<CONTROL
Package: vport-bootargs
Version: 0.1.0
Architecture: $(dpkg --print-architecture)
Maintainer: vport-bootargs developers <vport-bootargs@lists.example.org>
Description: stand-in for the two-unit layout (tests only)
CONTROL
cat >"$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    deb-systemd-helper unmask vport-bootargs.service vport-bootargs-barrier.service >/dev/null || true
    deb-systemd-helper enable vport-bootargs.service vport-bootargs-barrier.service >/dev/null || true
fi
POSTINST
chmod 0755 "$root/DEBIAN/postinst"
dpkg-deb --root-owner-group -Zgzip -b "$root" "$out" >/dev/null

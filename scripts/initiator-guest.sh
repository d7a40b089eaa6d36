#!/usr/bin/env bash
# Builds the guest for the kernel-initiator system test (tests/system/kernel.rs):
# a minimal Debian 12 root filesystem with the Linux kernel initiator
# (open-iscsi), e2fsprogs, dm-multipath (multipath-tools; multipathd stays
# off unless the boot program starts it), fio and the test's boot program
# (tests/system/guest/initiator-test.sh), as an ext4 image plus its kernel
# and initrd. The host's kernel has no iscsi_tcp, so the test boots this in
# QEMU (TCG, no KVM needed) and forwards the guest's 10.0.2.100:3260 (and,
# for the multipath test, 10.0.2.101 and 10.0.2.102) to the Depot routers
# under test.
#
# Cached in $DEPOT_INITIATOR_GUEST (default ~/.cache/depot-tools/initiator-guest)
# and rebuilt only when the boot program or this script changes. Packages come from the
# mirror configured in /etc/apt/sources.list.d/debian.sources. Needs root
# (or sudo) for mmdebstrap; about 3 minutes.
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
DIR=${DEPOT_INITIATOR_GUEST:-${XDG_CACHE_HOME:-$HOME/.cache}/depot-tools/initiator-guest}
PROGRAM=tests/system/guest/initiator-test.sh
# The guest is rebuilt when its boot program or this script changes.
stamp=$(cat "$PROGRAM" "$SELF" | sha256sum | cut -c1-16)
if [ -f "$DIR/built-$stamp" ] && [ -f "$DIR/root.img" ]; then
  echo "initiator guest up to date in $DIR"
  exit 0
fi
mkdir -p "$DIR"
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
work=$(mktemp -d)
trap '$SUDO rm -rf "$work"' EXIT
cp "$PROGRAM" "$work/initiator-test.sh"
$SUDO mmdebstrap --quiet --variant=minbase \
  --include=linux-image-amd64,systemd-sysv,udev,kmod,iproute2,open-iscsi,e2fsprogs,multipath-tools,fio \
  --customize-hook="copy-in $work/initiator-test.sh /usr/local/bin" \
  --customize-hook='printf "[Unit]\nAfter=multi-user.target\n[Service]\nType=oneshot\nExecStart=/usr/local/bin/initiator-test.sh\n[Install]\nWantedBy=multi-user.target\n" >"$1/etc/systemd/system/initiator-test.service" && chroot "$1" systemctl enable --quiet initiator-test.service' \
  --customize-hook='echo "/dev/vda / ext4 defaults 0 1" >"$1/etc/fstab"' \
  --customize-hook='chroot "$1" systemctl disable --quiet multipathd.service multipathd.socket' \
  bookworm "$work/rootfs" "$mirror"
rm -f "$DIR"/built-* "$DIR/root.img"
$SUDO cp "$work"/rootfs/boot/vmlinuz-* "$DIR/vmlinuz"
$SUDO cp "$work"/rootfs/boot/initrd.img-* "$DIR/initrd.img"
truncate -s 2G "$DIR/root.img.new"
$SUDO mkfs.ext4 -q -F -d "$work/rootfs" "$DIR/root.img.new"
$SUDO chown "$(id -u):$(id -g)" "$DIR/vmlinuz" "$DIR/initrd.img" "$DIR/root.img.new"
mv "$DIR/root.img.new" "$DIR/root.img"
touch "$DIR/built-$stamp"
echo "initiator guest built in $DIR"

#!/usr/bin/env bash
# Builds the Depot virtual storage appliance (VSA) from Debian packages,
# without loop devices or mounts:
#
#   mmdebstrap (Debian 12 minimal + kernel + the depot .deb) into a directory
#   -> mkfs.ext4 -d (root filesystem image)  +  mkfs.vfat/mtools (EFI system
#   partition with a standalone GRUB)  -> GPT disk assembled with sfdisk + dd
#   -> qcow2 (KVM, Proxmox, OpenStack) and OVA (OVF 1.0, vmx-14,
#   streamOptimized VMDK, SHA256 manifest) for ESXi.
#
#   appliance/build-image.sh [--deb PATH] [--out DIR] [--disk-size 8G]
#
# Needs root and: mmdebstrap e2fsprogs fdisk dosfstools mtools
# grub-efi-amd64-bin qemu-utils (see docs/appliance.md). The .deb defaults to
# the newest packaging/dist/depot_*.deb (packaging/build-deb.sh).
# Packages come from the machine's own apt sources
# (/etc/apt/sources.list.d/debian.sources, or APT_SOURCES=FILE); no mirror
# host is named here. Outputs in DIR (default appliance/out/, git-ignored):
#   depot-appliance.qcow2, depot-appliance.ova (+ the unpacked .ovf/.mf/.vmdk)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out="$here/out"
deb=""
disk_size=8G
sources=${APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}
name=depot-appliance
while [ $# -gt 0 ]; do
  case "$1" in
    --deb) deb=$2; shift ;;
    --out) out=$2; shift ;;
    --disk-size) disk_size=$2; shift ;;
    *) echo "usage: $0 [--deb PATH] [--out DIR] [--disk-size SIZE]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "$0: must run as root (mmdebstrap --mode=root, file ownership)" >&2; exit 1; }
if [ -z "$deb" ]; then
  deb=$(ls -t "$root"/packaging/dist/depot_*.deb 2>/dev/null | head -n1 || true)
fi
[ -f "$deb" ] || { echo "$0: no depot .deb (run packaging/build-deb.sh or pass --deb)" >&2; exit 1; }
[ -f "$sources" ] || { echo "$0: apt sources $sources not found" >&2; exit 1; }
for t in mmdebstrap mkfs.ext4 mkfs.vfat mcopy sfdisk grub-mkstandalone qemu-img sha256sum; do
  command -v "$t" >/dev/null || { echo "$0: $t missing (see docs/appliance.md, Building)" >&2; exit 1; }
done
[ -d /usr/lib/grub/x86_64-efi ] || { echo "$0: grub-efi-amd64-bin missing" >&2; exit 1; }

t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 ))s] $*" >&2; }
work=$(mktemp -d "${TMPDIR:-/var/tmp}/depot-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
rootfs="$work/rootfs"
version=$(dpkg-deb --field "$deb" Version)

# ---------------------------------------------------------------- rootfs
step "mmdebstrap: Debian 12 minbase + kernel + depot $version"
cp "$deb" "$work/depot.deb"
# Essential hooks run before the remaining packages are installed: fstab is
# in place before the kernel's initramfs is built, and the .deb given to
# --include must exist at the same path inside the chroot (dpkg runs there).
# The root filesystem is checked by systemd-fsck-root on every boot.
mmdebstrap --mode=root --variant=minbase --format=directory \
  --components=main \
  --include=linux-image-amd64,systemd-sysv,udev,kmod,dbus,systemd-resolved,systemd-timesyncd,iproute2,e2fsprogs,util-linux,procps,ca-certificates,less,nano,open-vm-tools,qemu-guest-agent \
  --include="$work/depot.deb" \
  --essential-hook='printf "LABEL=depot-root\t/\text4\terrors=remount-ro,noatime\t0\t1\n" >"$1/etc/fstab"' \
  --essential-hook='mkdir -p "$1'"$work"'" && cp "'"$work"'/depot.deb" "$1'"$work"'/"' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-include=/usr/share/doc/depot/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook='rm -rf "$1'"$work"'"' \
  --customize-hook='sync-in "'"$here"'/rootfs" /' \
  --customize-hook='echo depot >"$1/etc/hostname"' \
  --customize-hook='printf "127.0.0.1\tlocalhost\n127.0.1.1\tdepot\n::1\tlocalhost ip6-localhost ip6-loopback\n" >"$1/etc/hosts"' \
  --customize-hook='systemctl --root="$1" enable systemd-networkd.service systemd-resolved.service systemd-timesyncd.service depot.service depot-firstboot.service depot-banner.service' \
  --customize-hook='systemctl --root="$1" enable serial-getty@ttyS0.service' \
  --customize-hook='ln -sf /run/systemd/resolve/stub-resolv.conf "$1/etc/resolv.conf"' \
  --customize-hook=': >"$1/etc/machine-id"; rm -f "$1/var/lib/dbus/machine-id"' \
  --customize-hook='rm -rf "$1"/var/lib/depot/* "$1"/var/lib/depot-appliance' \
  --customize-hook='chroot "$1" passwd -l root >/dev/null' \
  bookworm "$rootfs" "$sources"

kernel=$(cd "$rootfs/boot" && ls vmlinuz-* | sort -V | tail -n1)
kver=${kernel#vmlinuz-}
[ -f "$rootfs/boot/initrd.img-$kver" ] || { echo "no initrd for $kver" >&2; exit 1; }
du_root=$(du -sm "$rootfs" | cut -f1)
step "rootfs: ${du_root} MiB, kernel $kver"

# ---------------------------------------------------------------- EFI
step "GRUB (standalone EFI) and the EFI system partition"
cat >"$work/grub.cfg" <<GRUB
set timeout=2
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
search --no-floppy --label depot-root --set=root
# /vmlinuz and /initrd.img are the symlinks Debian's kernel packages keep
# current, so a kernel upgrade inside the appliance needs no GRUB change.
menuentry "Depot appliance" {
  linux /vmlinuz root=LABEL=depot-root ro console=tty0 console=ttyS0,115200n8
  initrd /initrd.img
}
menuentry "Depot appliance (kernel $kver)" {
  linux /boot/vmlinuz-$kver root=LABEL=depot-root ro console=tty0 console=ttyS0,115200n8
  initrd /boot/initrd.img-$kver
}
GRUB
[ -L "$rootfs/vmlinuz" ] && [ -L "$rootfs/initrd.img" ] ||
  sed -i '/^menuentry "Depot appliance" {/,/^}/d' "$work/grub.cfg"
grub-mkstandalone -O x86_64-efi -o "$work/BOOTX64.EFI" \
  --modules="part_gpt fat ext2 search_label linux normal serial terminal efi_gop all_video gzio" \
  "boot/grub/grub.cfg=$work/grub.cfg"
esp_mib=64
mkfs.vfat -C -n ESP -F 32 "$work/esp.img" $((esp_mib * 1024)) >/dev/null
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/esp.img" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI

# ---------------------------------------------------------------- disk
step "GPT disk ($disk_size): ESP + ext4 root (mkfs.ext4 -d, no mount)"
raw="$work/disk.raw"
truncate -s "$disk_size" "$raw"
disk_bytes=$(stat -c %s "$raw")
root_start_mib=$((1 + esp_mib))
root_mib=$((disk_bytes / 1048576 - root_start_mib - 1))   # 1 MiB for the backup GPT
[ "$root_mib" -gt "$((du_root + 256))" ] || { echo "disk size $disk_size too small for ${du_root} MiB" >&2; exit 1; }
truncate -s "${root_mib}M" "$work/root.img"
mkfs.ext4 -q -F -L depot-root -d "$rootfs" -E lazy_itable_init=1,lazy_journal_init=1 \
  "$work/root.img" "${root_mib}M"
sfdisk -q "$raw" <<SFDISK
label: gpt
start=1MiB, size=${esp_mib}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system"
start=${root_start_mib}MiB, size=${root_mib}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="depot-root"
SFDISK
dd if="$work/esp.img" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$raw" bs=1M seek="$root_start_mib" conv=notrunc,sparse status=none
rm -f "$work/root.img" "$work/esp.img"

# ---------------------------------------------------------------- outputs
step "qcow2"
rm -f "$out/$name".{qcow2,ova,ovf,mf} "$out/$name-disk1.vmdk"
qemu-img convert -f raw -O qcow2 -c "$raw" "$out/$name.qcow2"

step "OVA (streamOptimized VMDK, OVF 1.0 vmx-14, SHA256 manifest)"
vmdk="$name-disk1.vmdk"
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized,adapter_type=lsilogic,hwversion=14 \
  "$raw" "$out/$vmdk"
vmdk_size=$(stat -c %s "$out/$vmdk")
sed -e "s|@VERSION@|$version|g" -e "s|@VMDK@|$vmdk|g" -e "s|@VMDK_SIZE@|$vmdk_size|g" \
    -e "s|@CAPACITY@|$disk_bytes|g" -e "s|@NAME@|$name|g" \
    "$here/depot-appliance.ovf.in" >"$out/$name.ovf"
(cd "$out" && for f in "$name.ovf" "$vmdk"; do
   echo "SHA256($f)= $(sha256sum "$f" | cut -d' ' -f1)"
 done >"$name.mf")
(cd "$out" && tar --format=ustar --owner=0 --group=0 --numeric-owner -cf "$name.ova" \
   "$name.ovf" "$name.mf" "$vmdk")

step "done"
ls -l "$out/$name.qcow2" "$out/$name.ova" >&2
echo "rootfs ${du_root} MiB; qcow2 $(du -m "$out/$name.qcow2" | cut -f1) MiB; ova $(du -m "$out/$name.ova" | cut -f1) MiB; virtual disk $disk_size; $(( $(date +%s) - t0 ))s" >&2

#!/bin/sh
# Runs at boot inside the kernel-initiator test guest (tests/system/kernel.rs;
# the image is built by scripts/initiator-guest.sh). The Linux kernel
# initiator (open-iscsi, iscsi_tcp) logs in to the target the host forwards
# to 10.0.2.100:3260 and does one step, named on the kernel command line:
#   write:  mkfs.ext4 on LUN 0, mount, write 32 MiB of random data to a file,
#           sync, print its sha256, then power off WITHOUT unmounting or
#           logging out (a VM that dies right after its fsync returned);
#   verify: mount LUN 0 (ext4 replays its journal), print the file's sha256,
#           unmount, log out, power off.
# Every result goes to the serial console as a "GUEST: " line.
say() { echo "GUEST: $*" >/dev/ttyS0; }
arg() { sed -n "s/.*depot\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
off() { say "end"; systemctl poweroff -f; }
IQN=$(arg iqn)
STEP=$(arg step)
PORTAL=10.0.2.100:3260
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
say "kernel $(uname -r), $(iscsiadm --version)"
modprobe iscsi_tcp || { say "modprobe iscsi_tcp failed"; off; }
systemctl start iscsid.socket iscsid.service 2>/dev/null || iscsid
# The target reports its own portal (127.0.0.1 on the host) in SendTargets;
# the guest reaches it only through the forwarded address, so the node
# record is made for that one.
say "discovered $(iscsiadm -m discovery -t sendtargets -p $PORTAL 2>&1 | grep -c " $IQN\$")"
iscsiadm -m node -o new -T "$IQN" -p $PORTAL >/dev/null 2>&1
iscsiadm -m node -T "$IQN" -p $PORTAL --login >/dev/null 2>&1
say "login $?"
udevadm settle
DEV=""
for d in /sys/block/sd*; do
  [ -e "$d/device" ] || continue
  hctl=$(basename "$(readlink -f "$d/device")")
  name=$(basename "$d")
  say "disk $name lun=${hctl##*:} vendor=$(tr -d ' ' <"$d/device/vendor") sectors=$(cat "$d/size") cache=$(tr ' ' '-' <"$d/queue/write_cache") discard=$(cat "$d/queue/discard_max_bytes")"
  [ "${hctl##*:}" = 0 ] && DEV=/dev/$name
done
[ -n "$DEV" ] || { say "no LUN 0"; off; }
case "$STEP" in
write)
  mkfs.ext4 -q -F "$DEV" >/dev/null 2>&1
  say "mkfs $?"
  mount "$DEV" /mnt
  say "mount $?"
  dd if=/dev/urandom of=/mnt/data bs=1M count=32 status=none
  sync
  say "sync $?"
  say "sum $(sha256sum /mnt/data | cut -d' ' -f1)"
  say "end"
  sleep 1
  # Power off at once: no unmount, no logout, no further sync. (The
  # trigger returns before the machine is off; wait for it here.)
  echo 1 >/proc/sys/kernel/sysrq
  echo o >/proc/sysrq-trigger
  sleep 60
  ;;
verify)
  mount "$DEV" /mnt
  say "mount $?"
  say "sum $(sha256sum /mnt/data | cut -d' ' -f1)"
  umount /mnt
  say "umount $?"
  iscsiadm -m node --logoutall=all >/dev/null 2>&1
  say "logout $?"
  ;;
*)
  say "unknown step $STEP"
  ;;
esac
off

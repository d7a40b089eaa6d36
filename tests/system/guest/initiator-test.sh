#!/bin/sh
# Runs at boot inside the kernel-initiator test guest (tests/system/kernel.rs;
# the image is built by scripts/initiator-guest.sh). The Linux kernel
# initiator (open-iscsi, iscsi_tcp) logs in to the target the host forwards
# to 10.0.2.100:3260 and does one step, named on the kernel command line:
#   write:  mkfs.ext4 on LUN 0, mount, write 32 MiB of random data to a file,
#           sync, print its sha256, then power off WITHOUT unmounting or
#           logging out (a VM that dies right after its fsync returned);
#   verify: mount LUN 0 (ext4 replays its journal), print the file's sha256,
#           unmount, log out, power off;
#   multipath: dm-multipath over one path per router (tests/system/multipath.rs):
#           log in at every portal of depot.portals (ADDR:PORT,TPGT/...), make
#           the multipath map, and run verified write passes (fio) on it while
#           the host moves the vDisk between routers; see multipath_step.
#           With depot.fs=ext4 the passes write a file of a mounted ext4 on
#           the map instead, plain O_DIRECT writes (the host kills the
#           owner meanwhile), and the filesystem is checked (fsck -fn)
#           after it is unmounted.
# Every result goes to the serial console as a "GUEST: " line.
say() { echo "GUEST: $*" >/dev/ttyS0; }
arg() { sed -n "s/.*depot\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
off() { say "end"; systemctl poweroff -f; }
# The multipath step. Every router is reached through its own forwarded
# address (the routers advertise 127.0.0.1 portals), so each node record is
# made by hand with the portal group tag that router reports. Then:
#   GUEST: paths N            paths in the multipath map
#   GUEST: path SD tpgt T sectors N state S   each path, as the kernel sized it
#   GUEST: mpath LINE         `multipath -ll`, before and after the workload
#   GUEST: workload-started   the host starts moving the vDisk
#   GUEST: active TPGT        each change of the path the kernel sees as
#                             active/optimized (sysfs access_state)
#   GUEST: pass N rc R ms T   one fio pass: random writes over the region, each
#                             block verified (a pattern of the pass number and
#                             the block's offset, so a stale or misplaced block
#                             fails), read back while writing and at the end
#   GUEST: workload-done
#   GUEST: final-verify R     the last pass's data verified again, whole
#   GUEST: io-errors N, dm-errors N (I/O errors that reached the map),
#   beyond-end N (I/O a path refused as past its size), verify ok|failed,
#   sum MD5 (of the region), dmesg LINE (the kernel's SCSI/iSCSI/dm lines);
#   with depot.fs=ext4 also mkfs R, mount R, fs-errors N (EXT4-fs errors in
#   the kernel log), umount R, fsck R (fsck.ext4 -fn; 0 is clean)
# Passes go on until the active path has gone through the owners in
# depot.owners (1 -> 2 -> 3 -> 1 for the moves; owner -> holder for a
# failover), then
# one more pass, or until depot.secs have passed.
multipath_step() {
  REGION=32M
  SECS=$(arg secs); [ -n "$SECS" ] || SECS=120
  OWNERS=$(arg owners | tr ',' ' ')
  modprobe scsi_dh_alua
  n=0
  for p in $(arg portals | tr '/' ' '); do
    iscsiadm -m node -o new -T "$IQN" -p "$p" >/dev/null 2>&1
    iscsiadm -m node -T "$IQN" -p "$p" -o update \
      -n node.session.timeo.replacement_timeout -v 5 >/dev/null 2>&1
    n=$((n + 1))
  done
  cat >/etc/multipath.conf <<'CONF'
defaults {
	user_friendly_names yes
	find_multipaths no
	polling_interval 1
}
blacklist {
	devnode "^vd[a-z]"
}
devices {
	device {
		vendor "DEPOT"
		product ".*"
		path_grouping_policy group_by_prio
		prio alua
		hardware_handler "1 alua"
		failback immediate
		path_checker tur
		no_path_retry queue
	}
}
CONF
  iscsiadm -m node -T "$IQN" --login >/dev/null 2>&1
  say "login $?"
  udevadm settle
  systemctl start multipathd.service
  MAP=""
  t=0
  while [ $t -lt 120 ]; do
    MAP=$(dmsetup ls --target multipath 2>/dev/null | awk 'NR == 1 {print $1}')
    if [ -n "$MAP" ]; then
      paths=$(multipath -ll "$MAP" 2>/dev/null | grep -cE '[0-9]+:[0-9]+:[0-9]+:[0-9]+ sd')
      [ "$paths" -ge "$n" ] && break
    fi
    sleep 0.5
    t=$((t + 1))
  done
  [ -n "$MAP" ] || { say "no multipath map"; return; }
  say "paths $(multipath -ll "$MAP" | grep -cE '[0-9]+:[0-9]+:[0-9]+:[0-9]+ sd')"
  multipath -ll "$MAP" 2>&1 | while IFS= read -r l; do say "mpath $l"; done
  DEV=/dev/mapper/$MAP
  FS=$(arg fs)
  TARGET=$DEV
  if [ "$FS" = ext4 ]; then
    # Plain O_DIRECT writes, no O_SYNC: a sync mirror holds every
    # completed write (write rounds), flushed or not, so every block
    # verified after the takeover must be the one written last.
    REGION=16M
    mkfs.ext4 -q -F "$DEV" >/dev/null 2>&1
    say "mkfs $?"
    mount "$DEV" /mnt
    say "mount $?"
    TARGET=/mnt/data
  fi
  # Which router (portal group tag) each SCSI path is.
  : >/run/paths
  for d in /sys/block/sd*; do
    s=$(readlink -f "$d/device" | grep -o 'session[0-9]*' | head -n 1)
    echo "$(basename "$d") $(cat /sys/class/iscsi_session/"$s"/tpgt)" >>/run/paths
  done
  while read -r sd tpgt; do
    say "path $sd tpgt $tpgt sectors $(cat /sys/block/"$sd"/size) state $(cat /sys/block/"$sd"/device/access_state)"
  done </run/paths
  # The owner as the kernel sees it: the path whose access state is
  # active/optimized, each change printed once.
  : >/run/active
  (
    last=""
    while :; do
      cur=""
      while read -r sd tpgt; do
        case "$(cat /sys/block/"$sd"/device/access_state 2>/dev/null)" in
          active/optimized*) cur=$tpgt ;;
        esac
      done </run/paths
      if [ -n "$cur" ] && [ "$cur" != "$last" ]; then
        say "active $cur"
        echo "$cur" >>/run/active
        last=$cur
      fi
      sleep 0.2
    done
  ) &
  WATCH=$!
  fio_pass() { # name seed [extra options]
    name=$1 seed=$2
    shift 2
    fio --name="$name" --filename="$TARGET" --ioengine=libaio --direct=1 --iodepth=8 \
      --rw=randwrite --bs=16k --size=$REGION --randseed="$seed" \
      --verify=pattern --verify_pattern="$(printf '0x5eed%04x' "$seed")%o" \
      --do_verify=1 --verify_fatal=1 --verify_backlog=256 "$@" >>/run/fio.log 2>&1
  }
  say "workload-started"
  start=$(date +%s)
  pass=0 fails=0 extra=""
  while :; do
    pass=$((pass + 1))
    t0=$(date +%s%N)
    fio_pass "pass$pass" "$pass"
    rc=$?
    say "pass $pass rc $rc ms $((($(date +%s%N) - t0) / 1000000)) until $(date -u +%T.%3N)"
    [ $rc = 0 ] || { fails=$((fails + 1)); break; }
    [ -n "$extra" ] && break
    seen=$(uniq /run/active | tr '\n' ' ' | sed 's/ $//')
    case "$seen" in *"$OWNERS"*) extra=1 ;; esac
    [ $(($(date +%s) - start)) -ge "$SECS" ] && break
  done
  say "workload-done"
  fio_pass "pass$pass" "$pass" --verify_only
  rc=$?
  say "final-verify $rc"
  [ $rc = 0 ] || fails=$((fails + 1))
  kill $WATCH 2>/dev/null
  ioerr=$(grep -c 'io_u error' /run/fio.log)
  verr=$(grep -cE 'verify failed|bad magic|bad header' /run/fio.log)
  say "io-errors $ioerr"
  say "dm-errors $(dmesg | grep -c 'I/O error, dev dm-')"
  say "beyond-end $(dmesg | grep -c 'access beyond end of device')"
  if [ $fails = 0 ] && [ "$ioerr" = 0 ] && [ "$verr" = 0 ]; then
    say "verify ok"
  else
    say "verify failed"
    grep -E 'error|verify|err=' /run/fio.log | head -n 20 | while IFS= read -r l; do say "fio $l"; done
    # What the first blocks that failed hold now.
    grep -o 'requested block: offset=[0-9]*' /run/fio.log | cut -d= -f2 | sort -un | head -n 4 |
      while read -r o; do
        say "block $o now $(dd if="$TARGET" bs=16k skip=$((o / 16384)) count=1 iflag=direct status=none | od -A n -t x1 -N 24 | tr -s ' \n' ' ')"
      done
  fi
  if [ "$FS" = ext4 ]; then
    say "sum $(md5sum /mnt/data | cut -d" " -f1)"
    say "fs-errors $(dmesg | grep -c 'EXT4-fs error')"
    umount /mnt
    say "umount $?"
    fsck.ext4 -fn "$DEV" >/run/fsck.log 2>&1
    rc=$?
    say "fsck $rc"
    [ $rc = 0 ] || while IFS= read -r l; do say "fsck $l"; done </run/fsck.log
  else
    say "sum $(head -c $REGION "$DEV" | md5sum | cut -d" " -f1)"
  fi
  multipath -ll "$MAP" 2>&1 | while IFS= read -r l; do say "mpath $l"; done
  dmesg | grep -E ' sd[a-z]|sd [0-9]|alua|device-mapper|multipath|iscsi|connection[0-9]|I/O error|EXT4' |
    tail -n 80 | while IFS= read -r l; do say "dmesg $l"; done
  systemctl stop multipathd.service multipathd.socket 2>/dev/null
  multipath -F >/dev/null 2>&1
  iscsiadm -m node --logoutall=all >/dev/null 2>&1
  say "logout $?"
}
IQN=$(arg iqn)
STEP=$(arg step)
PORTAL=10.0.2.100:3260
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
say "kernel $(uname -r), $(iscsiadm --version)"
modprobe iscsi_tcp || { say "modprobe iscsi_tcp failed"; off; }
systemctl start iscsid.socket iscsid.service 2>/dev/null || iscsid
[ "$STEP" = multipath ] && { multipath_step; off; exit 0; }
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

#!/usr/bin/env bash
# Boots the appliance qcow2 under QEMU (TCG software emulation, OVMF UEFI,
# a blank second disk for the flash cache), waits until depot answers on
# the forwarded API port, then from the host: creates a VM and a vDisk via
# the REST API, writes 32 MiB of random data over iSCSI with qemu-img,
# reads it back and compares, and checks /metrics counted the I/O.
#
#   appliance/boot-test.sh [IMAGE]      (default appliance/out/depot-appliance.qcow2)
#
# Not part of scripts/test.sh (boot alone takes minutes under TCG).
# Needs qemu-system-x86 (bookworm-backports, to match qemu-utils 10),
# qemu-block-extra (iscsi:// driver), ovmf, curl. Only 127.0.0.1 is
# forwarded; the guest has user-mode networking only. The image itself is
# not modified (the guest writes to a temporary qcow2 overlay).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
img=$(realpath "${1:-$here/out/depot-appliance.qcow2}")
timeout=${BOOT_TIMEOUT:-900}
ovmf=${OVMF:-/usr/share/ovmf/OVMF.fd}
[ -f "$img" ] || { echo "no image $img (appliance/build-image.sh)" >&2; exit 1; }
[ -f "$ovmf" ] || { echo "no OVMF at $ovmf (apt-get install ovmf)" >&2; exit 1; }
for t in qemu-system-x86_64 qemu-img curl cmp; do
  command -v $t >/dev/null || { echo "$t missing" >&2; exit 1; }
done
work=$(mktemp -d "${TMPDIR:-/var/tmp}/depot-boot.XXXXXX")
qpid=""
cleanup() {
  if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then kill "$qpid"; wait "$qpid" 2>/dev/null || true; fi
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api_port=$(free_port); iscsi_port=$(free_port)
api="http://127.0.0.1:$api_port"

qemu-img create -q -f qcow2 -b "$img" -F qcow2 "$work/system.qcow2"
qemu-img create -q -f qcow2 "$work/flash.qcow2" 2G
: >"$work/console.log"
t0=$(date +%s.%N)
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)"; }
qemu-system-x86_64 -accel tcg -smp 2 -m 2048 \
  -bios "$ovmf" -display none -monitor none -serial "file:$work/console.log" \
  -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$api_port-:8080,hostfwd=tcp:127.0.0.1:$iscsi_port-:3260" \
  -device virtio-net-pci,netdev=n0 \
  -drive "file=$work/system.qcow2,format=qcow2,if=virtio" \
  -drive "file=$work/flash.qcow2,format=qcow2,if=virtio" &
qpid=$!
echo "booting $img (qemu pid $qpid, API -> $api, iSCSI -> 127.0.0.1:$iscsi_port)"

fail() { echo "FAIL: $*" >&2; echo "--- console (last 60 lines) ---" >&2; tail -n 60 "$work/console.log" | tr -d '\r' >&2; exit 1; }
token=""
deadline=$(( $(date +%s) + timeout ))
until [ -n "$token" ] && curl -sf -o /dev/null "$api/api/v1/health"; do
  kill -0 "$qpid" 2>/dev/null || fail "qemu exited"
  [ "$(date +%s)" -lt "$deadline" ] || fail "depot not ready after ${timeout}s"
  [ -n "$token" ] || token=$(tr -d '\r' <"$work/console.log" | sed -n 's/.*DEPOT-API-TOKEN: \([0-9a-f]*\).*/\1/p' | head -n1)
  sleep 2
done
ready=$(elapsed)
echo "depot answers /api/v1/health from the host after ${ready}s (qemu start to ready)"
auth=(-H "Authorization: Bearer $token")
until grep -q DEPOT-READY "$work/console.log"; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "no DEPOT-READY banner on the console"
  sleep 1
done
echo "console banner after $(elapsed)s:"
tr -d '\r' <"$work/console.log" | grep -E 'depot-firstboot:|Depot is ready|Management URL|iSCSI portal' | sed 's/^/  | /'
grep -q 'formatting blank disk /dev/vdb' "$work/console.log" || fail "second disk was not taken as the flash cache"

# Unauthenticated management calls are refused.
code=$(curl -s -o /dev/null -w '%{http_code}' "$api/api/v1/vms")
[ "$code" = 401 ] || fail "GET /api/v1/vms without token: HTTP $code (want 401)"

echo "creating VM boottest and vDisk boottest-d0 (256M, default vPool) through the API"
curl -sf "${auth[@]}" "$api/api/v1/vpools/default" >"$work/vpool.json" || fail "GET vpool default"
grep -q '/var/lib/depot/vpools/default/flash' "$work/vpool.json" || fail "default vPool: $(cat "$work/vpool.json")"
curl -sf "${auth[@]}" -H 'Content-Type: application/json' -d '{"name":"boottest"}' "$api/api/v1/vms" >/dev/null ||
  fail "POST /api/v1/vms"
curl -sf "${auth[@]}" -H 'Content-Type: application/json' \
  -d '{"name":"boottest-d0","vm":"boottest","size":"256M","vpool":"default"}' "$api/api/v1/vdisks" >/dev/null ||
  fail "POST /api/v1/vdisks"

url="iscsi://127.0.0.1:$iscsi_port/iqn.2026-11.io.depot:boottest/0"
qemu-img info "$url" | sed 's/^/  | /'
head -c $((32 << 20)) /dev/urandom >"$work/rand.bin"
t1=$(date +%s.%N)
qemu-img convert -n -f raw -O raw "$work/rand.bin" "$url" || fail "write over iSCSI"
qemu-img convert -f raw -O raw "$url" "$work/back.raw" || fail "read over iSCSI"
cmp -n $((32 << 20)) "$work/rand.bin" "$work/back.raw" || fail "data read back differs"
echo "wrote and read back 32 MiB over iSCSI, identical ($(python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.1f}')" "$t1" "$(date +%s.%N)")s under TCG)"
curl -sf "${auth[@]}" "$api/metrics" >"$work/metrics.txt" || fail "GET /metrics"
written=$(sed -n 's/^depot_vdisk_write_bytes_total{vdisk="boottest-d0",vm="boottest"} \([0-9]*\)$/\1/p' "$work/metrics.txt")
[ "${written:-0}" -ge $((32 << 20)) ] || fail "/metrics: write bytes ${written:-none}"
echo "/metrics: depot_vdisk_write_bytes_total{vm=boottest,vdisk=boottest-d0} = $written"
echo "PASS: boot-to-ready ${ready}s; image $(du -m "$img" | cut -f1) MiB"

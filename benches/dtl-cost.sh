#!/usr/bin/env bash
# What the mirror (DTL) costs the guest: two routers of a cluster (a
# 3-member etcd and an S3 server on loopback), two VMs on r1 with one vDisk
# each — one mirrored to r2 with `--dtl sync` (the default), one with
# `--dtl none` — and the same fio jobs (libiscsi engine) on each, side by
# side in one run: 4 KiB random writes at queue depth 32, 1 MiB sequential
# writes at queue depth 8, and 4 KiB writes at queue depth 1 each followed
# by SYNCHRONIZE CACHE (each commit waits for the mirror: what a database's
# commit sees).
#
#   benches/dtl-cost.sh [--runtime SECONDS] [--repeats N] [--smoke]
#
# Env: DEPOT_BIN (default: a release build of this tree), DEPOT_FIO,
# S3_ENDPOINT/S3_BUCKET/S3_KEY/S3_SECRET (default: moto_server, started
# here). Defaults: 5 s per job, 3 repeats per mode (medians). --smoke: 2 s,
# once (CI keeps the script working; its numbers mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
RUNTIME=5
REPEATS=3
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) RUNTIME=$2; shift 2 ;;
    --repeats) REPEATS=$2; shift 2 ;;
    --smoke) RUNTIME=2; REPEATS=1; shift ;;
    *) echo "usage: $0 [--runtime SECONDS] [--repeats N] [--smoke]" >&2; exit 2 ;;
  esac
done
bench_tools
grid_start r1 r2
cli() { "$DEPOT" --api "http://${API[r1]}" "$@"; }
curl -s -f -o /dev/null -X POST "http://${API[r1]}/api/v1/vpools" -H 'content-type: application/json' \
  -d "{\"name\":\"s3p\",\"backend\":{\"type\":\"s3\",\"endpoint\":\"$S3_ENDPOINT\",\"bucket\":\"$S3_BUCKET\",\"region\":\"us-east-1\",\"access_key_id\":\"$S3_KEY\",\"secret_access_key\":\"$S3_SECRET\",\"allow_http\":true},\"policy\":{\"block_size\":512,\"write_buffer_bytes\":12884901888,\"read_cache_bytes\":1073741824,\"container_bytes\":67108864,\"ship_interval_secs\":3600}}"
declare -A LUN
for mode in sync none; do
  cli vm create "v-$mode" --dtl "$mode" >/dev/null
done
# A new vDisk for every run (the last one deleted, with its flash and its
# mirror), so the runs neither fill the flash nor inherit warm pages; a
# mirrored one is measured once its (empty) mirror is in sync.
fresh() {
  cli vdisk delete "d-$1" >/dev/null 2>&1 || true
  # LUNs are never reused: the new vDisk is the VM's next one.
  LUN[$1]=$(cli --json vdisk create "d-$1" --vm "v-$1" --size 8G --vpool s3p |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["lun"])')
  [ "$1" = sync ] || return 0
  for _ in $(seq 300); do
    [ "$(cli --json vdisk show d-sync | python3 -c 'import json,sys; print(json.load(sys.stdin)["dtl"]["state"])')" = in_sync ] && return 0
    sleep 0.2
  done
  echo "the mirror of d-sync did not get in sync" >&2
  exit 1
}
url() { echo "iscsi\\://${PORTAL[r1]//:/\\:}/iqn.2026-11.io.depot\\:v-$1/${LUN[$1]}"; }
# One fio job; prints "IOPS MB/s p50-µs p99-µs" of its writes.
job() {
  local out
  fresh "$1"
  out=$("$FIO" --name=j --ioengine=libiscsi --filename="$(url "$1")" --output-format=json \
    --time_based --runtime="$RUNTIME" --ramp_time=1 "${@:2}" 2>"$W/fio.err") ||
    { echo "fio failed: $out $(cat "$W/fio.err")" >&2; exit 1; }
  # fio may print notes before its JSON.
  echo "$out" | sed -n '/^{/,$p' | python3 -c '
import json, sys
w = json.load(sys.stdin)["jobs"][0]["write"]
p = w["clat_ns"]["percentile"]
print("%.0f %.0f %.0f %.0f" % (w["iops"], w["bw_bytes"] / 1e6, p["50.000000"] / 1e3, p["99.000000"] / 1e3))' ||
    { echo "fio said: $out" >&2; exit 1; }
}
echo "| job | dtl none | dtl sync | sync / none |"
echo "|---|---:|---:|---:|"
# Each job runs REPEATS times per mode, alternating which mode goes first
# (this VM's page cache makes whoever writes new pages first pay for them);
# the median of each mode is shown.
row() { # name field-index unit fio-args...
  local name=$1 k=$2 unit=$3
  shift 3
  local none=() sync=() i
  for i in $(seq "$REPEATS"); do
    if [ $((i % 2)) = 1 ]; then
      none+=("$(job none "$@" | cut -d' ' -f"$k")")
      sync+=("$(job sync "$@" | cut -d' ' -f"$k")")
    else
      sync+=("$(job sync "$@" | cut -d' ' -f"$k")")
      none+=("$(job none "$@" | cut -d' ' -f"$k")")
    fi
  done
  python3 - "$name" "$unit" "${none[*]}" "${sync[*]}" <<'PY'
import statistics, sys
name, unit, none, sync = sys.argv[1:]
n = statistics.median(float(x) for x in none.split())
s = statistics.median(float(x) for x in sync.split())
print(f"| {name} | {n:.0f} {unit} | {s:.0f} {unit} | {s / max(n, 1):.2f} |")
PY
}
row "4K random write QD32 (IOPS)" 1 "" --rw=randwrite --bs=4k --iodepth=32 --size=4G
row "1M sequential write QD8 (MB/s)" 2 "MB/s" --rw=write --bs=1M --iodepth=8 --size=4G
row "4K write + SYNCHRONIZE CACHE, QD1 (commits/s)" 1 "" --rw=randwrite --bs=4k --iodepth=1 --size=1G --fsync=1
row "4K write QD1, no flush: median latency" 3 "µs" --rw=randwrite --bs=4k --iodepth=1 --size=1G

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
#   benches/dtl-cost.sh [--runtime SECONDS] [--smoke]
#
# Env: DEPOT_BIN (default: a release build of this tree), DEPOT_FIO,
# S3_ENDPOINT/S3_BUCKET/S3_KEY/S3_SECRET (default: moto_server, started
# here). --smoke: 2 s per job (CI keeps the script working; its numbers
# mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
RUNTIME=20
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) RUNTIME=$2; shift 2 ;;
    --smoke) RUNTIME=2; shift ;;
    *) echo "usage: $0 [--runtime SECONDS] [--smoke]" >&2; exit 2 ;;
  esac
done
bench_tools
grid_start r1 r2
cli() { "$DEPOT" --api "http://${API[r1]}" "$@"; }
curl -s -f -o /dev/null -X POST "http://${API[r1]}/api/v1/vpools" -H 'content-type: application/json' \
  -d "{\"name\":\"s3p\",\"backend\":{\"type\":\"s3\",\"endpoint\":\"$S3_ENDPOINT\",\"bucket\":\"$S3_BUCKET\",\"region\":\"us-east-1\",\"access_key_id\":\"$S3_KEY\",\"secret_access_key\":\"$S3_SECRET\",\"allow_http\":true},\"policy\":{\"block_size\":512,\"write_buffer_bytes\":8589934592,\"read_cache_bytes\":1073741824,\"container_bytes\":67108864,\"ship_interval_secs\":3600}}"
for mode in sync none; do
  cli vm create "v-$mode" --dtl "$mode" >/dev/null
  cli vdisk create "d-$mode" --vm "v-$mode" --size 8G --vpool s3p >/dev/null
done
for _ in $(seq 300); do
  [ "$(cli --json vdisk show d-sync | python3 -c 'import json,sys; print(json.load(sys.stdin)["dtl"]["state"])')" = in_sync ] && break
  sleep 0.2
done
url() { echo "iscsi\\://${PORTAL[r1]//:/\\:}/iqn.2026-11.io.depot\\:v-$1/0"; }
# One fio job; prints "IOPS MB/s p50-µs p99-µs" of its writes.
job() {
  "$FIO" --name=j --ioengine=libiscsi --filename="$(url "$1")" --output-format=json \
    --time_based --runtime="$RUNTIME" --ramp_time=2 "${@:2}" |
    python3 -c '
import json, sys
w = json.load(sys.stdin)["jobs"][0]["write"]
p = w["clat_ns"]["percentile"]
print(f"{w[\"iops\"]:.0f} {w[\"bw_bytes\"] / 1e6:.0f} {p[\"50.000000\"] / 1e3:.0f} {p[\"99.000000\"] / 1e3:.0f}")'
}
echo "| job | dtl none | dtl sync | sync / none |"
echo "|---|---:|---:|---:|"
row() { # name field-index unit fio-args...
  local name=$1 k=$2 unit=$3
  shift 3
  local none sync
  none=$(job none "$@" | cut -d' ' -f"$k")
  sync=$(job sync "$@" | cut -d' ' -f"$k")
  echo "| $name | $none $unit | $sync $unit | $(python3 -c "print(f'{$sync / max($none, 1):.2f}')") |"
}
row "4K random write QD32 (IOPS)" 1 "" --rw=randwrite --bs=4k --iodepth=32 --size=4G
row "1M sequential write QD8 (MB/s)" 2 "MB/s" --rw=write --bs=1M --iodepth=8 --size=4G
row "4K write + SYNCHRONIZE CACHE, QD1 (commits/s)" 1 "" --rw=randwrite --bs=4k --iodepth=1 --size=1G --fsync=1
row "4K write QD1, no flush: median latency" 3 "µs" --rw=randwrite --bs=4k --iodepth=1 --size=1G
cli --json vdisk show d-sync | python3 -c 'import json,sys; d=json.load(sys.stdin)["dtl"]; print("mirror:", d["state"], "on", d["holder"], "-", d["bytes_sent"] >> 20, "MiB sent")'

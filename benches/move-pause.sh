#!/usr/bin/env bash
# The pause a live move costs the guest: two routers of a cluster (a
# 3-member etcd and an S3 server on loopback), one vDisk given 1 GiB of
# new un-shipped writes before every move (the vPool ships its own writes
# only after an hour), fio's libiscsi
# engine doing 4 KiB random reads and writes at queue depth 4 while the
# vDisk moves back and forth. For every move it reports the router's own
# pause (I/O held) and what the initiator saw: the longest gap between two
# completions and the longest completion latency within the move's window.
#
#   benches/move-pause.sh [--moves N] [--unshipped SIZE] [--smoke]
#
# Env: DEPOT_BIN (default: a release build of this tree), DEPOT_FIO,
# S3_ENDPOINT/S3_BUCKET/S3_KEY/S3_SECRET (default: moto_server from
# ~/.cache/depot-tools, started here). Everything binds to 127.0.0.1 and is
# stopped at exit. --smoke: 2 moves of 64 MiB (CI keeps the script working;
# its numbers mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
MOVES=10
UNSHIPPED=1G
while [ $# -gt 0 ]; do
  case $1 in
    --moves) MOVES=$2; shift 2 ;;
    --unshipped) UNSHIPPED=$2; shift 2 ;;
    --smoke) MOVES=2; UNSHIPPED=64M; shift ;;
    *) echo "usage: $0 [--moves N] [--unshipped SIZE] [--smoke]" >&2; exit 2 ;;
  esac
done
bench_tools
grid_start r1 r2
cli() { "$DEPOT" --api "http://${API[r1]}" "$@"; }
# An S3 vPool that ships only after an hour, so the un-shipped window stays.
curl -s -f -o /dev/null -X POST "http://${API[r1]}/api/v1/vpools" -H 'content-type: application/json' \
  -d "{\"name\":\"s3p\",\"backend\":{\"type\":\"s3\",\"endpoint\":\"$S3_ENDPOINT\",\"bucket\":\"$S3_BUCKET\",\"region\":\"us-east-1\",\"access_key_id\":\"$S3_KEY\",\"secret_access_key\":\"$S3_SECRET\",\"allow_http\":true},\"policy\":{\"block_size\":512,\"write_buffer_bytes\":4294967296,\"read_cache_bytes\":1073741824,\"container_bytes\":67108864,\"ship_interval_secs\":3600}}"
cli vm create mover >/dev/null
cli vdisk create mover-root --vm mover --size 4G --vpool s3p >/dev/null
URL="iscsi\\://${PORTAL[r1]//:/\\:}/iqn.2026-11.io.depot\\:mover/0"

# Before every move, $UNSHIPPED of new un-shipped writes, so each move
# hands over at least a full window (more while the router the vDisk
# leaves has not shipped what earlier moves brought). The table shows each
# move's window.
# What waits to ship on the owner (the router the next move leaves).
unshipped() {
  "$DEPOT" --api "http://${API[$1]}" --json vpool show s3p |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_waiting_to_ship"])'
}
fill() {
  "$FIO" --name=fill --ioengine=libiscsi --filename="$URL" --rw=write --bs=1M --iodepth=8 \
    --size="$UNSHIPPED" >/dev/null
}

# I/O during the moves, every completion logged with its Unix time; it
# runs until the moves are done (a move of a large window takes longer
# than its pause), then fio is stopped with SIGINT and writes its logs.
RUNTIME=$((MOVES * 60 + 60))
"$FIO" --name=io --ioengine=libiscsi --filename="$URL" --rw=randrw --bs=4k --iodepth=4 \
  --size=1G --time_based --runtime="$RUNTIME" --write_lat_log="$W/lat" --log_avg_msec=0 \
  --log_unix_epoch=1 --per_job_logs=0 >"$W/fio.out" 2>&1 &
FIO_PID=$!
sleep 4
: >"$W/moves"
to=r2
for i in $(seq "$MOVES"); do
  [ "$to" = r2 ] && from=r1 || from=r2
  fill
  window=$(unshipped "$from")
  t0=$(date +%s%3N)
  json=$("$DEPOT" --api "http://${API[r1]}" --json vdisk move mover-root --to "$to")
  t1=$(date +%s%3N)
  echo "$t0 $t1 $(echo "$json" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["pause_ms"], m["precopied_bytes"], m["paused_bytes"])') $window" >>"$W/moves"
  [ "$to" = r2 ] && to=r1 || to=r2
  sleep 4
done
kill -INT "$FIO_PID" 2>/dev/null || true
wait "$FIO_PID" || true
grep -q 'err= 0' "$W/fio.out" || { echo "fio saw I/O errors (or did not finish):"; cat "$W/fio.out"; exit 1; }

python3 - "$W/moves" "$W/lat_clat.log" <<'PY'
import statistics, sys
moves = [l.split() for l in open(sys.argv[1])]
done = []
for line in open(sys.argv[2]):
    f = line.split(",")
    done.append((int(f[0]), int(f[1]) / 1e6))  # (completion ms, latency ms)
done.sort()
rows = []
print("| move | un-shipped | router pause | precopied | held-copy | longest gap seen | longest latency seen |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for i, (t0, t1, pause, pre, held, window) in enumerate(moves, 1):
    t0, t1 = int(t0), int(t1)
    # Gaps between consecutive completions that overlap the move (the
    # completion before it and the one after it included).
    times = [t for t, _ in done]
    if not any(t0 <= t <= t1 for t in times):
        sys.exit(f"move {i}: no I/O completed during it; the result would mean nothing")
    gaps = [b - a for a, b in zip(times, times[1:]) if b >= t0 and a <= t1]
    lat = max([l for t, l in done if t0 <= t <= t1 + 1000] or [0])
    rows.append((int(pause), max(gaps), lat))
    print(f"| {i} | {int(window) >> 20} MiB | {pause} ms | {int(pre) >> 20} MiB | {int(held) >> 20} MiB | {max(gaps)} ms | {lat:.0f} ms |")
for name, k in (("router pause", 0), ("gap seen", 1), ("latency seen", 2)):
    v = [r[k] for r in rows]
    print(f"{name}: median {statistics.median(v):.0f} ms, max {max(v):.0f} ms")
PY

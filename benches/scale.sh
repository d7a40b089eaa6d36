#!/usr/bin/env bash
# SCALE benchmarks for Depot (see docs/bench-scale.md):
#   1. memory: VmRSS/VmHWM of `depot serve` with many idle engine vDisks
#      (default 100 vDisks of 4 GiB across 10 VMs, 1 MiB written to each);
#   2. sessions: 32 concurrent iSCSI sessions (fio, libiscsi engine, one
#      session per job, across VMs and LUNs), per-session IOPS min/median/max,
#      every session must make progress;
#   3. snapshot and clone creation through the REST API on a vDisk with data
#      (the engine-level criterion bench is `cargo bench -p depot-benches
#      --bench snapshot`; this script runs it unless --no-cargo-benches);
#   4. restart of a 100 GiB vDisk from the backend alone (runs
#      `cargo bench -p depot-benches --bench restart`).
#
#   benches/scale.sh [--smoke] [--out DIR] [--runtime SECONDS] [--no-cargo-benches]
#
# Everything runs on 127.0.0.1: the portal on port 3500, the API on 3501, a
# private --data-dir under /tmp. Everything the script starts is stopped on
# exit, failure included. --smoke: 2 VMs x 2 vDisks, 4 sessions for 3 s and
# tiny restart stages, so CI can run it in well under a minute (builds
# excluded); its numbers mean nothing. DEPOT_BIN=path uses that binary
# instead of building a release one. The cargo benches work under
# DEPOT_BENCH_DIR (default /tmp); the full restart bench needs about 8 GB
# there at its peak (4 GiB of data, plus a 1.25 GiB checkpoint and its
# table file for the fully written case).
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
OUT=""
RUNTIME=20
CARGO_BENCHES=1
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --runtime) RUNTIME=$2; shift 2 ;;
    --no-cargo-benches) CARGO_BENCHES=0; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$SMOKE" = 1 ]; then
  VMS=2; DISKS_PER_VM=2; DISK_SIZE=1G; SESSIONS=4; RUNTIME=3; IDLE=2; SETTLE=1; SNAPS=3
else
  VMS=10; DISKS_PER_VM=10; DISK_SIZE=4G; SESSIONS=32; IDLE=35; SETTLE=15; SNAPS=20
fi
OUT=${OUT:-$(mktemp -d /tmp/depot-scale.XXXXXX)}
mkdir -p "$OUT"
DATA=$(mktemp -d /tmp/depot-scale-data.XXXXXX)
PORT=3500
API_PORT=3501
API=http://127.0.0.1:$API_PORT

. benches/lib.sh
bench_tools

DEPOT_PID=""
FIO_PIDS=()
cleanup() {
  local rc=$?
  for p in "${FIO_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$DEPOT_PID" ]; then
    kill -TERM "$DEPOT_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$DEPOT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DEPOT_PID" 2>/dev/null || true
    wait "$DEPOT_PID" 2>/dev/null || true
  fi
  rm -rf "$DATA"
  [ $rc = 0 ] || echo "scale.sh failed (rc $rc); logs in $OUT" >&2
}
trap cleanup EXIT

status() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
mib() { echo $(( $1 / 1024 )); }
api() { curl -sS -f -H 'content-type: application/json' "$@"; }
mem_row() { # label
  printf '| %s | %s | %s | %s |\n' "$1" "$(mib "$(status "$DEPOT_PID" VmRSS)")" \
    "$(mib "$(status "$DEPOT_PID" VmHWM)")" "$(status "$DEPOT_PID" Threads)" >>"$OUT/memory.md"
}

NO_COLOR=1 "$DEPOT" serve --data-dir "$DATA" --iscsi-listen 127.0.0.1:$PORT \
  --api-listen 127.0.0.1:$API_PORT >"$OUT/depot.log" 2>&1 &
DEPOT_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "$API/api/v1/health" && break; sleep 0.1; done
api "$API/api/v1/health" >/dev/null

# ---------------------------------------------------------------- 1. memory
{
  echo "$((VMS * DISKS_PER_VM)) engine vDisks of $DISK_SIZE (thin) across $VMS VMs, vPool \"default\""
  echo
  echo "| phase | VmRSS MiB | VmHWM MiB | threads |"
  echo "|---|---:|---:|---:|"
} >"$OUT/memory.md"
mem_row "started, empty"
for v in $(seq 0 $((VMS - 1))); do
  api -X POST "$API/api/v1/vms" -d "{\"name\":\"vm$v\"}" >/dev/null
  for d in $(seq 0 $((DISKS_PER_VM - 1))); do
    api -X POST "$API/api/v1/vdisks" \
      -d "{\"name\":\"vm$v-d$d\",\"vm\":\"vm$v\",\"size\":\"$DISK_SIZE\",\"kind\":\"engine\"}" >/dev/null
  done
done
mem_row "$((VMS * DISKS_PER_VM)) vDisks created"
url() { # vm lun -> fio filename (colons escaped)
  local u="iscsi://127.0.0.1:$PORT/iqn.2026-11.io.depot:vm$1/$2"
  echo "${u//:/\\:}"
}
# Write 1 MiB (16 x 64 KiB) to the start of every vDisk, one VM at a time.
for v in $(seq 0 $((VMS - 1))); do
  args=()
  for d in $(seq 0 $((DISKS_PER_VM - 1))); do
    args+=(--name="w$v-$d" --filename="$(url "$v" "$d")")
  done
  "$FIO" --output="$OUT/fill-vm$v.txt" --ioengine=libiscsi --rw=write --bs=64k --size=1M \
    --iodepth=4 "${args[@]}" >/dev/null
done
mem_row "1 MiB written to each vDisk"
sleep "$IDLE"
mem_row "idle ${IDLE} s later (containers sealed and shipped)"
curl -s "$API/metrics" >"$OUT/metrics-idle.txt" || true
cat "$OUT/memory.md"

# -------------------------------------------------------------- 2. sessions
# One job per session: job i uses VM (i mod VMS), LUN (i div VMS).
jobs=()
for i in $(seq 0 $((SESSIONS - 1))); do
  jobs+=(--name="s$i" --filename="$(url $((i % VMS)) $(((i / VMS) % DISKS_PER_VM)))")
done
echo "$SESSIONS sessions x ${RUNTIME} s, 4K randrw 70/30, iodepth 4" >&2
"$FIO" --ioengine=libiscsi --rw=randrw --rwmixread=70 --bs=4k --iodepth=4 --size=256M \
  --time_based --runtime="$RUNTIME" --randrepeat=0 --norandommap \
  --output-format=json --output="$OUT/sessions.json" "${jobs[@]}" >/dev/null &
FIO_PIDS+=($!)
wait "${FIO_PIDS[-1]}"
FIO_PIDS=()
mem_row "after $SESSIONS sessions x ${RUNTIME} s"
sleep "$SETTLE"
mem_row "$SETTLE s later (idle blocking threads exited)"
python3 - "$OUT/sessions.json" "$SESSIONS" >"$OUT/sessions.md" <<'PY'
import json, statistics, sys
txt = open(sys.argv[1]).read()
doc = json.loads(txt[txt.index("{"):])
jobs = doc["jobs"]
iops = sorted(j["read"]["iops"] + j["write"]["iops"] for j in jobs)
ios = [j["read"]["total_ios"] + j["write"]["total_ios"] for j in jobs]
errs = [j["error"] for j in jobs]
print(f"| sessions | IOPS min | IOPS median | IOPS max | total IOPS | max/min | sessions with 0 I/Os | job errors |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
print(f"| {len(jobs)} | {iops[0]:.0f} | {statistics.median(iops):.0f} | {iops[-1]:.0f} | {sum(iops):.0f} | "
      f"{iops[-1] / max(iops[0], 1e-9):.2f} | {sum(1 for n in ios if n == 0)} | {sum(1 for e in errs if e)} |")
if len(jobs) != int(sys.argv[2]) or any(n == 0 for n in ios) or any(errs):
    sys.exit("a session made no progress or failed")
PY
cat "$OUT/sessions.md"

# ----------------------------------------------- 3. snapshot/clone via API
# vm0-d0 has 1 MiB plus the session job's random writes.
: >"$OUT/api-times.txt"
for i in $(seq 1 "$SNAPS"); do
  t=$(api -o /dev/null -w '%{time_total}' -X POST "$API/api/v1/vdisks/vm0-d0/snapshots" -d "{\"name\":\"b$i\"}")
  echo "snapshot $t" >>"$OUT/api-times.txt"
  t=$(api -o /dev/null -w '%{time_total}' -X POST "$API/api/v1/vdisks" \
    -d "{\"name\":\"c$i\",\"vm\":\"vm0\",\"from\":\"vm0-d0@b$i\"}")
  echo "clone $t" >>"$OUT/api-times.txt"
done
python3 - "$OUT/api-times.txt" >"$OUT/api.md" <<'PY'
import statistics, sys
t = {}
for line in open(sys.argv[1]):
    k, v = line.split()
    t.setdefault(k, []).append(float(v) * 1000)
print("| REST call (curl time_total) | n | min ms | median ms | max ms |")
print("|---|---:|---:|---:|---:|")
for k, label in (("snapshot", "POST /vdisks/vm0-d0/snapshots"), ("clone", "POST /vdisks (from vm0-d0@snap)")):
    v = sorted(t[k])
    print(f"| {label} | {len(v)} | {v[0]:.1f} | {statistics.median(v):.1f} | {v[-1]:.1f} |")
PY
cat "$OUT/api.md"
mem_row "after $SNAPS snapshots and clones"

kill -TERM "$DEPOT_PID"
wait "$DEPOT_PID" || { echo "depot serve exited with an error" >&2; exit 1; }
DEPOT_PID=""

# ------------------------------------------------- engine-level cargo benches
if [ "$CARGO_BENCHES" = 1 ]; then
  if [ "$SMOKE" = 1 ]; then
    DEPOT_RESTART_SIZE_GIB=1 DEPOT_RESTART_SPREAD=4096 DEPOT_RESTART_SEQ_MIB=16 DEPOT_RESTART_STAGES=2 \
      cargo bench -p depot-benches --bench restart --quiet 2>"$OUT/restart.log" | tee "$OUT/restart.md"
    DEPOT_BENCH_QUICK=1 cargo bench -p depot-benches --bench snapshot --quiet 2>&1 | tee "$OUT/snapshot.txt" | grep -E '^(snapshot|clone)|time:' || true
  else
    cargo bench -p depot-benches --bench restart --quiet 2>"$OUT/restart.log" | tee "$OUT/restart.md"
    cargo bench -p depot-benches --bench snapshot --quiet 2>&1 | tee "$OUT/snapshot.txt" | grep -E '^(snapshot|clone)|time:' || true
  fi
fi
echo "results in $OUT" >&2

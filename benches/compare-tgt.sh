#!/usr/bin/env bash
# Side-by-side benchmark: Debian's tgt (file-backed LUN) against Depot (an
# engine vDisk and a raw-file vDisk), the same fio jobs through fio's libiscsi
# engine, all on 127.0.0.1, interleaved and repeated; prints one table of
# medians with the Depot/tgt ratio per job. See docs/BENCHMARKS.md.
#
#   benches/compare-tgt.sh [--runtime SECONDS] [--repeat N] [--size SIZE] [--smoke] [--out DIR]
#
# --smoke: 2-second jobs, one repeat, 64 MiB LUNs (CI runs this so the script
# cannot rot; its numbers mean nothing). DEPOT_BIN=path uses that binary
# instead of building a release one. The LUNs' data is deleted at exit; the
# fio results, engine metrics and logs stay in DIR (default: a new
# /tmp/depot-bench.XXXXXX).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=15
REPEAT=3
SIZE=1G
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime) RUNTIME=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --smoke) RUNTIME=2; REPEAT=1; SIZE=64M; shift ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$(mktemp -d /tmp/depot-bench.XXXXXX)}
mkdir -p "$OUT"
. benches/lib.sh
bench_tools tgt

TGT_PORT=3262
TGT_CTRL=7
DEPOT_PORT=3263
DEPOT_API_PORT=3264
TGT_IQN=iqn.2026-11.bench.tgt:lun
cleanup() {
  tgtadm -C $TGT_CTRL --lld iscsi --op delete --force --mode target --tid 1 >/dev/null 2>&1 || true
  tgtadm -C $TGT_CTRL --lld iscsi --op delete --mode system >/dev/null 2>&1 || true
  [ -n "${TGT_PID:-}" ] && kill -9 "$TGT_PID" 2>/dev/null || true
  [ -n "${DEPOT_PID:-}" ] && kill -TERM "$DEPOT_PID" 2>/dev/null && wait "$DEPOT_PID" 2>/dev/null || true
  # The LUNs' data (GiBs: tgt's image, Depot's flash and backend) goes; the
  # results, metrics and logs stay in $OUT.
  rm -rf "$OUT/tgt/lun1.img" "$OUT/depot-data"
}
trap cleanup EXIT

# tgt: one file-backed LUN (rdwr backing store, as Debian ships it).
mkdir -p "$OUT/tgt"
truncate -s "$SIZE" "$OUT/tgt/lun1.img"
tgtd -f -C $TGT_CTRL --iscsi portal=127.0.0.1:$TGT_PORT >"$OUT/tgt/tgtd.log" 2>&1 &
TGT_PID=$!
for _ in $(seq 50); do tgtadm -C $TGT_CTRL --lld iscsi --op show --mode target >/dev/null 2>&1 && break; sleep 0.1; done
tgtadm -C $TGT_CTRL --lld iscsi --op new --mode target --tid 1 -T $TGT_IQN
tgtadm -C $TGT_CTRL --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$OUT/tgt/lun1.img"
tgtadm -C $TGT_CTRL --lld iscsi --op bind --mode target --tid 1 -I ALL

# Depot: LUN 0 an engine vDisk, LUN 1 a raw-file vDisk.
cat >"$OUT/depot.toml" <<EOF
[[vm]]
name = "bench"
[[vm.disk]]
name = "engine"
size = "$SIZE"
kind = "engine"
[[vm.disk]]
name = "raw"
size = "$SIZE"
kind = "raw"
EOF
NO_COLOR=1 "$DEPOT" serve --config "$OUT/depot.toml" --data-dir "$OUT/depot-data" \
  --iscsi-listen 127.0.0.1:$DEPOT_PORT --api-listen 127.0.0.1:$DEPOT_API_PORT >"$OUT/depot.log" 2>&1 &
DEPOT_PID=$!
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$DEPOT_PORT) 2>/dev/null && break; sleep 0.1; done

declare -A URL PID
URL[tgt]="iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/1"; PID[tgt]=$TGT_PID
URL[engine]="iscsi://127.0.0.1:$DEPOT_PORT/iqn.2026-11.io.depot:bench/0"; PID[engine]=$DEPOT_PID
URL[raw]="iscsi://127.0.0.1:$DEPOT_PORT/iqn.2026-11.io.depot:bench/1"; PID[raw]=$DEPOT_PID
TARGETS="tgt engine raw"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# The engine's own counters after each of its jobs (write-buffer throttling,
# in-place and relocated clusters), so the table can say why a write run
# was slow.
engine_metrics() {
  python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
    "http://127.0.0.1:$DEPOT_API_PORT/metrics" >"$1" || true
}
fio_job() { # target name rw bs qd runtime
  local t=$1 name=$2 rw=$3 bs=$4 qd=$5 rt=$6
  local esc=${URL[$t]//:/\\:}
  local before after
  # Every job starts with no dirty pages: without this, a job pays for the
  # writeback of whatever ran before it (the kernel flushes dirty pages 30 s
  # after they were written, well into later jobs), and the engine, which
  # always runs right after tgt, would write while tgt's writes flush.
  sync
  before=$(ticks "${PID[$t]}")
  "$FIO" --name="$name" --ioengine=libiscsi --filename="$esc" --rw="$rw" --bs="$bs" \
    --iodepth="$qd" --numjobs=1 --size="$SIZE" --time_based --runtime="$rt" --ramp_time=1 \
    --randrepeat=0 --norandommap --percentile_list=50:99 --output-format=json \
    --output="$OUT/$t-$name-$REP.json" >/dev/null
  after=$(ticks "${PID[$t]}")
  echo "$(( after - before ))" >"$OUT/$t-$name-$REP.ticks"
  [ "$t" = engine ] && engine_metrics "$OUT/engine-$name-$REP.metrics"
  return 0
}

# The machine's page-cache write cost, for reading the write rows: a
# log-structured engine writes new pages, tgt and the raw vDisk rewrite cached
# ones (docs/design-overwrite-in-place.md). dd of $SIZE into a new file, then
# over the same, now cached, file.
dd_mbs() { dd "$@" 2>&1 | awk '/copied/ {printf "%.0f", $(NF-1) * ($NF == "GB/s" ? 1000 : 1)}'; }
PROBE_MB=$(( $(numfmt --from=iec "$SIZE") >> 20 ))
NEW_MBS=$(dd_mbs if=/dev/zero of="$OUT/probe.img" bs=1M count="$PROBE_MB")
CACHED_MBS=$(dd_mbs if=/dev/zero of="$OUT/probe.img" bs=1M count="$PROBE_MB" conv=notrunc)
rm -f "$OUT/probe.img"
echo "$NEW_MBS $CACHED_MBS" >"$OUT/page-cache-probe"

# Proactive reclaim: some VMs run a DAMON "pageout" scheme that reclaims
# memory left untouched for a while (the development VM's pages out memory
# idle for 60 s, up to 128 MiB/s), so cached LUN data can leave the page
# cache between repeats and freed pages come back through the host. Bytes
# it paged out during the run go into the report; "-" when no such scheme
# runs or its counters cannot be read.
damon_paged_out() {
  local total=0 found=0 k s v
  for k in /sys/kernel/mm/damon/admin/kdamonds/*/; do
    [ "$(cat "$k/state" 2>/dev/null)" = on ] || continue
    echo update_schemes_stats >"$k/state" 2>/dev/null || continue
    for s in "$k"contexts/*/schemes/*/; do
      [ "$(cat "$s/action" 2>/dev/null)" = pageout ] || continue
      v=$(cat "$s/stats/sz_applied" 2>/dev/null) || continue
      found=1
      total=$(( total + v ))
    done
  done
  if [ "$found" = 1 ]; then echo "$total"; else echo -; fi
}
DAMON_BEFORE=$(damon_paged_out)

# Fill every LUN once so reads hit written data, not holes.
for t in $TARGETS; do
  esc=${URL[$t]//:/\\:}
  "$FIO" --name=fill --ioengine=libiscsi --filename="$esc" --rw=write --bs=1M --iodepth=8 \
    --size="$SIZE" --output-format=json --output="$OUT/$t-fill.json" >/dev/null
done
engine_metrics "$OUT/engine-fill.metrics"

JOBS="randread-4k-qd32:randread:4k:32 randwrite-4k-qd32:randwrite:4k:32 randread-4k-qd1:randread:4k:1 seqread-1m-qd8:read:1M:8 seqwrite-1m-qd8:write:1M:8"
for REP in $(seq "$REPEAT"); do
  for j in $JOBS; do
    IFS=: read -r name rw bs qd <<<"$j"
    for t in $TARGETS; do
      echo "rep $REP $name $t" >&2
      fio_job "$t" "$name" "$rw" "$bs" "$qd" "$RUNTIME"
    done
  done
done

DAMON_AFTER=$(damon_paged_out)
if [ "$DAMON_BEFORE" != - ] && [ "$DAMON_AFTER" != - ]; then
  echo $(( (DAMON_AFTER - DAMON_BEFORE) >> 20 )) >"$OUT/damon-paged-out-mib"
else
  echo - >"$OUT/damon-paged-out-mib"
fi

python3 - "$OUT" "$REPEAT" "$RUNTIME" <<'PY'
import json, os, statistics, sys
out, repeat, runtime = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
hz = os.sysconf("SC_CLK_TCK")
jobs = ["randread-4k-qd32", "randwrite-4k-qd32", "randread-4k-qd1", "seqread-1m-qd8", "seqwrite-1m-qd8"]
targets = ["tgt", "engine", "raw"]
def one(t, j, r):
    with open(f"{out}/{t}-{j}-{r}.json") as f:
        txt = f.read()
    doc = json.loads(txt[txt.index("{"):])
    job = doc["jobs"][0]
    side = "read" if job["read"]["io_bytes"] > 0 else "write"
    s = job[side]
    pct = s["clat_ns"].get("percentile", {})
    ticks = int(open(f"{out}/{t}-{j}-{r}.ticks").read())
    return {"iops": s["iops"], "mbs": s["bw_bytes"] / 1e6,
            "p50": pct.get("50.000000", 0) / 1000, "p99": pct.get("99.000000", 0) / 1000,
            "cpu": 100.0 * ticks / hz / (runtime + 1)}
med = {}
for t in targets:
    for j in jobs:
        runs = [one(t, j, r) for r in range(1, repeat + 1)]
        med[(t, j)] = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
print(f"medians of {repeat} run(s), {runtime:.0f} s each; target CPU in % of one core")
print()
print("| job | target | IOPS | MB/s | p50 µs | p99 µs | target CPU % | IOPS vs tgt | IOPS vs raw |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for j in jobs:
    base = med[("tgt", j)]["iops"] or 1
    raw = med[("raw", j)]["iops"] or 1
    for t in targets:
        m = med[(t, j)]
        ratio = m["iops"] / base
        vs_raw = f"{m['iops'] / raw:.2f}×" if t == "engine" else ""
        print(f"| {j} | {t} | {m['iops']:.0f} | {m['mbs']:.1f} | {m['p50']:.0f} | {m['p99']:.0f} | {m['cpu']:.0f} | {ratio:.2f}× | {vs_raw} |")

# The performance issue's targets, checked against this run.
def r(t, j, k="iops"):
    return med[(t, j)][k] / (med[("tgt", j)][k] or 1)
checks = [
    ("engine ≥ 2× tgt, 4K random read QD32", r("engine", "randread-4k-qd32"), 2.0),
    ("engine ≥ 2× tgt, 4K random write QD32", r("engine", "randwrite-4k-qd32"), 2.0),
    ("engine ≥ 1.2× tgt, 1M sequential read", r("engine", "seqread-1m-qd8"), 1.2),
    ("engine ≥ 1.5× tgt, 1M sequential write", r("engine", "seqwrite-1m-qd8"), 1.5),
    ("engine QD1 p50 ≤ tgt's (tgt p50 / engine p50 ≥ 1)",
     1 / (r("engine", "randread-4k-qd1", "p50") or 1), 1.0),
    ("engine ≥ 0.8× raw, 4K random read QD32",
     med[("engine", "randread-4k-qd32")]["iops"] / (med[("raw", "randread-4k-qd32")]["iops"] or 1), 0.8),
]
new_mbs, cached_mbs = open(f"{out}/page-cache-probe").read().split()
print()
print(f"page cache (dd 1 MiB blocks, no sync): new pages {new_mbs} MB/s, cached pages {cached_mbs} MB/s")
damon = open(f"{out}/damon-paged-out-mib").read().strip()
if damon == "-":
    print("proactive reclaim: no DAMON pageout scheme running")
else:
    print(f"proactive reclaim: DAMON pageout paged out {damon} MiB during the run")

# What the engine's counters moved by during each of its runs.
def counters(path):
    want = {"depot_vpool_write_throttle_seconds_total": "throttled",
            "depot_vpool_rewritten_clusters_total": "in_place",
            "depot_vpool_relocated_clusters_total": "relocated"}
    got = {}
    try:
        for line in open(path):
            name = line.partition("{")[0].partition(" ")[0]
            if name in want:
                got[want[name]] = got.get(want[name], 0.0) + float(line.rsplit(" ", 1)[-1])
    except (OSError, ValueError):
        pass
    return got
prev = counters(f"{out}/engine-fill.metrics")
rows = []
for rep in range(1, repeat + 1):
    for j in jobs:
        cur = counters(f"{out}/engine-{j}-{rep}.metrics")
        d = {k: cur.get(k, 0.0) - prev.get(k, 0.0) for k in ("throttled", "in_place", "relocated")}
        if cur:
            prev = cur
        if any(v > 0 for v in d.values()):
            rows.append((j, rep, d, one("engine", j, rep)["mbs"]))
if rows:
    print()
    print("engine counters per run (from its /metrics; throttled = seconds writes waited for a full write buffer, summed over writes)")
    print()
    print("| job | repeat | MB/s | throttled s | MiB in place | MiB relocated |")
    print("|---|---:|---:|---:|---:|---:|")
    for j, rep, d, mbs in rows:
        print(f"| {j} | {rep} | {mbs:.0f} | {d['throttled']:.1f} | {d['in_place'] * 4096 / 2**20:.0f} | {d['relocated'] * 4096 / 2**20:.0f} |")
print()
print("| target | this run | met |")
print("|---|---:|---|")
for name, value, need in checks:
    print(f"| {name} | {value:.2f} | {'yes' if value >= need else 'no'} |")
PY

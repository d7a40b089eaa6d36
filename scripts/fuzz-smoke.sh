#!/usr/bin/env bash
# Fuzz smoke: builds every fuzz target in fuzz/ with libFuzzer's coverage
# instrumentation on stable Rust, then runs each one for a bounded time from
# its committed seeds (fuzz/corpus/<target>/), failing on any crash, panic,
# timeout or out-of-memory. Prints one line per target with the runs done.
# Targets run side by side, one per core (FUZZ_JOBS overrides).
#
#   scripts/fuzz-smoke.sh [SECONDS_PER_TARGET]          (default 5)
#   FUZZ_TARGETS="pdu chap" scripts/fuzz-smoke.sh 600   (some targets, longer)
#
# The instrumentation is what `cargo fuzz build --sanitizer none` asks rustc
# for, all of it stable (no sanitizer, so no nightly); scripts/fuzz-rustc.sh
# adds it to the crates under test only. The `fuzz` profile (fuzz/Cargo.toml)
# has debug assertions and overflow checks. Each fuzzer works on a temporary
# copy of the seeds, so what it adds to its corpus is never committed; a
# crashing input is copied to fuzz/artifacts/<target>/ (ignored by git) and
# printed in base64. Reproduce with fuzz/target/<host>/fuzz/<target> <file>.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;; esac

# libfuzzer-sys compiles libFuzzer (C++).
if ! command -v c++ >/dev/null && ! command -v clang++ >/dev/null; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends g++ >/dev/null
fi
command -v c++ >/dev/null || export CXX=clang++

triple=$(rustc -vV | sed -n 's/^host: //p')
# Instrumentation for the crates under test only (see the wrapper).
export RUSTC_WRAPPER=$PWD/scripts/fuzz-rustc.sh
targets=${FUZZ_TARGETS:-$(sed -n '/^\[\[bin\]\]/,/^name/ s/^name = "\(.*\)"/\1/p' fuzz/Cargo.toml)}
bins=()
for t in $targets; do bins+=(--bin "$t"); done

t0=$(date +%s)
cargo build --manifest-path fuzz/Cargo.toml --target "$triple" --profile fuzz "${bins[@]}"
echo "fuzz build: $(($(date +%s) - t0))s"

out=${CARGO_TARGET_DIR:-fuzz/target}/$triple/fuzz
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One target: fuzz a copy of its seeds; exit code in $work/$t.rc.
fuzz_one() {
  local t=$1 rc=0
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  cp -r "fuzz/corpus/$t/." "$work/$t/corpus/"
  "$out/$t" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=8192 \
    -print_final_stats=1 -artifact_prefix="$work/$t/artifacts/" "$work/$t/corpus" \
    >"$work/$t/log" 2>&1 || rc=$?
  echo "$rc" >"$work/$t/rc"
}

# As many targets at once as there are cores (each fuzzer uses one).
jobs=${FUZZ_JOBS:-$(nproc)}
t0=$(date +%s)
for t in $targets; do
  [ -n "$(ls -A "fuzz/corpus/$t" 2>/dev/null)" ] || continue
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  fuzz_one "$t" &
done
wait

failed=0
passed=0
for t in $targets; do
  if [ ! -f "$work/$t/rc" ]; then
    echo "fuzz $t: FAILED: no seeds in fuzz/corpus/$t"
    failed=$((failed + 1))
    continue
  fi
  rc=$(cat "$work/$t/rc")
  log=$work/$t/log
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  seed=$(sed -n 's/^INFO: Seed: *//p' "$log" | tail -n 1)
  cov=$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' "$log" | tail -n 1)
  n_seeds=$(find "fuzz/corpus/$t" -type f | wc -l)
  n_corpus=$(find "$work/$t/corpus" -type f | wc -l)
  if [ "$rc" -eq 0 ]; then
    echo "fuzz $t: ${runs:-?} runs in ${secs}s (${rate:-?}/s), coverage ${cov:-?}, corpus $n_seeds -> $n_corpus, seed ${seed:-?}"
    passed=$((passed + 1))
  else
    echo "fuzz $t: FAILED (exit $rc) after ${runs:-?} runs, seed ${seed:-?}"
    grep -v '^#[0-9]' "$log" | tail -n 60
    mkdir -p "fuzz/artifacts/$t"
    for a in "$work/$t/artifacts"/*; do
      [ -f "$a" ] || continue
      cp "$a" "fuzz/artifacts/$t/"
      echo "input fuzz/artifacts/$t/${a##*/} (base64, first 3 KB): $(head -c 3072 "$a" | base64 -w0)"
    done
    failed=$((failed + 1))
  fi
done
echo "fuzz runs: $(($(date +%s) - t0))s, $jobs at a time"
echo "fuzz smoke: $passed targets passed, $failed failed"
[ "$failed" -eq 0 ]

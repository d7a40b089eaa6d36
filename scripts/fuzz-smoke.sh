#!/usr/bin/env bash
# Fuzz smoke: builds every fuzz target in fuzz/ with libFuzzer's coverage
# instrumentation on stable Rust, then runs each one for a bounded time from
# its committed seeds (fuzz/corpus/<target>/), failing on any crash, panic,
# timeout or out-of-memory. Prints one line per target with the runs done.
#
#   scripts/fuzz-smoke.sh [SECONDS_PER_TARGET]     (default 5)
#   FUZZ_TARGETS="pdu chap" scripts/fuzz-smoke.sh 60   (some targets only)
#
# The instrumentation is what `cargo fuzz build --sanitizer none` asks rustc
# for, all of it stable (no sanitizer, so no nightly); scripts/fuzz-rustc.sh
# adds it to the crates under test only. The `fuzz` profile (fuzz/Cargo.toml)
# has debug assertions and overflow checks. The seeds are copied to a temporary directory, so what the
# fuzzer adds to its corpus is never committed; a crashing input is kept in
# fuzz/artifacts/<target>/ (ignored by git) and printed in base64.
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

out=fuzz/target/$triple/fuzz
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
passed=0
for t in $targets; do
  seeds=fuzz/corpus/$t
  if [ -z "$(ls -A "$seeds" 2>/dev/null)" ]; then
    echo "fuzz $t: FAILED: no seeds in $seeds"
    failed=$((failed + 1))
    continue
  fi
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  cp -r "$seeds/." "$work/$t/"
  log=$work/$t.log
  set +e
  "$out/$t" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=8192 \
    -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" "$work/$t" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  seed=$(sed -n 's/^INFO: Seed: *//p' "$log" | tail -n 1)
  cov=$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' "$log" | tail -n 1)
  n_seeds=$(find "$seeds" -type f | wc -l)
  n_corpus=$(find "$work/$t" -type f | wc -l)
  if [ "$rc" -eq 0 ]; then
    echo "fuzz $t: ${runs:-?} runs in ${secs}s ($((${runs:-0} / (secs > 0 ? secs : 1)))/s), coverage ${cov:-?}, corpus $n_seeds -> $n_corpus, seed ${seed:-?}"
    passed=$((passed + 1))
  else
    echo "fuzz $t: FAILED (exit $rc) after ${runs:-?} runs, seed ${seed:-?}"
    grep -v '^#[0-9]' "$log" | tail -n 60
    for a in "fuzz/artifacts/$t"/*; do
      [ -f "$a" ] || continue
      echo "input $a (base64, first 3 KB): $(head -c 3072 "$a" | base64 -w0)"
    done
    failed=$((failed + 1))
  fi
done
echo "fuzz smoke: $passed targets passed, $failed failed"
[ "$failed" -eq 0 ]

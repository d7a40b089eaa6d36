#!/usr/bin/env bash
# RUSTC_WRAPPER used by scripts/fuzz-smoke.sh: adds libFuzzer's coverage
# instrumentation (what `cargo fuzz build --sanitizer none` passes, all of it
# stable rustc flags) and `--cfg fuzzing` to the crates the fuzz targets
# exercise: the fuzz targets themselves, Depot's crates and the parsing
# libraries they lean on. Everything else (tokio, TLS, HTTP, RocksDB
# bindings, ...) builds plain, which keeps a CI build short; libFuzzer only
# needs coverage of the code under test. Only units built for `--target`
# are touched, never build scripts or proc macros.
set -euo pipefail
rustc=$1
shift
target=0
instrument=0
prev=
for a in "$@"; do
  case "$a" in
    --target | --target=*) target=1 ;;
    fuzz_targets/*.rs | */fuzz_targets/*.rs) instrument=1 ;;
  esac
  if [ "$prev" = --crate-name ]; then
    case "$a" in
      depot_* | serde_json | nom | base64) instrument=1 ;;
    esac
  fi
  prev=$a
done
if [ "$target" = 1 ] && [ "$instrument" = 1 ]; then
  exec "$rustc" "$@" \
    -Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    -Cllvm-args=-sanitizer-coverage-stack-depth \
    --cfg fuzzing
fi
exec "$rustc" "$@"

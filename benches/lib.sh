# Shared by the benchmark scripts; sourced from the repository root.
#
# bench_tools [tgt]: sets FIO (fio with its libiscsi engine; DEPOT_FIO
# overrides) and DEPOT (DEPOT_BIN, or a release build of this tree), running
# scripts/install-deps.sh first when fio's libiscsi engine (or, with `tgt`,
# Debian's tgtd) is missing.
bench_tools() {
  FIO=${DEPOT_FIO:-${XDG_CACHE_HOME:-$HOME/.cache}/depot-tools/fio/bin/fio}
  if ! "$FIO" --enghelp 2>/dev/null | grep -qw libiscsi ||
    { [ "${1:-}" = tgt ] && ! command -v tgtd >/dev/null; }; then
    bash scripts/install-deps.sh
  fi
  if [ -n "${DEPOT_BIN:-}" ]; then
    DEPOT=$DEPOT_BIN
  else
    echo "building depot (release)" >&2
    cargo build --release -p depot --quiet
    DEPOT=${CARGO_TARGET_DIR:-$PWD/target}/release/depot
  fi
}

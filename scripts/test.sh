#!/usr/bin/env bash
# The test command: unit, property and black-box system tests of the whole
# workspace. System tests start `depot serve` on 127.0.0.1 and drive it with
# real initiators (iscsi-test-cu, qemu-img/qemu-io, fio's libiscsi engine);
# install them first with scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DEPOT_TEST_MOTO:-}" ] && [ -x "${XDG_CACHE_HOME:-$HOME/.cache}/depot-tools/moto/bin/moto_server" ]; then
  export DEPOT_TEST_MOTO="${XDG_CACHE_HOME:-$HOME/.cache}/depot-tools/moto/bin/moto_server"
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (the last cargo summary is an empty
# doc-test run, which says nothing about the suite).
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$rc"

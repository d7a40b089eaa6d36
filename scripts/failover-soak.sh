#!/usr/bin/env bash
# The long run of the HA failover test (tests/system/failover.rs): three
# routers, a 3-member etcd and moto S3 on 127.0.0.1, a verified write load
# through a router that is not the owner, and the owner killed with SIGKILL
# at a random point of each round; after each takeover every write
# acknowledged that round is read back, and every one of all rounds at the
# end. Prints each round and the failover times (median, max).
#
#   scripts/failover-soak.sh [ROUNDS]     (default 100; CI runs 10)
#
# DEPOT_FAILOVER_LEASE sets the routers' lease in seconds (default 3; the
# daemon's default is 5).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-100}
case "$rounds" in '' | *[!0-9]*) echo "usage: $0 [ROUNDS]" >&2; exit 2 ;; esac
if [ -z "${DEPOT_TEST_MOTO:-}" ] && [ -x "${XDG_CACHE_HOME:-$HOME/.cache}/depot-tools/moto/bin/moto_server" ]; then
  export DEPOT_TEST_MOTO="${XDG_CACHE_HOME:-$HOME/.cache}/depot-tools/moto/bin/moto_server"
fi
DEPOT_FAILOVER_ROUNDS=$rounds cargo test -p depot --test system --locked \
  -- failover::owner_killed_under_verified_writes_loses_nothing --exact --nocapture 2>&1 |
  grep -E '^round |^failover over |^test result|panicked|lost'

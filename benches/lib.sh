# Shared by the benchmark scripts; sourced from the repository root.
#
# grid_start ROUTER...: a cluster on 127.0.0.1 in a temporary directory W: a
# 3-member etcd, an S3 server (S3_ENDPOINT/S3_BUCKET/S3_KEY/S3_SECRET, or
# moto_server started here) and one `depot serve` per name, with API[name]
# and PORTAL[name]; everything is stopped and W removed at exit.
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

grid_start() {
  W=$(mktemp -d)
  PIDS=()
  cleanup() {
    # SIGKILL: the data is thrown away, and a router stopping cleanly would
    # first ship its write buffer to an S3 server already gone.
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # DEPOT_BENCH_KEEP=1 keeps the routers' logs and data for a look.
    if [ -n "${DEPOT_BENCH_KEEP:-}" ]; then
      echo "kept $W" >&2
    else
      rm -rf "$W"
    fi
  }
  trap cleanup EXIT
  port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

  # etcd: three members.
  P=(); for i in 1 2 3; do P+=("$(port)" "$(port)"); done
  CLUSTER="e1=http://127.0.0.1:${P[1]},e2=http://127.0.0.1:${P[3]},e3=http://127.0.0.1:${P[5]}"
  for i in 0 1 2; do
    c=${P[$((2 * i))]} p=${P[$((2 * i + 1))]}
    etcd --name "e$((i + 1))" --data-dir "$W/e$i" \
      --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
      --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
      --initial-cluster "$CLUSTER" --initial-cluster-state new >"$W/e$i.log" 2>&1 &
    PIDS+=($!)
  done
  ETCD="http://127.0.0.1:${P[0]},http://127.0.0.1:${P[2]},http://127.0.0.1:${P[4]}"
  for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints="$ETCD" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done

  # S3.
  if [ -z "${S3_ENDPOINT:-}" ]; then
    MOTO=${XDG_CACHE_HOME:-$HOME/.cache}/depot-tools/moto/bin/moto_server
    [ -x "$MOTO" ] || bash scripts/install-deps.sh
    mp=$(port)
    "$MOTO" -H 127.0.0.1 -p "$mp" >"$W/moto.log" 2>&1 &
    PIDS+=($!)
    S3_ENDPOINT=http://127.0.0.1:$mp S3_BUCKET=depot S3_KEY=test S3_SECRET=test
    for _ in $(seq 100); do curl -s -o /dev/null "$S3_ENDPOINT" && break; sleep 0.2; done
    curl -s -o /dev/null -X PUT "$S3_ENDPOINT/$S3_BUCKET"
  fi

  # The routers.
  declare -gA API PORTAL
  for r in "$@"; do
    PORTAL[$r]=127.0.0.1:$(port)
    API[$r]=127.0.0.1:$(port)
    DEPOT_LOG=${DEPOT_BENCH_LOG:-warn} "$DEPOT" serve --data-dir "$W/$r" --iscsi-listen "${PORTAL[$r]}" \
      --api-listen "${API[$r]}" --router "$r" --etcd "$ETCD" \
      --peer-listen "127.0.0.1:$(port)" >"$W/$r.log" 2>&1 &
    PIDS+=($!)
  done
  for r in "$@"; do
    for _ in $(seq 200); do curl -s -o /dev/null "http://${API[$r]}/api/v1/health" && break; sleep 0.1; done
  done
}

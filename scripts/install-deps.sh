#!/usr/bin/env bash
# Installs everything Depot's build and system tests need on a fresh Debian 12
# machine: Debian's RocksDB (linked by the rocksdb crate 0.21), libclang for
# bindgen, protoc for the etcd client, etcd 3.4 for the cluster tests, libiscsi-bin (iscsi-test-cu), qemu-block-extra from
# bookworm-backports (must match the preinstalled qemu-utils 10), tgt for
# side-by-side runs, fio rebuilt with the libiscsi engine, moto_server (S3)
# in a Python venv, and QEMU with a small Debian guest running the Linux
# kernel initiator (scripts/initiator-guest.sh).
#
# Apt sources are derived from the mirror already configured in
# /etc/apt/sources.list.d/debian.sources; no host is named here.
# Idempotent: safe to run again. With --build-only, installs only what
# building Depot needs.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

src=/etc/apt/sources.list.d/debian.sources
extra=/etc/apt/sources.list.d/depot-extra.sources
if [ ! -f "$extra" ]; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' "$src")
  $SUDO tee "$extra" >/dev/null <<SRC
Types: deb-src
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
$SUDO apt-get update -q >/dev/null
# What building Depot needs (the rocksdb crate links Debian's librocksdb and
# runs bindgen, which needs libclang; the etcd client compiles etcd's
# protobuf definitions with protoc and its well-known types).
$SUDO apt-get install -y -q --no-install-recommends \
  librocksdb-dev clang libclang-dev pkg-config gcc \
  protobuf-compiler libprotobuf-dev >/dev/null
if [ "${1:-}" = "--build-only" ]; then
  echo "build deps ok"
  exit 0
fi
# The peers the system tests talk to.
$SUDO apt-get install -y -q --no-install-recommends \
  libiscsi-bin libiscsi-dev tgt \
  dpkg-dev gcc make zlib1g-dev bc python3 openssl >/dev/null
# etcd 3.4 (server and etcdctl): the cluster tests start a 3-member etcd on
# loopback.
$SUDO apt-get install -y -q --no-install-recommends etcd-server etcd-client >/dev/null
# promtool (from Debian's prometheus) checks packaging/prometheus/ in the
# dashboards system test.
$SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null
# qemu-block-extra must come from backports to match qemu-utils 10, and so
# must qemu-system-x86 (it boots the kernel-initiator test's guest).
$SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports \
  qemu-utils qemu-block-extra qemu-system-x86 >/dev/null
# The kernel-initiator test's guest (Debian 12 with open-iscsi), built once.
$SUDO apt-get install -y -q --no-install-recommends mmdebstrap socat e2fsprogs >/dev/null
bash "$(dirname "$0")/initiator-guest.sh"

# fio with the libiscsi ioengine (Debian's binary lacks it).
FIO_PREFIX=${FIO_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/depot-tools/fio}
if ! { [ -x "$FIO_PREFIX/bin/fio" ] && "$FIO_PREFIX/bin/fio" --enghelp | grep -qw libiscsi; }; then
  build=$(mktemp -d)
  (cd "$build" && apt-get source -q fio >/dev/null 2>&1 && cd fio-3.* &&
    ./configure --prefix="$FIO_PREFIX" --enable-libiscsi >/dev/null &&
    make -j"$(nproc)" >/dev/null && make install >/dev/null)
  rm -rf "$build"
fi
"$FIO_PREFIX/bin/fio" --enghelp | grep -qw libiscsi

# moto_server: a faithful S3 server for the engine's S3 tests (127.0.0.1 only).
MOTO_VENV=${MOTO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/depot-tools/moto}
if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q 'moto[server]' >/dev/null
fi
echo "deps ok: fio with libiscsi at $FIO_PREFIX/bin/fio, moto at $MOTO_VENV/bin/moto_server"

#!/usr/bin/env bash
# Builds depot_<version>-1_amd64.deb with dpkg-deb (no debhelper needed).
#
#   packaging/build-deb.sh [--build] [--binary PATH] [--out DIR]
#
# --build runs `cargo build --release -p depot` first (CARGO_TARGET_DIR is
# honoured). Without --binary the binary is taken from
# ${CARGO_TARGET_DIR:-target}/release/depot. Output: DIR (default
# packaging/dist/), which is git-ignored.
#
# Contents: /usr/bin/depot (stripped), /lib/systemd/system/depot.service,
# /etc/depot/depot.toml (conffile), /usr/share/depot/{prometheus,grafana}/,
# /usr/share/doc/depot/. Maintainer scripts create the `depot` system user
# (in group disk), /var/lib/depot, and enable + start the unit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
binary=""
out="$here/dist"
build=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=1 ;;
    --binary) binary=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "usage: $0 [--build] [--binary PATH] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
if [ "$build" = 1 ]; then
  (cd "$root" && CARGO_TARGET_DIR="$target" cargo build --release -p depot)
fi
binary=${binary:-$target/release/depot}
[ -x "$binary" ] || { echo "no depot binary at $binary (use --build or --binary)" >&2; exit 1; }

version=$(awk -F'"' '/^\[workspace.package\]/ {p=1} p && /^version *=/ {print $2; exit}' "$root/Cargo.toml")
debver="${version}-1"
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg="$stage/pkg"

install -D -m 0755 "$binary" "$pkg/usr/bin/depot"
strip --strip-unneeded "$pkg/usr/bin/depot"
install -D -m 0644 "$here/systemd/depot.service" "$pkg/lib/systemd/system/depot.service"
install -D -m 0640 "$here/depot.toml" "$pkg/etc/depot/depot.toml"
install -d -m 0755 "$pkg/usr/share/depot/prometheus" "$pkg/usr/share/depot/grafana"
install -m 0644 "$here"/prometheus/*.yml "$pkg/usr/share/depot/prometheus/"
install -m 0644 "$here"/grafana/*.json "$pkg/usr/share/depot/grafana/"
install -D -m 0644 "$root/README.md" "$pkg/usr/share/doc/depot/README.md"
install -D -m 0644 "$here/debian/copyright" "$pkg/usr/share/doc/depot/copyright"
for f in metrics.md appliance.md; do
  [ -f "$root/docs/$f" ] && install -m 0644 "$root/docs/$f" "$pkg/usr/share/doc/depot/$f"
done

# Shared-library dependencies from the binary itself (libc, libgcc,
# librocksdb7.8 ...), via dpkg-shlibdeps in a scratch source tree.
mkdir -p "$stage/src/debian"
printf 'Source: depot\n\nPackage: depot\nArchitecture: any\n' >"$stage/src/debian/control"
shlibs=$(cd "$stage/src" && dpkg-shlibdeps -O "$pkg/usr/bin/depot" 2>/dev/null |
  sed -n 's/^shlibs:Depends=//p')
# The tiered engine needs Debian's RocksDB 7.8 (the rocksdb crate 0.21 links
# it dynamically); declared even if this binary was built without it.
grep -q librocksdb7.8 <<<"$shlibs" || shlibs="${shlibs:+$shlibs, }librocksdb7.8"
depends="${shlibs:-libc6}, adduser, init-system-helpers (>= 1.54)"
size_kb=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)

install -d -m 0755 "$pkg/DEBIAN"
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: depot
Version: $debver
Architecture: $arch
Maintainer: Depot maintainers <depot@example.invalid>
Installed-Size: $size_kb
Depends: $depends
Section: net
Priority: optional
Homepage: https://example.invalid/depot
Description: VM-centric iSCSI storage router
 Depot is a grid storage router between virtual machines and storage
 backends: every VM is one iSCSI target and each of its vDisks a LUN,
 backed by a tiered engine (flash write log, RocksDB index, object backend).
 This package runs "depot serve" as a systemd service (depot.service) with
 its state in /var/lib/depot and its configuration in /etc/depot/depot.toml.
CONTROL
echo /etc/depot/depot.toml >"$pkg/DEBIAN/conffiles"
install -m 0755 "$here/debian/postinst" "$here/debian/prerm" "$here/debian/postrm" "$pkg/DEBIAN/"

mkdir -p "$out"
deb="$out/depot_${debver}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
dpkg-deb --field "$deb" Package Version Depends Installed-Size >&2

#!/usr/bin/env bash
# Build the Debian package: target/debian/stickgate_<version>_<arch>.deb
#
#   scripts/package.sh                  # release build, stripped
#   scripts/package.sh --binary PATH    # package an existing binary (tests)
#   DEB_COMPRESSION=gzip scripts/package.sh ...   # faster to build (default xz)
#
# Contents: /usr/bin/stickgate, /etc/stickgate/stickgate.toml (a conffile:
# conf/minimal.toml, kept across upgrades when edited), the systemd unit
# /lib/systemd/system/stickgate.service (conf/systemd/), the README and the
# example configs under /usr/share/doc/stickgate; maintainer scripts from
# scripts/debian/ create the `stickgate` system user and enable the unit.
# Needs only dpkg-deb (always on Debian) and, for a release, cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "package.sh: $*" >&2
    exit 1
}

BIN=""
case "${1:-}" in
"") ;;
--binary)
    BIN=${2:-}
    [ -x "$BIN" ] || die "--binary needs an executable, got '${BIN}'"
    ;;
*) die "usage: scripts/package.sh [--binary PATH]" ;;
esac
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (this script builds Debian packages)"

if [ -z "$BIN" ]; then
    cargo build --release --quiet --bin stickgate || die "release build failed"
    BIN=${CARGO_TARGET_DIR:-target}/release/stickgate
fi
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
[ -n "$VERSION" ] || die "no version in Cargo.toml"
ARCH=$(dpkg --print-architecture)
OUT=${CARGO_TARGET_DIR:-target}/debian
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/stickgate-deb.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
chmod 0755 "$STAGE"

install -D -m 0755 "$BIN" "$STAGE/usr/bin/stickgate"
strip --strip-unneeded "$STAGE/usr/bin/stickgate" 2>/dev/null || true
install -D -m 0640 conf/minimal.toml "$STAGE/etc/stickgate/stickgate.toml"
install -D -m 0644 conf/systemd/stickgate.service "$STAGE/lib/systemd/system/stickgate.service"
install -D -m 0644 README.md "$STAGE/usr/share/doc/stickgate/README.md"
for f in conf/*.toml; do
    install -D -m 0644 "$f" "$STAGE/usr/share/doc/stickgate/examples/$(basename "$f")"
done
mkdir -p "$STAGE/DEBIAN"
for s in postinst prerm postrm; do
    install -m 0755 "scripts/debian/$s" "$STAGE/DEBIAN/$s"
done
echo /etc/stickgate/stickgate.toml >"$STAGE/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat >"$STAGE/DEBIAN/control" <<EOF
Package: stickgate
Version: $VERSION
Architecture: $ARCH
Maintainer: stickgate developers <stickgate@localhost>
Installed-Size: $SIZE
Depends: libc6, passwd
Section: net
Priority: optional
Description: sticky, session-replicating HTTP load balancer for Tomcat clusters
 stickgate routes each session (JSESSIONID=<id>.<jvmRoute>) to its node,
 moves it to a healthy heir when that node dies, and shares affinity
 between balancers through memory, Redis or multicast replication.
 Runs as the systemd service stickgate (Type=notify); the configuration is
 /etc/stickgate/stickgate.toml.
EOF
mkdir -p "$OUT"
DEB="$OUT/stickgate_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-xz}" --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"

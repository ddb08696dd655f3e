#!/usr/bin/env bash
# Builds the Debian package `ferry` from the workspace: ferryd, ferryctl and ferry-bdevperf,
# the systemd unit ferryd.service with /etc/default/ferryd (packaging/), the docs and the
# license. Prints the path of the .deb.
#
#   scripts/deb.sh [--bin-dir DIR] [--out DIR] [--fast]
#
#   --bin-dir DIR  package the binaries in DIR (the test suite passes its debug build) instead
#                  of building release binaries
#   --out DIR      where the .deb goes (default target/debian)
#   --fast         gzip -1 instead of xz (the test suite: the package is checked, not shipped)
#
# Built with dpkg-deb, not cargo-deb: cargo-deb is not packaged in Debian 12, and
# `cargo install cargo-deb` compiles a few hundred crates (minutes of both cores of this
# machine, again on every fresh CI machine) to produce what is here a file layout, a control
# file and three maintainer scripts. dpkg-deb, dpkg-shlibdeps (the Depends: line) and strip are
# Debian's own tools (dpkg, dpkg-dev, binutils). Name, version, license and summary come from
# Cargo.toml.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$FERRY_ROOT"
umask 022

bin_dir="" out="$FERRY_ROOT/target/debian" compress=(-Zxz)
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir=$(realpath "$2"); shift 2 ;;
        --out) out=$2; shift 2 ;;
        --fast) compress=(-Zgzip -z1); shift ;;
        *) die "unknown option $1 (see the top of $0)" ;;
    esac
done
apt_install dpkg-dev binutils python3
if [ -z "$bin_dir" ]; then
    build_release
    bin_dir=$FERRY_BIN
fi
bins=(ferryd ferryctl ferry-bdevperf)
for b in "${bins[@]}"; do [ -x "$bin_dir/$b" ] || die "no $b in $bin_dir"; done

# The `ferry` package's metadata, as shell assignments.
version="" license="" description=""
meta=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, shlex, sys
p = next(p for p in json.load(sys.stdin)["packages"] if p["name"] == "ferry")
for k in ("version", "license", "description"):
    print(k + "=" + shlex.quote(p[k] or str()))
')
eval "$meta"
# The copyright file below points at Debian's copy of the license text.
[ "$license" = Apache-2.0 ] && [ -f /usr/share/common-licenses/Apache-2.0 ] ||
    die "Cargo.toml's license is $license: update debian/copyright in $0 and LICENSE"
cmp -s LICENSE /usr/share/common-licenses/Apache-2.0 || die "LICENSE is not the Apache-2.0 text"
deb_version=${version//-/\~}   # 0.2.0-rc1 sorts before 0.2.0 as 0.2.0~rc1
arch=$(dpkg --print-architecture)
maintainer=${DEB_MAINTAINER:-Ferry developers <ferry@localhost>}

work=$(mktemp -d /tmp/ferry-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
# dpkg-shlibdeps wants the files where debhelper would put them: debian/<package>/.
pkg=$work/debian/ferry
doc=$pkg/usr/share/doc/ferry
for b in "${bins[@]}"; do
    install -D -m 0755 "$bin_dir/$b" "$pkg/usr/bin/$b"
    # As dh_strip: no debug sections or notes in the shipped binaries.
    strip --remove-section=.comment --remove-section=.note --strip-unneeded "$pkg/usr/bin/$b"
done
install -D -m 0644 packaging/ferryd.service "$pkg/lib/systemd/system/ferryd.service"
install -D -m 0644 packaging/ferryd.default "$pkg/etc/default/ferryd"
install -D -m 0644 -t "$doc" README.md docs/architecture.md docs/rpc.md docs/vhost.md docs/security.md \
    docs/performance.md docs/iscsi.md docs/nvmf.md docs/blobstore.md docs/metrics.md
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
printf 'ferry (%s) unstable; urgency=medium\n\n  * Built from the Ferry workspace at commit %s.\n\n -- %s  %s\n' \
    "$deb_version" "$commit" "$maintainer" "$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" |
    gzip -9n >"$doc/changelog.gz"
cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ferry

Files: *
Copyright: The Ferry developers
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0 (the project's LICENSE file).
EOF

mkdir -p "$pkg/DEBIAN"
install -m 0755 packaging/postinst packaging/prerm packaging/postrm "$pkg/DEBIAN/"
echo /etc/default/ferryd >"$pkg/DEBIAN/conffiles"
depends=$(cd "$work" && printf 'Source: ferry\n\nPackage: ferry\nArchitecture: any\n' >debian/control &&
    dpkg-shlibdeps -O "${bins[@]/#/debian/ferry/usr/bin/}" | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || die "dpkg-shlibdeps found no dependencies"
cat >"$pkg/DEBIAN/control" <<EOF
Package: ferry
Version: $deb_version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
Depends: $depends
Section: admin
Priority: optional
Description: $description
 ferryd gives virtual machines their disks over vhost-user-blk and
 vhost-user-scsi from bdevs (RAM, files and block devices through io_uring),
 with reactors on pinned cores, and is managed over JSON-RPC with SPDK's method
 names.
 .
 This package holds ferryd, its client ferryctl, the benchmark ferry-bdevperf
 and the systemd unit ferryd.service (options in /etc/default/ferryd).
EOF
(cd "$pkg" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"

mkdir -p "$out"
deb="$(realpath "$out")/ferry_${deb_version}_${arch}.deb"
dpkg-deb --root-owner-group "${compress[@]}" --build "$pkg" "$deb" >/dev/null
log "built $deb"
echo "$deb"

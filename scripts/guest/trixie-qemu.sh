#!/usr/bin/env bash
# Builds, once, a minimal Debian 13 (trixie) tree with trixie-backports' QEMU (>= 10.1, which
# has `-device vfio-user-pci`; bookworm-backports stops at 10.0) and checks that it runs.
# QEMU then runs inside the tree (scripts/guest/qemu11.sh) on this Debian 12 host.
#
#   trixie-qemu.sh            # build if missing; prints the tree's path
#
# Cache: $FERRY_QEMU11_ROOT (default $FERRY_GUEST_CACHE/trixie-qemu, i.e.
# /var/cache/ferry-guest/trixie-qemu): about 500 MB, about 5 minutes the first time, a
# second afterwards. Rebuilt only when TREE_VERSION below changes or the tree is incomplete.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
need_root

# Bump to rebuild every cached tree (e.g. when the package list changes).
TREE_VERSION=1
cache=${FERRY_GUEST_CACHE:-/var/cache/ferry-guest}
tree=${FERRY_QEMU11_ROOT:-$cache/trixie-qemu}
mirror=${FERRY_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ "$(cat "$tree/.ferry-done" 2>/dev/null)" = "$TREE_VERSION" ]; then
    echo "$tree"
    exit 0
fi

apt_install debootstrap debian-archive-keyring
mkdir -p "$(dirname "$tree")"
# Build beside the final place and rename at the end: an interrupted build never looks done.
work="$tree.building"
cleanup() {
    # A failed chroot step may leave its mounts; never delete through them.
    for m in proc sys dev; do mountpoint -q "$work/$m" 2>/dev/null && umount -l "$work/$m"; done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
cleanup
log "debootstrap --variant=minbase trixie into $work (about 5 minutes)"
debootstrap --variant=minbase trixie "$work" "$mirror" >"$cache/trixie-debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $cache/trixie-debootstrap.log"
echo "deb $mirror trixie-backports main" >"$work/etc/apt/sources.list.d/backports.list"
log "installing qemu-system-x86 from trixie-backports in the tree"
in_tree() {
    # proc for the maintainer scripts; the host's resolv.conf for the mirror.
    cp /etc/resolv.conf "$work/etc/resolv.conf"
    mount -t proc proc "$work/proc"
    local rc=0
    chroot "$work" env DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@" || rc=$?
    umount "$work/proc"
    return $rc
}
in_tree apt-get update -q >>"$cache/trixie-debootstrap.log" 2>&1 || die "apt-get update in the tree failed"
in_tree apt-get install -y -q --no-install-recommends -t trixie-backports qemu-system-x86 \
    >>"$cache/trixie-debootstrap.log" 2>&1 || die "installing QEMU in the tree failed; see $cache/trixie-debootstrap.log"
in_tree apt-get clean >/dev/null 2>&1 || true
# What a test needs to find: the vfio-user client device.
in_tree qemu-system-x86_64 -device help 2>/dev/null | grep -q '"vfio-user-pci"' ||
    die "the tree's QEMU has no vfio-user-pci: $(in_tree qemu-system-x86_64 --version | head -n1)"
log "$(in_tree qemu-system-x86_64 --version | head -n1) ready in $tree"
echo "$TREE_VERSION" >"$work/.ferry-done"
rm -rf --one-file-system "$tree"
mv "$work" "$tree"
trap - EXIT
echo "$tree"

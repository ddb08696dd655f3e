#!/usr/bin/env bash
# Writes OUT: the cached guest initramfs (setup.sh) with SCRIPT added as /test.sh, which the
# guest's init runs, reporting `FERRY-GUEST-EXIT=<rc>` on the console. For QEMU's -initrd
# (run.sh) or a libvirt domain's <initrd>.
#
#   initrd.sh SCRIPT OUT
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
script=${1:?usage: $0 SCRIPT OUT}
out=${2:?usage: $0 SCRIPT OUT}
cache=${FERRY_GUEST_CACHE:-/var/cache/ferry-guest}
[ -f "$cache/initramfs.cpio" ] || die "run scripts/guest/setup.sh first"
overlay=$(mktemp -d /tmp/ferry-initrd.XXXXXX)
trap 'rm -rf "$overlay"' EXIT
cp "$script" "$overlay/test.sh"
chmod +x "$overlay/test.sh"
# Linux unpacks concatenated cpio archives in order: the second one adds /test.sh.
{
    cat "$cache/initramfs.cpio"
    (cd "$overlay" && echo test.sh | cpio -o -H newc --quiet)
} >"$out"

#!/usr/bin/env bash
# Writes OUT: the cached guest initramfs (setup.sh) with SCRIPT added as /test.sh, which the
# guest's init runs, reporting `FERRY-GUEST-EXIT=<rc>` on the console. For QEMU's -initrd
# (run.sh) or a libvirt domain's <initrd>.
#
#   initrd.sh SCRIPT OUT [FILE...]
#
# Each FILE goes to the guest's /usr/bin under its own name: programs that change with every
# build (ferryd, ferryctl, ferry-bdevperf from target/) and scripts (scripts/vfio-bind.sh),
# which do not belong in the cached image. An ELF program goes in without its debug info (a
# debug build's is most of its size, and the guest keeps its initramfs in RAM) and with the
# shared libraries `ldd` names.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
script=${1:?usage: $0 SCRIPT OUT [FILE...]}
out=${2:?usage: $0 SCRIPT OUT [FILE...]}
shift 2
cache=${FERRY_GUEST_CACHE:-/var/cache/ferry-guest}
[ -f "$cache/initramfs.cpio" ] || die "run scripts/guest/setup.sh first"
overlay=$(mktemp -d /tmp/ferry-initrd.XXXXXX)
trap 'rm -rf "$overlay"' EXIT
cp "$script" "$overlay/test.sh"
chmod +x "$overlay/test.sh"
for f in "$@"; do
    [ -f "$f" ] || die "no such file to add to the guest: $f"
    mkdir -p "$overlay/usr/bin"
    dst="$overlay/usr/bin/$(basename "$f")"
    if [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ]; then
        strip --strip-debug -o "$dst" "$f"
        # `ldd` lists "name => /path (addr)" and the loader as "/lib64/ld-... (addr)".
        ldd "$f" | awk '/=> \// {print $3} /^\t\/lib/ {print $1}' | while read -r lib; do
            mkdir -p "$overlay$(dirname "$lib")"
            cp -L "$lib" "$overlay$lib"
        done
    else
        cp "$f" "$dst"
    fi
    chmod +x "$dst"
done
# Linux unpacks concatenated cpio archives in order: the second one adds /test.sh and the
# files (directories it names again are kept, files are replaced).
{
    cat "$cache/initramfs.cpio"
    (cd "$overlay" && find . -mindepth 1 | cpio -o -H newc --quiet)
} >"$out"

#!/usr/bin/env bash
# Runs the QEMU of the cached Debian 13 tree (trixie-qemu.sh builds it; QEMU >= 10.1, which has
# `-device vfio-user-pci`) on this Debian 12 host, with the given arguments:
#
#   qemu11.sh QEMU ARGS...
#
# QEMU runs chrooted in the tree, in a private mount namespace in which the host's /dev (with
# /dev/hugepages and /dev/shm), /proc, /sys, /tmp, /var/tmp, /run and the guest cache (kernel,
# initramfs) are bind-mounted at the same paths, so every path on the command line (sockets,
# kernel, initramfs, memory files, logs) means inside what it means outside. More directories:
# FERRY_QEMU11_BIND="DIR...". The mounts vanish with the process; the tree is never changed.
# Absolute paths only (chroot starts in /). QEMU keeps this process's pid (everything is exec'd),
# so `timeout` and signals reach it.
set -euo pipefail
cache=${FERRY_GUEST_CACHE:-/var/cache/ferry-guest}
tree=${FERRY_QEMU11_ROOT:-$cache/trixie-qemu}
if [ ! -f "$tree/.ferry-done" ]; then
    echo "error: no Debian 13 QEMU tree at $tree: run scripts/guest/setup.sh (or trixie-qemu.sh)" >&2
    exit 1
fi
binds="/dev /proc /sys /tmp /var/tmp /run $cache ${FERRY_QEMU11_BIND:-}"
exec unshare --mount --propagation private -- bash -c '
    set -e
    tree=$1; binds=$2; shift 2
    for d in $binds; do
        [ -d "$d" ] || continue
        mkdir -p "$tree$d"
        mount --rbind "$d" "$tree$d"
    done
    exec chroot "$tree" qemu-system-x86_64 "$@"
' qemu11 "$tree" "$binds" "$@"

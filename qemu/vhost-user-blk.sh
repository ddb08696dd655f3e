#!/usr/bin/env bash
# Attach a Ferry vhost-user-blk controller to a QEMU guest.
#
#   ferryd -m 0x3 -S /var/tmp &
#   ferryctl bdev_malloc_create -b Malloc0 1024 512
#   ferryctl vhost_create_blk_controller vhost.0 Malloc0
#   qemu/vhost-user-blk.sh /var/tmp/vhost.0 disk.qcow2   # your boot disk
#
# Guest RAM must be shared with Ferry: a memfd or hugetlbfs backend with share=on, used as the
# guest's NUMA node memory. reconnect-ms makes QEMU redial a restarted ferryd; with Ferry's
# inflight tracking the guest sees a stall, not an I/O error.
set -euo pipefail
sock=${1:?usage: $0 CONTROLLER_SOCKET BOOT_DISK [QEMU ARGS...]}
boot=${2:?usage: $0 CONTROLLER_SOCKET BOOT_DISK [QEMU ARGS...]}
shift 2
exec qemu-system-x86_64 \
    -machine q35,accel=kvm:tcg -cpu max -smp 4 -m 4G \
    -object memory-backend-memfd,id=mem0,size=4G,share=on -numa node,memdev=mem0 \
    -drive file="$boot",if=virtio \
    -chardev socket,id=ferry0,path="$sock",reconnect-ms=1000 \
    -device vhost-user-blk-pci,chardev=ferry0,queue-size=256 \
    "$@"
# With hugepages instead of memfd:
#   -object memory-backend-file,id=mem0,size=4G,mem-path=/dev/hugepages,share=on

#!/usr/bin/env bash
# Attach a Ferry vhost-user-scsi controller to a QEMU guest.
#
#   ferryd -m 0x3 -S /var/tmp &
#   ferryctl bdev_malloc_create -b Malloc0 1024 512
#   ferryctl vhost_create_scsi_controller vhost.scsi0
#   ferryctl vhost_scsi_controller_add_target vhost.scsi0 0 Malloc0   # target 0, LUN 0
#   qemu/vhost-user-scsi.sh /var/tmp/vhost.scsi0 disk.qcow2           # your boot disk
#
# Guest RAM must be shared with Ferry (memfd or hugetlbfs, share=on, as the NUMA node's
# memory). Targets added or removed later reach the running guest as hot-plug events.
# reconnect-ms makes QEMU redial a restarted ferryd.
set -euo pipefail
sock=${1:?usage: $0 CONTROLLER_SOCKET BOOT_DISK [QEMU ARGS...]}
boot=${2:?usage: $0 CONTROLLER_SOCKET BOOT_DISK [QEMU ARGS...]}
shift 2
exec qemu-system-x86_64 \
    -machine q35,accel=kvm:tcg -cpu max -smp 4 -m 4G \
    -object memory-backend-memfd,id=mem0,size=4G,share=on -numa node,memdev=mem0 \
    -drive file="$boot",if=virtio \
    -chardev socket,id=ferry0,path="$sock",reconnect-ms=1000 \
    -device vhost-user-scsi-pci,chardev=ferry0 \
    "$@"

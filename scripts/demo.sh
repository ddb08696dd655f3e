#!/usr/bin/env bash
# The main job on its embedded default: ferryd serves a 64 MiB RAM disk as the vhost-user-blk
# controller vhost.0; a small Linux guest boots under QEMU with that disk and runs fio with
# data verification on it; ferryctl shows the daemon's side; ferryd stops cleanly.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$FERRY_ROOT"

bash scripts/setup.sh
bash scripts/guest/setup.sh
build_release

work=$(mktemp -d /tmp/ferry-demo.XXXXXX)
sock="$work/ferry.sock"
ctl() { echo "\$ ferryctl $*" >&2; "$FERRY_BIN/ferryctl" -s "$sock" "$@"; }
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

log "starting ferryd -m 0x3 with its default configuration (Malloc0 as vhost-user-blk vhost.0)"
"$FERRY_BIN/ferryd" -m 0x3 -r "$sock" -S "$work" --default-config >"$work/ferryd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$work/ferryd.log"; die "ferryd did not start"; }
ctl spdk_get_version
ctl bdev_get_bdevs -b Malloc0
ctl vhost_get_controllers

cat >"$work/guest.sh" <<'GUEST'
#!/bin/sh
echo "guest: /dev/vda is $(($(cat /sys/block/vda/size) / 2048)) MiB with $(ls /sys/block/vda/mq | wc -l) queues"
fio --name=demo --filename=/dev/vda --rw=randrw --bs=4k --size=32M --offset_increment=32M --numjobs=2 \
    --iodepth=16 --ioengine=libaio --direct=1 --verify=crc32c --group_reporting
GUEST
log "booting a Linux guest (QEMU, TCG) with vhost-user-blk-pci on $work/vhost.0; fio runs inside"
bash scripts/guest/run.sh --script "$work/guest.sh" --timeout 300 -- \
    -chardev "socket,id=c0,path=$work/vhost.0" -device vhost-user-blk-pci,chardev=c0,num-queues=2 |
    grep -E "guest:|err=|IOPS|READ:|WRITE:|FERRY-GUEST-EXIT"

ctl bdev_get_iostat -b Malloc0
log "stopping ferryd (SIGTERM)"
kill -TERM "$pid"; wait "$pid"; pid=
log "demo done: a Linux guest did verified I/O on Ferry's vhost-user-blk disk"

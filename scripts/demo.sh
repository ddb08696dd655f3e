#!/usr/bin/env bash
# The main job on its embedded default: ferryd serves two 64 MiB RAM disks, one as the
# vhost-user-blk controller vhost.0, one as target 0 of the vhost-user-scsi controller vhost.1;
# a small Linux guest boots under QEMU with both and runs fio with data verification on each;
# ferryctl shows the daemon's side; ferryd stops cleanly.
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

log "starting ferryd -m 0x3 with its default configuration (Malloc0 as vhost-user-blk vhost.0, Malloc1 as vhost-user-scsi vhost.1)"
"$FERRY_BIN/ferryd" -m 0x3 -r "$sock" -S "$work" --default-config >"$work/ferryd.log" 2>&1 &
pid=$!
# -r: ferryctl retries connecting while ferryd starts (no polling loop here).
ctl -r 100 spdk_get_version || { cat "$work/ferryd.log"; die "ferryd did not start"; }
ctl bdev_get_bdevs -b Malloc0
ctl vhost_get_controllers

cat >"$work/guest.sh" <<'GUEST'
#!/bin/sh
echo "guest: /dev/vda (virtio-blk) is $(($(cat /sys/block/vda/size) / 2048)) MiB with $(ls /sys/block/vda/mq | wc -l) queues"
echo "guest: /dev/sda (virtio-scsi) is $(($(cat /sys/block/sda/size) / 2048)) MiB: $(cat /sys/block/sda/device/vendor) $(cat /sys/block/sda/device/model)"
rc=0
for disk in vda sda; do
    echo "guest: fio randrw with crc32c verification on /dev/$disk"
    fio --name=demo-$disk --filename=/dev/$disk --rw=randrw --bs=4k --size=32M --offset_increment=32M --numjobs=2 \
        --iodepth=16 --ioengine=libaio --direct=1 --verify=crc32c --group_reporting --eta=never || rc=1
done
[ $rc = 0 ] && echo "guest: fio verified every block it wrote on both disks"
exit $rc
GUEST
log "booting a Linux guest (QEMU, TCG) with vhost-user-blk-pci on $work/vhost.0 and vhost-user-scsi-pci on $work/vhost.1; fio runs inside"
# The guest's console is shown as it comes, filtered to what the guest script and fio report;
# kernel messages and the guest harness's own markers (FERRY-GUEST-*) stay in the log, printed
# whole only if the guest fails. The viewer stops at an end line this script appends.
console="$work/console.log"
: >"$console"
tail --pid=$$ -n +1 -F "$console" 2>/dev/null | while IFS= read -r line; do
    line=${line%$'\r'}
    [ "$line" = FERRY-DEMO-END ] && break
    case "$line" in guest:* | *err=* | *IOPS* | *READ:* | *WRITE:*) printf '%s\n' "$line" ;; esac
done &
viewer=$!
guest_rc=0
bash scripts/guest/run.sh --log "$console" --script "$work/guest.sh" --timeout 300 -- \
    -chardev "socket,id=c0,path=$work/vhost.0" -device vhost-user-blk-pci,chardev=c0,num-queues=2 \
    -chardev "socket,id=c1,path=$work/vhost.1" -device vhost-user-scsi-pci,chardev=c1,num_queues=2 \
    >/dev/null 2>"$work/run.err" || guest_rc=$?
echo FERRY-DEMO-END >>"$console"
wait "$viewer" || true
if [ "$guest_rc" != 0 ]; then
    cat "$console" "$work/run.err" >&2
    die "the guest failed (its console is above)"
fi

ctl bdev_get_iostat -b Malloc0
ctl bdev_get_iostat -b Malloc1
log "stopping ferryd (SIGTERM)"
kill -TERM "$pid"; wait "$pid"; pid=
log "demo done: a Linux guest did verified I/O on Ferry's vhost-user-blk and vhost-user-scsi disks"

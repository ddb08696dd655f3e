#!/usr/bin/env bash
# vhost-user-scsi against vhost-user-blk on the same bdev: one ferryd (one reactor, core 0)
# with a malloc bdev (512 MiB, 512 B blocks, as in vhost-blk.sh), first a vhost-scsi
# controller on it (target 0, LUN 0), then, once that is deleted (one at a time, so neither
# steals the other's core), a vhost-blk controller on it; each driven by ferry-vhost-perf pinned to core 1 with 4 KiB
# random reads at QD128 and QD1, one request queue. Prints IOPS and the ratio scsi/blk.
# Usage: scripts/bench/vhost-scsi.sh [SECONDS]   (default 5)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
secs=${1:-5}
apt_install python3
build_release
(cd "$FERRY_ROOT" && cargo build --release --quiet -p ferry-vhost-initiator)

work=$(mktemp -d /tmp/ferry-vsbench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

perf() { # SOCKET QD PERF-ARGS... -> IOPS
    local sock=$1 qd=$2; shift 2
    "$FERRY_BIN/ferry-vhost-perf" -s "$sock" -q "$qd" -o 4096 -w randread -t "$secs" --cpu 1 --json-summary "$@" |
        tail -n 1 | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["iops"]))'
}
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; die "no socket $1"; }

"$FERRY_BIN/ferryd" -m 0x1 -r "$work/rpc.sock" -S "$work" --log-level ERROR &
pids+=($!)
wait_sock "$work/rpc.sock"
ctl() { "$FERRY_BIN/ferryctl" -s "$work/rpc.sock" "$@" >/dev/null; }
ctl bdev_malloc_create -b Malloc0 512 512

# vhost-scsi, through raw calls: they work whether or not ferryctl has the subcommands.
ctl call vhost_create_scsi_controller '{"ctrlr": "vhost.scsi0", "cpumask": "0x1"}'
ctl call vhost_scsi_controller_add_target '{"ctrlr": "vhost.scsi0", "scsi_target_num": 0, "bdev_name": "Malloc0"}'
wait_sock "$work/vhost.scsi0"
declare -A iops
for qd in 128 1; do
    log "ferryd vhost-scsi malloc QD$qd"
    iops[scsi.$qd]=$(perf "$work/vhost.scsi0" "$qd" --dev-type scsi --target 0 --lun 0)
done
# As SPDK, a controller is deleted only once its targets are gone.
ctl call vhost_scsi_controller_remove_target '{"ctrlr": "vhost.scsi0", "scsi_target_num": 0}'
ctl vhost_delete_controller vhost.scsi0

ctl vhost_create_blk_controller vhost.blk0 Malloc0 --cpumask 0x1
wait_sock "$work/vhost.blk0"
for qd in 128 1; do
    log "ferryd vhost-blk malloc QD$qd"
    iops[blk.$qd]=$(perf "$work/vhost.blk0" "$qd")
done
ctl vhost_delete_controller vhost.blk0

python3 - "${iops[scsi.128]}" "${iops[blk.128]}" "${iops[scsi.1]}" "${iops[blk.1]}" <<'PY'
import sys
v = list(map(int, sys.argv[1:]))
print(f"{'4 KiB randread, 1 target core':<32}{'scsi IOPS':>12}{'blk IOPS':>12}{'scsi/blk':>10}")
for name, s, b in [("malloc, QD128", v[0], v[1]), ("malloc, QD1", v[2], v[3])]:
    print(f"{name:<32}{s:>12,}{b:>12,}{s / b:>10.2f}")
PY

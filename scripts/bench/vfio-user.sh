#!/usr/bin/env bash
# vfio-user NVMe: Ferry's NVMe driver over its vfio-user transport (ferry-bdevperf with a
# `bdev_nvme_attach_controller -t vfiouser` bdev, pinned to core 1) against Ferry's VFIOUSER
# controller (ferryd, one reactor, core 0), next to the same client driving the same ferryd's
# vhost-user-blk controller through Ferry's vhost initiator (`bdev_virtio_attach_controller`).
# Both serve malloc bdevs of the same size; both clients copy through buffers in the memory
# they share with ferryd; 4 KiB random reads at QD128 and QD1. Runs alternate; medians.
# SPDK's published vfio-user NVMe figures (about 2 M IOPS per core at QD128, real hardware) are
# printed as the reference.
# Usage: scripts/bench/vfio-user.sh [SECONDS] [RUNS]   (defaults 5, 3)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
secs=${1:-5}
runs=${2:-3}
apt_install python3
build_release

work=$(mktemp -d /tmp/ferry-vfubench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; die "no socket $1"; }

"$FERRY_BIN/ferryd" -m 0x1 -r "$work/rpc.sock" -S "$work" --log-level ERROR &
pid=$!
wait_sock "$work/rpc.sock"
call() { "$FERRY_BIN/ferryctl" -s "$work/rpc.sock" call "$1" "$2" >/dev/null; }
nqn=nqn.2016-06.io.ferry:vfubench
mkdir -p "$work/vfu"
call bdev_malloc_create '{"name": "Malloc0", "num_blocks": 131072, "block_size": 4096}'
call bdev_malloc_create '{"name": "Malloc1", "num_blocks": 131072, "block_size": 4096}'
call nvmf_create_transport '{"trtype": "VFIOUSER"}'
call nvmf_create_subsystem "{\"nqn\": \"$nqn\", \"allow_any_host\": true}"
call nvmf_subsystem_add_ns "{\"nqn\": \"$nqn\", \"namespace\": {\"bdev_name\": \"Malloc0\"}}"
call nvmf_subsystem_add_listener "{\"nqn\": \"$nqn\", \"listen_address\": {\"trtype\": \"VFIOUSER\", \"traddr\": \"$work/vfu\", \"trsvcid\": \"0\"}}"
call vhost_create_blk_controller '{"ctrlr": "vblk.0", "dev_name": "Malloc1"}'

bdev_config "$work/nvme.json" bdev_nvme_attach_controller \
    "{\"name\": \"N0\", \"trtype\": \"vfiouser\", \"traddr\": \"$work/vfu\"}"
bdev_config "$work/vhost.json" bdev_virtio_attach_controller \
    "{\"name\": \"V0\", \"trtype\": \"user\", \"traddr\": \"$work/vblk.0\", \"dev_type\": \"blk\"}"
ab_runs nvme "$work/nvme.json" N0n1 vhost "$work/vhost.json" V0 "$runs" "$secs" >"$work/runs"

python3 - "$work/runs" <<'PY'
import statistics, sys
runs = {(l.split()[0], int(l.split()[1])): list(map(int, l.split()[2:])) for l in open(sys.argv[1])}
med = [int(statistics.median(runs[k])) for k in (("nvme", 128), ("vhost", 128), ("nvme", 1), ("vhost", 1))]
print(f"{'4 KiB randread, ferryd core 0, client core 1':<46}{'vfio-user':>10}{'vhost-blk':>11}{'nvme/vhost':>11}  goal")
for (qd, n, v) in ((128, med[0], med[1]), (1, med[2], med[3])):
    print(f"{'QD' + str(qd) + ' (medians, IOPS)':<46}{n:>10,}{v:>11,}{n / v:>11.2f}  >= 1.00"
          f" ({'met' if n >= v else 'not met'})")
print("reference: SPDK's vfio-user NVMe, about 2 M IOPS per core at QD128 on real hardware (published)")
PY

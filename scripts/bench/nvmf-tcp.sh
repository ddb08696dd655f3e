#!/usr/bin/env bash
# NVMe-oF/TCP: ferryd's target (one reactor, core 0) driven by Ferry's own NVMe/TCP initiator
# (ferry-bdevperf with a `bdev_nvme_attach_controller` bdev, pinned to core 1), 4 KiB random
# reads at QD128 and QD1 on a malloc namespace. To read the transport's cost, the same client
# drives the same target's vhost-user-blk controller on a malloc bdev of the same size
# (ferry-bdevperf with a `bdev_virtio_attach_controller` bdev): same target core, same client
# core, only the transport differs. Runs alternate; medians. SPDK's NVMe/TCP target did
# 461-665 K IOPS at QD128 and 67-98 K at QD1 with its perf tool on this machine class (not built
# here): printed as the reference.
# Usage: scripts/bench/nvmf-tcp.sh [SECONDS] [RUNS]   (defaults 5, 3)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
secs=${1:-5}
runs=${2:-3}
apt_install python3
build_release

work=$(mktemp -d /tmp/ferry-nvmfbench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; die "no socket $1"; }

"$FERRY_BIN/ferryd" -m 0x1 -r "$work/rpc.sock" -S "$work" --log-level ERROR &
pid=$!
wait_sock "$work/rpc.sock"
call() { "$FERRY_BIN/ferryctl" -s "$work/rpc.sock" call "$1" "$2" >/dev/null; }
nqn=nqn.2016-06.io.ferry:bench
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
call bdev_malloc_create '{"name": "Malloc0", "num_blocks": 131072, "block_size": 4096}'
call bdev_malloc_create '{"name": "Malloc1", "num_blocks": 131072, "block_size": 4096}'
call nvmf_create_transport '{"trtype": "TCP"}'
call nvmf_create_subsystem "{\"nqn\": \"$nqn\", \"allow_any_host\": true}"
call nvmf_subsystem_add_ns "{\"nqn\": \"$nqn\", \"namespace\": {\"bdev_name\": \"Malloc0\"}}"
call nvmf_subsystem_add_listener "{\"nqn\": \"$nqn\", \"listen_address\": {\"trtype\": \"TCP\", \"adrfam\": \"IPv4\", \"traddr\": \"127.0.0.1\", \"trsvcid\": \"$port\"}}"
call vhost_create_blk_controller '{"ctrlr": "vblk.0", "dev_name": "Malloc1"}'

bdev_config "$work/nvmf.json" bdev_nvme_attach_controller \
    "{\"name\": \"N0\", \"trtype\": \"tcp\", \"adrfam\": \"ipv4\", \"traddr\": \"127.0.0.1\", \"trsvcid\": \"$port\", \"subnqn\": \"$nqn\"}"
bdev_config "$work/vhost.json" bdev_virtio_attach_controller \
    "{\"name\": \"V0\", \"trtype\": \"user\", \"traddr\": \"$work/vblk.0\", \"dev_type\": \"blk\"}"
ab_runs nvmf "$work/nvmf.json" N0n1 vhost "$work/vhost.json" V0 "$runs" "$secs" >"$work/runs"

python3 - "$work/runs" <<'PY'
import statistics, sys
runs = {(l.split()[0], int(l.split()[1])): list(map(int, l.split()[2:])) for l in open(sys.argv[1])}
med = [int(statistics.median(runs[k])) for k in (("nvmf", 128), ("vhost", 128), ("nvmf", 1), ("vhost", 1))]
spdk = {128: (461_000, 665_000), 1: (67_000, 98_000)}
print(f"{'4 KiB randread, target core 0, client core 1':<46}{'NVMe/TCP':>10}{'vhost-blk':>11}{'tcp/vhost':>10}  SPDK NVMe/TCP (ref)")
for (qd, n, v) in ((128, med[0], med[1]), (1, med[2], med[3])):
    lo, hi = spdk[qd]
    print(f"{'QD' + str(qd) + ' (medians, IOPS)':<46}{n:>10,}{v:>11,}{n / v:>10.2f}  {lo:,}-{hi:,}"
          f" ({'above' if n > hi else 'within' if n >= lo else 'below'})")
PY

#!/usr/bin/env bash
# vhost-user-blk: ferryd (one reactor, core 0) against qemu-storage-daemon (pinned to core 0),
# in turn, driven by the same initiator (ferry-vhost-perf, pinned to core 1): 4 KiB random
# reads at QD128 and QD1, on two backings each serves alike:
#   null:  Ferry's null bdev            vs qsd's null-co (read-zeroes=on)
#   file:  Ferry's uring bdev           vs qsd's file driver (io_uring), same file on tmpfs
# and Ferry's malloc bdev against SPDK's published per-core figures (1.39 M at QD128, 480 K at QD1).
# Usage: scripts/bench/vhost-blk.sh [SECONDS]   (default 5)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
secs=${1:-5}
apt_install python3
command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon not found (package qemu-utils)"
build_release
(cd "$FERRY_ROOT" && cargo build --release --quiet -p ferry-vhost-initiator)

work=$(mktemp -d /tmp/ferry-vbench.XXXXXX)
img=/dev/shm/ferry-vbench.img
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work" "$img"; }
trap cleanup EXIT
dd if=/dev/zero of="$img" bs=1M count=512 status=none

perf() { # SOCKET QD -> IOPS
    "$FERRY_BIN/ferry-vhost-perf" -s "$1" -q "$2" -o 4096 -w randread -t "$secs" --cpu 1 --json-summary |
        tail -n 1 | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["iops"]))'
}
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; die "no socket $1"; }

# Ferry: one reactor on core 0, three controllers.
"$FERRY_BIN/ferryd" -m 0x1 -r "$work/rpc.sock" -S "$work" --log-level ERROR &
pids+=($!)
wait_sock "$work/rpc.sock"
ctl() { "$FERRY_BIN/ferryctl" -s "$work/rpc.sock" "$@" >/dev/null; }
ctl bdev_null_create Null0 512 512
ctl bdev_uring_create "$img" File0 512
ctl bdev_malloc_create -b Malloc0 512 512
ctl vhost_create_blk_controller null.0 Null0
ctl vhost_create_blk_controller file.0 File0
ctl vhost_create_blk_controller malloc.0 Malloc0
declare -A ferry
for kind in null file malloc; do
    for qd in 128 1; do
        log "ferryd $kind QD$qd"
        ferry[$kind.$qd]=$(perf "$work/$kind.0" "$qd")
    done
done
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true; pids=()

qsd() { # NAME BLOCKDEV-ARGS...
    local name=$1; shift
    taskset -c 0 qemu-storage-daemon "$@" \
        --export "type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path=$work/qsd.$name,writable=on,num-queues=1" &
    pids+=($!)
    wait_sock "$work/qsd.$name"
}
declare -A peer
qsd null --blockdev driver=null-co,node-name=disk0,size=536870912,read-zeroes=on
for qd in 128 1; do log "qemu-storage-daemon null QD$qd"; peer[null.$qd]=$(perf "$work/qsd.null" "$qd"); done
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true; pids=()
qsd file --blockdev "driver=file,node-name=f0,filename=$img,aio=io_uring,cache.direct=off" \
    --blockdev driver=raw,node-name=disk0,file=f0
for qd in 128 1; do log "qemu-storage-daemon file QD$qd"; peer[file.$qd]=$(perf "$work/qsd.file" "$qd"); done

python3 - "${ferry[null.128]}" "${peer[null.128]}" "${ferry[null.1]}" "${peer[null.1]}" \
    "${ferry[file.128]}" "${peer[file.128]}" "${ferry[file.1]}" "${peer[file.1]}" \
    "${ferry[malloc.128]}" "${ferry[malloc.1]}" <<'PY'
import sys
v = list(map(int, sys.argv[1:]))
rows = [("null, QD128", v[0], v[1], "qsd null-co"), ("null, QD1", v[2], v[3], "qsd null-co"),
        ("tmpfs file, QD128", v[4], v[5], "qsd file/io_uring"), ("tmpfs file, QD1", v[6], v[7], "qsd file/io_uring"),
        ("malloc, QD128", v[8], 1_390_000, "SPDK (reference)"), ("malloc, QD1", v[9], 480_000, "SPDK (reference)")]
print(f"{'4 KiB randread, 1 target core':<24}{'Ferry IOPS':>12}{'peer IOPS':>12}{'ratio':>8}  peer")
for name, f, p, who in rows:
    print(f"{name:<24}{f:>12,}{p:>12,}{f / p:>8.2f}  {who}")
print(f"target: Ferry above 8x qemu-storage-daemon at QD128 (null: {v[0] / v[1]:.1f}x, file: {v[4] / v[5]:.1f}x)")
PY

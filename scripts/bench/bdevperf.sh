#!/usr/bin/env bash
# ferry-bdevperf 4 KiB random reads at QD128 on ONE pinned core, malloc and null bdevs, with
# fio on the same core as the peer measured in the same run:
#   null bdev   vs  fio --ioengine=null          (each framework's own per-I/O ceiling)
#   malloc bdev vs  fio --ioengine=io_uring on a tmpfs file (the kernel's RAM-backed path)
#   malloc bdev vs  SPDK's bdevperf on the same malloc configuration, when an SPDK build is
#                   there ($FERRY_SPDK_DIR, or spdk-build.sh's cache; this bench does not
#                   build it: vhost-spdk.sh does, and has the row too)
# Usage: scripts/bench/bdevperf.sh [SECONDS]   (default 10)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
secs=${1:-10}
core=0
apt_install fio python3
build_release

FERRY_SPDK_REUSE_ONLY=1 source "$(dirname "$0")/spdk-common.sh"
spdk_perf=$SPDK/build/examples/bdevperf

work=$(mktemp -d /tmp/ferry-bench.XXXXXX)
trap 'restore_hugepages; rm -rf "$work" /dev/shm/ferry-bench.img' EXIT
cat >"$work/bdevs.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":131072,"block_size":4096}},
 {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":131072,"block_size":4096}}]}]}
JSON

ferry_iops() { # BDEV
    "$FERRY_BIN/ferry-bdevperf" -c "$work/bdevs.json" -m "0x$((1 << core))" -T "$1" \
        -q 128 -o 4096 -w randread -t "$secs" --json-summary | tail -n 1 |
        python3 -c 'import json,sys; print(int(json.load(sys.stdin)["iops"]))'
}
fio_iops() { # fio args...
    taskset -c "$core" fio --name=peer --rw=randread --bs=4k --iodepth=128 --time_based \
        --runtime="$secs" --output-format=json "$@" |
        python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))'
}

log "ferry-bdevperf null, core $core"; f_null=$(ferry_iops Null0)
log "fio null engine, core $core"; p_null=$(fio_iops --ioengine=null --size=512m)
log "ferry-bdevperf malloc, core $core"; f_malloc=$(ferry_iops Malloc0)
log "fio io_uring on tmpfs, core $core"
truncate -s 512m /dev/shm/ferry-bench.img
dd if=/dev/zero of=/dev/shm/ferry-bench.img bs=1M count=512 status=none
p_malloc=$(fio_iops --ioengine=io_uring --filename=/dev/shm/ferry-bench.img --size=512m)
s_malloc=0
if [ -x "$spdk_perf" ]; then
    log "SPDK bdevperf malloc, core $core"
    reserve_spdk_hugepages
    # Its own configuration with the malloc bdev alone: SPDK's bdevperf runs a job per bdev.
    bdev_config "$work/malloc.json" bdev_malloc_create '{"name":"Malloc0","num_blocks":131072,"block_size":4096}'
    s_malloc=$("$spdk_perf" -m "0x$((1 << core))" --json "$work/malloc.json" -q 128 -o 4096 -w randread \
        -t "$secs" --disable-cpumask-locks 2>&1 | spdk_iops)
else
    log "no SPDK build at $SPDK (FERRY_SPDK_DIR): the SPDK row is left out"
fi

python3 - "$f_null" "$p_null" "$f_malloc" "$p_malloc" "$s_malloc" <<'PY'
import sys
f_null, p_null, f_malloc, p_malloc, s_malloc = map(int, sys.argv[1:])
print(f"{'4 KiB randread QD128, 1 core':<34}{'Ferry IOPS':>14}{'peer IOPS':>14}{'ratio':>8}")
print(f"{'null bdev vs fio null engine':<34}{f_null:>14,}{p_null:>14,}{f_null / p_null:>8.2f}")
print(f"{'malloc bdev vs fio io_uring tmpfs':<34}{f_malloc:>14,}{p_malloc:>14,}{f_malloc / p_malloc:>8.2f}")
if s_malloc:
    print(f"{'malloc bdev vs SPDK bdevperf':<34}{f_malloc:>14,}{s_malloc:>14,}{f_malloc / s_malloc:>8.2f}")
print(f"null bdev target > 5,000,000: {'met' if f_null > 5_000_000 else 'NOT met'}")
PY

#!/usr/bin/env bash
# Ferry against SPDK, side by side, driven by the same client: SPDK's own bdevperf.
#
# vhost rows: one target at a time on core 0 (SPDK's reactor spins even when idle, so the two
# never run together), the client on core 1. The target is ferryd or SPDK's `vhost` app,
# started from ONE configuration file (SPDK's JSON format, which ferryd -c reads too) with a
# 512 MiB bdev of 4 KiB blocks and one controller on it. The client is SPDK's bdevperf as a
# virtio-user initiator (bdev_virtio_attach_controller trtype "user", dev_type blk or scsi, then
# bdev_wait_for_examine), 4 KiB random reads, one virtqueue of 512 entries, at QD128 and QD1.
# Rows: vhost-user-blk and vhost-user-scsi, each on a malloc bdev and on a null bdev.
#   The null rows use each framework's own null bdev with no data work: SPDK's leaves read
#   buffers untouched, and so does Ferry's with `read_zeroes: false` (its default zero-fills).
# bdev-layer row: ferry-bdevperf against SPDK's bdevperf on the same malloc configuration,
#   both on core 0 alone, 4 KiB random reads at QD128.
# Every figure is the median of RUNS alternating runs (Ferry, SPDK, Ferry, ...), a target
# started afresh for each run; the ratio is Ferry/SPDK. Each run's figures go to stderr.
# "paired" is the median of the runs' own ratios (Ferry's i-th run over SPDK's i-th, run next to
# it): this VM switches between a slow and a fast mode from one run to the next (the host moving
# its vCPUs), and a median of each side's runs alone can then take its figure from different
# modes on the two sides; a pair is less often split by a switch.
# This machine is shared: a measurement during which other tasks waited for a CPU (the kernel's
# CPU pressure, /proc/pressure/cpu, above FERRY_BENCH_MAX_PRESSURE per mille of the run, default
# 30; an undisturbed run shows 5-15, the bench's own threads starting) is taken again, up to
# three times; the table says how many stayed disturbed.
#
# Usage: scripts/bench/vhost-spdk.sh [SECONDS [RUNS]]   (default 5 s per measurement, 5 runs)
# Environment: FERRY_VHOST_ONLY="blk:null scsi:*" runs only the matching vhost rows (glob
#   patterns on dev:bdev) and leaves out the bdev-layer row unless it names "bdev".
# SPDK: v26.05, built outside this repository by scripts/bench/spdk-build.sh (the first run
#   takes about 5 minutes more; later runs reuse the build in /var/cache/ferry-spdk), or the
#   build at $FERRY_SPDK_DIR: build/bin/vhost and build/examples/bdevperf.
# Bench etiquette: waits until no CI runs (.ci/run, which execs scripts/test.sh) and no other bench holds
# /tmp/ferry-bench.lock, then holds that lock until it exits. Raises vm.nr_hugepages to what
# SPDK needs (3 GiB of 2 MiB pages) for the run and restores it afterwards.
set -euo pipefail
# A failed measurement inside $(...) must stop the bench, not leave an empty figure.
shopt -s inherit_errexit
source "$(dirname "$0")/../lib.sh"
secs=${1:-5}
runs=${2:-5}
need_root
apt_install python3

source "$(dirname "$0")/vhost-targets.sh"
build_release

work=$(mktemp -d /tmp/ferry-spdkbench.XXXXXX)
target_pid=""
trap spdk_bench_cleanup EXIT

# Etiquette: CI and other benches first; then this bench holds the lock.
take_bench_lock

reserve_spdk_hugepages

# client QD DEV_TYPE: SPDK's bdevperf on core 1 as a virtio-user client of $work/vhost.0; IOPS.
client() {
    local out
    client_config "$2"
    if ! out=$("$spdk_perf" -m 0x2 -g -s 1024 --json "$work/client.json" -q "$1" -o 4096 -w randread \
        -t "$secs" --disable-cpumask-locks 2>&1); then
        printf '%s\n' "$out" | tail -n 20 >&2
        echo "--- target log:" >&2
        tail -n 20 "$work/target.log" >&2
        die "bdevperf (virtio-user, $2) failed"
    fi
    printf '%s\n' "$out" | spdk_iops
}

declare -A all # "ROW|ferry" / "ROW|spdk" -> space-separated IOPS of every run
rows=()
for dev in blk scsi; do
    for bdev in malloc null; do
        row_selected "${FERRY_VHOST_ONLY:-}" "$dev:$bdev" || continue
        target_config "$work/target-spdk.json" "bdev_${bdev}_create" "$dev"
        nodata=""
        [ "$bdev" = null ] && nodata=',"read_zeroes":false'
        target_config "$work/target-ferry.json" "bdev_${bdev}_create" "$dev" "$nodata"
        for i in $(seq "$runs"); do
            for who in ferry spdk; do
                start_target "$who" "$work/target-$who.json"
                for qd in 128 1; do
                    row="vhost-user-$dev $bdev QD$qd"
                    iops=$(checked "run $i $who $row" client "$qd" "$dev")
                    all[$row|$who]+="$iops "
                done
                stop_target
            done
        done
        rows+=("vhost-user-$dev $bdev QD128" "vhost-user-$dev $bdev QD1")
    done
done

# The bdev layer: each bdevperf alone on core 0, the same malloc configuration.
bdev_config "$work/malloc.json" bdev_malloc_create '{"name":"Malloc0","num_blocks":131072,"block_size":4096}'
row="bdev layer malloc QD128 (bdevperf)"
ferry_bdevperf() {
    "$FERRY_BIN/ferry-bdevperf" -c "$work/malloc.json" -m 0x1 -T Malloc0 -q 128 -o 4096 -w randread \
        -t "$secs" --disable-cpumask-locks --json-summary | tail -n 1 |
        python3 -c 'import json,sys; print(int(json.load(sys.stdin)["iops"]))'
}
spdk_bdevperf() {
    "$spdk_perf" -m 0x1 --json "$work/malloc.json" -q 128 -o 4096 -w randread -t "$secs" \
        --disable-cpumask-locks 2>&1 | spdk_iops
}
if row_selected "${FERRY_VHOST_ONLY:-}" bdev; then
    for i in $(seq "$runs"); do
        all[$row|ferry]+="$(checked "run $i ferry $row" ferry_bdevperf) "
        all[$row|spdk]+="$(checked "run $i spdk $row" spdk_bdevperf) "
    done
    rows+=("$row")
fi

{
    echo "$secs $runs"
    for row in "${rows[@]}"; do
        printf '%s|%s|%s\n' "$row" "${all[$row|ferry]}" "${all[$row|spdk]}"
    done
} >"$work/results"
python3 - "$work/results" <<'PY'
import statistics, sys
with open(sys.argv[1]) as f:
    secs, runs = f.readline().split()
    print(f"4 KiB randread, target core 0, client core 1; medians of {runs} alternating runs of {secs} s")
    print(f"{'':<36}{'Ferry IOPS':>12}{'SPDK IOPS':>12}{'Ferry/SPDK':>12}{'paired':>8}")
    for line in f:
        row, fe, sp = line.rstrip("\n").split("|")
        fe, sp = list(map(int, fe.split())), list(map(int, sp.split()))
        paired = statistics.median(a / b for a, b in zip(fe, sp))
        fe, sp = statistics.median(fe), statistics.median(sp)
        print(f"{row:<36}{int(fe):>12,}{int(sp):>12,}{fe / sp:>12.2f}{paired:>8.2f}")
PY
if [ -s "$work/disturbed" ]; then
    echo "$(wc -l <"$work/disturbed") measurement(s) stayed disturbed by other tasks after three tries"
else
    echo "no measurement disturbed by other tasks (CPU pressure at most ${max_pressure}/1000 of each)"
fi

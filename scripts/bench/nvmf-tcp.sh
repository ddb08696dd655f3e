#!/usr/bin/env bash
# NVMe-oF/TCP side by side with SPDK: ferryd's target and SPDK's nvmf_tgt, one at a time on
# core 0 (one reactor each; SPDK's reactor spins even when idle), each driven from core 1 by
# both clients: Ferry's own NVMe/TCP initiator (ferry-bdevperf with a
# `bdev_nvme_attach_controller` bdev) and SPDK's `spdk_nvme_perf`. 4 KiB random reads of a
# 512 MiB malloc namespace of 4096-byte blocks at QD128 and QD1 (random writes too with
# FERRY_BENCH_WRITES=1); both targets configured by the same RPCs with SPDK's transport
# defaults. The pairs that matter:
#   Ferry target + Ferry initiator against SPDK target + SPDK perf (each project's own pair);
#   the two targets under the same client (each client in turn);
#   the two clients against the same target.
# Next to them, to read the transport's cost: Ferry's initiator over vhost-user-blk to the
# same ferryd (a `bdev_virtio_attach_controller` bdev on a malloc bdev of the same size).
# Runs alternate (the order of the targets flips every run); medians.
#
# Usage: scripts/bench/nvmf-tcp.sh [SECONDS [RUNS]]   (defaults 5 s, 5 runs)
# SPDK: build/bin/nvmf_tgt and build/bin/spdk_nvme_perf of an SPDK v26.x build at
#   $FERRY_SPDK_DIR, else the build scripts/bench/spdk-build.sh makes or reuses.
# Bench etiquette as vhost-spdk.sh: waits for CI and other benches, holds
# /tmp/ferry-bench.lock, raises vm.nr_hugepages for SPDK and restores it.
set -euo pipefail
shopt -s inherit_errexit
source "$(dirname "$0")/../lib.sh"
source "$(dirname "$0")/spdk-common.sh"
secs=${1:-5}
runs=${2:-5}
need_root
apt_install python3
spdk_tgt=$SPDK/build/bin/nvmf_tgt
spdk_nvme_perf=$SPDK/build/bin/spdk_nvme_perf
[ -x "$spdk_tgt" ] && [ -x "$spdk_nvme_perf" ] ||
    die "SPDK's nvmf_tgt and spdk_nvme_perf not found under $SPDK/build (set FERRY_SPDK_DIR to an SPDK v26.x build)"
build_release

work=$(mktemp -d /tmp/ferry-nvmfbench.XXXXXX)
target_pid=""
trap spdk_bench_cleanup EXIT
take_bench_lock
reserve_spdk_hugepages

nqn=nqn.2016-06.io.spdk:cnode1
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
workloads=(randread)
[ "${FERRY_BENCH_WRITES:-0}" = 1 ] && workloads+=(randwrite)

call() { "$FERRY_BIN/ferryctl" -s "$work/target.sock" call "$1" "$2" >/dev/null; }

# start_target ferry|spdk: the target on core 0 serving Malloc0 as namespace 1 of $nqn on
# 127.0.0.1:$port (and, on ferryd, vhost-user-blk controller vblk.0 on Malloc1).
start_target() {
    rm -f "$work/target.sock" "$work/vblk.0"
    if [ "$1" = ferry ]; then
        "$FERRY_BIN/ferryd" -m 0x1 -r "$work/target.sock" -S "$work" --disable-cpumask-locks \
            --log-level ERROR >"$work/target.log" 2>&1 &
    else
        "$spdk_tgt" -m 0x1 -r "$work/target.sock" -s 1024 --disable-cpumask-locks >"$work/target.log" 2>&1 &
    fi
    target_pid=$!
    for _ in $(seq 200); do
        [ -S "$work/target.sock" ] && break
        kill -0 "$target_pid" 2>/dev/null || { cat "$work/target.log" >&2; die "$1 target exited"; }
        sleep 0.1
    done
    call bdev_malloc_create '{"name": "Malloc0", "num_blocks": 131072, "block_size": 4096}'
    call nvmf_create_transport '{"trtype": "TCP"}'
    call nvmf_create_subsystem "{\"nqn\": \"$nqn\", \"allow_any_host\": true, \"serial_number\": \"BENCH0001\"}"
    call nvmf_subsystem_add_ns "{\"nqn\": \"$nqn\", \"namespace\": {\"bdev_name\": \"Malloc0\"}}"
    call nvmf_subsystem_add_listener "{\"nqn\": \"$nqn\", \"listen_address\": {\"trtype\": \"TCP\", \"adrfam\": \"IPv4\", \"traddr\": \"127.0.0.1\", \"trsvcid\": \"$port\"}}"
    if [ "$1" = ferry ]; then
        call bdev_malloc_create '{"name": "Malloc1", "num_blocks": 131072, "block_size": 4096}'
        call vhost_create_blk_controller '{"ctrlr": "vblk.0", "dev_name": "Malloc1"}'
    fi
}
stop_target() {
    kill -INT "$target_pid"
    wait "$target_pid" || true
    target_pid=""
}

bdev_config "$work/nvmf.json" bdev_nvme_attach_controller \
    "{\"name\": \"N0\", \"trtype\": \"tcp\", \"adrfam\": \"ipv4\", \"traddr\": \"127.0.0.1\", \"trsvcid\": \"$port\", \"subnqn\": \"$nqn\"}"
bdev_config "$work/vhost.json" bdev_virtio_attach_controller \
    "{\"name\": \"V0\", \"trtype\": \"user\", \"traddr\": \"$work/vblk.0\", \"dev_type\": \"blk\"}"

# ferry_client CONFIG BDEV QD WORKLOAD: ferry-bdevperf on core 1; IOPS.
ferry_client() {
    "$FERRY_BIN/ferry-bdevperf" -c "$1" -m 0x2 -T "$2" -q "$3" -o 4096 -w "$4" -t "$secs" \
        --disable-cpumask-locks --json-summary | tail -n 1 |
        python3 -c 'import json,sys; print(int(json.load(sys.stdin)["iops"]))'
}
# spdk_client QD WORKLOAD: spdk_nvme_perf on core 1; IOPS.
spdk_client() {
    local out
    if ! out=$("$spdk_nvme_perf" -c 0x2 -q "$1" -o 4096 -w "$2" -t "$secs" \
        -r "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$port subnqn:$nqn" 2>&1); then
        printf '%s\n' "$out" | tail -n 20 >&2
        die "spdk_nvme_perf failed"
    fi
    printf '%s\n' "$out" | spdk_iops
}

declare -A all # "WORKLOAD QD|TARGET|CLIENT" -> space-separated IOPS of every run
for i in $(seq "$runs"); do
    order=(ferry spdk)
    [ $((i % 2)) = 0 ] && order=(spdk ferry)
    for tgt in "${order[@]}"; do
        start_target "$tgt"
        for w in "${workloads[@]}"; do
            for qd in 128 1; do
                key="$w QD$qd"
                all[$key|$tgt|ferry]+="$(checked "run $i $tgt target, ferry initiator, $key" ferry_client "$work/nvmf.json" N0n1 "$qd" "$w") "
                all[$key|$tgt|spdk]+="$(checked "run $i $tgt target, spdk_nvme_perf, $key" spdk_client "$qd" "$w") "
                if [ "$tgt" = ferry ]; then
                    all[$key|vhost|ferry]+="$(checked "run $i ferry vhost-user-blk, ferry initiator, $key" ferry_client "$work/vhost.json" V0 "$qd" "$w") "
                fi
            done
        done
        stop_target
    done
done

{
    echo "$secs $runs"
    for w in "${workloads[@]}"; do
        for qd in 128 1; do
            key="$w QD$qd"
            printf '%s|%s|%s|%s|%s|%s\n' "$key" "${all[$key|ferry|ferry]}" "${all[$key|spdk|spdk]}" \
                "${all[$key|ferry|spdk]}" "${all[$key|spdk|ferry]}" "${all[$key|vhost|ferry]}"
        done
    done
} >"$work/results"
python3 - "$work/results" <<'PY'
import statistics, sys
med = lambda s: int(statistics.median(map(int, s.split())))
with open(sys.argv[1]) as f:
    secs, runs = f.readline().split()
    print(f"NVMe/TCP, 4 KiB, target core 0, client core 1; medians of {runs} alternating runs of {secs} s (IOPS)")
    print(f"{'':<16}{'Ferry pair':>12}{'SPDK pair':>12}{'ratio':>7}"
          f"{'perf->Ferry':>13}{'perf->SPDK':>12}{'ratio':>7}"
          f"{'init->SPDK':>12}{'ratio':>7}{'vhost-blk':>11}{'tcp/vhost':>10}")
    for line in f:
        key, ff, ss, fs, sf, vf = line.rstrip("\n").split("|")
        ff, ss, fs, sf, vf = map(med, (ff, ss, fs, sf, vf))
        # ratio 1: each project's own pair; 2: the targets under SPDK's perf; 3: the targets
        # under Ferry's initiator.
        print(f"{key:<16}{ff:>12,}{ss:>12,}{ff / ss:>7.2f}{fs:>13,}{ss:>12,}{fs / ss:>7.2f}"
              f"{sf:>12,}{ff / sf:>7.2f}{vf:>11,}{ff / vf:>10.2f}")
print("Ferry pair: ferryd + Ferry's initiator; SPDK pair: nvmf_tgt + spdk_nvme_perf;"
      " init->SPDK: Ferry's initiator on SPDK's target (ratio: ferryd/nvmf_tgt under Ferry's initiator)")
PY
if [ -s "$work/disturbed" ]; then
    echo "$(wc -l <"$work/disturbed") measurement(s) stayed disturbed by other tasks after three tries"
else
    echo "no measurement disturbed by other tasks (CPU pressure at most ${max_pressure}/1000 of each)"
fi

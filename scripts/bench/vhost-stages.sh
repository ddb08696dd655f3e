#!/usr/bin/env bash
# Where the time goes, per I/O: Ferry's and SPDK's vhost targets profiled under the same client.
#
# The setup is vhost-spdk.sh's: one target at a time on core 0 (ferryd -m 0x1 or SPDK's
# `vhost -m 0x1`, from one configuration file: a 512 MiB bdev of 4 KiB blocks, one vhost-user-blk
# or vhost-user-scsi controller), SPDK's bdevperf as a virtio-user client on core 1, 4 KiB random
# reads, one virtqueue of 512 entries. For each target (ferry, spdk) x device (blk, scsi) x bdev
# (malloc; null with no data work: SPDK's own, Ferry's with "read_zeroes": false) x QD (1, 128):
#   - the client runs; once its I/O flows, `perf record -C 0` samples core 0 (cpu-clock, dwarf
#     call graphs, inlined frames resolved from the binaries' debug info) and `perf stat -C 0`
#     counts it, for SECONDS + 2; the window is the SECONDS in the middle;
#   - at the window's start and end (one helper process for both): the target's
#     bdev_get_iostat (the I/O done in the window), thread_get_stats of the target and of the
#     client (busy and idle ticks: idle is time in loop iterations whose pollers all found
#     nothing), both reactor threads' run time (schedstat: a window in which other tasks took
#     more than 3% of either core is measured again, up to three times) and both processes'
#     write(2) counts (the client's eventfd kicks, the target's interrupts);
#   - vhost-stages.py attributes each core-0 sample to a stage (its table maps Ferry's and
#     SPDK's functions to stages) and prints ns per I/O per stage = share of core-0 samples in
#     the stage x window ns / I/Os done in the window.
# The table at the end has one column per target x device x bdev x QD. This machine is a VM
# without hardware counters: perf stat's cycles and instructions read "not supported", so
# only time is measured. perf itself runs pinned to core 0 and shows as its own row.
#
# Usage: scripts/bench/vhost-stages.sh [SECONDS]   (default 5 s per window)
# Environment: FERRY_STAGES_ONLY="ferry:blk:null:128 spdk:scsi:*:1" runs only the matching
#   cases (glob patterns on who:dev:bdev:qd); FERRY_STAGES_KEEP=DIR keeps each case's
#   perf.data, perf script output and figures there; FERRY_STAGES_FREQ sampling rate (2999 Hz);
#   FERRY_STAGES_MD=1 prints the table in Markdown.
# SPDK: as vhost-spdk.sh (spdk-build.sh, or $FERRY_SPDK_DIR).
# Bench etiquette: waits until no CI runs and no other bench holds /tmp/ferry-bench.lock, then
# holds it; raises vm.nr_hugepages for SPDK and restores it.
set -euo pipefail
shopt -s inherit_errexit
source "$(dirname "$0")/../lib.sh"
secs=${1:-5}
freq=${FERRY_STAGES_FREQ:-2999}
need_root
apt_install python3 linux-perf
here=$(cd "$(dirname "$0")" && pwd)

source "$(dirname "$0")/vhost-targets.sh"
build_release

work=$(mktemp -d /tmp/ferry-stages.XXXXXX)
target_pid=""
client_pid=""
trap spdk_bench_cleanup EXIT

take_bench_lock
reserve_spdk_hugepages


# start_client QD DEV_TYPE SECONDS: SPDK's bdevperf on core 1 (RPC socket $work/client.sock).
start_client() {
    client_config "$2"
    rm -f "$work/client.sock"
    "$spdk_perf" -m 0x2 -g -s 1024 -r "$work/client.sock" --json "$work/client.json" -q "$1" -o 4096 \
        -w randread -t "$3" --disable-cpumask-locks >"$work/client.log" 2>&1 &
    client_pid=$!
    track_pid "$client_pid"
}

cases=()
for who in ferry spdk; do
    for dev in blk scsi; do
        for bdev in malloc null; do
            for qd in 128 1; do
                c="$who:$dev:$bdev:$qd"
                if [ -n "${FERRY_STAGES_ONLY:-}" ]; then
                    hit=""
                    for pat in $FERRY_STAGES_ONLY; do
                        # shellcheck disable=SC2053 # the pattern is a glob on purpose
                        [[ $c == $pat ]] && hit=1
                    done
                    [ -n "$hit" ] || continue
                fi
                cases+=("$c")
            done
        done
    done
done
[ ${#cases[@]} -gt 0 ] || die "no case matches FERRY_STAGES_ONLY=$FERRY_STAGES_ONLY"

# measure CASE DIR: one profiled window of CASE; returns 1 if other tasks took more than
# FERRY_STAGES_MAX_STOLEN percent (default 3) of the target's or the client's core meanwhile.
measure() {
    local who dev bdev qd d=$2 extra="" stat_pid record_pid
    IFS=: read -r who dev bdev qd <<<"$1"
    [ "$who" = ferry ] && [ "$bdev" = null ] && extra=',"read_zeroes":false'
    target_config "$d/target.json" "bdev_${bdev}_create" "$dev" "$extra"
    start_target "$who" "$d/target.json"
    start_client "$qd" "$dev" $((secs + 10))
    wait_for_flow
    # perf runs a second longer on each side of the window, so that neither its start nor its
    # end (nor an interpreter's) falls inside it.
    taskset -c 0 perf stat -C 0 -x, -e task-clock,context-switches,cpu-migrations,cycles,instructions \
        -o "$d/stat.csv" -- sleep $((secs + 2)) &
    stat_pid=$!
    taskset -c 0 perf record -q -C 0 -e cpu-clock -F "$freq" --call-graph dwarf,2048 -o "$d/perf.data" \
        -- sleep $((secs + 2)) 2>"$d/record.log" &
    record_pid=$!
    sleep 1
    python3 "$here/vhost-stages.py" monitor "$work/target.sock" "$work/client.sock" "$target_pid" "$client_pid" \
        "$secs" "$d/window.json"
    wait "$record_pid" "$stat_pid"
    kill -0 "$client_pid" 2>/dev/null || die "$1: the client finished before the window closed"
    wait "$client_pid" || { tail -n 20 "$work/client.log" >&2; die "$1: bdevperf failed"; }
    client_pid=""
    python3 "$here/vhost-stages.py" iops <"$work/client.log" >"$d/client_iops"
    echo "$target_pid" >"$d/target_pid"
    stop_target
    python3 "$here/vhost-stages.py" stolen "$d" "${FERRY_STAGES_MAX_STOLEN:-3}"
}

for c in "${cases[@]}"; do
    IFS=: read -r who dev bdev qd <<<"$c"
    d="$work/$who-$dev-$bdev-$qd"
    mkdir -p "$d"
    for try in 1 2 3; do
        log "$c: profiling core 0 for $secs s (try $try)"
        measure "$c" "$d" && break
        [ "$try" = 3 ] && { log "$c: still disturbed after three tries; kept, marked in the table"; break; }
        log "$c: other tasks took the target's or the client's core: measuring again"
        sleep 5
    done
done

log "attributing samples (perf script)"
dirs=()
for c in "${cases[@]}"; do
    IFS=: read -r who dev bdev qd <<<"$c"
    d="$work/$who-$dev-$bdev-$qd"
    # Inlined frames (addr2line) for the target's samples only: other processes' (a compiler
    # that ran on core 0, say) could take many minutes and are only counted.
    perf script -i "$d/perf.data" --pid "$(cat "$d/target_pid")" -F comm,pid,tid,ip,sym,dso --inline 2>/dev/null \
        >"$d/script.txt"
    perf script -i "$d/perf.data" -F comm,pid -G 2>/dev/null >"$d/comms.txt"
    python3 "$here/vhost-stages.py" attribute "$who" "$(cat "$d/target_pid")" "$d" >"$d/result.json"
    dirs+=("$d")
    [ -z "${FERRY_STAGES_KEEP:-}" ] || { mkdir -p "$FERRY_STAGES_KEEP" && cp -a "$d" "$FERRY_STAGES_KEEP/"; }
done
python3 "$here/vhost-stages.py" table "$secs" "$freq" "${dirs[@]}"

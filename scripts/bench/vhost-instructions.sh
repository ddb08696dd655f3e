#!/usr/bin/env bash
# Instructions per I/O: how much work Ferry's and SPDK's vhost targets do for one request, and
# how much SPDK's bdevperf does as their client, counted by valgrind's callgrind.
#
# Why: vhost-spdk.sh measures IOPS, and on this VM two things blur what that says about the
# targets. The host moves the two vCPUs between a slow and a fast mode (performance.md), and on
# a bdev that does no data work the client itself can be the slower side: then both targets wait
# for it and the ratio says nothing about them. An instruction count depends on neither. It is
# not time (a cache miss costs no instruction, and one instruction is not another's cost), so it
# is a second view next to the IOPS, not a replacement.
#
# The setup is vhost-spdk.sh's: one target (ferryd -m 0x1 or SPDK's `vhost -m 0x1`, from one
# configuration file: a 512 MiB bdev of 4 KiB blocks, one vhost-user-blk or vhost-user-scsi
# controller), SPDK's bdevperf on core 1 as a virtio-user client (one queue of 512 entries),
# 4 KiB random reads at QD128. For each device (blk, scsi) x bdev (null with no data work: SPDK's
# own, Ferry's with "read_zeroes": false; and malloc):
#   - target: the target runs under callgrind, the client natively. Once reads flow, the
#     target's counters are zeroed, SECONDS later dumped; the requests in between are the calls
#     of a function each side runs once per I/O (Ferry's `BdevIo::run_callback`, SPDK's
#     `spdk_bdev_io_complete`, bdevperf's `bdevperf_complete`), from the same dump. Under
#     callgrind the target is the slow side, so the ring stays full and work done once per
#     poll is spread over more requests than in a native run.
#   - client: bdevperf runs under callgrind against the target running natively, counted the
#     same way (its own start-up, DPDK's included, is outside the window).
# It prints instructions per I/O of each side and SPDK's target over Ferry's. Both processes'
# threads are counted (the RPC thread's share is a few thousand instructions in all).
#
# Usage: scripts/bench/vhost-instructions.sh [SECONDS]   (default 5 s per window)
# Environment: FERRY_INSN_ONLY="blk:null scsi:*" runs only the matching rows (glob patterns on
#   dev:bdev). FERRY_INSN_KEEP=DIR keeps each window's callgrind dump there, as
#   WHO-DEV-BDEV-SIDE.callgrind (for callgrind_annotate).
# SPDK: as vhost-spdk.sh (spdk-build.sh, or $FERRY_SPDK_DIR).
# Bench etiquette: waits until no CI runs and no other bench holds /tmp/ferry-bench.lock, then
# holds it; raises vm.nr_hugepages for SPDK and restores it.
set -euo pipefail
shopt -s inherit_errexit
source "$(dirname "$0")/../lib.sh"
secs=${1:-5}
need_root
apt_install python3 valgrind

source "$(dirname "$0")/vhost-targets.sh"
build_release

work=$(mktemp -d /tmp/ferry-insn.XXXXXX)
target_pid=""
client_pid=""
# SPDK's target under callgrind can hang in its teardown: stopped with KILL.
bench_kill_signal=KILL
trap spdk_bench_cleanup EXIT

take_bench_lock
reserve_spdk_hugepages

# start_client DEV_TYPE [WRAP...]: SPDK's bdevperf on core 1 for long enough, under WRAP if given.
start_client() {
    local dev=$1
    shift
    printf '{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_virtio_attach_controller","params":{"name":"Virtio0","trtype":"user","traddr":"%s","dev_type":"%s","vq_count":1,"vq_size":512}},{"method":"bdev_wait_for_examine"}]}]}\n' \
        "$work/vhost.0" "$dev" >"$work/client.json"
    "$@" "$spdk_perf" -m 0x2 -g -s 1024 --json "$work/client.json" -q 128 -o 4096 -w randread \
        -t $((secs * 4 + 120)) --disable-cpumask-locks >"$work/client.log" 2>&1 &
    client_pid=$!
    track_pid "$client_pid"
}

# count PID FUNCTION LABEL: instructions PID ran per request over a SECONDS window, the requests
# being the calls of FUNCTION (one per I/O) that callgrind counted in the same window. (The
# target's bdev_get_iostat around the window was off by up to 13%: under callgrind the RPC
# waits for the reactor's time slice, so its reading and the counters' zeroing drift apart.)
count() {
    local pid=$1 dump
    callgrind_control -z "$pid" >/dev/null 2>&1
    sleep "$secs"
    callgrind_control -d "$pid" >/dev/null 2>&1
    dump=$(find "$work" -maxdepth 1 -name 'cg.out.*' -newer "$work/zeroed" | sort -V | tail -n 1)
    [ -n "$dump" ] || die "callgrind wrote no dump for $pid"
    [ -z "${FERRY_INSN_KEEP:-}" ] || { mkdir -p "$FERRY_INSN_KEEP" && cp "$dump" "$FERRY_INSN_KEEP/$3.callgrind"; }
    python3 - "$dump" "$2" <<'PY'
import re, sys
names, called, ios, total = {}, None, 0, None
for line in open(sys.argv[1]):
    if line.startswith(("summary:", "totals:")) and total is None:
        total = int(line.split()[1])
    elif line.startswith(("fn=", "cfn=")):
        # callgrind names a function once, as "(id) name", then by "(id)" alone.
        m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        if line.startswith("cfn="):
            called = names.get(m.group(1))
    elif line.startswith("calls=") and called == sys.argv[2]:
        ios += int(line.split()[0][len("calls="):])
if not ios or total is None:
    sys.exit(f"no calls of {sys.argv[2]} in the window")
print(f"{total / ios:.0f}")
PY
}

# What each side calls once per request: Ferry's bdev I/O completion, SPDK's, bdevperf's.
per_io_fn() {
    case $1 in
    ferry) echo "ferry::bdev::io::BdevIo::run_callback" ;;
    spdk) echo "spdk_bdev_io_complete" ;;
    client) echo "bdevperf_complete" ;;
    esac
}

callgrind=(valgrind --tool=callgrind --callgrind-out-file="$work/cg.out")

# measure WHO DEV BDEV SIDE: instructions per I/O of SIDE (target or client) with WHO's target.
measure() {
    local who=$1 dev=$2 bdev=$3 side=$4 extra="" n
    [ "$who" = ferry ] && [ "$bdev" = null ] && extra=',"read_zeroes":false'
    target_config "$work/target.json" "bdev_${bdev}_create" "$dev" "$extra"
    rm -f "$work"/cg.out*
    if [ "$side" = target ]; then
        target_wrap=("${callgrind[@]}")
        target_wait=1800
        start_target "$who" "$work/target.json"
        start_client "$dev"
    else
        target_wrap=()
        target_wait=200
        start_target "$who" "$work/target.json"
        start_client "$dev" "${callgrind[@]}"
    fi
    wait_for_flow 900 # SPDK's start-up under callgrind takes most of a minute
    touch "$work/zeroed"
    if [ "$side" = target ]; then
        n=$(count "$target_pid" "$(per_io_fn "$who")" "$who-$dev-$bdev-$side")
    else
        n=$(count "$client_pid" "$(per_io_fn client)" "$who-$dev-$bdev-$side")
    fi
    kill -9 "$client_pid" 2>/dev/null || true
    wait "$client_pid" 2>/dev/null || true
    client_pid=""
    # SPDK's target under callgrind can hang in its session teardown: no need to wait for it.
    kill -9 "$target_pid" 2>/dev/null || true
    wait "$target_pid" 2>/dev/null || true
    target_pid=""
    log "$who $dev $bdev, $side: $n instructions per I/O"
    echo "$n"
}

printf '%-28s %14s %14s %12s %16s %16s\n' "4 KiB randread, QD128" "Ferry target" "SPDK target" "SPDK/Ferry" \
    "client (Ferry)" "client (SPDK)" >"$work/table"
for dev in blk scsi; do
    for bdev in null malloc; do
        row_selected "${FERRY_INSN_ONLY:-}" "$dev:$bdev" || continue
        ft=$(measure ferry "$dev" "$bdev" target)
        st=$(measure spdk "$dev" "$bdev" target)
        fc=$(measure ferry "$dev" "$bdev" client)
        sc=$(measure spdk "$dev" "$bdev" client)
        printf '%-28s %14s %14s %12s %16s %16s\n' "vhost-user-$dev, $bdev" "$ft" "$st" \
            "$(python3 -c "print(f'{$st / $ft:.2f}')")" "$fc" "$sc" >>"$work/table"
    done
done
echo "instructions per I/O (callgrind), SPDK's bdevperf as the client on core 1:"
cat "$work/table"

#!/usr/bin/env bash
# Two builds of ferryd against each other on one vhost path, for changes too small to see in
# medians of a few runs (queue depth 1 on this VM moves by 2x between runs as the host moves
# its vCPUs): PAIRS pairs of short runs, A then B, each on a target started afresh on core 0,
# driven by ferry-vhost-perf on core 1 (4 KiB random reads); prints the median of the paired
# ratios A/B with its quartiles. Drift between pairs cancels in each ratio; the order within a
# pair alternates (A B, then B A), because whichever runs first in a pair gains 2-3% (an A/A
# run of 40 pairs in fixed order: 1.025).
# Usage: scripts/bench/vhost-ab.sh DIR_A DIR_B blk|scsi null|malloc QD [SECONDS [PAIRS]]
#   DIR_A, DIR_B: directories holding a ferryd each (say, target/release of two worktrees);
#   ferry-vhost-perf comes from this tree. Default 1 s per run, 24 pairs.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
[ $# -ge 5 ] || die "usage: $0 DIR_A DIR_B blk|scsi null|malloc QD [SECONDS [PAIRS]]"
dir_a=$1 dir_b=$2 dev=$3 bdev=$4 qd=$5 secs=${6:-1} pairs=${7:-24}
for d in "$dir_a" "$dir_b"; do [ -x "$d/ferryd" ] || die "no ferryd in $d"; done
apt_install python3
(cd "$FERRY_ROOT" && cargo build --release --quiet -p ferry-vhost-initiator)
take_bench_lock
work=$(mktemp -d /tmp/ferry-vhost-ab.XXXXXX)
target_pid=""
FERRY_WITHOUT_SPDK=1 source "$(dirname "$0")/vhost-targets.sh"
trap spdk_bench_cleanup EXIT
perf_bin=$FERRY_BIN
nodata=""
[ "$bdev" = null ] && nodata=',"read_zeroes":false'
target_config "$work/target.json" "bdev_${bdev}_create" "$dev" "$nodata"

# one DIR: IOPS of one run against DIR's ferryd (vhost-targets.sh's start_target runs
# $FERRY_BIN/ferryd).
one() {
    local iops FERRY_BIN=$1
    start_target ferry "$work/target.json"
    iops=$("$perf_bin/ferry-vhost-perf" -s "$work/vhost.0" --dev-type "$dev" -q "$qd" -o 4096 -w randread \
        -t "$secs" --cpu 1 --json-summary | tail -n 1 |
        python3 -c 'import json,sys; print(int(json.load(sys.stdin)["iops"]))')
    stop_target
    echo "$iops"
}

a="" b=""
for i in $(seq "$pairs"); do
    log "pair $i"
    if [ $((i % 2)) = 1 ]; then
        a+="$(one "$dir_a") "
        b+="$(one "$dir_b") "
    else
        b+="$(one "$dir_b") "
        a+="$(one "$dir_a") "
    fi
done
python3 - "$a" "$b" "$dev $bdev QD$qd" <<'PY'
import statistics, sys
a = [int(x) for x in sys.argv[1].split()]
b = [int(x) for x in sys.argv[2].split()]
r = sorted(x / y for x, y in zip(a, b))
q = lambda f: r[min(len(r) - 1, int(f * len(r)))]
print(f"{sys.argv[3]}: A median {int(statistics.median(a)):,} IOPS, B median {int(statistics.median(b)):,} IOPS")
print(f"A/B paired: median {statistics.median(r):.3f} (quartiles {q(0.25):.3f}-{q(0.75):.3f}, {len(r)} pairs)")
PY

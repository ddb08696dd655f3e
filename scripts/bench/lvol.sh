#!/usr/bin/env bash
# Logical volumes against what they stand on, all ratios printed in one run:
#  1. ferry-bdevperf, 4 KiB randread and randwrite at QD128 on ONE pinned core (core 0): a thick
#     lvol on a malloc base vs a malloc bdev of the same size (goal: at most 5% overhead). Both
#     run in one process taking turns of 20 ms (`--interleave`): this machine's speed drifts by
#     10-15% from second to second, far more than the difference measured, so the ratio is
#     taken turn by turn (each lvol turn against the malloc turns either side of it; the
#     median of those) and the order of the two alternates from run to run.
#  2. ferry-bdevperf, 4 KiB randwrite at QD128 on a thin lvol (4 MiB clusters, SPDK's default;
#     FERRY_LVOL_BENCH_THIN_MIB sets its size, default 4096)
#     right after `bdev_lvol_snapshot` vs before it (goal: at least 50% kept).
#     "before": the lvol is prefilled (every cluster allocated, every block written), then runs.
#     "after": the same prefill, then a snapshot, then the run: every first write to a granule
#     takes the copy-on-write path (cluster allocation, Map record through the log).
#     Both in one ferry-bdevperf process each: `--prefill` writes every block once, then
#     `--after-prefill FILE` replays FILE's RPC entries (the snapshot) before the measured run.
#  3. Load time of a store on a large sparse file (default 1 TiB, 1 MiB clusters, 64 thin lvols
#     with data) after `kill -9` of ferryd under writes (dirty) and after SIGTERM (clean), from
#     ferryd's own log ("reactors started" to "lvstore loaded ... replayed=N"), against what
#     SPDK's dirty load would take: a QD1 4 KiB read of its whole metadata region (one 4 KiB
#     page per cluster: 4 GiB for 1 TiB of 1 MiB clusters), timed with `dd iflag=direct` on a
#     sample of written blocks of a file on the same file system and scaled to the region.
# Part 2's runs come in pairs whose order alternates (A B, then B A); the medians of each side
# are printed. Every process
# runs under `nice`: the machine is shared, so the ratios (and IOPS per CPU-second the reactor
# got) are the steadier figures.
# Usage: scripts/bench/lvol.sh [SECONDS] [RUNS]   (default 3 9: a run's turn ratio varies by about 1.5%
#   from run to run, each run making its bdevs afresh, so the median of 9 is the steadier figure)
#   FERRY_LVOL_BENCH_DIR: directory of the sparse file (default /var/tmp; not tmpfs)
#   FERRY_LVOL_BENCH_SIZE: its size (default 1T); FERRY_LVOL_BENCH_SKIP: "12" or "3" to skip parts
#   FERRY_LVOL_BENCH_LOAD_RUNS: runs of part 3 (default 3)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
secs=${1:-3}
runs=${2:-9}
load_runs=${FERRY_LVOL_BENCH_LOAD_RUNS:-3}
skip=${FERRY_LVOL_BENCH_SKIP:-}
apt_install python3
build_release
(cd "$FERRY_ROOT" && cargo build --release --quiet -p ferry-vhost-initiator)

work=$(mktemp -d /tmp/ferry-lvbench.XXXXXX)
bigdir=$(mktemp -d "${FERRY_LVOL_BENCH_DIR:-/var/tmp}/ferry-lvbench.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work" "$bigdir"; }
trap cleanup EXIT
BP=(nice "$FERRY_BIN/ferry-bdevperf" -m 0x1 --disable-cpumask-locks -q 128 -o 4096 --json-summary)

# bp CONFIG TARGET WORKLOAD SECONDS ARGS... -> "iops iops_per_cpu_second"
bp() {
    local cfg=$1 target=$2 wl=$3 t=$4
    shift 4
    "${BP[@]}" -c "$cfg" -T "$target" -w "$wl" -t "$t" "$@" 2>"$work/bp.err" | tail -n 1 |
        python3 -c 'import json,sys; j=json.load(sys.stdin); print(int(j["iops"]), int(j["ios"] / max(j["cpu_s"], 1e-9)))' ||
        { cat "$work/bp.err" >&2; die "ferry-bdevperf failed"; }
}
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# bp_turns CONFIG WORKLOAD SECONDS BASE LVOL FIRST -> "base_iops lvol_iops ratio": both targets in
# one process taking turns (FIRST, base or lvol, goes first); the ratio is the median over the
# lvol's turns of its IOPS against the base's turns just before and just after it.
bp_turns() {
    local cfg=$1 wl=$2 t=$3 base=$4 lvol=$5 first=$6 order
    if [ "$first" = base ]; then order=(-T "$base" -T "$lvol"); else order=(-T "$lvol" -T "$base"); fi
    "${BP[@]}" -c "$cfg" "${order[@]}" -w "$wl" -t "$t" --prefill --interleave 20 2>"$work/bp.err" | tail -n 1 |
        python3 -c '
import json, statistics, sys
jobs = {j["bdev"]: j for j in json.load(sys.stdin)["per_job"]}
base, lvol = jobs[sys.argv[1]], jobs[sys.argv[2]]
a, b = base["turn_iops"], lvol["turn_iops"]
# Turn k of the second job runs between turns k and k+1 of the first.
if sys.argv[3] == "base":
    ratios = [b[k] / a[k] for k in range(min(len(a), len(b)))] + [b[k] / a[k + 1] for k in range(min(len(a) - 1, len(b)))]
else:
    ratios = [b[k] / a[k] for k in range(min(len(a), len(b)))] + [b[k + 1] / a[k] for k in range(min(len(a), len(b) - 1))]
rate = lambda j: j["ios"] / j["seconds"]
print(int(rate(base)), int(rate(lvol)), round(statistics.median(ratios), 4))' "$base" "$lvol" "$first" ||
        { cat "$work/bp.err" >&2; die "ferry-bdevperf failed"; }
}

bdev_doc() { # ENTRIES... -> a configuration document on stdout
    local IFS=,
    printf '{"subsystems":[{"subsystem":"bdev","config":[%s]}]}\n' "$*"
}
# Part 1: the lvol (4 MiB clusters, 480 MiB: what the metadata leaves) on a 512 MiB malloc,
# Malloc1, against Malloc0, measured itself, of the lvol's size: two mallocs taking turns here
# favour the smaller by about 1.5% (512 against 480 MiB). Which of the two is made first
# alternates from run to run, with the turn order (6-run tests of two mallocs did not settle
# whether it matters). clear_method none: a malloc bdev gives zeroed pages back to the kernel
# (MADV_DONTNEED), and a later write would fault them in again; both sides are prefilled, so
# both read real pages.
under='{"method":"bdev_malloc_create","params":{"name":"Malloc1","num_blocks":131072,"block_size":4096}}'
malloc='{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":122880,"block_size":4096}}'
thick=('{"method":"bdev_lvol_create_lvstore","params":{"bdev_name":"Malloc1","lvs_name":"lvs0","clear_method":"none"}}'
    '{"method":"bdev_lvol_create","params":{"lvs_name":"lvs0","lvol_name":"thick","size_in_mib":480}}')
# thick.base.json: the malloc measured itself first ("base" in bp_turns); thick.lvol.json: the lvol's.
bdev_doc "$malloc" "$under" "${thick[@]}" >"$work/thick.base.json"
bdev_doc "$under" "${thick[@]}" "$malloc" >"$work/thick.lvol.json"
# Part 2: a thin lvol (default 4 GiB: 1 M granules, so that most writes of the short run after
# the snapshot are first writes) on a malloc of 2.25x its size (room for it and its snapshot).
thin_mib=${FERRY_LVOL_BENCH_THIN_MIB:-4096}
lvs='{"method":"bdev_lvol_create_lvstore","params":{"bdev_name":"Malloc0","lvs_name":"lvs0","clear_method":"none"}}'
malloc2="{\"method\":\"bdev_malloc_create\",\"params\":{\"name\":\"Malloc0\",\"num_blocks\":$((thin_mib * 576)),\"block_size\":4096}}"
bdev_doc "$malloc2" "$lvs" \
    "{\"method\":\"bdev_lvol_create\",\"params\":{\"lvs_name\":\"lvs0\",\"lvol_name\":\"thin\",\"size_in_mib\":$thin_mib,\"thin_provision\":true}}" \
    >"$work/thin.json"
bdev_doc '{"method":"bdev_lvol_snapshot","params":{"lvol_name":"lvs0/thin","snapshot_name":"snap"}}' >"$work/snap.json"
# The run after the snapshot is short, so that most of its writes are first writes to a granule.
cow_secs=${FERRY_LVOL_BENCH_COW_SECONDS:-1}

declare -A r
if [[ $skip != *12* ]]; then
    for i in $(seq "$runs"); do
        first=$( ((i % 2)) && echo base || echo lvol)
        for wl in randread randwrite; do
            log "run $i/$runs: $wl, malloc and thick lvol on malloc taking turns ($first made and run first)"
            r[thick.$wl]+="$(bp_turns "$work/thick.$first.json" "$wl" "$secs" Malloc0 lvs0/thick "$first");"
        done
        for side in $( ((i % 2)) && echo "before after" || echo "after before"); do
            if [ "$side" = before ]; then
                log "run $i/$runs: randwrite thin lvol, prefilled (before a snapshot), ${cow_secs} s"
                r[thin.before]+="$(bp "$work/thin.json" lvs0/thin randwrite "$cow_secs" --prefill);"
            else
                log "run $i/$runs: randwrite thin lvol, right after a snapshot, ${cow_secs} s"
                r[thin.after]+="$(bp "$work/thin.json" lvs0/thin randwrite "$cow_secs" --prefill --after-prefill "$work/snap.json");"
            fi
        done
    done
fi

# Part 3: a store on a large sparse file.
size=${FERRY_LVOL_BENCH_SIZE:-1T}
nlvols=64
declare -a dirty clean replayed
if [[ $skip != *3* ]]; then
    [ "$(stat -f -c %T "$bigdir")" != tmpfs ] || die "$bigdir is on tmpfs: set FERRY_LVOL_BENCH_DIR to a disk"
    img="$bigdir/store.img"
    truncate -s "$size" "$img"
    uring="{\"method\":\"bdev_uring_create\",\"params\":{\"name\":\"File0\",\"filename\":\"$img\",\"block_size\":4096}}"
    bdev_doc "$uring" >"$work/file.json"
    entries=("$uring"
        '{"method":"bdev_lvol_create_lvstore","params":{"bdev_name":"File0","lvs_name":"big","cluster_sz":1048576,"clear_method":"none"}}')
    size_mib=$(($(stat -c %s "$img") / 1048576 / nlvols))
    for n in $(seq 0 $((nlvols - 1))); do
        entries+=("{\"method\":\"bdev_lvol_create\",\"params\":{\"lvs_name\":\"big\",\"lvol_name\":\"v$n\",\"size_in_mib\":$size_mib,\"thin_provision\":true}}")
    done
    bdev_doc "${entries[@]}" >"$work/create.json"
    # Data in every lvol: 4 KiB random writes to all of them at once (each first write to a
    # cluster allocates it), then a clean close. ferry-bdevperf finds the lvols by examine.
    log "part 3: $nlvols thin lvols on a $size sparse file, ${secs} s of random writes to all"
    nice "$FERRY_BIN/ferry-bdevperf" -m 0x1 --disable-cpumask-locks -c "$work/create.json" --single-core \
        -q 8 -o 4096 -w randwrite -t "$secs" >"$work/populate.txt" 2>&1 || { cat "$work/populate.txt"; die "populate"; }
    tail -n 1 "$work/populate.txt" >&2
    # start_ferryd LOG: sets pid; load_ms LOG -> "ms replayed" (from ferryd's own timestamps).
    start_ferryd() {
        rm -f "$work/rpc.sock"
        nice "$FERRY_BIN/ferryd" -m 0x1 --disable-cpumask-locks -r "$work/rpc.sock" -S "$work" -c "$work/file.json" \
            --log-level INFO >"$1" 2>&1 &
        pid=$!
        pids=("$pid")
    }
    stop_ferryd() { # SIGNAL
        kill "-$1" "$pid"
        wait "$pid" 2>/dev/null || true
        pids=()
    }
    wait_loaded() { # LOG
        for _ in $(seq 600); do
            grep -q 'lvstore loaded' "$1" && [ -S "$work/rpc.sock" ] && return 0
            grep -q 'lvstore not loaded' "$1" && { cat "$1" >&2; die "store did not load"; }
            kill -0 "$pid" 2>/dev/null || { cat "$1" >&2; die "ferryd exited"; }
            sleep 0.1
        done
        cat "$1" >&2
        die "store not loaded in 60 s"
    }
    load_ms() {
        python3 - "$1" <<'PY'
import re, sys
from datetime import datetime
lines = open(sys.argv[1]).read().splitlines()
ts = lambda l: datetime.fromisoformat(l.split()[0].replace("Z", "+00:00"))
start = next(ts(l) for l in lines if "reactors started" in l)
loaded = next(l for l in lines if "lvstore loaded" in l)
print(f"{(ts(loaded) - start).total_seconds() * 1000:.1f}", re.search(r"replayed=(\d+)", loaded).group(1))
PY
    }
    ctl() { "$FERRY_BIN/ferryctl" -s "$work/rpc.sock" "$@" >/dev/null; }
    for i in $(seq "$load_runs"); do
        start_ferryd "$work/warm.log"
        wait_loaded "$work/warm.log"
        # Writes in flight when the process dies: new granules in four lvols, through vhost-blk.
        for n in 0 1 2 3; do
            ctl vhost_create_blk_controller "w$n" "big/v$n" --cpumask 0x1
        done
        log "run $i/$load_runs: writes, then kill -9"
        initiators=()
        for n in 0 1 2 3; do
            nice "$FERRY_BIN/ferry-vhost-perf" -s "$work/w$n" -q 32 -o 4096 -w randwrite -t 2 --cpu 1 >/dev/null 2>&1 &
            initiators+=($!)
        done
        sleep 1
        stop_ferryd KILL
        # Their backend is gone: they would wait 30 s for completions that cannot come.
        for p in "${initiators[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
        rm -f "$work"/w?
        start_ferryd "$work/dirty.log"
        wait_loaded "$work/dirty.log"
        read -r ms n < <(load_ms "$work/dirty.log")
        dirty+=("$ms")
        replayed+=("$n")
        log "run $i/$load_runs: dirty load ${ms} ms, replayed $n records; SIGTERM"
        stop_ferryd TERM
        start_ferryd "$work/clean.log"
        wait_loaded "$work/clean.log"
        read -r ms n < <(load_ms "$work/clean.log")
        clean+=("$ms")
        log "run $i/$load_runs: clean load ${ms} ms (replayed $n)"
        stop_ferryd TERM
    done
    # SPDK's dirty load: every metadata page (one per cluster) read at QD1. Time QD1 4 KiB
    # O_DIRECT reads of written (not sparse) blocks on the same file system, scaled.
    sample_mib=256
    log "part 3: QD1 4 KiB O_DIRECT reads of a ${sample_mib} MiB written sample"
    dd if=/dev/urandom of="$bigdir/sample" bs=1M count="$sample_mib" status=none
    sync "$bigdir/sample"
    echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || true
    t0=$(date +%s.%N)
    nice dd if="$bigdir/sample" of=/dev/null bs=4k iflag=direct status=none
    t1=$(date +%s.%N)
    scan_sample_s=$(echo "$t1 - $t0" | bc -l)
    clusters=$(($(stat -c %s "$img") / 1048576))
fi

python3 - "$secs" "$cow_secs" "$thin_mib" "${r[thick.randread]:-}" "${r[thick.randwrite]:-}" \
    "${r[thin.before]:-}" "${r[thin.after]:-}" \
    "${dirty[*]:-}" "${clean[*]:-}" "${replayed[*]:-}" "${scan_sample_s:-0}" "${sample_mib:-0}" "${clusters:-0}" <<'PY'
import math, statistics, sys
secs, cow_secs, thin_mib = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
runs = lambda s: [tuple(map(float, x.split())) for x in s.split(";") if x.strip()]
rd, wr, tb, ta = (runs(s) for s in sys.argv[4:8])
med = lambda xs, k: statistics.median(x[k] for x in xs)
if rd:
    print(f"4 KiB QD128, 1 core, taking turns (medians of {len(rd)} runs)"
          f"{'malloc IOPS':>14}{'lvol IOPS':>12}{'turn ratio':>12}   each run's turn ratio")
    for name, xs in [("randread, thick lvol vs malloc", rd), ("randwrite, thick lvol vs malloc", wr)]:
        each = " ".join(f"{x[2]:.3f}" for x in xs)
        print(f"{name:<51}{med(xs, 0):>14,.0f}{med(xs, 1):>12,.0f}{med(xs, 2):>12.3f}   {each}")
    worst = min(med(xs, 2) for xs in (rd, wr))
    print(f"goal: at most 5% overhead (ratio >= 0.95): {'met' if worst >= 0.95 else 'NOT met'} "
          f"(worst median turn ratio {worst:.3f})")
    g = thin_mib * 256  # 4 KiB granules in the lvol
    n = med(ta, 0) * cow_secs
    first = g * (1 - math.exp(-n / g)) / n if n else 0
    print(f"{'randwrite thin lvol, 4 MiB clusters':<40}{'before':>12}{'after':>12}{'kept':>8}"
          f"{'before /cpu-s':>17}{'after /cpu-s':>17}{'kept':>8}")
    print(f"{f'  {cow_secs:g} s right after a snapshot':<40}{med(tb, 0):>12,.0f}{med(ta, 0):>12,.0f}"
          f"{med(ta, 0) / med(tb, 0):>8.3f}{med(tb, 1):>17,.0f}{med(ta, 1):>17,.0f}{med(ta, 1) / med(tb, 1):>8.3f}")
    print(f"  about {first:.0%} of the writes after the snapshot were first writes to a granule "
          f"({n:,.0f} uniform random writes over {g:,} granules)")
    kept = med(ta, 1) / med(tb, 1)
    print(f"goal: at least 50% kept: {'met' if kept >= 0.5 else 'NOT met'} ({kept:.0%} per cpu-second)")
dirty = [float(x) for x in sys.argv[8].split()]
clean = [float(x) for x in sys.argv[9].split()]
replayed = [int(x) for x in sys.argv[10].split()]
if dirty:
    sample_s, sample_mib, clusters = float(sys.argv[11]), int(sys.argv[12]), int(sys.argv[13])
    scan_s = sample_s * (clusters * 4096) / (sample_mib << 20)
    d, c = statistics.median(dirty), statistics.median(clean)
    print(f"store load, {clusters:,} clusters of 1 MiB (medians of {len(dirty)}; all: dirty {dirty} ms, "
          f"clean {clean} ms, replayed {replayed} records)")
    print(f"  dirty load (after kill -9):            {d:>10.1f} ms")
    print(f"  clean load (after SIGTERM):            {c:>10.1f} ms   dirty/clean {d / c:.2f}")
    print(f"  SPDK-style full md scan, QD1 4 KiB:    {scan_s * 1000:>10.1f} ms   "
          f"({clusters * 4096 >> 20} MiB; {sample_mib} MiB sample read in {sample_s:.2f} s, "
          f"{sample_mib * 256 / sample_s:,.0f} reads/s)   scan/dirty {scan_s * 1000 / d:.0f}x")
PY

#!/usr/bin/env bash
# What RAID costs per I/O: ferry-bdevperf, 4 KiB at QD128 on ONE pinned core (core 0).
#  - raid0 (64 KiB strips) over two null bdevs vs one null bdev, randread: nothing but the
#    framework and the raid layer, so the difference is the raid0 path's CPU per I/O;
#  - raid1 over two malloc bdevs vs one malloc bdev (the single member), randwrite (every
#    write goes to both members) and randread (one member per read, balanced), prefilled.
# Runs alternate single / raid and the medians and their ratio are printed, with the ns of
# CPU per I/O the raid adds (from I/Os per CPU-second the reactor got, steadier than IOPS on
# a shared machine). Every process runs under `nice`: the machine is shared.
# Usage: scripts/bench/raid.sh [SECONDS] [RUNS]   (default 5 5)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
secs=${1:-5}
runs=${2:-5}
apt_install python3
build_release

work=$(mktemp -d /tmp/ferry-raidbench.XXXXXX)
trap 'rm -rf "$work"' EXIT
BP=(nice "$FERRY_BIN/ferry-bdevperf" -m 0x1 --disable-cpumask-locks -q 128 -o 4096 --json-summary)

# bp CONFIG TARGET ARGS... -> "iops ios_per_cpu_second"
bp() {
    local cfg=$1 target=$2
    shift 2
    "${BP[@]}" -c "$cfg" -T "$target" -t "$secs" "$@" 2>"$work/bp.err" | tail -n 1 |
        python3 -c 'import json,sys; j=json.load(sys.stdin); assert j["errors"] == 0, j; print(int(j["iops"]), int(j["ios"] / max(j["cpu_s"], 1e-9)))' ||
        { cat "$work/bp.err" >&2; die "ferry-bdevperf failed"; }
}
bdev_doc() { # ENTRIES... -> a configuration document on stdout
    local IFS=,
    printf '{"subsystems":[{"subsystem":"bdev","config":[%s]}]}\n' "$*"
}
null() { printf '{"method":"bdev_null_create","params":{"name":"%s","num_blocks":262144,"block_size":4096}}' "$1"; }
malloc() { printf '{"method":"bdev_malloc_create","params":{"name":"%s","num_blocks":32768,"block_size":4096}}' "$1"; }
raid() { # NAME LEVEL STRIP_KB MEMBER... -> a bdev_raid_create entry
    local name=$1 level=$2 strip=$3
    shift 3
    local IFS=,
    local members
    members=$(printf '"%s",' "$@")
    printf '{"method":"bdev_raid_create","params":{"name":"%s","raid_level":"%s","strip_size_kb":%s,"base_bdevs":[%s]}}' \
        "$name" "$level" "$strip" "${members%,}"
}
bdev_doc "$(null Single)" >"$work/null.json"
bdev_doc "$(null N0)" "$(null N1)" "$(raid Raid raid0 64 N0 N1)" >"$work/null-raid.json"
bdev_doc "$(malloc Single)" >"$work/malloc.json"
bdev_doc "$(malloc M0)" "$(malloc M1)" "$(raid Raid raid1 0 M0 M1)" >"$work/malloc-raid.json"

# case name -> "config-stem workload extra-args"
declare -A cases=(
    [raid0-null-randread]="null randread"
    [raid1-malloc-randwrite]="malloc randwrite"
    [raid1-malloc-randread]="malloc randread --prefill"
)
order=(raid0-null-randread raid1-malloc-randwrite raid1-malloc-randread)
declare -A r
for i in $(seq "$runs"); do
    for c in "${order[@]}"; do
        read -r stem wl extra <<<"${cases[$c]}"
        log "run $i/$runs: $c single"
        # shellcheck disable=SC2086 # extra is zero or one word
        r[$c.single]+="$(bp "$work/$stem.json" Single -w "$wl" --seed 1 $extra);"
        log "run $i/$runs: $c raid"
        # shellcheck disable=SC2086
        r[$c.raid]+="$(bp "$work/$stem-raid.json" Raid -w "$wl" --seed 1 $extra);"
    done
done

printf '\n4 KiB QD128, one core, %s s x %s runs (medians):\n' "$secs" "$runs"
for c in "${order[@]}"; do
    python3 - "$c" "${r[$c.single]}" "${r[$c.raid]}" <<'PY'
import statistics, sys
name, a, b = sys.argv[1], sys.argv[2], sys.argv[3]
parse = lambda s: [tuple(map(int, x.split())) for x in s.split(";") if x.strip()]
a, b = parse(a), parse(b)
ai, bi = statistics.median(x[0] for x in a), statistics.median(x[0] for x in b)
ac, bc = statistics.median(x[1] for x in a), statistics.median(x[1] for x in b)
print(f"  {name:24} single {ai:>10,.0f} IOPS  {ac:>10,.0f} IO/cpu-s")
print(f"  {name:24} raid   {bi:>10,.0f} IOPS  {bc:>10,.0f} IO/cpu-s")
print(f"  {name:24} ratio raid/single: IOPS {bi / ai:.3f}, IO/cpu-s {bc / ac:.3f}; "
      f"added per I/O: {1e9 / bc - 1e9 / ac:.0f} ns of CPU")
PY
done

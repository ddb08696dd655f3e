#!/usr/bin/env bash
# The passthru virtual bdev's cost per I/O, the floor every virtual bdev pays: ferry-bdevperf,
# 4 KiB randread at QD128 on ONE pinned core (core 0), a passthru bdev on a base vs the base
# itself, for a null base (nothing but the framework: the purest overhead) and a malloc base
# (prefilled, so reads meet real pages). Runs alternate base / passthru and the medians and
# their ratio are printed, with the ns per I/O the passthru layer adds (from IOPS per
# CPU-second the reactor got, steadier than IOPS on a shared machine). Every process runs
# under `nice`: the machine is shared.
# Usage: scripts/bench/vbdev.sh [SECONDS] [RUNS]   (default 5 5)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
secs=${1:-5}
runs=${2:-5}
apt_install python3
build_release

work=$(mktemp -d /tmp/ferry-vbdevbench.XXXXXX)
trap 'rm -rf "$work"' EXIT
BP=(nice "$FERRY_BIN/ferry-bdevperf" -m 0x1 --disable-cpumask-locks -q 128 -o 4096 --json-summary -w randread)

# bp CONFIG TARGET ARGS... -> "iops ios_per_cpu_second"
bp() {
    local cfg=$1 target=$2
    shift 2
    "${BP[@]}" -c "$cfg" -T "$target" -t "$secs" "$@" 2>"$work/bp.err" | tail -n 1 |
        python3 -c 'import json,sys; j=json.load(sys.stdin); print(int(j["iops"]), int(j["ios"] / max(j["cpu_s"], 1e-9)))' ||
        { cat "$work/bp.err" >&2; die "ferry-bdevperf failed"; }
}
bdev_doc() { # ENTRIES... -> a configuration document on stdout
    local IFS=,
    printf '{"subsystems":[{"subsystem":"bdev","config":[%s]}]}\n' "$*"
}
pt='{"method":"bdev_passthru_create","params":{"name":"PT0","base_bdev_name":"Base0"}}'
# The base alone (a claimed base cannot be opened for the prefill), and the base with passthru.
null='{"method":"bdev_null_create","params":{"name":"Base0","num_blocks":262144,"block_size":4096}}'
malloc='{"method":"bdev_malloc_create","params":{"name":"Base0","num_blocks":65536,"block_size":4096}}'
bdev_doc "$null" >"$work/null.json"
bdev_doc "$null" "$pt" >"$work/null-pt.json"
bdev_doc "$malloc" >"$work/malloc.json"
bdev_doc "$malloc" "$pt" >"$work/malloc-pt.json"

declare -A r
for i in $(seq "$runs"); do
    for base in null malloc; do
        extra=(--seed 1)
        [ "$base" = malloc ] && extra+=(--prefill)
        log "run $i/$runs: randread $base base"
        r[$base.base]+="$(bp "$work/$base.json" Base0 "${extra[@]}");"
        log "run $i/$runs: randread passthru on $base"
        r[$base.pt]+="$(bp "$work/$base-pt.json" PT0 "${extra[@]}");"
    done
done

printf '\n4 KiB randread QD128, one core, %s s x %s runs (medians):\n' "$secs" "$runs"
for base in null malloc; do
    python3 - "$base" "${r[$base.base]}" "${r[$base.pt]}" <<'PY'
import statistics, sys
name, a, b = sys.argv[1], sys.argv[2], sys.argv[3]
parse = lambda s: [tuple(map(int, x.split())) for x in s.split(";") if x.strip()]
a, b = parse(a), parse(b)
ai, bi = statistics.median(x[0] for x in a), statistics.median(x[0] for x in b)
ac, bc = statistics.median(x[1] for x in a), statistics.median(x[1] for x in b)
print(f"  {name:6} base      {ai:>10,.0f} IOPS  {ac:>10,.0f} IO/cpu-s")
print(f"  {name:6} passthru  {bi:>10,.0f} IOPS  {bc:>10,.0f} IO/cpu-s")
print(f"  {name:6} ratio passthru/base: IOPS {bi / ai:.3f}, IO/cpu-s {bc / ac:.3f}; "
      f"added per I/O: {1e9 / bc - 1e9 / ac:.0f} ns of CPU")
PY
done

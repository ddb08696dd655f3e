#!/usr/bin/env bash
# Encryption at rest: AES-XTS throughput in GB/s per core against a plain memcpy of the same
# data, all ratios printed in one run, with ferry-bdevperf on ONE pinned core (core 0),
# 128 KiB sequential I/O at QD 32:
#  1. write and read on a crypto bdev over a malloc bdev vs the malloc bdev itself (a write is
#     memcpy into the bounce buffer + encrypt + the malloc memcpy; a read is the malloc memcpy +
#     decrypt in place). Throughput per CPU-second of the reactor, and the ratio.
#  2. a micro-measurement of the cipher alone against memcpy, from the same runs' CPU time per
#     128 KiB I/O: AES-XTS = crypto-over-null minus null (null reads only zero the buffer, so
#     the difference is the decryption of 128 KiB), memcpy = malloc minus null (the difference
#     is one 128 KiB memcpy); GB/s of each and their ratio.
# Runs alternate and the medians are printed. Every process runs under `nice`: the machine may
# be shared, so the figures per CPU-second the reactor got are the steadier ones.
# Usage: scripts/bench/crypto.sh [SECONDS] [RUNS]   (default 5 3)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
secs=${1:-5}
runs=${2:-3}
apt_install python3
build_release

work=$(mktemp -d /tmp/ferry-cryptobench.XXXXXX)
trap 'rm -rf "$work"' EXIT
IO=131072
BP=(nice "$FERRY_BIN/ferry-bdevperf" -m 0x1 --disable-cpumask-locks -q 32 -o "$IO" --json-summary)

# bp CONFIG TARGET WORKLOAD -> "bytes_per_wall_second bytes_per_cpu_second ns_cpu_per_io"
bp() {
    "${BP[@]}" -c "$1" -T "$2" -w "$3" -t "$secs" 2>"$work/bp.err" | tail -n 1 |
        python3 -c "import json,sys; j=json.load(sys.stdin); io=$IO
print(int(j['iops']*io), int(j['ios']*io/max(j['cpu_s'],1e-9)), int(j['cpu_s']*1e9/max(j['ios'],1)))" ||
        { cat "$work/bp.err" >&2; die "ferry-bdevperf failed"; }
}
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# Keys in the accel subsystem (as save_config writes them), bdevs after.
key='{"method":"accel_crypto_key_create","params":{"name":"k","cipher":"AES_XTS","key":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff","key2":"ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"}}'
malloc='{"method":"bdev_malloc_create","params":{"name":"M","num_blocks":131072,"block_size":4096}}'
null='{"method":"bdev_null_create","params":{"name":"N","num_blocks":131072,"block_size":4096}}'
doc() { # ACCEL_ENTRIES BDEV_ENTRIES
    printf '{"subsystems":[{"subsystem":"accel","config":[%s]},{"subsystem":"bdev","config":[%s]}]}\n' "$1" "$2"
}
doc "" "$malloc" >"$work/malloc.json"
doc "$key" "$malloc,"'{"method":"bdev_crypto_create","params":{"base_bdev_name":"M","name":"C","key_name":"k"}}' >"$work/cmalloc.json"
doc "" "$null" >"$work/null.json"
doc "$key" "$null,"'{"method":"bdev_crypto_create","params":{"base_bdev_name":"N","name":"C","key_name":"k"}}' >"$work/cnull.json"

declare -A r
for i in $(seq "$runs"); do
    for wl in write read; do
        for case in malloc:M cmalloc:C null:N cnull:C; do
            log "run $i/$runs: $wl ${case%%:*}"
            r[${case%%:*}.$wl]+="$(bp "$work/${case%%:*}.json" "${case##*:}" "$wl");"
        done
    done
done

# col KEY N -> the median of field N over the runs
col() { median $(tr ';' '\n' <<<"${r[$1]}" | sed '/^$/d' | cut -d' ' -f"$2"); }
gbs() { python3 -c "print(f'{$1/1e9:.2f}')"; }
printf '\n128 KiB sequential I/O, QD 32, one core, medians of %s runs of %s s\n' "$runs" "$secs"
printf '%-8s %-28s %12s %16s\n' workload bdev 'GB/s' 'GB/s per core'
for wl in write read; do
    for c in malloc cmalloc; do
        name=$([ "$c" = malloc ] && echo "malloc (memcpy)" || echo "crypto on malloc (AES-XTS)")
        printf '%-8s %-28s %12s %16s\n' "$wl" "$name" "$(gbs "$(col "$c.$wl" 1)")" "$(gbs "$(col "$c.$wl" 2)")"
    done
    printf '%-8s %-28s %29s\n' "$wl" "crypto / malloc (per core)" \
        "$(python3 -c "print(f'{$(col "cmalloc.$wl" 2)/$(col "malloc.$wl" 2):.3f}')")"
done
# The cipher alone vs memcpy, from CPU ns per I/O (reads: null zero-fills, malloc copies,
# crypto on null zero-fills and decrypts).
null_ns=$(col null.read 3)
memcpy_ns=$(($(col malloc.read 3) - null_ns))
xts_ns=$(($(col cnull.read 3) - null_ns))
printf '\nmicro (128 KiB, CPU time per I/O minus the null bdev'"'"'s): memcpy %s ns = %s GB/s, AES-XTS decrypt %s ns = %s GB/s, AES-XTS / memcpy throughput %s\n' \
    "$memcpy_ns" "$(gbs "$IO*1e9/max($memcpy_ns,1)")" "$xts_ns" "$(gbs "$IO*1e9/max($xts_ns,1)")" \
    "$(python3 -c "print(f'{$memcpy_ns/max($xts_ns,1):.3f}')")"

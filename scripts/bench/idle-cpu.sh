#!/usr/bin/env bash
# CPU used by an idle `ferryd -m 0x3` with a malloc, a null and a uring bdev, over SECONDS.
# Usage: scripts/bench/idle-cpu.sh [SECONDS]   (default 10)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
secs=${1:-10}
build_release
work=$(mktemp -d /tmp/ferry-idle.XXXXXX)
sock="$work/s"
truncate -s 64m "$work/disk.img"
"$FERRY_BIN/ferryd" -m 0x3 -r "$sock" --log-level ERROR &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
"$FERRY_BIN/ferryctl" -s "$sock" bdev_malloc_create -b M0 64 512 >/dev/null
"$FERRY_BIN/ferryctl" -s "$sock" bdev_null_create N0 64 512 >/dev/null
"$FERRY_BIN/ferryctl" -s "$sock" bdev_uring_create "$work/disk.img" U0 >/dev/null
sleep 1
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks); sleep "$secs"; t1=$(ticks)
python3 -c "print(f'idle ferryd -m 0x3, 3 bdevs, {$secs} s: {($t1-$t0)/$hz/$secs*100:.3f}% of one core')"

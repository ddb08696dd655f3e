#!/usr/bin/env bash
# iSCSI target against Debian's tgtd and SPDK's iscsi_tgt, in one run: the target on core 0
# (ferryd and iscsi_tgt: one reactor; tgtd: all its threads, `taskset -c 0`), libiscsi's
# iscsi-perf on core 1, 4 KiB random reads at QD128 and QD1 of a 512 MiB LUN of 4096-byte
# blocks (ferryd and iscsi_tgt: a malloc bdev, configured by the same RPCs; tgtd: its rdwr
# backing store on a file in /dev/shm, i.e. page-cache memory, with its default 16 I/O
# threads). Runs alternate; medians, and the ratios ferry/tgtd and ferry/SPDK. Only one
# polling target runs at a time: ferryd's and SPDK's reactors poll their core even when idle.
# Usage: scripts/bench/iscsi.sh [SECONDS] [RUNS]   (default 5 3)
#   FERRY_ISCSI_BENCH_PEER_ONLY=1: tgtd only (while ferryd's iSCSI target is not usable).
# SPDK: build/bin/iscsi_tgt of the SPDK build spdk-build.sh makes or reuses (or of the one at
#   $FERRY_SPDK_DIR); without it the SPDK column says so. Bench etiquette as vhost-spdk.sh.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$(dirname "$0")/spdk-common.sh"
secs=${1:-5}
runs=${2:-3}
peer_only=${FERRY_ISCSI_BENCH_PEER_ONLY:-}
bash "$FERRY_ROOT/scripts/iscsi/setup.sh"
apt_install python3
[ -n "$peer_only" ] || build_release
spdk_iscsi=$SPDK/build/bin/iscsi_tgt
with_spdk=""
[ -z "$peer_only" ] && [ -x "$spdk_iscsi" ] && with_spdk=1

work=$(mktemp -d /tmp/ferry-iscsibench.XXXXXX)
shm=/dev/shm/ferry-iscsibench-$$.img
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    restore_hugepages
    release_bench_lock
    rm -rf "$work" "$shm"
}
trap cleanup EXIT
take_bench_lock
[ -n "$with_spdk" ] && reserve_spdk_hugepages
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; die "nothing listens on port $1"; }

# TCP segments sent on this host so far (both ends of a loopback connection count).
tcp_out_segs() { awk '/^Tcp:/ { if (!h) { split($0, k); h = 1 } else { split($0, v); for (i in k) if (k[i] == "OutSegs") print v[i] } }' /proc/net/snmp; }

# perf URL QD TAG -> IOPS (iscsi-perf's "iops average" over the run; 1 block of 4096 bytes per
# read). The initiator's CPU use (user + system over wall time, in %) goes to $work/cpu.TAG:
# near 100 means the initiator, not the target, sets the pace. The TCP segments per I/O
# (commands, responses and ACKs of both ends) go to $work/segs.TAG: what a target can change
# in the initiator's kernel work.
perf() {
    local url=$1 qd=$2 tag=$3 out t0 t1 s0 iops
    s0=$(tcp_out_segs)
    t0=$(date +%s%N)
    out=$(bash -c 'taskset -c 1 iscsi-perf -i iqn.2016-06.io.ferry:bench -m "$1" -b 1 -t "$2" -r "$3" 2>&1;         awk "{print \$16 + \$17}" /proc/$$/stat >"$4"' _ "$qd" "$secs" "$url" "$work/ticks") ||
        { printf '%s\n' "$out" >&2; die "iscsi-perf against $url failed (is the target serving it?)"; }
    t1=$(date +%s%N)
    python3 -c "import os,sys; hz=os.sysconf('SC_CLK_TCK'); print(round(100*int(open(sys.argv[1]).read())/hz/((int(sys.argv[3])-int(sys.argv[2]))/1e9)))" \
        "$work/ticks" "$t0" "$t1" >>"$work/cpu.$tag"
    iops=$(printf '%s\n' "$out" | tr '\r' '\n' | sed -n 's/.*iops average \([0-9]*\).*/\1/p' | tail -n 1 | grep .) ||
        { printf '%s\n' "$out" >&2; die "no IOPS in iscsi-perf's output"; }
    python3 -c "import sys; s0, s1, iops, secs = map(int, sys.argv[1:]); print(f'{(s1 - s0) / (iops * secs):.3f}')" \
        "$s0" "$(tcp_out_segs)" "$iops" "$secs" >>"$work/segs.$tag"
    echo "$iops"
}
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# tgtd: started once; it sleeps in epoll between its runs.
tport=$(free_port)
tctl=$((tport % 30000 + 1024))
taskset -c 0 tgtd -f -C "$tctl" --iscsi "portal=127.0.0.1:$tport" >"$work/tgtd.log" 2>&1 &
pids+=($!)
disown  # killed at exit; no "Killed" job report
wait_port "$tport"
tadm() { tgtadm -C "$tctl" --lld iscsi "$@" >/dev/null; }
truncate -s 512M "$shm"
tadm --mode target --op new --tid 1 --targetname iqn.2016-06.io.ferry:bench-tgtd
tadm --mode logicalunit --op new --tid 1 --lun 1 --bstype rdwr --backing-store "$shm" --blocksize 4096
tadm --mode target --op bind --tid 1 --initiator-address ALL
# Every block read once, so that the runs read page-cache pages, not holes.
dd if=/dev/zero of="$shm" bs=1M count=512 conv=notrunc status=none
turl="iscsi://127.0.0.1:$tport/iqn.2016-06.io.ferry:bench-tgtd/1"

# ferryd and SPDK's iscsi_tgt: started for each run, stopped after it; both configured by the
# same RPCs (SPDK's names) and served at $furl.
fport=$(free_port)
furl="iscsi://127.0.0.1:$fport/iqn.2016-06.io.spdk:bench/0"
start_polling_target() {
    rm -f "$work/rpc.sock"
    if [ "$1" = ferry ]; then
        "$FERRY_BIN/ferryd" -m 0x1 -r "$work/rpc.sock" -S "$work" --log-level ERROR >>"$work/target.log" 2>&1 &
    else
        "$spdk_iscsi" -m 0x1 -r "$work/rpc.sock" -s 1024 --disable-cpumask-locks >>"$work/target.log" 2>&1 &
    fi
    fpid=$!
    pids+=("$fpid")
    for _ in $(seq 100); do [ -S "$work/rpc.sock" ] && break; sleep 0.1; done
    [ -S "$work/rpc.sock" ] || { cat "$work/target.log" >&2; die "$1 target did not start"; }
    ctl() { "$FERRY_BIN/ferryctl" -s "$work/rpc.sock" "$@" >/dev/null || die "ferryctl $* failed"; }
    ctl call bdev_malloc_create '{"name": "Malloc0", "num_blocks": 131072, "block_size": 4096}'
    ctl call iscsi_create_portal_group "{\"tag\": 1, \"portals\": [{\"host\": \"127.0.0.1\", \"port\": \"$fport\"}]}"
    ctl call iscsi_create_initiator_group '{"tag": 2, "initiators": ["ANY"], "netmasks": ["ANY"]}'
    ctl call iscsi_create_target_node '{"name": "bench", "alias_name": "bench", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
        "luns": [{"bdev_name": "Malloc0", "lun_id": 0}], "queue_depth": 128, "disable_chap": true}'
    wait_port "$fport"
}
stop_polling_target() { kill -INT "$fpid" && wait "$fpid" 2>/dev/null || true; }

declare -A r
for i in $(seq "$runs"); do
    for qd in 128 1; do
        if [ -z "$peer_only" ]; then
            log "run $i/$runs: ferryd QD$qd"
            start_polling_target ferry
            r[ferry.$qd]+="$(perf "$furl" "$qd" "ferry.$qd") "
            stop_polling_target
        fi
        log "run $i/$runs: tgtd QD$qd"
        r[tgtd.$qd]+="$(perf "$turl" "$qd" "tgtd.$qd") "
        if [ -n "$with_spdk" ]; then
            log "run $i/$runs: SPDK iscsi_tgt QD$qd"
            start_polling_target spdk
            r[spdk.$qd]+="$(perf "$furl" "$qd" "spdk.$qd") "
            stop_polling_target
        fi
    done
done

med() { median ${r[$1]:-0}; }
cpu() { [ -s "$work/cpu.$1" ] && median $(cat "$work/cpu.$1") || echo 0; }
python3 - "$(med ferry.128)" "$(med tgtd.128)" "$(med spdk.128)" "$(med ferry.1)" "$(med tgtd.1)" "$(med spdk.1)" "$runs" <<'PY'
import sys
f128, t128, s128, f1, t1, s1, runs = map(int, sys.argv[1:])
n = lambda v: f"{v:,}" if v else "-"
r = lambda a, b: f"{a / b:.2f}" if a and b else "-"
print(f"{'iSCSI 4 KiB randread, target on 1 core':<40}{'ferry IOPS':>12}{'tgtd IOPS':>12}{'ferry/tgtd':>12}"
      f"{'SPDK IOPS':>12}{'ferry/SPDK':>12}   (median of {runs})")
for name, f, t, s in [("malloc (tgtd: shm file), QD128", f128, t128, s128), ("malloc (tgtd: shm file), QD1", f1, t1, s1)]:
    print(f"{name:<40}{n(f):>12}{n(t):>12}{r(f, t):>12}{n(s) if s else 'not built':>12}{r(f, s):>12}")
PY
echo "initiator (iscsi-perf) CPU, median %: ferry QD128 $(cpu ferry.128), tgtd QD128 $(cpu tgtd.128), SPDK QD128 $(cpu spdk.128);" \
    "ferry QD1 $(cpu ferry.1), tgtd QD1 $(cpu tgtd.1), SPDK QD1 $(cpu spdk.1)"
segs() { [ -s "$work/segs.$1" ] && median $(cat "$work/segs.$1") || echo -; }
echo "TCP segments per I/O, median (both ends): ferry QD128 $(segs ferry.128), tgtd QD128 $(segs tgtd.128)," \
    "SPDK QD128 $(segs spdk.128); ferry QD1 $(segs ferry.1), tgtd QD1 $(segs tgtd.1), SPDK QD1 $(segs spdk.1)"

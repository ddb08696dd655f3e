#!/usr/bin/env bash
# Ceph RBD: Ferry's rbd bdev against librbd itself and against QEMU's rbd driver, all on the
# SAME image of a fresh development cluster (scripts/ceph-dev.sh: one monitor, one memstore
# OSD), 4 KiB random reads and 4 KiB random writes at QD32. Issue 14's goal: Ferry adds no
# measurable cost over librbd itself.
#   Ferry   ferry-bdevperf (release) on an rbd bdev: bdev_rbd_register_cluster (the cluster's
#           ceph.conf and keyring) + bdev_rbd_create, -w randread|randwrite -q 32 -o 4096
#   librbd  rbd bench --io-type read|write --io-size 4K --io-threads 32 --io-pattern rand
#           (librbd itself: the reference)
#   QEMU    qemu-img bench -f raw -t none -d 32 -s 4096 [-w] on 'rbd:rbd/IMAGE:conf=...'
#           (QEMU's block layer and rbd driver, package qemu-block-extra). qemu-img bench has
#           no random pattern: request k goes to offset k*STEP modulo the image, and STEP is an
#           odd number of 4 KiB blocks (12345, about 48 MiB), so consecutive requests land on
#           different 4 MiB objects and a run sweeps the image's blocks in a scattered order
#           (the image's block count is a power of two: every block once per sweep).
#   Ferry, reactor idle-prio (a diagnostic row): the Ferry run with ferry-bdevperf's reactor
#           thread put in SCHED_IDLE (chrt --idle) as it starts, so that librados's threads,
#           which share its core, run whenever they are ready while the reactor still polls in
#           the time they leave. Nothing else differs: the gap between the two Ferry rows is what
#           the polling reactor takes from librados's threads on a shared core.
# Same conditions for all: the same ceph.conf and client.admin keyring, librbd's cache off
# (rbd_cache=false: what QEMU's cache=none sets; rbd bench and Ferry are given it), the image
# created with --image-feature layering and pre-filled (every object written by a sequential
# rbd bench before any read, so reads read data, not holes). The cluster is set up for figures
# that do not drift from run to run (see below: memstore's page sets, short PG logs).
# Cores (the machine has 2): the cluster's daemons (ceph-mon, ceph-osd, every thread) are pinned
# to core 0 and every client, all its threads, to core 1: taskset -c 1 for rbd bench and
# qemu-img bench; ferry-bdevperf under taskset -c 1 with its reactor on core 1 (-m 0x2) and the
# cluster's core_mask 0x2 (librados's threads). Ferry's reactor and librados's threads thus
# share core 1, as librbd's own threads do in rbd bench, and QEMU's main loop and librbd's in
# qemu-img bench.
# Runs: RUNS rounds; each round measures randread then randwrite with each client, the client
# order rotating from round to round; the figures are the medians. ferry-bdevperf runs for
# SECONDS; rbd bench and qemu-img bench run a number of I/Os (they have no time limit) set from
# the client's previous figure to last about SECONDS (a first, unrecorded warm-up round of
# about 2 s each sets the first counts). Each run's figure goes to stderr.
# This machine is shared: each run waits until the CPUs were 95% idle for 2 s, and the CPU time
# other processes used during the run (all busy time minus the cluster's daemons and the
# client) is measured; a run during which it exceeded FERRY_BENCH_MAX_FOREIGN per mille of the
# two cores (default 20) is taken again, up to three times in all; the output says how many
# stayed disturbed.
#
# Usage: scripts/bench/rbd.sh [SECONDS [RUNS]]   (default 10 s, 3 runs)
# Environment: FERRY_RBD_BENCH_MIB  the image's size in MiB (default 1024; a power of two)
# Needs root (Ceph's and QEMU's packages are installed when missing; qemu-block-extra at the
# version of the installed qemu-utils, from bookworm-backports when that is where it came from).
# Bench etiquette: waits until no CI runs (.ci/run, scripts/test.sh) and no other bench holds
# /tmp/ferry-bench.lock (the pid of its holder, as scripts/bench/vhost-spdk.sh takes it), then
# holds that lock until it exits.
set -euo pipefail
# A failed measurement inside $(...) must stop the bench, not leave an empty figure.
shopt -s inherit_errexit
source "$(dirname "$0")/../lib.sh"
secs=${1:-10}
runs=${2:-3}
mib=${FERRY_RBD_BENCH_MIB:-1024}
max_foreign=${FERRY_BENCH_MAX_FOREIGN:-20}
[ $((mib & (mib - 1))) = 0 ] && [ "$mib" -ge 16 ] || die "FERRY_RBD_BENCH_MIB must be a power of two, at least 16"
need_root
[ "$(nproc)" -ge 2 ] || die "this bench pins the cluster to core 0 and the clients to core 1: it needs 2 cores"

# Packages: python3, Ceph (server and clients), QEMU's rbd driver matching qemu-img.
apt_install python3 qemu-utils
"$FERRY_ROOT/scripts/ceph-dev.sh" install
qemu_ver=$(dpkg-query -W -f='${Version}' qemu-utils)
if [ "$(dpkg-query -W -f='${Status} ${Version}' qemu-block-extra 2>/dev/null)" != "install ok installed $qemu_ver" ]; then
    suite=()
    if [[ $qemu_ver == *bpo12* ]]; then
        # As scripts/guest/setup.sh: bookworm-backports, where the preinstalled qemu-utils is from.
        if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            echo "deb http://deb.debian.org/debian bookworm-backports main" >/etc/apt/sources.list.d/ferry-backports.list
        fi
        suite=(-t bookworm-backports)
    fi
    apt-get update -q >/dev/null
    log "installing qemu-block-extra $qemu_ver (QEMU's rbd driver)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${suite[@]}" \
        "qemu-block-extra=$qemu_ver" >/dev/null
fi
build_release

work=$(mktemp -d /tmp/ferry-rbdbench.XXXXXX)
cleanup() {
    "$FERRY_ROOT/scripts/ceph-dev.sh" down "$work/ceph" 2>/dev/null || true
    release_bench_lock
    rm -rf "$work"
}
trap cleanup EXIT

# Etiquette: CI and other benches first; then this bench holds the lock.
take_bench_lock

# The cluster: the OSD's memstore holds the image (and some room for the pool's metadata).
CEPH_DEV_MEMSTORE_BYTES=$(((mib + 512) << 20)) "$FERRY_ROOT/scripts/ceph-dev.sh" up "$work/ceph" >"$work/ceph.env"
conf=$work/ceph/ceph.conf
keyring=$work/ceph/keyring
# A steady state (figures that do not drift from run to run), set before the pool's PGs exist:
# - memstore's page sets: its default object is one bufferlist that every 4 KiB overwrite splits
#   further, so each later write and read of it is slower (-70% within a minute of writes). The
#   choice is recorded per PG collection when the PG is made: hence the pool made again below.
# - short PG logs (100-500 entries, 100 dups): with the default 10,000 per PG, the logs grow for
#   minutes and each write's trim costs more as they do.
ceph -c "$conf" config set osd memstore_page_set true
ceph -c "$conf" config set osd osd_min_pg_log_entries 100
ceph -c "$conf" config set osd osd_max_pg_log_entries 500
ceph -c "$conf" config set osd osd_pg_log_dups_tracked 100
"$FERRY_ROOT/scripts/ceph-dev.sh" stop "$work/ceph"
"$FERRY_ROOT/scripts/ceph-dev.sh" start "$work/ceph" >/dev/null
ceph --admin-daemon "$work/ceph/run/osd.0.asok" config get memstore_page_set | grep -q '"true"' ||
    die "the OSD did not take memstore_page_set"
ceph -c "$conf" osd pool rm rbd rbd --yes-i-really-really-mean-it >/dev/null
ceph -c "$conf" osd pool create rbd 8 8 >/dev/null 2>&1
rbd -c "$conf" pool init rbd
cluster_pids=$(awk '{print $2}' "$work/ceph/pids")
for pid in $cluster_pids; do taskset -a -p -c 0 "$pid" >/dev/null; done
image=bench0
rbd -c "$conf" create --size "$mib" --image-feature layering "rbd/$image"
log "pre-filling rbd/$image ($mib MiB)"
taskset -c 1 rbd -c "$conf" bench --io-type write --io-pattern seq --io-size 4M --io-threads 16 \
    --io-total "${mib}M" "rbd/$image" >/dev/null
objects=$(rados -c "$conf" -p rbd ls | grep -c '^rbd_data\.' || true)
[ "$objects" = $((mib / 4)) ] || die "pre-fill wrote $objects objects, not $((mib / 4))"

cat >"$work/ferry.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_rbd_register_cluster","params":{"name":"bench","config_file":"$conf","key_file":"$keyring",
  "config_param":{"rbd_cache":"false"},"core_mask":"0x2"}},
 {"method":"bdev_rbd_create","params":{"name":"Rbd0","cluster_name":"bench","pool_name":"rbd",
  "rbd_name":"$image","block_size":4096}}]}]}
JSON
# qemu-img bench's stride: an odd number of blocks, so the sweep visits every block.
step=$((12345 * 4096))

declare -A est # "CLIENT WORKLOAD" -> last IOPS (sets the I/O count of rbd bench and qemu-img bench)

# run_client CLIENT WORKLOAD SECONDS: one run; prints the IOPS.
run_client() {
    local client=$1 w=$2 t=$3 count out
    count=$(((${est[$client $w]:-5000} * ${t%.*}) + 1000))
    case $client in
    ferry | ferry-idle)
        local pid tid=""
        taskset -c 1 "$FERRY_BIN/ferry-bdevperf" -c "$work/ferry.json" -m 0x2 --disable-cpumask-locks \
            -T Rbd0 -q 32 -o 4096 -w "$w" -t "$t" --json-summary >"$work/ferry.out" 2>"$work/ferry.err" &
        pid=$!
        if [ "$client" = ferry-idle ]; then
            # The reactor thread exists before the cluster is connected, so before any I/O.
            for _ in $(seq 1000); do
                tid=$(grep -lx reactor_1 /proc/"$pid"/task/*/comm 2>/dev/null | head -n 1 | cut -d/ -f5) || true
                [ -n "$tid" ] && break
                sleep 0.005
            done
            [ -n "$tid" ] && chrt --idle -p 0 "$tid" || die "could not put ferry-bdevperf's reactor thread in SCHED_IDLE"
        fi
        wait "$pid" || { cat "$work/ferry.err" "$work/ferry.out" >&2; die "ferry-bdevperf failed"; }
        tail -n 1 "$work/ferry.out" | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["iops"]))'
        ;;
    librbd)
        out=$(taskset -c 1 rbd -c "$conf" --rbd-cache=false bench --io-type "${w#rand}" --io-size 4K \
            --io-threads 32 --io-pattern rand --io-total $((count * 4096)) "rbd/$image" 2>&1) ||
            { printf '%s\n' "$out" >&2; die "rbd bench failed"; }
        printf '%s\n' "$out" | sed -n 's/^elapsed:.* ops\/sec: *\([0-9.]*\).*/\1/p' | python3 -c 'import sys; print(int(float(sys.stdin.read())))'
        ;;
    qemu)
        local wr=()
        [ "$w" = randwrite ] && wr=(-w)
        out=$(taskset -c 1 qemu-img bench -f raw -t none -c "$count" -d 32 -s 4096 -S "$step" "${wr[@]}" \
            "rbd:rbd/$image:conf=$conf:id=admin" 2>&1) || { printf '%s\n' "$out" >&2; die "qemu-img bench failed"; }
        printf '%s\n' "$out" | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p' |
            python3 -c "import sys; print(int($count / float(sys.stdin.read())))"
        ;;
    esac
}

# cpu_busy: busy ticks of every CPU (user, nice, system, irq, softirq, steal).
cpu_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
# own_ticks: CPU ticks of the cluster's daemons plus the bench shell's waited-for children (the
# client, whatever ran it).
own_ticks() {
    local t pid
    t=$(awk '{ print $16 + $17 }' "/proc/$$/stat")
    for pid in $cluster_pids; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done
    echo "$t"
}

hz=$(getconf CLK_TCK)
# wait_quiet: waits (at most 10 minutes) until the CPUs were 95% idle for 2 s (between runs the
# cluster idles): a run does not start in the middle of another process's burst.
wait_quiet() {
    local i b0 t0 busy
    for i in $(seq 300); do
        b0=$(cpu_busy) t0=$(date +%s%N)
        sleep 2
        busy=$((($(cpu_busy) - b0) * 1000000000000 / (hz * $(nproc) * ($(date +%s%N) - t0))))
        [ "$busy" -le 50 ] && return 0
        [ "$i" = 1 ] && log "waiting for other processes to leave the CPUs idle"
    done
}

# measure CLIENT WORKLOAD: the IOPS of one run, taken again (up to three times in all) while
# other processes used more than max_foreign per mille of the CPUs.
measure() {
    local try iops b0 o0 t0 foreign
    for try in 1 2 3; do
        wait_quiet
        b0=$(cpu_busy) o0=$(own_ticks) t0=$(date +%s%N)
        iops=$(run_client "$1" "$2" "$secs")
        foreign=$((($(cpu_busy) - b0 - $(own_ticks) + o0) * 1000000000000 / (hz * $(nproc) * ($(date +%s%N) - t0))))
        [ "$foreign" -ge 0 ] || foreign=0
        log "$1 $2: $iops IOPS (other processes: ${foreign}/1000 of the CPUs)"
        [ "$foreign" -le "$max_foreign" ] && break
        [ "$try" = 3 ] && { echo disturbed >>"$work/disturbed"; break; }
        log "other processes used the CPUs: measuring again"
    done
    est[$1 $2]=$iops
    all[$1 $2]+="$iops "
}

clients=(ferry ferry-idle librbd qemu)
declare -A all
log "warm-up round (2 s each, not recorded)"
for w in randread randwrite; do
    for c in "${clients[@]}"; do
        est[$c $w]=$(run_client "$c" "$w" 2)
        log "warm-up $c $w: ${est[$c $w]} IOPS"
    done
done
for i in $(seq "$runs"); do
    for w in randread randwrite; do
        for j in "${!clients[@]}"; do
            c=${clients[$(((i - 1 + j) % ${#clients[@]}))]}
            log "round $i/$runs"
            measure "$c" "$w"
        done
    done
done

{
    echo "$secs $runs $mib"
    for c in "${clients[@]}"; do echo "$c|${all[$c randread]}|${all[$c randwrite]}"; done
} >"$work/results"
python3 - "$work/results" <<'PY'
import statistics, sys
names = {"ferry": "Ferry (ferry-bdevperf)", "ferry-idle": "Ferry, reactor idle-prio",
         "librbd": "librbd (rbd bench)", "qemu": "QEMU (qemu-img bench)"}
with open(sys.argv[1]) as f:
    secs, runs, mib = f.readline().split()
    med, rng = {}, {}
    for line in f:
        c, r, w = line.rstrip("\n").split("|")
        r, w = list(map(int, r.split())), list(map(int, w.split()))
        med[c] = (statistics.median(r), statistics.median(w))
        rng[c] = (min(r), max(r), min(w), max(w))
print(f"Ceph RBD, {mib} MiB image (pre-filled), 4 KiB random I/O at QD32, cluster on core 0, client on core 1;")
print(f"medians of {runs} alternating runs of about {secs} s (min-max in brackets)")
print(f"{'client':<26}{'randread IOPS':>14}{'':<20}{'randwrite IOPS':>16}{'':<20}")
for c in ("ferry", "librbd", "qemu", "ferry-idle"):
    r, w = med[c]
    lo_r, hi_r, lo_w, hi_w = rng[c]
    print(f"{names[c]:<26}{int(r):>14,}{f'  [{lo_r:,}-{hi_r:,}]':<20}{int(w):>16,}{f'  [{lo_w:,}-{hi_w:,}]':<20}")
for a, b, label in (("ferry", "librbd", "Ferry/librbd"), ("ferry", "qemu", "Ferry/QEMU"),
                    ("ferry-idle", "librbd", "Ferry idle-prio/librbd")):
    print(f"{label:<26}{med[a][0] / med[b][0]:>14.2f}{'':<20}{med[a][1] / med[b][1]:>16.2f}")
PY
if [ -s "$work/disturbed" ]; then
    echo "$(wc -l <"$work/disturbed") measurement(s) stayed disturbed by other processes after three tries"
else
    echo "no measurement disturbed by other processes (at most ${max_foreign}/1000 of the CPUs during each)"
fi

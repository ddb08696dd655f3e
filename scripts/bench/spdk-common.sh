# Shared by the benches that run Ferry and SPDK side by side (vhost-spdk.sh, vhost-stages.sh,
# nvmf-tcp.sh): where SPDK is, its hugepages, and measuring with a check on CPU pressure.
# Source it after scripts/lib.sh; `checked` appends to $work/disturbed.
# shellcheck shell=bash

# SPDK v26.x, outside this repository: $FERRY_SPDK_DIR when set, else the build spdk-build.sh
# makes (the first time, about 5 minutes) or finds in its cache. A bench that can do without SPDK
# (FERRY_WITHOUT_SPDK=1, or one whose SPDK column is optional) goes on if it cannot be built.
if [ -n "${FERRY_SPDK_DIR:-}" ]; then
    SPDK=$FERRY_SPDK_DIR
elif [ -n "${FERRY_WITHOUT_SPDK:-}" ] ||
    ! SPDK=$(FERRY_SPDK_REUSE_ONLY=${FERRY_SPDK_REUSE_ONLY:-} bash "$(dirname "${BASH_SOURCE[0]}")/spdk-build.sh"); then
    SPDK=${FERRY_SPDK_CACHE:-/var/cache/ferry-spdk}/spdk
fi
# A shared-library build (SPDK's configure makes one with a packaged DPDK) records no path to
# its own libraries in the programs.
export LD_LIBRARY_PATH=$SPDK/build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# reserve_spdk_hugepages: SPDK's memory: a target takes about 0.9 GiB (the 512 MiB malloc
# bdev and its pools) and a client (vhost: bdevperf with -s 1024, preallocated, so the
# vhost-user memory table is set once; NVMe/TCP: spdk_nvme_perf) up to 1 GiB: 1536 pages of
# 2 MiB leave room for both. The count before is kept in $hugepages_before for
# restore_hugepages.
reserve_spdk_hugepages() {
    hugepages_before=$(cat /proc/sys/vm/nr_hugepages)
    if [ "$hugepages_before" -lt 1536 ]; then
        echo 1536 >/proc/sys/vm/nr_hugepages
        [ "$(cat /proc/sys/vm/nr_hugepages)" -ge 1536 ] || die "could not reserve 1536 huge pages"
    fi
    # DPDK finds the pages through a mounted hugetlbfs; a machine without systemd has none.
    mountpoint -q /dev/hugepages || { mkdir -p /dev/hugepages && mount -t hugetlbfs none /dev/hugepages; } ||
        die "no hugetlbfs on /dev/hugepages and none could be mounted"
}
restore_hugepages() {
    # An SPDK process killed before its own cleanup leaves its hugepage map files behind, and
    # they keep the pages (1 GiB for a bdevperf client): a later QEMU or SPDK then cannot get
    # its memory. Remove those of processes no longer running.
    local f pid
    for f in /dev/hugepages/spdk_pid*map_*; do
        [ -e "$f" ] || continue
        pid=${f#/dev/hugepages/spdk_pid}
        pid=${pid%%map_*}
        # A zombie (killed, its new parent yet to reap it) holds no mapping any more.
        [ -n "$(proc_started "$pid")" ] || rm -f "$f"
    done
    if [ -n "${hugepages_before:-}" ] && [ "$(cat /proc/sys/vm/nr_hugepages)" != "$hugepages_before" ]; then
        echo "$hugepages_before" >/proc/sys/vm/nr_hugepages
    fi
}

# psi_some: microseconds so far in which some task waited for a CPU (0 without PSI).
psi_some() {
    if [ -r /proc/pressure/cpu ]; then
        awk '/^some/ { sub("total=", "", $5); print $5 }' /proc/pressure/cpu
    else
        echo 0
    fi
}
max_pressure=${FERRY_BENCH_MAX_PRESSURE:-30}
# checked LABEL CMD...: the IOPS CMD prints, measured again (up to three times in all) while other
# tasks competed for the CPUs during it.
checked() {
    local label=$1 try iops p0 t0 pm
    shift
    for try in 1 2 3; do
        p0=$(psi_some)
        t0=$(date +%s%N)
        iops=$("$@")
        pm=$((($(psi_some) - p0) * 1000000 / ($(date +%s%N) - t0)))
        log "$label: $iops IOPS (CPU pressure ${pm}/1000)"
        [ "$pm" -le "$max_pressure" ] && break
        [ "$try" = 3 ] && { echo disturbed >>"$work/disturbed"; break; }
        log "other tasks competed for the CPUs: measuring again"
    done
    echo "$iops"
}

# SPDK's own output: the IOPS of bdevperf's `Total` line.
spdk_iops() {
    python3 -c '
import re, sys
for line in sys.stdin:
    m = re.match(r"\s*Total\s*:\s*([0-9.]+)", line.replace("\r", ""))
    if m:
        print(int(float(m.group(1))))
        sys.exit(0)
sys.exit("no Total line in bdevperf output")'
}

# track_pid PID: records a process the bench started, for spdk_bench_cleanup. A process started
# inside a command substitution (`n=$(measure ...)`) has its pid variable set in that subshell
# only: when the subshell failed, the EXIT trap never saw it, and a target under callgrind was
# left running. Its start time goes with it: a pid that ended may be another process's later.
track_pid() {
    echo "$1 $(proc_started "$1")" >>"$work/pids"
}

# proc_started PID: the process's start time (clock ticks after boot); nothing if it is gone or
# a zombie.
proc_started() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    # Fields after the command name, which may hold spaces: state is 1st, start time 20th.
    read -r -a stat <<<"${stat##*) }"
    [ "${stat[0]}" = Z ] || echo "${stat[19]}"
}

# wait_gone PID STARTED: waits up to 10 s for the process track_pid recorded to end (or to
# become a zombie).
wait_gone() {
    for _ in $(seq 100); do
        [ "$(proc_started "$1")" = "$2" ] || return 0
        sleep 0.1
    done
}

# spdk_bench_cleanup: the EXIT trap of a side-by-side bench: stops the client and the target it
# left running ($client_pid, $target_pid, and any process track_pid recorded; with
# $bench_kill_signal, default TERM, then KILL after 10 s), gives back the hugepages and the
# bench lock, removes $work.
spdk_bench_cleanup() {
    local p started
    for p in "${client_pid:-}" "${target_pid:-}"; do
        if [ -n "$p" ]; then kill -s "${bench_kill_signal:-TERM}" "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; fi
    done
    if [ -f "$work/pids" ]; then
        while read -r p started; do
            [ -n "$started" ] && [ "$(proc_started "$p")" = "$started" ] || continue
            kill -s "${bench_kill_signal:-TERM}" "$p" 2>/dev/null || true
            wait_gone "$p" "$started"
            if [ "$(proc_started "$p")" = "$started" ]; then
                kill -KILL "$p" 2>/dev/null || true
                # Gone before restore_hugepages looks for the map files it leaves.
                wait_gone "$p" "$started"
            fi
        done <"$work/pids"
    fi
    restore_hugepages
    release_bench_lock
    rm -rf "$work"
}

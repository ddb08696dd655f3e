# Shared by the benches that run Ferry's and SPDK's vhost targets side by side
# (vhost-spdk.sh, vhost-stages.sh). Source it after scripts/lib.sh; the functions use $work
# (the bench's scratch directory) and set $target_pid. A bench of Ferry alone (vhost-ab.sh) sets
# FERRY_WITHOUT_SPDK=1 first (no SPDK binaries needed) and starts only Ferry.
# shellcheck shell=bash

# SPDK's path, its hugepages, and the measurement helpers every side-by-side bench shares.
source "$(dirname "${BASH_SOURCE[0]}")/spdk-common.sh"
spdk_vhost=$SPDK/build/bin/vhost
spdk_perf=$SPDK/build/examples/bdevperf
if [ -z "${FERRY_WITHOUT_SPDK:-}" ] && ! { [ -x "$spdk_vhost" ] && [ -x "$spdk_perf" ]; }; then
    die "SPDK's vhost and bdevperf not found under $SPDK/build (set FERRY_SPDK_DIR to an SPDK v26.x build)"
fi

# row_selected PATTERNS NAME...: whether any NAME matches one of the space-separated glob
# PATTERNS (the benches' FERRY_*_ONLY row filters); empty PATTERNS select everything.
row_selected() {
    local patterns=$1 name pat
    shift
    [ -z "$patterns" ] && return 0
    for name in "$@"; do
        for pat in $patterns; do
            # shellcheck disable=SC2053 # the pattern is a glob on purpose
            [[ $name == $pat ]] && return 0
        done
    done
    return 1
}

# target_config FILE BDEV-METHOD DEV_TYPE [EXTRA]: a target's configuration, a 512 MiB bdev
# of 4 KiB blocks and one controller vhost.0 on it (EXTRA: more parameters of the bdev, e.g.
# Ferry's `"read_zeroes":false`).
target_config() {
    local bdev=$2 extra=${4:-} ctrlr
    if [ "$3" = blk ]; then
        ctrlr='{"subsystem":"vhost_blk","config":[{"method":"vhost_create_blk_controller","params":{"ctrlr":"vhost.0","dev_name":"Bdev0","cpumask":"0x1"}}]}'
    else
        ctrlr='{"subsystem":"vhost_scsi","config":[{"method":"vhost_create_scsi_controller","params":{"ctrlr":"vhost.0","cpumask":"0x1"}},{"method":"vhost_scsi_controller_add_target","params":{"ctrlr":"vhost.0","scsi_target_num":0,"bdev_name":"Bdev0"}}]}'
    fi
    printf '{"subsystems":[{"subsystem":"bdev","config":[{"method":"%s","params":{"name":"Bdev0","num_blocks":131072,"block_size":4096%s}}]},%s]}\n' \
        "$bdev" "$extra" "$ctrlr" >"$1"
}

# start_target ferry|spdk CONFIG: the target on core 0, serving $work/vhost.0, its RPC socket
# $work/target.sock. A bench may set target_wrap (an array: a command the target runs under, such
# as valgrind) and target_wait (tenths of a second to wait for the sockets, default 200).
target_wrap=()
start_target() {
    rm -f "$work/vhost.0" "$work/target.sock"
    if [ "$1" = ferry ]; then
        "${target_wrap[@]}" "$FERRY_BIN/ferryd" -m 0x1 -r "$work/target.sock" -S "$work" -c "$2" --disable-cpumask-locks \
            --log-level ERROR >"$work/target.log" 2>&1 &
    else
        "${target_wrap[@]}" "$spdk_vhost" -m 0x1 -r "$work/target.sock" -S "$work" --json "$2" --disable-cpumask-locks \
            >"$work/target.log" 2>&1 &
    fi
    target_pid=$!
    track_pid "$target_pid"
    for _ in $(seq "${target_wait:-200}"); do
        [ -S "$work/vhost.0" ] && [ -S "$work/target.sock" ] && return 0
        kill -0 "$target_pid" 2>/dev/null || break
        sleep 0.1
    done
    cat "$work/target.log" >&2
    die "$1 target did not serve $work/vhost.0"
}
stop_target() {
    kill -INT "$target_pid"
    wait "$target_pid" || true
    target_pid=""
}

# client_config DEV_TYPE: SPDK's virtio-user client configuration for $work/vhost.0 (one
# queue of 512 entries) in $work/client.json.
client_config() {
    printf '{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_virtio_attach_controller","params":{"name":"Virtio0","trtype":"user","traddr":"%s","dev_type":"%s","vq_count":1,"vq_size":512}},{"method":"bdev_wait_for_examine"}]}]}\n' \
        "$work/vhost.0" "$1" >"$work/client.json"
}

# target_reads: the reads the target on $work/target.sock has completed so far.
target_reads() { python3 "$(dirname "${BASH_SOURCE[0]}")/vhost-stages.py" rpc "$work/target.sock" reads; }

# wait_for_flow [TRIES]: until the target completes reads at 10,000/s or more (the client's
# examine reads a few blocks first, which must not start a window), then a second to settle;
# looks every 0.2 s, TRIES times (default 100: 20 s). $client_pid is the client.
wait_for_flow() {
    local before after tries=${1:-100}
    before=$(target_reads)
    for _ in $(seq "$tries"); do
        sleep 0.2
        kill -0 "$client_pid" 2>/dev/null || { tail -n 20 "$work/client.log" >&2; die "the client stopped before its I/O flowed"; }
        after=$(target_reads)
        [ $((after - before)) -ge 2000 ] && { sleep 1; return 0; }
        before=$after
    done
    die "no I/O flowed within $((tries / 5)) s"
}

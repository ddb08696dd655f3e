#!/usr/bin/env bash
# A throwaway Ceph cluster for Ferry's RBD bdev: its tests, the demo and developers.
#
# Usage:
#   scripts/ceph-dev.sh install           install Debian's ceph-mon, ceph-osd, ceph-common and the
#                                         client libraries librbd1, librados2 (idempotent)
#   scripts/ceph-dev.sh up DIR [PORT]     a fresh cluster, everything under DIR (created; must be
#                                         empty or absent): one monitor on 127.0.0.1:PORT (a free
#                                         port when not given), one OSD on memstore, pool "rbd"
#                                         (one replica) initialised. Prints KEY=VALUE lines:
#                                         CEPH_CONF, CEPH_KEYRING, CEPH_MON, CEPH_KEY, CEPH_POOL
#   scripts/ceph-dev.sh down DIR          kill the cluster (SIGKILL: no memstore write-out) and
#                                         remove DIR; nothing to do if it is gone already
#   scripts/ceph-dev.sh stop DIR          stop the monitor and the OSD (SIGTERM: the OSD writes its
#                                         memstore out to DIR/osd.0, so nothing is lost)
#   scripts/ceph-dev.sh start DIR         start a stopped cluster again, same port, same data;
#                                         returns once it serves I/O
#
# Clients: `ceph -c DIR/ceph.conf ...`, `rbd -c DIR/ceph.conf ...` (the conf names the keyring),
# or mon_host=$CEPH_MON with key=$CEPH_KEY as client.admin (librados' rados_conf_set).
#
# Create images with `--image-feature layering`, e.g.
#   rbd -c DIR/ceph.conf create --size 64 --image-feature layering rbd/disk0
# With the default features (exclusive-lock among them) a client that is killed keeps the
# image's exclusive lock, and the next writer stalls about 30 s until the lock is broken.
#
# Environment:
#   CEPH_DEV_MEMSTORE_BYTES  the OSD's memstore size in bytes (default 1 GiB); the OSD holds the
#                            data in memory
#   CEPH_DEV_TIMEOUT         seconds `up`/`start` wait for the cluster to serve I/O (default 60)
#
# No ceph-mgr: RBD and the monitor's commands need none, but `ceph -s` and `ceph df` show no
# PG or usage statistics.
#
# No containers and no systemd: the daemons run in the foreground of their own sessions (setsid)
# with their pids in DIR/pids; sockets, logs (DIR/log), data and keyrings all live under DIR, so
# clusters on different ports run side by side. Needs root only for `install`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MEMSTORE_BYTES="${CEPH_DEV_MEMSTORE_BYTES:-1073741824}"
TIMEOUT="${CEPH_DEV_TIMEOUT:-60}"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

need_ceph() {
    local b
    for b in ceph-mon ceph-osd ceph-authtool monmaptool ceph rbd; do
        command -v "$b" >/dev/null || die "$b not found: run '$0 install' first"
    done
}

cmd_install() {
    apt_install ceph-mon ceph-osd ceph-common librbd1 librados2
    need_ceph
}

# free_port: a TCP port nobody listens on at the moment, at random in 20000-32767: below the
# kernel's ephemeral range (where outgoing connections and other tests' port-0 listeners live).
free_port() {
    /usr/bin/python3 -c '
import random, socket
while True:
    p = random.randrange(20000, 32768)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        print(p)
        break
    except OSError:
        pass
    finally:
        s.close()
'
}

# write_conf DIR PORT FSID
write_conf() {
    local d="$1" port="$2" fsid="$3"
    cat >"$d/ceph.conf" <<EOF
# Written by scripts/ceph-dev.sh: a one-monitor, one-OSD development cluster.
[global]
fsid = $fsid
# msgr2 only: a bare 127.0.0.1:PORT (what CEPH_MON says) is tried as v2 first.
mon host = [v2:127.0.0.1:$port]
keyring = $d/keyring
run dir = $d/run
crash dir = $d/crash
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
# One replica, placed on OSDs rather than hosts.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
# A port already taken is an error at once (one attempt), not after three 5 s retries.
ms bind retry count = 1

[mon]
mon data = $d/mon.\$id
log file = $d/log/\$name.log
# The cluster and audit logs (cluster.log, audit.log), not in /var/log/ceph.
mon cluster log file = $d/log/\$channel.log
admin socket = $d/run/\$name.asok
pid file = $d/run/\$name.pid
paxos propose interval = 0.05
# A fairly full disk must not stop the monitor (it shuts down at mon_data_avail_crit).
mon data avail warn = 2
mon data avail crit = 0

[osd]
osd data = $d/osd.\$id
keyring = $d/osd.\$id/keyring
log file = $d/log/\$name.log
admin socket = $d/run/\$name.asok
pid file = $d/run/\$name.pid
osd objectstore = memstore
memstore device bytes = $MEMSTORE_BYTES
# A full shutdown on SIGTERM: memstore writes its contents to osd data (what 'stop' relies on).
osd fast shutdown = false
osd crush initial weight = 1
osd op num shards = 2
osd op num threads per shard = 1

[client]
# Clients (ceph, rbd, librbd) leave no sockets or logs behind.
admin socket =
log file =
EOF
}

# spawn DIR NAME CMD...: CMD in the background in its own session, its output to
# DIR/log/NAME.out, its pid appended to DIR/pids as `NAME PID`.
spawn() {
    local d="$1" name="$2"
    shift 2
    setsid "$@" </dev/null >>"$d/log/$name.out" 2>&1 &
    echo "$name $!" >>"$d/pids"
    # Not this shell's job any more: no "Killed" notice when fail() kills it.
    disown
}

# alive PID: PID runs (a zombie, exited but not reaped yet, does not).
alive() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [ "${stat:0:1}" != Z ]
}

# check_alive DIR: dies (with the logs' tails) when a daemon of DIR/pids has exited.
check_alive() {
    local d="$1" name pid
    while read -r name pid; do
        alive "$pid" || fail "$d" "$name (pid $pid) exited"
    done <"$d/pids"
}

# fail DIR MESSAGE: the message and the tails of DIR's logs; kills what DIR's cluster still
# runs (its files stay for a look; `down DIR` removes them); exit 1.
fail() {
    local d="$1" f
    shift
    printf 'error: %s\n' "$*" >&2
    for f in "$d"/log/*; do
        [ -s "$f" ] && [ "${f##*/}" != audit.log ] || continue
        printf -- '--- tail of %s\n' "$f" >&2
        case "$f" in
        # Daemon logs: their own lines, not rocksdb's statistics or memstore's dumps.
        *.log) grep -E '^[0-9]{4}-' "$f" | grep -v ' rocksdb: ' | tail -n 12 >&2 ;;
        *) tail -n 12 "$f" >&2 ;;
        esac
    done
    kill_all "$d" KILL
    exit 1
}

# retry DIR WHAT CMD...: CMD until it succeeds, for at most $TIMEOUT seconds since $T0.
retry() {
    local d="$1" what="$2" out
    shift 2
    while :; do
        if out="$("$@" 2>&1)"; then
            return 0
        fi
        check_alive "$d"
        [ "$SECONDS" -lt "$((T0 + TIMEOUT))" ] ||
            fail "$d" "$what did not succeed within ${TIMEOUT}s; last output: $out"
        sleep 0.1
    done
}

# osd_active DIR: the OSD has booted (its admin socket says so).
osd_active() {
    ceph --admin-daemon "$1/run/osd.0.asok" status 2>/dev/null | grep -q '"state": "active"'
}

# serves DIR: the pool answers a read (rbd ls) within a few seconds.
serves() {
    rbd -c "$1/ceph.conf" --client-mount-timeout 3 --rados-osd-op-timeout 3 ls rbd >/dev/null
}

# elapsed T0: seconds since T0 (date +%s%N), e.g. 0.72s.
elapsed() {
    local ms=$((($(date +%s%N) - $1) / 1000000))
    printf '%d.%02ds' $((ms / 1000)) $((ms % 1000 / 10))
}

print_env() {
    local d="$1" port key
    port="$(sed -n 's/^mon host = \[v2:127\.0\.0\.1:\([0-9]*\)\]$/\1/p' "$d/ceph.conf")"
    key="$(ceph-authtool "$d/keyring" -n client.admin -p)"
    echo "CEPH_CONF=$d/ceph.conf"
    echo "CEPH_KEYRING=$d/keyring"
    echo "CEPH_MON=127.0.0.1:$port"
    echo "CEPH_KEY=$key"
    echo "CEPH_POOL=rbd"
}

# mon_listens DIR PORT: the monitor of DIR/pids listens on 127.0.0.1:PORT; fails (status 2)
# once it has exited.
mon_listens() {
    local pid
    pid="$(awk '$1 == "mon.a" {print $2}' "$1/pids")"
    alive "$pid" || return 2
    ss -Htlnp "sport = :$2" | grep -q "pid=$pid,"
}

# make_mon DIR PORT FSID: the monitor's store, then the monitor itself, listening. Fails
# (status 3) when PORT is taken.
make_mon() {
    local d="$1" port="$2" fsid="$3" i r
    rm -rf "$d/mon.a" "$d/monmap"
    write_conf "$d" "$port" "$fsid"
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$d/monmap" >/dev/null
    timeout 20 ceph-mon -c "$d/ceph.conf" -i a --mkfs --monmap "$d/monmap" \
        --keyring "$d/mon.keyring" >>"$d/log/mkfs.out" 2>&1 || fail "$d" "ceph-mon --mkfs failed"
    : >"$d/pids"
    spawn "$d" mon.a ceph-mon -c "$d/ceph.conf" -i a -f
    for ((i = 0; i < 200; i++)); do
        r=0
        mon_listens "$d" "$port" || r=$?
        [ $r = 0 ] && return 0
        if [ $r = 2 ]; then
            grep -q "unable to bind" "$d/log/mon.a.out" && return 3
            fail "$d" "ceph-mon exited"
        fi
        sleep 0.05
    done
    fail "$d" "ceph-mon does not listen on 127.0.0.1:$port after 10 s"
}

cmd_up() {
    local d="$1" port="${2:-}" t0 fsid osd_uuid osd_key tries r
    need_ceph
    mkdir -p "$d"
    d="$(abs "$d")"
    [ -z "$(ls -A "$d")" ] || die "$d is not empty (a cluster there? '$0 down $d' first)"
    T0=$SECONDS
    t0="$(date +%s%N)"
    mkdir -p "$d/log" "$d/run" "$d/crash" "$d/osd.0"
    fsid="$(uuidgen)"
    osd_uuid="$(uuidgen)"
    # client.admin, and mon.'s own key; the monitor's store starts with both.
    ceph-authtool --create-keyring "$d/keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool --create-keyring "$d/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$d/mon.keyring" --import-keyring "$d/keyring" >/dev/null
    if [ -n "$port" ]; then
        r=0
        make_mon "$d" "$port" "$fsid" || r=$?
        [ $r = 0 ] || fail "$d" "port $port is taken"
    else
        # A port picked at random can be taken before the monitor binds it: pick another.
        for ((tries = 0; ; tries++)); do
            port="$(free_port)"
            r=0
            make_mon "$d" "$port" "$fsid" || r=$?
            [ $r = 0 ] && break
            [ $tries -lt 5 ] || fail "$d" "no free port for the monitor after $tries tries"
            log "port $port was taken; another"
        done
    fi
    osd_key="$(ceph-authtool --gen-print-key)"
    ceph-authtool --create-keyring "$d/osd.0/keyring" -n osd.0 --add-key "$osd_key" >/dev/null
    timeout 20 ceph-osd -c "$d/ceph.conf" -i 0 --mkfs --no-mon-config --osd-uuid "$osd_uuid" \
        >>"$d/log/mkfs.out" 2>&1 || fail "$d" "ceph-osd --mkfs failed"
    local c=(ceph -c "$d/ceph.conf" --connect-timeout 5)
    # osd.0 in the OSD map, with the key the OSD already has.
    printf '{"cephx_secret": "%s"}' "$osd_key" >"$d/osd.0/new.json"
    retry "$d" "ceph osd new" "${c[@]}" osd new "$osd_uuid" 0 -i "$d/osd.0/new.json"
    rm "$d/osd.0/new.json"
    spawn "$d" osd.0 ceph-osd -c "$d/ceph.conf" -i 0 -f
    retry "$d" "ceph osd pool create rbd" "${c[@]}" osd pool create rbd 8 8
    # The gate: pool init writes to the pool, so the OSD is up and its PGs active.
    retry "$d" "rbd pool init" timeout 10 rbd -c "$d/ceph.conf" --rados-osd-op-timeout 5 pool init rbd
    log "cluster up in $(elapsed "$t0"): $d, monitor 127.0.0.1:$port"
    print_env "$d"
}

# ours DIR PID: PID is a daemon of DIR's cluster (not a stranger that got a recycled pid).
ours() {
    alive "$2" && tr '\0' ' ' <"/proc/$2/cmdline" 2>/dev/null | grep -qF -- "-c $1/ceph.conf "
}

# signal DIR SIGNAL PATTERN: SIGNAL to the daemons of DIR/pids whose name matches PATTERN,
# then waits until they are gone.
signal() {
    local d="$1" sig="$2" pattern="$3" name pid pids=()
    while read -r name pid; do
        # shellcheck disable=SC2053 # PATTERN is a glob
        if [[ $name == $pattern ]] && ours "$d" "$pid"; then
            kill "-$sig" "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done <"$d/pids"
    wait_gone "${pids[@]}"
}

# kill_all DIR SIGNAL: SIGNAL to DIR's daemons, the OSD first (so that on SIGTERM it can still
# tell the monitor it goes down, instead of waiting for it), and waits until they are gone.
kill_all() {
    [ -f "$1/pids" ] || return 0
    signal "$1" "$2" 'osd.*'
    signal "$1" "$2" '*'
}

# wait_gone PID...: until none of them runs (at most 30 s).
wait_gone() {
    local pid i
    for pid in "$@"; do
        for ((i = 0; i < 600; i++)); do
            alive "$pid" || continue 2
            sleep 0.05
        done
        die "pid $pid did not exit within 30 s"
    done
}

# abs DIR: DIR as an absolute path (what the daemons' command lines and ceph.conf say).
abs() { (cd "$1" && pwd); }

cmd_down() {
    local d="$1"
    [ -d "$d" ] || return 0
    d="$(abs "$d")"
    # SIGKILL: on SIGTERM a memstore OSD would first write all its data out.
    kill_all "$d" KILL
    rm -rf "${d:?}"/{ceph.conf,keyring,mon.keyring,monmap,pids,log,run,crash,mon.a,osd.0}
    rmdir "$d" 2>/dev/null || log "left $d: it holds files not ours"
}

cmd_stop() {
    local d="$1"
    [ -f "$d/ceph.conf" ] || die "no cluster in $d"
    d="$(abs "$d")"
    kill_all "$d" TERM
    : >"$d/pids"
}

cmd_start() {
    local d="$1" name pid t0
    [ -f "$d/ceph.conf" ] || die "no cluster in $d"
    d="$(abs "$d")"
    need_ceph
    if [ -f "$d/pids" ]; then
        while read -r name pid; do
            ! ours "$d" "$pid" || die "$name of $d still runs (pid $pid): '$0 stop $d' first"
        done <"$d/pids"
    fi
    T0=$SECONDS
    t0="$(date +%s%N)"
    : >"$d/pids"
    spawn "$d" mon.a ceph-mon -c "$d/ceph.conf" -i a -f
    spawn "$d" osd.0 ceph-osd -c "$d/ceph.conf" -i 0 -f
    # The OSD first: an rbd ls sent before it is up waits out its whole op timeout.
    retry "$d" "osd.0 boot" osd_active "$d"
    retry "$d" "rbd ls" serves "$d"
    log "cluster started again in $(elapsed "$t0"): $d"
    print_env "$d"
}

case "${1:-}" in
install) cmd_install ;;
up) [ $# -ge 2 ] || usage; cmd_up "$2" "${3:-}" ;;
down) [ $# -eq 2 ] || usage; cmd_down "$2" ;;
stop) [ $# -eq 2 ] || usage; cmd_stop "$2" ;;
start) [ $# -eq 2 ] || usage; cmd_start "$2" ;;
*) usage ;;
esac

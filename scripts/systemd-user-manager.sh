#!/usr/bin/env bash
# Runs a real systemd user manager (`systemd --user`) for tests, on a machine whose PID 1 is not
# systemd (as on these machines and in CI), so that a unit can be started, stopped and watched
# by systemd itself. The caller sets HOME (units in $HOME/.config/systemd/user), XDG_RUNTIME_DIR
# (mode 0700) and NOTIFY_SOCKET (the manager says READY=1 there once it takes commands), and
# reaches it with `nsenter -t PID -m systemctl --user ...`.
#
#   systemd-user-manager.sh start NAME    exec the manager (its PID is this process's)
#   systemd-user-manager.sh cleanup NAME  remove NAME's cgroups once the manager has exited
#
# Three things keep it from touching the host:
# - A private mount namespace with a tmpfs on /run, holding /run/systemd/system (systemd refuses
#   to run as a user manager unless the system "was booted with systemd") and the inaccessible
#   nodes /run/systemd/inaccessible/* that PID 1 normally makes (sandboxing options such as
#   ProtectKernelLogs= mount them over what they hide).
# - Its own cgroup NAME in every hierarchy: a user manager that finds itself in the root cgroup
#   takes it for its own and moves every process of the host into init.scope.
# - Its default target is an empty ferry-test.target, so it starts nothing else.
set -euo pipefail

cmd=${1:-} name=${2:-}
[ -n "$name" ] && [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || { echo "usage: $0 start|cleanup NAME" >&2; exit 2; }
hierarchies() { for h in /sys/fs/cgroup /sys/fs/cgroup/*; do [ -f "$h/cgroup.procs" ] && echo "$h"; done; }

case "$cmd" in
    start)
        [ -n "${HOME:-}" ] && [ -n "${XDG_RUNTIME_DIR:-}" ] || { echo "HOME and XDG_RUNTIME_DIR must be set" >&2; exit 2; }
        for h in $(hierarchies); do
            mkdir -p "$h/$name"
            # A v1 cpuset takes no process until it has cores and memory nodes: its parent's.
            for f in cpuset.cpus cpuset.mems; do
                if [ -f "$h/$name/$f" ] && [ -z "$(cat "$h/$name/$f")" ]; then cat "$h/$f" >"$h/$name/$f"; fi
            done
            echo $$ >"$h/$name/cgroup.procs"
        done
        units=$HOME/.config/systemd/user
        mkdir -p "$units"
        printf '[Unit]\nDescription=Nothing: the test starts what it needs\n' >"$units/ferry-test.target"
        # `unshare -m` then `exec`: the manager keeps this process's PID for nsenter.
        exec unshare --mount --propagation private bash -euo pipefail -c '
            mount -t tmpfs -o mode=0755 tmpfs /run
            i=/run/systemd/inaccessible
            mkdir -p /run/systemd/system "$i"
            mkdir -m 0000 "$i/dir"
            install -m 0000 /dev/null "$i/reg"
            mkfifo -m 0000 "$i/fifo"
            mknod -m 0000 "$i/chr" c 0 0
            mknod -m 0000 "$i/blk" b 0 0
            python3 -c "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])" "$i/sock"
            chmod 0000 "$i/sock"
            exec /lib/systemd/systemd --user --unit=ferry-test.target
        '
        ;;
    cleanup)
        # Deepest first; a cgroup still holding a process stays (and says so).
        for h in $(hierarchies); do
            [ -d "$h/$name" ] || continue
            find "$h/$name" -depth -type d -exec rmdir {} + 2>/dev/null || true
            [ ! -d "$h/$name" ] || echo "cgroup $h/$name still in use" >&2
        done
        ;;
    *) echo "usage: $0 start|cleanup NAME" >&2; exit 2 ;;
esac

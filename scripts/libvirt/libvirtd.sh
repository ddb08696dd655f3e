#!/usr/bin/env bash
# Runs a private libvirtd in the foreground (no systemd needed): its configuration, sockets,
# domain state and logs live under DIR, bind-mounted over libvirt's fixed paths in a mount
# namespace of its own, so it neither sees nor disturbs a system libvirtd and leaves nothing
# behind but QEMU's capabilities cache in /var/cache/libvirt.
#
#   libvirtd.sh DIR
#
#   DIR/etc -> /etc/libvirt      libvirtd.conf and qemu.conf (written here), defined domains
#   DIR/run -> /run/libvirt      the socket: virsh -c "qemu:///system?socket=DIR/run/libvirt-sock"
#   DIR/lib -> /var/lib/libvirt  per-domain runtime directories
#   DIR/log -> /var/log/libvirt  each domain's QEMU command line and stderr: DIR/log/qemu/NAME.log
#
# Everything else is libvirt's default, as on a Debian host: QEMU runs as
# libvirt-qemu:libvirt-qemu (scripts/libvirt/setup.sh creates them), in a private /dev, with
# libvirt's DAC labelling of the files it is given (kernel, initrd, serial log). The one
# change: QEMU's stderr goes straight to the log file rather than through virtlogd, so no
# second daemon has to run beside. SIGTERM stops libvirtd; running domains outlive it, so
# destroy them first.
set -euo pipefail
dir=${1:?usage: $0 DIR}
dir=$(realpath "$dir")
mkdir -p "$dir"/{etc,run,lib,log}
cat >"$dir/etc/libvirtd.conf" <<'CONF'
# Warnings and errors to stderr (libvirtd runs in the foreground).
log_outputs = "3:stderr"
CONF
cat >"$dir/etc/qemu.conf" <<'CONF'
# No virtlogd: QEMU's stderr goes to /var/log/libvirt/qemu/NAME.log directly.
stdio_handler = "file"
CONF
# The mount points (the packages installed create none of them).
mkdir -p /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt
# exec all the way down: the pid the caller started is libvirtd's.
exec unshare --mount --propagation private -- bash -c '
    set -e
    mount --bind "$1/etc" /etc/libvirt
    mount --bind "$1/run" /run/libvirt
    mount --bind "$1/lib" /var/lib/libvirt
    mount --bind "$1/log" /var/log/libvirt
    exec libvirtd --pid-file "$1/libvirtd.pid"
' libvirtd "$dir"

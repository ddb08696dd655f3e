#!/usr/bin/env bash
# Installs what the libvirt guest tests need, idempotently: libvirtd with its QEMU driver,
# virsh and virt-xml-validate (with xmllint, which it runs), and the users and groups
# libvirt's QEMU driver runs QEMU as. QEMU 10 itself and the guest come from
# scripts/guest/setup.sh.
#
# Debian 12's libvirt 9.0 is enough. libvirt-daemon-system is left out: it would add systemd
# units, polkit, iptables, dnsmasq and default networks that the tests do not use; it is
# also what creates the QEMU user and groups, so they are created here as its postinst does
# (libvirt's QEMU driver resolves its compiled-in user and group, libvirt-qemu:libvirt-qemu,
# at start and refuses to start without them). The tests start their own libvirtd
# (scripts/libvirt/libvirtd.sh); nothing here starts a daemon.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
need_root

apt_install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libxml2-utils

# As libvirt-daemon-system's postinst: group kvm, user libvirt-qemu in group kvm, group
# libvirt-qemu with the user in it (uid and gid 64055 where free).
getent group kvm >/dev/null || groupadd --system kvm
if ! getent passwd libvirt-qemu >/dev/null; then
    uid=()
    getent passwd 64055 >/dev/null || uid=(--uid 64055)
    useradd --system "${uid[@]}" --gid kvm --home-dir /var/lib/libvirt --no-create-home \
        --shell /usr/sbin/nologin --comment "Libvirt Qemu" libvirt-qemu
fi
if ! getent group libvirt-qemu >/dev/null; then
    gid=()
    getent group 64055 >/dev/null || gid=(--gid 64055)
    groupadd --system "${gid[@]}" libvirt-qemu
fi
id -nG libvirt-qemu | tr ' ' '\n' | grep -qx libvirt-qemu || usermod -a -G libvirt-qemu libvirt-qemu
# /dev/kvm as udev leaves it on a Debian host: root:kvm, 0660. Where no udev rule ran (0600,
# root's), libvirt's capabilities of QEMU say KVM while its QEMU user cannot open /dev/kvm:
# it then throws its capabilities cache away on every look-up and probes QEMU again each time
# (a minute per virsh call on a loaded machine).
if [ -c /dev/kvm ]; then
    chgrp kvm /dev/kvm
    chmod 0660 /dev/kvm
fi
log "libvirt ready: $(libvirtd --version); its QEMU driver runs QEMU as libvirt-qemu:libvirt-qemu"

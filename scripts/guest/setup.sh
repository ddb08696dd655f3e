#!/usr/bin/env bash
# Installs and caches what guest tests need, idempotently: QEMU from bookworm-backports, a
# Debian 6.1 guest kernel with its modules, and a busybox initramfs carrying fio, sg3-utils,
# e2fsprogs' mke2fs and open-iscsi's initiator (iscsid, iscsiadm, iscsistart); tgt (tgtd) as an
# iSCSI target on the host to check the guest's initiator against.
# Cache: $FERRY_GUEST_CACHE (default /var/cache/ferry-guest); rebuilt only when inputs change.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
need_root

cache=${FERRY_GUEST_CACHE:-/var/cache/ferry-guest}
mkdir -p "$cache"

# QEMU 10.0 (vhost-user-blk-pci, vhost-user-scsi-pci) comes from bookworm-backports: Debian
# 12's own 7.2 conflicts with the preinstalled qemu-utils 10.0.
if ! qemu-system-x86_64 --version 2>/dev/null | grep -q "version 1[0-9]"; then
    src=/etc/apt/sources.list.d/ferry-backports.list
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" >"$src"
        rm -f /var/lib/apt/periodic/ferry-update-stamp
    fi
    apt-get update -q >/dev/null
    log "installing qemu-system-x86 from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -t bookworm-backports \
        qemu-system-x86 >/dev/null
fi
# QEMU >= 10.1 (vfio-user-pci, the vhost-NVMe guest test) in a cached Debian 13 tree; run with
# qemu11.sh (run.sh --qemu11). About 500 MB and 5 minutes the first time.
bash "$(dirname "$0")/trixie-qemu.sh" >/dev/null
apt_install fio busybox-static cpio xz-utils sg3-utils kmod util-linux e2fsprogs open-iscsi tgt
# nvme-cli (with libnvme1, libjson-c5, zlib): the NVMe/TCP host's tool, harvested for the guest.
apt_install nvme-cli

# The guest kernel: the package linux-image-amd64 points at, unpacked into the cache.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || { apt-get update -q >/dev/null; kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'); }
[ -n "$kpkg" ] || die "cannot find the Debian kernel package behind linux-image-amd64"
kdir="$cache/$kpkg"
if [ ! -f "$kdir/.done" ]; then
    log "fetching guest kernel $kpkg"
    rm -rf "$kdir" && mkdir -p "$kdir/deb"
    chmod 777 "$kdir/deb" # apt's sandbox user downloads into it
    (cd "$kdir/deb" && apt-get download -q "$kpkg" >/dev/null 2>&1)
    dpkg-deb -x "$kdir"/deb/*.deb "$kdir/root"
    rm -rf "$kdir/deb"
    # The package ships no modules.dep (depmod makes it at install time).
    depmod -b "$kdir/root" "$(ls "$kdir/root/lib/modules" | head -n1)"
    touch "$kdir/.done"
fi
kver=$(ls "$kdir/root/lib/modules" | head -n1)
ln -sfn "$kdir/root/boot/vmlinuz-$kver" "$cache/vmlinuz"

# The initramfs: busybox, fio, sg3-utils, mke2fs, open-iscsi and the storage and network
# modules. Rebuilt when the kernel, the package versions or this script change.
key=$( { echo "$kpkg"; dpkg-query -W fio busybox-static sg3-utils e2fsprogs open-iscsi; dpkg-query -W nvme-cli libnvme1; sha256sum "$0"; } \
    | sha256sum | cut -c1-16)
if [ ! -f "$cache/initramfs-$key.cpio" ]; then
    log "building the guest initramfs ($key)"
    root=$(mktemp -d "$cache/root.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc,lib/modules,usr/bin,mnt,run/lock/iscsi,var/tmp}
    mkdir -p "$root"/etc/iscsi/{nodes,send_targets,ifaces,static} "$root/var/lib/iscsi"
    mkdir -p "$root/etc/nvme"
    cp /bin/busybox "$root/bin/busybox"
    for b in sh mount umount mkdir cat echo insmod poweroff sleep dd md5sum ls grep seq head tail \
             sync blockdev wc tr cut sed awk cmp stat test printf hexdump uname rm true false \
             ip kill ps pidof dmesg sha256sum date cp ln mv find touch timeout sort uniq xargs df \
             basename dirname readlink; do
        ln -sf busybox "$root/bin/$b"
    done
    # fio, sg3-utils, mke2fs and open-iscsi with their shared libraries.
    bins="/usr/bin/fio /usr/sbin/blkdiscard /usr/sbin/mke2fs /usr/sbin/iscsid /usr/sbin/iscsiadm /usr/sbin/iscsistart"
    for b in sg_inq sg_vpd sg_readcap sg_unmap sg_sync sg_persist sg_turs sg_rtpg sg_luns sg_map26 sg_reset; do
        [ -x "/usr/bin/$b" ] && bins="$bins /usr/bin/$b"
    done
    bins="$bins /usr/sbin/nvme"
    for b in $bins; do
        cp "$b" "$root/usr/bin/"
        ldd "$b" | awk '/=> \// {print $3} /^\t\/lib/ {print $1}' | while read -r lib; do
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done
    done
    ln -sf mke2fs "$root/usr/bin/mkfs.ext4"
    cp /etc/mke2fs.conf "$root/etc/"
    # open-iscsi: a fixed initiator name, and defaults a test adds its CHAP settings to.
    # iscsiadm runs iscsid.startup when it finds no iscsid: tests start `iscsid` themselves.
    echo "InitiatorName=iqn.2025-01.io.ferry:guest" >"$root/etc/iscsi/initiatorname.iscsi"
    # iscsid serves only clients whose uid getpwuid() names "root".
    echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
    echo "root:x:0:" >"$root/etc/group"
    # nvme-cli: a fixed host identity (what a target's allowed hosts and its controller list
    # show), instead of the one nvme-cli would derive from DMI or make up on every connect.
    echo "nqn.2014-08.org.nvmexpress:uuid:7e7d0a1b-3c55-4f0e-9a35-6e0f6572e7a1" >"$root/etc/nvme/hostnqn"
    echo "7e7d0a1b-3c55-4f0e-9a35-6e0f6572e7a1" >"$root/etc/nvme/hostid"
    cat >"$root/etc/iscsi/iscsid.conf" <<'CONF'
iscsid.startup = /bin/true
node.startup = manual
node.session.timeo.replacement_timeout = 60
node.conn[0].timeo.login_timeout = 15
node.conn[0].timeo.logout_timeout = 15
node.conn[0].timeo.noop_out_interval = 5
node.conn[0].timeo.noop_out_timeout = 5
node.session.err_timeo.abort_timeout = 15
node.session.err_timeo.lu_reset_timeout = 30
node.session.initial_login_retry_max = 8
node.session.cmds_max = 128
node.session.queue_depth = 32
node.session.scan = auto
CONF
    # Modules in dependency order (modules.dep lists each module's dependencies): storage,
    # virtio-net, the iSCSI initiator, ext4, and crc32c (digests, ext4 checksums) which the
    # kernel would otherwise ask a modprobe the initramfs does not have for.
    moddir="$kdir/root/lib/modules/$kver"
    want="virtio_pci virtio_blk virtio_scsi sd_mod nvme virtio_net crc32c_generic crc32c_intel iscsi_tcp ext4"
    # The NVMe/TCP host (nvme-core, nvme-fabrics, nvme-tcp; crc32c above for its digests).
    # Linux's own NVMe/TCP target is in the image too, not loaded at boot (below).
    want="$want nvme_tcp"
    # module_order NAME...: the modules' files (relative to $moddir) with their dependencies,
    # each after what it needs, from modules.dep.
    module_order() {
        python3 - "$moddir" "$@" <<'PY'
import sys, os
moddir, wanted = sys.argv[1], sys.argv[2:]
deps = {}
for line in open(os.path.join(moddir, "modules.dep")):
    mod, _, rest = line.partition(":")
    deps[mod.strip()] = rest.split()
byname = {os.path.basename(p).split(".ko")[0].replace("-", "_"): p for p in deps}
out, seen = [], set()
def visit(path):
    if path in seen: return
    seen.add(path)
    for d in deps.get(path, []): visit(d)
    out.append(path)
for w in wanted:
    if w in byname: visit(byname[w])
print("\n".join(out))
PY
    }
    # install_modules DIR ORDER_FILE NAME...: the modules (decompressed) into $root/DIR and
    # their load order, as guest paths, into ORDER_FILE.
    install_modules() {
        local dir=$1 order=$2 m dst
        shift 2
        mkdir -p "$root/$dir"
        : >"$order"
        for m in $(module_order "$@"); do
            dst="$root/$dir/$(basename "$m" | sed 's/\.xz$//; s/\.zst$//')"
            case "$m" in
                *.xz) xz -dc "$moddir/$m" >"$dst" ;;
                *.zst) zstd -dqc "$moddir/$m" >"$dst" ;;
                *) cp "$moddir/$m" "$dst" ;;
            esac
            echo "/$dir/$(basename "$dst")" >>"$order"
        done
    }
    install_modules lib/modules "$root/etc/modules.order" $want
    # Linux's NVMe/TCP target (a reference peer for Ferry's initiator and for the guest's
    # nvme-cli): configfs, nvmet, nvmet-tcp and brd with their dependencies, not loaded at
    # boot; the tests that serve NVMe/TCP from the guest insmod them in the order listed in
    # /lib/modules/nvmet/order (guest-tests/nvme_host.rs, guest-tests/nvmf.rs).
    install_modules lib/modules/nvmet "$root/lib/modules/nvmet/order" configfs nvmet_tcp brd
    # VFIO (vfio, vfio_iommu_type1, irqbypass, vfio_virqfd, vfio-pci-core, vfio-pci), not
    # loaded at boot: scripts/vfio-bind.sh loads them (in /lib/modules/vfio/order) when it
    # hands an NVMe function to Ferry's userspace driver (guest-tests/nvme_pcie.rs).
    install_modules lib/modules/vfio "$root/lib/modules/vfio/order" vfio_pci vfio_iommu_type1
    cat >"$root/init" <<'INIT'
#!/bin/sh
# Ferry guest init: mount, load storage modules, run /test.sh, report its exit code, power off.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
while read -r m; do insmod "$m" 2>/dev/null; done </etc/modules.order
sleep 1
echo "FERRY-GUEST-READY"
if [ -x /test.sh ]; then
    /test.sh
    rc=$?
else
    echo "no /test.sh in the initramfs"
    rc=127
fi
sync
echo "FERRY-GUEST-EXIT=$rc"
poweroff -f
INIT
    chmod +x "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet) >"$cache/initramfs-$key.cpio.tmp"
    mv "$cache/initramfs-$key.cpio.tmp" "$cache/initramfs-$key.cpio"
    rm -rf "$root"
fi
ln -sfn "$cache/initramfs-$key.cpio" "$cache/initramfs.cpio"
log "guest ready: $cache/vmlinuz, $cache/initramfs.cpio"

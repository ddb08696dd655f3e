#!/bin/sh
# Hands PCI functions to Ferry's userspace NVMe driver (vfio-pci) and back, as SPDK's
# scripts/setup.sh does. POSIX sh: it also runs inside the test guest's busybox.
#
#   vfio-bind.sh [BDF...]         bind to vfio-pci (default: every NVMe function)
#   vfio-bind.sh reset [BDF...]   give back to nvme (default: every NVMe function on vfio-pci)
#   vfio-bind.sh status [BDF...]  print "BDF DRIVER GROUP" per function
#
# Binding loads the VFIO modules, sets the function's driver_override to vfio-pci, unbinds it
# from its driver and reprobes it; it then checks that the IOMMU group is viable (every
# function in it on vfio-pci, pci-stub, a PCIe port or no driver) and that /dev/vfio/GROUP
# exists, and prints "BDF vfio-pci GROUP /dev/vfio/GROUP". Functions already where they
# should be are left alone, so running it twice changes nothing. Needs root and an IOMMU
# (Intel: boot with intel_iommu=on; under QEMU: -device intel-iommu,intremap=on, q35).
# Modules come from modprobe, or, where there is none (the test guest), from the insmod
# order in $FERRY_VFIO_MODULES (default /lib/modules/vfio/order).
set -eu

SYS=/sys/bus/pci
NVME_CLASS=0x010802

die() {
    echo "vfio-bind: $*" >&2
    exit 1
}

# The function's current driver, or "none".
driver_of() {
    if [ -e "$SYS/devices/$1/driver" ]; then
        basename "$(readlink "$SYS/devices/$1/driver")"
    else
        echo none
    fi
}

# Its IOMMU group number, or nothing.
group_of() {
    [ -e "$SYS/devices/$1/iommu_group" ] && basename "$(readlink "$SYS/devices/$1/iommu_group")"
    return 0
}

# Every NVMe function, optionally only those on driver $1.
nvme_functions() {
    for d in "$SYS"/devices/*; do
        [ -e "$d/class" ] || continue
        [ "$(cat "$d/class")" = "$NVME_CLASS" ] || continue
        bdf=$(basename "$d")
        [ -z "${1:-}" ] || [ "$(driver_of "$bdf")" = "$1" ] || continue
        echo "$bdf"
    done
}

# Accepts "0000:00:04.0" or "00:04.0".
canonical() {
    case "$1" in
        ????:??:??.?) bdf=$1 ;;
        ??:??.?) bdf=0000:$1 ;;
        *) die "not a PCI address (DDDD:BB:DD.F): $1" ;;
    esac
    [ -e "$SYS/devices/$bdf" ] || die "no PCI function $bdf"
    echo "$bdf"
}

module_loaded() {
    [ -d "/sys/module/$(echo "$1" | tr - _)" ]
}

load_modules() {
    if module_loaded vfio_pci && module_loaded vfio_iommu_type1; then
        return 0
    fi
    if command -v modprobe >/dev/null 2>&1 && modprobe vfio-pci 2>/dev/null; then
        modprobe vfio_iommu_type1 || die "modprobe vfio_iommu_type1 failed"
        return 0
    fi
    order=${FERRY_VFIO_MODULES:-/lib/modules/vfio/order}
    [ -f "$order" ] || die "cannot load vfio-pci: no modprobe and no module list $order"
    while read -r m; do
        name=$(basename "$m" .ko)
        module_loaded "$name" || insmod "$m" || die "insmod $m failed"
    done <"$order"
    module_loaded vfio_pci || die "vfio-pci did not load"
}

# Waits (about 5 s at most) until $1 is true.
settle() {
    i=0
    while ! eval "$1"; do
        i=$((i + 1))
        [ $i -le 50 ] || return 1
        sleep 0.1
    done
}

# Points $1 at driver $2 ("" clears the override) and reprobes it.
rebind() {
    bdf=$1 want=$2
    echo "$want" >"$SYS/devices/$bdf/driver_override"
    if [ -e "$SYS/devices/$bdf/driver" ]; then
        echo "$bdf" >"$SYS/devices/$bdf/driver/unbind"
    fi
    echo "$bdf" >"$SYS/drivers_probe" 2>/dev/null || true
}

# Fails unless every function in $1's group may sit beside a function VFIO hands out.
check_viable() {
    group=$1
    for dev in /sys/kernel/iommu_groups/"$group"/devices/*; do
        other=$(basename "$dev")
        drv=$(driver_of "$other")
        case "$drv" in
            vfio-pci | pci-stub | pcieport | none) ;;
            *) die "IOMMU group $group is not viable: $other is on $drv (bind it too: $0 $other)" ;;
        esac
    done
}

bind_one() {
    bdf=$1
    group=$(group_of "$bdf")
    [ -n "$group" ] || die "$bdf has no IOMMU group: no IOMMU in use (Intel: boot with intel_iommu=on; QEMU: -machine q35 -device intel-iommu,intremap=on)"
    if [ "$(driver_of "$bdf")" != vfio-pci ]; then
        rebind "$bdf" vfio-pci
        settle "[ \"\$(driver_of $bdf)\" = vfio-pci ]" || die "$bdf did not bind to vfio-pci (driver: $(driver_of "$bdf"))"
    fi
    check_viable "$group"
    settle "[ -c /dev/vfio/$group ]" || die "no /dev/vfio/$group after binding $bdf"
    echo "$bdf vfio-pci $group /dev/vfio/$group"
}

reset_one() {
    bdf=$1
    # Cleared in any case, so a later probe (or hotplug) finds the ordinary driver.
    if [ "$(driver_of "$bdf")" = vfio-pci ] || [ -n "$(cat "$SYS/devices/$bdf/driver_override" 2>/dev/null | grep -v '^(null)$')" ]; then
        rebind "$bdf" ""
    fi
    if [ "$(cat "$SYS/devices/$bdf/class")" = "$NVME_CLASS" ]; then
        if ! module_loaded nvme && command -v modprobe >/dev/null 2>&1; then
            modprobe nvme || true
        fi
        if module_loaded nvme; then
            settle "[ \"\$(driver_of $bdf)\" = nvme ]" || die "$bdf did not go back to nvme (driver: $(driver_of "$bdf"))"
        fi
    fi
    echo "$bdf $(driver_of "$bdf")"
}

cmd=bind
case "${1:-}" in
    reset | status) cmd=$1; shift ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
esac
[ "$(id -u 2>/dev/null || echo 0)" = 0 ] || die "needs root"

if [ $# -gt 0 ]; then
    list=""
    for a in "$@"; do list="$list $(canonical "$a")"; done
else
    case $cmd in
        reset) list=$(nvme_functions vfio-pci) ;;
        *) list=$(nvme_functions) ;;
    esac
    [ -n "$list" ] || [ $cmd = reset ] || die "no NVMe function found"
fi

case $cmd in
    bind)
        load_modules
        for bdf in $list; do bind_one "$bdf"; done
        ;;
    reset)
        for bdf in $list; do reset_one "$bdf"; done
        ;;
    status)
        for bdf in $list; do echo "$bdf $(driver_of "$bdf") $(group_of "$bdf")"; done
        ;;
esac

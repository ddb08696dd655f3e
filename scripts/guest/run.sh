#!/usr/bin/env bash
# Boots the cached guest under QEMU (TCG), runs a shell script inside it, prints the guest's
# console, and exits with the script's exit code.
#
#   run.sh [--mem 512M] [--memfd|--hugepages] [--timeout SECS] [--log FILE] [--qemu11] \
#          [--append WORDS] [--add-bin FILE]... [--vfio-nvme IMG] --script FILE [-- EXTRA QEMU ARGS...]
#
# --append adds words to the guest kernel's command line.
# --add-bin FILE (repeatable) puts FILE into the guest's /usr/bin at boot, with its shared
# libraries (initrd.sh): ferryd, ferryctl, ferry-bdevperf of the build under test, scripts.
# --vfio-nvme IMG is the mode of the userspace NVMe driver's tests: a q35 machine with an
# emulated Intel IOMMU doing interrupt remapping (what vfio_iommu_type1 insists on), QEMU's
# NVMe controller on IMG at 0000:00:04.0 (serial ferry0), `intel_iommu=on` for the guest
# kernel (Debian's 6.1 has no VFIO no-IOMMU mode) and 2 GiB of guest RAM unless --mem says.
# --qemu11 runs the QEMU >= 10.1 of the cached Debian 13 tree (qemu11.sh), which has
# `-device vfio-user-pci`, instead of the host's.
# Guest memory is shared (memfd by default, or hugetlbfs), as vhost-user backends need.
# Disks appear in the guest as /dev/vda... (virtio-blk) or /dev/sda... (virtio-scsi).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cache=${FERRY_GUEST_CACHE:-/var/cache/ferry-guest}
mem="" backend=memfd timeout=300 script="" log="" append="" vfio_img=""
qemu=(qemu-system-x86_64)
bins=()
while [ $# -gt 0 ]; do
    case "$1" in
        --mem) mem=$2; shift 2 ;;
        --memfd) backend=memfd; shift ;;
        --hugepages) backend=hugepages; shift ;;
        --timeout) timeout=$2; shift 2 ;;
        --script) script=$2; shift 2 ;;
        --log) log=$2; shift 2 ;;
        --qemu11) qemu=(bash "$(dirname "$0")/qemu11.sh"); shift ;;
        --append) append="$append $2"; shift 2 ;;
        --add-bin) bins+=("$2"); shift 2 ;;
        --vfio-nvme) vfio_img=$2; shift 2 ;;
        --) shift; break ;;
        *) die "unknown option $1" ;;
    esac
done
[ -n "$script" ] && [ -f "$script" ] || die "--script FILE is required"
[ -f "$cache/initramfs.cpio" ] || die "run scripts/guest/setup.sh first"
machine=()
if [ -n "$vfio_img" ]; then
    [ -f "$vfio_img" ] || die "--vfio-nvme: no image $vfio_img"
    [ -n "$mem" ] || mem=2G
    # TCG: no kernel irqchip, so intremap=on needs no kernel-irqchip=split (a KVM option).
    # The IOMMU comes before the PCI devices it translates for.
    machine=(-machine q35 -device intel-iommu,intremap=on
        -drive "if=none,id=nvm,file=$vfio_img,format=raw"
        -device nvme,serial=ferry0,drive=nvm,addr=04.0)
    append="$append intel_iommu=on"
fi
[ -n "$mem" ] || mem=512M

work=$(mktemp -d /tmp/ferry-guest.XXXXXX)
trap 'rm -rf "$work"' EXIT
bash "$(dirname "$0")/initrd.sh" "$script" "$work/initrd" ${bins[@]+"${bins[@]}"}

case "$backend" in
    memfd) memobj="memory-backend-memfd,id=mem0,size=$mem,share=on" ;;
    hugepages)
        need_pages=$(( $(numfmt --from=iec "$mem") / 2097152 + 64 ))
        # Free pages, not the pool's size: another guest of the same test binary, or a map
        # file a killed SPDK process left behind, may hold part of the pool.
        # (HugePages_Total counts the surplus pages such a holder keeps after the pool shrank.)
        read -r total_pages free_pages < <(awk '/^HugePages_Total:/ { t = $2 } /^HugePages_Free:/ { f = $2 } END { print t, f }' /proc/meminfo)
        if [ "$free_pages" -lt "$need_pages" ]; then
            echo $((total_pages - free_pages + need_pages)) >/proc/sys/vm/nr_hugepages
        fi
        mountpoint -q /dev/hugepages || { mkdir -p /dev/hugepages; mount -t hugetlbfs none /dev/hugepages; }
        memobj="memory-backend-file,id=mem0,size=$mem,mem-path=/dev/hugepages,share=on" ;;
esac
[ -n "$log" ] || log="$work/console.log"
set +e
timeout --kill-after=5 "$timeout" "${qemu[@]}" \
    -accel tcg -cpu max -smp 2 -m "$mem" \
    -object "$memobj" -numa node,memdev=mem0 \
    -kernel "$cache/vmlinuz" -initrd "$work/initrd" \
    -append "console=ttyS0 panic=-1 loglevel=4 quiet$append" \
    -display none -serial "file:$log" -monitor none -no-reboot -nodefaults \
    ${machine[@]+"${machine[@]}"} "$@" </dev/null
qemu_rc=$?
set -e
cat "$log"
rc=$(grep -a -o 'FERRY-GUEST-EXIT=[0-9]*' "$log" | tail -n1 | cut -d= -f2)
if [ -z "$rc" ]; then
    [ "$qemu_rc" = 124 ] && die "guest timed out after ${timeout}s"
    die "guest did not report an exit code (QEMU exit $qemu_rc)"
fi
exit "$rc"

#!/usr/bin/env bash
# Writes OUT: the cached guest initramfs (setup.sh) with SCRIPT added as /test.sh, which the
# guest's init runs, reporting `FERRY-GUEST-EXIT=<rc>` on the console. For QEMU's -initrd
# (run.sh) or a libvirt domain's <initrd>.
#
#   initrd.sh SCRIPT OUT
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
script=${1:?usage: $0 SCRIPT OUT}
out=${2:?usage: $0 SCRIPT OUT}
cache=${FERRY_GUEST_CACHE:-/var/cache/ferry-guest}
[ -f "$cache/initramfs.cpio" ] || die "run scripts/guest/setup.sh first"
overlay=$(mktemp -d /tmp/ferry-initrd.XXXXXX)
trap 'rm -rf "$overlay"' EXIT
cp "$script" "$overlay/test.sh"
chmod +x "$overlay/test.sh"
# nvmet-tcp (a reference NVMe/TCP target for Ferry's initiator), configfs and brd, with
# their dependencies in load order: /lib/modules/nvmet/*.ko, listed in /lib/modules/nvmet/order,
# loaded only by the tests that serve NVMe/TCP from the guest (guest-tests/nvme_host.rs).
nvmet=$(mktemp -d /tmp/ferry-nvmet.XXXXXX)
trap 'rm -rf "$overlay" "$nvmet"' EXIT
moddir=$(ls -d "$cache"/linux-image-*/root/lib/modules/* 2>/dev/null | head -n1)
if [ -n "$moddir" ] && [ -f "$moddir/modules.dep" ]; then
    mkdir -p "$nvmet/lib/modules/nvmet"
    python3 - "$moddir" configfs nvmet_tcp brd <<'PY' | while read -r m; do
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
        cp "$moddir/$m" "$nvmet/lib/modules/nvmet/"
        echo "/lib/modules/nvmet/$(basename "$m")" >>"$nvmet/lib/modules/nvmet/order"
    done
fi
# Linux unpacks concatenated cpio archives in order: the second one adds /test.sh.
{
    cat "$cache/initramfs.cpio"
    (cd "$overlay" && echo test.sh | cpio -o -H newc --quiet)
    (cd "$nvmet" && find . -mindepth 1 | cpio -o -H newc --quiet)
} >"$out"

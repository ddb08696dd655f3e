#!/usr/bin/env bash
# Builds SPDK, the anchor of the side-by-side benches (vhost-spdk.sh, vhost-stages.sh,
# nvmf-tcp.sh, iscsi.sh), in a cache outside this repository, or reuses the build already there.
# Prints the SPDK directory on stdout.
#
# Usage: scripts/bench/spdk-build.sh
#   FERRY_SPDK_SRC   a git repository holding SPDK's history (default: the first of
#                    /work/.mirror/spdk+spdk/repo, /var/cache/ferry-spdk/src/spdk.git); the tag
#                    FERRY_SPDK_REF (default v26.05) is built.
#   FERRY_ISAL_SRC   a git repository of intel/isa-l holding the commit SPDK's tree pins
#                    (default /work/.mirror/intel+isa-l/repo, then $cache/src/isa-l.git).
#   FERRY_ISAL_CRYPTO_SRC  the same for intel/isa-l_crypto (SPDK's configure requires it with
#                    ISA-L; default /work/.mirror/intel+isa-l_crypto/repo, $cache/src/isa-l_crypto.git).
#   FERRY_SPDK_CACHE where the build goes (default /var/cache/ferry-spdk): $cache/spdk.
#   FERRY_SPDK_REUSE_ONLY=1  fail instead of building when no current build is there.
# The machines have no network but the package registries, so the sources come from
# repositories fetched beforehand (for example with the tool library's `fetch`).
#
# The build, against Debian 12's DPDK 22.11 (libdpdk-dev) rather than SPDK's DPDK submodule:
# - SPDK's env layer refuses DPDK 22.11 minors past .4 (it cannot vouch for their private PCI
#   ABI); the 22.11 function table is right for Debian's 22.11.x, so the check is relaxed.
# - SPDK links rte_log and rte_argparse, libraries DPDK 22.11 does not have (its logging is
#   in rte_eal), so they are taken off the list.
# - isa-l and isa-l-crypto, submodules, are checked out from their repositories at the pinned
#   commits (configure builds both whenever ISA-L is on; ISA-L computes CRCs).
# - the crypto bdev and intel-ipsec-mb are left out (--without-crypto; CONFIG_IPSEC_MB=n, which
#   configure turns on for Debian's DPDK), and everything the benches
#   do not use (fio plugin, OCF, xNVMe, RBD, vfio-user, FUSE, libiscsi, ublk, tests).
# The cache holds a stamp of the source commit and of this recipe: a change to either rebuilds.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
need_root

ref=${FERRY_SPDK_REF:-v26.05}
cache=${FERRY_SPDK_CACHE:-/var/cache/ferry-spdk}
dest=$cache/spdk
# Bumped whenever the recipe below changes what gets built.
recipe=1

first_repo() {
    local r
    for r in "$@"; do
        [ -n "$r" ] && git -C "$r" rev-parse --git-dir >/dev/null 2>&1 && { echo "$r"; return 0; }
    done
    return 1
}
src=$(first_repo "${FERRY_SPDK_SRC:-}" /work/.mirror/spdk+spdk/repo "$cache/src/spdk.git") ||
    die "no SPDK repository: set FERRY_SPDK_SRC to a clone of github.com/spdk/spdk"
commit=$(git -C "$src" rev-parse --verify "$ref^{commit}") || die "$src has no $ref"
stamp="spdk $commit recipe $recipe"

if [ -f "$dest/.ferry-build" ] && [ "$(cat "$dest/.ferry-build")" = "$stamp" ] &&
    [ -x "$dest/build/bin/vhost" ] && [ -x "$dest/build/examples/bdevperf" ]; then
    log "SPDK $ref ($commit) already built in $dest"
    echo "$dest"
    exit 0
fi

[ -z "${FERRY_SPDK_REUSE_ONLY:-}" ] || die "no current SPDK build in $dest (FERRY_SPDK_REUSE_ONLY)"
apt_install build-essential pkg-config python3 python3-pyelftools nasm autoconf automake libtool \
    libdpdk-dev libnuma-dev uuid-dev libssl-dev libaio-dev libncurses-dev libjson-c-dev \
    liburing-dev libkeyutils-dev libarchive-dev python3-tabulate python3-jinja2 help2man

log "checking out SPDK $ref ($commit) into $dest"
rm -rf "$dest"
mkdir -p "$dest"
git -C "$src" archive "$commit" | tar -x -C "$dest"

# submodule PATH REPO: the submodule at PATH, at the commit SPDK's tree pins, from REPO.
submodule() {
    local pinned
    pinned=$(git -C "$src" ls-tree "$commit" "$1" | awk '{print $3}')
    git -C "$2" cat-file -e "$pinned^{commit}" 2>/dev/null || die "$2 lacks $1 commit $pinned"
    mkdir -p "$dest/$1"
    git -C "$2" archive "$pinned" | tar -x -C "$dest/$1"
}
isal=$(first_repo "${FERRY_ISAL_SRC:-}" /work/.mirror/intel+isa-l/repo "$cache/src/isa-l.git") ||
    die "no isa-l repository: set FERRY_ISAL_SRC to a clone of github.com/intel/isa-l"
isal_crypto=$(first_repo "${FERRY_ISAL_CRYPTO_SRC:-}" /work/.mirror/intel+isa-l_crypto/repo \
    "$cache/src/isa-l_crypto.git") ||
    die "no isa-l_crypto repository: set FERRY_ISAL_CRYPTO_SRC to a clone of github.com/intel/isa-l_crypto"
submodule isa-l "$isal"
submodule isa-l-crypto "$isal_crypto"

cd "$dest"
# Debian's python3 first (its python3-tabulate and python3-jinja2, which SPDK's code
# generation imports), before a user's pyenv.
export PATH=/usr/bin:$PATH

# edit FILE OLD NEW: replaces the line OLD of FILE (a fixed string) with NEW; fails if FILE has
# no such line (SPDK changed: the recipe needs a look).
edit() {
    grep -qxF "$2" "$1" || die "$1 changed: no line '$2'"
    OLD=$2 NEW=$3 perl -i -pe 'chomp; $_ = $_ eq $ENV{OLD} ? "$ENV{NEW}\n" : "$_\n"' "$1"
}
# DPDK 22.11.x minors: the 22.11 PCI function table.
edit lib/env_dpdk/pci_dpdk.c $'\t\tif (minor > 4) {' $'\t\tif (minor > 99) {'
# Libraries DPDK 22.11 lacks.
edit lib/env_dpdk/env.mk 'DPDK_LIB_LIST = rte_eal rte_kvargs rte_log rte_telemetry rte_argparse' \
    'DPDK_LIB_LIST = rte_eal rte_kvargs rte_telemetry'

log "configuring"
./configure --with-dpdk --without-crypto --without-fio --without-ocf --without-xnvme --without-rbd \
    --without-vfio-user --without-fsdev --without-aio-fsdev --without-nvme-cuse --without-usdt \
    --without-golang --without-sma --without-avahi --without-iscsi-initiator --without-ublk \
    --disable-tests --disable-unit-tests --disable-examples >"$cache/configure.log" 2>&1 ||
    { tail -n 30 "$cache/configure.log" >&2; die "SPDK's configure failed ($cache/configure.log)"; }

# configure turns intel-ipsec-mb on because Debian's DPDK has an ipsec_mb crypto driver, and
# the build would then make the submodule; with the crypto bdev off nothing links it.
edit mk/config.mk 'CONFIG_IPSEC_MB?=y' 'CONFIG_IPSEC_MB?=n'

log "building (about 5 minutes on 2 cores; log: $cache/build.log)"
# Everything configure left on (the examples are off), then the one example the benches run.
{
    make -j"$(nproc)" && make -j"$(nproc)" -C examples/bdev/bdevperf
} >"$cache/build.log" 2>&1 || { tail -n 40 "$cache/build.log" >&2; die "SPDK's build failed ($cache/build.log)"; }
# The programs run with SPDK's libraries found through LD_LIBRARY_PATH (spdk-common.sh sets it).
for bin in build/bin/vhost build/bin/iscsi_tgt build/bin/nvmf_tgt build/bin/spdk_nvme_perf build/examples/bdevperf; do
    [ -x "$bin" ] || die "the build made no $bin"
    missing=$(LD_LIBRARY_PATH=$dest/build/lib ldd "$bin" | grep 'not found' || true)
    [ -z "$missing" ] || die "$bin lacks libraries: $missing"
done
echo "$stamp" >"$dest/.ferry-build"
log "SPDK $ref built in $dest"
echo "$dest"

#!/usr/bin/env bash
# Runs Ferry's whole test suite: formatting, lints, unit and integration tests.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$FERRY_ROOT"

bash scripts/setup.sh
bash scripts/spdk-client.sh >/dev/null  # SPDK's spdk-rpc and spdk-cli, for tests/spdk_client.rs
# Guest tests boot a real Linux guest under QEMU: QEMU, the guest kernel and initramfs.
bash scripts/guest/setup.sh
# The libvirt guest tests (guest-tests/libvirt.rs): libvirt and its QEMU user; each test
# starts and stops its own libvirtd.
bash scripts/libvirt/setup.sh
# The iSCSI conformance test (tests/iscsi_conformance.rs) and benchmark: libiscsi's tools
# (iscsi-test-cu, iscsi-perf) and Debian's tgtd, the reference target.
bash scripts/iscsi/setup.sh
# The RBD tests (tests/rbd.rs, guest-tests/rbd.rs) start real Ceph clusters: ceph-mon, ceph-osd
# and the client tools and libraries.
bash scripts/ceph-dev.sh install

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

log "cargo test"
# Every test binary's results go to one log; the closing line is the total over all of them
# (cargo's own last line is whichever binary ran last, possibly one with no tests).
results=$(mktemp /tmp/ferry-test-results.XXXXXX)
trap 'rm -f "$results"' EXIT
set +e
cargo test --workspace --doc 2>&1 | tee "$results"
doc_rc=${PIPESTATUS[0]}
# Tests start real ferryd daemons: four at a time keeps two cores responsive.
cargo test --workspace --all-targets --no-fail-fast -- --test-threads=4 2>&1 | tee -a "$results"
test_rc=${PIPESTATUS[0]}
set -e
# Fuzz smoke run: every AFL++ target a few seconds from its seeds (builds fuzz/ apart from
# the workspace; about 2.5 minutes with the build). A crash or hang found fails the suite.
set +e
bash scripts/fuzz/run.sh all 6 2>&1 | tee -a "$results"
fuzz_rc=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$results"
[ "$doc_rc" = 0 ] && [ "$test_rc" = 0 ] && [ "$fuzz_rc" = 0 ]

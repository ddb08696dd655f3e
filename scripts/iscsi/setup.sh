#!/usr/bin/env bash
# Installs what the iSCSI conformance test and benchmark need, idempotently (nothing to do, and
# no apt call, once installed): libiscsi's test tools (iscsi-test-cu, iscsi-perf, iscsi-inq,
# iscsi-ls from libiscsi-bin) and Debian's tgt (tgtd, tgtadm), the reference target the
# harness is proven against. Nothing here starts a daemon: the test and the benchmark start
# their own tgtd on a private port (tgt's package starts none without systemd).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

apt_install libiscsi-bin tgt
command -v iscsi-test-cu >/dev/null || die "iscsi-test-cu missing after installing libiscsi-bin"
command -v tgtd >/dev/null || die "tgtd missing after installing tgt"

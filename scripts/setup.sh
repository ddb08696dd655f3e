#!/usr/bin/env bash
# Installs what Ferry's build, tests and demo need on Debian 12. Idempotent.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

need_toolchain
# gcc and make for crates with C parts; procps (ps, getconf) and iproute2 for tests.
apt_install gcc make pkg-config procps iproute2 python3 qemu-utils
# curl, tmux, promtool and prometheus_client for the metrics and `ferryctl top` tests.
bash "$(dirname "$0")/metrics/setup.sh"
log "setup done"

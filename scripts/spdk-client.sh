#!/usr/bin/env bash
# Installs SPDK's own Python client from PyPI (package `spdk`: `spdk-rpc` is rpc.py,
# `spdk-cli` is spdkcli) in a virtual environment, for the SPDK-compatibility tests
# (tests/spdk_client.rs). Idempotent: a venv that already has the pinned version is kept.
#
#   bash scripts/spdk-client.sh          # installs, prints the venv's bin directory
#
# FERRY_SPDK_VENV overrides where the venv lives (default /var/cache/ferry-spdk-venv).
# The version pinned here is the SPDK release Ferry's RPC matches (docs/rpc.md says so, and a
# test checks that the two agree).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SPDK_VERSION=26.9
VENV="${FERRY_SPDK_VENV:-/var/cache/ferry-spdk-venv}"
# Debian's interpreter, not whatever python3 comes first on PATH: the venv must outlive
# per-user Python installs and work the same on CI.
PYTHON=/usr/bin/python3

installed_version() {
    "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("spdk"))' 2>/dev/null || true
}

if [ "$(installed_version)" != "$SPDK_VERSION" ] || [ ! -x "$VENV/bin/spdk-rpc" ] || [ ! -x "$VENV/bin/spdk-cli" ]; then
    apt_install python3 python3-venv
    log "installing spdk==$SPDK_VERSION (spdk-rpc, spdk-cli) in $VENV"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "spdk[cli]==$SPDK_VERSION"
    [ "$(installed_version)" = "$SPDK_VERSION" ] || die "spdk $SPDK_VERSION did not install in $VENV"
fi
echo "$VENV/bin"

#!/usr/bin/env bash
# Installs what the metrics and `ferryctl top` tests use, once:
#   - curl (the scraper) and tmux (the terminal `ferryctl top` runs in), from Debian;
#   - promtool, Prometheus' own checker (`promtool check metrics`), taken out of Debian's
#     `prometheus` package without installing it (installing would start a Prometheus server);
#   - Python's prometheus_client (the reference client's text-format parser) in a venv.
# Tools land in $FERRY_TOOLS (default target/tools), where tests/metrics.rs looks for them.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

tools=${FERRY_TOOLS:-$FERRY_ROOT/target/tools}
mkdir -p "$tools"
apt_install curl tmux python3-venv

if [ ! -x "$tools/promtool" ]; then
    log "extracting promtool from Debian's prometheus package"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # apt-get download runs as _apt where it can; a private directory it can write to.
    chmod 777 "$work"
    if ! (cd "$work" && apt-get download -q prometheus >/dev/null 2>&1); then
        apt-get update -q >/dev/null
        (cd "$work" && apt-get download -q prometheus >/dev/null)
    fi
    dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool
    mv "$work/usr/bin/promtool" "$tools/promtool"
fi
"$tools/promtool" --version >/dev/null

if [ ! -x "$tools/venv/bin/python" ] || ! "$tools/venv/bin/python" -c 'import prometheus_client' 2>/dev/null; then
    log "installing prometheus_client in $tools/venv"
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install -q 'prometheus_client>=0.20,<1'
fi

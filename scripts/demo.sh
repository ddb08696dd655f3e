#!/usr/bin/env bash
# The main job on its embedded default: start ferryd serving a RAM disk (Malloc0), drive it
# with ferryctl, check data with ferry-bdevperf, and stop it cleanly.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$FERRY_ROOT"

bash scripts/setup.sh
build_release

work=$(mktemp -d /tmp/ferry-demo.XXXXXX)
sock="$work/ferry.sock"
ctl() { echo "\$ ferryctl $*" >&2; "$FERRY_BIN/ferryctl" -s "$sock" "$@"; }
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

log "starting ferryd -m 0x3 with its default configuration (a 64 MiB RAM disk)"
"$FERRY_BIN/ferryd" -m 0x3 -r "$sock" --default-config >"$work/ferryd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$work/ferryd.log"; die "ferryd did not start"; }

ctl spdk_get_version
ctl bdev_get_bdevs -b Malloc0
ctl bdev_null_create Null0 128 4096
ctl framework_get_reactors
ctl save_config >"$work/config.json"
echo "saved configuration:" >&2
cat "$work/config.json"

log "stopping ferryd (SIGTERM) and checking the saved configuration's bdevs with ferry-bdevperf"
kill -TERM "$pid"; wait "$pid"; pid=
"$FERRY_BIN/ferry-bdevperf" -c "$work/config.json" -m 0x3 -w verify -q 32 -o 4096 -t 2
log "demo done: ferryd served Malloc0, took RPCs, saved its configuration, and the data path verified"

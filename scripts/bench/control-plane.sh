#!/usr/bin/env bash
# The control plane at scale: N vhost-user-blk controllers (null bdevs), a frontend
# (ferry-vhost-swarm, Ferry's initiator) connected to each, then all N dropping and
# reconnecting at once, ROUNDS times. Prints ferryd's thread count and memory (RSS) idle, with
# N controllers, and with N frontends connected; the time to create the controllers and to
# connect the frontends; and spdk_get_version latency (p50/p99/max) measured from another
# client during the reconnect storms.
# Usage: scripts/bench/control-plane.sh [N] [ROUNDS]   (default 1000 3)
# FERRYD=PATH runs another ferryd build (to compare two builds in one session).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
n=${1:-1000}
rounds=${2:-3}
build_release
(cd "$FERRY_ROOT" && cargo build --release --quiet -p ferry-vhost-initiator --bin ferry-vhost-swarm)
work=$(mktemp -d /tmp/ferry-ctrlplane.XXXXXX)
sock="$work/ferry.sock"
"${FERRYD:-$FERRY_BIN/ferryd}" -m 0x3 -r "$sock" -S "$work" --log-level ERROR &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done

stat_line() { # label
    local threads rss
    threads=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status")
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    printf '%-34s threads %5d   RSS %8.1f MiB\n' "$1" "$threads" "$(echo "$rss / 1024" | bc -l)"
}

# rpc.py-style JSON-RPC over the socket, from Python (no dependencies).
rpc_py() {
    python3 - "$sock" "$@" <<'EOF'
import json, socket, sys, time
path, mode = sys.argv[1], sys.argv[2]
def call(s, method, params=None, id=[0]):
    id[0] += 1
    req = {"jsonrpc": "2.0", "method": method, "id": id[0]}
    if params is not None:
        req["params"] = params
    s.sendall(json.dumps(req).encode())
    buf = b""
    dec = json.JSONDecoder()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed")
        buf += chunk
        try:
            obj, _ = dec.raw_decode(buf.decode())
            if "error" in obj:
                raise SystemExit(f"{method}: {obj['error']}")
            return obj["result"]
        except ValueError:
            continue
s = socket.socket(socket.AF_UNIX)
s.connect(path)
if mode == "create":
    n = int(sys.argv[3])
    t = time.monotonic()
    for i in range(n):
        call(s, "bdev_null_create", {"name": f"Null{i}", "num_blocks": 2048, "block_size": 512})
        call(s, "vhost_create_blk_controller", {"ctrlr": f"swarm{i}", "dev_name": f"Null{i}"})
    print(f"created {n} null bdevs + controllers in {time.monotonic() - t:.2f} s "
          f"({(time.monotonic() - t) / n * 1000:.2f} ms per pair)")
elif mode == "latency":
    stop = sys.argv[3]
    lat = []
    import os
    while not os.path.exists(stop):
        t = time.monotonic()
        call(s, "spdk_get_version")
        lat.append(time.monotonic() - t)
        time.sleep(0.002)
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3
    print(f"spdk_get_version during the reconnects: {len(lat)} calls, p50 {q(0.5):.2f} ms, "
          f"p99 {q(0.99):.2f} ms, max {lat[-1] * 1e3:.2f} ms")
EOF
}

stat_line "idle"
rpc_py create "$n"
stat_line "$n controllers"
rpc_py latency "$work/stop" >"$work/latency.txt" &
lat_pid=$!
"$FERRY_ROOT/target/release/ferry-vhost-swarm" --dir "$work" -n "$n" --reconnects "$rounds" | tee "$work/swarm.txt"
touch "$work/stop"
wait $lat_pid
stat_line "$n frontends connected (after)"
cat "$work/latency.txt"

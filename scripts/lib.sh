# Shared helpers for Ferry's scripts. Source it; do not run it.
# shellcheck shell=bash

FERRY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FERRY_ROOT
# rustup installs cargo under ~/.cargo/bin; CI's environment may not have it on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "this needs root (sudo $0)"
}

# apt_install PKG...: installs the Debian packages not yet installed; idempotent, and runs
# `apt-get update` at most once a day.
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    need_root
    local stamp=/var/lib/apt/periodic/ferry-update-stamp
    if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +1440 2>/dev/null)" ]; then
        log "apt-get update"
        apt-get update -q >/dev/null
        mkdir -p "$(dirname "$stamp")" && touch "$stamp"
    fi
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# need_toolchain: cargo with rustfmt and clippy, or a clear failure.
need_toolchain() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup) first"
    if command -v rustup >/dev/null 2>&1; then
        rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
        rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    fi
}

# build_release: the release binaries, in target/release. The first build takes minutes on two
# cores: cargo's own progress shows (its bar on a terminal, a line per crate otherwise).
build_release() {
    log "building release binaries (the first time takes a few minutes)"
    (cd "$FERRY_ROOT" && cargo build --release --bins)
}

FERRY_BIN="$FERRY_ROOT/target/release"
export FERRY_BIN

# bdevperf_iops CONFIG BDEV QD SECONDS: 4 KiB random reads on BDEV of the configuration CONFIG by
# ferry-bdevperf pinned to core 1 (the client core of the benches whose target runs on core 0);
# prints the IOPS.
bdevperf_iops() {
    "$FERRY_BIN/ferry-bdevperf" -c "$1" -m 0x2 -T "$2" -q "$3" -o 4096 -w randread -t "$4" \
        --json-summary | tail -n 1 | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["iops"]))'
}

# bdev_config FILE METHOD PARAMS: a configuration document (what ferry-bdevperf -c reads) with one
# bdev-creating call.
bdev_config() {
    printf '{"subsystems":[{"subsystem":"bdev","config":[{"method":"%s","params":%s}]}]}\n' "$2" "$3" >"$1"
}

# ab_runs NAME_A CONFIG_A BDEV_A NAME_B CONFIG_B BDEV_B RUNS SECONDS: alternating runs of
# bdevperf_iops at QD128 and QD1 on A and B; prints four lines `NAME QD IOPS...`.
ab_runs() {
    local qd i
    for qd in 128 1; do
        local a="" b=""
        for i in $(seq "$7"); do
            log "$1 QD$qd run $i"; a+="$(bdevperf_iops "$2" "$3" "$qd" "$8") "
            log "$4 QD$qd run $i"; b+="$(bdevperf_iops "$5" "$6" "$qd" "$8") "
        done
        echo "$1 $qd $a"
        echo "$4 $qd $b"
    done
}

# Bench etiquette: take_bench_lock waits until no CI runs (.ci/run execs scripts/test.sh) and no
# other bench holds /tmp/ferry-bench.lock, then holds it; release_bench_lock (from the caller's
# EXIT trap) lets it go if this shell holds it.
FERRY_BENCH_LOCK=/tmp/ferry-bench.lock
take_bench_lock() {
    local lock=$FERRY_BENCH_LOCK
    while pgrep -f '\.ci/run|scripts/test\.sh' >/dev/null || { [ -e "$lock" ] && kill -0 "$(cat "$lock" 2>/dev/null)" 2>/dev/null; }; do
        log "waiting for CI or another bench to finish"
        sleep 10
    done
    echo $$ >"$lock"
}
release_bench_lock() {
    if [ "$(cat "$FERRY_BENCH_LOCK" 2>/dev/null)" = "$$" ]; then rm -f "$FERRY_BENCH_LOCK"; fi
}

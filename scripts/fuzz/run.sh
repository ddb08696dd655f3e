#!/usr/bin/env bash
# Builds the AFL++ fuzz targets (fuzz/, cargo-afl) and runs each for a while, failing if any
# run found a crash or a hang.
#
#   scripts/fuzz/run.sh [TARGET|all] [SECONDS]     default: all targets, 20 s each
#
# Targets: split_ring packed_ring scsi rpc vhost_user http blobstore iscsi_login iscsi_pdu nvmf_tcp_pdu nvme_cmd vfio_user nvme_prp (their logic: src/fuzz_api/). Seeds come
# from fuzz/corpus/<target>/; findings land in fuzz/out/<target>/default/{crashes,hangs}/,
# replay one with `fuzz/target/release/<target> < FILE`. Installs what it needs once:
# cargo-afl from crates.io (it builds its own AFL++ on first use) and a C toolchain.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$FERRY_ROOT"

ALL="split_ring packed_ring scsi rpc vhost_user http blobstore iscsi_login iscsi_pdu nvmf_tcp_pdu nvme_cmd vfio_user nvme_prp"
target=${1:-all}
seconds=${2:-20}
[ "$target" = all ] && target=$ALL

if ! command -v cc >/dev/null || ! command -v make >/dev/null; then
    log "installing a C toolchain (AFL++ is built from source by cargo-afl)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential
fi
if ! cargo afl --version >/dev/null 2>&1; then
    log "installing cargo-afl"
    cargo install --locked cargo-afl --version '^0.18'
fi

log "building the fuzz targets"
(cd fuzz && cargo afl build --release --quiet)

# In a container: no CPU frequency governor, core dumps piped elsewhere, no UI on a pipe,
# CPUs shared with other builds (no pinning).
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1
export AFL_NO_CRASH_README=1

failed=0
for t in $target; do
    out=fuzz/out/$t
    rm -rf "$out" && mkdir -p fuzz/out
    log "fuzzing $t for ${seconds}s"
    # -t: generous per-input timeout (ms), so a hang is a real one on a loaded 2-core machine.
    if ! cargo afl fuzz -V "$seconds" -t 5000 -i "fuzz/corpus/$t" -o "$out" "fuzz/target/release/$t" \
        >"$out.log" 2>&1; then
        tail -20 "$out.log"
        echo "fuzz: $t: afl-fuzz failed (log: $out.log)"
        failed=1
        continue
    fi
    stats=$out/default/fuzzer_stats
    get() { awk -F': *' -v k="$1" '$1 ~ "^"k" *$" { print $2 }' "$stats"; }
    crashes=$(find "$out/default/crashes" -name 'id:*' 2>/dev/null | wc -l)
    hangs=$(find "$out/default/hangs" -name 'id:*' 2>/dev/null | wc -l)
    echo "fuzz: $t: $(get execs_done) execs, $(get corpus_count) paths, coverage $(get bitmap_cvg), $crashes crashes, $hangs hangs"
    if [ "$crashes" -gt 0 ] || [ "$hangs" -gt 0 ]; then
        find "$out/default/crashes" "$out/default/hangs" -name 'id:*' 2>/dev/null
        failed=1
    fi
done
exit $failed

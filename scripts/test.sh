#!/usr/bin/env bash
# Runs Ferry's whole test suite: formatting, lints, unit and integration tests.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$FERRY_ROOT"

bash scripts/setup.sh

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

log "cargo test"
# Tests start real ferryd daemons; two test binaries at a time keeps two cores responsive.
cargo test --workspace --all-targets -- --test-threads=4
cargo test --workspace --doc --quiet

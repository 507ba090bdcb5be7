#!/usr/bin/env bash
# CI's fuzzing step (called by scripts/test.sh after the tests): seeds every corpus with
# fuzz/seed-corpus.sh (so the seed script cannot rot), runs every fast fuzz target for a
# short smoke (FUZZ_SMOKE_SECONDS, default 20 s each; FUZZ_JOBS at once, default as many
# as there are cores), then the differential qcow2 oracle over fresh qemu images and their
# mutations.
# Needs the nightly toolchain and cargo-fuzz; installs either if it is missing and
# fails clearly if either cannot be had. Exit: 0 clean, 3 findings, 1 failure.
set -euo pipefail
cd "$(dirname "$0")/.."
island="${1:-target/debug/island}"
[ -x "$island" ] || { echo "fuzz-ci.sh: no island binary at $island (build first)" >&2; exit 1; }
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal ||
        { echo "fuzz-ci.sh: the nightly toolchain (needed by cargo-fuzz) cannot be installed" >&2; exit 1; }
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked ||
        { echo "fuzz-ci.sh: cargo-fuzz is missing and cannot be installed" >&2; exit 1; }
fi
t0=$SECONDS
fuzz/seed-corpus.sh "$island"
# Findings of the smoke (exit 3) do not skip the oracle; a failure (1) fails at once.
smoke=0
fuzz/run-all.sh -j "${FUZZ_JOBS:-$(nproc)}" "${FUZZ_SMOKE_SECONDS:-20}" || smoke=$?
[ "$smoke" = 0 ] || [ "$smoke" = 3 ] || exit 1
echo "fuzz-ci.sh: seeds and fuzz smoke took $((SECONDS - t0)) s"
t1=$SECONDS
oracle=0
scripts/qcow2-oracle.sh "$island" || oracle=$?
[ "$oracle" = 0 ] || [ "$oracle" = 3 ] || exit 1
echo "fuzz-ci.sh: qcow2 oracle took $((SECONDS - t1)) s; fuzz-ci.sh took $((SECONDS - t0)) s"
[ "$smoke" = 0 ] && [ "$oracle" = 0 ] || exit 3

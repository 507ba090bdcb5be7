#!/usr/bin/env bash
# The whole test suite: the README's second command, and what CI (.ci/run) runs.
# Runs the lint and docs gate (rustfmt, clippy, rustdoc) first, then installs what the
# tests need (Debian packages: qemu-utils as the qcow2 oracle, Ceph
# radosgw and OpenStack Swift as real object stores), builds every target, then starts the
# object stores on 127.0.0.1 for the duration of `cargo test` and stops them by PID
# afterwards, also on failure; then the fuzzing step (scripts/fuzz-ci.sh: seed corpora,
# a 20 s smoke of every fast fuzz target, the differential qcow2 oracle; it installs the
# nightly toolchain and cargo-fuzz when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
# The lint and docs gate first, so a finding fails before the installs and the long test
# run. Cargo.toml's [lints] warn on missing docs and unreachable pub items; -D warnings
# makes them errors here.
t0=$SECONDS
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps
# A library user's build (README.md, "Building"): no command line, no HTTP server.
cargo check --locked --lib --no-default-features
echo "test.sh: lint and docs gate took $((SECONDS - t0)) s"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! command -v qemu-img >/dev/null || ! command -v qemu-storage-daemon >/dev/null; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends qemu-utils
fi
scripts/objstore/install.sh

t0=$SECONDS
# Build first (the test profile `cargo test` runs, every target), so the servers are not
# left idle (and their token lifetimes ticking) while the compiler runs.
cargo test --locked --all-targets --no-run
# The fuzz targets (a separate crate, run with `cargo +nightly fuzz run`) must keep compiling.
cargo check --locked --manifest-path fuzz/Cargo.toml
echo "test.sh: build took $((SECONDS - t0)) s"
t1=$SECONDS
scripts/objstore/with-servers.sh cargo test --locked --all-targets
echo "test.sh: tests took $((SECONDS - t1)) s"
t2=$SECONDS
scripts/fuzz-ci.sh target/debug/island
echo "test.sh: fuzzing took $((SECONDS - t2)) s"

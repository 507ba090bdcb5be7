#!/usr/bin/env bash
# The whole test suite, as the README's second command. Installs what the tests need
# (Debian packages for qemu, Ceph radosgw and OpenStack Swift), starts the real object
# stores on 127.0.0.1 for the duration of the run, and stops them by PID afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v qemu-img >/dev/null || need_pkgs+=(qemu-utils)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
fi

export CARGO_TERM_COLOR=never
cargo build --all-targets --locked
exec scripts/objstore/with-servers.sh cargo test --locked --all-targets -- --test-threads=2

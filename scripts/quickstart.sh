#!/usr/bin/env bash
# Island's main job end to end on the embedded default (a local directory repository):
# create a qcow2 volume, write data, back it up, change 1 %, back up incrementally (only
# the changed clusters, found from pointer tables), delete the first snapshot, collect
# garbage, restore what is left (as raw and as qcow2) and verify it bit-exact. Needs nothing beyond Island
# (and coreutils); builds it first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
island="$PWD/target/release/island"

work=$(mktemp -d "${TMPDIR:-/tmp}/island-quickstart.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
size_mib=${QUICKSTART_SIZE_MIB:-256}

step() { printf '\n== %s\n' "$*"; }

step "create a ${size_mib} MiB qcow2 volume and fill half of it"
"$island" image create vol.qcow2 "${size_mib}M"
head -c $((size_mib / 2 * 1048576)) /dev/urandom > fill.bin
"$island" image write vol.qcow2 0 fill.bin
rm fill.bin

step "initialise a repository in ./repo (a local directory)"
"$island" init repo

step "full backup"
"$island" backup --repo repo --volume vol vol.qcow2 --json | tee backup1.json
"$island" image export vol.qcow2 expected1.raw

step "change 1 % of the volume: $((size_mib * 16 / 100)) scattered 64 KiB writes"
writes=$((size_mib * 16 / 100))
for i in $(seq 1 "$writes"); do
    off=$(( (RANDOM * 32768 + RANDOM) % (size_mib * 16) * 65536 ))
    head -c 65536 /dev/urandom | "$island" image write vol.qcow2 "$off" -
done

step "incremental backup (uploads only the changed clusters)"
"$island" backup --repo repo --volume vol vol.qcow2 --json | tee backup2.json
"$island" image export vol.qcow2 expected2.raw

step "snapshots in the repository"
"$island" snapshots --repo repo --volume vol

first=$(sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' backup1.json)
second=$(sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' backup2.json)

step "delete the first snapshot, then collect garbage"
"$island" delete --repo repo --volume vol --snapshot "$first"
"$island" gc --repo repo
echo "(gc reclaims what a delete freed once the delete is older than the 5-minute clock-skew"
echo " allowance of the concurrency protocol, so this early gc may reclaim nothing yet)"

step "restore the second snapshot and verify it bit-exact"
"$island" restore --repo repo --volume vol --snapshot "$second" restored.raw
cmp restored.raw expected2.raw
echo "restored snapshot $second is bit-exact (raw)"

step "restore it again as a qcow2 image and verify that too"
"$island" restore --repo repo --volume vol --snapshot "$second" --format qcow2 restored.qcow2
"$island" image export restored.qcow2 restored2.raw
cmp restored2.raw expected2.raw
echo "restored snapshot $second is bit-exact (qcow2)"

step "how much the incremental backup read and uploaded (JSON from backup --json)"
grep -E '"(incremental|bytes_read|bytes_uploaded|bytes_changed)"' backup2.json

step "check the repository, re-hashing all data"
"$island" check --repo repo --read-data

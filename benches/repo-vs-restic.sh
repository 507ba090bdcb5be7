#!/usr/bin/env bash
# Island repository vs restic vs `cp`+`sync` (issue 3's benchmark).
#
# Builds a test image (first half random, second half zeros) twice: as a raw file (all of
# it allocated; what restic and cp read) and as a qcow2 image with the same contents (what
# Island backs up: its incremental backups read only the clusters changed since the previous
# backup's internal snapshot). Every change is written to both. Then on local directory
# repositories it measures:
#   full backup, 1 % incremental backup (160 scattered 64 KiB writes per GiB), restore,
# for Island and restic, and `cp` of the raw image followed by `sync` as the floor. Every
# step runs with the image in the page cache (a warm-up read precedes it) and starts after a
# `sync`, so no step pays for the previous one's writeback. Restores are
# timed including a final `sync` for every tool, like the `cp` baseline. Then Island takes
# 28 more incremental backups (30 snapshots in all) and restores the oldest and the newest
# snapshot three times each: restore time must not depend on a snapshot's age.
#
# Usage: benches/repo-vs-restic.sh [--size-gib 1|4] [--dir DIR] [--keep]
#   --dir   work directory (default: a new directory under ${TMPDIR:-/tmp})
#   --keep  leave the work directory in place afterwards
# Needs: cargo, restic (apt-get install restic), jq. Uses a release build of `island`.
set -euo pipefail

size_gib=1
workdir=""
keep=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --size-gib) size_gib="$2"; shift 2 ;;
        --dir) workdir="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$size_gib" in 1|4) ;; *) echo "--size-gib must be 1 or 4" >&2; exit 2 ;; esac
for tool in cargo restic jq; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done

root="$(cd "$(dirname "$0")/.." && pwd)"
echo "== building island (release)" >&2
cargo build --release --bin island --manifest-path "$root/Cargo.toml" >&2
target_dir="${CARGO_TARGET_DIR:-$root/target}"
island="$target_dir/release/island"
[[ -x "$island" ]] || { echo "no binary at $island" >&2; exit 1; }

if [[ -z "$workdir" ]]; then
    workdir="$(mktemp -d "${TMPDIR:-/tmp}/island-bench.XXXXXX")"
else
    mkdir -p "$workdir"
fi
cleanup() { if [[ $keep -eq 0 ]]; then rm -rf "$workdir"; fi; }
trap cleanup EXIT
echo "== work directory $workdir" >&2

img="$workdir/image.raw"
qimg="$workdir/image.qcow2"
size=$((size_gib * 1024 * 1024 * 1024))
half_mib=$((size_gib * 512))
export RESTIC_PASSWORD="island-bench"
export RESTIC_CACHE_DIR="$workdir/restic-cache"

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc -l; }
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
pct() { printf '%.1f' "$(echo "100 * $1 / $2" | bc -l)"; }
warm() { cat "$img" "$qimg" >/dev/null; }
files_in() { find "$1" -type f | wc -l; }
bytes_in() { du -sb "$1" | cut -f1; }

echo "== building ${size_gib} GiB test image" >&2
head -c $((half_mib * 1024 * 1024)) /dev/urandom >"$img"
head -c $((half_mib * 1024 * 1024)) /dev/zero >>"$img"
"$island" image import "$img" "$qimg" >&2
sync

# 160 scattered 64 KiB writes of fresh random data per GiB, at 64 KiB-aligned offsets
# (seeded per round, so every run changes the same places).
scatter() {
    local round="$1" n=$((160 * size_gib)) clusters=$((size / 65536)) i off
    RANDOM=$((1000 + round))
    for ((i = 0; i < n; i++)); do
        off=$(( ((RANDOM << 15) | RANDOM) % clusters ))
        head -c 65536 /dev/urandom >"$workdir/block"
        dd if="$workdir/block" of="$img" bs=65536 count=1 seek="$off" conv=notrunc status=none
        "$island" image write "$qimg" $((off * 65536)) "$workdir/block"
    done
    sync
}

irepo="$workdir/island-repo"
rrepo="$workdir/restic-repo"
"$island" init "$irepo" >/dev/null
restic init --repo "$rrepo" --quiet >/dev/null

# island_backup LABEL: runs a backup, records time/bytes/requests in globals.
island_backup() {
    local t0 t1 out
    warm
    sync; t0=$(now)
    out=$("$island" backup --repo "$irepo" --volume bench "$qimg" --json 2>>"$workdir/island-status.log")
    t1=$(now)
    ib_time=$(elapsed "$t0" "$t1")
    ib_id=$(jq -r .id <<<"$out")
    ib_up=$(jq -r .bytes_uploaded <<<"$out")
    ib_req=$(jq -r .requests <<<"$out")
}
restic_backup() {
    local t0 t1 files0 out
    files0=$(files_in "$rrepo")
    warm
    sync; t0=$(now)
    out=$(restic backup --repo "$rrepo" --json "$img" | jq -c 'select(.message_type == "summary")')
    t1=$(now)
    rb_time=$(elapsed "$t0" "$t1")
    rb_up=$(jq -r '.data_added' <<<"$out")
    rb_files=$(( $(files_in "$rrepo") - files0 ))
}

echo "== full backups" >&2
warm
sync; t0=$(now); cp "$img" "$workdir/cp-copy.raw"; sync; t1=$(now)
cp_time=$(elapsed "$t0" "$t1")
rm -f "$workdir/cp-copy.raw"
island_backup; full_i=$ib_time; full_i_up=$ib_up; full_i_req=$ib_req; first_id=$ib_id
restic_backup; full_r=$rb_time; full_r_up=$rb_up; full_r_files=$rb_files

echo "== 1 % incremental backups" >&2
scatter 1
changed=$((160 * size_gib * 65536))
island_backup; inc_i=$ib_time; inc_i_up=$ib_up; inc_i_req=$ib_req; second_id=$ib_id
restic_backup; inc_r=$rb_time; inc_r_up=$rb_up; inc_r_files=$rb_files

echo "== restores" >&2
rm -f "$workdir/restore-island.raw"
sync; t0=$(now)
"$island" restore --repo "$irepo" --volume bench --snapshot "$second_id" "$workdir/restore-island.raw" >/dev/null
sync; t1=$(now)
res_i=$(elapsed "$t0" "$t1")
cmp "$img" "$workdir/restore-island.raw" || { echo "island restore differs from the image" >&2; exit 1; }
rm -f "$workdir/restore-island.raw"
rm -rf "$workdir/restore-restic"
sync; t0=$(now)
restic restore latest --repo "$rrepo" --target "$workdir/restore-restic" --quiet >/dev/null
sync; t1=$(now)
res_r=$(elapsed "$t0" "$t1")
cmp "$img" "$workdir/restore-restic$img" || { echo "restic restore differs from the image" >&2; exit 1; }
rm -rf "$workdir/restore-restic"
sync; t0=$(now); cp "$img" "$workdir/cp-copy.raw"; sync; t1=$(now)
cp_restore=$(elapsed "$t0" "$t1")
rm -f "$workdir/cp-copy.raw"

echo "== 28 more incremental Island backups (30 snapshots)" >&2
last_id=$second_id
for round in $(seq 2 29); do
    scatter "$round"
    island_backup
    last_id=$ib_id
done
cp "$img" "$workdir/newest.raw"

# restore_time ID: median of three restores of ID (each followed by sync).
restore_time() {
    local id="$1" t0 t1 times=()
    for _ in 1 2 3; do
        rm -f "$workdir/age.raw"
        sync; t0=$(now)
        "$island" restore --repo "$irepo" --volume bench --snapshot "$id" "$workdir/age.raw" --json \
            | jq -r .bytes_written >"$workdir/age.bytes"
        sync; t1=$(now)
        times+=("$(elapsed "$t0" "$t1")")
    done
    printf '%s\n' "${times[@]}" | sort -n | sed -n 2p
}
oldest=$(restore_time "$first_id")
oldest_bytes=$(cat "$workdir/age.bytes")
newest=$(restore_time "$last_id")
newest_bytes=$(cat "$workdir/age.bytes")
cmp "$workdir/newest.raw" "$workdir/age.raw" || { echo "newest restore differs from the image" >&2; exit 1; }
rm -f "$workdir/age.raw" "$workdir/newest.raw"

mib() { printf '%.1f' "$(echo "$1 / 1048576" | bc -l)"; }
echo
echo "Island vs restic $(restic version | cut -d' ' -f2) vs cp+sync, ${size_gib} GiB image (half random, half zeros), local directory repositories"
printf '%-28s %10s %10s %10s\n' "" "island s" "restic s" "cp+sync s"
printf '%-28s %10.3f %10.3f %10.3f\n' "full backup" "$full_i" "$full_r" "$cp_time"
printf '%-28s %10.3f %10.3f %10s\n' "1 % incremental backup" "$inc_i" "$inc_r" "-"
printf '%-28s %10.3f %10.3f %10.3f\n' "restore (+sync)" "$res_i" "$res_r" "$cp_restore"
echo
echo "ratios (speed; >1 means Island is faster):"
echo "  full backup:  vs restic $(ratio "$full_r" "$full_i")x   vs cp $(ratio "$cp_time" "$full_i")x   (targets >= 3, >= 0.5)"
echo "  restore:      vs restic $(ratio "$res_r" "$res_i")x   vs cp $(ratio "$cp_restore" "$res_i")x   (target vs cp >= 0.7)"
echo "  incremental:  island $(pct "$inc_i" "$full_i") % of its full backup; restic $(pct "$inc_r" "$full_r") % (target <= 3 % on 4 GiB)"
echo
echo "uploads per backup:"
echo "  island full:         $(mib "$full_i_up") MiB in $full_i_req requests ($(ratio "$full_i_req * 4" "($full_i_up / 1048576)") requests per 4 MiB uploaded)"
echo "  island incremental:  $(mib "$inc_i_up") MiB in $inc_i_req requests for $(mib "$changed") MiB changed ($(ratio "$inc_i_up" "$changed")x)"
echo "  restic full:         $(mib "$full_r_up") MiB added, $full_r_files files created"
echo "  restic incremental:  $(mib "$inc_r_up") MiB added, $inc_r_files files created"
echo "  repository sizes:    island $(mib "$(bytes_in "$irepo")") MiB after 30 snapshots, restic $(mib "$(bytes_in "$rrepo")") MiB after 2"
echo
printf 'restore by snapshot age (median of 3, +sync): oldest %.3f s, newest %.3f s, newest/oldest %s (target 0.9..1.1)\n' "$oldest" "$newest" "$(ratio "$newest" "$oldest")"
# The newest snapshot holds more data than the oldest (the scattered writes also land in
# the zero half), so time per byte restored isolates the effect of age.
printf '  per byte restored: oldest %s MiB, newest %s MiB; newest/oldest time per byte %s\n' \
    "$(mib "$oldest_bytes")" "$(mib "$newest_bytes")" \
    "$(ratio "($newest * $oldest_bytes)" "($oldest * $newest_bytes)")"

#!/usr/bin/env bash
# Backup and restore throughput on the real object stores (issue 5's benchmark): the same
# half-random raw image is backed up to and restored from a local directory repository,
# radosgw (s3://) and Swift (swift://) on loopback, in one run. Each store's time is
# printed as a ratio of the directory run's, with the requests per GiB moved (from the
# `--json` reports: `requests`, `bytes_uploaded`, `bytes_downloaded`). Restores are timed
# including a final `sync` and compared with the image byte for byte.
#
# Usage: benches/objstore-bench.sh [--size-mib N] [--swift-settle SECONDS]
#   --size-mib      image size (default 512; half random, half zeros)
#   --swift-settle  --swift-create-settle for the Swift runs (default 10, the product
#                   default); a backup waits it once (the snapshot root)
#   PROFILE=test    reuse the test build instead of building a release binary
# Starts the servers itself through scripts/objstore/with-servers.sh unless
# ISLAND_TEST_S3_BUCKET and ISLAND_TEST_SWIFT_CONTAINER are already set. Needs jq, bc.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${ISLAND_TEST_S3_BUCKET:-}" || -z "${ISLAND_TEST_SWIFT_CONTAINER:-}" ]]; then
    exec "$root/scripts/objstore/with-servers.sh" "$0" "$@"
fi

size_mib=512
settle=10
while [[ $# -gt 0 ]]; do
    case "$1" in
        --size-mib) size_mib="$2"; shift 2 ;;
        --swift-settle) settle="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[[ "$size_mib" =~ ^[0-9]+$ && $size_mib -ge 2 ]] || { echo "--size-mib must be ≥ 2" >&2; exit 2; }
for tool in jq bc cmp; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done

profile=${PROFILE:-release}
echo "== building island ($profile)" >&2
cargo build --profile "$profile" --bin island --manifest-path "$root/Cargo.toml" >&2
outdir=$profile; [[ "$profile" = test || "$profile" = dev ]] && outdir=debug
island="${CARGO_TARGET_DIR:-$root/target}/$outdir/island"
[[ -x "$island" ]] || { echo "no binary at $island" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/island-objbench.XXXXXX")"
trap 'rm -rf "$work"' EXIT
img="$work/image.raw"
half=$((size_mib / 2))
head -c $((half * 1048576)) /dev/urandom >"$img"
head -c $(((size_mib - half) * 1048576)) /dev/zero >>"$img"
sync

now() { date +%s.%N; }
calc() { echo "$1" | bc -l; }
fmt() { printf "%.${2:-2}f" "$(calc "$1")"; }
run_id="objbench-$(date +%s)-$$"
declare -A t_backup t_restore rq_backup rq_restore up down

for store in dir s3 swift; do
    flags=()
    case $store in
        dir) repo="$work/repo" ;;
        s3) repo="s3://$ISLAND_TEST_S3_BUCKET/$run_id" ;;
        swift) repo="swift://$ISLAND_TEST_SWIFT_CONTAINER/$run_id"
               flags=(--swift-create-settle "$settle") ;;
    esac
    echo "== $store: $repo" >&2
    "$island" init "$repo" "${flags[@]}" >/dev/null
    cat "$img" >/dev/null
    t0=$(now)
    b=$("$island" backup --repo "$repo" --volume bench "$img" --json "${flags[@]}" 2>/dev/null)
    t1=$(now)
    id=$(jq -r .id <<<"$b")
    out="$work/restore-$store.raw"
    t2=$(now)
    r=$("$island" restore --repo "$repo" --volume bench --snapshot "$id" "$out" --json \
        "${flags[@]}" 2>/dev/null)
    sync
    t3=$(now)
    cmp "$img" "$out" || { echo "$store: restored image differs" >&2; exit 1; }
    rm -f "$out"
    t_backup[$store]=$(calc "$t1 - $t0")
    t_restore[$store]=$(calc "$t3 - $t2")
    rq_backup[$store]=$(jq .requests <<<"$b")
    rq_restore[$store]=$(jq .requests <<<"$r")
    up[$store]=$(jq .bytes_uploaded <<<"$b")
    down[$store]=$(jq .bytes_downloaded <<<"$r")
done

gib=1073741824
echo
echo "image ${size_mib} MiB (${half} MiB random), profile $profile, swift settle ${settle}s"
printf '%-6s %9s %8s %7s %11s | %9s %8s %7s %11s\n' store backup MiB/s ratio "req/GiB up" \
    restore MiB/s ratio "req/GiB dn"
for store in dir s3 swift; do
    tb=${t_backup[$store]} tr=${t_restore[$store]}
    printf '%-6s %8ss %8s %7s %11s | %8ss %8s %7s %11s\n' "$store" \
        "$(fmt "$tb")" "$(fmt "$size_mib / $tb" 0)" "$(fmt "$tb / ${t_backup[dir]}")" \
        "$(fmt "${rq_backup[$store]} * $gib / ${up[$store]}" 0)" \
        "$(fmt "$tr")" "$(fmt "$size_mib / $tr" 0)" "$(fmt "$tr / ${t_restore[dir]}")" \
        "$(fmt "${rq_restore[$store]} * $gib / ${down[$store]}" 0)"
done
echo "(ratio = time / directory time; a Swift backup includes one ${settle}s create settle)"

#!/usr/bin/env bash
# gc/delete scaling (issue 4): requests, peak RSS and wall time of `delete` + `gc` against
# the repository's size.
#
# For each size N (chunks of 4 KiB, so N blobs in the repository) it builds a directory
# repository holding one snapshot of an N-chunk random volume ("big"), then a small volume
# ("small", 256 random chunks) backed up twice with different contents. Measured, each as
# its own process under /usr/bin/time -v:
#   delete   the first "small" snapshot (frees 256 chunks + 1 table)
#   gc       reclaims them (the tombstone is back-dated past SKEW with touch, since gc
#            only processes deletes older than its cutoff)
#   gc-compact  after 40 one-chunk backups of a third volume (> 32 segments), the gc that
#            merges every index and refs segment
# Expected: delete and gc requests stay constant whatever N (they grow with what is freed);
# gc-compact grows with N (it rewrites the index: its cost is amortised over 32 commits).
#
# Usage: benches/gc-scale.sh [--sizes "10000 50000 100000"] [--dir DIR] [--bin PATH]
#   --bin   island binary (default: target/release/island if built, else target/debug)
# Needs: cargo (unless --bin), jq, /usr/bin/time.
set -euo pipefail

sizes="10000 50000 100000"
workdir=""
bin=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --sizes) sizes="$2"; shift 2 ;;
        --dir) workdir="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
for tool in jq /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "$bin" ]]; then
    if [[ -x "$root/target/release/island" ]]; then
        bin="$root/target/release/island"
    else
        (cd "$root" && cargo build -q --bin island)
        bin="$root/target/debug/island"
    fi
fi
if [[ -z "$workdir" ]]; then
    workdir="$(mktemp -d "${TMPDIR:-/tmp}/gc-scale.XXXXXX")"
    trap 'rm -rf "$workdir"' EXIT
fi
mkdir -p "$workdir"

# run NAME CMD... : runs CMD under /usr/bin/time -v, prints "requests rss_kib seconds".
run() {
    local name="$1"; shift
    local out="$workdir/$name.json" tv="$workdir/$name.time"
    /usr/bin/time -v -o "$tv" "$@" --json >"$out" 2>"$workdir/$name.err" || {
        echo "$name failed:" >&2; cat "$workdir/$name.err" >&2; exit 1; }
    local req rss secs
    req=$(jq -r '.requests // .report.requests // "?"' "$out")
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tv")
    secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$tv" \
        | awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }')
    echo "$req $rss $secs"
}

printf '%-9s %-8s | %-28s | %-28s | %-28s\n' blobs objects \
    "delete: req / RSS MiB / s" "gc: req / RSS MiB / s" "gc-compact: req / RSS MiB / s"
for n in $sizes; do
    repo="$workdir/repo-$n"
    rm -rf "$repo"
    "$bin" init --chunk-size 4096 "$repo" >/dev/null
    head -c $((n * 4096)) /dev/urandom >"$workdir/big.raw"
    "$bin" backup --repo "$repo" --volume big "$workdir/big.raw" --json >/dev/null 2>&1
    rm -f "$workdir/big.raw"
    ids=()
    for _ in 1 2; do
        head -c $((256 * 4096)) /dev/urandom >"$workdir/small.raw"
        ids+=("$("$bin" backup --repo "$repo" --volume small "$workdir/small.raw" --json 2>/dev/null | jq -r .id)")
    done
    objects=$(find "$repo" -type f | wc -l)
    read -r dreq drss dsec < <(run "delete-$n" "$bin" delete --repo "$repo" --volume small --snapshot "${ids[0]}")
    touch -d '-20 minutes' "$repo/tombstones/small/${ids[0]}"
    read -r greq grss gsec < <(run "gc-$n" "$bin" gc --repo "$repo")
    head -c 4096 /dev/urandom >"$workdir/tiny.raw"
    for i in $(seq 1 40); do
        printf '%08d' "$i" | dd of="$workdir/tiny.raw" conv=notrunc status=none
        "$bin" backup --repo "$repo" --volume tiny "$workdir/tiny.raw" --json >/dev/null 2>&1
    done
    read -r creq crss csec < <(run "gc-compact-$n" "$bin" gc --repo "$repo")
    printf '%-9s %-8s | %6s / %6.1f / %6.2f     | %6s / %6.1f / %6.2f     | %6s / %6.1f / %6.2f\n' \
        "$n" "$objects" "$dreq" "$(echo "$drss / 1024" | bc -l)" "$dsec" \
        "$greq" "$(echo "$grss / 1024" | bc -l)" "$gsec" \
        "$creq" "$(echo "$crss / 1024" | bc -l)" "$csec"
    rm -rf "$repo"
done

#!/usr/bin/env bash
# Seeds every fuzz target's corpus (fuzz/corpus/<target>/) with real objects: backs up a
# small volume twice with the `island` binary into a directory repository, deletes one
# snapshot and runs gc (so roots, tombstones, gc markers, packs, frames, Merkle tables,
# index and refs segments all exist), stores each object with the mode byte its target
# expects in front (see fuzz/fuzz_targets/*.rs), adds well-formed JSON bodies for the
# records a finished run leaves none of (leases, intents, checkpoints, service records),
# then the qcow2 seeds of make-seeds.sh. Fails loudly if any target ends up without seeds.
# Usage: fuzz/seed-corpus.sh PATH_TO_ISLAND_BINARY
set -euo pipefail
island="$(realpath "$1")"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
head -c 16384 /dev/urandom >"$work/vol.raw"
head -c 8192 /dev/zero >>"$work/vol.raw"
# `yes` dies of SIGPIPE when head has enough; that is its normal end, not a failure.
{ yes island || true; } | head -c 8192 >>"$work/vol.raw"
"$island" init "$work/repo" --chunk-size 4K >/dev/null
"$island" backup --repo "$work/repo" --volume vol "$work/vol.raw" >/dev/null
head -c 4096 /dev/urandom | dd of="$work/vol.raw" conv=notrunc status=none
"$island" backup --repo "$work/repo" --volume vol "$work/vol.raw" >/dev/null
first="$(find "$work/repo/snapshots/vol" -type f | sort | head -n 1)"
"$island" delete --repo "$work/repo" --volume vol --snapshot "$(basename "$first")" >/dev/null
"$island" gc --repo "$work/repo" >/dev/null
r="$work/repo"

seed() { # TARGET MODE_BYTE_OCTAL FILE NAME
    mkdir -p "$here/corpus/$1"
    { printf "\\$2"; cat "$3"; } >"$here/corpus/$1/$4"
}
# Mode 4: the target wraps the JSON body in a well-formed envelope itself.
body() { tail -c +13 "$1" | head -c -4 >"$work/body"; echo "$work/body"; }
envelopes() { # TARGET FILE...
    local t="$1" i=0
    shift
    for f in "$@"; do
        seed "$t" 000 "$f" "real$i"
        seed "$t" 004 "$(body "$f")" "json$i"
        i=$((i + 1))
    done
}
json() { # TARGET NAME JSON
    mkdir -p "$here/corpus/$1"
    { printf '\004'; printf '%s' "$3"; } >"$here/corpus/$1/$2"
}
le32() { od -An -tu4 -j "$2" -N4 --endian=little "$1" | tr -d ' '; }

envelopes config "$r/config"
mapfile -t roots < <(find "$r/snapshots" -type f)
envelopes root "${roots[@]}"
mapfile -t tombs < <(find "$r/tombstones" -type f)
envelopes tombstone "${tombs[@]}"
mapfile -t gcs < <(find "$r/gc" -type f)
envelopes gc_marker "${gcs[@]}"
i=0
while read -r f; do
    seed pack 003 "$f" "pack$i"
    # The first frame of the pack: offset 0, length from the first footer entry.
    footer="$(le32 "$f" $(($(stat -c %s "$f") - 12)))"
    len="$(le32 "$f" $((footer + 40)))"
    head -c "$len" "$f" >"$work/frame"
    seed frame 007 "$work/frame" "frame$i"
    i=$((i + 1))
done < <(find "$r/packs" -type f)
while read -r f; do
    seed index_segment 000 "$f" "$(basename "$f")"
done < <(find "$r/index" -type f)
while read -r f; do
    seed refs_segment 000 "$f" "$(basename "$f")"
done < <(find "$r/refs" -type f)

holder=20260101T000000.000000Z-00000000000000c1
zero=0000000000000000000000000000000000000000000000000000000000000000
json lease body "{\"holder\":\"$holder\",\"op\":\"backup\",\"volume\":\"vol\",\"generation\":3}"
json intent body "{\"holder\":\"$holder\",\"op\":\"backup\",\"commit\":\"snapshots/vol/$holder\",\"adopted\":[\"$holder\"],\"adopted_by\":\"$holder\",\"unadopted_from\":2}"
json checkpoint body "{\"holder\":\"$holder\",\"volume\":\"vol\",\"seq\":1,\"job\":{\"size\":32768,\"chunk_size\":4096,\"parent\":null,\"source\":\"t\"},\"next_chunk\":4,\"tree\":{\"top\":[\"$zero\"],\"path\":[{\"level\":0,\"index\":0,\"dirty\":true,\"entries\":[\"$zero\",\"$zero\",\"$zero\",\"$zero\",\"$zero\",\"$zero\",\"$zero\",\"$zero\"]}]},\"segments\":[\"index/$holder-000000\"],\"packs\":[\"$holder-p000000\"],\"adopted\":[],\"counters\":{\"chunks_new\":1,\"chunks_reused\":0,\"chunks_zero\":0,\"chunks_changed\":1,\"bytes_read\":4096,\"logical_delta\":-5,\"new_chunk_bytes\":4096}}"
json volume body "{\"uuid\":\"6f1c0e8e-2b7a-4a53-9d55-6c1f3f0f6d2a\",\"generation\":2,\"owner\":\"o\",\"tag\":\"t\",\"visibility\":\"private\",\"size\":1048576,\"created\":\"2026-01-01T00:00:00Z\",\"user_limit\":1,\"attachments\":[{\"node\":\"n\",\"vm_id\":\"vm\",\"server\":\"s\",\"mode\":\"read-write\",\"hot\":false,\"path\":\"/p\",\"from_snapshot\":null,\"since\":\"2026-01-01T00:00:00Z\",\"target\":\"vda\"}],\"deleted\":false}"
json operation body "{\"id\":\"6f1c0e8e-2b7a-4a53-9d55-6c1f3f0f6d2a\",\"kind\":\"copy\",\"user\":\"u\",\"volume\":\"v\",\"node\":null,\"vm_id\":null,\"device\":null,\"args\":{\"target\":\"t\"},\"state\":\"running\",\"stage\":\"upload\",\"stage_index\":1,\"stage_count\":2,\"percent\":50,\"done\":1,\"total\":2,\"error\":null,\"result\":null,\"created\":\"2026-01-01T00:00:00Z\",\"updated\":\"2026-01-01T00:00:01Z\",\"server\":\"s\",\"heartbeat\":null}"
json last_check body "{\"checked\":\"2026-01-01T00:00:00Z\",\"fixes\":[{\"id\":\"f1\",\"kind\":\"mend\",\"description\":\"d\",\"bytes\":null}],\"damaged\":[\"v/s\"],\"snapshots_checked\":2,\"refcount_mismatches\":0}"
# Merkle tables: a leaf of two ids and a level-1 table of one.
mkdir -p "$here/corpus/merkle_table"
{ printf 'ISTT\001\000\000\000\002\000\000\000'; head -c 64 /dev/urandom; } >"$here/corpus/merkle_table/leaf"
{ printf 'ISTT\001\000\001\000\001\000\000\000'; head -c 32 /dev/urandom; } >"$here/corpus/merkle_table/level1"

"$here/make-seeds.sh"

missing=0
while read -r t; do
    case $t in *_struct) continue ;; esac # structured inputs start from nothing
    if [ -z "$(ls -A "$here/corpus/$t" 2>/dev/null)" ]; then
        echo "seed-corpus.sh: no seeds for $t" >&2
        missing=1
    fi
done <"$here/fast-targets.txt"
[ "$missing" = 0 ]
echo "corpora under $here/corpus"

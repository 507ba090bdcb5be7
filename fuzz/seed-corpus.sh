#!/usr/bin/env bash
# Seeds the repository fuzz targets' corpora with real objects: backs up a small volume
# with the `island` binary into a directory repository and stores each object kind, with
# the mode byte each target expects in front (see fuzz/fuzz_targets/*.rs).
# Usage: fuzz/seed-corpus.sh PATH_TO_ISLAND_BINARY
set -euo pipefail
island="$1"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
head -c 16384 /dev/urandom >"$work/vol.raw"
head -c 8192 /dev/zero >>"$work/vol.raw"
yes island | head -c 8192 >>"$work/vol.raw"
"$island" init "$work/repo" --chunk-size 4K >/dev/null
"$island" backup --repo "$work/repo" --volume vol "$work/vol.raw" >/dev/null
seed() { # TARGET MODE_BYTE_OCTAL FILE NAME
    mkdir -p "$here/corpus/$1"
    { printf "\\$2"; cat "$3"; } >"$here/corpus/$1/$4"
}
seed repo_config 000 "$work/repo/config" config
seed repo_config 002 "$work/repo/config" config-crc-fixed
# Mode 4: the target wraps the JSON body in a well-formed envelope itself.
json_body() { tail -c +13 "$1" | head -c -4 >"$work/body"; echo "$work/body"; }
seed repo_config 004 "$(json_body "$work/repo/config")" config-json
find "$work/repo/snapshots" -type f | while read -r f; do
    seed repo_manifest 000 "$f" root
    seed repo_manifest 004 "$(json_body "$f")" root-json
done
i=0
find "$work/repo/packs" -type f | while read -r f; do
    seed repo_pack 003 "$f" "pack$i"
    seed repo_frame 000 "$f" "frame-from-pack$i"
    i=$((i + 1))
done
find "$work/repo/index" "$work/repo/refs" -type f | while read -r f; do
    seed repo_segment 000 "$f" "$(basename "$(dirname "$f")")-$(basename "$f")"
done
echo "corpora under $here/corpus"

#!/usr/bin/env bash
# Differential qcow2 oracle: opens every image of a corpus with Island and with qemu
# (`qemu-img info/check/convert`, `qemu-io`) and flags where they disagree in a way that
# matters (format-spec/image.md §2 lists what Island refuses on purpose):
#   panic          Island crashed (exit ≥ 101 or a signal) instead of refusing.
#   refuses-clean  qemu-img check finds no corruption, Island refuses to read the image,
#                  and the reason is not a documented unsupported feature.
#   data-mismatch  both export the guest data and the bytes differ.
#   write-damage   Island wrote into the image (`island image write`, at a mapped and at
#                  an unallocated offset) and qemu-img check then finds more corruptions
#                  than before, or leaks in an image that had none, or qemu does not read
#                  back what Island wrote.
# Also counted, not failing: `reads-corrupt` (qemu calls the image corrupt, Island exports
# it: reading through valid pointers of a damaged image is allowed by image.md §2).
#
# The corpus: fresh qemu-img images (cluster sizes, refcount widths, lazy refcounts,
# preallocation, snapshots, zero clusters, bitmaps, and the unsupported features: v2,
# backing file, extended L2, zstd, compressed clusters, external data file), plus
# deterministic mutations of their metadata (bit flips, entries pointing at other
# metadata clusters, zeroed entries, truncations).
#
# Usage: scripts/qcow2-oracle.sh ISLAND_BINARY [MUTANTS_PER_BASE (default 12)] [SEED]
# Known findings (image name and class per line, `#` comments) are listed in
# fuzz/qcow2-known.txt: reported as known, not failing. A known line that no longer
# reproduces is stale and fails the run like a new finding (so a fix cannot leave its
# line behind, and the list always says what is still broken): delete the line.
# Exit 0 agreement, 3 new findings or stale known lines.
set -euo pipefail
island="$(realpath "$1")"
per=${2:-12}
RANDOM=${3:-20261207}
root="$(cd "$(dirname "$0")/.." && pwd)"
known="$root/fuzz/qcow2-known.txt"
work="$(mktemp -d)"
# ORACLE_KEEP=DIR keeps the corpus (to reproduce a finding by hand).
trap '[ -z "${ORACLE_KEEP:-}" ] || cp -r "$corpus" "$ORACLE_KEEP"; rm -rf "$work"' EXIT
corpus="$work/corpus"
mkdir -p "$corpus"

qimg() { qemu-img "$@" >/dev/null 2>&1; }
base() { # NAME SIZE CREATE_OPTS [QEMU_IO_COMMANDS...]
    local f="$corpus/$1.qcow2" size=$2 opts=$3
    shift 3
    qimg create -f qcow2 ${opts:+-o "$opts"} "$f" "$size" || return 0
    local c args=()
    for c in "$@"; do args+=(-c "$c"); done
    [ ${#args[@]} -eq 0 ] || qemu-io -f qcow2 "${args[@]}" "$f" >/dev/null 2>&1 || true
}
data=("write -P 0x41 0 8k" "write -P 0x42 192k 64k" "write -z 256k 4k" "write -P 0x43 900k 4k")
base c512 1M cluster_size=512 "${data[@]}"
base c4k 1M cluster_size=4096 "${data[@]}"
base c64k 2M "" "${data[@]}"
base c2m 4M cluster_size=2M "write -P 0x44 0 64k"
base rc1 1M cluster_size=4096,refcount_bits=1 "${data[@]}"
base rc8 1M cluster_size=4096,refcount_bits=8 "${data[@]}"
base rc64 1M cluster_size=4096,refcount_bits=64 "${data[@]}"
base lazy 1M cluster_size=4096,lazy_refcounts=on "${data[@]}"
base prealloc 1M cluster_size=4096,preallocation=metadata "write -P 0x45 4k 4k"
base big 4G cluster_size=65536 "write -P 0x46 0 4k" "write -P 0x47 4095M 64k"
base snaps 1M cluster_size=4096 "${data[@]}"
qimg snapshot -c one "$corpus/snaps.qcow2"
qemu-io -f qcow2 -c "write -P 0x48 4k 8k" -c "discard 192k 64k" "$corpus/snaps.qcow2" >/dev/null 2>&1
qimg snapshot -c two "$corpus/snaps.qcow2"
base bitmap 1M cluster_size=4096 "${data[@]}"
qimg bitmap --add "$corpus/bitmap.qcow2" b0 || true
base v2 1M compat=0.10 "${data[@]}"
base extl2 1M cluster_size=65536,extended_l2=on "${data[@]}"
base zstd 1M cluster_size=4096,compression_type=zstd "${data[@]}"
qimg create -f raw "$work/backing.raw" 1M
base backing 1M "backing_file=$work/backing.raw,backing_fmt=raw" "${data[@]}"
base datafile 1M "data_file=$work/datafile.raw" "${data[@]}"
qemu-io -f raw -c "write -P 0x49 0 64k" "$work/backing.raw" >/dev/null 2>&1
qimg convert -c -f raw -O qcow2 -o cluster_size=4096 "$work/backing.raw" "$corpus/compressed.qcow2" || true

be() { od -An -tx1 -j "$2" -N "$3" "$1" | tr -d ' \n' | { read -r h; echo $((16#${h:-0})); }; }
poke8() { # FILE OFFSET VALUE: write a big-endian u64
    printf '%016x\n' "$3" | sed 's/../\\x&/g' | { read -r e; printf "$e"; } |
        dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
flip() { # FILE OFFSET: flip one random bit of the byte there
    local b
    b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
    printf "\\x$(printf %02x $(((${b:-0} ^ (1 << (RANDOM % 8))) & 255)))" |
        dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
mutate() { # BASE N: writes corpus/BASE-mN.qcow2
    local src="$corpus/$1.qcow2" f="$corpus/$1-m$2.qcow2"
    cp "$src" "$f"
    local cs=$((1 << $(be "$f" 20 4))) len l1 l2 rt rb st at
    len=$(stat -c %s "$f")
    l1=$(be "$f" 40 8); rt=$(be "$f" 48 8); st=$(be "$f" 64 8)
    l2=$(($(be "$f" "$l1" 8) & 0x00fffffffffffe00))
    rb=$(($(be "$f" "$rt" 8) & ~511))
    local regions=("0 104" "$l1 64" "$rt 64" "$rb 64")
    [ "$l2" = 0 ] || regions+=("$l2 256")
    [ "$st" = 0 ] || regions+=("$st 96")
    read -r at span <<<"${regions[RANDOM % ${#regions[@]}]}"
    local meta=("$l1" "$rt" "$rb" "$l2" "$cs")
    case $((RANDOM % 6)) in
        0 | 1) flip "$f" $((at + RANDOM % span)) ;;
        2) # an entry pointing at another metadata cluster (COPIED set): overlap
            poke8 "$f" $((at + (RANDOM % (span / 8)) * 8)) $((meta[RANDOM % 5] | (1 << 63))) ;;
        3) poke8 "$f" $((at + (RANDOM % (span / 8)) * 8)) 0 ;;
        4) # refcount entry of a metadata cluster dropped to zero: allocation may reuse it
            poke8 "$f" "$rb" 0 ;;
        5) truncate -s $(((RANDOM * 32768 + RANDOM) % len)) "$f" ;;
    esac
}
for b in c512 c4k rc1 rc64 lazy snaps prealloc; do
    [ -e "$corpus/$b.qcow2" ] || continue
    for i in $(seq 1 "$per"); do mutate "$b" "$i"; done
done

# One image: prints "name class detail" lines for findings and notes.
check() {
    local f=$1 name w="$work/w"
    name=$(basename "$f" .qcow2)
    rm -rf "$w" && mkdir -p "$w"
    local qinfo=0 qcheck=0 qconv=0 corr=0 leaks=0
    qimg info -f qcow2 "$f" || qinfo=$?
    qemu-img check -f qcow2 --output=json "$f" >"$w/check.json" 2>/dev/null || qcheck=$?
    corr=$(sed -n 's/.*"corruptions": *\([0-9]*\).*/\1/p' "$w/check.json" | head -n 1)
    leaks=$(sed -n 's/.*"leaks": *\([0-9]*\).*/\1/p' "$w/check.json" | head -n 1)
    qimg convert -f qcow2 -O raw "$f" "$w/q.raw" || qconv=$?
    local iinfo=0 iexp=0
    "$island" image info "$f" --json >/dev/null 2>"$w/info.err" || iinfo=$?
    "$island" image export "$f" "$w/i.raw" >/dev/null 2>"$w/export.err" || iexp=$?
    local rc
    for rc in "$iinfo:info" "$iexp:export"; do
        if [ "${rc%%:*}" -ge 101 ]; then echo "$name panic ${rc#*:} exit ${rc%%:*}: $(tail -n 1 "$w/${rc#*:}.err")"; fi
    done
    local documented=0
    # Documented refusals (image.md §2): unsupported features, and tables past the end of
    # a truncated file (which qemu reads as zeros and may call clean).
    grep -qhE "unsupported qcow2 feature|ends past the end of the file" "$w/info.err" "$w/export.err" &&
        documented=1
    local qclean=0
    [ "$qinfo" = 0 ] && { [ "$qcheck" = 0 ] || [ "$qcheck" = 3 ]; } && qclean=1
    if [ "$qclean" = 1 ] && [ "$documented" = 0 ] && { [ "$iinfo" != 0 ] || [ "$iexp" != 0 ]; }; then
        echo "$name refuses-clean $(tail -n 1 "$w/info.err" "$w/export.err" | grep -v '^==>' | grep . | head -n 1)"
    fi
    if [ "$iexp" = 0 ] && [ "$qconv" = 0 ] && ! cmp -s "$w/i.raw" "$w/q.raw"; then
        echo "$name data-mismatch $(cmp "$w/i.raw" "$w/q.raw" 2>&1 | head -n 1)"
    fi
    if [ "$qcheck" = 2 ] && [ "$iexp" = 0 ]; then echo "$name reads-corrupt qemu-img check: ${corr:-?} corruptions"; fi
    [ "$qinfo" = 0 ] || return 0
    # Writes: 8 KiB over mapped data at 0, and 8 KiB at 512 KiB (unallocated: allocates).
    head -c 8192 /dev/zero | tr '\0' 'Z' >"$w/pat"
    cp "$f" "$w/img.qcow2"
    local iw=0
    for off in 0 524288; do
        "$island" image write "$w/img.qcow2" "$off" "$w/pat" >/dev/null 2>"$w/write.err" || { iw=$?; break; }
    done
    if [ "$iw" -ge 101 ]; then echo "$name panic write exit $iw: $(tail -n 1 "$w/write.err")"; fi
    [ "$iw" = 0 ] || return 0
    local acheck=0 acorr aleaks
    qemu-img check -f qcow2 --output=json "$w/img.qcow2" >"$w/after.json" 2>/dev/null || acheck=$?
    acorr=$(sed -n 's/.*"corruptions": *\([0-9]*\).*/\1/p' "$w/after.json" | head -n 1)
    aleaks=$(sed -n 's/.*"leaks": *\([0-9]*\).*/\1/p' "$w/after.json" | head -n 1)
    if [ "${acorr:-0}" -gt "${corr:-0}" ] || { [ "$acheck" != 0 ] && [ "$acheck" != 2 ] && [ "$acheck" != 3 ]; }; then
        echo "$name write-damage qemu-img check after Island's write: exit $acheck, ${acorr:-?} corruptions (before: exit $qcheck, ${corr:-?})"
    elif [ "${aleaks:-0}" -gt "${leaks:-0}" ] && [ "$qcheck" = 0 ] && [ "$(be "$f" 88 8)" = 0 ]; then
        # (With autoclear bits set, Island's read-write open clears them, as image.md §2
        # says: qemu then counts e.g. a stale bitmap directory's clusters as leaked.)
        echo "$name write-damage qemu-img check after Island's write: ${aleaks} leaked clusters (before: none)"
    fi
    for off in 0 524288; do
        if ! qemu-io -r -f qcow2 -c "read -P 0x5a $off 8k" "$w/img.qcow2" 2>/dev/null | grep -q "^read 8192/8192"; then
            echo "$name write-damage qemu does not read back Island's write at $off"
            break
        fi
    done
}

new=0 known_n=0 notes=0 total=0 stale=0
seen="$work/seen"
: >"$seen"
for f in "$corpus"/*.qcow2; do
    total=$((total + 1))
    while read -r name class detail; do
        if [ "$class" = reads-corrupt ]; then
            notes=$((notes + 1))
            echo "note: $name $class $detail"
        elif grep -qE "^$name +$class( |$)" "$known" 2>/dev/null; then
            known_n=$((known_n + 1))
            echo "$name $class" >>"$seen"
            echo "known: $name $class $detail"
        else
            new=$((new + 1))
            echo "FINDING: $name $class $detail"
        fi
    done < <(check "$f")
done
while read -r name class _; do
    case $name in '' | '#'*) continue ;; esac
    if ! grep -qx "$name $class" "$seen"; then
        stale=$((stale + 1))
        echo "STALE: $name $class is listed in fuzz/qcow2-known.txt but no longer reproduces: delete the line"
    fi
done <"$known"
echo "qcow2-oracle: $total images, $new new findings, $known_n known (fuzz/qcow2-known.txt), $stale stale known lines, $notes notes"
[ "$new" = 0 ] && [ "$stale" = 0 ] || exit 3

#!/usr/bin/env bash
# Island vs `qemu-img bench`: random-like 4 KiB reads and writes on the same fully
# allocated image, same cache mode and queue depth; prints Island's IOPS / qemu's IOPS.
#   SIZE_MIB (default 1024)  image size      COUNT1 / COUNT16  requests at depth 1 / 16
#   PROFILE (default release; "test" reuses the test build's optimized dependencies)
# Depth 1 is O_DIRECT on both sides (Island's --cache direct vs qemu's `-t none`, the
# issue's mode), plus page cache on both sides for reference; depth 16 is page cache with
# qemu on io_uring.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-1024}
COUNT1=${COUNT1:-50000}
COUNT16=${COUNT16:-400000}
BS=4096
STEP=$((BS * 7919))   # odd multiple of the block size: visits every block, scattered

PROFILE=${PROFILE:-release}
cargo build --profile "$PROFILE" --quiet --example image_bench --bin island
target=${CARGO_TARGET_DIR:-target}
outdir=$PROFILE; [ "$PROFILE" = test ] && outdir=debug
bench=$target/$outdir/examples/image_bench
island=$target/$outdir/island

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
img=$dir/bench.qcow2
"$island" image create "$img" "${SIZE_MIB}M" --cluster-size 65536 >/dev/null
qemu-io -f qcow2 -c "write -q -P 0x5a 0 ${SIZE_MIB}M" "$img"

# Each figure is the best of two runs, Island and qemu interleaved, so neither side gets
# a page cache the other one warmed (the machine is shared: expect noise).
qemu_once() { # count args...
  local count=$1; shift
  local secs
  secs=$(qemu-img bench -f qcow2 -c "$count" -s $BS -S $STEP "$@" "$img" | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
  awk -v c="$count" -v s="$secs" 'BEGIN { printf "%.0f", c / s }'
}
island_once() { # mode depth count cache
  "$bench" "$img" "$1" "$2" "$3" $BS $STEP "$4" | awk '{ print $2 }'
}
max() { if [ "$1" -gt "$2" ]; then echo "$1"; else echo "$2"; fi; }
row() { # label mode depth count cache qemu-args...
  local label=$1 mode=$2 depth=$3 count=$4 cache=$5; shift 5
  local i1 q1 i2 q2
  i1=$(island_once "$mode" "$depth" "$count" "$cache"); q1=$(qemu_once "$count" "$@")
  i2=$(island_once "$mode" "$depth" "$count" "$cache"); q2=$(qemu_once "$count" "$@")
  awk -v l="$label" -v i="$(max "$i1" "$i2")" -v q="$(max "$q1" "$q2")" \
    'BEGIN { printf "%-66s island %9d  qemu %9d  ratio %.2f\n", l, i, q, i / q }'
}

echo "image ${SIZE_MIB} MiB, cluster 64 KiB, ${BS}-byte requests, step ${STEP}"
for mode in read write; do
  w=(); [ $mode = write ] && w=(-w)
  row "$mode depth 1: O_DIRECT, island --cache direct vs qemu -t none" $mode 1 "$COUNT1" direct "${w[@]}" -t none -d 1
  row "$mode depth 1: page cache, qemu -t writeback" $mode 1 "$COUNT1" writeback "${w[@]}" -t writeback -d 1
  row "$mode depth 16: page cache, qemu -t writeback -i io_uring" $mode 16 "$COUNT16" writeback "${w[@]}" -t writeback -i io_uring -d 16
done

#!/usr/bin/env bash
# Island vs `qemu-img bench`: random-like 4 KiB reads and writes on the same fully
# allocated image, same cache mode and queue depth; prints Island's IOPS / qemu's IOPS.
#   SIZE_MIB (default 1024)  image size      COUNT1 / COUNT16  requests at depth 1 / 16
# Island has no O_DIRECT path: its depth-1 run uses the page cache and is compared with
# qemu's `-t none` (the issue's mode) and, for reference, qemu's `-t writeback` at depth 1.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-1024}
COUNT1=${COUNT1:-50000}
COUNT16=${COUNT16:-400000}
BS=4096
STEP=$((BS * 7919))   # odd multiple of the block size: visits every block, scattered

cargo build --release --quiet --example image_bench --bin island
target=${CARGO_TARGET_DIR:-target}
bench=$target/release/examples/image_bench
island=$target/release/island

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
img=$dir/bench.qcow2
"$island" image create "$img" "${SIZE_MIB}M" --cluster-size 65536 >/dev/null
qemu-io -f qcow2 -c "write -q -P 0x5a 0 ${SIZE_MIB}M" "$img"

qemu_iops() { # count args...
  local count=$1; shift
  local secs
  secs=$(qemu-img bench -f qcow2 -c "$count" -s $BS -S $STEP "$@" "$img" | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
  awk -v c="$count" -v s="$secs" 'BEGIN { printf "%.0f", c / s }'
}
island_iops() { # mode depth count
  "$bench" "$img" "$1" "$2" "$3" $BS $STEP | awk '{ print $2 }'
}
row() { # label island qemu
  awk -v l="$1" -v i="$2" -v q="$3" 'BEGIN { printf "%-44s island %9d  qemu %9d  ratio %.2f\n", l, i, q, i / q }'
}

echo "image ${SIZE_MIB} MiB, cluster 64 KiB, ${BS}-byte requests, step ${STEP}"
for mode in read write; do
  w=(); [ $mode = write ] && w=(-w)
  i1=$(island_iops $mode 1 "$COUNT1")
  row "$mode depth 1: island page cache vs qemu -t none" "$i1" "$(qemu_iops "$COUNT1" "${w[@]}" -t none -d 1)"
  row "$mode depth 1: island page cache vs qemu -t writeback" "$i1" "$(qemu_iops "$COUNT1" "${w[@]}" -t writeback -d 1)"
  i16=$(island_iops $mode 16 "$COUNT16")
  row "$mode depth 16: page cache, qemu -i io_uring" "$i16" "$(qemu_iops "$COUNT16" "${w[@]}" -t writeback -i io_uring -d 16)"
done

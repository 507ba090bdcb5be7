#!/usr/bin/env bash
# Seeds the qcow2 targets' corpora with small valid images made by qemu (4 KiB clusters
# keep them small): plain, with data, with snapshots, with other refcount widths.
# image_open gets the images, header their first cluster, snapshot_table each image's
# snapshot table (entry count ‖ table), tables a cluster-size selector and its L1 table
# followed by its first L2 table and first refcount block.
set -euo pipefail
cd "$(dirname "$0")"
for t in image_open header snapshot_table tables; do mkdir -p "corpus/$t"; done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
be() { # FILE OFFSET BYTES: big-endian unsigned integer
    od -An -tx1 -j "$2" -N "$3" "$1" | tr -d ' \n' | { read -r h; echo $((16#${h:-0})); }
}
slice() { # FILE OFFSET LEN (dd, not `tail | head`: under pipefail, tail's SIGPIPE fails)
    dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" status=none
}
n=0
for opts in cluster_size=4096 cluster_size=4096,refcount_bits=1 cluster_size=4096,refcount_bits=64 \
            cluster_size=4096,lazy_refcounts=on; do
  for snaps in 0 1 2; do
    f=$tmp/s$n.qcow2
    qemu-img create -q -f qcow2 -o "$opts" "$f" 1M
    qemu-io -f qcow2 -c "write -q -P 0x41 0 8k" -c "write -q -z 64k 4k" "$f"
    case $opts in *refcount_bits=1*) snaps=0 ;; esac   # 1-bit refcounts cannot share
    for s in $(seq 1 $snaps); do
      qemu-img snapshot -c "snap$s" "$f"
      qemu-io -f qcow2 -c "write -q -P 0x4$s $((s * 4096)) 4k" "$f"
    done
    cp "$f" "corpus/image_open/qemu-$n.qcow2"
    head -c 4096 "$f" >"corpus/header/qemu-$n"
    nsnap=$(be "$f" 60 4)
    if [ "$nsnap" -gt 0 ]; then
      { printf "\\x00\\x$(printf %02x "$nsnap")"; slice "$f" "$(be "$f" 64 8)" 4096; } \
        >"corpus/snapshot_table/qemu-$n"
    fi
    l1=$(be "$f" 40 8)
    l2=$(($(be "$f" "$l1" 8) & 0x00fffffffffffe00))
    rt=$(be "$f" 48 8)
    rb=$(be "$f" "$rt" 8)
    { printf '\003'; for at in "$l1" "$l2" "$rb"; do slice "$f" "$at" 4096; done; } \
      >"corpus/tables/qemu-$n"
    n=$((n + 1))
  done
done
echo "$n qcow2 seeds in $(pwd)/corpus"

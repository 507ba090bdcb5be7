#!/usr/bin/env bash
# Seeds the image_open corpus with small valid qcow2 images made by qemu (4 KiB clusters
# keep them small): plain, with data, with snapshots, with other refcount widths.
set -euo pipefail
cd "$(dirname "$0")"
out=corpus/image_open
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
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
    cp "$f" "$out/qemu-$n.qcow2"
    n=$((n + 1))
  done
done
echo "$n seeds in $out"

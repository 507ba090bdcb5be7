//! A structure-aware qcow2 input: the fuzzer picks the pointer tables (L1, L2, snapshot
//! L1s), snapshot entries and refcount width; the builder lays them out per qemu's
//! `docs/interop/qcow2.rst` in a tiny image (512-byte or 4 KiB clusters) with refcounts
//! computed from the references it made, then applies byte edits. So the engine's table
//! decoders (L1/L2 entries, refcount table and blocks, snapshot table) see well-formed
//! images with targeted damage instead of bytes that fail the header check.

use crate::structured::Edits;
use arbitrary::Arbitrary;

/// One L2 entry.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum L2 {
    Unallocated,
    /// Zero flag, no cluster.
    Zero,
    /// Zero flag with a preallocated data cluster.
    ZeroAt(u8),
    /// Data in data cluster `n`, with the COPIED flag as given.
    Data(u8, bool),
    Compressed(u32),
    /// Any value (reserved bits, unaligned, past the end, pointing at metadata).
    Raw(u64),
}

/// One snapshot entry.
#[derive(Arbitrary, Debug)]
pub struct Snap {
    /// L2 table chosen per L1 entry (`None`: no table).
    pub l1: Vec<Option<u8>>,
    pub name: Vec<u8>,
    pub extra: Vec<u8>,
}

/// The image.
#[derive(Arbitrary, Debug)]
pub struct ImageInput {
    pub big_clusters: bool,
    pub refcount_order: u8,
    pub guest_clusters: u16,
    pub l1: Vec<Option<u8>>,
    pub l2s: Vec<Vec<L2>>,
    pub data_clusters: u8,
    pub snapshots: Vec<Snap>,
    /// Refcount deltas applied after counting: (host cluster, delta).
    pub refcount_skew: Vec<(u8, i8)>,
    pub edits: Edits,
}

fn be64(out: &mut [u8], at: usize, v: u64) {
    out[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn be32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

impl ImageInput {
    /// The image bytes.
    pub fn build(&self) -> Vec<u8> {
        let cb: u32 = if self.big_clusters { 12 } else { 9 };
        let cs = 1usize << cb;
        let order = u32::from(self.refcount_order % 7);
        let guest = u64::from(self.guest_clusters % 512 + 1);
        let per_l2 = (cs / 8) as u64;
        let l1_len = guest.div_ceil(per_l2) as usize;
        let l2s: Vec<&Vec<L2>> = self.l2s.iter().take(4).collect();
        let snaps: Vec<&Snap> = self.snapshots.iter().take(3).collect();
        let data_n = usize::from(self.data_clusters % 16);
        // Cluster map: 0 header, 1 reftable, 2 active L1, L2 tables, snapshot L1s,
        // snapshot table, data, then refcount blocks.
        let l2_at = 3;
        let snap_l1_at = l2_at + l2s.len();
        let snap_table_at = snap_l1_at + snaps.len();
        let data_at = snap_table_at + usize::from(!snaps.is_empty());
        let base = data_at + data_n;
        let per_block = (cs * 8) >> order;
        let mut blocks = 1;
        while (base + blocks).div_ceil(per_block) > blocks {
            blocks += 1;
        }
        let total = base + blocks;
        let mut img = vec![0u8; total * cs];
        let mut refs = vec![0i64; total];
        for (c, r) in refs.iter_mut().enumerate().take(data_at) {
            *r = i64::from(!(l2_at..snap_l1_at).contains(&c));
        }
        for r in &mut refs[base..] {
            *r = 1;
        }
        // L2 tables.
        for (t, l2) in l2s.iter().enumerate() {
            for (j, e) in l2.iter().take(cs / 8).enumerate() {
                let data = |n: u8| ((data_at + usize::from(n) % data_n.max(1)) * cs) as u64;
                let v = match *e {
                    L2::Unallocated => 0,
                    L2::Zero => 1,
                    L2::ZeroAt(n) if data_n > 0 => data(n) | 1,
                    L2::Data(n, copied) if data_n > 0 => data(n) | (u64::from(copied) << 63),
                    L2::Compressed(x) => (1 << 62) | u64::from(x),
                    L2::Raw(x) => x,
                    _ => 0,
                };
                if v & (1 << 62) == 0 {
                    let host = (v & 0x00ff_ffff_ffff_fe00) as usize / cs;
                    if host > 0 && host < total && v & 0x00ff_ffff_ffff_fe00 != 0 {
                        refs[host] += 1;
                    }
                }
                be64(&mut img, (l2_at + t) * cs + j * 8, v);
            }
        }
        // L1 tables: active and one per snapshot (a table referenced again is shared).
        let l1_bytes =
            |img: &mut Vec<u8>, refs: &mut Vec<i64>, at: usize, l1: &[Option<u8>], active: bool| {
                for (i, e) in l1.iter().take(l1_len.min(cs / 8)).enumerate() {
                    if let Some(t) = e.filter(|_| !l2s.is_empty()) {
                        let c = l2_at + usize::from(t) % l2s.len();
                        refs[c] += 1;
                        let copied = if active { 1u64 << 63 } else { 0 };
                        be64(img, at * cs + i * 8, (c * cs) as u64 | copied);
                    }
                }
            };
        l1_bytes(&mut img, &mut refs, 2, &self.l1, true);
        for (s, snap) in snaps.iter().enumerate() {
            l1_bytes(&mut img, &mut refs, snap_l1_at + s, &snap.l1, false);
        }
        for r in refs.iter_mut().take(snap_l1_at).skip(l2_at) {
            // An L2 table listed by no L1 still holds its cluster (a leak, not damage).
            *r = (*r).max(1);
        }
        // Snapshot table.
        let mut at = snap_table_at * cs;
        let mut nb_snapshots = 0u32;
        for (s, snap) in snaps.iter().enumerate() {
            let id = (s + 1).to_string();
            let name: Vec<u8> = snap.name.iter().copied().take(16).collect();
            let extra: Vec<u8> = snap.extra.iter().copied().take(32).collect();
            let len = (40 + extra.len() + id.len() + name.len() + 7) & !7;
            if at + len > (snap_table_at + 1) * cs {
                break;
            }
            be64(&mut img, at, ((snap_l1_at + s) * cs) as u64);
            be32(&mut img, at + 8, l1_len as u32);
            img[at + 12..at + 14].copy_from_slice(&(id.len() as u16).to_be_bytes());
            img[at + 14..at + 16].copy_from_slice(&(name.len() as u16).to_be_bytes());
            be32(&mut img, at + 36, extra.len() as u32);
            let mut p = at + 40;
            for part in [&extra[..], id.as_bytes(), &name[..]] {
                img[p..p + part.len()].copy_from_slice(part);
                p += part.len();
            }
            at += len;
            nb_snapshots += 1;
        }
        // Refcounts, skewed as asked.
        for &(c, d) in self.refcount_skew.iter().take(4) {
            let c = usize::from(c) % total;
            refs[c] += i64::from(d);
        }
        let max = if order == 6 {
            u64::MAX
        } else {
            (1u64 << (1 << order)) - 1
        };
        for b in 0..blocks {
            let blk = base + b;
            be64(&mut img, cs + b * 8, (blk * cs) as u64);
            for i in 0..per_block {
                let c = b * per_block + i;
                let Some(&r) = refs.get(c) else { break };
                let v = (r.max(0) as u64).min(max);
                set_refcount(&mut img[blk * cs..(blk + 1) * cs], i, order, v);
            }
        }
        // Header (version 3, 112 bytes, then the end-of-extensions marker).
        be32(&mut img, 0, 0x5146_49fb);
        be32(&mut img, 4, 3);
        be32(&mut img, 20, cb);
        be64(&mut img, 24, guest * cs as u64);
        be32(&mut img, 36, l1_len as u32);
        be64(&mut img, 40, (2 * cs) as u64);
        be64(&mut img, 48, cs as u64);
        be32(&mut img, 56, 1);
        be32(&mut img, 60, nb_snapshots);
        be64(
            &mut img,
            64,
            if snaps.is_empty() {
                0
            } else {
                (snap_table_at * cs) as u64
            },
        );
        be32(&mut img, 96, order);
        be32(&mut img, 100, 112);
        self.edits.apply(&mut img);
        img
    }
}

/// Entry `i` of a refcount block with 2^order-bit entries (big-endian, sub-byte entries
/// packed from the least significant bit, as qemu does).
fn set_refcount(block: &mut [u8], i: usize, order: u32, v: u64) {
    let bits = 1usize << order;
    if bits < 8 {
        let per = 8 / bits;
        let shift = (i % per) * bits;
        block[i / per] |= ((v as u8) & ((1u16 << bits) - 1) as u8) << shift;
    } else {
        let n = bits / 8;
        block[i * n..(i + 1) * n].copy_from_slice(&v.to_be_bytes()[8 - n..]);
    }
}

//! Guest-to-host mapping through the L1 and L2 tables: lookup, and the write-side
//! updates (allocation, copy-on-write of shared clusters and L2 tables, zero flag).
//!
//! QCOW_OFLAG_COPIED (bit 63) is kept exactly as QEMU requires: set on an active L1/L2
//! entry iff the cluster it points at has refcount 1, i.e. may be written in place.

use super::cache::{read_tolerant, Cache, Kind};
use super::error::ImageError;
use super::overlap::Region;
use super::state::State;
use super::types::{GuestCluster, GuestOffset, HostCluster, HostOffset};
use std::path::Path;

/// L1 and L2 entry bit 63, QCOW_OFLAG_COPIED: the table or cluster pointed at has
/// refcount 1 and may be written in place (image.md §1 "Mapping tables").
pub(super) const OFLAG_COPIED: u64 = 1 << 63;
/// L2 entry bit 62: the cluster is compressed (Island refuses to read or write those).
pub(super) const OFLAG_COMPRESSED: u64 = 1 << 62;
/// L2 entry bit 0: the guest cluster reads as zeros (with or without a host cluster).
pub(super) const OFLAG_ZERO: u64 = 1;
/// L1 and L2 entry bits 9–55: host offset of the L2 table or data cluster.
pub(super) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1 entry bits 0–8 and 56–62 are reserved (must be zero).
const L1_RESERVED: u64 = !(OFFSET_MASK | OFLAG_COPIED);
/// Standard L2 entry bits 1–8 and 56–61 are reserved (must be zero).
const L2_RESERVED: u64 = !(OFFSET_MASK | OFLAG_COPIED | OFLAG_COMPRESSED | OFLAG_ZERO);

/// What one L2 entry says about its guest cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// Nothing allocated; reads as zeros (no backing file).
    Unallocated,
    /// Zero flag; `host` is a preallocated cluster still owned by the entry, if any.
    Zero { host: Option<HostOffset> },
    /// Data at `host`; `copied` = may be written in place.
    Data { host: HostOffset, copied: bool },
    /// A zlib-compressed cluster (not supported).
    Compressed,
}

impl Mapping {
    /// Host cluster owned (refcounted) by this entry.
    pub(crate) fn owned(self) -> Option<HostOffset> {
        match self {
            Mapping::Zero { host } => host,
            Mapping::Data { host, .. } => Some(host),
            _ => None,
        }
    }

    pub(crate) fn reads_zero(self) -> bool {
        matches!(self, Mapping::Unallocated | Mapping::Zero { .. })
    }
}

/// Decode an L2 entry, validating reserved bits, alignment and that the cluster lies
/// inside the image (`host_end` = end of the image in bytes).
pub(super) fn classify(
    e: u64,
    cs: u64,
    host_end: u64,
    path: &Path,
    at: u64,
) -> Result<Mapping, ImageError> {
    if e & OFLAG_COMPRESSED != 0 {
        return Ok(Mapping::Compressed);
    }
    let bad = |reason: String| ImageError::Corrupt {
        path: path.to_path_buf(),
        what: "L2 entry",
        offset: at,
        reason,
    };
    if e & L2_RESERVED != 0 {
        return Err(bad(format!("reserved bits set in {e:#x}")));
    }
    let host = e & OFFSET_MASK;
    if host % cs != 0 {
        return Err(bad(format!("host offset {host:#x} not cluster aligned")));
    }
    if host >= host_end {
        return Err(bad(format!(
            "host offset {host:#x} past the end of the image"
        )));
    }
    Ok(if e & OFLAG_ZERO != 0 {
        Mapping::Zero {
            host: (host != 0).then_some(HostOffset(host)),
        }
    } else if host == 0 {
        Mapping::Unallocated
    } else {
        Mapping::Data {
            host: HostOffset(host),
            copied: e & OFLAG_COPIED != 0,
        }
    })
}

/// Validate an L1 entry and return its L2 table offset (0 = none).
pub(super) fn l1_target(
    e: u64,
    cs: u64,
    host_end: u64,
    path: &Path,
    at: u64,
) -> Result<u64, ImageError> {
    let off = e & OFFSET_MASK;
    if e & L1_RESERVED != 0 || off % cs != 0 || off >= host_end {
        return Err(ImageError::Corrupt {
            path: path.to_path_buf(),
            what: "L1 entry",
            offset: at,
            reason: format!("invalid L2 table pointer {e:#x}"),
        });
    }
    Ok(off)
}

/// Raw L2 entry for guest cluster `gc` through `l1` (0 if no L2 table).
pub(super) fn lookup(
    st: &State,
    cache: &mut Cache,
    l1: &[u64],
    l1_offset: u64,
    gc: GuestCluster,
) -> Result<(u64, u64), ImageError> {
    let (file, path, cb) = (&*st.file, &st.path, st.cb);
    let l2_bits = cb - 3;
    let idx = (gc.0 >> l2_bits) as usize;
    let Some(&e) = l1.get(idx) else {
        return Ok((0, 0));
    };
    let l2 = st.l1_target(e, l1_offset + idx as u64 * 8)?;
    if l2 == 0 {
        return Ok((0, 0));
    }
    let j = (gc.0 & ((1 << l2_bits) - 1)) as usize;
    let t = cache.get(file, path, l2, Kind::L2)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(&t[j * 8..j * 8 + 8]);
    Ok((u64::from_be_bytes(a), l2 + j as u64 * 8))
}

impl State {
    /// Mapping of guest cluster `gc` in the active layer.
    pub(crate) fn active_mapping(&self, gc: GuestCluster) -> Result<Mapping, ImageError> {
        let mut cache = self.cache();
        let (e, at) = lookup(self, &mut cache, &self.l1, self.header.l1_table_offset, gc)?;
        self.classify(e, at)
    }

    /// The L2 table for L1 index `i`, made writable in place: allocated if missing,
    /// copied if its L1 entry lacks COPIED (the old table's refcount drop is deferred).
    fn writable_l2(&mut self, i: usize) -> Result<u64, ImageError> {
        let e = self.l1[i];
        let l1_at = self.header.l1_table_offset + i as u64 * 8;
        let old = self.l1_target(e, l1_at)?;
        // COPIED is the authority (as in QEMU): a clear bit means the table may be
        // shared, even where its refcount reads 1 (a damaged refcount, or a crash between
        // a snapshot operation and the COPIED recomputation).
        if old != 0 && e & OFLAG_COPIED != 0 {
            return Ok(old);
        }
        let new = self.alloc(1)?.0 << self.cb;
        self.claim(new, 1, Region::L2)?;
        let mut data = vec![0u8; self.cs as usize].into_boxed_slice();
        if old != 0 {
            let mut cache = self.cache();
            let src = cache.get(&*self.file, &self.path, old, Kind::L2)?;
            data.copy_from_slice(src);
            drop(cache);
            self.copied_entries(&mut data);
        }
        self.cache().insert_new(new, Kind::L2, data);
        self.set_l1(i, new | OFLAG_COPIED);
        if old != 0 {
            self.pending.push(old >> self.cb);
        }
        Ok(new)
    }

    /// COPIED of the entries of an L2 table being copied: kept only where the cluster's
    /// refcount reads 1 (a shared table's entries should all have it clear), never set
    /// where it was clear. So a damaged entry claiming sole ownership of a shared cluster
    /// is copied before a write, and a damaged refcount reading 1 for a shared cluster
    /// does not make it writable in place; entries that were exact stay exact (as in
    /// QEMU, which copies the table as it is).
    fn copied_entries(&self, table: &mut [u8]) {
        for ent in table.chunks_exact_mut(8) {
            if ent[0] & 0x80 == 0 {
                continue;
            }
            let v = u64::from_be_bytes([
                ent[0], ent[1], ent[2], ent[3], ent[4], ent[5], ent[6], ent[7],
            ]);
            let host = v & OFFSET_MASK;
            let sole = v & OFLAG_COMPRESSED == 0
                && host != 0
                && self
                    .refcount(HostCluster(host >> self.cb))
                    .is_ok_and(|r| r == 1);
            if !sole {
                ent[0] &= 0x7f;
            }
        }
    }

    fn set_l1(&mut self, i: usize, v: u64) {
        self.l1[i] = v;
        self.l1_dirty = Some(match self.l1_dirty {
            Some((lo, hi)) => (lo.min(i), hi.max(i + 1)),
            None => (i, i + 1),
        });
    }

    fn set_l2(&mut self, l2: u64, j: usize, v: u64) -> Result<(), ImageError> {
        let mut cache = self.cache();
        let t = cache.get_mut(&*self.file, &self.path, l2, Kind::L2)?;
        t[j * 8..j * 8 + 8].copy_from_slice(&v.to_be_bytes());
        Ok(())
    }

    fn l2_slot(&mut self, gc: GuestCluster) -> Result<(u64, usize, Mapping), ImageError> {
        let l2_bits = self.cb - 3;
        let i = (gc.0 >> l2_bits) as usize;
        let l2 = self.writable_l2(i)?;
        let j = (gc.0 & ((1 << l2_bits) - 1)) as usize;
        let e = {
            let mut cache = self.cache();
            let t = cache.get(&*self.file, &self.path, l2, Kind::L2)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(&t[j * 8..j * 8 + 8]);
            u64::from_be_bytes(a)
        };
        Ok((l2, j, self.classify(e, l2 + j as u64 * 8)?))
    }

    /// Whether guest cluster `gc` can be written in place right now: COPIED on both its
    /// L1 and its L2 entry, as `write_cluster` requires.
    pub(crate) fn in_place_target(
        &self,
        gc: GuestCluster,
    ) -> Result<Option<HostOffset>, ImageError> {
        let i = (gc.0 >> (self.cb - 3)) as usize;
        if self.l1.get(i).is_none_or(|&e| e & OFLAG_COPIED == 0) {
            return Ok(None);
        }
        Ok(match self.active_mapping(gc)? {
            Mapping::Data { host, copied: true } => Some(host),
            _ => None,
        })
    }

    /// Write `data` at byte `in_off` of guest cluster `gc`. New clusters are written in
    /// full (merged with zeros or the copy-on-write source) before the L2 entry changes.
    pub(crate) fn write_cluster(
        &mut self,
        gc: GuestCluster,
        in_off: usize,
        data: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), ImageError> {
        let (l2, j, m) = self.l2_slot(gc)?;
        let source = match m {
            // In place only through COPIED (QEMU's rule); see `writable_l2`.
            Mapping::Data { host, copied: true } => {
                self.write(data, host.0 + in_off as u64, "write data", None)?;
                return Ok(());
            }
            Mapping::Data { host, .. } => Some(host.0),
            Mapping::Compressed => return Err(self.unsupported_compressed(gc)),
            Mapping::Unallocated | Mapping::Zero { .. } => None,
        };
        let new = self.alloc(1)?.0 << self.cb;
        if data.len() as u64 == self.cs {
            self.write(data, new, "write data", None)?;
        } else {
            scratch.clear();
            scratch.resize(self.cs as usize, 0);
            if let Some(src) = source {
                read_tolerant(
                    &*self.file,
                    &self.path,
                    "read data for copy-on-write",
                    src,
                    scratch,
                )?;
            }
            scratch[in_off..in_off + data.len()].copy_from_slice(data);
            self.write(scratch, new, "write data", None)?;
        }
        self.set_l2(l2, j, new | OFLAG_COPIED)?;
        if let Some(old) = m.owned() {
            self.pending.push(old.cluster(self.cb).0);
        }
        Ok(())
    }

    /// The body of [`super::Image::write_zeroes`]: whole clusters get the zero flag,
    /// partial ones explicit zero bytes; ranges without an L2 table are skipped.
    pub(crate) fn zero_range(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        let cs = self.cs;
        let end = offset + len;
        let mut pos = offset;
        let zeros = vec![0u8; cs as usize];
        let mut scratch = Vec::new();
        while pos < end {
            let gc = GuestOffset(pos).cluster(self.cb);
            let in_off = GuestOffset(pos).in_cluster(self.cb);
            let n = (cs - in_off).min(end - pos);
            let span = cs * (cs / 8);
            let l1_idx = (pos / span) as usize;
            if in_off == 0 && self.l1.get(l1_idx).is_none_or(|&e| e & OFFSET_MASK == 0) {
                // No L2 table: the whole range it would map already reads as zeros.
                pos = ((l1_idx as u64 + 1) * span).min(end);
                continue;
            }
            if n == cs {
                self.zero_cluster(gc)?;
            } else if !self.active_mapping(gc)?.reads_zero() {
                self.write_cluster(gc, in_off as usize, &zeros[..n as usize], &mut scratch)?;
                self.data_dirty
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            self.trim()?;
            pos += n;
        }
        Ok(())
    }

    /// Make a whole guest cluster read as zeros with the zero flag, releasing the cluster
    /// it pointed at (deferred until the new entry is durable).
    pub(crate) fn zero_cluster(&mut self, gc: GuestCluster) -> Result<(), ImageError> {
        match self.active_mapping(gc)? {
            Mapping::Unallocated | Mapping::Zero { host: None } => return Ok(()),
            Mapping::Compressed => return Err(self.unsupported_compressed(gc)),
            _ => {}
        }
        let (l2, j, m) = self.l2_slot(gc)?;
        self.set_l2(l2, j, OFLAG_ZERO)?;
        if let Some(old) = m.owned() {
            self.pending.push(old.cluster(self.cb).0);
        }
        Ok(())
    }

    pub(crate) fn unsupported_compressed(&self, gc: GuestCluster) -> ImageError {
        ImageError::Unsupported {
            path: self.path.clone(),
            feature: format!("compressed cluster at guest offset {}", gc.0 << self.cb),
        }
    }

    /// Host clusters reachable from an L1 table (its L2 tables and the clusters their
    /// entries own), fed to `sink` in batches for bulk refcount updates.
    pub(crate) fn walk_tree(
        &mut self,
        l1: &[u64],
        l1_offset: u64,
        mut sink: impl FnMut(&mut State, &mut Vec<u64>) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        let mut batch = Vec::new();
        for (i, &e) in l1.iter().enumerate() {
            let l2 = self.l1_target(e, l1_offset + i as u64 * 8)?;
            if l2 == 0 {
                continue;
            }
            batch.push(l2 >> self.cb);
            {
                let mut cache = self.cache();
                let t = cache.get(&*self.file, &self.path, l2, Kind::L2)?;
                for (j, ent) in t.chunks_exact(8).enumerate() {
                    let v = u64::from_be_bytes([
                        ent[0], ent[1], ent[2], ent[3], ent[4], ent[5], ent[6], ent[7],
                    ]);
                    match self.classify(v, l2 + j as u64 * 8)? {
                        Mapping::Compressed => {
                            return Err(ImageError::Unsupported {
                                path: self.path.clone(),
                                feature: format!(
                                    "compressed cluster (L2 entry at {:#x})",
                                    l2 + j as u64 * 8
                                ),
                            })
                        }
                        m => {
                            if let Some(h) = m.owned() {
                                batch.push(h.cluster(self.cb).0);
                            }
                        }
                    }
                }
            }
            if batch.len() >= super::refcount::BULK_BATCH {
                sink(self, &mut batch)?;
            }
        }
        if !batch.is_empty() {
            sink(self, &mut batch)?;
        }
        Ok(())
    }

    /// Recompute QCOW_OFLAG_COPIED on every active L1 and L2 entry from the refcounts
    /// (after snapshot create/delete/revert changed them).
    pub(crate) fn fix_copied(&mut self) -> Result<(), ImageError> {
        for i in 0..self.l1.len() {
            let e = self.l1[i];
            let l2 = self.l1_target(e, self.header.l1_table_offset + i as u64 * 8)?;
            if l2 == 0 {
                continue;
            }
            let sole = self.refcount(HostCluster(l2 >> self.cb))? == 1;
            let want = if sole { l2 | OFLAG_COPIED } else { l2 };
            if e != want {
                self.set_l1(i, want);
            }
            let entries: Vec<u64> = {
                let mut cache = self.cache();
                let t = cache.get(&*self.file, &self.path, l2, Kind::L2)?;
                t.chunks_exact(8)
                    .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect()
            };
            let mut changes = Vec::new();
            for (j, &v) in entries.iter().enumerate() {
                let Some(h) = self.classify(v, l2 + j as u64 * 8)?.owned() else {
                    continue;
                };
                let copied = sole && self.refcount(h.cluster(self.cb))? == 1;
                let nv = if copied {
                    v | OFLAG_COPIED
                } else {
                    v & !OFLAG_COPIED
                };
                if nv != v {
                    changes.push((j, nv));
                }
            }
            for (j, nv) in changes {
                self.set_l2(l2, j, nv)?;
            }
            if self.cache().over_capacity() {
                self.flush_locked()?;
            }
        }
        Ok(())
    }
}

//! Refcount table and blocks: lookup, increments/decrements, cluster allocation with
//! free-space reuse, and growth of the refcount table.
//!
//! Refcounts are read at any `refcount_order` QEMU writes (1 to 64 bits); Island creates
//! 16-bit refcounts. Every allocation is recorded here (in the write-back cache) before
//! anything points at the cluster; decrements of clusters whose last pointer was removed
//! are queued in `State::pending` and applied only after the pointer removal is durable
//! (see `State::flush_locked`).

use super::cache::{read_cluster, Kind};
use super::error::ImageError;
use super::header::MAX_REFTABLE_BYTES;
use super::overlap::Region;
use super::state::State;
use super::types::HostCluster;

/// Offset bits of a refcount table entry (bits 0-8 are reserved).
pub(super) const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Batch size for bulk refcount updates (bounds memory on multi-TiB images).
pub(super) const BULK_BATCH: usize = 1 << 20;

/// Read entry `i` of a refcount block with 2^order-bit entries.
pub(super) fn get_entry(block: &[u8], i: usize, order: u32) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per = 8 / bits;
            let shift = (i % per) * bits;
            (u64::from(block[i / per]) >> shift) & ((1u64 << bits) - 1)
        }
        3 => u64::from(block[i]),
        4 => u64::from(u16::from_be_bytes([block[2 * i], block[2 * i + 1]])),
        5 => {
            let mut a = [0u8; 4];
            a.copy_from_slice(&block[4 * i..4 * i + 4]);
            u64::from(u32::from_be_bytes(a))
        }
        _ => {
            let mut a = [0u8; 8];
            a.copy_from_slice(&block[8 * i..8 * i + 8]);
            u64::from_be_bytes(a)
        }
    }
}

/// Write entry `i`; `v` must be at most the order's maximum.
pub(super) fn set_entry(block: &mut [u8], i: usize, order: u32, v: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per = 8 / bits;
            let shift = (i % per) * bits;
            let mask = (((1u16 << bits) - 1) << shift) as u8;
            let b = &mut block[i / per];
            *b = (*b & !mask) | (((v as u8) << shift) & mask);
        }
        3 => block[i] = v as u8,
        4 => block[2 * i..2 * i + 2].copy_from_slice(&(v as u16).to_be_bytes()),
        5 => block[4 * i..4 * i + 4].copy_from_slice(&(v as u32).to_be_bytes()),
        _ => block[8 * i..8 * i + 8].copy_from_slice(&v.to_be_bytes()),
    }
}

impl State {
    /// Refcount entries per block.
    pub(crate) fn rc_per_block(&self) -> u64 {
        (self.cs * 8) >> self.header.refcount_order
    }

    pub(crate) fn rc_max(&self) -> u64 {
        if self.header.refcount_order == 6 {
            u64::MAX
        } else {
            (1u64 << (1u32 << self.header.refcount_order)) - 1
        }
    }

    /// Host offset of the refcount block covering `c`, or None if not allocated.
    pub(super) fn block_of(&self, c: HostCluster) -> Result<Option<u64>, ImageError> {
        let idx = c.0 / self.rc_per_block();
        let Some(&e) = self.reftable.get(idx as usize) else {
            return Ok(None);
        };
        let off = e & REFT_OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        let at = self.header.refcount_table_offset + idx * 8;
        if e & !REFT_OFFSET_MASK != 0 || off % self.cs != 0 {
            return Err(self.corrupt(
                "refcount table entry",
                at,
                format!("invalid refcount block offset {e:#x}"),
            ));
        }
        self.check_in_file(off, "refcount table entry", at)?;
        match self.regions.get(off >> self.cb) {
            Some(Region::RefBlock) => Ok(Some(off)),
            other => Err(self.overlap(
                at,
                format!(
                    "refcount table entry points at {}",
                    other.map_or("a cluster not recorded as a refcount block".into(), |r| r
                        .to_string())
                ),
            )),
        }
    }

    /// Current refcount of host cluster `c` (0 if no block covers it).
    pub(crate) fn refcount(&self, c: HostCluster) -> Result<u64, ImageError> {
        let Some(off) = self.block_of(c)? else {
            return Ok(0);
        };
        let i = (c.0 % self.rc_per_block()) as usize;
        let mut cache = self.cache();
        let block = cache.get(&*self.file, &self.path, off, Kind::Refblock)?;
        Ok(get_entry(block, i, self.header.refcount_order))
    }

    /// Add `delta` to the refcount of `c` and return the old count. A cluster reaching 0
    /// is dropped from the cache and the metadata regions and becomes allocatable again.
    pub(crate) fn adjust(&mut self, c: HostCluster, delta: i64) -> Result<u64, ImageError> {
        self.adjust_inner(c, delta, true)
    }

    /// [`State::adjust`]; `release` false only to undo an increment just made, which must
    /// not drop what the cluster held before from the cache or the regions.
    fn adjust_inner(
        &mut self,
        c: HostCluster,
        delta: i64,
        release: bool,
    ) -> Result<u64, ImageError> {
        let Some(off) = self.block_of(c)? else {
            return Err(self.corrupt(
                "refcount",
                c.0 << self.cb,
                "cluster in use but not covered by a refcount block".into(),
            ));
        };
        let i = (c.0 % self.rc_per_block()) as usize;
        let order = self.header.refcount_order;
        let max = self.rc_max();
        let host = c.0 << self.cb;
        let new = {
            let mut cache = self.cache();
            let block = cache.get_mut(&*self.file, &self.path, off, Kind::Refblock)?;
            let old = get_entry(block, i, order);
            let new = if delta >= 0 {
                old.checked_add(delta as u64).filter(|&v| v <= max)
            } else {
                old.checked_sub(delta.unsigned_abs())
            };
            let Some(new) = new else {
                if delta > 0 {
                    return Err(ImageError::Unsupported {
                        path: self.path.clone(),
                        feature: format!(
                            "refcount of cluster at {host:#x} would exceed {max} ({}-bit refcounts); widen with `qemu-img amend -o refcount_bits=16`",
                            1u32 << order
                        ),
                    });
                }
                return Err(self.corrupt(
                    "refcount",
                    host,
                    format!("refcount {old} {delta:+} below zero"),
                ));
            };
            set_entry(block, i, order, new);
            if new == 0 && release {
                cache.forget(host);
            }
            (old, new)
        };
        let (old, new) = new;
        if new == 0 && release {
            self.regions.remove(c.0);
        }
        if new == 0 && c.0 < self.free_hint {
            self.free_hint = c.0;
        }
        Ok(old)
    }

    /// Apply `delta` to every cluster in `clusters` (duplicates count), one refcount block
    /// at a time, all or nothing: on an error the adjustments made are undone (in the
    /// cache) before it is returned. An increment is for a cluster a table references, so
    /// one from 0 is corruption (a referenced cluster the allocator may hand out), refused.
    /// Dirty blocks beyond the cache bound are written out as they go; callers only use
    /// this where that ordering is already safe (increments before the pointers exist,
    /// decrements after their removal is durable).
    pub(crate) fn bulk_adjust(
        &mut self,
        clusters: &mut Vec<u64>,
        delta: i64,
    ) -> Result<(), ImageError> {
        clusters.sort_unstable();
        let per = self.rc_per_block();
        let mut last_block = u64::MAX;
        let mut failed = None;
        let mut done = 0;
        for &c in clusters.iter() {
            if c / per != last_block {
                last_block = c / per;
                if self.cache().over_capacity() {
                    let mut cache = self.cache();
                    let r =
                        cache.write_dirty(&*self.file, &self.path, Kind::Refblock, &self.regions);
                    if let Err(e) = r {
                        failed = Some(e);
                        break;
                    }
                    cache.evict_clean(0);
                }
            }
            match self.adjust(HostCluster(c), delta) {
                Ok(0) if delta > 0 => {
                    done += 1;
                    failed = Some(self.corrupt(
                        "refcount",
                        c << self.cb,
                        "cluster referenced by an L1 or L2 table has refcount 0".into(),
                    ));
                    break;
                }
                Ok(_) => done += 1,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            for &c in clusters[..done].iter().rev() {
                if let Err(u) = self.adjust_inner(HostCluster(c), -delta, false) {
                    tracing::error!(
                        "{}: undoing a refcount change failed: {u}",
                        self.path.display()
                    );
                    break;
                }
            }
            clusters.clear();
            return Err(e);
        }
        clusters.clear();
        Ok(())
    }

    fn is_free(&self, c: u64) -> Result<bool, ImageError> {
        if c == 0 {
            return Ok(false);
        }
        Ok(self.refcount(HostCluster(c))? == 0)
    }

    /// First cluster at or after `from` with refcount 0, scanning a whole refcount block
    /// per cache lookup.
    fn next_free(&self, from: u64) -> Result<u64, ImageError> {
        let per = self.rc_per_block();
        let order = self.header.refcount_order;
        let mut c = from.max(1);
        loop {
            let Some(off) = self.block_of(HostCluster(c))? else {
                return Ok(c);
            };
            let mut cache = self.cache();
            let block = cache.get(&*self.file, &self.path, off, Kind::Refblock)?;
            let base = c - c % per;
            if let Some(i) =
                ((c % per) as usize..per as usize).find(|&i| get_entry(block, i, order) == 0)
            {
                return Ok(base + i as u64);
            }
            c = base + per;
        }
    }

    /// Allocate `n` contiguous clusters (refcount 1 each), reusing freed space first.
    /// The caller must write the clusters in full before anything points at them.
    pub(crate) fn alloc(&mut self, n: u64) -> Result<HostCluster, ImageError> {
        if n == 0 {
            return Ok(HostCluster(0));
        }
        let per = self.rc_per_block();
        'search: loop {
            let mut start = self.next_free(self.free_hint.max(1))?;
            let first_free = start;
            let mut c = start + 1;
            while c < start + n {
                if self.is_free(c)? {
                    c += 1;
                } else {
                    start = self.next_free(c + 1)?;
                    c = start + 1;
                }
            }
            if (start + n) << self.cb > super::header::MAX_HOST_OFFSET {
                return Err(self.corrupt(
                    "image file",
                    start << self.cb,
                    "host offsets exhausted".into(),
                ));
            }
            for c in start..start + n {
                if self.block_of(HostCluster(c))?.is_none() {
                    self.new_refblock(c / per)?;
                    continue 'search;
                }
            }
            if let Some((c, r)) = self.regions.conflict(start, n, None) {
                return Err(self.refuse(self.overlap(
                    c << self.cb,
                    format!(
                        "cluster {c} has refcount 0 but holds {r}: a damaged refcount structure"
                    ),
                )));
            }
            for c in start..start + n {
                self.adjust(HostCluster(c), 1)?;
            }
            self.free_hint = if first_free < start {
                first_free
            } else {
                start + n
            };
            self.host_end = self.host_end.max(start + n);
            self.grown.insert(start.max(self.open_end), start + n);
            return Ok(HostCluster(start));
        }
    }

    /// Create refcount block `b`. All clusters it covers are free (no block ⇒ refcount
    /// 0), so it goes at the first of them and counts itself.
    fn new_refblock(&mut self, b: u64) -> Result<(), ImageError> {
        if b as usize >= self.reftable.len() {
            self.grow_reftable(b)?;
            if self
                .block_of(HostCluster(b * self.rc_per_block()))?
                .is_some()
            {
                return Ok(());
            }
        }
        let p = b * self.rc_per_block();
        if p == 0 {
            return Err(self.corrupt(
                "refcount table",
                self.header.refcount_table_offset,
                "no refcount block covers the header".into(),
            ));
        }
        let mut data = vec![0u8; self.cs as usize].into_boxed_slice();
        set_entry(&mut data, 0, self.header.refcount_order, 1);
        let off = p << self.cb;
        self.claim(off, 1, Region::RefBlock)?;
        self.cache().insert_new(off, Kind::Refblock, data);
        self.reftable[b as usize] = off;
        self.reftable_dirty = true;
        self.host_end = self.host_end.max(p + 1);
        self.grown.insert(p.max(self.open_end), p + 1);
        Ok(())
    }

    /// Replace the refcount table by a larger one covering block index `need`. The new
    /// table and any refcount blocks for its own clusters go past the end of the image;
    /// they are written and synced before the header points at them, and the old table
    /// is released afterwards.
    fn grow_reftable(&mut self, need: u64) -> Result<(), ImageError> {
        let per = self.rc_per_block();
        let entries_per_cluster = self.cs / 8;
        let mut new_entries = (need + 1).max(self.reftable.len() as u64 * 2);
        let s = self.host_end;
        let (tc, blocks) = loop {
            let tc = new_entries.div_ceil(entries_per_cluster);
            let mut k = 0u64;
            let blocks = loop {
                let end = s + tc + k;
                let blocks: Vec<u64> = (s / per..=(end - 1) / per)
                    .filter(|&b| {
                        self.reftable
                            .get(b as usize)
                            .is_none_or(|&e| e & REFT_OFFSET_MASK == 0)
                    })
                    .collect();
                if blocks.len() as u64 == k {
                    break blocks;
                }
                k = blocks.len() as u64;
            };
            let max_block = blocks.last().copied().unwrap_or(0).max(need);
            if max_block < tc * entries_per_cluster {
                break (tc, blocks);
            }
            new_entries = max_block + 1;
        };
        if tc * self.cs > MAX_REFTABLE_BYTES {
            return Err(ImageError::InvalidArgument {
                path: self.path.clone(),
                reason: "image too large: refcount table would exceed 8 MiB".into(),
            });
        }
        let k = blocks.len() as u64;
        let region = s..s + tc + k;
        self.claim(s << self.cb, tc, Region::RefTable)?;
        self.claim((s + tc) << self.cb, k, Region::RefBlock)?;
        let mut table = self.reftable.clone();
        table.resize((tc * entries_per_cluster) as usize, 0);
        let order = self.header.refcount_order;
        for (n, &b) in blocks.iter().enumerate() {
            let at = s + tc + n as u64;
            table[b as usize] = at << self.cb;
            let mut data = vec![0u8; self.cs as usize];
            for c in region.clone().filter(|c| c / per == b) {
                set_entry(&mut data, (c % per) as usize, order, 1);
            }
            self.write(
                &data,
                at << self.cb,
                "write refcount block",
                Some(Region::RefBlock),
            )?;
        }
        // Region clusters covered by existing blocks: count them there.
        let old_table = std::mem::replace(&mut self.reftable, table);
        self.host_end = self.host_end.max(region.end);
        self.grown
            .insert(region.start.max(self.open_end), region.end);
        for c in region.clone() {
            if !blocks.contains(&(c / per)) {
                self.adjust(HostCluster(c), 1)?;
            }
        }
        {
            let mut cache = self.cache();
            cache.write_dirty(&*self.file, &self.path, Kind::Refblock, &self.regions)?;
        }
        let mut bytes = Vec::with_capacity((tc * self.cs) as usize);
        for e in &self.reftable {
            bytes.extend_from_slice(&e.to_be_bytes());
        }
        self.write(
            &bytes,
            s << self.cb,
            "write refcount table",
            Some(Region::RefTable),
        )?;
        self.sync()?;
        let old_off = self.header.refcount_table_offset;
        let old_clusters = u64::from(self.header.refcount_table_clusters);
        self.header.refcount_table_offset = s << self.cb;
        self.header.refcount_table_clusters = tc as u32;
        self.write_header()?;
        self.reftable_dirty = false;
        let first = old_off >> self.cb;
        self.pending.extend(first..first + old_clusters);
        drop(old_table);
        Ok(())
    }

    /// Load the refcount table from the file.
    pub(crate) fn load_reftable(&mut self) -> Result<(), ImageError> {
        let bytes = u64::from(self.header.refcount_table_clusters) * self.cs;
        let mut buf = vec![0u8; bytes as usize];
        read_cluster(
            &*self.file,
            &self.path,
            "read refcount table",
            self.header.refcount_table_offset,
            &mut buf,
        )?;
        self.reftable = buf
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        for (i, &e) in self.reftable.iter().enumerate() {
            let off = e & REFT_OFFSET_MASK;
            if e & !REFT_OFFSET_MASK != 0
                || off % self.cs != 0
                || (off != 0 && off >= self.host_end_bytes())
            {
                return Err(self.corrupt(
                    "refcount table entry",
                    self.header.refcount_table_offset + i as u64 * 8,
                    format!("invalid refcount block offset {e:#x}"),
                ));
            }
        }
        Ok(())
    }

    /// Write the refcount table if an entry changed (new refcount block). Blocks are
    /// written and synced before this, so the table never points at unwritten blocks.
    pub(crate) fn write_reftable_if_dirty(&mut self) -> Result<bool, ImageError> {
        if !self.reftable_dirty {
            return Ok(false);
        }
        let mut bytes = Vec::with_capacity(self.reftable.len() * 8);
        for e in &self.reftable {
            bytes.extend_from_slice(&e.to_be_bytes());
        }
        self.write(
            &bytes,
            self.header.refcount_table_offset,
            "write refcount table",
            Some(Region::RefTable),
        )?;
        self.reftable_dirty = false;
        Ok(true)
    }

    /// Number of host clusters with a nonzero refcount.
    pub(crate) fn count_allocated(&self) -> Result<u64, ImageError> {
        let per = self.rc_per_block() as usize;
        let mut n = 0;
        for idx in 0..self.reftable.len() {
            let Some(off) = self.block_of(HostCluster(idx as u64 * per as u64))? else {
                continue;
            };
            let mut cache = self.cache();
            let block = cache.get(&*self.file, &self.path, off, Kind::Refblock)?;
            n += (0..per)
                .filter(|&i| get_entry(block, i, self.header.refcount_order) != 0)
                .count() as u64;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_every_order() {
        for order in 0..=6u32 {
            let bits = 1u32 << order;
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let mut block = vec![0u8; 4096];
            let n = 4096 * 8 / bits as usize;
            for i in 0..n {
                set_entry(&mut block, i, order, (i as u64 * 7) & max);
            }
            for i in 0..n {
                assert_eq!(
                    get_entry(&block, i, order),
                    (i as u64 * 7) & max,
                    "order {order} entry {i}"
                );
            }
        }
    }

    #[test]
    fn sub_byte_layout_matches_qemu() {
        // QEMU stores sub-byte refcounts least significant bits first.
        let mut block = vec![0u8; 1];
        set_entry(&mut block, 0, 0, 1);
        set_entry(&mut block, 3, 0, 1);
        assert_eq!(block[0], 0b0000_1001);
        let mut block = vec![0u8; 1];
        set_entry(&mut block, 1, 1, 3);
        assert_eq!(block[0], 0b0000_1100);
        let mut block = vec![0u8; 2];
        set_entry(&mut block, 0, 4, 0x1234);
        assert_eq!(block, vec![0x12, 0x34]);
    }
}

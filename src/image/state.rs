//! `State`: the metadata of an open image and the ordered flush that writes it.

use super::cache::{read_cluster, Cache, Kind};
use super::error::ImageError;
use super::file::ImageFile;
use super::header::{self, Header};
use super::mapping::OFLAG_COPIED;
use super::overlap::{Grown, Region, Regions};
use super::snapshot::{self, SnapshotEntry};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// All metadata of an open image. Guarded by the `Image`'s RwLock: readers share it,
/// every metadata change holds it exclusively.
pub(crate) struct State {
    pub file: Arc<dyn ImageFile>,
    pub path: PathBuf,
    pub header: Header,
    pub cb: u32,
    pub cs: u64,
    /// Active L1 table (big-endian values decoded), `header.l1_size` entries.
    pub l1: Vec<u64>,
    /// Dirty L1 index range [lo, hi) not yet written.
    pub l1_dirty: Option<(usize, usize)>,
    /// Entries that fit in the clusters allocated to the active L1 table.
    pub l1_capacity: usize,
    pub reftable: Vec<u64>,
    pub reftable_dirty: bool,
    pub snapshots: Vec<SnapshotEntry>,
    pub cache: Mutex<Cache>,
    /// Host clusters whose last pointer was removed; decremented only once the removal is
    /// durable (step 4 of the flush).
    pub pending: Vec<u64>,
    /// Lowest host cluster that may be free.
    pub free_hint: u64,
    /// One past the highest host cluster in use or in the file.
    pub host_end: u64,
    /// Guest data was written since the last sync.
    pub data_dirty: AtomicBool,
    /// Every metadata cluster, for the overlap checks (see `overlap.rs`).
    pub regions: Regions,
    /// Clusters in the file when it was opened: a pointer at or past this is valid only
    /// if this open allocated the cluster (`grown`).
    pub open_end: u64,
    pub grown: Grown,
}

impl State {
    pub(crate) fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn host_end_bytes(&self) -> u64 {
        self.host_end << self.cb
    }

    pub(crate) fn corrupt(&self, what: &'static str, offset: u64, reason: String) -> ImageError {
        ImageError::Corrupt {
            path: self.path.clone(),
            what,
            offset,
            reason,
        }
    }

    /// Write `buf` at `offset`, which must be all `region` (metadata) or, for `None`, no
    /// metadata at all (guest data): the overlap check every host write passes.
    pub(crate) fn write(
        &self,
        buf: &[u8],
        offset: u64,
        op: &'static str,
        region: Option<Region>,
    ) -> Result<(), ImageError> {
        self.check_write(offset, buf.len() as u64, region)?;
        self.file
            .write_at(buf, offset)
            .map_err(|source| ImageError::Io {
                path: self.path.clone(),
                op,
                offset,
                source,
            })
    }

    pub(crate) fn sync(&self) -> Result<(), ImageError> {
        self.file.sync().map_err(|source| ImageError::Io {
            path: self.path.clone(),
            op: "sync",
            offset: 0,
            source,
        })
    }

    /// Write the header fields and sync.
    pub(crate) fn write_header(&mut self) -> Result<(), ImageError> {
        let bytes = self.header.encode();
        self.write(&bytes, 0, "write header", Some(Region::Header))?;
        self.sync()
    }

    /// The ordered metadata flush. Crash ordering (format-spec/image.md, "Write ordering"):
    ///  1. refcount blocks (increments only: decrements wait in `pending`) → sync; this
    ///     also makes guest data written so far durable. Then the refcount table if a
    ///     new block was added → sync (the table never points at an unwritten block).
    ///  2. dirty L2 tables → sync (they point only at clusters made durable in 1).
    ///  3. dirty L1 entries → sync (they point only at L2 tables made durable in 2).
    ///  4. pending decrements (clusters unlinked in 2–3) → refcount blocks → sync. Only
    ///     now can those clusters be reused, so no durable pointer ever references a
    ///     cluster that may be overwritten.
    ///
    /// A crash between steps leaves only leaked clusters.
    pub(crate) fn flush_locked(&mut self) -> Result<(), ImageError> {
        let wrote = {
            let mut cache = self.cache();
            cache.write_dirty(&*self.file, &self.path, Kind::Refblock, &self.regions)?
        };
        let data = self.data_dirty.swap(false, Ordering::AcqRel);
        if wrote || data {
            self.sync()?;
        }
        if self.write_reftable_if_dirty()? {
            self.sync()?;
        }
        let wrote = {
            let mut cache = self.cache();
            cache.write_dirty(&*self.file, &self.path, Kind::L2, &self.regions)?
        };
        if wrote {
            self.sync()?;
        }
        if let Some((lo, hi)) = self.l1_dirty.take() {
            let mut bytes = Vec::with_capacity((hi - lo) * 8);
            for e in &self.l1[lo..hi] {
                bytes.extend_from_slice(&e.to_be_bytes());
            }
            self.write(
                &bytes,
                self.header.l1_table_offset + lo as u64 * 8,
                "write L1 table",
                Some(Region::ActiveL1),
            )?;
            self.sync()?;
        }
        if !self.pending.is_empty() {
            let mut pending = std::mem::take(&mut self.pending);
            self.bulk_adjust(&mut pending, -1)?;
            let mut cache = self.cache();
            cache.write_dirty(&*self.file, &self.path, Kind::Refblock, &self.regions)?;
            drop(cache);
            self.sync()?;
        }
        let mut cache = self.cache();
        if cache.over_capacity() {
            cache.evict_clean(0);
        }
        Ok(())
    }

    /// Make room in the cache after a metadata change, flushing if dirty entries are what
    /// fills it.
    pub(crate) fn trim(&mut self) -> Result<(), ImageError> {
        if self.cache().over_capacity() || self.pending.len() > 65536 {
            self.flush_locked()?;
        }
        Ok(())
    }

    /// L1 entries needed to map `size` guest bytes.
    pub(crate) fn l1_entries_for(&self, size: u64) -> u64 {
        size.div_ceil(self.cs).div_ceil(self.cs / 8)
    }

    /// Set the active L1 to `entries` (len ≥ current) and header size; relocates the
    /// table to new clusters when it outgrows its clusters. New L1 contents are durable
    /// before the header points at them; the old table is released afterwards.
    pub(crate) fn install_l1(&mut self, entries: Vec<u64>, size: u64) -> Result<(), ImageError> {
        if entries.len() as u64 * 8 > header::MAX_L1_BYTES {
            return Err(ImageError::InvalidArgument {
                path: self.path.clone(),
                reason: format!("size {size} needs an L1 table over QEMU's 32 MiB limit"),
            });
        }
        self.flush_locked()?;
        let mut bytes = Vec::with_capacity(entries.len() * 8);
        for e in &entries {
            bytes.extend_from_slice(&e.to_be_bytes());
        }
        let old_off = self.header.l1_table_offset;
        let old_clusters = (self.l1_capacity as u64 * 8).div_ceil(self.cs);
        if entries.len() <= self.l1_capacity {
            if !bytes.is_empty() {
                self.write(&bytes, old_off, "write L1 table", Some(Region::ActiveL1))?;
                self.sync()?;
            }
            self.l1 = entries;
            self.header.l1_size = self.l1.len() as u32;
            self.header.size = size;
            return self.write_header();
        }
        let n = (bytes.len() as u64).div_ceil(self.cs);
        let start = self.alloc(n)?.0 << self.cb;
        self.claim(start, n, Region::ActiveL1)?;
        bytes.resize((n * self.cs) as usize, 0);
        self.write(&bytes, start, "write L1 table", Some(Region::ActiveL1))?;
        self.flush_locked()?;
        self.l1 = entries;
        self.l1_capacity = (n * self.cs / 8) as usize;
        self.header.l1_table_offset = start;
        self.header.l1_size = self.l1.len() as u32;
        self.header.size = size;
        self.write_header()?;
        if old_off != 0 {
            let first = old_off >> self.cb;
            self.pending.extend(first..first + old_clusters);
        }
        self.flush_locked()
    }

    /// Replace the snapshot table: new table in new clusters (durable), then the header,
    /// then release the old table.
    pub(crate) fn write_snapshot_table(
        &mut self,
        entries: Vec<SnapshotEntry>,
    ) -> Result<(), ImageError> {
        self.flush_locked()?;
        let old_off = self.header.snapshots_offset;
        let old_clusters =
            (snapshot::serialize_table(&self.snapshots).len() as u64).div_ceil(self.cs);
        let mut bytes = snapshot::serialize_table(&entries);
        let new_off = if entries.is_empty() {
            0
        } else {
            let n = (bytes.len() as u64).div_ceil(self.cs);
            let start = self.alloc(n)?.0 << self.cb;
            bytes.resize((n * self.cs) as usize, 0);
            let written = self
                .claim(start, n, Region::SnapTable)
                .and_then(|_| {
                    self.write(
                        &bytes,
                        start,
                        "write snapshot table",
                        Some(Region::SnapTable),
                    )
                })
                .and_then(|_| self.flush_locked());
            if let Err(e) = written {
                // Nothing points at the new table yet: its clusters are free again.
                for c in start >> self.cb..(start >> self.cb) + n {
                    if let Err(u) = self.adjust(super::types::HostCluster(c), -1) {
                        tracing::error!(
                            "{}: releasing an unused snapshot table: {u}",
                            self.path.display()
                        );
                        break;
                    }
                }
                return Err(e);
            }
            start
        };
        self.header.nb_snapshots = entries.len() as u32;
        self.header.snapshots_offset = new_off;
        self.write_header()?;
        self.snapshots = entries;
        if old_off != 0 && old_clusters > 0 {
            let first = old_off >> self.cb;
            self.pending.extend(first..first + old_clusters);
        }
        self.flush_locked()
    }

    /// Read an L1 table stored at `offset`.
    pub(crate) fn read_l1(&self, offset: u64, entries: u32) -> Result<Vec<u64>, ImageError> {
        let mut buf = vec![0u8; entries as usize * 8];
        if !buf.is_empty() {
            read_cluster(&*self.file, &self.path, "read L1 table", offset, &mut buf)?;
        }
        Ok(buf
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }
}

/// Clear the COPIED flag for writing a snapshot's copy of the L1 table.
pub(super) fn strip_copied(l1: &[u64]) -> Vec<u64> {
    l1.iter().map(|e| e & !OFLAG_COPIED).collect()
}

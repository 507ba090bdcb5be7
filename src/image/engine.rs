//! [`Image`]: the open qcow2 image, its metadata state and the ordered flush.

use super::cache::{read_cluster, read_tolerant, Cache};
use super::error::ImageError;
use super::file::ImageFile;
use super::header::{self, Header};
use super::mapping::Mapping;
use super::snapshot::{self, SnapshotEntry};
use super::state::State;
use super::types::{GuestCluster, GuestOffset};
use super::{CacheMode, ChangedRange, CreateOptions, Extent, ImageInfo, OpenMode, SnapshotInfo};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Metadata cache budget (L2 tables + refcount blocks).
const CACHE_BYTES: usize = 32 << 20;
/// Smallest and largest cluster size Island creates.
const MIN_CREATE_CLUSTER: u32 = 4096;
const MAX_CREATE_CLUSTER: u32 = 2 << 20;

/// A cached snapshot L1 table: (offset, entries, table).
type SnapL1 = (u64, u32, Arc<Vec<u64>>);

/// An open qcow2 image. `Send + Sync`: reads run concurrently under a shared lock;
/// metadata changes take it exclusively.
pub struct Image {
    state: RwLock<State>,
    /// Recently used snapshot L1 tables, keyed by (offset, size); cleared whenever the
    /// snapshot table changes.
    snap_l1: Mutex<Vec<SnapL1>>,
    writable: bool,
    path: PathBuf,
    /// The locks of the image's open file description (None for storage the caller
    /// provides), released explicitly when the image is dropped, after its flush: closing
    /// the descriptor alone leaves them held while a child forked by another thread still
    /// shares the description (see `lock::Held`).
    lock: Option<super::lock::Held>,
}

fn io_err<'a>(
    path: &'a Path,
    op: &'static str,
    offset: u64,
) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        op,
        offset,
        source,
    }
}

/// Open the image file for `cache`: O_DIRECT for [`CacheMode::Direct`].
fn open_file(path: &Path, write: bool, create: bool, cache: CacheMode) -> Result<File, ImageError> {
    if cache == CacheMode::Direct {
        return super::direct::open_direct(path, write, create);
    }
    OpenOptions::new()
        .read(true)
        .write(write)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(io_err(path, if create { "create" } else { "open" }, 0))
}

/// The engine's storage over a locked file.
fn storage(file: File, path: &Path, cache: CacheMode) -> Result<Arc<dyn ImageFile>, ImageError> {
    Ok(match cache {
        CacheMode::Writeback => Arc::new(file),
        CacheMode::Direct => Arc::new(super::direct::DirectFile::new(file, path)?),
    })
}

fn now() -> (u32, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (
        d.as_secs().min(u64::from(u32::MAX)) as u32,
        d.subsec_nanos(),
    )
}

impl Image {
    /// Create a new image at `path` (replacing any file there) and open it read-write.
    pub fn create(path: impl AsRef<Path>, opts: &CreateOptions) -> Result<Image, ImageError> {
        Image::create_with(path, opts, CacheMode::Writeback)
    }

    /// [`Image::create`] with a cache mode (O_DIRECT or the page cache).
    pub fn create_with(
        path: impl AsRef<Path>,
        opts: &CreateOptions,
        cache: CacheMode,
    ) -> Result<Image, ImageError> {
        let path = path.as_ref();
        let file = open_file(path, true, true, cache)?;
        Image::create_locked(file, path, opts, cache)
    }

    /// [`Image::create_with`] on the file it opened: lock, then lay out the image.
    pub(super) fn create_locked(
        file: File,
        path: &Path,
        opts: &CreateOptions,
        cache: CacheMode,
    ) -> Result<Image, ImageError> {
        // Dropped on any failure below: the locks are released, not left to the file.
        let lock = super::lock::lock(&file, path, OpenMode::ReadWrite)?;
        file.set_len(0).map_err(io_err(path, "truncate", 0))?;
        let mut img = Image::create_on(storage(file, path, cache)?, &path.to_string_lossy(), opts)?;
        img.lock = Some(lock);
        Ok(img)
    }

    /// Open an existing image at `path`, taking QEMU-compatible locks for `mode`.
    pub fn open(path: impl AsRef<Path>, mode: OpenMode) -> Result<Image, ImageError> {
        Image::open_with(path, mode, CacheMode::Writeback)
    }

    /// [`Image::open`] with a cache mode (O_DIRECT or the page cache).
    pub fn open_with(
        path: impl AsRef<Path>,
        mode: OpenMode,
        cache: CacheMode,
    ) -> Result<Image, ImageError> {
        let path = path.as_ref();
        let file = open_file(path, mode == OpenMode::ReadWrite, false, cache)?;
        Image::open_locked(file, path, mode, cache)
    }

    /// [`Image::open_with`] on the file it opened: lock, then read the image.
    pub(super) fn open_locked(
        file: File,
        path: &Path,
        mode: OpenMode,
        cache: CacheMode,
    ) -> Result<Image, ImageError> {
        let writable = mode == OpenMode::ReadWrite;
        // Dropped on any failure below: the locks are released, not left to the file.
        let lock = super::lock::lock(&file, path, mode)?;
        let file = storage(file, path, cache)?;
        let name = path.to_string_lossy();
        let mut img = if mode == OpenMode::ReadOnlyShared {
            Image::open_shared(file, &name)?
        } else {
            Image::open_inner(file, &name, writable, true)?
        };
        img.lock = Some(lock);
        Ok(img)
    }

    /// Create on caller-provided storage (no locking). Layout: header, refcount table,
    /// refcount block 0 in clusters 0-2, written before the header; the L1 table is then
    /// allocated by growing the empty image to `opts.size`.
    pub fn create_on(
        file: Arc<dyn ImageFile>,
        name: &str,
        opts: &CreateOptions,
    ) -> Result<Image, ImageError> {
        let path = PathBuf::from(name);
        let cs = opts.cluster_size;
        if !cs.is_power_of_two() || !(MIN_CREATE_CLUSTER..=MAX_CREATE_CLUSTER).contains(&cs) {
            return Err(ImageError::InvalidArgument {
                path,
                reason: format!("cluster size {cs} must be a power of two from 4 KiB to 2 MiB"),
            });
        }
        let cb = cs.trailing_zeros();
        let cs = u64::from(cs);
        let size = round_size(&path, opts.size)?;
        let l1_bytes = size.div_ceil(cs).div_ceil(cs / 8).saturating_mul(8);
        if l1_bytes > header::MAX_L1_BYTES {
            return Err(ImageError::InvalidArgument {
                path,
                reason: format!(
                    "size {} too large for cluster size {cs} (L1 table over 32 MiB)",
                    opts.size
                ),
            });
        }
        file.set_len(0).map_err(io_err(&path, "truncate", 0))?;
        let mut refblock = vec![0u8; cs as usize];
        for i in 0..3 {
            super::refcount::set_entry(&mut refblock, i, 4, 1);
        }
        file.write_at(&refblock, 2 * cs)
            .map_err(io_err(&path, "write refcount block", 2 * cs))?;
        let mut reftable = vec![0u8; cs as usize];
        reftable[0..8].copy_from_slice(&(2 * cs).to_be_bytes());
        file.write_at(&reftable, cs)
            .map_err(io_err(&path, "write refcount table", cs))?;
        file.sync().map_err(io_err(&path, "sync", 0))?;
        let mut h = Header::new(cb, cs);
        let mut first = h.encode();
        first.resize(cs as usize, 0);
        file.write_at(&first, 0)
            .map_err(io_err(&path, "write header", 0))?;
        file.sync().map_err(io_err(&path, "sync", 0))?;
        let img = Image::open_on(file, name, true)?;
        if size > 0 {
            img.grow(size)?;
        }
        Ok(img)
    }

    /// Open on caller-provided storage (no locking); `name` is used in messages.
    pub fn open_on(
        file: Arc<dyn ImageFile>,
        name: &str,
        writable: bool,
    ) -> Result<Image, ImageError> {
        Image::open_inner(file, name, writable, true)
    }

    /// Open with every metadata structure validated, or — `trust_active` false, for a
    /// shared open of an image another process writes — without validating the active L1
    /// table up front: its entries may point at L2 tables written after the file length
    /// was taken, so they are checked only when the active layer is read. The host end
    /// is taken again after all metadata is read, so a snapshot's tables (immutable while
    /// it exists) always validate.
    pub(super) fn open_inner(
        file: Arc<dyn ImageFile>,
        name: &str,
        writable: bool,
        trust_active: bool,
    ) -> Result<Image, ImageError> {
        let path = PathBuf::from(name);
        let len = file.len().map_err(io_err(&path, "stat", 0))?;
        let mut probe = vec![0u8; len.min(104) as usize];
        read_cluster(&*file, &path, "read header", 0, &mut probe)?;
        let cb = if probe.len() >= 24 {
            u32::from_be_bytes([probe[20], probe[21], probe[22], probe[23]])
        } else {
            16
        };
        let first_len = if (9..=21).contains(&cb) {
            (1u64 << cb).min(len)
        } else {
            probe.len() as u64
        };
        let mut first = vec![0u8; first_len as usize];
        read_cluster(&*file, &path, "read header", 0, &mut first)?;
        let header = Header::parse(&path, &first, len)?;
        if header.incompatible & (header::INCOMPAT_DIRTY | header::INCOMPAT_CORRUPT) != 0 {
            let what = if header.incompatible & header::INCOMPAT_CORRUPT != 0 {
                "corrupt"
            } else {
                "dirty"
            };
            if writable {
                return Err(ImageError::Unsupported {
                    path,
                    feature: format!("{what} bit set; repair with `qemu-img check -r all` before opening read-write"),
                });
            }
            tracing::warn!(
                "{}: {what} bit set; reading anyway (refcounts may be inaccurate)",
                path.display()
            );
        }
        let cb = header.cluster_bits;
        let cs = 1u64 << cb;
        let l1_capacity = ((u64::from(header.l1_size) * 8).div_ceil(cs) * cs / 8) as usize;
        let mut st = State {
            file,
            path: path.clone(),
            cb,
            cs,
            l1: Vec::new(),
            l1_dirty: None,
            l1_capacity,
            reftable: Vec::new(),
            reftable_dirty: false,
            snapshots: Vec::new(),
            cache: Mutex::new(Cache::new(cs as usize, CACHE_BYTES)),
            pending: Vec::new(),
            free_hint: 1,
            host_end: len.div_ceil(cs),
            data_dirty: AtomicBool::new(false),
            regions: Default::default(),
            open_end: len.div_ceil(cs),
            grown: Default::default(),
            header,
        };
        st.load_reftable()?;
        st.l1 = st.read_l1(st.header.l1_table_offset, st.header.l1_size)?;
        for (i, &e) in st.l1.iter().enumerate().filter(|_| trust_active) {
            super::mapping::l1_target(
                e,
                cs,
                st.host_end_bytes(),
                &path,
                st.header.l1_table_offset + i as u64 * 8,
            )?;
        }
        st.snapshots = read_snapshot_table(&*st.file, &st.path, &st.header, len)?;
        if !trust_active {
            let now = st.file.len().map_err(io_err(&path, "stat", 0))?;
            st.host_end = st.host_end.max(now.div_ceil(cs));
        }
        // Every mapping is validated against the metadata regions and the file's end
        // before anything is read or written (format-spec/image.md, "Damage").
        st.open_end = st.host_end;
        st.build_regions(trust_active)?;
        if writable && st.header.autoclear != 0 {
            // Island maintains no autoclear feature (e.g. persistent bitmaps): clearing
            // the bits tells QEMU those structures are stale.
            st.header.autoclear = 0;
            st.write_header()?;
        }
        Ok(Image {
            state: RwLock::new(st),
            snap_l1: Mutex::new(Vec::new()),
            writable,
            path,
            lock: None,
        })
    }

    pub(crate) fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The state for a change; refused when the image is read-only or was marked
    /// corrupt by a refused write (nothing more is written to it, as with QEMU).
    pub(crate) fn write_state(&self) -> Result<RwLockWriteGuard<'_, State>, ImageError> {
        if !self.writable {
            return Err(ImageError::ReadOnly {
                path: self.path.clone(),
            });
        }
        let st = self.state.write().unwrap_or_else(|e| e.into_inner());
        if st.marked_corrupt() {
            return Err(self.marked());
        }
        Ok(st)
    }

    fn marked(&self) -> ImageError {
        ImageError::Unsupported {
            path: self.path.clone(),
            feature: "corrupt bit set after a refused write; repair with `qemu-img check -r all`"
                .into(),
        }
    }

    /// Guest (virtual) size in bytes.
    pub fn size(&self) -> u64 {
        self.read_state().header.size
    }

    /// Cluster size in bytes: the unit of allocation, copy-on-write and changed-block
    /// tracking.
    pub fn cluster_size(&self) -> u32 {
        self.read_state().cs as u32
    }

    /// Header facts plus counts, for `island image info`.
    pub fn info(&self) -> ImageInfo {
        let st = self.read_state();
        ImageInfo {
            path: self.path.to_string_lossy().into_owned(),
            size: st.header.size,
            cluster_size: st.cs as u32,
            version: st.header.version,
            refcount_bits: 1 << st.header.refcount_order,
            snapshots: st.snapshots.len(),
            allocated_clusters: st.count_allocated().unwrap_or(0),
            file_size: st.file.len().unwrap_or(0),
            incompatible_features: st.header.incompatible,
            compatible_features: st.header.compatible,
            autoclear_features: st.header.autoclear,
        }
    }

    fn check_range(&self, offset: u64, len: u64, size: u64) -> Result<(), ImageError> {
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(ImageError::OutOfRange {
                path: self.path.clone(),
                offset,
                len,
                size,
            }),
        }
    }

    /// Read guest bytes of the active layer.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let st = self.read_state();
        self.check_range(offset, buf.len() as u64, st.header.size)?;
        let l1 = &st.l1;
        read_view(&st, l1, st.header.l1_table_offset, buf, offset)
    }

    /// Write guest bytes. Clusters owned exclusively (COPIED) are written in place under
    /// the shared lock; anything needing allocation or copy-on-write takes it exclusively.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        match self.write_inner(buf, offset) {
            Err(e @ ImageError::Overlap { .. }) => {
                let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
                Err(st.refuse(e))
            }
            r => r,
        }
    }

    fn write_inner(&self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        if !self.writable {
            return Err(ImageError::ReadOnly {
                path: self.path.clone(),
            });
        }
        {
            let st = self.read_state();
            if st.marked_corrupt() {
                return Err(self.marked());
            }
            self.check_range(offset, buf.len() as u64, st.header.size)?;
            let mut targets = [0u64; 4];
            let mut n = 0;
            let mut all = true;
            for_each_piece(st.cb, offset, buf.len(), |gc, _, _, _| {
                if !all {
                    return Ok(());
                }
                if n == targets.len() {
                    all = false;
                    return Ok(());
                }
                match st.in_place_target(gc)? {
                    Some(h) => targets[n] = h.0,
                    None => all = false,
                }
                n += 1;
                Ok(())
            })?;
            if all {
                let mut k = 0;
                for_each_piece(st.cb, offset, buf.len(), |_, in_off, at, len| {
                    let host = targets[k] + in_off as u64;
                    k += 1;
                    st.write(&buf[at..at + len], host, "write data", None)
                })?;
                st.data_dirty.store(true, Ordering::Release);
                return Ok(());
            }
        }
        let mut st = self.write_state()?;
        self.check_range(offset, buf.len() as u64, st.header.size)?;
        let mut scratch = Vec::new();
        let cb = st.cb;
        let r = for_each_piece(cb, offset, buf.len(), |gc, in_off, at, len| {
            st.write_cluster(gc, in_off, &buf[at..at + len], &mut scratch)
        });
        let r = r.map_err(|e| st.refuse(e));
        st.data_dirty.store(true, Ordering::Release);
        r?;
        st.trim()
    }

    /// Make a range read as zeros: whole clusters get the zero flag (their clusters are
    /// released), partial clusters get explicit zero bytes.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        let mut st = self.write_state()?;
        self.check_range(offset, len, st.header.size)?;
        let r = st.zero_range(offset, len);
        r.map_err(|e| st.refuse(e))
    }

    /// Discard: same as [`Image::write_zeroes`] (qcow2 v3 has the zero flag, so the range
    /// reads back as zeros and its clusters are released).
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.write_zeroes(offset, len)
    }

    /// Make everything written so far durable (ordered metadata flush).
    pub fn flush(&self) -> Result<(), ImageError> {
        if !self.writable {
            return Ok(());
        }
        // Not `write_state`: after a refused write the validated changes before it are
        // still made durable.
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.flush_locked()
    }
    /// Grow the virtual disk (shrinking is refused). Like create, the size is rounded up
    /// to a multiple of 512.
    pub fn grow(&self, new_size: u64) -> Result<(), ImageError> {
        let new_size = round_size(&self.path, new_size)?;
        let mut st = self.write_state()?;
        if new_size < st.header.size {
            return Err(ImageError::InvalidArgument {
                path: self.path.clone(),
                reason: format!("cannot shrink from {} to {new_size}", st.header.size),
            });
        }
        let need = st.l1_entries_for(new_size);
        let mut l1 = st.l1.clone();
        if need > l1.len() as u64 {
            if need * 8 > header::MAX_L1_BYTES {
                return Err(ImageError::InvalidArgument {
                    path: self.path.clone(),
                    reason: format!("size {new_size} needs an L1 table over QEMU's 32 MiB limit"),
                });
            }
            l1.resize(need as usize, 0);
        }
        let r = st.install_l1(l1, new_size);
        r.map_err(|e| st.refuse(e))
    }

    /// Flush and release the locks.
    pub fn close(self) -> Result<(), ImageError> {
        self.flush()
    }

    /// Snapshots in table order.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        let st = self.read_state();
        st.snapshots
            .iter()
            .map(|e| snapshot_info(&st, e, st.header.size))
            .collect()
    }

    /// Take an internal snapshot of the active layer.
    pub fn create_snapshot(&self, name: &str) -> Result<SnapshotInfo, ImageError> {
        let mut st = self.write_state()?;
        self.clear_snap_l1();
        let r = st.create_snapshot(name, now());
        let e = r.map_err(|e| st.refuse(e))?;
        Ok(snapshot_info(&st, &e, st.header.size))
    }

    /// Delete a snapshot (by id, else name) and release what only it referenced.
    pub fn delete_snapshot(&self, name_or_id: &str) -> Result<(), ImageError> {
        let mut st = self.write_state()?;
        self.clear_snap_l1();
        let r = st.delete_snapshot(name_or_id);
        r.map_err(|e| st.refuse(e))
    }

    /// Make the active layer equal to a snapshot (QEMU's `snapshot -a`).
    pub fn revert_snapshot(&self, name_or_id: &str) -> Result<(), ImageError> {
        let mut st = self.write_state()?;
        self.clear_snap_l1();
        let r = st.revert_snapshot(name_or_id);
        r.map_err(|e| st.refuse(e))
    }

    /// Test hook: shrink the metadata cache to exercise eviction and ordered flushes.
    #[cfg(test)]
    pub(crate) fn set_cache_budget(&self, bytes: usize) -> Result<(), ImageError> {
        let mut st = self.write_state()?;
        st.flush_locked()?;
        let cs = st.cs as usize;
        st.cache = Mutex::new(Cache::new(cs, bytes));
        Ok(())
    }

    fn clear_snap_l1(&self) {
        self.snap_l1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// L1 table and virtual size of a view (None = active layer).
    pub(crate) fn view(
        &self,
        st: &State,
        name: Option<&str>,
    ) -> Result<(Arc<Vec<u64>>, u64, u64), ImageError> {
        let Some(name) = name else {
            return Ok((
                Arc::new(st.l1.clone()),
                st.header.l1_table_offset,
                st.header.size,
            ));
        };
        let e = snapshot::find(&st.snapshots, name)
            .map(|i| &st.snapshots[i])
            .ok_or_else(|| ImageError::NoSuchSnapshot {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        let size = e.disk_size.unwrap_or(st.header.size);
        let mut cache = self.snap_l1.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, l1)) = cache
            .iter()
            .find(|(o, s, _)| *o == e.l1_table_offset && *s == e.l1_size)
        {
            return Ok((l1.clone(), e.l1_table_offset, size));
        }
        let l1 = Arc::new(st.read_l1(e.l1_table_offset, e.l1_size)?);
        if cache.len() >= 4 {
            cache.remove(0);
        }
        cache.push((e.l1_table_offset, e.l1_size, l1.clone()));
        Ok((l1, e.l1_table_offset, size))
    }

    /// Read guest bytes of a snapshot.
    pub fn read_snapshot_at(
        &self,
        name_or_id: &str,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<(), ImageError> {
        let st = self.read_state();
        let (l1, l1_off, size) = self.view(&st, Some(name_or_id))?;
        self.check_range(offset, buf.len() as u64, size)?;
        read_view(&st, &l1, l1_off, buf, offset)
    }

    /// Guest ranges whose contents may differ between snapshot `from` and `to` (None =
    /// active layer), from pointer tables only (see `changed.rs`).
    pub fn changed_ranges(
        &self,
        from: &str,
        to: Option<&str>,
    ) -> Result<Vec<ChangedRange>, ImageError> {
        let st = self.read_state();
        let a = self.view(&st, Some(from))?;
        let b = self.view(&st, to)?;
        st.changed_ranges(&a, &b)
    }

    /// Allocation map of a view, like `qemu-img map`.
    pub fn extents(
        &self,
        view: Option<&str>,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Extent>, ImageError> {
        let st = self.read_state();
        let (l1, l1_off, size) = self.view(&st, view)?;
        self.check_range(offset, len, size)?;
        st.extents(&l1, l1_off, offset, len)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.writable {
            let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = st.flush_locked() {
                tracing::error!("{}: flush on drop failed: {e}", self.path.display());
            }
        }
        // `lock`, a field, is dropped after this: the locks go once the flush is done.
    }
}

/// Round a virtual size up to a multiple of 512 bytes: QEMU counts whole sectors and
/// would not see a partial last sector.
fn round_size(path: &Path, size: u64) -> Result<u64, ImageError> {
    size.checked_next_multiple_of(512)
        .ok_or_else(|| ImageError::InvalidArgument {
            path: path.to_path_buf(),
            reason: format!("size {size} too large"),
        })
}

/// Split a guest byte range into per-cluster pieces: (cluster, offset in cluster,
/// offset in buffer, length).
pub(super) fn for_each_piece(
    cb: u32,
    offset: u64,
    len: usize,
    mut f: impl FnMut(GuestCluster, usize, usize, usize) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let cs = 1u64 << cb;
    let mut at = 0usize;
    while at < len {
        let pos = GuestOffset(offset + at as u64);
        let in_off = pos.in_cluster(cb);
        let n = ((cs - in_off) as usize).min(len - at);
        f(pos.cluster(cb), in_off as usize, at, n)?;
        at += n;
    }
    Ok(())
}

/// Read guest bytes through an L1 table, merging pieces contiguous on the host into one
/// read.
fn read_view(
    st: &State,
    l1: &[u64],
    l1_off: u64,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), ImageError> {
    let mut run: Option<(usize, u64, usize)> = None; // (buf start, host start, len)
    let flush_run =
        |run: &mut Option<(usize, u64, usize)>, buf: &mut [u8]| -> Result<(), ImageError> {
            if let Some((at, host, len)) = run.take() {
                read_tolerant(
                    &*st.file,
                    &st.path,
                    "read data",
                    host,
                    &mut buf[at..at + len],
                )?;
            }
            Ok(())
        };
    let cb = st.cb;
    let mut at = 0usize;
    let len = buf.len();
    while at < len {
        let pos = GuestOffset(offset + at as u64);
        let in_off = pos.in_cluster(cb);
        let n = ((st.cs - in_off) as usize).min(len - at);
        let gc = pos.cluster(cb);
        let m = {
            let mut cache = st.cache();
            let (e, ea) = super::mapping::lookup(st, &mut cache, l1, l1_off, gc)?;
            st.classify(e, ea)?
        };
        match m {
            Mapping::Data { host, .. } => {
                let h = host.0 + in_off;
                match &mut run {
                    Some((_, rh, rl)) if *rh + *rl as u64 == h => *rl += n,
                    _ => {
                        flush_run(&mut run, buf)?;
                        run = Some((at, h, n));
                    }
                }
            }
            Mapping::Unallocated | Mapping::Zero { .. } => {
                flush_run(&mut run, buf)?;
                buf[at..at + n].fill(0);
            }
            Mapping::Compressed => return Err(st.unsupported_compressed(gc)),
        }
        at += n;
    }
    flush_run(&mut run, buf)
}

/// A snapshot's listing; `image_size` is the virtual size of a snapshot that does not
/// record its own.
pub(super) fn snapshot_info(st: &State, e: &SnapshotEntry, image_size: u64) -> SnapshotInfo {
    let digest = st
        .read_l1(e.l1_table_offset, e.l1_size)
        .map(|l1| {
            let mut h = blake3::Hasher::new();
            for v in l1 {
                h.update(&v.to_be_bytes());
            }
            h.finalize().to_hex().to_string()
        })
        .unwrap_or_default();
    SnapshotInfo {
        id: e.id.clone(),
        name: e.name.clone(),
        date_sec: e.date_sec,
        date_nsec: e.date_nsec,
        vm_clock_nsec: e.vm_clock_nsec,
        vm_state_size: e.vm_state_size,
        disk_size: e.disk_size.unwrap_or(image_size),
        l1_digest: digest,
    }
}

/// Read the snapshot table `h` locates, growing the read until the entries parse
/// (bounded by QEMU's table size limit).
pub(super) fn read_snapshot_table(
    file: &dyn ImageFile,
    path: &Path,
    h: &Header,
    file_len: u64,
) -> Result<Vec<SnapshotEntry>, ImageError> {
    let n = h.nb_snapshots;
    if n == 0 {
        return Ok(Vec::new());
    }
    let cs = 1u64 << h.cluster_bits;
    let off = h.snapshots_offset;
    let avail = file_len.saturating_sub(off).min(snapshot::MAX_TABLE_BYTES);
    let mut want = cs.min(avail);
    loop {
        let mut buf = vec![0u8; want as usize];
        read_tolerant(file, path, "read snapshot table", off, &mut buf)?;
        match snapshot::parse_table(path, &buf, off, n, cs, file_len) {
            Ok(t) => return Ok(t),
            Err(_) if want < avail => want = (want * 4).min(avail),
            Err(e) => return Err(e),
        }
    }
}

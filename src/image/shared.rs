//! Shared read-only opens of an image another process (a running QEMU) keeps writing.
//!
//! QEMU updates the active L1 table, the refcount structures and the header while Island
//! reads them, so one pass over the metadata can see a mix of before and after: an L1
//! entry pointing at an L2 table past the file length Island took a moment earlier, a
//! snapshot table moved by a concurrent snapshot create. Island therefore
//! - never validates the active L1 table up front (it is checked lazily, only when the
//!   active layer is read, which a shared open makes no promise about);
//! - re-reads the header after loading the metadata and starts over when a field that
//!   locates metadata changed, or when a structure failed validation, a few times;
//! - offers [`Image::snapshots_on_disk`] so a reader can prove, after reading a snapshot,
//!   that the snapshot still exists unchanged (and so was never freed and reused while
//!   it was being read).
//!
//! A snapshot's own L1 and L2 tables and data clusters are immutable while it exists, so
//! reads of a snapshot are never affected by what QEMU does to the active layer.

use super::cache::read_cluster;
use super::engine::{read_snapshot_table, snapshot_info};
use super::error::ImageError;
use super::file::ImageFile;
use super::header::Header;
use super::{Image, SnapshotInfo};
use std::sync::Arc;
use std::time::Duration;

/// Opens tried before a shared open gives up on metadata that keeps changing.
const SHARED_OPEN_ATTEMPTS: u32 = 8;

/// The header fields that say where metadata lives: if any changed while the rest was
/// read, what was read may be a mix of two states.
fn layout(h: &Header) -> [u64; 7] {
    [
        h.size,
        h.l1_table_offset,
        u64::from(h.l1_size),
        h.refcount_table_offset,
        u64::from(h.refcount_table_clusters),
        h.snapshots_offset,
        u64::from(h.nb_snapshots),
    ]
}

/// Read and parse the header as it is on disk now.
fn read_header(file: &dyn ImageFile, path: &std::path::Path) -> Result<Header, ImageError> {
    let io = |source| ImageError::Io {
        path: path.to_path_buf(),
        op: "stat",
        offset: 0,
        source,
    };
    let len = file.len().map_err(io)?;
    let mut probe = vec![0u8; len.min(104) as usize];
    read_cluster(file, path, "read header", 0, &mut probe)?;
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
    read_cluster(file, path, "read header", 0, &mut first)?;
    Header::parse(path, &first, len)
}

impl Image {
    /// A shared read-only open on caller-provided storage (no locking): what
    /// `Image::open(path, OpenMode::ReadOnlyShared)` does after taking its locks. Lets a
    /// test put a writer between the steps of the open.
    pub fn open_shared_on(file: Arc<dyn ImageFile>, name: &str) -> Result<Image, ImageError> {
        Image::open_shared(file, name)
    }

    /// Open read-only without trusting the active layer, retrying while the writer
    /// changes the metadata under the read (see the module comment). Errors other than
    /// a structure failing validation (I/O, unsupported features) are returned at once.
    pub(super) fn open_shared(file: Arc<dyn ImageFile>, name: &str) -> Result<Image, ImageError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= SHARED_OPEN_ATTEMPTS;
            match Image::open_inner(file.clone(), name, false, false) {
                Ok(img) => {
                    let (now, then) = {
                        let st = img.read_state();
                        (read_header(&*st.file, &st.path)?, layout(&st.header))
                    };
                    if layout(&now) == then {
                        return Ok(img);
                    }
                    if last {
                        return Err(ImageError::Locked {
                            path: name.into(),
                            reason: format!(
                                "its metadata kept moving during {SHARED_OPEN_ATTEMPTS} shared \
                                 opens (snapshots being created or deleted?); try again"
                            ),
                        });
                    }
                }
                Err(e @ (ImageError::Corrupt { .. } | ImageError::Overlap { .. })) if !last => {
                    tracing::debug!("{name}: metadata changed during a shared open, retrying: {e}");
                }
                Err(e) => return Err(e),
            }
            std::thread::sleep(Duration::from_millis(5 << attempt.min(6)));
        }
    }

    /// The snapshot table as it is on disk now, not as it was when the image was opened:
    /// with a writer sharing the image, this is how a reader learns whether a snapshot it
    /// read is still there (and so was never released and its clusters reused).
    pub fn snapshots_on_disk(&self) -> Result<Vec<SnapshotInfo>, ImageError> {
        let st = self.read_state();
        let header = read_header(&*st.file, &st.path)?;
        let len = st.file.len().map_err(|source| ImageError::Io {
            path: st.path.clone(),
            op: "stat",
            offset: 0,
            source,
        })?;
        let entries = read_snapshot_table(&*st.file, &st.path, &header, len)?;
        Ok(entries
            .iter()
            .map(|e| snapshot_info(&st, e, header.size))
            .collect())
    }
}

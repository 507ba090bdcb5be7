use std::path::PathBuf;
use thiserror::Error;

/// Errors from the qcow2 image engine; each names the image path and, where it applies,
/// the offset or structure that failed.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum ImageError {
    /// An I/O call on the image file failed.
    #[error("{path}: {op} at offset {offset}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    /// A structure in the image is inconsistent or invalid; `what` names the structure.
    #[error("{path}: corrupt {what} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        offset: u64,
        reason: String,
    },
    /// A write would land on qcow2 metadata it is not (or a mapping points into metadata):
    /// refused, and for a refused write the image is marked corrupt as QEMU does
    /// (see `overlap.rs`).
    #[error("{path}: metadata overlap at offset {offset}: {reason}; the image is damaged (qemu-img check)")]
    Overlap {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The image uses a qcow2 feature Island does not implement; it is refused, never misread.
    #[error("{path}: unsupported qcow2 feature: {feature}")]
    Unsupported { path: PathBuf, feature: String },
    /// Another process (QEMU or Island) holds a conflicting lock on the image.
    #[error("{path}: image is locked: {reason}")]
    Locked { path: PathBuf, reason: String },
    /// A guest access outside the virtual disk.
    #[error("{path}: access at offset {offset} length {len} is outside the virtual size {size}")]
    OutOfRange {
        path: PathBuf,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// No snapshot has this id or name.
    #[error("{path}: no snapshot with id or name {name:?}")]
    NoSuchSnapshot { path: PathBuf, name: String },
    /// A snapshot being backed up was deleted or replaced before the backup committed:
    /// its clusters may have been reused, so what was read cannot be trusted.
    #[error("{path}: snapshot {name:?} was deleted or replaced while it was read ({reason}); nothing was committed")]
    SnapshotChanged {
        path: PathBuf,
        name: String,
        reason: String,
    },
    /// A snapshot with this name already exists.
    #[error("{path}: a snapshot named {name:?} already exists")]
    SnapshotExists { path: PathBuf, name: String },
    /// A modifying call on an image opened read-only.
    #[error("{path}: image is opened read-only")]
    ReadOnly { path: PathBuf },
    /// A caller-supplied argument is invalid (size, cluster size, name...).
    #[error("{path}: invalid argument: {reason}")]
    InvalidArgument { path: PathBuf, reason: String },
    /// O_DIRECT ([`CacheMode::Direct`](super::CacheMode)) was asked for and the file or
    /// its filesystem refuses it; Island does not fall back to the page cache silently.
    #[error("{path}: O_DIRECT (cache mode direct) refused: {reason}; use the writeback cache mode on this filesystem")]
    DirectIo { path: PathBuf, reason: String },
}

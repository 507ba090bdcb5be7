//! The image engine's one error type.

use std::path::PathBuf;
use thiserror::Error;

/// Errors from the qcow2 image engine; each names the image path and, where it applies,
/// the offset or structure that failed.
///
/// A public enum with public fields rather than private fields behind accessors: callers
/// and tests decide by variant (`Unsupported` is a refusal, `Corrupt`/`Overlap` damage,
/// `Locked` a retry later), and every field is part of the message. `#[non_exhaustive]`
/// leaves room for new variants; `path` is in every variant.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum ImageError {
    /// An I/O call on the image file failed.
    #[error("{path}: {op} at offset {offset}: {source}")]
    Io {
        /// The image file.
        path: PathBuf,
        /// What Island was doing ("read L2 table", "write data", …).
        op: &'static str,
        /// Host offset (byte offset in the image file) of the failed call.
        offset: u64,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A structure in the image is inconsistent or invalid; `what` names the structure.
    #[error("{path}: corrupt {what} at offset {offset}: {reason}")]
    Corrupt {
        /// The image file.
        path: PathBuf,
        /// The structure ("header", "L2 entry", "snapshot table entry", …).
        what: &'static str,
        /// Host offset of the structure or of the bad field in it.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A write would land on qcow2 metadata it is not (or a mapping points into metadata):
    /// refused, and for a refused write the image is marked corrupt as QEMU does
    /// (see `overlap.rs`).
    #[error("{path}: metadata overlap at offset {offset}: {reason}; the image is damaged (qemu-img check)")]
    Overlap {
        /// The image file.
        path: PathBuf,
        /// Host offset of the refused write or of the mapping into metadata.
        offset: u64,
        /// Which metadata it would overlap (image.md §2 "Damage").
        reason: String,
    },
    /// The image uses a qcow2 feature Island does not implement; it is refused, never misread.
    #[error("{path}: unsupported qcow2 feature: {feature}")]
    Unsupported {
        /// The image file.
        path: PathBuf,
        /// The feature, with a conversion hint where one exists.
        feature: String,
    },
    /// Another process (QEMU or Island) holds a conflicting lock on the image.
    #[error("{path}: image is locked: {reason}")]
    Locked {
        /// The image file.
        path: PathBuf,
        /// The lock that conflicts, and who holds it where known.
        reason: String,
    },
    /// A guest access outside the virtual disk.
    #[error("{path}: access at offset {offset} length {len} is outside the virtual size {size}")]
    OutOfRange {
        /// The image file.
        path: PathBuf,
        /// Guest offset of the access.
        offset: u64,
        /// Length of the access in bytes.
        len: u64,
        /// The virtual disk size.
        size: u64,
    },
    /// No snapshot has this id or name.
    #[error("{path}: no snapshot with id or name {name:?}")]
    NoSuchSnapshot {
        /// The image file.
        path: PathBuf,
        /// The id or name asked for.
        name: String,
    },
    /// A snapshot being backed up was deleted or replaced before the backup committed:
    /// its clusters may have been reused, so what was read cannot be trusted.
    #[error("{path}: snapshot {name:?} was deleted or replaced while it was read ({reason}); nothing was committed")]
    SnapshotChanged {
        /// The image file.
        path: PathBuf,
        /// The snapshot's name.
        name: String,
        /// How it was found changed (gone from the table, or its id now names another
        /// snapshot).
        reason: String,
    },
    /// A snapshot with this name already exists.
    #[error("{path}: a snapshot named {name:?} already exists")]
    SnapshotExists {
        /// The image file.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// A modifying call on an image opened read-only.
    #[error("{path}: image is opened read-only")]
    ReadOnly {
        /// The image file.
        path: PathBuf,
    },
    /// A caller-supplied argument is invalid (size, cluster size, name...).
    #[error("{path}: invalid argument: {reason}")]
    InvalidArgument {
        /// The image file.
        path: PathBuf,
        /// Which argument, and the allowed range.
        reason: String,
    },
    /// O_DIRECT ([`CacheMode::Direct`](super::CacheMode)) was asked for and the file or
    /// its filesystem refuses it; Island does not fall back to the page cache silently.
    #[error("{path}: O_DIRECT (cache mode direct) refused: {reason}; use the writeback cache mode on this filesystem")]
    DirectIo {
        /// The image file.
        path: PathBuf,
        /// Why: the open flag or the kernel's alignment report refused it.
        reason: String,
    },
}

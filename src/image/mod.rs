//! qcow2 version 3 image engine (see `format-spec/image.md`).
//!
//! Island's local images are real qcow2 files so QEMU can boot them and `qemu-img` can
//! inspect them. Internal snapshots live in the qcow2 snapshot table; changed-block
//! tracking compares pointer tables ([`Image::changed_ranges`]) and never reads guest data.

mod cache;
mod changed;
mod direct;
mod engine;
mod error;
mod file;
#[doc(hidden)]
pub mod fuzzing;
mod header;
mod lock;
mod mapping;
mod overlap;
mod refcount;
mod shared;
mod snapshot;
mod state;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lock_fork;
pub mod types;

pub use direct::{AlignedBuf, DirectFile};
pub use engine::Image;
pub use error::ImageError;
pub use file::ImageFile;

use serde::{Deserialize, Serialize};

/// Parameters of a new image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Virtual disk size in bytes, rounded up to a multiple of 512 (QEMU counts sectors).
    pub size: u64,
    /// Cluster size in bytes: a power of two from 4 KiB to 2 MiB.
    pub cluster_size: u32,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            cluster_size: 65536,
        }
    }
}

/// How an image is opened, mirroring QEMU's permission model so both tools respect each
/// other's locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Exclusive writer: refuses if QEMU or another Island holds the image.
    ReadWrite,
    /// Consistent reader: refuses if a writer holds the image (like `qemu-img info`).
    ReadOnly,
    /// Like QEMU's force-share (`-U`): reads while a VM writes; only snapshots are stable.
    ReadOnlyShared,
}

/// How the image file's I/O uses the host page cache, like QEMU's `cache=` option
/// (`qemu-img -t`). Metadata ordering and flush barriers are the same in both modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Buffered I/O through the page cache (QEMU's `cache=writeback`).
    #[default]
    Writeback,
    /// O_DIRECT: data moves between the device and Island's buffers, bypassing the page
    /// cache (QEMU's `cache=none`). Requests are aligned to the file's logical block size
    /// with bounce buffers and read-modify-write where needed (see `direct.rs`); flushes
    /// still `fdatasync`, since the device's own cache is not bypassed. Refused with
    /// [`ImageError::DirectIo`] on a filesystem without O_DIRECT support.
    Direct,
}

/// One internal snapshot as listed by [`Image::snapshots`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// The snapshot table entry's unique id string (QEMU numbers them "1", "2", …;
    /// qcow2.rst "Snapshots", image.md §1 "Snapshot table entries").
    pub id: String,
    /// The user-visible name (unique in Island's images; QEMU allows duplicates).
    pub name: String,
    /// Creation time, seconds since the Unix epoch (entry bytes 16–19).
    pub date_sec: u32,
    /// Sub-second part of the creation time, in nanoseconds (entry bytes 20–23).
    pub date_nsec: u32,
    /// Guest clock at snapshot time in nanoseconds (entry bytes 24–31; 0 for disk-only
    /// snapshots, as Island's are).
    pub vm_clock_nsec: u64,
    /// Bytes of saved VM state after the disk data (0 for disk-only snapshots; Island
    /// never reads or writes VM state).
    pub vm_state_size: u64,
    /// Virtual size when the snapshot was taken (extra data), else the image size.
    pub disk_size: u64,
    /// blake3 hex of the snapshot's L1 table bytes as stored: identifies the snapshot's
    /// content cheaply (same digest ⇒ same pointer tables).
    pub l1_digest: String,
}

/// A guest range whose contents may differ between two views.
#[derive(Serialize, Deserialize, PartialEq, Eq, Debug, Clone)]
pub struct ChangedRange {
    /// First guest byte of the range.
    pub offset: u64,
    /// Length of the range in bytes.
    pub length: u64,
    /// The range reads as zeros in the newer view.
    pub zero: bool,
}

/// One run of the allocation map.
#[derive(Serialize, PartialEq, Eq, Debug, Clone)]
pub struct Extent {
    /// First guest byte of the run.
    pub offset: u64,
    /// Length of the run in bytes.
    pub length: u64,
    /// What backs every cluster of the run.
    pub kind: ExtentKind,
}

/// What backs a guest range.
#[derive(Serialize, PartialEq, Eq, Debug, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum ExtentKind {
    /// A host cluster holds the data.
    Data,
    /// The qcow2 zero flag is set: reads as zeros.
    Zero,
    /// Nothing allocated: reads as zeros (Island images have no backing file).
    Unallocated,
}

/// Summary of an open image, for `island image info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// The image file as opened.
    pub path: String,
    /// Virtual disk size in bytes (header bytes 24–31).
    pub size: u64,
    /// Cluster size in bytes (`1 << cluster_bits`).
    pub cluster_size: u32,
    /// qcow2 version (always 3: Island refuses others).
    pub version: u32,
    /// Width of a refcount entry in bits (`1 << refcount_order`).
    pub refcount_bits: u32,
    /// Number of internal snapshots.
    pub snapshots: usize,
    /// Host clusters with a non-zero refcount (metadata and data).
    pub allocated_clusters: u64,
    /// Length of the image file in bytes.
    pub file_size: u64,
    /// Header incompatible feature bits (bit 0 dirty, 1 corrupt; image.md §2).
    pub incompatible_features: u64,
    /// Header compatible feature bits (bit 0 lazy refcounts).
    pub compatible_features: u64,
    /// Header autoclear feature bits (bit 0 bitmaps; cleared by Island's read-write open).
    pub autoclear_features: u64,
}

//! Repository format and protocol (see `format-spec/repository.md`).
//!
//! A repository is a set of immutable objects in an [`ObjectStore`](crate::store::ObjectStore): packs of blob frames
//! (chunks and Merkle tables), sorted index and refcount-delta segments, root manifests
//! (one per snapshot, the commit point of a backup), tombstones (the commit point of a
//! delete), gc markers and leases. Nothing is ever overwritten, so the only conditional
//! operation needed is create-if-absent.
//!
//! Layout, bottom up:
//! - `format/`: the on-disk objects (format-spec §2–§3): encoding, parsing and the readers
//!   of segments and packs. Imports nothing else of the repository but [`RepoError`].
//! - this folder: the [`Repository`] handle and its view (`repository.rs`, `unusable.rs`),
//!   the shared write side (`writer.rs`), tree editing and walks (`tree.rs`, `walk.rs`).
//! - `protocol/`: leases, the create-if-absent policy, commit points, checkpoints,
//!   verdicts, readers racing gc and the cleaning of dead writers (format-spec §5–§6, §12).
//!   The handle and the protocol use each other: the view judges commit markers by the
//!   lease and verdict rules, and the protocol acts through the handle.
//! - `ops/`: one file or folder per operation (delete, gc, check, copy/heal, forget,
//!   repair, revert, diff), built on the above; nothing below imports an operation.

mod cache;
mod error;
pub(crate) mod format;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod ops;
pub(crate) mod protocol;
pub(crate) mod repository;
pub(crate) mod snapshot_writer;
#[cfg(test)]
pub(crate) mod tests;
pub(crate) mod tree;
mod unusable;
mod walk;
pub(crate) mod writer;

pub use error::RepoError;
pub use format::config::InitOptions;
pub use format::ids::BlobId;
pub use format::manifest::{BaseIdentity, SnapshotManifest, SnapshotStats};
pub use ops::check::{CheckIssue, CheckOptions, CheckReport};
pub use ops::copy::{copy, CopyOptions, CopyReport};
pub use ops::copy::{heal, HealReport};
pub use ops::delete::{DeleteOptions, DeleteReport};
pub use ops::diff::DiffRange;
pub use ops::forget::{ForgetEntry, ForgetOptions, ForgetPolicy, ForgetReport};
pub use ops::gc::{GcOptions, GcReport};
pub use ops::repair::RepairReport;
pub use protocol::exclusive::{create_exclusive, create_own};
pub use repository::{Repository, SnapshotSummary};

pub(crate) use format::chunk::{BlobKind, Frame};
pub(crate) use format::pack::pack_key as pack_key_of;
pub(crate) use format::segment::Location;
pub(crate) use protocol::lease::Lease;

/// Decode a frame and verify it is blob `id`.
pub(crate) fn decode_blob(
    key: &str,
    frame: &[u8],
    id: BlobId,
) -> Result<(BlobId, BlobKind, Vec<u8>), RepoError> {
    format::chunk::decode_frame(key, frame, Some(id))
}
pub use crate::store::RequestCounts;

/// Progress reporting for long operations (CLI progress bars, service status polling).
pub trait Progress: Send + Sync {
    /// A new stage begins; `total` is in the stage's unit (bytes for data stages).
    fn stage(&self, name: &str, total: u64);
    /// `n` more units of the current stage are done.
    fn advance(&self, n: u64);
}

/// Skew allowance, for tests that move the store clock past it.
#[cfg(test)]
pub(crate) fn lease_skew() -> std::time::Duration {
    protocol::lease::SKEW
}

//! Repository format and protocol (see `format-spec/repository.md`).
//!
//! A repository is a set of immutable objects in an [`ObjectStore`]: packs of blob frames
//! (chunks and Merkle tables), sorted index and refcount-delta segments, root manifests
//! (one per snapshot, the commit point of a backup), tombstones (the commit point of a
//! delete), gc markers and leases. Nothing is ever overwritten, so the only conditional
//! operation needed is create-if-absent.

mod cache;
mod check;
pub(crate) mod checkpoint;
mod chunk;
pub(crate) mod commit;
mod config;
mod copy;
mod delete;
mod diff;
pub(crate) mod envelope;
mod error;
mod exclusive;
#[cfg(test)]
mod fetch_tests;
mod follow;
#[cfg(test)]
mod follow_tests;
mod forget;
#[doc(hidden)]
pub mod fuzzing;
mod gc;
mod gc_select;
pub(crate) mod ids;
pub(crate) mod lease;
pub(crate) mod manifest;
mod pack;
mod repair;
pub(crate) mod repository;
mod revert;
#[cfg(test)]
mod schedule_tests;
mod segment;
pub(crate) mod snapshot_writer;
mod stale;
pub(crate) mod table;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod tree;
mod unusable;
pub(crate) mod verdict;
mod walk;
pub(crate) mod writer;

pub use check::{CheckIssue, CheckOptions, CheckReport};
pub use config::InitOptions;
pub use copy::{copy, CopyOptions, CopyReport};
pub use copy::{heal, HealReport};
pub use delete::{DeleteOptions, DeleteReport};
pub use diff::DiffRange;
pub use error::RepoError;
pub use exclusive::{create_exclusive, create_own};
pub use forget::{ForgetEntry, ForgetOptions, ForgetPolicy, ForgetReport};
pub use gc::{GcOptions, GcReport};
pub use ids::BlobId;
pub use manifest::{BaseIdentity, SnapshotManifest, SnapshotStats};
pub use repair::RepairReport;
pub use repository::{Repository, SnapshotSummary};

pub(crate) use chunk::{BlobKind, Frame};
pub(crate) use lease::Lease;
pub(crate) use pack::pack_key as pack_key_of;
pub(crate) use segment::Location;

/// Decode a frame and verify it is blob `id`.
pub(crate) fn decode_blob(
    key: &str,
    frame: &[u8],
    id: BlobId,
) -> Result<(BlobId, BlobKind, Vec<u8>), RepoError> {
    chunk::decode_frame(key, frame, Some(id))
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
    lease::SKEW
}

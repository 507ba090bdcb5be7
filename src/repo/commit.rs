//! The commit step of a snapshot writer (backup and copy): flush the writer's packs and
//! segments, renew the lease (fence check), then create the root manifest with
//! the repository's create-if-absent policy (`create_exclusive`). Sharing it keeps one write order for every path that creates roots
//! (format-spec §5).

use super::lease::Lease;
use super::manifest::SnapshotManifest;
use super::writer::Writer;
use super::{RepoError, Repository};
use crate::store::{PutOutcome, RequestCounts};
use crate::Result;
use bytes::Bytes;

/// Outcome of [`commit_root`] when the root key already existed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Committed {
    /// The root was created: the snapshot is committed.
    Created,
    /// Someone else created this root first; nothing of this writer counts.
    AlreadyExists,
}

/// Flush `w`, renew `lease`, stamp `manifest` with the lease time and the bytes uploaded
/// since `before`, and create its root. On `AlreadyExists` the writer's objects stay
/// uncounted (gc reclaims them once the lease expires), so the caller decides whether that
/// is an error.
pub(crate) async fn commit_root(
    repo: &Repository,
    mut w: Writer,
    lease: &Lease,
    manifest: &mut SnapshotManifest,
    before: &RequestCounts,
) -> Result<Committed> {
    w.release_unused_adopted();
    w.flush().await?;
    manifest.lease_time_ms = lease.check_before_commit().await?;
    if !w.checkpoint_keys.is_empty() {
        super::checkpoint::refuse_if_adopted(repo, &lease.holder).await?;
    }
    let so_far = repo.counts().since(before).bytes_uploaded;
    manifest.stats.uploaded_bytes = so_far + manifest.encode().len() as u64 + 16;
    let key = manifest.key();
    match super::create_exclusive(repo.store().as_ref(), &key, Bytes::from(manifest.encode()))
        .await?
    {
        PutOutcome::Created => {
            super::lease::ensure_not_fenced(
                repo.store().as_ref(),
                &key,
                &lease.holder,
                manifest.lease_time_ms,
            )
            .await?;
            w.finish().await;
            Ok(Committed::Created)
        }
        PutOutcome::AlreadyExists => Ok(Committed::AlreadyExists),
    }
}

/// [`commit_root`] for writers whose root key is fresh: an existing root is an error.
pub(crate) async fn commit_new_root(
    repo: &Repository,
    w: Writer,
    lease: &Lease,
    manifest: &mut SnapshotManifest,
    before: &RequestCounts,
) -> Result<()> {
    match commit_root(repo, w, lease, manifest, before).await? {
        Committed::Created => Ok(()),
        Committed::AlreadyExists => {
            Err(RepoError::InvalidArgument(format!("{} already exists", manifest.key())).into())
        }
    }
}

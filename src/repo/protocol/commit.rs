//! The commit step of a snapshot writer (backup and copy): flush the writer's packs and
//! segments, renew the lease (fence check), then create the root manifest with
//! the repository's create-if-absent policy (`create_exclusive`). Sharing it keeps one write order for every path that creates roots
//! (format-spec §5).
//!
//! The gc-kind runs (gc, and the corrections of `check --repair` and `heal`) commit the same
//! way under a gc marker `gc/<seq>` ([`commit_gc_marker`]).

use super::lease::Lease;
use super::verdict::ensure_not_fenced;
use crate::repo::format::envelope::{self, MAGIC_GC};
use crate::repo::format::manifest::SnapshotManifest;
use crate::repo::format::marker::GcMarker;
use crate::repo::repository::SegmentSet;
use crate::repo::writer::Writer;
use crate::repo::{create_exclusive, RepoError, Repository};
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
    match crate::repo::create_exclusive(repo.store().as_ref(), &key, Bytes::from(manifest.encode()))
        .await?
    {
        PutOutcome::Created => {
            ensure_not_fenced(
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

/// The sequence number and key (`gc/<seq>`) of the next gc marker: one past the newest
/// marker, counted or fenced. gc and `check --repair` both commit under such a marker.
pub(crate) fn next_gc_marker(set: &SegmentSet) -> (u64, String) {
    let seq = set
        .markers
        .gcs
        .values()
        .map(|g| g.seq)
        .max()
        .max(set.markers.gc_seq_max)
        .map_or(0, |s| s + 1);
    (seq, format!("gc/{seq:010}"))
}

/// Commit a gc-kind run (gc, or repair's corrections when `freed`): flush its segments,
/// renew the lease (fence check), then create its marker with create-if-absent. Another
/// run that created the same marker first is a [`RepoError::GcConflict`].
pub(crate) async fn commit_gc_marker(
    repo: &Repository,
    w: &mut Writer,
    lease: &Lease,
    seq: u64,
    marker_key: &str,
    freed: bool,
) -> Result<()> {
    w.flush().await?;
    let lease_time_ms = lease.check_before_commit().await?;
    let marker = GcMarker {
        holder: lease.holder.clone(),
        seq,
        lease_time_ms,
        freed,
        stored: None,
    };
    let sealed = Bytes::from(envelope::seal(MAGIC_GC, &marker));
    if create_exclusive(repo.store().as_ref(), marker_key, sealed).await?
        == PutOutcome::AlreadyExists
    {
        return Err(RepoError::GcConflict {
            other: marker_key.to_string(),
        }
        .into());
    }
    ensure_not_fenced(
        repo.store().as_ref(),
        marker_key,
        &lease.holder,
        lease_time_ms,
    )
    .await
}

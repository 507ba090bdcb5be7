//! Backing up qcow2 images: the one place where the image engine meets the repository.
//!
//! Two ways in, as the Island blueprint describes:
//! - [`backup_image`]: an image Island may write (no QEMU holds it). Island takes an
//!   internal snapshot `island-<snapshot id>`, uploads the clusters changed since the
//!   base snapshot the repository recorded (from pointer tables), commits, then deletes
//!   that base. Only snapshots Island can prove it made are ever deleted, whatever
//!   their names.
//! - [`backup_image_snapshot`]: an internal snapshot that already exists, e.g. one QEMU
//!   took on a running VM with QMP `blockdev-snapshot-internal-sync`. The image is opened
//!   shared read-only (QEMU keeps writing); a snapshot's tables and clusters are immutable
//!   while it exists, so the read is consistent. Island writes nothing to such an image.
//!
//! Either way the increment is trusted only when the image still holds, unchanged, the
//! snapshot the repository's latest backup of the volume was taken from (name, id, date,
//! VM clock and L1 digest all equal). Anything else — a copied image, a reused name, a
//! reverted image — falls back to a full read that still uploads only chunks the
//! repository lacks.

use super::{backup, BackupOptions, BackupReport, BaseIdentity, BlockSource, SourceRange};
use crate::image::{ExtentKind, Image, ImageError, OpenMode, SnapshotInfo};
use crate::repo::Repository;
use crate::Result;
use std::path::Path;
use std::sync::Arc;
use time::OffsetDateTime;

/// Prefix of the internal snapshots Island creates. The prefix alone never makes a
/// snapshot Island's to delete (see [`backup_image`]).
pub const SNAPSHOT_PREFIX: &str = "island-";

/// One internal snapshot of an open image, read as a [`BlockSource`].
pub struct ImageSnapshotSource {
    image: Arc<Image>,
    snapshot: SnapshotInfo,
}

impl ImageSnapshotSource {
    /// Read snapshot `name_or_id` of `image`.
    pub fn new(image: Arc<Image>, name_or_id: &str) -> Result<ImageSnapshotSource, ImageError> {
        let snapshot = find_snapshot(&image, name_or_id)?;
        Ok(ImageSnapshotSource { image, snapshot })
    }

    /// The snapshot this source reads.
    pub fn snapshot(&self) -> &SnapshotInfo {
        &self.snapshot
    }
}

/// Resolve a snapshot by id first (ids are unique), then by name (must be unambiguous).
fn find_snapshot(image: &Image, name_or_id: &str) -> Result<SnapshotInfo, ImageError> {
    let all = image.snapshots();
    if let Some(s) = all.iter().find(|s| s.id == name_or_id) {
        return Ok(s.clone());
    }
    let mut named = all.into_iter().filter(|s| s.name == name_or_id);
    match (named.next(), named.next()) {
        (Some(s), None) => Ok(s),
        (Some(_), Some(_)) => Err(ImageError::InvalidArgument {
            path: image.info().path.into(),
            reason: format!("snapshot name {name_or_id:?} is ambiguous: use its id"),
        }),
        (None, _) => Err(ImageError::NoSuchSnapshot {
            path: image.info().path.into(),
            name: name_or_id.to_string(),
        }),
    }
}

/// The identity a manifest records for an internal snapshot.
pub fn identity_of(s: &SnapshotInfo) -> BaseIdentity {
    let date = OffsetDateTime::from_unix_timestamp(i64::from(s.date_sec))
        .ok()
        .and_then(|t| t.replace_nanosecond(s.date_nsec).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{}.{:09}", s.date_sec, s.date_nsec));
    BaseIdentity {
        name: s.name.clone(),
        id: s.id.clone(),
        date,
        vm_clock_ns: s.vm_clock_nsec,
        l1_digest: s.l1_digest.clone(),
    }
}

fn io_error(e: ImageError) -> std::io::Error {
    std::io::Error::other(e)
}

impl BlockSource for ImageSnapshotSource {
    fn size(&self) -> u64 {
        self.snapshot.disk_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.image
            .read_snapshot_at(&self.snapshot.id, buf, offset)
            .map_err(io_error)
    }

    fn changed_since(&self, base: &BaseIdentity) -> Option<Vec<SourceRange>> {
        let old = self
            .image
            .snapshots()
            .into_iter()
            .find(|s| identity_of(s) == *base)?;
        let ranges = self
            .image
            .changed_ranges(&old.id, Some(&self.snapshot.id))
            .inspect_err(|e| tracing::warn!("changed ranges unavailable, full read: {e}"))
            .ok()?;
        Some(
            ranges
                .into_iter()
                .map(|r| SourceRange {
                    offset: r.offset,
                    length: r.length,
                    zero: r.zero,
                })
                .collect(),
        )
    }

    fn identity(&self) -> Option<BaseIdentity> {
        Some(identity_of(&self.snapshot))
    }

    /// An internal snapshot is immutable while it exists; its identity (name, id, date,
    /// VM clock, L1 digest) names its content.
    fn resume_token(&self) -> Option<String> {
        resume_token_of(&self.snapshot)
    }

    /// The snapshot must still be in the table on disk with the same identity (id, name,
    /// date, VM clock, L1 digest): a snapshot deleted while it was read may have had its
    /// clusters reused by the writer, and a deletion cannot be undone, so finding it
    /// unchanged now proves it existed throughout the read. Identity, not id alone: QEMU
    /// gives a new snapshot the highest free id, which may be a deleted one's.
    fn verify_unchanged(&self) -> crate::Result<()> {
        let want = identity_of(&self.snapshot);
        let changed = |reason: &str| ImageError::SnapshotChanged {
            path: self.image.info().path.into(),
            name: self.snapshot.name.clone(),
            reason: reason.to_string(),
        };
        let now = self.image.snapshots_on_disk()?;
        match now.iter().find(|s| s.id == self.snapshot.id) {
            Some(s) if identity_of(s) == want => Ok(()),
            Some(_) => Err(changed("its id now names a different snapshot").into()),
            None => Err(changed("it is no longer in the snapshot table").into()),
        }
    }

    fn allocated(&self) -> Option<Vec<SourceRange>> {
        let extents = self
            .image
            .extents(Some(&self.snapshot.id), 0, self.snapshot.disk_size)
            .inspect_err(|e| tracing::warn!("allocation map unavailable, full read: {e}"))
            .ok()?;
        Some(
            extents
                .into_iter()
                .filter(|e| e.kind == ExtentKind::Data)
                .map(|e| SourceRange {
                    offset: e.offset,
                    length: e.length,
                    zero: false,
                })
                .collect(),
        )
    }
}

/// Back up an image Island may write: snapshot it as `island-<id>`, upload what changed
/// since the base the repository recorded, commit, then drop the snapshots Island can
/// prove it made and no longer needs.
///
/// Which internal snapshots Island deletes (format-spec/image.md, "Snapshot ownership"):
/// only (a) one whose full identity (name, id, date, VM clock, L1 digest) is the `base`
/// a committed snapshot of this volume recorded, (b) one a checkpoint of a killed run of
/// this volume names (its resume token), and (c) the one this run created, if the run
/// fails. A name starting with `island-` proves nothing: a user may make one.
///
/// Crash ordering: the new internal snapshot is durable before any upload; old bases are
/// deleted only after the repository commit, so a crash at any point leaves the base of
/// the next increment in place. A re-run after a kill whose checkpoint names the
/// orphaned snapshot backs that snapshot up instead of taking a new one (resume) only if
/// the image was not written since it was taken: the commit is dated now, so it must
/// hold the image as it is now. Otherwise the stale snapshot is deleted and a new one
/// taken; the killed run's uploads are still adopted, only the read is repeated.
pub async fn backup_image(
    repo: &Repository,
    path: &Path,
    opts: &BackupOptions,
) -> Result<BackupReport> {
    let image = Arc::new(Image::open(path, OpenMode::ReadWrite)?);
    let id = crate::repo::format::ids::new_time_id();
    let name = format!("{SNAPSHOT_PREFIX}{id}");
    let owned = Owned::load(repo, &opts.volume).await?;
    let (snap, created) = match resumable_snapshot(&owned, &image)? {
        Some(s) => (s, false),
        None => (image.create_snapshot(&name)?, true),
    };
    let source = Arc::new(ImageSnapshotSource {
        image: image.clone(),
        snapshot: snap.clone(),
    });
    let mut run = opts.clone();
    run.id = Some(id);
    let result = backup(repo, source, &run).await;
    match &result {
        Ok(_) => {
            for old in image.snapshots() {
                if old.id != snap.id && owned.is_base(&old) {
                    image.delete_snapshot(&old.id)?;
                }
            }
        }
        Err(_) if created => {
            if let Err(e) = image.delete_snapshot(&snap.id) {
                tracing::warn!("could not drop {name} after a failed backup: {e}");
            }
        }
        // A snapshot a killed run left stays for the next re-run to resume.
        Err(_) => {}
    }
    close_if_last(image)?;
    result
}

/// What proves an internal snapshot is Island's: the base identities the volume's
/// committed snapshots recorded, and the resume tokens its killed runs' checkpoints hold.
struct Owned {
    bases: Vec<BaseIdentity>,
    tokens: Vec<String>,
}

impl Owned {
    async fn load(repo: &Repository, volume: &str) -> Result<Owned> {
        crate::repo::repository::check_volume(volume)?;
        let markers = repo.load_markers().await?;
        let bases = repo
            .live_roots(&markers, Some(volume))
            .iter()
            .filter_map(|m| m.base.clone())
            .collect();
        let tokens = crate::repo::snapshot_writer::resume_tokens(repo, volume).await?;
        Ok(Owned { bases, tokens })
    }

    fn is_base(&self, s: &SnapshotInfo) -> bool {
        let id = identity_of(s);
        self.bases.contains(&id)
    }

    fn checkpointed(&self, s: &SnapshotInfo) -> bool {
        resume_token_of(s).is_some_and(|t| self.tokens.contains(&t))
    }
}

/// The snapshot of a killed run of this volume to resume (format-spec §12): the newest
/// one a checkpoint names, if the active layer is still exactly that snapshot (same size,
/// no pointer-table difference: nothing was written since). Stale ones (written since,
/// or older) are deleted: a checkpoint proves Island made them, no commit records them.
fn resumable_snapshot(owned: &Owned, image: &Image) -> Result<Option<SnapshotInfo>> {
    let killed: Vec<SnapshotInfo> = image
        .snapshots()
        .into_iter()
        .filter(|s| owned.checkpointed(s) && !owned.is_base(s))
        .collect();
    let current = match killed.last() {
        Some(s) if s.disk_size == image.size() => image.changed_ranges(&s.id, None)?.is_empty(),
        _ => false,
    };
    let keep = if current {
        killed.last().cloned()
    } else {
        None
    };
    for s in &killed {
        if keep.as_ref().is_none_or(|k| k.id != s.id) {
            tracing::info!(
                "deleting {} ({}): a killed backup's snapshot, written since; taking a new one",
                s.name,
                s.id
            );
            image.delete_snapshot(&s.id)?;
        }
    }
    Ok(keep)
}

fn resume_token_of(s: &SnapshotInfo) -> Option<String> {
    serde_json::to_string(&identity_of(s))
        .ok()
        .map(|j| format!("qcow2-snapshot:{j}"))
}

/// Close the image if this was the last handle (flushes and releases its locks).
fn close_if_last(image: Arc<Image>) -> Result<(), ImageError> {
    match Arc::try_unwrap(image) {
        Ok(image) => image.close(),
        Err(_) => Ok(()),
    }
}

/// Back up an existing internal snapshot without writing to the image (shared read-only
/// open, so a running VM keeps its image). The caller deletes old snapshots.
pub async fn backup_image_snapshot(
    repo: &Repository,
    path: &Path,
    snapshot: &str,
    opts: &BackupOptions,
) -> Result<BackupReport> {
    let image = Arc::new(Image::open(path, OpenMode::ReadOnlyShared)?);
    let source = Arc::new(ImageSnapshotSource::new(image, snapshot)?);
    backup(repo, source, opts).await
}

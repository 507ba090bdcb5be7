//! Deleting a snapshot: refcount decrements that recurse only into blobs reaching zero, so
//! the cost is proportional to what the snapshot held exclusively. The same walk, without
//! a writer, computes `exclusive_bytes` for listings.
//!
//! Crash ordering: lease → view → refs segment (decrements + freed flags) → tombstone
//! (create-if-absent, the commit point). Without the tombstone the segment is ignored.
//! Tombstones are numbered per attempt (`<id>`, `<id>.1`, …): a void (fenced) one never
//! blocks a later delete, and at most one generation of a snapshot is non-void
//! (format-spec §6).

use crate::repo::format::ids::{new_time_id, now_rfc3339};
use crate::repo::format::manifest::{tombstone_key_gen, SnapshotManifest, Tombstone};
use crate::repo::protocol::lease::Lease;
use crate::repo::protocol::verdict::ensure_not_fenced;
use crate::repo::repository::{check_names, SegmentSet};
use crate::repo::walk::{delete_walk, walk_bytes, DeleteWalk};
use crate::repo::writer::Writer;
use crate::repo::{create_exclusive, Progress, RepoError, Repository};
use crate::store::{PutOutcome, StoreErrorKind};
use crate::Result;
use bytes::Bytes;
use rand::Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What a delete did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DeleteReport {
    /// Volume of the deleted snapshot.
    pub volume: String,
    /// Id of the deleted snapshot.
    pub id: String,
    /// Blobs (chunks and tables) whose count reached zero; gc reclaims their space.
    pub freed_blobs: u64,
    /// Plain bytes of freed chunks.
    pub freed_bytes: u64,
    /// Store requests of every kind this delete made (retries of the attempt included).
    pub requests: u64,
    /// Bytes uploaded to the store (refs segment, tombstone, lease).
    pub bytes_uploaded: u64,
    /// Freed tables that could not be read ([`Repository::delete_damaged_snapshot`]):
    /// their subtrees stay counted, a leak for `check --repair`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tables_unreadable: u64,
    /// The root itself could not be read (damaged body): the tombstone was written and
    /// nothing was released, since what the snapshot referenced is unknown. Everything it
    /// held stays counted: a leak (format-spec §6, "Deleting a damaged root"), never a loss.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub root_unreadable: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How one delete attempt ended.
enum Attempt {
    Deleted(DeleteWalk),
    /// A concurrent delete created the same tombstone generation first, and that tombstone
    /// is void: the snapshot is still there and the next attempt numbers past it.
    LostToVoid,
    /// A gc committed during the walk and some of its reads followed it to a newer view
    /// (`follow.rs`): the counts came from two views, so the next attempt walks one.
    LostToGc,
}

/// Attempts of one delete. Each retry follows a concurrent delete whose tombstone was
/// void (a deleter stalled past its lease: rare), so a few attempts with growing pauses
/// outlast any burst of them; past that the delete fails as temporary
/// ([`RepoError::DeleteContended`]), never as a lease problem of its own.
const DELETE_ATTEMPTS: u32 = 5;
/// Pause before the first retry; it doubles for each later one (half of it jittered), so
/// deleters that lost together spread out: at most ~0.75 s in all.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The pause before retry `n` (1-based).
fn retry_pause(n: u32) -> Duration {
    let full = RETRY_PAUSE * (1 << (n - 1).min(8));
    let half = full / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// Progress of one delete over its attempts. Every attempt walks the whole snapshot again;
/// only what goes past the furthest attempt so far is passed on, so a stage counts each
/// snapshot once however many attempts its delete took.
pub(crate) struct AttemptProgress<'a> {
    inner: Option<&'a dyn Progress>,
    /// Advanced by the current attempt.
    attempt: AtomicU64,
    /// Passed on to `inner` so far.
    passed: AtomicU64,
}

impl<'a> AttemptProgress<'a> {
    pub(crate) fn new(inner: Option<&'a dyn Progress>) -> Self {
        AttemptProgress {
            inner,
            attempt: AtomicU64::new(0),
            passed: AtomicU64::new(0),
        }
    }

    fn new_attempt(&self) {
        self.attempt.store(0, Ordering::Relaxed);
    }

    /// Pass on what is left of `total` (a delete that ended without finishing its walk).
    pub(crate) fn top_up(&self, total: u64) {
        let before = self.passed.fetch_max(total, Ordering::Relaxed);
        if let (Some(p), true) = (self.inner, total > before) {
            p.advance(total - before);
        }
    }
}

impl Progress for AttemptProgress<'_> {
    fn stage(&self, name: &str, total: u64) {
        if let Some(p) = self.inner {
            p.stage(name, total);
        }
    }

    fn advance(&self, n: u64) {
        let done = self.attempt.fetch_add(n, Ordering::Relaxed) + n;
        self.top_up(done);
    }
}

/// How a delete runs: passed once from the public entry points down to each attempt.
#[derive(Clone, Copy, Default)]
pub struct DeleteOptions<'a> {
    /// Told of the delete walk in logical bytes of the snapshot's volume (whole chunks): a
    /// subtree other snapshots still hold counts at once.
    pub progress: Option<&'a dyn Progress>,
    /// Advance a stage the caller started (forget's, over all the snapshots it removes)
    /// instead of starting stage `delete`.
    pub in_callers_stage: bool,
    /// Leave the subtree of a freed table that cannot be read (a damaged snapshot) as a
    /// leak instead of failing the delete; see [`Repository::delete_damaged_snapshot`].
    pub tolerate_unreadable: bool,
}

impl Repository {
    /// Delete a snapshot: its exclusive blobs become garbage that `gc` reclaims.
    pub async fn delete_snapshot(&self, volume: &str, id: &str) -> Result<DeleteReport> {
        self.delete_snapshot_with(volume, id, DeleteOptions::default())
            .await
    }

    /// Delete a damaged snapshot whose tables may be missing or corrupt (the fallback of
    /// the service's `mend`): what can be read is released as by
    /// [`Repository::delete_snapshot`]; the subtree of an unreadable table keeps its
    /// counts (a leak `check --repair` reclaims) instead of failing the delete.
    pub async fn delete_damaged_snapshot(&self, volume: &str, id: &str) -> Result<DeleteReport> {
        let opts = DeleteOptions {
            tolerate_unreadable: true,
            ..Default::default()
        };
        self.delete_snapshot_with(volume, id, opts).await
    }

    /// Delete a snapshot as `opts` says (progress, whose stage, damaged tables).
    pub async fn delete_snapshot_with(
        &self,
        volume: &str,
        id: &str,
        opts: DeleteOptions<'_>,
    ) -> Result<DeleteReport> {
        check_names(volume, id)?;
        let before = self.counts();
        let tracked = AttemptProgress::new(opts.progress);
        let mut each = DeleteOptions {
            progress: Some(&tracked),
            ..opts
        };
        for attempt in 0..DELETE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(retry_pause(attempt)).await;
                // The first attempt started the stage; later ones advance it.
                each.in_callers_stage = true;
            }
            tracked.new_attempt();
            if let Attempt::Deleted(walk) = self.delete_attempt(volume, id, &each).await? {
                let used = self.counts().since(&before);
                return Ok(DeleteReport {
                    volume: volume.into(),
                    id: id.into(),
                    freed_blobs: walk.freed_blobs,
                    freed_bytes: walk.freed_bytes,
                    requests: used.total(),
                    bytes_uploaded: used.bytes_uploaded,
                    tables_unreadable: walk.tables_unreadable,
                    root_unreadable: walk.root_unreadable,
                });
            }
        }
        Err(RepoError::DeleteContended {
            volume: volume.into(),
            id: id.into(),
            attempts: DELETE_ATTEMPTS,
        }
        .into())
    }

    /// One delete with its own lease, view and tombstone generation (format-spec §6,
    /// "Tombstone generations").
    async fn delete_attempt(
        &self,
        volume: &str,
        id: &str,
        opts: &DeleteOptions<'_>,
    ) -> Result<Attempt> {
        // Lease before view (format-spec §5): a gc that commits after the view was listed
        // counts this lease as live, so its cutoff is before this delete's start and it
        // cannot have acted on a view older than ours.
        let holder = new_time_id();
        let lease = Lease::acquire(self.store().clone(), &holder, "delete", Some(volume)).await?;
        let viewed: Result<(SegmentSet, String, Option<SnapshotManifest>)> = async {
            let set = self.load_segments().await?;
            self.judge_markers(&set.markers, &holder).await?;
            if set.markers.is_deleted(volume, id) {
                return Err(RepoError::SnapshotNotFound {
                    volume: volume.into(),
                    id: id.into(),
                }
                .into());
            }
            // Void tombstones of earlier attempts keep their keys: number past them.
            let gen = set.markers.next_tombstone_gen(volume, id);
            // A root whose body fails its checks (the view holds it as a damaged commit):
            // what it references is unknown, so nothing is released (walk skipped).
            let m = match self.read_root(volume, id).await {
                Ok(m) => Some(m),
                Err(e)
                    if crate::repo::error::is_damage(&e)
                        && (set.markers.damaged_commits)
                            .contains(&crate::repo::format::manifest::root_key(volume, id)) =>
                {
                    tracing::warn!(
                        "delete of {volume}/{id}: root unreadable, nothing released (a leak): {e}"
                    );
                    None
                }
                Err(e) => return Err(e),
            };
            Ok((set, tombstone_key_gen(volume, id, gen), m))
        }
        .await;
        let (set, tkey, m) = match viewed {
            Ok(v) => v,
            Err(e) => {
                // Nothing written yet: the lease is all there is to remove.
                lease.release().await;
                return Err(e);
            }
        };
        if let Some(p) = opts.progress.filter(|_| !opts.in_callers_stage) {
            p.stage("delete", m.as_ref().map_or(0, walk_bytes));
        }
        let mut w = Writer::new(self, lease.clone(), tkey.clone(), "delete");
        let result: Result<Attempt> = async {
            let walk = match &m {
                Some(m) => {
                    delete_walk(
                        self,
                        &set,
                        m,
                        Some(&mut w),
                        &mut HashMap::new(),
                        opts.progress,
                        opts.tolerate_unreadable,
                    )
                    .await?
                }
                None => DeleteWalk {
                    root_unreadable: true,
                    ..DeleteWalk::default()
                },
            };
            if set.followed() {
                return Ok(Attempt::LostToGc);
            }
            w.flush().await?;
            let lease_time = lease.check_before_commit().await?;
            let t = Tombstone {
                volume: volume.into(),
                id: id.into(),
                deleted: now_rfc3339(),
                holder: holder.clone(),
                lease_time_ms: lease_time,
            };
            match create_exclusive(self.store().as_ref(), &tkey, Bytes::from(t.encode())).await? {
                PutOutcome::Created => {
                    ensure_not_fenced(self.store().as_ref(), &tkey, &holder, lease_time).await?;
                    Ok(Attempt::Deleted(walk))
                }
                PutOutcome::AlreadyExists if self.tombstone_is_void(&tkey).await? => {
                    Ok(Attempt::LostToVoid)
                }
                PutOutcome::AlreadyExists => Err(RepoError::SnapshotNotFound {
                    volume: volume.into(),
                    id: id.into(),
                }
                .into()),
            }
        }
        .await;
        // On failure the lease is left to expire so gc can tell this holder is dead and
        // reclaim its uncommitted segments.
        let outcome = result?;
        if matches!(outcome, Attempt::Deleted(_)) {
            w.finish().await;
        }
        Ok(outcome)
    }

    /// Is the tombstone at `key` fenced (or gone: a gc removed it with its root)?
    async fn tombstone_is_void(&self, key: &str) -> Result<bool> {
        let meta = match self.store().head(key).await {
            Ok(meta) => meta,
            Err(e) if e.kind() == StoreErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        Ok(match self.get_opt(key).await? {
            Some(bytes) => {
                let t = Tombstone::decode(key, &bytes)?;
                self.marker_void(&meta, &t.holder, t.lease_time_ms).await?
            }
            None => false,
        })
    }
}

//! Issue 20's additions to the schedule runner: pauses inside a create and copies of the
//! whole repository with every store time reset.
//!
//! * *Pause inside a create*: in some schedules one create-if-absent of a commit marker
//!   (root, tombstone, gc marker) stalls between the writer's request and the key becoming
//!   visible for longer than `LEASE_TTL + SKEW`; the store dates the object when it becomes
//!   visible (store requirement R3), so a gc running meanwhile may judge the writer dead
//!   and the marker must then be void.
//! * *Copy oracle*: right after the schedule, the repository is copied as `cp -r` or
//!   `aws s3 sync` would copy it (every object re-stamped, `MemStore::copy_with_reset_times`).
//!   On the copy, gc runs (if it refuses as a copy — a marker without a verdict looks void
//!   — `adopt_copy` is run first, as an operator would), then repair; then every backup
//!   that reported success and was not deleted restores bit-exact from the copy.

use super::actors::{log, Log, SharedLog};
use super::{restored, Outcome};
use crate::repo::protocol::lease::{LEASE_TTL, SKEW};
use crate::repo::tests::testing::{CreateHook, MemStore};
use crate::repo::{RepoError, Repository};
use rand::rngs::StdRng;
use rand::Rng;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counters of the additions, printed with the runner's totals.
#[derive(Default, Debug)]
pub(super) struct CopyTotals {
    /// Schedules with a create paused past `LEASE_TTL + SKEW` that happened.
    pub paused_creates: u64,
    /// Copies that refused destruction until adopted (a marker without a verdict).
    pub copies_adopted: u64,
    /// Snapshots restored from copies.
    pub restored_from_copies: u64,
}

/// In one schedule in four, stalls the `n`-th marker create (n random) of the schedule.
pub(super) fn maybe_pause_in_create(mem: &MemStore, shared: &SharedLog, rng: &mut StdRng) {
    if rng.random_range(0..4) != 0 {
        return;
    }
    let left = Arc::new(AtomicI64::new(rng.random_range(0..6)));
    let shared = shared.clone();
    let hook = move |m: &MemStore, key: &str| {
        let marker = ["snapshots/", "tombstones/", "gc/"]
            .iter()
            .any(|p| key.starts_with(p));
        if marker && left.fetch_sub(1, Ordering::SeqCst) == 0 {
            let mut l = log(&shared);
            l.leases_expired = true;
            l.paused_creates += 1;
            l.events
                .push(format!("create of {key} paused for TTL + SKEW + 1 min"));
            m.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
        }
    };
    *mem.before_create.lock().unwrap() = CreateHook(Some(Arc::new(hook)));
}

/// The copy oracle (module docs) on `copy`, taken right after the schedule.
pub(super) async fn verify_copy(
    copy: Arc<MemStore>,
    l: &Log,
    dir: &Path,
    totals: &mut CopyTotals,
) -> Outcome {
    copy.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    let repo = Repository::open(copy.clone())
        .await
        .map_err(|e| format!("copy: open: {e}"))?;
    match repo.gc().await {
        Ok(_) => {}
        Err(crate::Error::Repo(RepoError::CopiedRepository { .. })) => {
            totals.copies_adopted += 1;
            repo.adopt_copy()
                .await
                .map_err(|e| format!("copy: adopt: {e}"))?;
            repo.gc()
                .await
                .map_err(|e| format!("copy: gc after adopting: {e}"))?;
        }
        Err(e) => return Err(format!("copy: gc: {e}")),
    }
    repo.repair()
        .await
        .map_err(|e| format!("copy: repair: {e}"))?;
    copy.advance(LEASE_TTL + SKEW);
    repo.gc()
        .await
        .map_err(|e| format!("copy: second gc: {e}"))?;
    let listed = repo
        .snapshots(None)
        .await
        .map_err(|e| format!("copy: snapshots: {e}"))?;
    let out = dir.join("copy-restore.raw");
    for s in &l.successes {
        let key = (s.volume.clone(), s.id.clone());
        let is_listed = listed.iter().any(|x| x.volume == s.volume && x.id == s.id);
        if l.deleted.contains(&key) || (l.maybe_deleted.contains(&key) && !is_listed) {
            continue;
        }
        ensure!(
            is_listed,
            "copy: backup {}/{} reported success but is not listed in the copy",
            s.volume,
            s.id
        );
        let got = restored(&repo, &s.volume, &s.id, &out).await?;
        ensure!(
            got == *s.data,
            "copy: {}/{} does not restore bit-exact",
            s.volume,
            s.id
        );
        totals.restored_from_copies += 1;
    }
    Ok(())
}

//! Deletes that lose tombstone races (the racer is a [`MemStore::before_create`] hook):
//! to void tombstones (a deleter stalled past its lease) they retry with a pause and, past
//! the bound, fail with a temporary error naming the snapshot; their progress, and
//! forget's, counts each snapshot once.

use super::testing::{back_up_pattern, mem_repo, CreateHook, MemStore};
use crate::repo::format::ids::now_rfc3339;
use crate::repo::format::manifest::{tombstone_key_gen, Tombstone};
use crate::repo::ops::delete::DeleteOptions;
use crate::repo::protocol::lease::unix_ms;
use crate::repo::{CheckOptions, ForgetOptions, ForgetPolicy, Progress, RepoError};
use bytes::Bytes;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

const MIB: usize = 1 << 20;

/// Another deleter that always creates a tombstone first: right before each tombstone
/// create-if-absent on `mem` (up to `losses` of them) it puts one at that key, void
/// (`lease_time_ms` 0: renewed long before its store time) or valid.
fn racer(mem: &MemStore, volume: &str, id: &str, losses: u32, void: bool) {
    let (volume, id) = (volume.to_string(), id.to_string());
    let left = AtomicU32::new(losses);
    let hook = move |m: &MemStore, key: &str| {
        let n = left.load(Ordering::SeqCst);
        if !key.starts_with("tombstones/") || n == 0 {
            return;
        }
        left.store(n - 1, Ordering::SeqCst);
        let holder = crate::repo::format::ids::new_time_id();
        let t = Tombstone {
            volume: volume.clone(),
            id: id.clone(),
            deleted: now_rfc3339(),
            holder: holder.clone(),
            lease_time_ms: if void { 0 } else { unix_ms(SystemTime::now()) },
        };
        let body = (Bytes::from(t.encode()), SystemTime::now());
        let mut objects = m.objects.lock().unwrap();
        let old = objects.insert(key.to_string(), body);
        assert!(old.is_none(), "{key} existed");
        if void {
            // A fenced deleter records its own verdict "void" (format-spec §6 "Verdicts");
            // without it a marker dated before the repository's config looks copied.
            let verdict = crate::repo::protocol::verdict::void_verdict_key(key, &holder);
            objects.insert(verdict, (Bytes::new(), SystemTime::now()));
        }
    };
    *mem.before_create.lock().unwrap() = CreateHook(Some(Arc::new(hook)));
}

/// Stages started and units advanced.
#[derive(Default)]
struct Recorder {
    stages: Mutex<Vec<(String, u64)>>,
    advanced: Mutex<u64>,
}

impl Progress for Recorder {
    fn stage(&self, name: &str, total: u64) {
        self.stages.lock().unwrap().push((name.into(), total));
    }
    fn advance(&self, n: u64) {
        *self.advanced.lock().unwrap() += n;
    }
}

fn tombstones(volume: &str, id: &str, gens: u64) -> Vec<String> {
    let mut keys: Vec<String> = (0..gens)
        .map(|g| tombstone_key_gen(volume, id, g))
        .collect();
    keys.sort();
    keys
}

/// Losing every attempt to a void tombstone is not a lease problem of this deleter: the
/// delete fails with `DeleteContended` naming the snapshot, marked temporary, deleting
/// nothing; a retry once the racers are gone deletes it, and the repository checks clean.
#[tokio::test]
async fn losing_every_attempt_to_void_tombstones_is_a_temporary_error() {
    let (mem, repo) = mem_repo(65536).await;
    let id = back_up_pattern(&repo, "a", 1, MIB).await;
    racer(&mem, "a", &id, u32::MAX, true);
    let err = repo.delete_snapshot("a", &id).await.unwrap_err();
    let crate::Error::Repo(e @ RepoError::DeleteContended { .. }) = &err else {
        panic!("expected DeleteContended, got {err:?}");
    };
    assert!(e.is_temporary(), "{e}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("a/{id}")) && text.contains("temporary"),
        "{text}"
    );
    assert_eq!(mem.keys("tombstones/"), tombstones("a", &id, 5));
    assert_eq!(repo.snapshots(Some("a")).await.unwrap().len(), 1, "kept");
    *mem.before_create.lock().unwrap() = CreateHook(None);

    let d = repo.delete_snapshot("a", &id).await.expect("no racer now");
    assert!(d.freed_blobs > 0);
    assert_eq!(mem.keys("tombstones/"), tombstones("a", &id, 6));
    assert!(repo.snapshots(Some("a")).await.unwrap().is_empty());
    let c = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(c.is_clean(), "{c:?}");
}

/// Two lost attempts, then the third wins: one `delete` stage whose advances add up to its
/// total exactly (each attempt walks the whole snapshot; only the furthest counts).
#[tokio::test]
async fn a_delete_that_retries_reports_its_walk_once() {
    let (mem, repo) = mem_repo(65536).await;
    let id = back_up_pattern(&repo, "a", 2, 3 * MIB).await;
    back_up_pattern(&repo, "b", 3, MIB).await;
    racer(&mem, "a", &id, 2, true);
    let rec = Recorder::default();
    let opts = DeleteOptions {
        progress: Some(&rec),
        ..Default::default()
    };
    repo.delete_snapshot_with("a", &id, opts).await.unwrap();
    assert_eq!(mem.keys("tombstones/"), tombstones("a", &id, 3));
    let stages = rec.stages.lock().unwrap().clone();
    assert_eq!(stages, vec![("delete".to_string(), 3 * MIB as u64)]);
    assert_eq!(*rec.advanced.lock().unwrap(), 3 * MIB as u64);
}

/// forget's one stage counts every removed snapshot once, whether its delete retried after
/// a void tombstone or lost to a valid concurrent delete after walking (it then finds the
/// snapshot gone and adds only the rest of its bytes).
#[tokio::test]
async fn forget_progress_counts_a_snapshot_once_when_its_delete_loses_a_race() {
    for void in [true, false] {
        let (mem, repo) = mem_repo(65536).await;
        let old = back_up_pattern(&repo, "a", 4, 2 * MIB).await;
        back_up_pattern(&repo, "a", 5, 2 * MIB).await;
        racer(&mem, "a", &old, 1, void);
        let rec = Recorder::default();
        let opts = ForgetOptions {
            volume: None,
            policy: ForgetPolicy {
                keep_last: 1,
                ..Default::default()
            },
            dry_run: false,
        };
        let r = repo.forget_with_progress(&opts, Some(&rec)).await.unwrap();
        assert_eq!(r.removed.len(), 1, "void {void}: {r:?}");
        let stages = rec.stages.lock().unwrap().clone();
        assert_eq!(stages, vec![("forget".to_string(), 2 * MIB as u64)]);
        assert_eq!(*rec.advanced.lock().unwrap(), 2 * MIB as u64, "void {void}");
        assert_eq!(repo.snapshots(Some("a")).await.unwrap().len(), 1);
    }
}

//! Deterministic regression tests for what the schedule runner found.

use super::actors::{VersionSource, CS};
use super::fixtures::{
    assert_clean_and_nothing_to_repair, assert_nothing_to_repair, back_up,
    backup_paused_before_root, opts, packs_of, random, restored, setup,
};
use crate::backup::backup;
use crate::repo::protocol::lease::{LEASE_TTL, SKEW};
use crate::repo::tests::testing::MemStore;
use crate::repo::{CheckOptions, Repository};
use crate::store::faults::{FaultConfig, FaultOp, FaultStore};
use crate::store::{ObjectStore, PutOutcome, StoreError};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// A gc that committed but died before deleting its dead packs: the next gc must delete
/// them, even when it compacts (compaction drops the superseded segments' dead-pack lists).
#[tokio::test]
async fn dead_packs_of_an_interrupted_gc_are_deleted_by_a_compacting_gc() {
    let (mem, repo) = setup().await;
    let gone = back_up(&repo, "a", random(1, 8)).await;
    repo.delete_snapshot("a", &gone).await.unwrap();
    mem.advance(SKEW * 2);
    let no_deletes = FaultStore::new(
        mem.clone(),
        FaultConfig {
            error_probability: 1.0,
            ops: vec![FaultOp::DeleteBatch],
            ..FaultConfig::default()
        },
    );
    let faulty = Repository::open(Arc::new(no_deletes)).await.unwrap();
    assert!(faulty.gc().await.is_err(), "the batch delete fails");
    assert!(!mem.keys("gc/").is_empty(), "the gc committed");
    assert!(!packs_of(&mem, &gone).is_empty(), "its dead packs are left");
    // Enough commits that the next gc compacts the index.
    for seed in 2..8 {
        back_up(&repo, "b", random(seed, 4)).await;
    }
    let g = repo.gc().await.unwrap();
    assert!(g.segments_compacted > 0);
    assert_eq!(packs_of(&mem, &gone), Vec::<String>::new());
    assert_nothing_to_repair(&repo).await;
}

/// A blob freed and stored again before gc ran has two copies; once compaction keeps only
/// the newer location, the pack of the older copy is unreachable and must be deleted.
#[tokio::test]
async fn a_pack_shadowed_by_newer_copies_is_deleted_at_compaction() {
    let (mem, repo) = setup().await;
    let data = random(1, 8);
    let old = back_up(&repo, "a", data.clone()).await;
    repo.delete_snapshot("a", &old).await.unwrap();
    // The delete is recent: its blobs are not collected, and b stores them again.
    back_up(&repo, "b", data.clone()).await;
    for seed in 2..6 {
        back_up(&repo, "c", random(seed, 4)).await;
    }
    let g = repo.gc().await.unwrap();
    assert!(g.segments_compacted > 0);
    assert_eq!(packs_of(&mem, &old), Vec::<String>::new());
    assert_clean_and_nothing_to_repair(&repo).await;
}

/// A store whose clock jumps past `LEASE_TTL` right before the creation of a commit marker
/// under `prefix`: the writer stalled between its pre-commit renewal and the marker.
#[derive(Debug)]
struct StallBeforeCommit {
    inner: Arc<MemStore>,
    prefix: &'static str,
}

#[async_trait::async_trait]
impl ObjectStore for StallBeforeCommit {
    crate::store::forward_descriptive_methods!();
    crate::store::forward_io_methods!(put);
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        if key.starts_with(self.prefix) {
            self.inner.advance(LEASE_TTL + Duration::from_secs(60));
        }
        self.inner.put_if_absent(key, data).await
    }
    crate::store::forward_io_methods!(get, get_range, head, list, delete, delete_batch);
}

/// A backup whose root is created more than `LEASE_TTL` after its last renewal must fail:
/// readers ignore that root, so reporting success would promise a snapshot that is not
/// there (found by the schedule runner).
#[tokio::test]
async fn a_backup_whose_root_is_fenced_fails() {
    let (mem, _) = setup().await;
    let stalled = Repository::open(Arc::new(StallBeforeCommit {
        inner: mem.clone(),
        prefix: "snapshots/",
    }))
    .await
    .unwrap();
    let err = backup(&stalled, VersionSource::fixed(random(1, 4)), &opts("a"))
        .await
        .expect_err("a fenced root is not a committed snapshot");
    assert!(err.to_string().contains("lease"), "{err}");
    assert!(stalled.snapshots(None).await.unwrap().is_empty());
}

/// A gc whose marker is fenced must not delete what it replaced, and must not block later
/// gc runs: they number their marker past the void one (found by the schedule runner).
#[tokio::test]
async fn a_fenced_gc_marker_deletes_nothing_and_does_not_block_the_next_gc() {
    let (mem, repo) = setup().await;
    let data = random(1, 8);
    let gone = back_up(&repo, "a", data.clone()).await;
    let kept = back_up(&repo, "b", data).await;
    repo.delete_snapshot("a", &gone).await.unwrap();
    mem.advance(SKEW * 2);
    let stalled = Repository::open(Arc::new(StallBeforeCommit {
        inner: mem.clone(),
        prefix: "gc/",
    }))
    .await
    .unwrap();
    assert!(stalled.gc().await.is_err(), "the gc marker is fenced");
    assert_eq!(mem.keys("gc/").len(), 1);
    let g = repo.gc().await.expect("the next gc is not blocked");
    assert_eq!(mem.keys("gc/").len(), 2);
    assert!(g.requests > 0);
    assert_eq!(restored(&repo, "b", &kept).await.unwrap().len(), 8 * CS);
    assert_nothing_to_repair(&repo).await;
}

/// A delete whose tombstone is fenced fails, and the snapshot stays readable: the listing
/// and `snapshot()` agree that a void tombstone deletes nothing (found by the schedule
/// runner: the listing showed the snapshot, restore refused it as deleted).
#[tokio::test]
async fn a_fenced_tombstone_deletes_nothing() {
    let (mem, repo) = setup().await;
    let id = back_up(&repo, "a", random(1, 4)).await;
    let stalled = Repository::open(Arc::new(StallBeforeCommit {
        inner: mem.clone(),
        prefix: "tombstones/",
    }))
    .await
    .unwrap();
    assert!(stalled.delete_snapshot("a", &id).await.is_err());
    assert_eq!(
        mem.keys("tombstones/").len(),
        1,
        "the void tombstone exists"
    );
    assert_eq!(repo.snapshots(None).await.unwrap().len(), 1);
    assert_eq!(repo.snapshot("a", &id).await.unwrap().id, id);
}

/// Backup S2 keeps its parent S1's table T while S1 is deleted (T freed, its children
/// released); S2 commits; then S2 is deleted before any gc revived T. That second delete
/// must not release T's children again (found by the schedule runner: counts went to −1
/// and below the references of live snapshots, a risk of collecting live chunks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_released_twice_does_not_release_its_children_twice() {
    let (mem, repo) = setup().await;
    let data = random(1, 8);
    let s1 = back_up(&repo, "a", data.clone()).await;
    let (paused, running) = backup_paused_before_root(&mem, "a", data.clone()).await;
    let d = repo.delete_snapshot("a", &s1).await.unwrap();
    assert!(d.freed_blobs > 0, "S1's table is freed");
    paused.resume.notify_one();
    let s2 = running.await.unwrap().unwrap();
    assert_eq!(s2.chunks_new, 0, "S2 kept S1's table");
    repo.delete_snapshot("a", &s2.id).await.unwrap();
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    repo.gc().await.unwrap();
    let c = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(c.is_clean(), "{:#?}", c.issues);
    assert_nothing_to_repair(&repo).await;
}

/// Three writers store the same new tables at once (none sees the others' uncommitted
/// segments): each table's children are counted three times on its behalf. A compaction
/// must keep that contribution exactly (it summarised 3 as 2), and deleting every snapshot
/// must release the children as often as they are counted (a delete released them once):
/// afterwards nothing is leaked, so gc frees every pack and repair has nothing to fix
/// (found by the schedule runner as leak-direction over-counts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_stored_by_concurrent_writers_are_released_exactly() {
    let (mem, repo) = setup().await;
    let data = random(7, 8);
    let (pa, ra) = backup_paused_before_root(&mem, "a", data.clone()).await;
    let (pb, rb) = backup_paused_before_root(&mem, "b", data.clone()).await;
    let c = back_up(&repo, "c", data.clone()).await;
    pa.resume.notify_one();
    pb.resume.notify_one();
    let a = ra.await.unwrap().unwrap();
    let b = rb.await.unwrap().unwrap();
    assert_eq!(
        a.chunks_new + b.chunks_new,
        16,
        "a and b stored every chunk"
    );
    let c_check = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(c_check.is_clean(), "{:#?}", c_check.issues);
    // Enough commits that gc compacts the refs segments holding the three STORED flags.
    let mut others = Vec::new();
    for seed in 10..14 {
        others.push(back_up(&repo, "d", random(seed, 2)).await);
    }
    let g = repo.gc().await.unwrap();
    assert!(g.segments_compacted > 0);
    let c_check = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(
        c_check.is_clean(),
        "after compaction: {:#?}",
        c_check.issues
    );
    for (volume, id) in [("a", &a.id), ("b", &b.id), ("c", &c)] {
        repo.delete_snapshot(volume, id).await.unwrap();
    }
    for id in &others {
        repo.delete_snapshot("d", id).await.unwrap();
    }
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    repo.gc().await.unwrap();
    assert_eq!(
        mem.keys("packs/"),
        Vec::<String>::new(),
        "every blob is garbage"
    );
    assert_nothing_to_repair(&repo).await;
}

/// A store that runs a whole gc (on the same memory store) the first time its user lists
/// `index/`: between the user's marker read and its segment listing, as a gc committing
/// concurrently does.
#[derive(Debug)]
struct GcBeforeListing {
    inner: Arc<MemStore>,
    fired: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl ObjectStore for GcBeforeListing {
    crate::store::forward_descriptive_methods!();
    crate::store::forward_io_methods!(put, put_if_absent, get, get_range, head);
    crate::store::forward_io_methods!(delete, delete_batch);
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::store::ObjectMeta>, StoreError> {
        use std::sync::atomic::Ordering;
        if prefix == "index/" && !self.fired.swap(true, Ordering::SeqCst) {
            let fail = |e: crate::Error| {
                StoreError::new(
                    crate::store::StoreErrorKind::Unexpected,
                    "list",
                    "test-mem://",
                    prefix,
                    format!("the racing gc: {e}"),
                )
            };
            let other = Repository::open(self.inner.clone()).await.map_err(fail)?;
            let g = other.gc().await.map_err(fail)?;
            if g.segments_compacted == 0 {
                return Err(fail(crate::Error::Repo(crate::repo::RepoError::Task(
                    "the racing gc did not compact".into(),
                ))));
            }
        }
        self.inner.list(prefix, start_after, limit).await
    }
}

/// A delete whose view is loaded while a compacting gc commits (after the delete read the
/// markers, before it listed the segments) saw neither the superseded segments (deleted)
/// nor the compacted one (its marker unknown): counts too low, so no blob reached zero and
/// the snapshot's exclusive data leaked (found by the schedule runner, seed 210174). The
/// view is now loaded again when a new gc marker appeared meanwhile.
#[tokio::test]
async fn a_delete_racing_a_compacting_gc_frees_what_it_held() {
    let (mem, repo) = setup().await;
    let gone = back_up(&repo, "a", random(21, 6)).await;
    for seed in 22..27 {
        back_up(&repo, "b", random(seed, 2)).await;
    }
    let racing = Repository::open(Arc::new(GcBeforeListing {
        inner: mem.clone(),
        fired: Default::default(),
    }))
    .await
    .unwrap();
    let d = racing.delete_snapshot("a", &gone).await.unwrap();
    assert!(d.freed_blobs >= 6, "its chunks are freed: {d:?}");
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    let g = repo.gc().await.unwrap();
    assert!(g.blobs_collected >= 6, "{g:?}");
    assert_nothing_to_repair(&repo).await;
}

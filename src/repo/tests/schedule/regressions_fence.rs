//! Deterministic regressions for fencing (issue 4): void tombstones must not make a
//! snapshot undeletable, gc must reclaim what zombie writers (judged dead, writing on)
//! leave, and a lease renewal must tell its own generation from someone else's.

use super::actors::VersionSource;
use super::fixtures::{assert_nothing_to_repair, back_up, keys_of, opts, random, setup};
use crate::backup::{backup, BackupReport};
use crate::repo::format::envelope::{self, MAGIC_LEASE};
use crate::repo::format::ids::new_time_id;
use crate::repo::format::manifest::{tombstone_key, tombstone_key_gen};
use crate::repo::protocol::lease::ADOPT_GENERATION;
use crate::repo::protocol::lease::{lease_key, Lease, LeaseBody, Renewal, LEASE_TTL, SKEW};
use crate::repo::protocol::stale::ORPHAN_SWEEP_PERIOD;
use crate::repo::tests::testing::MemStore;
use crate::repo::{RepoError, Repository};
use crate::store::faults::{FaultConfig, FaultOp, FaultStore};
use crate::store::{ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind};
use bytes::Bytes;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Put,
    PutIfAbsent,
    Head,
    DeleteBatch,
}

/// One hook: the first `op` on a key under `prefix` (for `DeleteBatch`: a batch holding
/// such a key) signals `reached`; with `pause` it then waits for `resume` before running,
/// with `crash` the store fails every request after it (a process killed right there).
struct Gate {
    op: Op,
    prefix: &'static str,
    after: bool,
    pause: bool,
    crash: bool,
    armed: AtomicBool,
    reached: Notify,
    resume: Notify,
}

impl Gate {
    fn new(op: Op, prefix: &'static str, after: bool, pause: bool, crash: bool) -> Arc<Gate> {
        Arc::new(Gate {
            op,
            prefix,
            after,
            pause,
            crash,
            armed: AtomicBool::new(true),
            reached: Notify::new(),
            resume: Notify::new(),
        })
    }
}

/// Wait until `g` fired; a bounded wait, so a build without the awaited behaviour fails
/// instead of hanging.
async fn reach(g: &Gate) {
    tokio::time::timeout(Duration::from_secs(20), g.reached.notified())
        .await
        .unwrap_or_else(|_| panic!("{:?} on {} never happened", g.op, g.prefix));
}

/// A host's view of the shared store, with [`Gate`]s.
struct Hooked {
    inner: Arc<MemStore>,
    gates: Vec<Arc<Gate>>,
    crashed: AtomicBool,
}

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooked")
    }
}

impl Hooked {
    fn new(inner: &Arc<MemStore>, gates: &[&Arc<Gate>]) -> Arc<Hooked> {
        Arc::new(Hooked {
            inner: inner.clone(),
            gates: gates.iter().map(|g| (*g).clone()).collect(),
            crashed: AtomicBool::new(false),
        })
    }

    async fn hook(&self, op: Op, keys: &[&str], after: bool) -> Result<(), StoreError> {
        if self.crashed.load(Ordering::SeqCst) {
            return Err(StoreError::new(
                StoreErrorKind::Unexpected,
                "hooked",
                "test-mem://",
                keys.first().copied().unwrap_or(""),
                "crashed",
            ));
        }
        for g in &self.gates {
            let hit = g.op == op
                && g.after == after
                && keys.iter().any(|k| k.starts_with(g.prefix))
                && g.armed.swap(false, Ordering::SeqCst);
            if hit {
                g.reached.notify_one();
                if g.pause {
                    g.resume.notified().await;
                }
                if g.crash {
                    self.crashed.store(true, Ordering::SeqCst);
                }
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for Hooked {
    crate::store::forward_descriptive_methods!();
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.hook(Op::Put, &[key], false).await?;
        self.inner.put(key, data).await?;
        self.hook(Op::Put, &[key], true).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        self.hook(Op::PutIfAbsent, &[key], false).await?;
        let o = self.inner.put_if_absent(key, data).await?;
        self.hook(Op::PutIfAbsent, &[key], true).await?;
        Ok(o)
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.hook(Op::Head, &[], false).await?;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.hook(Op::Head, &[], false).await?;
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.hook(Op::Head, &[key], false).await?;
        let m = self.inner.head(key).await;
        self.hook(Op::Head, &[key], true).await?;
        m
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        self.hook(Op::Head, &[], false).await?;
        self.inner.list(prefix, start_after, limit).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.hook(Op::DeleteBatch, &[key], false).await?;
        self.inner.delete(key).await
    }
    async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError> {
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.hook(Op::DeleteBatch, &refs, false).await?;
        self.inner.delete_batch(keys).await
    }
}

/// A store whose clock jumps past `LEASE_TTL` right before the first tombstone is
/// created: that delete stalled between its pre-commit renewal and its tombstone.
async fn stalled_delete(mem: &Arc<MemStore>, volume: &str, id: &str) -> crate::Error {
    let stall = Gate::new(Op::PutIfAbsent, "tombstones/", false, true, false);
    let store = Hooked::new(mem, &[&stall]);
    let stalled = Repository::open(store).await.unwrap();
    let (volume, id) = (volume.to_string(), id.to_string());
    let task = tokio::spawn(async move { stalled.delete_snapshot(&volume, &id).await });
    reach(&stall).await;
    mem.advance(LEASE_TTL + Duration::from_secs(60));
    stall.resume.notify_one();
    task.await.unwrap().expect_err("the tombstone is fenced")
}

/// Issue 4, defect 1: a fenced (void) tombstone at `tombstones/<v>/<id>` made the snapshot
/// undeletable. Now the next delete creates generation 1, readers treat the snapshot as
/// deleted, a third delete finds it deleted, and gc's compaction removes the root with
/// both generations. Generation 0 is the key older builds wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_tombstone_does_not_block_a_later_delete() {
    let (mem, repo) = setup().await;
    let id = back_up(&repo, "a", random(1, 8)).await;
    let kept = back_up(&repo, "b", random(2, 4)).await;
    let err = stalled_delete(&mem, "a", &id).await;
    assert!(err.to_string().contains("lease"), "{err}");
    assert_eq!(mem.keys("tombstones/"), vec![tombstone_key("a", &id)]);
    assert_eq!(tombstone_key("a", &id), format!("tombstones/a/{id}"));
    assert_eq!(repo.snapshots(Some("a")).await.unwrap().len(), 1);

    let d = repo
        .delete_snapshot("a", &id)
        .await
        .expect("a later delete");
    assert!(d.freed_blobs > 0);
    assert_eq!(
        mem.keys("tombstones/"),
        vec![tombstone_key("a", &id), tombstone_key_gen("a", &id, 1)]
    );
    assert!(repo.snapshots(Some("a")).await.unwrap().is_empty());
    assert!(
        repo.snapshot("a", &id).await.is_err(),
        "deleted for readers"
    );
    match repo.delete_snapshot("a", &id).await {
        Err(crate::Error::Repo(RepoError::SnapshotNotFound { .. })) => {}
        other => panic!("a third delete must find it deleted: {other:?}"),
    }
    // Enough commits for a compacting gc past the cutoff: the root goes, with both
    // tombstone generations (the void one would otherwise stay for ever).
    for seed in 3..9 {
        back_up(&repo, "c", random(seed, 2)).await;
    }
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    let g = repo.gc().await.unwrap();
    assert!(g.segments_compacted > 0 && g.blobs_collected > 0, "{g:?}");
    assert_eq!(mem.keys("tombstones/"), Vec::<String>::new());
    assert_eq!(mem.keys(&format!("snapshots/a/{id}")), Vec::<String>::new());
    assert_eq!(repo.snapshot("b", &kept).await.unwrap().id, kept);
    assert_nothing_to_repair(&repo).await;
}

/// Two deletes of one snapshot pick generation 0; the one that wins the create is void
/// (it stalled past its lease). The loser must not report "not found" (the snapshot is
/// still there): it starts over and commits generation 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_loses_to_a_void_tombstone_starts_over() {
    let (mem, repo) = setup().await;
    let id = back_up(&repo, "a", random(1, 4)).await;
    let pause = Gate::new(Op::PutIfAbsent, "tombstones/", false, true, false);
    let loser = Repository::open(Hooked::new(&mem, &[&pause]))
        .await
        .unwrap();
    let task = tokio::spawn({
        let id = id.clone();
        async move { loser.delete_snapshot("a", &id).await }
    });
    reach(&pause).await;
    stalled_delete(&mem, "a", &id).await;
    assert_eq!(mem.keys("tombstones/"), vec![tombstone_key("a", &id)]);
    pause.resume.notify_one();
    task.await.unwrap().expect("the loser starts over");
    assert_eq!(
        mem.keys("tombstones/"),
        vec![tombstone_key("a", &id), tombstone_key_gen("a", &id, 1)]
    );
    assert!(repo.snapshots(None).await.unwrap().is_empty());
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    repo.gc().await.unwrap();
    assert_nothing_to_repair(&repo).await;
}

/// Runs a backup of `data` on `store` in the background.
fn spawn_backup(
    store: Arc<Hooked>,
    data: Vec<u8>,
) -> tokio::task::JoinHandle<crate::Result<BackupReport>> {
    tokio::spawn(async move {
        let repo = Repository::open(store).await?;
        backup(&repo, VersionSource::fixed(data), &opts("z")).await
    })
}

/// The only lease holder in the store right now.
fn only_holder(mem: &MemStore) -> String {
    let leases = mem.keys("leases/");
    assert_eq!(leases.len(), 1, "{leases:?}");
    leases[0].split('/').nth(1).unwrap().to_string()
}

/// Issue 4, defect 2 (segments): a backup judged dead and cleaned by gc resumes, writes an
/// index segment and is killed before its renewal. No lease names it and it has no intent
/// (gc deleted it), so only `check --repair` found the segment. Now gc reclaims it once it
/// is older than `LEASE_TTL + SKEW` (and not before: the documented expiry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_reclaims_a_zombies_segment_after_the_expiry() {
    let (mem, repo) = setup().await;
    let pause = Gate::new(Op::Put, "index/", false, true, false);
    let kill = Gate::new(Op::Put, "index/", true, false, true);
    let task = spawn_backup(Hooked::new(&mem, &[&pause, &kill]), random(1, 8));
    reach(&pause).await;
    let zombie = only_holder(&mem);
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    let g = repo.gc().await.unwrap();
    assert_eq!(g.dead_writers_cleaned, 1);
    assert!(mem.keys("intents/").is_empty() && mem.keys("leases/").is_empty());
    assert!(keys_of(&mem, "packs/", &zombie).is_empty());
    pause.resume.notify_one();
    assert!(task.await.unwrap().is_err(), "killed after its segment");
    let left = keys_of(&mem, "index/", &zombie);
    assert_eq!(left.len(), 1, "the zombie's segment");
    assert!(mem.keys("leases/").is_empty(), "no lease names the zombie");
    repo.gc().await.unwrap();
    assert_eq!(keys_of(&mem, "index/", &zombie), left, "too young to judge");
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    let g = repo.gc().await.unwrap();
    assert_eq!(g.dead_writers_cleaned, 1, "{g:?}");
    assert!(keys_of(&mem, "index/", &zombie).is_empty());
    assert_nothing_to_repair(&repo).await;
}

/// Issue 4, defect 2 (packs, writer side): the zombie's pack upload lands after gc removed
/// its intent. Nothing would ever name that pack (gc never lists `packs/`): the writer
/// sees its intent gone right after the upload, deletes the pack and stops (fenced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_removes_the_pack_it_uploaded_after_gc_cleaned_it() {
    let (mem, repo) = setup().await;
    let pause = Gate::new(Op::Put, "packs/", false, true, false);
    let task = spawn_backup(Hooked::new(&mem, &[&pause]), random(1, 8));
    reach(&pause).await;
    let zombie = only_holder(&mem);
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    assert_eq!(repo.gc().await.unwrap().dead_writers_cleaned, 1);
    assert!(mem.keys("intents/").is_empty());
    pause.resume.notify_one();
    match task.await.unwrap() {
        Err(crate::Error::Repo(RepoError::LeaseFenced { reason, .. })) => {
            assert!(reason.contains("intents/"), "{reason}")
        }
        other => panic!("the zombie must stop, fenced: {other:?}"),
    }
    assert_eq!(keys_of(&mem, "packs/", &zombie), Vec::<String>::new());
    assert!(mem.keys("leases/").is_empty(), "it stopped before renewing");
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    repo.gc().await.unwrap();
    assert_nothing_to_repair(&repo).await;
}

/// Issue 4, defect 2 (packs, gc side): the zombie's pack lands after gc's probe but while
/// its intent still exists, so the writer carries on. gc probes again after deleting the
/// intent and finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_probes_again_after_removing_a_dead_writers_intent() {
    let (mem, repo) = setup().await;
    // Two packs (data, tables): one upload is paused, the other one completes and checks
    // the intent first; the second check is armed only when the paused one resumes.
    let pause = Gate::new(Op::Put, "packs/", false, true, false);
    let other = Gate::new(Op::Head, "intents/", true, false, false);
    let checked = Gate::new(Op::Head, "intents/", true, false, false);
    checked.armed.store(false, Ordering::SeqCst);
    let store = Hooked::new(&mem, &[&pause, &other, &checked]);
    let task = spawn_backup(store, random(1, 8));
    reach(&pause).await;
    reach(&other).await;
    let zombie = only_holder(&mem);
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    // gc, paused right before it deletes the intent: the zombie's upload lands and its
    // intent check passes in that window.
    let at_intent = Gate::new(Op::DeleteBatch, "intents/", false, true, false);
    let gc_repo = Repository::open(Hooked::new(&mem, &[&at_intent]))
        .await
        .unwrap();
    let gc = tokio::spawn(async move { gc_repo.gc().await });
    reach(&at_intent).await;
    checked.armed.store(true, Ordering::SeqCst);
    pause.resume.notify_one();
    reach(&checked).await;
    assert_eq!(keys_of(&mem, "packs/", &zombie).len(), 1, "the late pack");
    at_intent.resume.notify_one();
    assert_eq!(gc.await.unwrap().unwrap().dead_writers_cleaned, 1);
    assert_eq!(keys_of(&mem, "packs/", &zombie), Vec::<String>::new());
    // The zombie then fails at its renewal; what it wrote meanwhile is reclaimed later.
    assert!(task.await.unwrap().is_err());
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    repo.gc().await.unwrap();
    assert!(mem.keys("intents/").is_empty() && mem.keys("leases/").is_empty());
    assert_nothing_to_repair(&repo).await;
}

/// Issue 4, leak 2 (the double fault): the zombie's upload lands after gc cleaned it and
/// the zombie dies right at its intent check (it sees the intent gone, but every request
/// after that fails, so it cannot delete its pack). Nothing names the pack: no lease, no
/// intent. gc's orphan sweep deletes it — not within the sweep period of the last sweep,
/// then once the period has passed — and `check --repair` finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orphan_sweep_reclaims_the_pack_of_a_zombie_killed_at_its_intent_check() {
    let (mem, repo) = setup().await;
    let pause = Gate::new(Op::Put, "packs/", false, true, false);
    let other = Gate::new(Op::Head, "intents/", true, false, false);
    let killed = Gate::new(Op::Head, "intents/", false, false, true);
    killed.armed.store(false, Ordering::SeqCst);
    let task = spawn_backup(Hooked::new(&mem, &[&pause, &other, &killed]), random(1, 8));
    reach(&pause).await;
    reach(&other).await;
    let zombie = only_holder(&mem);
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    assert_eq!(repo.gc().await.unwrap().dead_writers_cleaned, 1);
    killed.armed.store(true, Ordering::SeqCst);
    pause.resume.notify_one();
    reach(&killed).await;
    assert!(task.await.unwrap().is_err(), "the zombie died");
    let left = keys_of(&mem, "packs/", &zombie);
    assert_eq!(left.len(), 1, "the double fault's pack: {left:?}");
    assert!(mem.keys("leases/").is_empty() && mem.keys("intents/").is_empty());
    // The first gc above swept (none recorded yet): the next sweep is a period later.
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    assert_eq!(repo.gc().await.unwrap().orphan_packs_deleted, 0);
    assert_eq!(keys_of(&mem, "packs/", &zombie), left);
    mem.advance(ORPHAN_SWEEP_PERIOD);
    let g = repo.gc().await.unwrap();
    assert_eq!(g.orphan_packs_deleted, 1, "{g:?}");
    assert_eq!(keys_of(&mem, "packs/", &zombie), Vec::<String>::new());
    assert_nothing_to_repair(&repo).await;
}

/// Routes to a fault store that loses every conditional create's acknowledgement while
/// `faulty` is set, to the healthy store otherwise.
#[derive(Debug)]
struct Switch {
    inner: Arc<MemStore>,
    faulty: FaultStore,
    on: AtomicBool,
}

impl Switch {
    fn store(&self) -> &dyn ObjectStore {
        if self.on.load(Ordering::SeqCst) {
            &self.faulty
        } else {
            self.inner.as_ref()
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for Switch {
    crate::store::forward_descriptive_methods!();
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.store().put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        self.store().put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.store().get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.store().get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.store().head(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        self.store().list(prefix, start_after, limit).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.store().delete(key).await
    }
    async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError> {
        self.store().delete_batch(keys).await
    }
}

/// Issue 4, defect 3 (own generation): a renewal whose answer was lost landed; retrying
/// it finds the generation with the holder's own body, which is a renewal, not a fence.
#[tokio::test]
async fn a_renewal_retried_after_a_lost_ack_is_a_renewal() {
    let mem = Arc::new(MemStore::default());
    let faulty = FaultStore::new(
        mem.clone(),
        FaultConfig {
            ack_loss_probability: 1.0,
            ops: vec![FaultOp::PutIfAbsent],
            ..FaultConfig::default()
        },
    );
    let switch = Arc::new(Switch {
        inner: mem.clone(),
        faulty,
        on: AtomicBool::new(false),
    });
    let holder = new_time_id();
    let lease = Lease::acquire(switch.clone(), &holder, "backup", Some("v"))
        .await
        .unwrap();
    switch.on.store(true, Ordering::SeqCst);
    let err = lease.try_renew().await.expect_err("the answer is lost");
    assert!(err.to_string().contains("response lost"), "{err}");
    assert_eq!(mem.keys(&lease_key(&holder, 1)).len(), 1, "but it landed");
    switch.on.store(false, Ordering::SeqCst);
    assert!(matches!(
        lease.try_renew().await.unwrap(),
        Renewal::Renewed(_)
    ));
    lease.ensure_usable().unwrap();
    lease.renew().await.unwrap();
    assert_eq!(mem.keys(&format!("leases/{holder}/")).len(), 3, "0, 1, 2");
}

/// Issue 4, defect 3 (someone else's generation): `renew` ignored `create_own`'s outcome,
/// so a holder whose next generation someone else created believed it renewed. Now it is
/// fenced for good, and its writer refuses to write anything more.
#[tokio::test]
async fn a_generation_created_by_another_fences_the_holder() {
    let (mem, repo) = setup().await;
    let holder = new_time_id();
    let lease = Lease::acquire(repo.store().clone(), &holder, "backup", Some("v"))
        .await
        .unwrap();
    let other = LeaseBody {
        holder: holder.clone(),
        op: "someone else".into(),
        volume: None,
        generation: 1,
    };
    mem.put(
        &lease_key(&holder, 1),
        Bytes::from(envelope::seal(MAGIC_LEASE, &other)),
    )
    .await
    .unwrap();
    assert!(matches!(
        lease.try_renew().await.unwrap(),
        Renewal::Fenced(_)
    ));
    assert!(lease.ensure_usable().is_err());
    assert!(lease.renew().await.is_err(), "fenced for good");
    assert!(
        mem.keys(&lease_key(&holder, 2)).is_empty(),
        "no further generation"
    );
    let mut w = crate::repo::writer::Writer::new(&repo, lease, "snapshots/v/x".into(), "backup");
    let frame = crate::repo::Frame::encode(crate::repo::BlobKind::Chunk, &random(3, 1));
    w.add(&frame).await.unwrap();
    assert!(w.flush().await.is_err(), "a fenced writer uploads nothing");
    assert!(mem.keys("packs/").is_empty() && mem.keys("intents/").is_empty());
}

/// Issue 4, defect 3 (adoption): a holder that checkpointed and was then adopted by a
/// re-run (the claim generation exists) is fenced at its next renewal, not only right
/// before its commit.
#[tokio::test]
async fn an_adopted_holder_is_fenced_at_its_next_renewal() {
    let mem = Arc::new(MemStore::default());
    let holder = new_time_id();
    let lease = Lease::acquire(mem.clone(), &holder, "backup", Some("v"))
        .await
        .unwrap();
    lease.watch_adoption();
    lease.renew().await.expect("not adopted yet");
    let claim = LeaseBody {
        holder: holder.clone(),
        op: format!("adopted by {}", new_time_id()),
        volume: Some("v".into()),
        generation: ADOPT_GENERATION,
    };
    let sealed = Bytes::from(envelope::seal(MAGIC_LEASE, &claim));
    let key = lease_key(&holder, ADOPT_GENERATION);
    assert_eq!(
        mem.put_if_absent(&key, sealed).await.unwrap(),
        PutOutcome::Created
    );
    match lease.try_renew().await.unwrap() {
        Renewal::Fenced(reason) => assert!(reason.contains("adopted"), "{reason}"),
        r => panic!("an adopted holder must be fenced: {r:?}"),
    }
    assert!(lease.keep_alive().await.is_err());
}

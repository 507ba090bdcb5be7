//! Resume of killed backups (format-spec §12) against the in-memory store: a backup that
//! dies after some checkpoints is continued by a re-run (same source: neither re-read nor
//! re-uploaded; another source: only not re-uploaded); gc keeps adopted packs of a
//! committed re-run, reclaims those of a re-run that died too, and a lease that expired
//! before the re-run is not adopted.

use super::tests::{new_repo, restored, volume, MemSource};
use super::*;
use crate::repo::protocol::lease;
use crate::repo::tests::testing::MemStore;
use crate::repo::CheckOptions;
use rand::SeedableRng;
use std::time::Duration;

/// A source that fails reads at and beyond `fail_at` (a crash mid-backup) and reports a
/// resume token.
pub(super) struct Dying {
    inner: Arc<MemSource>,
    fail_at: u64,
    token: String,
}

impl BlockSource for Dying {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset >= self.fail_at {
            return Err(std::io::Error::other("simulated crash"));
        }
        self.inner.read_at(buf, offset)
    }
    fn changed_since(&self, base: &BaseIdentity) -> Option<Vec<SourceRange>> {
        self.inner.changed_since(base)
    }
    fn identity(&self) -> Option<BaseIdentity> {
        self.inner.identity()
    }
    fn resume_token(&self) -> Option<String> {
        Some(self.token.clone())
    }
}

pub(super) fn dying(src: &Arc<MemSource>, fail_at: u64, token: &str) -> Arc<Dying> {
    Arc::new(Dying {
        inner: src.clone(),
        fail_at,
        token: token.into(),
    })
}

fn every_pack(volume: &str) -> BackupOptions {
    BackupOptions {
        volume: volume.into(),
        checkpoint_interval: Some(Duration::ZERO),
        ..Default::default()
    }
}

pub(super) const SIZE: usize = 96 << 20;

async fn clean(repo: &Repository) {
    let c = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(c.is_clean(), "{:?}", c.issues);
}

/// Kill at 3/4, then re-run: returns (store, repo, data, killed id, re-run report).
async fn killed_then_rerun(token2: &str) -> (Arc<MemStore>, Repository, Vec<u8>, BackupReport) {
    let (store, repo) = new_repo(65536).await;
    let data = volume(SIZE, 7);
    let src = MemSource::new(data.clone());
    let before = repo.counts();
    let err = backup(
        &repo,
        dying(&src, (SIZE / 2) as u64 - 1, "t1"),
        &every_pack("vm"),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("simulated crash"), "{err}");
    let killed_upload = repo.counts().since(&before).bytes_uploaded;
    assert!(
        !store.keys("checkpoints/").is_empty(),
        "checkpoints written"
    );
    let r = backup(&repo, dying(&src, u64::MAX, token2), &every_pack("vm"))
        .await
        .unwrap();
    assert!(r.resumed_from.is_some(), "{r:?}");
    assert!(r.blobs_adopted > 0);
    assert!(
        killed_upload > 30 << 20,
        "the killed run uploaded {killed_upload}"
    );
    (store, repo, data, r)
}

#[tokio::test]
async fn same_source_resumes_position_and_uploads() {
    let (store, repo, data, r) = killed_then_rerun("t1").await;
    // Half the volume is random (48 MiB): the killed run had stored nearly all of it.
    eprintln!("re-run after the kill: {r:?}");
    assert!(r.bytes_skipped >= 40 << 20, "{r:?}");
    assert!(r.bytes_read < 10 << 20, "{r:?}");
    assert!(r.bytes_uploaded < 10 << 20, "{r:?}");
    assert_eq!(restored(&repo, "vm", &r.id).await, data);
    clean(&repo).await;
    assert!(
        store.keys("checkpoints/").is_empty(),
        "{:?}",
        store.keys("checkpoints/")
    );
    // Left until gc: the killed run's intent, for the packs it sealed after its checkpoint.
    let killed = r.resumed_from.clone().unwrap();
    assert_eq!(store.keys("intents/"), vec![format!("intents/{killed}")]);
    // Once the killed writer's claimed lease is long expired gc cleans it: its segments
    // and leases go, the adopted packs stay (the committed snapshot names them).
    store.advance(lease::LEASE_TTL + crate::repo::lease_skew() + Duration::from_secs(60));
    let g = repo.gc().await.unwrap();
    assert!(g.dead_writers_cleaned >= 1, "{g:?}");
    assert!(
        store.keys("leases/").is_empty(),
        "{:?}",
        store.keys("leases/")
    );
    let fresh = Repository::open(store.clone()).await.unwrap();
    assert_eq!(restored(&fresh, "vm", &r.id).await, data);
    clean(&fresh).await;
    // Nothing stray: packs the killed run sealed after its last checkpoint went with it.
    let repair = fresh.repair().await.unwrap();
    assert_eq!(repair.stray_packs_deleted, 0, "{repair:?}");
    assert_eq!(repair.stray_segments_deleted, 0, "{repair:?}");
    assert!(
        store.keys("intents/").is_empty(),
        "{:?}",
        store.keys("intents/")
    );
}

#[tokio::test]
async fn other_source_reads_again_but_does_not_upload_again() {
    let (_store, repo, data, r) = killed_then_rerun("t2").await;
    assert_eq!(r.bytes_skipped, 0);
    assert!(r.bytes_read >= (SIZE / 2) as u64, "{r:?}");
    assert!(r.bytes_uploaded < 30 << 20, "{r:?}");
    assert_eq!(restored(&repo, "vm", &r.id).await, data);
    clean(&repo).await;
}

#[tokio::test]
async fn gc_reclaims_the_packs_of_a_rerun_that_died_too() {
    let (store, repo) = new_repo(65536).await;
    let src = MemSource::new(volume(SIZE, 8));
    backup(&repo, dying(&src, 20 << 20, "t"), &every_pack("vm"))
        .await
        .unwrap_err();
    let err = backup(&repo, dying(&src, 40 << 20, "t"), &every_pack("vm"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("simulated crash"));
    assert!(!store.keys("packs/").is_empty());
    // The second run adopted the first: its intent names the first, whose own intent
    // now only keeps the packs it sealed after its checkpoint.
    assert_eq!(store.keys("intents/").len(), 2);
    store.advance(lease::LEASE_TTL + crate::repo::lease_skew() + Duration::from_secs(60));
    let g = repo.gc().await.unwrap();
    assert_eq!(g.dead_writers_cleaned, 2, "{g:?}");
    for prefix in [
        "packs/",
        "index/",
        "refs/",
        "intents/",
        "checkpoints/",
        "leases/",
    ] {
        assert!(
            store.keys(prefix).is_empty(),
            "{prefix}: {:?}",
            store.keys(prefix)
        );
    }
    clean(&repo).await;
}

#[tokio::test]
async fn an_expired_lease_is_not_adopted() {
    let (store, repo) = new_repo(65536).await;
    let data = volume(SIZE, 9);
    let src = MemSource::new(data.clone());
    backup(&repo, dying(&src, 30 << 20, "t"), &every_pack("vm"))
        .await
        .unwrap_err();
    // Past LEASE_TTL a gc may already have judged the writer dead: start afresh.
    store.advance(lease::LEASE_TTL + Duration::from_secs(60));
    let r = backup(&repo, dying(&src, u64::MAX, "t"), &every_pack("vm"))
        .await
        .unwrap();
    assert_eq!(r.resumed_from, None);
    assert!(r.bytes_uploaded >= (SIZE / 2) as u64, "{r:?}");
    assert_eq!(restored(&repo, "vm", &r.id).await, data);
    clean(&repo).await;
}

#[tokio::test]
async fn a_writer_adopted_while_alive_does_not_commit() {
    let (_store, repo) = new_repo(65536).await;
    let src = MemSource::new(volume(SIZE, 10));
    let id = crate::repo::format::ids::new_time_id();
    // A checkpointing writer whose adoption claim exists is refused at its commit.
    let claim = lease::lease_key(&id, crate::repo::protocol::lease::ADOPT_GENERATION);
    repo.store()
        .put(&claim, bytes::Bytes::from_static(b"claimed"))
        .await
        .unwrap();
    let mut o = every_pack("vm");
    o.id = Some(id);
    let err = backup(&repo, src, &o).await.unwrap_err();
    assert!(err.to_string().contains("lease"), "{err}");
}

/// A raw restore killed part way (simulated: a complete restore's marker put back, some
/// chunks torn or never written) is continued: kept chunks are checked by hash, only the
/// rest is downloaded, and the result is bit-exact.
#[tokio::test]
async fn raw_restore_resumes_into_the_partial_target() {
    use crate::restore::{restore, RestoreTarget};
    let (_store, repo) = new_repo(65536).await;
    let data = volume(16 << 20, 11);
    let r = backup(&repo, MemSource::new(data.clone()), &every_pack("vm"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk.raw");
    let target = RestoreTarget::Raw(out.clone());
    let full = restore(&repo, "vm", &r.id, &target, None).await.unwrap();
    assert!(!full.resumed);
    let marker = dir.path().join(".disk.raw.island-restore");
    assert!(!marker.exists(), "a finished restore drops its marker");
    // What a kill leaves: the marker, chunk 3 torn, chunks 100.. not yet written.
    let body = serde_json::json!({"volume": "vm", "id": r.id, "size": data.len()});
    std::fs::write(&marker, body.to_string()).unwrap();
    let mut partial = data.clone();
    partial[3 * 65536 + 100..3 * 65536 + 200].fill(0xee);
    partial[100 * 65536..].fill(0);
    std::fs::write(&out, &partial).unwrap();
    let again = restore(&repo, "vm", &r.id, &target, None).await.unwrap();
    assert!(again.resumed, "{again:?}");
    assert_eq!(again.chunks_kept, 99, "{again:?}");
    assert!(
        again.bytes_downloaded < full.bytes_downloaded / 2,
        "{again:?} vs {full:?}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(!marker.exists());
    // Without a marker the target is rewritten from scratch (it may be any file).
    std::fs::write(&out, &partial).unwrap();
    let fresh = restore(&repo, "vm", &r.id, &target, None).await.unwrap();
    assert!(!fresh.resumed);
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

/// Checkpoints are left alone while their writer holds a lease, and are strays for
/// `check --repair` once it holds none (gc normally removes them with the dead writer).
#[tokio::test]
async fn repair_deletes_checkpoints_of_writers_without_a_lease() {
    let (store, repo) = new_repo(65536).await;
    let src = MemSource::new(volume(SIZE, 12));
    backup(&repo, dying(&src, 40 << 20, "t"), &every_pack("vm"))
        .await
        .unwrap_err();
    let leased = repo.repair().await.unwrap();
    assert_eq!(leased.stray_checkpoints_deleted, 0, "{leased:?}");
    assert!(!store.keys("checkpoints/").is_empty());
    for k in store.keys("leases/") {
        repo.store().delete(&k).await.unwrap();
    }
    // Strays are moved aside only past the age limit (format-spec §11).
    let young = repo.repair().await.unwrap();
    assert_eq!(young.stray_packs_deleted, 0, "{young:?}");
    store.advance(lease::LEASE_TTL + crate::repo::lease_skew() + Duration::from_secs(60));
    let r = repo.repair().await.unwrap();
    assert!(r.stray_checkpoints_deleted >= 1, "{r:?}");
    // Its packs hold frames located nowhere else: repair keeps them (format-spec §11,
    // step 5); gc reclaims a dead writer's packs.
    assert!(r.stray_packs_kept >= 1, "{r:?}");
    for prefix in ["checkpoints/", "intents/"] {
        assert!(
            store.keys(prefix).is_empty(),
            "{prefix}: {:?}",
            store.keys(prefix)
        );
    }
    clean(&repo).await;
}

/// An incremental backup (parent tree, changed ranges only) killed part way resumes its
/// position and tree: the parent's unchanged leaves stay shared, the result is exact.
#[tokio::test]
async fn incremental_backup_resumes_with_the_parent_tree() {
    let (_store, repo) = new_repo(65536).await;
    let src = MemSource::new(volume(SIZE, 13));
    backup(&repo, src.clone(), &every_pack("vm")).await.unwrap();
    src.mark();
    // 40 MiB of new data in five 8 MiB runs spread over the volume.
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    for k in 0..5usize {
        let mut buf = vec![0u8; 8 << 20];
        rand::RngCore::fill_bytes(&mut rng, &mut buf);
        src.write(k * (18 << 20) + (1 << 20), &buf);
    }
    let err = backup(&repo, dying(&src, 60 << 20, "inc"), &every_pack("vm"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("simulated crash"), "{err}");
    let r = backup(&repo, dying(&src, u64::MAX, "inc"), &every_pack("vm"))
        .await
        .unwrap();
    assert!(r.incremental, "{r:?}");
    assert!(r.resumed_from.is_some(), "{r:?}");
    assert!(r.bytes_skipped >= 16 << 20, "{r:?}");
    assert!(r.bytes_uploaded < 30 << 20, "{r:?}");
    let want = src.data.lock().unwrap().clone();
    assert_eq!(restored(&repo, "vm", &r.id).await, want);
    clean(&repo).await;
}

/// A raw restore's recorded progress (`done_below`, format-spec §12.3) is trusted: the
/// chunks below it are neither read back nor downloaded; the rest is checked by hash.
#[tokio::test]
async fn raw_restore_skips_what_the_killed_run_recorded_as_done() {
    use crate::restore::{restore, RestoreTarget};
    let (_store, repo) = new_repo(65536).await;
    let data = volume(16 << 20, 15);
    let r = backup(&repo, MemSource::new(data.clone()), &every_pack("vm"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk.raw");
    // What a kill leaves: chunks below 64 written and recorded, 64..100 written after the
    // last record, the rest not yet written.
    let mut partial = data.clone();
    partial[100 * 65536..].fill(0);
    std::fs::write(&out, &partial).unwrap();
    let body = serde_json::json!({
        "volume": "vm", "id": r.id, "size": data.len(), "done_below": 64 * 65536
    });
    std::fs::write(
        dir.path().join(".disk.raw.island-restore"),
        body.to_string(),
    )
    .unwrap();
    let target = RestoreTarget::Raw(out.clone());
    let again = restore(&repo, "vm", &r.id, &target, None).await.unwrap();
    assert!(again.resumed, "{again:?}");
    assert_eq!(again.bytes_done_before, 64 * 65536, "{again:?}");
    assert_eq!(again.chunks_kept, 36, "{again:?}");
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

/// The holder of the only checkpoint in the store.
fn checkpointed_holder(store: &MemStore) -> String {
    let ck = store.keys("checkpoints/");
    ck.first()
        .and_then(|k| k.split('/').nth(1))
        .expect("a checkpoint")
        .to_string()
}

/// Issue 20, found by the protocol model (`tests/protocol_model`): a zombie writer's fenced
/// renewal is still a fresh lease generation. The claim compared only the newest generation
/// with its own time, so it accepted a holder that a gc may have judged dead during the
/// gap (and whose cleanup, under way from that judgment, then deleted the packs the re-run
/// adopted and committed). The claim now needs an unbroken chain of generations.
#[tokio::test]
async fn a_zombies_fenced_renewal_does_not_make_its_holder_adoptable() {
    use crate::repo::format::envelope::{self, MAGIC_LEASE};
    use crate::repo::protocol::lease::{lease_key, LeaseBody};
    let (store, repo) = new_repo(65536).await;
    let data = volume(SIZE, 12);
    let src = MemSource::new(data.clone());
    backup(&repo, dying(&src, 30 << 20, "t"), &every_pack("vm"))
        .await
        .unwrap_err();
    let holder = checkpointed_holder(&store);
    // A paused writer (SIGSTOP, a frozen VM) abandons nothing: only generation 0 is left.
    let gens = store.keys(&format!("leases/{holder}/"));
    assert_eq!(gens.len(), 2, "generation 0 and the abandonment: {gens:?}");
    repo.store().delete_batch(&gens[1..]).await.unwrap();
    // It wakes past its lease's expiry (a gc may have judged it dead meanwhile) and renews:
    // the renewal is fenced, yet its generation 1 now exists, fresh.
    store.advance(lease::LEASE_TTL + crate::repo::lease_skew() + Duration::from_secs(60));
    let body = LeaseBody {
        holder: holder.clone(),
        op: "backup".into(),
        volume: Some("vm".into()),
        generation: 1,
    };
    let key = lease_key(&holder, 1);
    repo.store()
        .put(&key, bytes::Bytes::from(envelope::seal(MAGIC_LEASE, &body)))
        .await
        .unwrap();
    // A re-run once the zombie looks gone again, within LEASE_TTL of that generation.
    store.advance(crate::repo::protocol::checkpoint::ADOPT_AFTER + Duration::from_secs(60));
    let r = backup(&repo, dying(&src, u64::MAX, "t"), &every_pack("vm"))
        .await
        .unwrap();
    assert_eq!(r.resumed_from, None, "{r:?}");
    assert_eq!(restored(&repo, "vm", &r.id).await, data);
    clean(&repo).await;
}

/// A source that stops at `pause_at` until released (a slow source mid-backup), and says
/// when it got there.
struct Paused {
    inner: Arc<MemSource>,
    pause_at: u64,
    /// (reached, released)
    gate: Arc<(std::sync::Mutex<(bool, bool)>, std::sync::Condvar)>,
}

impl BlockSource for Paused {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset >= self.pause_at {
            let (m, cv) = &*self.gate;
            let mut g = m.lock().unwrap();
            g.0 = true;
            cv.notify_all();
            while !g.1 {
                g = cv.wait(g).unwrap();
            }
        }
        self.inner.read_at(buf, offset)
    }
    fn changed_since(&self, base: &BaseIdentity) -> Option<Vec<SourceRange>> {
        self.inner.changed_since(base)
    }
    fn identity(&self) -> Option<BaseIdentity> {
        self.inner.identity()
    }
    fn resume_token(&self) -> Option<String> {
        Some("same".into())
    }
}

/// Issue 20, finding 4: a second backup of a volume adopted the checkpoint of the first
/// while the first was still running, and the first was then fenced ("a re-run adopted
/// this holder"). §6 says both commit: a holder is adopted only once it stopped renewing
/// (or abandoned its lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_backups_of_one_volume_both_commit() {
    let (store, repo) = new_repo(65536).await;
    let first = volume(SIZE, 13);
    let gate = Arc::new((
        std::sync::Mutex::new((false, false)),
        std::sync::Condvar::new(),
    ));
    let paused = Arc::new(Paused {
        inner: MemSource::new(first.clone()),
        pause_at: 48 << 20,
        gate: gate.clone(),
    });
    let running = {
        let repo = repo.clone();
        tokio::spawn(async move { backup(&repo, paused, &every_pack("vm")).await })
    };
    // Wait until the first backup is stopped at its source with a checkpoint stored.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !gate.0.lock().unwrap().0 || store.keys("checkpoints/").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second_data = volume(SIZE, 14);
    let second = backup(
        &repo,
        Arc::new(Paused {
            inner: MemSource::new(second_data.clone()),
            pause_at: u64::MAX,
            gate: Arc::new(Default::default()),
        }),
        &every_pack("vm"),
    )
    .await;
    // Released before any assertion: a failing test must not leave the first backup's
    // reader blocked (the runtime would wait for it forever).
    {
        let (m, cv) = &*gate;
        m.lock().unwrap().1 = true;
        cv.notify_all();
    }
    let first_result = running.await.unwrap();
    let second = second.expect("the second backup commits");
    assert_eq!(second.resumed_from, None, "{second:?}");
    let first_report = first_result.expect("the first backup commits too");
    assert_eq!(restored(&repo, "vm", &first_report.id).await, first);
    assert_eq!(restored(&repo, "vm", &second.id).await, second_data);
    clean(&repo).await;
}

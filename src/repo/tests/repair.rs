//! Repair against the in-memory store with a movable clock: an over-count turns a deleted
//! snapshot's chunk into a leak no gc would ever find; repair corrects the count and
//! releases the chunk, gc leaves it alone until the repair is older than its cutoff, then
//! collects it. Also: a copy killed after uploading is cleaned by gc once its lease
//! expires, even though a re-run committed the same root.

use super::testing::{back_up_bytes, mem_repo, random_bytes as random, MemStore};
use crate::backup::{backup, BackupOptions, BaseIdentity, BlockSource};
use crate::repo::copy;
use crate::repo::format::envelope::{self, MAGIC_GC};
use crate::repo::format::ids::new_time_id;
use crate::repo::format::marker::GcMarker;
use crate::repo::protocol::lease::{Lease, LEASE_TTL, SKEW};
use crate::repo::writer::Writer;
use crate::repo::{BlobId, CheckOptions, CopyOptions, Repository};
use crate::restore::{restore, RestoreTarget};
use crate::store::ObjectStore;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

async fn back_up(repo: &Repository, data: &[u8]) -> String {
    back_up_bytes(repo, "v", data).await
}

/// Commit (as `gc/0000000000`) a refs segment adding one count to each of `ids`.
async fn over_count(store: &Arc<MemStore>, repo: &Repository, ids: &[BlobId]) {
    let holder = new_time_id();
    let lease = Lease::acquire(store.clone(), &holder, "gc", None)
        .await
        .unwrap();
    let mut w = Writer::new(repo, lease.clone(), "gc/0000000000".into(), "gc");
    for id in ids {
        w.add_ref(*id, 1, 0);
    }
    w.flush().await.unwrap();
    let marker = GcMarker {
        holder,
        seq: 0,
        lease_time_ms: lease.check_before_commit().await.unwrap(),
        freed: false,
        stored: None,
    };
    let body = Bytes::from(envelope::seal(MAGIC_GC, &marker));
    store.put("gc/0000000000", body).await.unwrap();
    w.finish().await;
}

async fn restores(repo: &Repository, id: &str, want: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.raw");
    restore(repo, "v", id, &RestoreTarget::Raw(out.clone()), None)
        .await
        .unwrap();
    assert!(
        std::fs::read(&out).unwrap() == want,
        "{id} restores bit-exact"
    );
}

#[tokio::test]
async fn repair_releases_a_leak_that_gc_collects_after_its_cutoff() {
    let (store, repo) = mem_repo(65536).await;
    let first = random(1, 1 << 20);
    let second = random(2, 1 << 20);
    let s1 = back_up(&repo, &first).await;
    let s2 = back_up(&repo, &second).await;
    let x = BlobId::of(&first[..65536]);

    // A committed segment over-counting x (as a lost race between two deletes leaves it).
    over_count(&store, &repo, &[x]).await;
    // The delete sees x at 2 and leaves it at 1 without freeing it: a leak.
    repo.delete_snapshot("v", &s1).await.unwrap();
    assert!(!repo
        .check(&CheckOptions::default())
        .await
        .unwrap()
        .is_clean());

    let rep = repo.repair().await.unwrap();
    assert_eq!(rep.refcounts_fixed, 1, "{rep:?}");
    assert_eq!(rep.blobs_released, 1, "{rep:?}");
    assert!(repo
        .check(&CheckOptions::default())
        .await
        .unwrap()
        .is_clean());

    // Too recent for gc's cutoff: x stays (a backup started before the repair may use it).
    store.advance(SKEW / 2);
    repo.gc().await.unwrap();
    let set = repo.load_segments().await.unwrap();
    assert!(repo.locate(&set, &x).await.unwrap().is_some());

    store.advance(SKEW + Duration::from_secs(60));
    let g = repo.gc().await.unwrap();
    assert!(g.blobs_collected >= 1, "{g:?}");
    let set = repo.load_segments().await.unwrap();
    assert!(
        repo.locate(&set, &x).await.unwrap().is_none(),
        "x collected"
    );
    assert!(repo
        .check(&CheckOptions::default())
        .await
        .unwrap()
        .is_clean());
    restores(&repo, &s2, &second).await;
}

#[tokio::test]
async fn a_killed_copys_packs_are_reclaimed_although_the_rerun_committed_its_root() {
    let (_, src) = mem_repo(65536).await;
    let (dst_store, dst) = mem_repo(65536).await;
    let data = random(3, 1 << 20);
    let s1 = back_up(&src, &data).await;
    let root_key = format!("snapshots/v/{s1}");

    // What a copy killed after its packs and segments leaves behind.
    let holder = new_time_id();
    let lease = Lease::acquire(dst_store.clone(), &holder, "copy", Some("v"))
        .await
        .unwrap();
    let mut w = Writer::new(&dst, lease, root_key.clone(), "copy");
    w.add(&crate::repo::Frame::encode(
        crate::repo::BlobKind::Chunk,
        &data[..65536],
    ))
    .await
    .unwrap();
    w.flush().await.unwrap();
    drop(w);
    let opts = CopyOptions {
        volume: "v".into(),
        ..Default::default()
    };
    let r = copy(&src, &dst, &opts).await.unwrap();
    assert_eq!(r.copied, vec![s1.clone()]);
    let killed = format!("{holder}-p");
    assert!(dst_store.keys("packs/").iter().any(|k| k.contains(&killed)));

    dst_store.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    let g = dst.gc().await.unwrap();
    assert_eq!(g.dead_writers_cleaned, 1, "{g:?}");
    assert!(!dst_store.keys("packs/").iter().any(|k| k.contains(&killed)));
    assert!(dst
        .check(&CheckOptions::default())
        .await
        .unwrap()
        .is_clean());
    restores(&dst, &s1, &data).await;
}

/// A source whose reads pause once, half-way, until released (a backup mid-pipeline).
struct Gated {
    data: Vec<u8>,
    started: std::sync::mpsc::SyncSender<()>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    once: std::sync::atomic::AtomicBool,
}

impl BlockSource for Gated {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        buf.copy_from_slice(&self.data[offset as usize..offset as usize + buf.len()]);
        let half = offset >= self.size() / 2;
        if half && !self.once.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let _ = self.started.send(());
            let _ = self.release.lock().unwrap().recv();
        }
        Ok(())
    }
    fn identity(&self) -> Option<BaseIdentity> {
        None
    }
}

/// A backup deduplicates against leaked chunks (counted, but no snapshot references
/// them); repair releases them while the backup is paused; gc runs well past SKEW. The
/// backup's lease must keep gc from collecting them, and its snapshot must restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_alongside_a_running_backup_loses_nothing() {
    let (store, repo) = mem_repo(65536).await;
    let data = random(4, 1 << 20);
    let s1 = back_up(&repo, &data).await;
    // Over-count every chunk, then delete s1: the chunks leak with count 1.
    let chunks: Vec<BlobId> = data.chunks(65536).map(BlobId::of).collect();
    over_count(&store, &repo, &chunks).await;
    repo.delete_snapshot("v", &s1).await.unwrap();

    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let gated = Arc::new(Gated {
        data: data.clone(),
        started: started_tx,
        release: std::sync::Mutex::new(release_rx),
        once: std::sync::atomic::AtomicBool::new(false),
    });
    let repo2 = repo.clone();
    let running = tokio::spawn(async move {
        let opts = BackupOptions {
            volume: "v".into(),
            ..Default::default()
        };
        backup(&repo2, gated, &opts).await
    });
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();

    let rep = repo.repair().await.unwrap();
    assert_eq!(rep.blobs_released, 16, "{rep:?}");
    assert!(rep.objects_of_leased_writers <= 1, "{rep:?}");
    store.advance(SKEW * 2);
    let g = repo.gc().await.unwrap();
    assert_eq!(
        g.blobs_collected, 0,
        "the running backup's lease protects them"
    );

    release_tx.send(()).unwrap();
    let s2 = running.await.unwrap().unwrap();
    assert_eq!(
        s2.chunks_new, 0,
        "the backup deduplicated against the leaked chunks"
    );
    restores(&repo, &s2.id, &data).await;
    store.advance(SKEW * 2);
    repo.gc().await.unwrap();
    restores(&repo, &s2.id, &data).await;
    let c = repo
        .check(&CheckOptions {
            read_data: true,
            sample_pct: None,
        })
        .await
        .unwrap();
    assert!(c.is_clean(), "{:?}", c.issues);
}

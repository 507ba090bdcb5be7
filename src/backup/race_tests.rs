//! The restic-prune / Benji #119 race, forced: a backup deduplicates against a blob, a
//! delete frees that blob and gc runs while the backup is paused before its commit. The
//! backup's lease must keep gc from collecting the blob, and the snapshot must restore.
//! Also: a writer that dies before committing leaves nothing visible, and gc reclaims its
//! packs once its lease has expired.

use super::tests::MemSource;
use super::*;
use crate::repo::tests::testing::MemStore;
use crate::repo::{CheckOptions, InitOptions};
use crate::restore::{restore, RestoreTarget};
use std::sync::atomic::{AtomicBool, Ordering};

/// A source whose reads block until released (pauses a backup mid-pipeline).
struct Gated {
    inner: Arc<MemSource>,
    started: std::sync::mpsc::SyncSender<()>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    once: AtomicBool,
}

impl BlockSource for Gated {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)?;
        // Pause after the first chunk of the second half has been read.
        if offset >= self.size() / 2 && !self.once.swap(true, Ordering::SeqCst) {
            let _ = self.started.send(());
            let _ = self.release.lock().unwrap().recv();
        }
        Ok(())
    }
    fn identity(&self) -> Option<BaseIdentity> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_does_not_collect_what_a_running_backup_deduplicated() {
    let store = Arc::new(MemStore::default());
    let repo = Repository::init(store.clone(), &InitOptions { chunk_size: 4096 })
        .await
        .unwrap();
    let data: Vec<u8> = (0..64 * 4096u32).map(|i| (i / 4096) as u8 + 1).collect();
    let a = MemSource::new(data.clone());
    let s1 = backup(
        &repo,
        a.clone(),
        &BackupOptions {
            volume: "a".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    // Volume b has the same content: every chunk deduplicates against s1's.
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let gated = Arc::new(Gated {
        inner: MemSource::new(data.clone()),
        started: started_tx,
        release: std::sync::Mutex::new(release_rx),
        once: AtomicBool::new(false),
    });
    let repo2 = repo.clone();
    let running = tokio::spawn(async move {
        backup(
            &repo2,
            gated,
            &BackupOptions {
                volume: "b".into(),
                ..Default::default()
            },
        )
        .await
    });
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();

    // While b's backup is paused: delete s1 (frees every chunk) and gc well past SKEW.
    let d = repo.delete_snapshot("a", &s1.id).await.unwrap();
    assert_eq!(d.freed_bytes, 64 * 4096);
    store.advance(crate::repo::lease_skew() * 2);
    let g = repo.gc().await.unwrap();
    assert_eq!(
        g.blobs_collected, 0,
        "the running backup's lease protects what it deduplicated"
    );

    release_tx.send(()).unwrap();
    let s2 = running.await.unwrap().unwrap();
    assert_eq!(s2.chunks_new, 0, "b deduplicated everything against s1");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.raw");
    restore(&repo, "b", &s2.id, &RestoreTarget::Raw(p.clone()), None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), data);

    // Once b's snapshot holds the chunks, a later gc still keeps them.
    store.advance(crate::repo::lease_skew() * 2);
    repo.gc().await.unwrap();
    restore(&repo, "b", &s2.id, &RestoreTarget::Raw(p.clone()), None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), data);
    let c = repo
        .check(&CheckOptions {
            read_data: true,
            sample_pct: None,
        })
        .await
        .unwrap();
    assert!(c.is_clean(), "{:?}", c.issues);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_writer_leaves_nothing_visible_and_gc_reclaims_it() {
    let store = Arc::new(MemStore::default());
    let repo = Repository::init(store.clone(), &InitOptions { chunk_size: 4096 })
        .await
        .unwrap();
    let data: Vec<u8> = (0..(5u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let gated = Arc::new(Gated {
        inner: MemSource::new(data.clone()),
        started: started_tx,
        release: std::sync::Mutex::new(release_rx),
        once: AtomicBool::new(false),
    });
    let repo2 = repo.clone();
    let running = tokio::spawn(async move {
        backup(
            &repo2,
            gated,
            &BackupOptions {
                volume: "v".into(),
                ..Default::default()
            },
        )
        .await
    });
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    // The writer "dies" (its task is dropped at an await point) before committing.
    running.abort();
    drop(release_tx);
    let _ = running.await;
    assert!(repo.snapshots(None).await.unwrap().is_empty());
    assert!(repo
        .check(&CheckOptions::default())
        .await
        .unwrap()
        .is_clean());
    // Its lease expires; gc removes its packs, segments, intent and lease.
    store.advance(crate::repo::lease_skew() * 20);
    let g = repo.gc().await.unwrap();
    assert_eq!(g.dead_writers_cleaned, 1);
    for prefix in ["packs/", "index/", "refs/", "intents/", "leases/"] {
        assert!(
            store.keys(prefix).is_empty(),
            "{prefix} left behind: {:?}",
            store.keys(prefix)
        );
    }
    // A re-run succeeds.
    let src = MemSource::new(data.clone());
    let r = backup(
        &repo,
        src,
        &BackupOptions {
            volume: "v".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.raw");
    restore(&repo, "v", &r.id, &RestoreTarget::Raw(p.clone()), None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), data);
}

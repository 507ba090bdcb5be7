//! Regressions of gc's candidate and protection rule (issue 20, finding 1: decrements, not
//! FREED flags, decide), of a damaged live frame (issue 13, defect 9) and of gc marker
//! retention (issue 20, finding 5).

use super::actors::{VersionSource, CS};
use super::fixtures::{assert_clean_and_nothing_to_repair, back_up, cat, random, restored, setup};
use crate::backup::{backup, BlockSource};
use crate::repo::protocol::lease::SKEW;
use crate::repo::tests::testing::{CreateHook, MemStore};
use crate::repo::{BlobId, Repository};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Barrier, Mutex};

/// Deletes `(volume, id)` pairs concurrently: each one's tombstone create waits until all
/// of them got there, so every delete's view predates every tombstone (they race).
async fn racing_deletes(mem: &Arc<MemStore>, repo: &Repository, victims: &[(&str, &str)]) {
    let barrier = Arc::new(Barrier::new(victims.len()));
    let left = Arc::new(AtomicU32::new(victims.len() as u32));
    let hook = move |_: &MemStore, key: &str| {
        let racing = key.starts_with("tombstones/")
            && (left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)))
                .is_ok();
        if racing {
            barrier.wait();
        }
    };
    *mem.before_create.lock().unwrap() = CreateHook(Some(Arc::new(hook)));
    let tasks: Vec<_> = victims
        .iter()
        .map(|(v, id)| {
            let (repo, v, id) = (repo.clone(), v.to_string(), id.to_string());
            tokio::spawn(async move { repo.delete_snapshot(&v, &id).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("both deletes commit");
    }
    *mem.before_create.lock().unwrap() = CreateHook(None);
}

/// A source whose read of the chunk at `pause_at` blocks until released: the backup has
/// taken its lease and view and is paused before its commit.
struct Paused {
    inner: Arc<VersionSource>,
    pause_at: u64,
    started: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
    once: AtomicBool,
}

impl BlockSource for Paused {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)?;
        if offset >= self.pause_at && !self.once.swap(true, Ordering::SeqCst) {
            if let Some(s) = self.started.lock().unwrap().take() {
                let _ = s.send(());
            }
            let _ = self.release.lock().unwrap().recv();
        }
        Ok(())
    }
}

/// Issue 20, finding 1. S1 and S2 (other volumes) share chunk X; two deletes race, each
/// sees count 2 and writes −1 without FREED, so X reaches 0 with no flag. A backup whose
/// view predates the deletes reused X and is paused. gc then finds X in a pack with
/// processable garbage: before the fix, "count 0 and no recent FREED" made X dead and the
/// pack was deleted, and the backup committed a snapshot that no longer restores. The
/// decrements of the not-yet-processable deletes now protect X.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_deletes_keep_a_shared_chunk_that_a_running_backup_reused() {
    let (mem, repo) = setup().await;
    let (x, y) = (random(1, 1), random(2, 1));
    // One pack holds Y and X; Y becomes garbage of a processable delete.
    let s0 = back_up(&repo, "z", cat(&[&y, &x])).await;
    let s1 = back_up(&repo, "a", cat(&[&x, &random(3, 1)])).await;
    let s2 = back_up(&repo, "b", cat(&[&x, &random(4, 1)])).await;
    repo.delete_snapshot("z", &s0).await.unwrap();
    mem.advance(SKEW * 2);

    let want = cat(&[&x, &random(5, 1), &random(6, 1), &random(7, 1)]);
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let paused = Arc::new(Paused {
        inner: VersionSource::fixed(want.clone()),
        pause_at: 2 * CS as u64,
        started: Mutex::new(Some(started_tx)),
        release: Mutex::new(release_rx),
        once: AtomicBool::new(false),
    });
    let repo2 = repo.clone();
    let running =
        tokio::spawn(async move { backup(&repo2, paused, &super::fixtures::opts("c")).await });
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();

    racing_deletes(&mem, &repo, &[("a", &s1), ("b", &s2)]).await;
    let g = repo.gc().await.unwrap();
    assert!(g.blobs_collected > 0, "Y is collected: {g:?}");
    release_tx.send(()).unwrap();
    let b = running.await.unwrap().unwrap();
    assert!(b.chunks_reused >= 1, "the backup reused X: {b:?}");
    assert_eq!(restored(&repo, "c", &b.id).await.unwrap(), want);

    // Later, with every delete processable, X stays (the backup holds it) and nothing
    // is left for repair.
    mem.advance(SKEW * 2);
    repo.gc().await.unwrap();
    assert_eq!(restored(&repo, "c", &b.id).await.unwrap(), want);
    assert_clean_and_nothing_to_repair(&repo).await;
}

/// The leak side of finding 1: a chunk that racing deletes brought to 0 without FREED, in a
/// pack holding nothing else, was never a candidate (only `check --repair` released it).
/// Every blob a processable delete decremented is now a candidate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_racing_deletes_brought_to_zero_is_collected() {
    let (mem, repo) = setup().await;
    let x = random(1, 1);
    let s0 = back_up(&repo, "z", x.clone()).await;
    let s1 = back_up(&repo, "a", cat(&[&x, &random(3, 1)])).await;
    let s2 = back_up(&repo, "b", cat(&[&x, &random(4, 1)])).await;
    repo.delete_snapshot("z", &s0).await.unwrap();
    racing_deletes(&mem, &repo, &[("a", &s1), ("b", &s2)]).await;
    mem.advance(SKEW * 2);
    let g = repo.gc().await.unwrap();
    assert!(g.blobs_collected >= 3, "{g:?}");
    assert_eq!(mem.keys("packs/"), Vec::<String>::new(), "{g:?}");
    assert_clean_and_nothing_to_repair(&repo).await;
}

/// The table case: S1 and S2 have the same content, so one leaf table T is shared. Racing
/// deletes bring T to 0 without FREED, and T's children are still counted on its behalf
/// (contribution 1). gc releases them (−1 each, under a `freed: true` marker), collects T,
/// and a later gc — once that marker is processable — collects the children.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_racing_deletes_brought_to_zero_releases_its_children() {
    let (mem, repo) = setup().await;
    let data = random(9, 3);
    let s1 = back_up(&repo, "a", data.clone()).await;
    let s2 = back_up(&repo, "b", data).await;
    racing_deletes(&mem, &repo, &[("a", &s1), ("b", &s2)]).await;
    mem.advance(SKEW * 2);
    let g = repo.gc().await.unwrap();
    assert_eq!(g.tables_released, 1, "{g:?}");
    mem.advance(SKEW * 2);
    repo.gc().await.unwrap();
    assert_eq!(mem.keys("packs/"), Vec::<String>::new());
    assert_clean_and_nothing_to_repair(&repo).await;
}

/// Issue 13, defect 9: a corrupt live frame in a pack gc would repack stopped every gc
/// ("frame crc32c mismatch"). gc now keeps that pack whole, reports it, and collects the
/// rest; once the frame is healed, a later gc repacks it.
#[tokio::test]
async fn a_corrupt_live_frame_keeps_its_pack_and_gc_goes_on() {
    let (mem, repo) = setup().await;
    let x = random(1, 1);
    let s0 = back_up(&repo, "z", cat(&[&random(2, 1), &random(3, 1), &x])).await;
    let kept = back_up(&repo, "a", x.clone()).await;
    repo.delete_snapshot("z", &s0).await.unwrap();
    mem.advance(SKEW * 2);

    let set = repo.load_segments().await.unwrap();
    let loc = repo.locate(&set, &BlobId::of(&x)).await.unwrap().unwrap();
    let key = crate::repo::pack_key_of(&loc.pack);
    let good = mem.objects.lock().unwrap()[&key].clone();
    let mut bad = good.0.to_vec();
    bad[loc.offset as usize + 60] ^= 0x40;
    mem.objects
        .lock()
        .unwrap()
        .insert(key.clone(), (bad.into(), good.1));

    let g = repo.gc().await.expect("a damaged frame does not stop gc");
    assert_eq!(g.damaged_packs, vec![loc.pack.clone()], "{g:?}");
    assert!(g.packs_deleted >= 1, "z's table pack goes: {g:?}");
    assert!(mem.keys(&key).len() == 1, "the damaged pack is kept");

    mem.objects.lock().unwrap().insert(key.clone(), good);
    let g = repo.gc().await.unwrap();
    assert!(g.damaged_packs.is_empty() && g.packs_repacked == 1, "{g:?}");
    assert_eq!(restored(&repo, "a", &kept).await.unwrap(), x);
    assert_clean_and_nothing_to_repair(&repo).await;
}

/// Issue 20, finding 5: gc markers were never deleted, and every view load GETs each one.
/// Over many backup/delete/gc rounds (compacting several times) their number stays
/// bounded, and every live snapshot still restores.
#[tokio::test]
async fn gc_markers_stay_bounded_over_many_runs() {
    let (mem, repo) = setup().await;
    let mut live: Vec<(String, String, Vec<u8>)> = Vec::new();
    let mut most = 0;
    let mut most_verdicts = 0;
    for round in 0..30u64 {
        let data = random(100 + round, 2);
        let vol = format!("v{}", round % 3);
        let id = back_up(&repo, &vol, data.clone()).await;
        live.push((vol, id, data));
        if round % 2 == 1 {
            let (v, id, _) = live.remove(0);
            repo.delete_snapshot(&v, &id).await.unwrap();
        }
        mem.advance(SKEW * 2);
        repo.gc().await.unwrap();
        most = most.max(mem.keys("gc/").len());
        most_verdicts = most_verdicts.max(mem.keys("verdicts/gc/").len());
    }
    assert!(
        most <= crate::repo::ops::gc::COMPACT_AT + 3,
        "{most} markers"
    );
    // A retired marker's verdict goes with it (or the verdicts/ listing grows per run).
    assert!(
        most_verdicts <= crate::repo::ops::gc::COMPACT_AT + 3,
        "{most_verdicts} gc marker verdicts"
    );
    for (v, id, data) in &live {
        assert_eq!(&restored(&repo, v, id).await.unwrap(), data);
    }
    assert_clean_and_nothing_to_repair(&repo).await;
}

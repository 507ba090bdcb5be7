//! Readers that lose a race with gc (`follow.rs`): a gc runs, to its end, between a
//! reader's view and its read (a [`MemStore::before_read`] hook), repacking the pack the
//! reader located a blob in or compacting away the segments its view counts. Every reader
//! finishes as if gc had not run; a genuinely missing object is still an error.

use super::testing::{mem_repo, pattern, MemStore, ReadHook};
use crate::backup::{backup, BackupOptions, RawSource};
use crate::repo::protocol::lease::SKEW;
use crate::repo::{CheckOptions, CopyOptions, GcReport, Repository};
use crate::restore::{restore, RestoreTarget};
use crate::store::ObjectStore;
use std::ops::Range;
use std::sync::{Arc, Mutex, Weak};

const CS: usize = 65536;

/// Which read the racing gc runs before.
type When = fn(&str, Option<&Range<u64>>) -> bool;

/// The first read of a pack.
fn pack_read(key: &str, _: Option<&Range<u64>>) -> bool {
    key.starts_with("packs/")
}

/// The first read of a segment's records (past its head: a handle whose head cache is
/// warm after its view reads nothing else of a segment).
fn records_read(key: &str, range: Option<&Range<u64>>) -> bool {
    (key.starts_with("index/") || key.starts_with("refs/"))
        && range.is_some_and(|r| r.start > crate::repo::format::segment::HEAD_SIZE as u64)
}

/// Before the first read `when` picks, run a whole gc on `mem` (from another handle and
/// thread, so the reader is stalled right there); its report lands in the returned cell.
fn gc_before(mem: &Arc<MemStore>, when: When) -> Arc<Mutex<Option<GcReport>>> {
    let out = Arc::new(Mutex::new(None));
    let cell = out.clone();
    let store: Weak<MemStore> = Arc::downgrade(mem);
    let hook = move |m: &MemStore, key: &str, range: Option<&Range<u64>>| {
        if !when(key, range) {
            return;
        }
        *m.before_read.lock().unwrap() = ReadHook(None);
        let store = store.upgrade().expect("store alive");
        let report = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let repo = Repository::open(store).await.unwrap();
                repo.gc().await.expect("the racing gc")
            })
        })
        .join()
        .unwrap();
        *cell.lock().unwrap() = Some(report);
    };
    *mem.before_read.lock().unwrap() = ReadHook(Some(Arc::new(hook)));
    out
}

fn ran(cell: &Arc<Mutex<Option<GcReport>>>) -> GcReport {
    cell.lock().unwrap().clone().expect("the gc ran")
}

async fn back_up(repo: &Repository, volume: &str, data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol.raw");
    std::fs::write(&path, data).unwrap();
    let src = Arc::new(RawSource::open(&path).unwrap());
    let opts = BackupOptions {
        volume: volume.into(),
        ..Default::default()
    };
    backup(repo, src, &opts).await.unwrap().id
}

async fn restored(repo: &Repository, volume: &str, id: &str) -> crate::Result<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    restore(repo, volume, id, &RestoreTarget::Raw(out.clone()), None).await?;
    Ok(std::fs::read(out).unwrap())
}

/// A fresh handle on `mem` (cold caches: its reads reach the store).
async fn cold(mem: &Arc<MemStore>) -> Repository {
    Repository::open(mem.clone() as Arc<dyn ObjectStore>)
        .await
        .unwrap()
}

/// `s1` of 16 chunks, `s2` keeping its first 4 and replacing the rest, `s1` deleted and
/// past the cutoff: the next gc repacks `s1`'s data pack (12 of 16 frames dead), moving
/// `s2`'s 4 chunks to a new pack. The data of `s2`.
async fn repackable(mem: &Arc<MemStore>, repo: &Repository) -> (String, Vec<u8>) {
    let mut data = pattern(1, 16 * CS);
    let s1 = back_up(repo, "a", &data).await;
    data[4 * CS..].copy_from_slice(&pattern(2, 12 * CS));
    let s2 = back_up(repo, "a", &data).await;
    repo.delete_snapshot("a", &s1).await.unwrap();
    mem.advance(SKEW * 2);
    (s2, data)
}

/// Enough commits (each backup one index and one refs segment) that the next gc
/// compacts both kinds; the volumes and their data.
async fn compactable(repo: &Repository) -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    for seed in 0..6u32 {
        let volume = format!("v{seed}");
        let data = pattern(10 + seed, 4 * CS);
        let id = back_up(repo, &volume, &data).await;
        out.push((volume, id, data));
    }
    out
}

#[tokio::test]
async fn a_restore_follows_a_pack_repacked_after_its_view() {
    let (mem, repo) = mem_repo(CS as u32).await;
    let (s2, data) = repackable(&mem, &repo).await;
    let reader = cold(&mem).await;
    let gc = gc_before(&mem, pack_read);
    let got = restored(&reader, "a", &s2)
        .await
        .expect("restore after repack");
    assert!(ran(&gc).packs_repacked > 0, "{:?}", ran(&gc));
    assert!(got == data, "restored bytes differ");
}

#[tokio::test]
async fn a_copy_follows_a_pack_repacked_after_its_view() {
    let (mem, repo) = mem_repo(CS as u32).await;
    let (s2, data) = repackable(&mem, &repo).await;
    let (_, target) = mem_repo(CS as u32).await;
    let reader = cold(&mem).await;
    let gc = gc_before(&mem, pack_read);
    let opts = CopyOptions {
        volume: "a".into(),
        snapshot: Some(s2.clone()),
        ..Default::default()
    };
    crate::repo::copy(&reader, &target, &opts)
        .await
        .expect("copy after repack");
    assert!(ran(&gc).packs_repacked > 0, "{:?}", ran(&gc));
    assert!(restored(&target, "a", &s2).await.unwrap() == data);
}

#[tokio::test]
async fn a_delete_follows_segments_compacted_after_its_view() {
    let (mem, repo) = mem_repo(CS as u32).await;
    let vols = compactable(&repo).await;
    let reader = cold(&mem).await;
    let gc = gc_before(&mem, records_read);
    let (volume, id, _) = &vols[0];
    let d = reader
        .delete_snapshot(volume, id)
        .await
        .expect("delete after compaction");
    assert!(d.freed_blobs > 0);
    assert!(ran(&gc).segments_compacted > 0, "{:?}", ran(&gc));
    let c = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(c.is_clean(), "{c:?}");
    for (volume, id, data) in &vols[1..] {
        assert!(restored(&repo, volume, id).await.unwrap() == *data);
    }
}

#[tokio::test]
async fn a_backup_follows_segments_compacted_after_its_view() {
    let (mem, repo) = mem_repo(CS as u32).await;
    let vols = compactable(&repo).await;
    let reader = cold(&mem).await;
    let gc = gc_before(&mem, records_read);
    // An incremental of v0 (one chunk changed) and a chunk shared with v1: both dedup
    // lookups read the compacted-away segments.
    let mut data = vols[0].2.clone();
    data[..CS].copy_from_slice(&vols[1].2[..CS]);
    let id = back_up(&reader, "v0", &data).await;
    assert!(ran(&gc).segments_compacted > 0, "{:?}", ran(&gc));
    assert!(restored(&repo, "v0", &id).await.unwrap() == data);
    let c = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(c.is_clean(), "{c:?}");
}

#[tokio::test]
async fn a_check_reruns_on_a_fresh_view_after_a_compaction() {
    let (mem, repo) = mem_repo(CS as u32).await;
    compactable(&repo).await;
    let reader = cold(&mem).await;
    let gc = gc_before(&mem, records_read);
    let c = reader
        .check(&CheckOptions::default())
        .await
        .expect("check after compaction");
    assert!(ran(&gc).segments_compacted > 0, "{:?}", ran(&gc));
    assert!(c.is_clean(), "{c:?}");
}

/// A pack that is simply gone (no gc moved it) is damage: with a gc committing right
/// before the read, the restore still fails, naming the pack, and writes no target.
#[tokio::test]
async fn a_missing_pack_is_damage_even_next_to_a_gc() {
    let (mem, repo) = mem_repo(CS as u32).await;
    let (s2, _) = repackable(&mem, &repo).await;
    compactable(&repo).await;
    // s2's own data pack (its 12 new chunks): no gc moves it.
    let gone: Vec<String> = mem
        .keys("packs/")
        .into_iter()
        .filter(|k| {
            let n = mem.objects.lock().unwrap()[k].0.len();
            n > 12 * CS && n < 14 * CS
        })
        .collect();
    assert_eq!(gone.len(), 1, "{:?}", mem.keys("packs/"));
    mem.objects.lock().unwrap().remove(&gone[0]);
    let reader = cold(&mem).await;
    let gc = gc_before(&mem, pack_read);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    let err = restore(&reader, "a", &s2, &RestoreTarget::Raw(out.clone()), None)
        .await
        .expect_err("a missing pack is damage");
    assert!(ran(&gc).segments_compacted > 0 || ran(&gc).packs_repacked > 0);
    let text = err.to_string();
    assert!(text.contains(&gone[0]), "{text}");
}

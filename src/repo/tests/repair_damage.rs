//! Regressions of issue 13: repair and damage containment against the in-memory store,
//! with the clock moved past `LEASE_TTL + SKEW` so the age limit cannot hide a wrong
//! decision. Three snapshots share most chunks (each changes one chunk of the last).

use super::testing::{
    back_up_bytes as back_up, mem_repo, random_bytes as random, read_data_check, MemStore,
};
use crate::repo::ops::repair::rebuild::pack_entries_of;
use crate::repo::protocol::lease::{LEASE_TTL, SKEW};
use crate::repo::{BlobKind, CheckOptions, RepoError, Repository};
use crate::restore::{restore, RestoreTarget};
use crate::store::ObjectStore;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

const CHUNK: usize = 65536;

async fn restored(repo: &Repository, volume: &str, id: &str) -> crate::Result<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.raw");
    restore(repo, volume, id, &RestoreTarget::Raw(out.clone()), None).await?;
    Ok(std::fs::read(&out).unwrap())
}

async fn restores(repo: &Repository, volume: &str, id: &str, want: &[u8]) {
    let got = restored(repo, volume, id).await.unwrap();
    assert!(got == want, "{volume}/{id} restores bit-exact");
}

/// A repository with three snapshots of `v` sharing most chunks.
async fn three() -> (Arc<MemStore>, Repository, Vec<(String, Vec<u8>)>) {
    let (store, repo) = mem_repo(CHUNK as u32).await;
    let mut data = random(1, 16 * CHUNK);
    let mut snaps = Vec::new();
    for step in 0..3u64 {
        if step > 0 {
            let c = step as usize * 5;
            data[c * CHUNK..(c + 1) * CHUNK].copy_from_slice(&random(10 + step, CHUNK));
        }
        snaps.push((back_up(&repo, "v", &data).await, data.clone()));
    }
    (store, repo, snaps)
}

fn past_the_age_limit(store: &MemStore) {
    store.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
}

#[tokio::test]
async fn a_lost_index_segment_is_rebuilt_from_its_pack_not_deleted() {
    let (store, repo, snaps) = three().await;
    let s1 = &snaps[0].0;
    let lost = store.keys(&format!("index/{s1}"));
    assert_eq!(lost.len(), 1);
    let saved = store.get(&lost[0]).await.unwrap();
    store.delete(&lost[0]).await.unwrap();
    assert!(restored(&repo, "v", s1).await.is_err());
    let packs = store.keys("packs/");
    past_the_age_limit(&store);

    let rep = repo.repair().await.unwrap();
    assert_eq!(store.keys("packs/"), packs, "no pack moved: {rep:?}");
    assert!(rep.index_records_rebuilt > 0, "{rep:?}");
    for (id, data) in &snaps {
        restores(&repo, "v", id, data).await;
    }
    // Putting the segment back afterwards changes nothing.
    store.put(&lost[0], saved).await.unwrap();
    for (id, data) in &snaps {
        restores(&repo, "v", id, data).await;
    }
    let c = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(c.is_clean(), "{:?}", c.issues);
}

#[tokio::test]
async fn a_lost_root_loses_nothing_the_other_snapshots_need() {
    let (store, repo, snaps) = three().await;
    let root = format!("snapshots/v/{}", snaps[0].0);
    let saved = store.get(&root).await.unwrap();
    store.delete(&root).await.unwrap();
    let packs = store.keys("packs/");
    // (No clock move here: a root put back later than LEASE_TTL after its lease is void.)
    let rep = repo.repair().await.unwrap();
    assert_eq!(store.keys("packs/"), packs, "no pack moved: {rep:?}");
    assert!(rep.index_records_rebuilt > 0, "{rep:?}");
    assert_eq!(rep.blobs_released, 0, "{rep:?}");
    let lost = format!("v/{}", snaps[0].0);
    assert!(
        rep.damaged.iter().any(|d| d.snapshots.contains(&lost)),
        "the lost root is reported: {rep:?}"
    );
    for (id, data) in &snaps[1..] {
        restores(&repo, "v", id, data).await;
    }
    // Repair kept the lost root's segments: put back, it restores and counts again.
    store.put(&root, saved).await.unwrap();
    for (id, data) in &snaps {
        restores(&repo, "v", id, data).await;
    }
    let again = repo.repair().await.unwrap();
    assert!(again.complete && again.commit.is_none(), "{again:?}");
    past_the_age_limit(&store);
    repo.gc().await.unwrap();
    for (id, data) in &snaps {
        restores(&repo, "v", id, data).await;
    }
    let c = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(c.is_clean(), "{:?}", c.issues);
}

/// The table pack of snapshot `id` and the offset of a byte inside its first frame.
async fn table_frame_byte(store: &MemStore, id: &str) -> (String, usize) {
    for key in store.keys("packs/") {
        if !key.contains(id) {
            continue;
        }
        let bytes = store.get(&key).await.unwrap();
        let entries = pack_entries_of(&key, &bytes).unwrap();
        if let Some(e) = entries.iter().find(|e| e.kind == BlobKind::Table) {
            return (key, e.offset as usize + 60);
        }
    }
    panic!("no table pack of {id}");
}

#[tokio::test]
async fn an_unreadable_table_lowers_no_count() {
    let (store, repo, snaps) = three().await;
    let (key, at) = table_frame_byte(&store, &snaps[0].0).await;
    let good = store.get(&key).await.unwrap();
    let mut bad = good.to_vec();
    bad[at] ^= 0x55;
    store.put(&key, Bytes::from(bad)).await.unwrap();

    let rep = repo.repair().await.unwrap();
    assert!(!rep.complete, "{rep:?}");
    assert_eq!(rep.blobs_released, 0, "{rep:?}");
    assert!(
        rep.unknown.iter().any(|u| u.starts_with("table ")),
        "{rep:?}"
    );

    store.put(&key, good).await.unwrap();
    repo.delete_snapshot("v", &snaps[2].0).await.unwrap();
    repo.delete_snapshot("v", &snaps[1].0).await.unwrap();
    store.advance(SKEW * 3);
    repo.gc().await.unwrap();
    store.advance(SKEW * 3);
    repo.gc().await.unwrap();
    restores(&repo, "v", &snaps[0].0, &snaps[0].1).await;
}

#[tokio::test]
async fn one_bad_marker_does_not_block_the_repository() {
    let (store, repo, snaps) = three().await;
    let other = random(99, 4 * CHUNK);
    let b1 = back_up(&repo, "b", &other).await;
    let root = format!("snapshots/v/{}", snaps[2].0);
    let saved = store.get(&root).await.unwrap();
    store
        .put(&root, saved.slice(..saved.len() / 2))
        .await
        .unwrap();
    for stray in ["snapshots/vol/bogus", "index/garbage", "gc/x"] {
        store.put(stray, Bytes::from_static(b"abc")).await.unwrap();
    }

    restores(&repo, "b", &b1, &other).await;
    restores(&repo, "v", &snaps[0].0, &snaps[0].1).await;
    let listed = repo.snapshots(None).await.unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    let c = repo.check(&CheckOptions::default()).await.unwrap();
    let named = |k: &str| c.issues.iter().find(|i| i.object == k).cloned();
    let damaged_root = named(&root).expect("the damaged root is reported");
    assert_eq!(damaged_root.snapshots, vec![format!("v/{}", snaps[2].0)]);
    for stray in ["snapshots/vol/bogus", "index/garbage", "gc/x"] {
        assert!(named(stray).is_some(), "{stray} reported: {:?}", c.issues);
    }

    // The damaged root still commits its segments: deleting the snapshots it shares
    // chunks with keeps them counted; gc refuses while a marker is damaged.
    repo.delete_snapshot("v", &snaps[1].0).await.unwrap();
    repo.delete_snapshot("v", &snaps[0].0).await.unwrap();
    store.advance(SKEW * 3);
    let refused = repo.gc().await.unwrap_err();
    assert!(
        matches!(refused, crate::Error::Repo(RepoError::Damaged { .. })),
        "{refused}"
    );

    let rep = repo.repair().await.unwrap();
    assert!(!rep.complete, "{rep:?}");
    for stray in ["snapshots/vol/bogus", "index/garbage", "gc/x"] {
        assert!(rep.quarantined.iter().any(|k| k == stray), "{rep:?}");
        assert_eq!(store.keys(&format!("quarantine/{stray}")).len(), 1);
    }
    assert!(!store.keys(&root).is_empty(), "the damaged root stays");
    store.put(&root, saved).await.unwrap();
    repo.gc().await.unwrap();
    store.advance(SKEW * 3);
    repo.gc().await.unwrap();
    restores(&repo, "v", &snaps[2].0, &snaps[2].1).await;
    restores(&repo, "b", &b1, &other).await;
    let c = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(c.is_clean(), "{:?}", c.issues);
}

#[tokio::test]
async fn a_damaged_index_segment_stops_gc_and_delete_until_repair_rebuilds_it() {
    let (store, repo, snaps) = three().await;
    let other = random(98, 4 * CHUNK);
    let b1 = back_up(&repo, "b", &other).await;
    let seg = store.keys(&format!("index/{b1}"))[0].clone();
    let good = store.get(&seg).await.unwrap();
    let mut bad = good.to_vec();
    bad[30] ^= 1;
    store.put(&seg, Bytes::from(bad)).await.unwrap();
    // A new handle (another process): this one cached the segment's head.
    let repo = Repository::open(store.clone()).await.unwrap();

    let refused = |e: crate::Error| matches!(e, crate::Error::Repo(RepoError::Damaged { .. }));
    assert!(refused(repo.gc().await.unwrap_err()));
    assert!(refused(
        repo.delete_snapshot("v", &snaps[0].0).await.unwrap_err()
    ));
    restores(&repo, "v", &snaps[1].0, &snaps[1].1).await;
    let c = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(c.issues.iter().any(|i| i.object == seg), "{:?}", c.issues);

    let rep = repo.repair().await.unwrap();
    assert!(rep.index_records_rebuilt > 0, "{rep:?}");
    assert!(rep.quarantined.contains(&seg), "{rep:?}");
    restores(&repo, "b", &b1, &other).await;
    repo.gc().await.unwrap();
    let c = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(c.is_clean(), "{:?}", c.issues);
    // The original put back: both locate the same frames.
    store.put(&seg, good).await.unwrap();
    restores(&repo, "b", &b1, &other).await;
    for (id, data) in &snaps {
        restores(&repo, "v", id, data).await;
    }
}

#[tokio::test]
async fn check_read_data_verifies_pack_footers_and_trailers() {
    let (store, repo, snaps) = three().await;
    let (key, _) = table_frame_byte(&store, &snaps[0].0).await;
    let good = store.get(&key).await.unwrap();
    for from_end in [10usize, 40] {
        // 10: in the trailer; 40: in the footer.
        let mut bad = good.to_vec();
        let n = bad.len();
        bad[n - from_end] ^= 0x10;
        store.put(&key, Bytes::from(bad)).await.unwrap();
        let c = read_data_check(&repo).await;
        assert!(c.issues.iter().any(|i| i.object == key), "{:?}", c.issues);
    }
    store.put(&key, good).await.unwrap();
    let c = read_data_check(&repo).await;
    assert!(c.is_clean(), "{:?}", c.issues);
}

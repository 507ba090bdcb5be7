//! Adoption of the packs a killed backup sealed after its last checkpoint (format-spec
//! §12.2), against the in-memory store: with a long checkpoint interval only the first
//! checkpoint exists, yet the re-run does not upload again what the tail packs hold; a
//! corrupt tail pack is ignored (with every later one) and reclaimed by gc.

use super::resume_tests::{dying, SIZE};
use super::tests::{new_repo, restored, MemSource};
use super::*;
use crate::repo::protocol::lease;
use crate::repo::tests::testing::MemStore;
use crate::repo::CheckOptions;
use rand::{RngCore, SeedableRng};
use std::time::Duration;

/// An hour: no checkpoint but the first one is ever due in these tests.
fn long_interval(volume: &str) -> BackupOptions {
    BackupOptions {
        volume: volume.into(),
        checkpoint_interval: Some(Duration::from_secs(3600)),
        ..Default::default()
    }
}

/// `SIZE` bytes, all random (so every chunk is new and nothing compresses).
fn random_volume(seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; SIZE];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// The killed holder (the only one with a checkpoint) and its pack names, in order.
fn killed_holder(store: &MemStore) -> (String, Vec<String>) {
    let ck = store.keys("checkpoints/");
    let holder = ck
        .first()
        .and_then(|k| k.split('/').nth(1))
        .expect("the killed run left a checkpoint")
        .to_string();
    let mut packs: Vec<String> = store
        .keys("packs/")
        .into_iter()
        .filter_map(|k| k.rsplit('/').next().map(str::to_string))
        .filter(|n| n.starts_with(&format!("{holder}-p")))
        .collect();
    packs.sort();
    (holder, packs)
}

async fn clean(repo: &Repository) {
    let c = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(c.is_clean(), "{:?}", c.issues);
}

/// Killed at 70 of 96 MiB with an hour's interval: the only checkpoint is the one after
/// the first 16 MiB pack; the packs sealed up to 64 MiB are adopted from their footers, so
/// the re-run uploads about the 32 MiB after them, not the 80 MiB after the checkpoint.
#[tokio::test]
async fn a_long_interval_rerun_adopts_the_packs_after_the_checkpoint() {
    let (store, repo) = new_repo(65536).await;
    let data = random_volume(21);
    let src = MemSource::new(data.clone());
    let err = backup(&repo, dying(&src, 70 << 20, "t"), &long_interval("vm"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("simulated crash"), "{err}");
    assert_eq!(
        store.keys("checkpoints/").len(),
        1,
        "only the first checkpoint"
    );
    let r = backup(&repo, dying(&src, u64::MAX, "t"), &long_interval("vm"))
        .await
        .unwrap();
    eprintln!("re-run: {r:?}");
    assert!(r.resumed_from.is_some(), "{r:?}");
    assert!(r.tail_packs_adopted >= 2, "{r:?}");
    // Re-read from the checkpoint on (the tree after it is not durable), uploaded only
    // the 32 MiB the killed run had not sealed, plus tables and segments.
    assert!(r.bytes_read >= 64 << 20, "{r:?}");
    assert!(r.bytes_uploaded < 36 << 20, "{r:?}");
    assert_eq!(restored(&repo, "vm", &r.id).await, data);
    clean(&repo).await;
    // After the killed writer's expiry gc removes its leftovers, never an adopted pack.
    store.advance(lease::LEASE_TTL + crate::repo::lease_skew() + Duration::from_secs(60));
    let g = repo.gc().await.unwrap();
    assert!(g.dead_writers_cleaned >= 1, "{g:?}");
    let fresh = Repository::open(store.clone()).await.unwrap();
    assert_eq!(restored(&fresh, "vm", &r.id).await, data);
    clean(&fresh).await;
    let repair = fresh.repair().await.unwrap();
    assert_eq!(repair.stray_packs_deleted, 0, "{repair:?}");
}

/// A tail pack that does not verify (its footer damaged) ends the adoption there: the
/// re-run uploads that pack's data and everything after it again, the snapshot is exact,
/// and the damaged pack and the later unadopted ones stay with the killed run's intent,
/// which gc reclaims after its expiry.
#[tokio::test]
async fn a_corrupt_tail_pack_is_ignored_and_reclaimed() {
    let (store, repo) = new_repo(65536).await;
    let data = random_volume(22);
    let src = MemSource::new(data.clone());
    backup(&repo, dying(&src, 70 << 20, "t"), &long_interval("vm"))
        .await
        .unwrap_err();
    let (_, packs) = killed_holder(&store);
    assert!(packs.len() >= 3, "{packs:?}");
    // Damage the second-last pack's footer (one byte before its 24-byte trailer).
    let victim = packs[packs.len() - 2].clone();
    let vkey = crate::repo::pack_key_of(&victim);
    let mut bytes = repo.store().get(&vkey).await.unwrap().to_vec();
    let at = bytes.len() - 30;
    bytes[at] ^= 0xff;
    repo.store()
        .put(&vkey, bytes::Bytes::from(bytes))
        .await
        .unwrap();
    let r = backup(&repo, dying(&src, u64::MAX, "t"), &long_interval("vm"))
        .await
        .unwrap();
    eprintln!("re-run with a damaged tail pack: {r:?}");
    assert!(r.resumed_from.is_some(), "{r:?}");
    assert_eq!(restored(&repo, "vm", &r.id).await, data);
    clean(&repo).await;
    let clean_tail = r.tail_packs_adopted;
    // Neither the damaged pack nor the one after it is adopted: their data went up again.
    assert!(r.bytes_uploaded >= 40 << 20, "{r:?}");
    store.advance(lease::LEASE_TTL + crate::repo::lease_skew() + Duration::from_secs(60));
    let g = repo.gc().await.unwrap();
    assert!(g.dead_writers_cleaned >= 1, "{g:?}");
    assert!(
        store.keys(&vkey).is_empty(),
        "gc left the damaged pack {victim} (tail adopted: {clean_tail})"
    );
    let last = crate::repo::pack_key_of(&packs[packs.len() - 1]);
    assert!(store.keys(&last).is_empty(), "gc left {last}");
    let fresh = Repository::open(store.clone()).await.unwrap();
    assert_eq!(restored(&fresh, "vm", &r.id).await, data);
    clean(&fresh).await;
    let repair = fresh.repair().await.unwrap();
    assert_eq!(repair.stray_packs_deleted, 0, "{repair:?}");
}

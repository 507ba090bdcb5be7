//! Deterministic regression tests for what the schedule runner found.

use super::actors::{VersionSource, CS};
use crate::backup::{backup, BackupOptions};
use crate::repo::lease::SKEW;
use crate::repo::testing::MemStore;
use crate::repo::{CheckOptions, InitOptions, Repository};
use crate::store::faults::{FaultConfig, FaultOp, FaultStore};
use rand::{RngCore, SeedableRng};
use std::sync::Arc;

fn random(seed: u64, chunks: usize) -> Vec<u8> {
    let mut v = vec![0u8; chunks * CS];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

async fn setup() -> (Arc<MemStore>, Repository) {
    let mem = Arc::new(MemStore::default());
    let repo = Repository::init(
        mem.clone(),
        &InitOptions {
            chunk_size: CS as u32,
        },
    )
    .await
    .unwrap();
    (mem, repo)
}

async fn back_up(repo: &Repository, volume: &str, data: Vec<u8>) -> String {
    let opts = BackupOptions {
        volume: volume.into(),
        ..BackupOptions::default()
    };
    backup(repo, VersionSource::fixed(data), &opts)
        .await
        .unwrap()
        .id
}

/// Packs whose names start with `holder`.
fn packs_of(mem: &MemStore, holder: &str) -> Vec<String> {
    mem.keys("packs/")
        .into_iter()
        .filter(|k| k.rsplit('/').next().is_some_and(|n| n.starts_with(holder)))
        .collect()
}

async fn assert_nothing_to_repair(repo: &Repository) {
    let r = repo.repair().await.unwrap();
    assert!(r.check.is_clean(), "{:?}", r.check.issues);
    assert_eq!(
        (r.stray_packs_deleted, r.commit),
        (0, None),
        "repair found work"
    );
}

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
    let c = repo
        .check(&CheckOptions {
            read_data: true,
            sample_pct: None,
        })
        .await
        .unwrap();
    assert!(c.is_clean(), "{:?}", c.issues);
    assert_nothing_to_repair(&repo).await;
}

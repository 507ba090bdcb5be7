//! `heal` and `delete_damaged_snapshot` on in-memory repositories: a deleted data pack and
//! a truncated table pack are healed from a copy, the repository then checks clean with
//! data re-read, also after a gc whose compaction drops the shadowed pack; a healthy
//! snapshot writes nothing; a re-chunked copy is refused; a snapshot whose tables are gone
//! is deleted anyway, leaving a leak that repair reclaims.

use super::testing::{back_up_pattern, mem_repo, pattern, read_data_check, MemStore};
use crate::repo::error::is_damage;
use crate::repo::ops::copy::{copy, heal, CopyOptions};
use crate::repo::{CheckOptions, RepoError};
use crate::store::ObjectStore;
use std::sync::Arc;

const MIB: usize = 1 << 20;

/// The packs of `mem`, smallest first.
fn packs_by_size(mem: &MemStore) -> Vec<String> {
    let objects = mem.objects.lock().unwrap();
    let mut packs: Vec<(usize, String)> = objects
        .iter()
        .filter(|(k, _)| k.starts_with("packs/"))
        .map(|(k, (b, _))| (b.len(), k.clone()))
        .collect();
    packs.sort();
    packs.into_iter().map(|(_, k)| k).collect()
}

fn truncate(mem: &MemStore, key: &str) {
    let mut objects = mem.objects.lock().unwrap();
    let (bytes, _) = objects.get_mut(key).unwrap();
    *bytes = bytes.slice(..bytes.len() / 2);
}

/// Stages seen: (name, total, sum of advances).
#[derive(Default)]
struct Stages(std::sync::Mutex<Vec<(String, u64, u64)>>);

impl crate::repo::Progress for Stages {
    fn stage(&self, name: &str, total: u64) {
        self.0.lock().unwrap().push((name.into(), total, 0));
    }
    fn advance(&self, n: u64) {
        if let Some(s) = self.0.lock().unwrap().last_mut() {
            s.2 += n;
        }
    }
}

#[tokio::test]
async fn heal_from_a_copy_then_gc_compaction_keeps_it_whole() {
    let (mem_a, a) = mem_repo(65536).await;
    let (_, b) = mem_repo(65536).await;
    let id = back_up_pattern(&a, "vm", 1, 4 * MIB).await;
    let opts = CopyOptions {
        volume: "vm".into(),
        ..Default::default()
    };
    copy(&a, &b, &opts).await.unwrap();

    // Healthy: nothing written.
    let keys_before = mem_a.keys("");
    let r = heal(&a, &b, "vm", &id, None).await.unwrap();
    assert_eq!((r.tables_healed, r.chunks_healed, r.commit), (0, 0, None));
    assert_eq!((r.tables_checked, r.chunks_checked), (1, 64));
    assert_eq!(mem_a.keys(""), keys_before, "a healthy heal writes nothing");

    // Damage: the data pack deleted, the table pack cut in half.
    let packs = packs_by_size(&mem_a);
    assert_eq!(packs.len(), 2, "{packs:?}");
    mem_a.delete(&packs[1]).await.unwrap();
    truncate(&mem_a, &packs[0]);
    let damaged = read_data_check(&a).await;
    assert!(!damaged.is_clean());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    let target = crate::restore::RestoreTarget::Raw(out.clone());
    let e = crate::restore::restore(&a, "vm", &id, &target, None)
        .await
        .unwrap_err();
    assert!(is_damage(&e), "{e}");

    let stages = Arc::new(Stages::default());
    let r = heal(&a, &b, "vm", &id, Some(stages.clone())).await.unwrap();
    assert_eq!((r.tables_healed, r.chunks_healed), (1, 64), "{r:?}");
    let whole = a.snapshot("vm", &id).await.unwrap().size;
    assert_eq!(
        *stages.0.lock().unwrap(),
        [
            ("heal".into(), whole, whole),
            ("verify".into(), whole, whole)
        ],
        "each stage counts every byte of the volume once"
    );
    assert!(r.commit.as_deref().unwrap().starts_with("gc/"));
    assert!(r.bytes_from_peer >= 4 * MIB as u64, "{r:?}");
    // What is left to report is the two damaged packs themselves: an index segment still
    // names them (their frames are shadowed by the healed copies) until a compaction drops
    // them, and `--read-data` verifies every counted pack's footer (format-spec §11.1).
    let healed = read_data_check(&a).await;
    assert_eq!(healed.refcount_mismatches, 0);
    assert!(
        (healed.issues.iter()).all(|i| i.problem.starts_with("pack footer or trailer")
            && packs.iter().any(|p| p == &i.object)),
        "{healed:?}"
    );
    crate::restore::restore(&a, "vm", &id, &target, None)
        .await
        .unwrap();
    let restored = std::fs::read(&out).unwrap();
    assert!(
        restored == pattern(1, 4 * MIB),
        "healed snapshot restores bit-exact"
    );

    // More segments, then a gc that compacts them: the healed locations win and the
    // shadowed packs go.
    for v in 0..4 {
        back_up_pattern(&a, &format!("other{v}"), 10 + v, MIB).await;
    }
    let g = a.gc().await.unwrap();
    assert!(g.segments_compacted > 0, "{g:?}");
    assert!(
        g.packs_deleted >= 2,
        "both damaged packs were shadowed: {g:?}"
    );
    let after = read_data_check(&a).await;
    assert!(after.is_clean(), "{after:?}");
    assert_eq!(after.refcount_mismatches, 0);
}

#[tokio::test]
async fn heal_refuses_a_rechunked_copy_and_a_peer_without_the_snapshot() {
    let (_, a) = mem_repo(65536).await;
    let (_, b) = mem_repo(131072).await;
    let (_, empty) = mem_repo(65536).await;
    let id = back_up_pattern(&a, "vm", 2, 2 * MIB).await;
    let opts = CopyOptions {
        volume: "vm".into(),
        ..Default::default()
    };
    assert!(copy(&a, &b, &opts).await.unwrap().rechunked);
    let e = heal(&a, &b, "vm", &id, None).await.unwrap_err();
    assert!(
        matches!(e, crate::Error::Repo(RepoError::InvalidArgument(_))),
        "{e}"
    );
    let e = heal(&a, &empty, "vm", &id, None).await.unwrap_err();
    assert!(
        matches!(e, crate::Error::Repo(RepoError::SnapshotNotFound { .. })),
        "{e}"
    );
}

#[tokio::test]
async fn a_snapshot_with_its_tables_gone_is_deleted_leaving_a_leak_for_repair() {
    let (mem, a) = mem_repo(65536).await;
    let id = back_up_pattern(&a, "vm", 3, 2 * MIB).await;
    let packs = packs_by_size(&mem);
    mem.delete(&packs[0]).await.unwrap();
    let e = a.delete_snapshot("vm", &id).await.unwrap_err();
    assert!(is_damage(&e), "the plain delete walks the tree: {e}");
    let r = a.delete_damaged_snapshot("vm", &id).await.unwrap();
    assert_eq!((r.tables_unreadable, r.freed_blobs), (1, 1), "{r:?}");
    assert!(a.snapshots(Some("vm")).await.unwrap().is_empty());
    // No snapshot is damaged any more; the chunks below the lost table leak.
    let c = a.check(&CheckOptions::default()).await.unwrap();
    assert!(c.issues.iter().all(|i| i.snapshots.is_empty()), "{c:?}");
    assert_eq!(c.refcount_mismatches, 32, "the leaked chunks");
    a.repair().await.unwrap();
    let c = a.check(&CheckOptions::default()).await.unwrap();
    assert!(c.is_clean() && c.refcount_mismatches == 0, "{c:?}");
}

/// A lost data pack must not stop gc for good: the garbage in it is skipped (nothing to
/// reclaim), every later gc still runs, and what remains collectable is collected.
#[tokio::test]
async fn gc_skips_garbage_in_a_missing_pack_instead_of_failing_forever() {
    let (mem, a) = mem_repo(65536).await;
    let id = back_up_pattern(&a, "vm", 4, 2 * MIB).await;
    // The largest pack of the first backup: its chunk data.
    let data = packs_by_size(&mem).pop().unwrap();
    let keep = back_up_pattern(&a, "other", 5, 2 * MIB).await;
    mem.delete(&data).await.unwrap();
    a.delete_snapshot("vm", &id).await.unwrap();
    mem.advance(std::time::Duration::from_secs(7200));
    for run in 0..2 {
        let g = a.gc().await.unwrap_or_else(|e| panic!("gc run {run}: {e}"));
        assert!(run > 0 || g.packs_unreadable == 1, "{g:?}");
    }
    let c = read_data_check(&a).await;
    assert!(
        c.issues
            .iter()
            .all(|i| i.snapshots.iter().all(|s| !s.contains(&keep))),
        "the other volume is intact: {c:?}"
    );
}

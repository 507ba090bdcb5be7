//! Deterministic regressions for leaks that used to need `check --repair` (issue 4): adopted
//! packs a re-run did not use, orphan packs of double-fault zombies, and gc reporting the
//! same garbage as collected on every run.

use super::actors::{VersionSource, CS};
use super::fixtures::{packs_of, random, setup};
use crate::backup::{backup, BackupOptions, BlockSource};
use crate::repo::format::envelope::{self, MAGIC_INTENT};
use crate::repo::format::ids::new_time_id;
use crate::repo::format::pack::pack_key;
use crate::repo::protocol::lease::{Lease, LEASE_TTL, SKEW};
use crate::repo::protocol::stale::{ORPHAN_SWEEP_PERIOD, SWEEP_KEY};
use crate::repo::tests::testing::MemStore;
use crate::repo::writer::{intent_key, pack_name, Intent};
use crate::repo::BaseIdentity;
use crate::store::ObjectStore;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// A fixed volume whose reads fail from `fail_at` on: a backup killed mid-way.
struct Dying {
    data: Vec<u8>,
    fail_at: u64,
}

impl BlockSource for Dying {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset >= self.fail_at {
            return Err(std::io::Error::other("simulated crash"));
        }
        buf.copy_from_slice(&self.data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn identity(&self) -> Option<BaseIdentity> {
        None
    }
}

fn every_pack(volume: &str) -> BackupOptions {
    BackupOptions {
        volume: volume.into(),
        checkpoint_interval: Some(Duration::ZERO),
        ..BackupOptions::default()
    }
}

/// Record an orphan sweep as just done: the next gc runs without it (so what a test
/// expects gc to reclaim otherwise is not swept up by it).
async fn sweep_done(mem: &MemStore) {
    mem.put(SWEEP_KEY, Bytes::new()).await.unwrap();
}

/// Issue 4, leak 1 (schedule runner seed 4242273): a backup killed after its first
/// checkpoint, re-run on a changed source. The re-run adopts the checkpoint (its chunks
/// are offered for reuse) but meets none of them, so its index names none of the killed
/// run's packs, and the killed holder's intent no longer covers them (the adopter took
/// them over): only `check --repair` deleted them. Now the adopter's commit lists them as
/// `released` and gc deletes them once that commit is older than `LEASE_TTL + SKEW` —
/// also when a compaction supersedes the releasing segment before that.
#[tokio::test]
async fn adopted_packs_a_committed_rerun_did_not_use_are_reclaimed_by_gc() {
    let (mem, repo) = setup().await;
    let chunks = (20 << 20) / CS;
    let killed = Arc::new(Dying {
        data: random(1, chunks),
        fail_at: 18 << 20,
    });
    let err = backup(&repo, killed, &every_pack("vm")).await.unwrap_err();
    assert!(err.to_string().contains("simulated crash"), "{err}");
    let ck = mem.keys("checkpoints/");
    assert_eq!(ck.len(), 1, "{ck:?}");
    let h = ck[0].split('/').nth(1).unwrap().to_string();
    let held = packs_of(&mem, &h);
    assert!(!held.is_empty());
    let changed = random(2, 64);
    let r = backup(
        &repo,
        VersionSource::fixed(changed.clone()),
        &every_pack("vm"),
    )
    .await
    .unwrap();
    assert_eq!(r.resumed_from.as_deref(), Some(h.as_str()), "{r:?}");
    let set = repo.load_segments().await.unwrap();
    let released: Vec<String> = set
        .index
        .iter()
        .flat_map(|s| s.meta.released.iter().map(|p| pack_key(p)))
        .collect();
    for p in &held {
        assert!(released.contains(p), "{p} not released: {released:?}");
    }
    // Compaction before the expiry carries the releases into its own segment.
    for i in 0..5 {
        backup(
            &repo,
            VersionSource::fixed(random(10 + i, 2)),
            &every_pack("w"),
        )
        .await
        .unwrap();
    }
    sweep_done(&mem).await;
    let g = repo.gc().await.unwrap();
    assert!(g.segments_compacted > 0, "{g:?}");
    assert_eq!(
        packs_of(&mem, &h),
        held,
        "released packs deleted before the expiry"
    );
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    sweep_done(&mem).await;
    let g = repo.gc().await.unwrap();
    assert_eq!(g.orphan_packs_deleted, 0, "{g:?}");
    assert!(g.packs_deleted >= held.len() as u64, "{g:?}");
    assert!(packs_of(&mem, &h).is_empty(), "{:?}", packs_of(&mem, &h));
    let out = tempfile::NamedTempFile::new().unwrap();
    crate::restore::restore(
        &repo,
        "vm",
        &r.id,
        &crate::restore::RestoreTarget::Raw(out.path().to_path_buf()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(out.path()).unwrap(), changed);
    let fix = repo.repair().await.unwrap();
    assert!(fix.check.is_clean(), "{:?}", fix.check.issues);
    assert_eq!(
        (
            fix.stray_packs_deleted,
            fix.stray_segments_deleted,
            fix.commit.clone()
        ),
        (0, 0, None),
        "{fix:#?}"
    );
}

/// A pack object named `holder-p000000` (its content does not matter to the sweep).
async fn put_pack(mem: &MemStore, holder: &str) -> String {
    let key = pack_key(&pack_name(holder, 0));
    mem.put(&key, Bytes::from_static(b"pack")).await.unwrap();
    key
}

/// Issue 4, leak 2: a zombie writer (judged dead and cleaned by gc) killed between a pack
/// upload and its intent check, whose upload landed after gc's last probe, leaves a pack
/// nothing names: no lease, no intent. Only `check --repair` found it. Now gc's periodic
/// orphan sweep deletes it once it is older than `LEASE_TTL + SKEW` — and keeps the packs
/// of a leased holder, of a holder a leased writer's intent adopted, and young ones.
#[tokio::test]
async fn the_orphan_sweep_reclaims_a_double_fault_zombies_pack_and_nothing_needed() {
    let (mem, repo) = setup().await;
    let zombie = put_pack(&mem, &new_time_id()).await;
    let (leased, adopter, adopted) = (new_time_id(), new_time_id(), new_time_id());
    let leased_pack = put_pack(&mem, &leased).await;
    let adopted_pack = put_pack(&mem, &adopted).await;
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    let store: Arc<dyn ObjectStore> = mem.clone();
    let lease = Lease::acquire(store.clone(), &leased, "backup", None)
        .await
        .unwrap();
    let adopter_lease = Lease::acquire(store, &adopter, "backup", None)
        .await
        .unwrap();
    let intent = Intent {
        holder: adopter.clone(),
        op: "backup".into(),
        commit: format!("snapshots/vm/{adopter}"),
        adopted: vec![adopted.clone()],
        adopted_by: None,
        unadopted_from: 0,
    };
    let body = Bytes::from(envelope::seal(MAGIC_INTENT, &intent));
    mem.put(&intent_key(&adopter), body).await.unwrap();
    let young = put_pack(&mem, &new_time_id()).await;
    let g = repo.gc().await.unwrap();
    assert_eq!(g.orphan_packs_deleted, 1, "{g:?}");
    let left = mem.keys("packs/");
    assert!(!left.contains(&zombie), "{left:?}");
    for k in [&leased_pack, &adopted_pack, &young] {
        assert!(left.contains(k), "{k} deleted: {left:?}");
    }
    // Within the period no sweep runs (its listing of `packs/` is amortised), even when
    // an orphan is old enough by then.
    mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
    lease.release().await;
    let g = repo.gc().await.unwrap();
    assert_eq!(g.orphan_packs_deleted, 0, "{g:?}");
    let left = mem.keys("packs/");
    assert!(
        left.contains(&young) && left.contains(&leased_pack),
        "{left:?}"
    );
    // The adopter's lease expired meanwhile: gc cleaned it through its intent, adopted
    // packs included (the dead-writer path, not the sweep).
    assert!(!left.contains(&adopted_pack), "{left:?}");
    assert!(mem.keys(&intent_key(&adopter)).is_empty());
    drop(adopter_lease);
    mem.advance(ORPHAN_SWEEP_PERIOD);
    let g = repo.gc().await.unwrap();
    assert_eq!(g.orphan_packs_deleted, 2, "{g:?}");
    assert!(mem.keys("packs/").is_empty(), "{:?}", mem.keys("packs/"));
    let fix = repo.repair().await.unwrap();
    assert_eq!(
        (fix.stray_packs_deleted, fix.commit.clone()),
        (0, None),
        "{fix:#?}"
    );
}

/// Issue 4, item 3: garbage left in a pack below the repack threshold was reported as
/// `blobs_collected` again by every gc. Now only blobs whose space a run reclaimed count;
/// the kept ones are `blobs_dead_kept` (a state, like `dead_bytes_kept`).
#[tokio::test]
async fn garbage_kept_below_the_repack_threshold_is_not_collected_again() {
    let (mem, repo) = setup().await;
    let v1 = random(3, 8);
    let mut v2 = v1.clone();
    v2[..CS].copy_from_slice(&random(4, 1));
    let opts = BackupOptions {
        volume: "vm".into(),
        ..BackupOptions::default()
    };
    let r1 = backup(&repo, VersionSource::fixed(v1), &opts)
        .await
        .unwrap();
    backup(&repo, VersionSource::fixed(v2), &opts)
        .await
        .unwrap();
    repo.delete_snapshot("vm", &r1.id).await.unwrap();
    mem.advance(SKEW * 2);
    let first = repo.gc().await.unwrap();
    assert_eq!(
        (first.blobs_collected, first.blobs_dead_kept),
        (1, 1),
        "the old leaf table's pack is deleted, the old chunk stays with 7 live ones: {first:?}"
    );
    assert!(first.dead_bytes_kept > 0, "{first:?}");
    let second = repo.gc().await.unwrap();
    assert_eq!(second.blobs_collected, 0, "{second:?}");
    assert_eq!(second.packs_deleted, 0, "{second:?}");
    assert_eq!(
        (second.blobs_dead_kept, second.dead_bytes_kept),
        (first.blobs_dead_kept, first.dead_bytes_kept),
        "{second:?}"
    );
}

/// Format: `released` is an optional segment meta field. A segment without releases
/// encodes exactly as before (no `released` key: golden bytes and older readers
/// unchanged); one with releases round-trips.
#[test]
fn released_is_an_optional_segment_meta_field() {
    use crate::repo::format::segment::{self, SegmentMeta, INDEX_MAGIC, INDEX_RECORD};
    let plain = SegmentMeta {
        commit: "snapshots/v/x".into(),
        packs: vec!["p".into()],
        ..SegmentMeta::default()
    };
    let json = serde_json::to_string(&plain).unwrap();
    assert_eq!(
        json,
        r#"{"commit":"snapshots/v/x","supersedes":[],"packs":["p"],"dead_packs":[]}"#
    );
    let old: SegmentMeta = serde_json::from_str(&json).unwrap();
    assert!(old.released.is_empty());
    let with = SegmentMeta {
        released: vec!["a-p000000".into()],
        ..plain
    };
    let bytes = segment::encode(INDEX_MAGIC, INDEX_RECORD, Vec::new(), &with);
    let (h, mlen, crc) =
        segment::parse_head(INDEX_MAGIC, "index/x", &bytes[..segment::HEAD_SIZE]).unwrap();
    let meta = &bytes[segment::HEAD_SIZE..segment::HEAD_SIZE + mlen as usize];
    let h = segment::finish_head(h, &bytes[..segment::HEAD_SIZE], meta, crc).unwrap();
    assert_eq!(h.meta, with);
}

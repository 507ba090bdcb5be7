//! Pipeline tests against the in-memory test store: full and incremental backups,
//! restores bit-exact, delete + gc reclaim, check clean, and the upload-amplification and
//! PUT-count bounds of issue 3.

use super::*;
use crate::repo::tests::testing::MemStore;
use crate::repo::{CheckOptions, InitOptions};
use crate::restore::{restore, RestoreTarget};
use rand::{Rng, RngCore, SeedableRng};
use std::sync::Mutex;

/// An in-memory volume that tracks which ranges were written since its last identity.
pub(crate) struct MemSource {
    pub data: Mutex<Vec<u8>>,
    pub dirty: Mutex<Vec<SourceRange>>,
    pub generation: Mutex<u64>,
    /// The identity the dirty list is relative to.
    pub tracked_since: Mutex<Option<u64>>,
}

impl MemSource {
    pub(crate) fn new(data: Vec<u8>) -> Arc<MemSource> {
        Arc::new(MemSource {
            data: Mutex::new(data),
            dirty: Mutex::new(vec![]),
            generation: Mutex::new(0),
            tracked_since: Mutex::new(None),
        })
    }
    pub(crate) fn write(&self, off: usize, bytes: &[u8]) {
        self.data.lock().unwrap()[off..off + bytes.len()].copy_from_slice(bytes);
        self.dirty.lock().unwrap().push(SourceRange {
            offset: off as u64,
            length: bytes.len() as u64,
            zero: false,
        });
    }
    /// Called after a successful backup: start tracking changes from here.
    pub(crate) fn mark(&self) {
        let mut g = self.generation.lock().unwrap();
        *g += 1;
        *self.tracked_since.lock().unwrap() = Some(*g);
        self.dirty.lock().unwrap().clear();
    }
}

impl BlockSource for MemSource {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let d = self.data.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn changed_since(&self, base: &BaseIdentity) -> Option<Vec<SourceRange>> {
        let since = (*self.tracked_since.lock().unwrap())?;
        (base.id == since.to_string()).then(|| self.dirty.lock().unwrap().clone())
    }
    fn identity(&self) -> Option<BaseIdentity> {
        let g = *self.generation.lock().unwrap() + 1;
        Some(BaseIdentity {
            name: "mem".into(),
            id: g.to_string(),
            ..Default::default()
        })
    }
}

pub(crate) async fn new_repo(cs: u32) -> (Arc<MemStore>, Repository) {
    let store = Arc::new(MemStore::default());
    let repo = Repository::init(store.clone(), &InitOptions { chunk_size: cs })
        .await
        .unwrap();
    (store, repo)
}

fn opts(volume: &str) -> BackupOptions {
    BackupOptions {
        volume: volume.into(),
        ..Default::default()
    }
}

pub(crate) async fn restored(repo: &Repository, volume: &str, id: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("out.raw");
    restore(repo, volume, id, &RestoreTarget::Raw(p.clone()), None)
        .await
        .unwrap();
    std::fs::read(p).unwrap()
}

/// Half random, half zero, plus a repeated block (dedup inside one backup).
pub(crate) fn volume(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; size];
    rng.fill_bytes(&mut v[..size / 2]);
    if size >= 8 * 65536 {
        let (a, b) = v.split_at_mut(size / 2 + 65536);
        b[..65536].copy_from_slice(&a[..65536]);
    }
    v
}

#[tokio::test]
async fn full_incremental_restore_delete_gc() {
    let (store, repo) = new_repo(65536).await;
    let src = MemSource::new(volume(8 << 20, 1));
    let r1 = backup(&repo, src.clone(), &opts("vm1")).await.unwrap();
    src.mark();
    assert!(!r1.incremental);
    assert_eq!(r1.chunks_zero, 63);
    assert_eq!(r1.chunks_new, 64, "64 random chunks, the copy deduplicated");
    assert_eq!(r1.chunks_reused, 1);
    let v1 = src.data.lock().unwrap().clone();
    assert_eq!(restored(&repo, "vm1", &r1.id).await, v1);

    src.write(3 * 65536 + 100, &[7u8; 200]);
    src.write(100 * 65536, &[9u8; 65536]);
    let r2 = backup(&repo, src.clone(), &opts("vm1")).await.unwrap();
    src.mark();
    assert!(r2.incremental);
    assert_eq!(r2.parent.as_deref(), Some(r1.id.as_str()));
    assert_eq!(r2.bytes_read, 2 * 65536);
    assert_eq!(r2.chunks_new, 2);
    let v2 = src.data.lock().unwrap().clone();
    assert_eq!(restored(&repo, "vm1", &r2.id).await, v2);
    assert_eq!(restored(&repo, "vm1", &r1.id).await, v1);

    let diff = repo.diff("vm1", &r1.id, &r2.id).await.unwrap();
    assert_eq!(
        diff,
        vec![
            crate::repo::DiffRange {
                offset: 3 * 65536,
                length: 65536,
                zero: false
            },
            crate::repo::DiffRange {
                offset: 100 * 65536,
                length: 65536,
                zero: false
            },
        ]
    );

    let snaps = repo.snapshots(Some("vm1")).await.unwrap();
    assert_eq!(snaps.len(), 2);
    assert_eq!(
        snaps[0].exclusive_bytes, 65536,
        "only the chunk r2 overwrote"
    );
    assert_eq!(snaps[1].exclusive_bytes, 2 * 65536);
    assert!(repo
        .check(&CheckOptions {
            read_data: true,
            sample_pct: None
        })
        .await
        .unwrap()
        .is_clean());

    let d = repo.delete_snapshot("vm1", &r1.id).await.unwrap();
    assert_eq!(d.freed_bytes, 65536);
    // The freed blob is protected until the delete is older than SKEW at gc time.
    store.advance(crate::repo::lease_skew() * 2);
    let g = repo.gc().await.unwrap();
    assert_eq!(
        g.blobs_collected + g.blobs_dead_kept,
        2,
        "one chunk + the old leaf table"
    );
    assert_eq!(restored(&repo, "vm1", &r2.id).await, v2);
    let c = repo
        .check(&CheckOptions {
            read_data: true,
            sample_pct: None,
        })
        .await
        .unwrap();
    assert!(c.is_clean(), "{:?}", c.issues);
    assert_eq!(repo.snapshots(None).await.unwrap().len(), 1);
}

/// Issue 3's bounds: 1 % scattered 64 KiB writes upload ≤ 4× the changed bytes, and a full
/// backup costs ≤ 1 PUT per 4 MiB. Measured through the repository's request counters.
#[tokio::test]
async fn upload_amplification_and_put_bounds() {
    const SIZE: usize = 256 << 20;
    let (_store, repo) = new_repo(65536).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut data = vec![0u8; SIZE];
    rng.fill_bytes(&mut data);
    let src = MemSource::new(data);
    let full = backup(&repo, src.clone(), &opts("big")).await.unwrap();
    src.mark();
    let units = (SIZE as f64) / (4u64 << 20) as f64;
    eprintln!(
        "full: {} PUTs for {units} × 4 MiB, {} bytes uploaded",
        full.puts, full.bytes_uploaded
    );
    assert!(
        full.puts as f64 <= units,
        "full backup made {} PUTs for {units} units of 4 MiB",
        full.puts
    );

    // 1 % of the volume: 40 distinct 64 KiB-aligned writes (160 per GiB).
    let mut chunks = std::collections::BTreeSet::new();
    while chunks.len() < SIZE / 65536 / 100 + 1 {
        chunks.insert(rng.random_range(0..SIZE / 65536));
    }
    for c in &chunks {
        let mut buf = vec![0u8; 65536];
        rng.fill_bytes(&mut buf);
        src.write(c * 65536, &buf);
    }
    let inc = backup(&repo, src.clone(), &opts("big")).await.unwrap();
    let changed = chunks.len() as u64 * 65536;
    eprintln!(
        "incremental: {} bytes uploaded for {changed} changed ({:.3}×), {} PUTs, {} requests",
        inc.bytes_uploaded,
        inc.bytes_uploaded as f64 / changed as f64,
        inc.puts,
        inc.requests
    );
    assert!(inc.incremental);
    assert_eq!(inc.bytes_changed, changed);
    assert!(
        inc.bytes_uploaded <= 4 * changed,
        "amplification {}",
        inc.amplification
    );
    let c = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(c.is_clean(), "{:?}", c.issues);
}

/// A sparse volume large enough for two table levels (4 KiB chunks, 6 GiB ⇒ 1.5 Mi
/// chunks): only allocated data is read, incrementals edit interior tables copy-on-write,
/// restore and diff agree with the writes.
struct SparseSource {
    size: u64,
    blocks: Mutex<std::collections::BTreeMap<u64, Vec<u8>>>,
    dirty: Mutex<Vec<SourceRange>>,
    gen: Mutex<u64>,
}

impl BlockSource for SparseSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        buf.fill(0);
        if let Some(b) = self.blocks.lock().unwrap().get(&offset) {
            buf.copy_from_slice(&b[..buf.len()]);
        }
        Ok(())
    }
    fn changed_since(&self, base: &BaseIdentity) -> Option<Vec<SourceRange>> {
        (base.id == self.gen.lock().unwrap().to_string())
            .then(|| self.dirty.lock().unwrap().clone())
    }
    fn identity(&self) -> Option<BaseIdentity> {
        Some(BaseIdentity {
            id: self.gen.lock().unwrap().to_string(),
            ..Default::default()
        })
    }
    fn allocated(&self) -> Option<Vec<SourceRange>> {
        Some(
            self.blocks
                .lock()
                .unwrap()
                .keys()
                .map(|o| SourceRange {
                    offset: *o,
                    length: 4096,
                    zero: false,
                })
                .collect(),
        )
    }
}

#[tokio::test]
async fn two_level_tree_sparse_volume() {
    let (_store, repo) = new_repo(4096).await;
    let size = 6u64 << 30;
    let src = Arc::new(SparseSource {
        size,
        blocks: Mutex::new(Default::default()),
        dirty: Mutex::new(vec![]),
        gen: Mutex::new(0),
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut put = |src: &SparseSource, n: usize| {
        let mut offs = Vec::new();
        for _ in 0..n {
            let off = rng.random_range(0..size / 4096) * 4096;
            let mut b = vec![0u8; 4096];
            rng.fill_bytes(&mut b);
            src.blocks.lock().unwrap().insert(off, b);
            src.dirty.lock().unwrap().push(SourceRange {
                offset: off,
                length: 4096,
                zero: false,
            });
            offs.push(off);
        }
        offs
    };
    put(&src, 50);
    let r1 = backup(&repo, src.clone(), &opts("sparse")).await.unwrap();
    assert_eq!(r1.bytes_read, 50 * 4096);
    assert_eq!(repo.snapshot("sparse", &r1.id).await.unwrap().depth, 2);
    src.dirty.lock().unwrap().clear();
    *src.gen.lock().unwrap() = 0;
    let mut changed = put(&src, 20);
    let r2 = backup(&repo, src.clone(), &opts("sparse")).await.unwrap();
    assert!(r2.incremental);
    assert_eq!(r2.bytes_read, 20 * 4096);
    changed.sort();
    changed.dedup();
    let diff = repo.diff("sparse", &r1.id, &r2.id).await.unwrap();
    let diff_offs: Vec<u64> = diff
        .iter()
        .flat_map(|d| (d.offset..d.offset + d.length).step_by(4096))
        .collect();
    assert_eq!(diff_offs, changed);

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparse.raw");
    restore(
        &repo,
        "sparse",
        &r2.id,
        &RestoreTarget::Raw(p.clone()),
        None,
    )
    .await
    .unwrap();
    let out = RawSource::open(&p).unwrap();
    assert_eq!(out.size(), size);
    let mut buf = vec![0u8; 4096];
    for (off, b) in src.blocks.lock().unwrap().iter() {
        out.read_at(&mut buf, *off).unwrap();
        assert_eq!(&buf, b, "block at {off}");
    }
    let allocated: u64 = out.allocated().unwrap().iter().map(|r| r.length).sum();
    assert!(
        allocated <= 70 * 4096 * 2,
        "restore is sparse ({allocated} bytes allocated)"
    );
    let c = repo
        .check(&CheckOptions {
            read_data: true,
            sample_pct: None,
        })
        .await
        .unwrap();
    assert!(c.is_clean(), "{:?}", c.issues);
}

/// A missing pack and a corrupted pack are reported with the snapshots they damage; a
/// restore of a damaged snapshot fails with an error naming the object instead of writing
/// wrong data.
#[tokio::test]
async fn check_reports_damage_with_snapshots() {
    let (store, repo) = new_repo(65536).await;
    let src = MemSource::new(volume(4 << 20, 5));
    let r1 = backup(&repo, src.clone(), &opts("d")).await.unwrap();
    let data_pack = {
        let objects = store.objects.lock().unwrap();
        let (key, _) = objects
            .iter()
            .filter(|(k, _)| k.starts_with("packs/"))
            .max_by_key(|(_, v)| v.0.len())
            .unwrap();
        key.clone()
    };
    // Flip one payload byte: the frame crc catches it on read.
    {
        let mut objects = store.objects.lock().unwrap();
        let e = objects.get_mut(&data_pack).unwrap();
        let mut b = e.0.to_vec();
        b[100] ^= 0xff;
        e.0 = bytes::Bytes::from(b);
    }
    let c = repo
        .check(&CheckOptions {
            read_data: true,
            sample_pct: None,
        })
        .await
        .unwrap();
    assert_eq!(c.issues.len(), 1, "{:?}", c.issues);
    assert_eq!(c.issues[0].snapshots, vec![format!("d/{}", r1.id)]);
    assert!(
        c.issues[0].problem.contains("crc32c"),
        "{}",
        c.issues[0].problem
    );
    let dir = tempfile::tempdir().unwrap();
    let err = restore(
        &repo,
        "d",
        &r1.id,
        &RestoreTarget::Raw(dir.path().join("x")),
        None,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains(&data_pack), "{err}");
    // A missing pack is found by structure alone (no data read).
    store.objects.lock().unwrap().remove(&data_pack);
    let c = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(!c.is_clean());
    assert!(
        c.issues
            .iter()
            .all(|i| i.snapshots == vec![format!("d/{}", r1.id)]),
        "{:?}",
        c.issues
    );
}

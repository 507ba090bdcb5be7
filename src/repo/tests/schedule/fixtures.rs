//! What the deterministic regression tests of the runner share: a repository of the
//! runner's chunk size, fixed-content backups and restores, a backup held right before
//! its root, and the final "nothing left for repair" assertion.

use super::actors::{VersionSource, CS};
use crate::backup::{backup, BackupOptions, BackupReport};
use crate::repo::tests::testing::MemStore;
use crate::repo::{InitOptions, Repository};
use crate::restore::{restore, RestoreTarget};
use crate::store::{ObjectStore, PutOutcome, StoreError};
use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// `chunks` chunks of seeded random bytes (no two seeds share a chunk).
pub(super) fn random(seed: u64, chunks: usize) -> Vec<u8> {
    let mut v = vec![0u8; chunks * CS];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// The volumes `parts`, one after the other.
pub(super) fn cat(parts: &[&Vec<u8>]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

/// A fresh in-memory repository of the runner's chunk size.
pub(super) async fn setup() -> (Arc<MemStore>, Repository) {
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

pub(super) fn opts(volume: &str) -> BackupOptions {
    BackupOptions {
        volume: volume.into(),
        ..BackupOptions::default()
    }
}

/// A full backup of `data` as `volume`; its snapshot id.
pub(super) async fn back_up(repo: &Repository, volume: &str, data: Vec<u8>) -> String {
    backup(repo, VersionSource::fixed(data), &opts(volume))
        .await
        .unwrap()
        .id
}

pub(super) async fn restored(repo: &Repository, volume: &str, id: &str) -> crate::Result<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    restore(repo, volume, id, &RestoreTarget::Raw(out.clone()), None).await?;
    Ok(std::fs::read(&out).unwrap())
}

/// Keys under `prefix` whose last path component starts with `holder`.
pub(super) fn keys_of(mem: &MemStore, prefix: &str, holder: &str) -> Vec<String> {
    mem.keys(prefix)
        .into_iter()
        .filter(|k| k.rsplit('/').next().is_some_and(|n| n.starts_with(holder)))
        .collect()
}

/// Packs whose names start with `holder`.
pub(super) fn packs_of(mem: &MemStore, holder: &str) -> Vec<String> {
    keys_of(mem, "packs/", holder)
}

/// Nothing left for `check --repair`: its check is clean, no stray of any kind, no
/// object of a leased writer, no count to correct.
pub(super) async fn assert_nothing_to_repair(repo: &Repository) {
    let r = repo.repair().await.unwrap();
    assert!(r.check.is_clean(), "{:?}", r.check.issues);
    assert_eq!(
        (
            r.stray_packs_deleted,
            r.stray_segments_deleted,
            r.stray_intents_deleted,
            r.stray_checkpoints_deleted,
            r.objects_of_leased_writers,
            r.refcounts_fixed,
            r.commit.clone()
        ),
        (0, 0, 0, 0, 0, 0, None),
        "repair found work: {r:#?}"
    );
}

/// `check --read-data` is clean, then [`assert_nothing_to_repair`].
pub(super) async fn assert_clean_and_nothing_to_repair(repo: &Repository) {
    let c = crate::repo::tests::testing::read_data_check(repo).await;
    assert!(c.is_clean(), "{:?}", c.issues);
    assert_nothing_to_repair(repo).await;
}

/// A store that pauses a writer right before it creates a commit marker under `prefix`,
/// until the test lets it go.
#[derive(Debug)]
pub(super) struct PauseBeforeCommit {
    inner: Arc<MemStore>,
    prefix: &'static str,
    reached: Notify,
    pub resume: Notify,
}

impl PauseBeforeCommit {
    pub(super) fn new(inner: Arc<MemStore>, prefix: &'static str) -> Arc<PauseBeforeCommit> {
        Arc::new(PauseBeforeCommit {
            inner,
            prefix,
            reached: Notify::new(),
            resume: Notify::new(),
        })
    }
}

#[async_trait::async_trait]
impl ObjectStore for PauseBeforeCommit {
    crate::store::forward_descriptive_methods!();
    crate::store::forward_io_methods!(put);
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        if key.starts_with(self.prefix) {
            self.reached.notify_one();
            self.resume.notified().await;
        }
        self.inner.put_if_absent(key, data).await
    }
    crate::store::forward_io_methods!(get, get_range, head, list, delete, delete_batch);
}

/// Start a backup of `data` to `volume` that stops right before creating its root (its
/// lease, view and segments are in place); `resume` lets it commit.
pub(super) async fn backup_paused_before_root(
    mem: &Arc<MemStore>,
    volume: &str,
    data: Vec<u8>,
) -> (
    Arc<PauseBeforeCommit>,
    JoinHandle<crate::Result<BackupReport>>,
) {
    let paused = PauseBeforeCommit::new(mem.clone(), "snapshots/");
    let slow = Repository::open(paused.clone()).await.unwrap();
    let opts = opts(volume);
    let running =
        tokio::spawn(async move { backup(&slow, VersionSource::fixed(data), &opts).await });
    paused.reached.notified().await;
    (paused, running)
}

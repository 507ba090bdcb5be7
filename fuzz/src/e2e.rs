//! Shared harness of the slow end-to-end fuzz targets (`e2e_*`).
//!
//! The targets reach every repository parser through the public API, the way a damaged or
//! hostile repository would: fuzz input is stored as an object in an in-memory store (the
//! config, a root manifest, a pack, a frame inside a pack, an index segment) and then the
//! repository is opened, listed, checked with `--read-data` and restored. Any outcome but
//! a panic, a hang or an abort is fine: the parsers must refuse bad bytes with errors.
//!
//! Checksums would stop almost every mutation at the first crc check, so each target can
//! recompute them per `format-spec/repository.md` (a flag bit of the first input byte
//! decides), which lets the fuzzer reach the field parsing behind them.

pub use crate::{envelope, envelope_object, fix_trailing_crc};
use bytes::Bytes;
use island::backup::{backup, BackupOptions, RawSource};
use island::repo::{CheckOptions, InitOptions, Repository};
use island::restore::{restore, RestoreTarget};
use island::store::{MemoryStore, ObjectStore};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tokio::runtime::Runtime;

/// Chunk size of the fuzzed repositories: small, so a backup makes several chunks quickly.
pub const CHUNK: u32 = 4096;
/// Volume of the fuzzed repositories: 4 data chunks, a zero chunk, a duplicate.
const VOLUME_CHUNKS: usize = 6;

/// A single-threaded runtime shared by all iterations of a target.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// A fresh in-memory store.
pub fn memory_store() -> Arc<dyn ObjectStore> {
    Arc::new(MemoryStore::new_unique().expect("an in-memory store"))
}

fn volume_file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("island-fuzz-volume-{}", std::process::id()));
        let mut data = vec![0u8; CHUNK as usize * VOLUME_CHUNKS];
        for (i, b) in data.iter_mut().enumerate() {
            let chunk = i / CHUNK as usize;
            *b = match chunk {
                // chunk 2 is all zeros; chunk 5 repeats chunk 0
                2 => 0,
                5 => (i % CHUNK as usize * 7 % 251) as u8,
                // chunk 3 is incompressible (stored raw), the others compress (lz4)
                3 => (i as u32).wrapping_mul(2654435761).rotate_left(13) as u8,
                _ => ((i % CHUNK as usize) * 7 % 251) as u8 ^ chunk as u8,
            };
        }
        std::fs::write(&path, &data).expect("write the fuzz volume");
        path
    })
}

/// A repository in a fresh memory store holding one snapshot of the fuzz volume; returns
/// the store and the snapshot id.
pub async fn repo_with_snapshot() -> (Arc<dyn ObjectStore>, String) {
    let store = memory_store();
    let repo = Repository::init(store.clone(), &InitOptions { chunk_size: CHUNK })
        .await
        .expect("init");
    let source = RawSource::open(volume_file()).expect("open the fuzz volume");
    let opts = BackupOptions {
        volume: "vol".to_string(),
        ..BackupOptions::default()
    };
    let report = backup(&repo, Arc::new(source), &opts)
        .await
        .expect("backup");
    (store, report.id)
}

/// Keys under `prefix`, in order.
pub async fn keys(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    store
        .list(prefix, None, 10_000)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect()
}

/// Replaces object `key` with `bytes`.
pub async fn replace(store: &Arc<dyn ObjectStore>, key: &str, bytes: Vec<u8>) {
    store.put(key, Bytes::from(bytes)).await.expect("put");
}

/// Runs every reader over the repository: open, list, check with data, and (with
/// `with_restore`) restore. Errors are expected; only panics and hangs are findings.
pub async fn exercise(store: Arc<dyn ObjectStore>, id: &str, with_restore: bool) {
    let Ok(repo) = Repository::open(store).await else {
        return;
    };
    let _ = repo.snapshots(None).await;
    let _ = repo.snapshot("vol", id).await;
    let _ = repo
        .check(&CheckOptions {
            read_data: true,
            sample_pct: None,
        })
        .await;
    if !with_restore {
        return;
    }
    let out = std::env::temp_dir().join(format!("island-fuzz-restore-{}", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let _ = restore(&repo, "vol", id, &RestoreTarget::Raw(out.clone()), None).await;
    let _ = std::fs::remove_file(&out);
}

/// Re-runs the backup of the fuzz volume (it lists and decodes other holders' checkpoints
/// and may adopt one), then `check --repair` (which sweeps checkpoints).
pub async fn backup_again_and_repair(store: Arc<dyn ObjectStore>) {
    let Ok(repo) = Repository::open(store).await else {
        return;
    };
    let Ok(source) = RawSource::open(volume_file()) else {
        return;
    };
    let opts = BackupOptions {
        volume: "vol".to_string(),
        ..BackupOptions::default()
    };
    let _ = backup(&repo, Arc::new(source), &opts).await;
    let _ = repo.repair().await;
}

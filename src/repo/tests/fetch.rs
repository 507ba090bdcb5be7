//! Concurrent lookups that miss the cache on the same small segment share one GET.

use super::testing::MemStore;
use crate::backup::{backup, BackupOptions, RawSource};
use crate::repo::{InitOptions, Repository};
use crate::store::faults::{FaultConfig, FaultStore};
use crate::store::ObjectStore;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn concurrent_misses_on_one_segment_send_one_get() {
    let mem = Arc::new(MemStore::default());
    let repo = Repository::init(mem.clone(), &InitOptions { chunk_size: 65536 })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol.raw");
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&path, data).unwrap();
    let src = Arc::new(RawSource::open(&path).unwrap());
    let opts = BackupOptions {
        volume: "vm".into(),
        ..Default::default()
    };
    backup(&repo, src, &opts).await.unwrap();

    // A fresh handle (cold cache) over a store that answers after a delay, so the
    // lookups overlap.
    let slow: Arc<dyn ObjectStore> = Arc::new(FaultStore::new(
        mem,
        FaultConfig {
            latency: Some((Duration::from_millis(20), Duration::from_millis(20))),
            ..Default::default()
        },
    ));
    let cold = Repository::open(slow).await.unwrap();
    let set = cold.load_segments().await.unwrap();
    let seg = set.index.first().expect("an index segment").clone();
    let before = cold.counts().range_gets;
    let lookups = (0..32u8).map(|b| cold.bucket(&seg, b * 8));
    for r in futures::future::join_all(lookups).await {
        r.unwrap();
    }
    assert_eq!(cold.counts().range_gets - before, 1);
}

//! The conformance suite on the local drivers, raw and through `open_store`'s layers.

use crate::common::conformance::run_conformance;
use island::store::{open_store, FsStore, MemoryStore, ObjectStore, StoreOptions};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fs_driver_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::new(dir.path()).expect("fs store"));
    run_conformance(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fs_url_with_all_layers_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    let store = open_store(&url, &StoreOptions::default())
        .await
        .expect("open");
    run_conformance(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_driver_conforms() {
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new_unique().expect("memory"));
    run_conformance(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_url_with_all_layers_conforms() {
    let name = format!("conformance-{}", uuid::Uuid::new_v4().simple());
    let store = open_store(&format!("memory://{name}"), &StoreOptions::default())
        .await
        .expect("open");
    run_conformance(store).await;
}

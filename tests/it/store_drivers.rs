//! Driver-specific behaviour of the local stores and of `open_store`'s URL handling.

use bytes::Bytes;
use island::store::{
    open_store, FsStore, MemoryStore, ObjectStore, PutOutcome, StoreErrorKind, StoreOptions,
};
use std::sync::Arc;

#[tokio::test]
async fn fs_objects_are_plain_files_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStore::new(dir.path().join("repo")).expect("open missing root");
    store
        .put("packs/ab/one", Bytes::from_static(b"hello"))
        .await
        .expect("put");
    let on_disk = std::fs::read(dir.path().join("repo/packs/ab/one")).expect("file on disk");
    assert_eq!(on_disk, b"hello");
    let reopened = FsStore::new(dir.path().join("repo")).expect("reopen");
    assert_eq!(
        reopened.get("packs/ab/one").await.expect("get"),
        Bytes::from_static(b"hello")
    );
    // No temporary files are left behind by successful puts.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("repo/packs/ab"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("one")]);
}

#[tokio::test]
async fn fs_ignores_leftover_temporary_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStore::new(dir.path()).expect("open");
    store
        .put("snapshots/v/1", Bytes::from_static(b"x"))
        .await
        .expect("put");
    // What a crash between writing and linking leaves behind.
    std::fs::write(dir.path().join("snapshots/v/.tmp-deadbeef"), b"partial").expect("litter");
    let listed = store.list("snapshots/", None, 10).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, "snapshots/v/1");
    assert_eq!(
        store
            .put_if_absent("snapshots/v/2", Bytes::from_static(b"y"))
            .await
            .expect("create"),
        PutOutcome::Created
    );
}

#[tokio::test]
async fn fs_refuses_a_root_that_is_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plain");
    std::fs::write(&file, b"not a dir").expect("write");
    let err = FsStore::new(&file).expect_err("file root");
    assert_eq!(err.kind(), StoreErrorKind::ConfigInvalid);
    assert!(
        err.to_string().contains("plain"),
        "message names the path: {err}"
    );
}

#[tokio::test]
async fn invalid_keys_are_refused_by_both_drivers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores: Vec<Arc<dyn ObjectStore>> = vec![
        Arc::new(FsStore::new(dir.path()).expect("fs")),
        Arc::new(MemoryStore::new_unique().expect("memory")),
    ];
    for store in stores {
        for key in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            "../escape",
            "a/.hidden",
            "trailing/",
            "a\\b",
        ] {
            let err = store
                .put(key, Bytes::from_static(b"x"))
                .await
                .expect_err("invalid key accepted");
            assert_eq!(
                err.kind(),
                StoreErrorKind::InvalidKey,
                "{key:?} on {}",
                store.location()
            );
            let err = store
                .get(key)
                .await
                .expect_err("invalid key accepted by get");
            assert_eq!(err.kind(), StoreErrorKind::InvalidKey);
        }
    }
    assert!(!dir.path().join("..").join("escape").exists());
}

#[tokio::test]
async fn memory_name_is_shared_within_the_process() {
    let name = format!("memory://shared-{}", uuid::Uuid::new_v4().simple());
    let a = open_store(&name, &StoreOptions::default())
        .await
        .expect("open a");
    let b = open_store(&name, &StoreOptions::default())
        .await
        .expect("open b");
    a.put("config", Bytes::from_static(b"cfg"))
        .await
        .expect("put");
    assert_eq!(
        b.get("config").await.expect("get via b"),
        Bytes::from_static(b"cfg")
    );
    let other = open_store("memory://other-name-entirely", &StoreOptions::default())
        .await
        .expect("open other");
    assert_eq!(
        other.get("config").await.expect_err("isolated").kind(),
        StoreErrorKind::NotFound
    );
}

#[tokio::test]
async fn urls_and_plain_paths_open_the_same_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = open_store(
        dir.path().to_str().expect("utf-8 path"),
        &StoreOptions::default(),
    )
    .await
    .expect("plain path");
    plain.put("k", Bytes::from_static(b"v")).await.expect("put");
    let url = format!("file://{}", dir.path().display());
    let via_url = open_store(&url, &StoreOptions::default())
        .await
        .expect("file URL");
    assert_eq!(
        via_url.get("k").await.expect("get"),
        Bytes::from_static(b"v")
    );
    assert!(via_url.location().starts_with("file://"));
}

#[tokio::test]
async fn bad_urls_give_clear_errors() {
    let opts = StoreOptions::default();
    let err = open_store("ftp://host/x", &opts)
        .await
        .expect_err("unknown scheme");
    assert_eq!(err.kind(), StoreErrorKind::ConfigInvalid);
    assert!(err.to_string().contains("ftp"), "{err}");
    let err = open_store("", &opts).await.expect_err("empty");
    assert_eq!(err.kind(), StoreErrorKind::ConfigInvalid);
    let err = open_store("file://relative/path", &opts)
        .await
        .expect_err("non-local file URL");
    assert_eq!(err.kind(), StoreErrorKind::ConfigInvalid);
}

#[tokio::test]
async fn open_store_stack_counts_requests() {
    let name = format!("memory://counted-{}", uuid::Uuid::new_v4().simple());
    let store = open_store(&name, &StoreOptions::default())
        .await
        .expect("open");
    let before = store
        .request_counts()
        .expect("open_store includes the counting layer");
    store
        .put("a", Bytes::from_static(b"12345"))
        .await
        .expect("put");
    store.get("a").await.expect("get");
    let d = store.request_counts().expect("counts").since(&before);
    assert_eq!((d.puts, d.gets, d.total()), (1, 1, 2));
    assert_eq!((d.bytes_uploaded, d.bytes_downloaded), (5, 5));
}

#[tokio::test]
async fn s3_and_swift_urls_reach_their_drivers_and_fail_fast_without_a_server() {
    let opts = StoreOptions {
        endpoint: Some("http://127.0.0.1:9".into()),
        swift_auth_url: Some("http://127.0.0.1:9/auth/v1.0".into()),
        swift_user: Some("test:tester".into()),
        swift_key: Some("testing".into()),
        connect_timeout: std::time::Duration::from_secs(2),
        request_timeout: std::time::Duration::from_secs(5),
        ..StoreOptions::default()
    };
    for url in [
        "s3://island-no-bucket/prefix",
        "swift://island-no-container/prefix",
    ] {
        let start = std::time::Instant::now();
        let err = open_store(url, &opts)
            .await
            .expect_err("nothing listens on port 9");
        assert_ne!(
            err.kind(),
            StoreErrorKind::Unsupported,
            "{url} is wired to a driver: {err}"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{url}: {err}"
        );
    }
}

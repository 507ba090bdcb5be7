//! The S3 driver against a real S3 server (Ceph radosgw on loopback, started by
//! `scripts/objstore/with-servers.sh`); skipped with a printed reason when
//! `ISLAND_TEST_S3_ENDPOINT` is not set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use island::store::s3::{open_s3, HttpTimeouts, S3Config, S3Store};
use island::store::{open_store, ObjectStore, StoreErrorKind, StoreOptions};

use crate::common::conformance::run_conformance;
use crate::objstore_common::{
    basic_round_trip, check_paging, fill, payload, race_put_if_absent, setting, unique_prefix,
};

/// Settings for the test bucket under a fresh prefix, or `None` (skip).
fn config(test: &str) -> Option<S3Config> {
    Some(S3Config {
        bucket: setting(test, "ISLAND_TEST_S3_BUCKET")?,
        prefix: unique_prefix(test),
        endpoint: Some(setting(test, "ISLAND_TEST_S3_ENDPOINT")?),
        region: Some(setting(test, "ISLAND_TEST_S3_REGION")?),
        access_key_id: Some(setting(test, "ISLAND_TEST_S3_ACCESS_KEY_ID")?),
        secret_access_key: Some(setting(test, "ISLAND_TEST_S3_SECRET_ACCESS_KEY")?),
        session_token: None,
        path_style: Some(true),
        timeouts: HttpTimeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(20),
        },
    })
}

async fn open(test: &str) -> Option<S3Store> {
    let cfg = config(test)?;
    Some(open_s3(&cfg).await.expect("open radosgw bucket"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_round_trip() {
    let Some(store) = open("s3_round_trip").await else {
        return;
    };
    assert!(store.capabilities().atomic_create);
    basic_round_trip(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_driver_conforms() {
    let Some(store) = open("s3_conformance").await else {
        return;
    };
    run_conformance(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_put_if_absent_race_has_exactly_one_winner() {
    let Some(store) = open("s3_race").await else {
        return;
    };
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    for round in 0..5 {
        let winners = race_put_if_absent(store.clone(), &format!("lease/{round}"), 16).await;
        assert_eq!(
            winners, 1,
            "round {round}: {winners} of 16 writers created the object"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_lists_past_1000_entries_and_batch_deletes() {
    let Some(store) = open("s3_paging").await else {
        return;
    };
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let keys = fill(store.clone(), "pag/", 1500).await;
    check_paging(store.as_ref(), "pag/", &keys, 1000).await;
    check_paging(store.as_ref(), "pag/", &keys, 777).await;
    store.delete_batch(&keys).await.expect("delete 1500 keys");
    assert!(store.list("pag/", None, 10).await.expect("list").is_empty());
    assert_eq!(
        store.list("", None, 10).await.expect("list").len(),
        3,
        "decoys stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_large_object_single_put() {
    let Some(store) = open("s3_large").await else {
        return;
    };
    let big = payload(77, 80 * 1024 * 1024 + 123);
    store.put("big", big.clone()).await.expect("put 80 MiB");
    assert_eq!(
        store.head("big").await.expect("head").size,
        big.len() as u64
    );
    let tail = store
        .get_range("big", (big.len() as u64 - 4096)..big.len() as u64)
        .await
        .expect("tail");
    assert_eq!(tail, big.slice(big.len() - 4096..));
    assert!(store.get("big").await.expect("get 80 MiB") == big);
    store.delete("big").await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_secret_is_permission_denied_fast() {
    let Some(mut cfg) = config("s3_wrong_key") else {
        return;
    };
    cfg.secret_access_key = Some("not-the-secret".into());
    let t = Instant::now();
    let err = open_s3(&cfg).await.expect_err("wrong secret must fail");
    assert_eq!(err.kind(), StoreErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_temporary(), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let Some(mut cfg) = config("s3_wrong_key") else {
        return;
    };
    cfg.access_key_id = Some("NOSUCHKEY".into());
    let err = open_s3(&cfg)
        .await
        .expect_err("unknown access key must fail");
    assert_eq!(err.kind(), StoreErrorKind::PermissionDenied, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_bucket_is_config_invalid() {
    let Some(mut cfg) = config("s3_missing_bucket") else {
        return;
    };
    cfg.bucket = format!("no-such-bucket-{}", uuid::Uuid::new_v4().simple());
    let err = open_s3(&cfg).await.expect_err("missing bucket must fail");
    assert_eq!(err.kind(), StoreErrorKind::ConfigInvalid, "{err}");
    assert!(
        err.to_string().contains(&cfg.bucket),
        "message names the bucket: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unreachable_endpoint_fails_within_timeouts() {
    let Some(mut cfg) = config("s3_unreachable") else {
        return;
    };
    // Nothing listens: connection refused, reported at once as a temporary error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    cfg.endpoint = Some(format!("http://127.0.0.1:{port}"));
    let t = Instant::now();
    let err = open_s3(&cfg).await.expect_err("closed port");
    assert!(err.is_temporary(), "{err}");
    assert!(err.message().contains("connect"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );

    // A server that accepts and never answers: the request timeout ends it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    cfg.endpoint = Some(format!("http://127.0.0.1:{port}"));
    cfg.timeouts.request = Duration::from_secs(2);
    let t = Instant::now();
    let err = open_s3(&cfg).await.expect_err("silent server");
    assert_eq!(err.kind(), StoreErrorKind::Timeout, "{err}");
    assert!(err.is_temporary(), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    hold.abort();
}

/// The `s3://` URL through `open_store` and all its layers (retry, timeout, limits,
/// counting), with the keys taken from the AWS variables as a user would set them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_url_with_all_layers_conforms() {
    let test = "s3_url_layers";
    let (Some(bucket), Some(endpoint), Some(region)) = (
        setting(test, "ISLAND_TEST_S3_BUCKET"),
        setting(test, "ISLAND_TEST_S3_ENDPOINT"),
        setting(test, "ISLAND_TEST_S3_REGION"),
    ) else {
        return;
    };
    if setting(test, "AWS_ACCESS_KEY_ID").is_none()
        || setting(test, "AWS_SECRET_ACCESS_KEY").is_none()
    {
        return;
    }
    let opts = StoreOptions {
        endpoint: Some(endpoint),
        region: Some(region),
        path_style: Some(true),
        ..StoreOptions::default()
    };
    let url = format!("s3://{bucket}/{}", unique_prefix(test));
    let store = open_store(&url, &opts).await.expect("open s3 URL");
    run_conformance(store).await;
}

//! The Swift driver against a real Swift (all-in-one on loopback with tempauth and a short
//! token life, started by `scripts/objstore/with-servers.sh`); skipped with a printed reason
//! when `ISLAND_TEST_SWIFT_AUTH_URL` is not set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use island::store::s3::HttpTimeouts;
use island::store::swift::{open_swift, SwiftConfig, SwiftCredentials, SwiftStore};
use island::store::{open_store, ObjectStore, PutOutcome, StoreErrorKind, StoreOptions};

use crate::objstore_common::{
    basic_round_trip, check_paging, fill, payload, race_put_if_absent, setting, unique_prefix,
};

fn credentials(test: &str) -> Option<SwiftCredentials> {
    Some(SwiftCredentials::V1 {
        auth_url: setting(test, "ISLAND_TEST_SWIFT_AUTH_URL")?,
        user: setting(test, "ISLAND_TEST_SWIFT_USER")?,
        key: setting(test, "ISLAND_TEST_SWIFT_KEY")?,
    })
}

/// Settings for the test container under a fresh prefix, or `None` (skip).
pub(crate) fn config(test: &str) -> Option<SwiftConfig> {
    Some(SwiftConfig {
        container: setting(test, "ISLAND_TEST_SWIFT_CONTAINER")?,
        prefix: unique_prefix(test),
        credentials: Some(credentials(test)?),
        timeouts: HttpTimeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(20),
        },
        create_settle: island::store::swift::DEFAULT_CREATE_SETTLE,
    })
}

async fn open(test: &str) -> Option<SwiftStore> {
    let cfg = config(test)?;
    Some(open_swift(&cfg).await.expect("open swift container"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swift_round_trip() {
    let Some(store) = open("swift_round_trip").await else {
        return;
    };
    basic_round_trip(&store).await;
}

/// Swift checks `If-None-Match: *` when a PUT arrives, not when it completes, so racing
/// creators can all win; the driver must say so (`atomic_create: false`) and still never
/// overwrite a complete object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swift_put_if_absent_race_is_reported_non_atomic() {
    let Some(store) = open("swift_race").await else {
        return;
    };
    assert!(!store.capabilities().atomic_create);
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let mut total = 0;
    for round in 0..5 {
        let winners = race_put_if_absent(store.clone(), &format!("lease/{round}"), 16).await;
        eprintln!("swift race round {round}: {winners} of 16 writers got 201");
        total += winners;
    }
    eprintln!("swift race: {total} winners in 5 rounds of 16 writers");
    // Sequential creates are refused exactly.
    assert_eq!(
        store
            .put_if_absent("seq", payload(1, 10))
            .await
            .expect("first"),
        PutOutcome::Created
    );
    assert_eq!(
        store
            .put_if_absent("seq", payload(2, 10))
            .await
            .expect("second"),
        PutOutcome::AlreadyExists
    );
    assert_eq!(store.get("seq").await.expect("get"), payload(1, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swift_lists_past_1000_entries_and_bulk_deletes() {
    let Some(store) = open("swift_paging").await else {
        return;
    };
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let keys = fill(store.clone(), "pag/", 1500).await;
    check_paging(store.as_ref(), "pag/", &keys, 1000).await;
    check_paging(store.as_ref(), "pag/", &keys, 777).await;
    store
        .delete_batch(&keys)
        .await
        .expect("bulk delete 1500 keys");
    assert!(store.list("pag/", None, 10).await.expect("list").is_empty());
    assert_eq!(
        store.list("", None, 10).await.expect("list").len(),
        3,
        "decoys stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swift_large_object_single_put() {
    let Some(store) = open("swift_large").await else {
        return;
    };
    let big = payload(78, 80 * 1024 * 1024 + 321);
    store.put("big", big.clone()).await.expect("put 80 MiB");
    assert_eq!(
        store.head("big").await.expect("head").size,
        big.len() as u64
    );
    let mid = store
        .get_range("big", 50_000_000..50_100_000)
        .await
        .expect("range");
    assert_eq!(mid, big.slice(50_000_000..50_100_000));
    assert!(store.get("big").await.expect("get 80 MiB") == big);
    assert_eq!(
        store
            .put_if_absent("big", payload(1, 5))
            .await
            .expect("conditional"),
        PutOutcome::AlreadyExists
    );
    store.delete("big").await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swift_wrong_key_is_permission_denied_fast() {
    let Some(mut cfg) = config("swift_wrong_key") else {
        return;
    };
    if let Some(SwiftCredentials::V1 { key, .. }) = cfg.credentials.as_mut() {
        *key = "not-the-key".into();
    }
    let t = Instant::now();
    let err = open_swift(&cfg).await.expect_err("wrong key must fail");
    assert_eq!(err.kind(), StoreErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_temporary(), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swift_missing_container_is_config_invalid() {
    let Some(mut cfg) = config("swift_missing_container") else {
        return;
    };
    cfg.container = format!("no-such-container-{}", uuid::Uuid::new_v4().simple());
    let err = open_swift(&cfg)
        .await
        .expect_err("missing container must fail");
    assert_eq!(err.kind(), StoreErrorKind::ConfigInvalid, "{err}");
    assert!(
        err.to_string().contains(&cfg.container),
        "message names it: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swift_unreachable_auth_fails_within_timeouts() {
    let Some(mut cfg) = config("swift_unreachable") else {
        return;
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    cfg.credentials = Some(SwiftCredentials::V1 {
        auth_url: format!("http://127.0.0.1:{port}/auth/v1.0"),
        user: "test:tester".into(),
        key: "testing".into(),
    });
    let t = Instant::now();
    let err = open_swift(&cfg).await.expect_err("closed port");
    assert!(err.is_temporary(), "{err}");
    assert!(err.message().contains("connect"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

/// Sleeps past the proxy's `token_life`, then works on: the driver must log in again by
/// itself, once, even with several requests failing at the same moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swift_expired_token_logs_in_again() {
    let Some(life) = setting("swift_token_expiry", "ISLAND_TEST_SWIFT_TOKEN_LIFE") else {
        return;
    };
    let life: u64 = life.parse().expect("token life in seconds");
    assert!(life <= 120, "token life {life}s too long for this test");
    let Some(store) = open("swift_token_expiry").await else {
        return;
    };
    store
        .put("before", payload(5, 1000))
        .await
        .expect("put with first token");
    assert_eq!(store.logins(), 1);
    tokio::time::sleep(Duration::from_secs(life + 3)).await;
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.put(&format!("after/{i}"), payload(i, 100)).await?;
            store.get("before").await
        }));
    }
    for t in tasks {
        let got = t
            .await
            .expect("task")
            .expect("operation after token expiry");
        assert_eq!(got, payload(5, 1000));
    }
    assert_eq!(
        store.logins(),
        2,
        "exactly one re-login for 8 concurrent refusals"
    );
    // Conditional create (Island's own request) also survives an expired token.
    tokio::time::sleep(Duration::from_secs(life + 3)).await;
    assert_eq!(
        store
            .put_if_absent("after-cond", payload(9, 10))
            .await
            .expect("conditional"),
        PutOutcome::Created
    );
    assert_eq!(store.logins(), 3);
}

/// The `swift://` URL through `open_store` and all its layers, with tempauth settings
/// from the options.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swift_url_with_all_layers_round_trip() {
    let test = "swift_url_layers";
    let Some(SwiftConfig {
        container,
        prefix,
        credentials:
            Some(SwiftCredentials::V1 {
                auth_url,
                user,
                key,
            }),
        ..
    }) = config(test)
    else {
        return;
    };
    let opts = StoreOptions {
        swift_auth_url: Some(auth_url),
        swift_user: Some(user),
        swift_key: Some(key),
        ..StoreOptions::default()
    };
    let url = format!("swift://{container}/{prefix}");
    let store = open_store(&url, &opts).await.expect("open swift URL");
    assert!(!store.capabilities().atomic_create);
    basic_round_trip(store.as_ref()).await;
}

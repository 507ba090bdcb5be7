//! The shared store conformance suite on the real Swift (raw driver and `swift://` through
//! `open_store` with every layer), and the repository's create-if-absent policy racing on
//! it. The same suite runs on the real S3 in `objstore_s3`. Swift's `put_if_absent` is
//! not atomic, so the suite checks its documented weaker guarantee there and requires
//! exactly one winner from `island::repo::create_exclusive`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use island::repo::create_exclusive;
use island::store::s3::HttpTimeouts;
use island::store::swift::{open_swift, SwiftConfig, SwiftCredentials, DEFAULT_CREATE_SETTLE};
use island::store::{open_store, ObjectStore, PutOutcome, StoreOptions};

use crate::common::conformance::run_conformance;
use crate::objstore_common::{payload, setting, unique_prefix};

/// Settle time for the suite's many racing rounds: ample on loopback, where a 64 KiB PUT
/// takes milliseconds, and short enough to keep the suite quick.
const SUITE_SETTLE: Duration = Duration::from_secs(2);

fn swift_config(test: &str, settle: Duration) -> Option<SwiftConfig> {
    Some(SwiftConfig {
        container: setting(test, "ISLAND_TEST_SWIFT_CONTAINER")?,
        prefix: unique_prefix(test),
        credentials: Some(SwiftCredentials::V1 {
            auth_url: setting(test, "ISLAND_TEST_SWIFT_AUTH_URL")?,
            user: setting(test, "ISLAND_TEST_SWIFT_USER")?,
            key: setting(test, "ISLAND_TEST_SWIFT_KEY")?,
        }),
        timeouts: HttpTimeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(20),
        },
        create_settle: settle,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swift_driver_conforms() {
    let Some(cfg) = swift_config("swift_conformance", SUITE_SETTLE) else {
        return;
    };
    let store = open_swift(&cfg).await.expect("open swift container");
    run_conformance(Arc::new(store)).await;
}

/// `swift://` through `open_store`, credentials from `ST_*` as a user sets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swift_url_with_all_layers_conforms() {
    let test = "swift_url_conformance";
    let Some(container) = setting(test, "ISLAND_TEST_SWIFT_CONTAINER") else {
        return;
    };
    if setting(test, "ST_AUTH").is_none() || setting(test, "ST_KEY").is_none() {
        return;
    }
    let opts = StoreOptions {
        swift_create_settle: Some(SUITE_SETTLE),
        ..StoreOptions::default()
    };
    let url = format!("swift://{container}/{}", unique_prefix(test));
    let store = open_store(&url, &opts).await.expect("open swift URL");
    assert!(!store.capabilities().atomic_create);
    assert_eq!(store.capabilities().create_settle, SUITE_SETTLE);
    run_conformance(store).await;
}

/// 12 writers race `create_exclusive` on one key with the default settle time and 1 MiB
/// objects: exactly one is told `Created`, every other is told `AlreadyExists`, the
/// object holds the winner's bytes, and the plain `put_if_absent` race on the same
/// server, measured alongside, shows why the policy is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swift_create_exclusive_has_one_winner_with_default_settle() {
    const WRITERS: u64 = 12;
    let Some(cfg) = swift_config("swift_exclusive", DEFAULT_CREATE_SETTLE) else {
        return;
    };
    let store: Arc<dyn ObjectStore> = Arc::new(open_swift(&cfg).await.expect("open"));
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS as usize));
    let t = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                let data = payload(7000 + w, 1 << 20);
                barrier.wait().await;
                let out = create_exclusive(store.as_ref(), "leases/contended", data.clone())
                    .await
                    .expect("create_exclusive");
                (out, data)
            })
        })
        .collect();
    let (mut winners, mut losers) = (Vec::new(), 0);
    for task in tasks {
        match task.await.expect("task") {
            (PutOutcome::Created, data) => winners.push(data),
            (PutOutcome::AlreadyExists, _) => losers += 1,
        }
    }
    let took = t.elapsed();
    eprintln!(
        "swift create_exclusive: {} winner(s), {losers} losers in {took:?}",
        winners.len()
    );
    assert_eq!(winners.len(), 1, "exactly one of {WRITERS} writers wins");
    assert_eq!(losers, WRITERS - 1, "every other writer is told it lost");
    assert_eq!(
        store.get("leases/contended").await.expect("get"),
        winners[0]
    );
    assert!(
        took >= DEFAULT_CREATE_SETTLE,
        "the winner waited the settle time"
    );

    // A writer arriving after the race loses at once, without waiting the settle time.
    let t = Instant::now();
    let late = create_exclusive(
        store.as_ref(),
        "leases/contended",
        Bytes::from_static(b"late"),
    )
    .await
    .expect("late create");
    assert_eq!(late, PutOutcome::AlreadyExists);
    assert!(
        t.elapsed() < DEFAULT_CREATE_SETTLE / 2,
        "took {:?}",
        t.elapsed()
    );
}

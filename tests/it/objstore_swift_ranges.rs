//! Ranged reads past the end of a truncated object on the real Swift while its token
//! expires (tempauth `token_life`, 20 s in the test servers). The driver used to classify
//! such a read with a second request (`HEAD` for the size); when the token expired between
//! the two, the caller got `Unexpected` instead of `InvalidRange`. Every answer must be
//! `InvalidRange`, however the requests fall around the expiry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use island::store::swift::open_swift;
use island::store::{ObjectStore, StoreErrorKind};

use crate::objstore_common::{payload, setting};
use crate::objstore_swift::config;

/// Concurrent readers; each has a read in flight most of the time, so some read straddles
/// the moment the token expires.
const READERS: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swift_past_end_reads_stay_invalid_range_across_token_expiry() {
    let test = "swift_range_expiry";
    let Some(life) = setting(test, "ISLAND_TEST_SWIFT_TOKEN_LIFE") else {
        return;
    };
    let life: u64 = life.parse().expect("token life in seconds");
    assert!(life <= 120, "token life {life}s too long for this test");
    let Some(mut cfg) = config(test) else {
        return;
    };
    cfg.create_settle = Duration::from_secs(2);
    let store = Arc::new(open_swift(&cfg).await.expect("open swift container"));
    store.put("pack", payload(1, 4096)).await.expect("put");
    let short = payload(2, 1000);
    store.put("pack", short.clone()).await.expect("truncate");
    let logins_before = store.logins();
    let deadline = Instant::now() + Duration::from_secs(life + 5);
    let tasks: Vec<_> = (0..READERS)
        .map(|t| {
            let (store, short) = (store.clone(), short.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while Instant::now() < deadline {
                    let start = 900 + (reads + t) % 100;
                    for r in [start..1100, 2000 + start..4000, 0..4096] {
                        match store.get_range("pack", r.clone()).await {
                            Err(e) if e.kind() == StoreErrorKind::InvalidRange => {}
                            other => panic!("read {r:?} past the end: {other:?}"),
                        }
                    }
                    let inside = store.get_range("pack", start..1000).await;
                    assert_eq!(
                        inside.expect("read inside the object"),
                        short.slice(start as usize..),
                    );
                    reads += 4;
                }
                reads
            })
        })
        .collect();
    let mut reads = 0;
    for t in tasks {
        reads += t.await.expect("reader");
    }
    let relogins = store.logins() - logins_before;
    eprintln!("{test}: {reads} ranged reads, {relogins} re-login(s) while reading");
    assert!(relogins >= 1, "the token expired while reading");
    store.delete("pack").await.expect("cleanup");
}

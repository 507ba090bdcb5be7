//! Helpers shared by the real-server object-store tests (`objstore_s3`, `objstore_swift`):
//! settings from the `ISLAND_TEST_*` variables that `scripts/objstore/with-servers.sh`
//! exports, and checks that behave the same on every driver.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;
use island::store::{ObjectStore, PutOutcome, StoreErrorKind};

/// The value of `name`, or `None` after printing why the test is skipped. Under
/// `with-servers.sh` (which sets `ISLAND_TEST_REQUIRE_SERVERS=1`) a missing setting fails.
pub(crate) fn setting(test: &str, name: &str) -> Option<String> {
    if name.starts_with("ISLAND_TEST_S3") || name.starts_with("AWS_") {
        hold_s3(false);
    }
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("ISLAND_TEST_REQUIRE_SERVERS").as_deref() != Ok("1"),
                "{test}: {name} is not set although ISLAND_TEST_REQUIRE_SERVERS=1"
            );
            eprintln!(
                "SKIPPED {test}: {name} not set (run under scripts/objstore/with-servers.sh)"
            );
            None
        }
    }
}

/// The S3 server is shared by every test of the run, and one test stops and restarts it
/// (`objstore_faults::s3_server_restart_mid_backup`). Every test that reads an S3 setting
/// holds this lock shared and the outage test holds it exclusively, so no other test sees
/// the outage. The guard lives in the thread's thread-local and is released when libtest's
/// per-test thread (or a runtime worker the test started) exits.
static S3_SERVER: RwLock<()> = RwLock::new(());

enum S3Hold {
    Shared {
        _guard: RwLockReadGuard<'static, ()>,
    },
    Exclusive {
        _guard: RwLockWriteGuard<'static, ()>,
    },
}

thread_local! {
    static S3_HELD: RefCell<Option<S3Hold>> = const { RefCell::new(None) };
}

/// Take the S3 server lock for the rest of this test thread (no-op if already held).
pub(crate) fn hold_s3(exclusive: bool) {
    S3_HELD.with(|held| {
        if held.borrow().is_some() {
            return;
        }
        let hold = if exclusive {
            S3Hold::Exclusive {
                _guard: S3_SERVER.write().unwrap_or_else(|e| e.into_inner()),
            }
        } else {
            S3Hold::Shared {
                _guard: S3_SERVER.read().unwrap_or_else(|e| e.into_inner()),
            }
        };
        *held.borrow_mut() = Some(hold);
    });
}

/// A prefix no other test run uses, so tests share one bucket/container safely.
pub(crate) fn unique_prefix(test: &str) -> String {
    format!("it-{test}-{}", uuid::Uuid::new_v4().simple())
}

/// Deterministic, key-specific test data.
pub(crate) fn payload(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// put/get/ranged get/head/list/delete/delete_batch round trip with exact assertions.
pub(crate) async fn basic_round_trip(store: &dyn ObjectStore) {
    let a = payload(1, 300_000);
    store.put("d/a", a.clone()).await.expect("put d/a");
    store.put("d/b", payload(2, 10)).await.expect("put d/b");
    store.put("d/c", Bytes::new()).await.expect("put empty d/c");
    store.put("e/x", payload(3, 5)).await.expect("put e/x");

    assert_eq!(store.get("d/a").await.expect("get d/a"), a);
    assert_eq!(store.get("d/c").await.expect("get d/c").len(), 0);
    let r = store.get_range("d/a", 1000..201_000).await.expect("range");
    assert_eq!(r, a.slice(1000..201_000));
    assert_eq!(
        store
            .get_range("d/a", 299_999..300_000)
            .await
            .expect("last byte"),
        a.slice(299_999..)
    );
    let past = store.get_range("d/a", 299_000..300_001).await;
    assert!(past.is_err(), "range past the end must fail: {past:?}");

    let h = store.head("d/a").await.expect("head");
    assert_eq!(h.key, "d/a");
    assert_eq!(h.size, 300_000);
    let lm = h.last_modified.expect("store reports Last-Modified");
    let age = std::time::SystemTime::now()
        .duration_since(lm)
        .unwrap_or(Duration::ZERO);
    assert!(
        age < Duration::from_secs(600),
        "Last-Modified {lm:?} is not recent"
    );

    let missing = store.get("d/nope").await.expect_err("missing object");
    assert_eq!(missing.kind(), StoreErrorKind::NotFound, "{missing}");
    assert!(
        missing.to_string().contains("d/nope"),
        "message names the key: {missing}"
    );
    let missing = store.head("d/nope").await.expect_err("missing head");
    assert_eq!(missing.kind(), StoreErrorKind::NotFound, "{missing}");

    let keys = |v: Vec<island::store::ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list("d/", None, 100).await.expect("list")),
        ["d/a", "d/b", "d/c"]
    );
    assert_eq!(
        keys(store.list("d/", Some("d/a"), 100).await.expect("list")),
        ["d/b", "d/c"]
    );
    assert_eq!(
        keys(store.list("d/", None, 2).await.expect("list")),
        ["d/a", "d/b"]
    );
    assert_eq!(
        keys(store.list("", None, 100).await.expect("list all")),
        ["d/a", "d/b", "d/c", "e/x"]
    );
    assert_eq!(
        keys(store.list("d/b", None, 100).await.expect("key prefix")),
        ["d/b"]
    );
    let sizes: Vec<u64> = store
        .list("d/", None, 100)
        .await
        .expect("list")
        .iter()
        .map(|m| m.size)
        .collect();
    assert_eq!(sizes, [300_000, 10, 0]);

    store.delete("d/b").await.expect("delete");
    store
        .delete("d/b")
        .await
        .expect("deleting a missing object succeeds");
    assert_eq!(
        store.get("d/b").await.expect_err("deleted").kind(),
        StoreErrorKind::NotFound
    );
    store
        .delete_batch(&["d/a".into(), "d/c".into(), "d/never".into(), "e/x".into()])
        .await
        .expect("delete_batch");
    assert!(store.list("", None, 100).await.expect("list").is_empty());
}

/// `writers` tasks race `put_if_absent` on one new key with different payloads; returns
/// how many reported `Created`. Checks what holds on every store: at least one winner,
/// every other caller told `AlreadyExists`, the stored object is one winner's payload,
/// and a later create is refused.
pub(crate) async fn race_put_if_absent(
    store: Arc<dyn ObjectStore>,
    key: &str,
    writers: u64,
) -> usize {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let key = key.to_string();
        tasks.push(tokio::spawn(async move {
            let data = payload(1000 + w, 256 * 1024);
            let out = store.put_if_absent(&key, data).await;
            (w, out)
        }));
    }
    let mut winners = BTreeSet::new();
    for t in tasks {
        let (w, out) = t.await.expect("task");
        match out.expect("put_if_absent") {
            PutOutcome::Created => {
                winners.insert(w);
            }
            PutOutcome::AlreadyExists => {}
        }
    }
    assert!(!winners.is_empty(), "nobody created {key}");
    let stored = store.get(key).await.expect("get raced key");
    assert!(
        winners
            .iter()
            .any(|w| payload(1000 + w, 256 * 1024) == stored),
        "stored object is not a winner's payload"
    );
    let again = store
        .put_if_absent(key, Bytes::from_static(b"late"))
        .await
        .expect("late put_if_absent");
    assert_eq!(again, PutOutcome::AlreadyExists);
    assert_eq!(
        store.get(key).await.expect("get"),
        stored,
        "late create overwrote"
    );
    winners.len()
}

/// Writes `n` small objects under `prefix` (32 at a time), plus decoys outside it.
pub(crate) async fn fill(store: Arc<dyn ObjectStore>, prefix: &str, n: usize) -> Vec<String> {
    use futures::StreamExt;
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i:05}")).collect();
    let base = prefix.trim_end_matches('/');
    let decoys = [base.to_string(), format!("{base}x"), format!("{base}.z/0")];
    let all: Vec<String> = keys.iter().cloned().chain(decoys).collect();
    futures::stream::iter(all)
        .map(|k| {
            let store = store.clone();
            async move {
                let d = Bytes::from(k.clone().into_bytes());
                store.put(&k, d).await.expect("fill put");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    keys
}

/// Pages through `prefix` `page` entries at a time and checks order and completeness.
pub(crate) async fn check_paging(
    store: &dyn ObjectStore,
    prefix: &str,
    keys: &[String],
    page: usize,
) {
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut requests = 0;
    loop {
        let batch = store
            .list(prefix, after.as_deref(), page)
            .await
            .expect("list page");
        requests += 1;
        assert!(batch.len() <= page, "page larger than the limit");
        let full = batch.len() == page;
        for m in &batch {
            assert_eq!(m.size, m.key.len() as u64, "size of {}", m.key);
        }
        after = batch.last().map(|m| m.key.clone());
        seen.extend(batch.into_iter().map(|m| m.key));
        if !full {
            break;
        }
        assert!(requests < 100, "paging does not end");
    }
    assert_eq!(seen, keys, "paged listing differs from what was written");
    let one = store
        .list(prefix, None, keys.len() + 10)
        .await
        .expect("list in one call");
    assert_eq!(one.len(), keys.len(), "one big list call");
}

//! The store conformance suite: the behaviour the repository relies on, checked the same
//! way on every driver (fs, memory here; S3 and Swift in the object-store tests).

use super::pseudo_random;
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use island::store::{ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Objects created to test paging; more than one 1000-entry page (S3's and Swift's
/// listing page size) and more than the fs/memory/S3 `max_batch_delete`.
const PAGING_OBJECTS: usize = 1050;
/// Writers racing on one create-if-absent key.
const RACERS: usize = 16;

/// Runs every conformance check against `store`, under a fresh unique prefix (so it can
/// share a bucket), and leaves that prefix empty. Panics with the failing check.
pub async fn run_conformance(store: Arc<dyn ObjectStore>) {
    let base = format!("conformance-{}/", uuid::Uuid::new_v4().simple());
    put_get_overwrite(&store, &base).await;
    missing_objects(&store, &base).await;
    ranged_reads(&store, &base).await;
    truncated_ranges(&store, &base).await;
    head_metadata(&store, &base).await;
    list_order_prefix_start_after(&store, &base).await;
    paging_and_batch_delete(&store, &base).await;
    delete_semantics(&store, &base).await;
    put_if_absent_semantics(&store, &base).await;
    racing_put_if_absent(&store, &base).await;
    store_time_requirements(&store, &base).await;
    cleanup(&store, &base).await;
}

/// Every key under `prefix`, following pages of `page` entries.
pub async fn list_all(store: &Arc<dyn ObjectStore>, prefix: &str, page: usize) -> Vec<ObjectMeta> {
    let mut out: Vec<ObjectMeta> = Vec::new();
    loop {
        let after = out.last().map(|m| m.key.clone());
        let batch = store
            .list(prefix, after.as_deref(), page)
            .await
            .expect("list page");
        assert!(
            batch.len() <= page,
            "list returned {} > limit {page}",
            batch.len()
        );
        let done = batch.len() < page;
        out.extend(batch);
        if done {
            return out;
        }
    }
}

fn keys(v: &[ObjectMeta]) -> Vec<String> {
    v.iter().map(|m| m.key.clone()).collect()
}

fn expect_kind<T: std::fmt::Debug>(r: Result<T, StoreError>, kind: StoreErrorKind, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {kind:?} error, got Ok({v:?})"),
        Err(e) => assert_eq!(e.kind(), kind, "{what}: wrong error kind: {e}"),
    }
}

async fn put_get_overwrite(store: &Arc<dyn ObjectStore>, base: &str) {
    let k = format!("{base}basic/object");
    let first = pseudo_random(1, 1000);
    store.put(&k, first.clone()).await.expect("put");
    assert_eq!(
        store.get(&k).await.expect("get"),
        first,
        "get returns what put stored"
    );
    let second = pseudo_random(2, 300);
    store.put(&k, second.clone()).await.expect("overwrite");
    assert_eq!(
        store.get(&k).await.expect("get"),
        second,
        "overwrite replaces whole object"
    );
    let empty = format!("{base}basic/empty");
    store.put(&empty, Bytes::new()).await.expect("put empty");
    assert!(store.get(&empty).await.expect("get empty").is_empty());
    assert_eq!(store.head(&empty).await.expect("head empty").size, 0);
    let big = format!("{base}basic/big");
    let big_data = pseudo_random(3, 8 << 20);
    store.put(&big, big_data.clone()).await.expect("put 8 MiB");
    assert_eq!(store.get(&big).await.expect("get 8 MiB"), big_data);
    let mid = (3 << 20) + 17..(5 << 20) + 3;
    let r = store
        .get_range(&big, mid.clone())
        .await
        .expect("range of 8 MiB");
    assert_eq!(r, big_data.slice(mid.start as usize..mid.end as usize));
}

async fn missing_objects(store: &Arc<dyn ObjectStore>, base: &str) {
    let k = format!("{base}missing/nothing");
    expect_kind(store.get(&k).await, StoreErrorKind::NotFound, "get missing");
    expect_kind(
        store.head(&k).await,
        StoreErrorKind::NotFound,
        "head missing",
    );
    expect_kind(
        store.get_range(&k, 0..1).await,
        StoreErrorKind::NotFound,
        "get_range missing",
    );
    let listed = store
        .list(&format!("{base}missing/"), None, 10)
        .await
        .expect("list empty");
    assert!(listed.is_empty(), "listing an empty prefix: {listed:?}");
}

async fn ranged_reads(store: &Arc<dyn ObjectStore>, base: &str) {
    let k = format!("{base}range/obj");
    let data = pseudo_random(4, 4096);
    store.put(&k, data.clone()).await.expect("put");
    for r in [
        0..4096u64,
        0..1,
        1..3,
        4095..4096,
        100..2000,
        0..0,
        4096..4096,
        17..17,
    ] {
        let got = store
            .get_range(&k, r.clone())
            .await
            .expect("in-bounds range");
        assert_eq!(
            got,
            data.slice(r.start as usize..r.end as usize),
            "range {r:?}"
        );
    }
    for r in [0..4097u64, 4000..5000, 4096..4097, 5000..6000] {
        expect_kind(
            store.get_range(&k, r.clone()).await,
            StoreErrorKind::InvalidRange,
            &format!("range {r:?} past the end of 4096 bytes"),
        );
    }
}

/// A ranged read past the end of an object that was overwritten by a shorter version (a
/// truncated pack) is `InvalidRange`, the kind callers treat as "damaged object": never
/// `Unexpected`, never short data. Reads inside the new size still work, the empty object
/// refuses every non-empty range, and 32 such reads at once all get `InvalidRange` (a
/// driver that needs a second request to classify an answer races token expiry and
/// overwrites there).
async fn truncated_ranges(store: &Arc<dyn ObjectStore>, base: &str) {
    let k = format!("{base}truncated/obj");
    let full = pseudo_random(10, 4096);
    store.put(&k, full.clone()).await.expect("put");
    assert_eq!(
        store.get_range(&k, 1000..3000).await.expect("range"),
        full.slice(1000..3000)
    );
    let short = pseudo_random(11, 1000);
    store.put(&k, short.clone()).await.expect("truncate");
    for r in [0..1000u64, 999..1000, 500..600, 1000..1000, 0..0] {
        let got = store
            .get_range(&k, r.clone())
            .await
            .expect("range inside the truncated object");
        assert_eq!(got, short.slice(r.start as usize..r.end as usize), "{r:?}");
    }
    for r in [
        0..4096u64,
        1000..3000,
        999..1001,
        1000..1001,
        2000..3000,
        1001..1001,
        1 << 40..(1 << 40) + 1,
    ] {
        expect_kind(
            store.get_range(&k, r.clone()).await,
            StoreErrorKind::InvalidRange,
            &format!("range {r:?} of an object truncated to 1000 bytes"),
        );
    }
    let empty = format!("{base}truncated/empty");
    store.put(&empty, Bytes::new()).await.expect("put empty");
    assert!(store
        .get_range(&empty, 0..0)
        .await
        .expect("empty range of the empty object")
        .is_empty());
    for r in [0..1u64, 0..4096, 1..1, 10..20] {
        expect_kind(
            store.get_range(&empty, r.clone()).await,
            StoreErrorKind::InvalidRange,
            &format!("range {r:?} of the empty object"),
        );
    }
    let results: Vec<_> = stream::iter(0..32u64)
        .map(|i| {
            let (store, k) = (store.clone(), k.clone());
            async move { store.get_range(&k, 900 + i..1001 + i).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        expect_kind(
            r,
            StoreErrorKind::InvalidRange,
            "concurrent read past the end",
        );
    }
}

async fn head_metadata(store: &Arc<dyn ObjectStore>, base: &str) {
    let k = format!("{base}head/obj");
    let before = SystemTime::now();
    store.put(&k, pseudo_random(5, 777)).await.expect("put");
    let m = store.head(&k).await.expect("head");
    assert_eq!(m.key, k);
    assert_eq!(m.size, 777);
    let lm = m.last_modified.expect("head reports Last-Modified");
    // The store's clock may differ from ours; a generous window still catches garbage.
    let skew = Duration::from_secs(600);
    assert!(
        lm + skew >= before && lm <= SystemTime::now() + skew,
        "Last-Modified {lm:?}"
    );
}

async fn list_order_prefix_start_after(store: &Arc<dyn ObjectStore>, base: &str) {
    let p = format!("{base}order/");
    // Byte order puts '-' (0x2d) < '.' (0x2e) < '/' (0x2f) < '0' (0x30): a directory-walk
    // order (everything below "x/" right after "x-1") would get these wrong. No key is
    // also a prefix of another key plus '/' (a file cannot also be a directory on fs).
    let names = ["y~", "x0", "x/2/z", "x/1", "x.1", "x-1", "y"];
    for (i, n) in names.iter().enumerate() {
        store
            .put(&format!("{p}{n}"), pseudo_random(i as u64, i + 1))
            .await
            .expect("put");
    }
    let mut expected: Vec<String> = names.iter().map(|n| format!("{p}{n}")).collect();
    expected.sort();
    let all = store.list(&p, None, 100).await.expect("list");
    assert_eq!(keys(&all), expected, "list is in byte order of key");
    for m in &all {
        let i = names
            .iter()
            .position(|n| format!("{p}{n}") == m.key)
            .expect("known key");
        assert_eq!(m.size, i as u64 + 1, "listed size of {}", m.key);
    }
    let sub = store
        .list(&format!("{p}x/"), None, 100)
        .await
        .expect("list x/");
    assert_eq!(keys(&sub), vec![format!("{p}x/1"), format!("{p}x/2/z")]);
    let partial = store
        .list(&format!("{p}x"), None, 100)
        .await
        .expect("list partial segment");
    assert_eq!(
        keys(&partial),
        expected[..5].to_vec(),
        "prefix need not end at a '/'"
    );
    for (i, after) in expected.iter().enumerate() {
        let rest = store
            .list(&p, Some(after), 100)
            .await
            .expect("list start_after");
        assert_eq!(
            keys(&rest),
            expected[i + 1..].to_vec(),
            "start_after {after}"
        );
    }
    let between = format!("{p}x/0");
    let rest = store
        .list(&p, Some(&between), 100)
        .await
        .expect("absent start_after");
    assert_eq!(
        keys(&rest),
        expected[2..].to_vec(),
        "start_after a key that does not exist"
    );
    let before_all = store
        .list(&p, Some(base), 100)
        .await
        .expect("start_after before prefix");
    assert_eq!(keys(&before_all), expected);
    let limited = store.list(&p, None, 3).await.expect("limit 3");
    assert_eq!(keys(&limited), expected[..3].to_vec());
    assert_eq!(keys(&list_all(store, &p, 2).await), expected, "pages of 2");
    assert!(store.list(&p, None, 0).await.expect("limit 0").is_empty());
}

async fn paging_and_batch_delete(store: &Arc<dyn ObjectStore>, base: &str) {
    let p = format!("{base}paging/");
    let mut expected: Vec<String> = (0..PAGING_OBJECTS).map(|i| format!("{p}{i:05}")).collect();
    expected.sort();
    stream::iter(expected.clone())
        .map(|k| {
            let store = store.clone();
            async move { store.put(&k, Bytes::from(k.clone().into_bytes())).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .expect("put paging objects");
    let first = store.list(&p, None, 1000).await.expect("first page");
    assert_eq!(keys(&first), expected[..1000].to_vec());
    let second = store
        .list(&p, Some(&expected[999]), 1000)
        .await
        .expect("second page");
    assert_eq!(keys(&second), expected[1000..].to_vec());
    assert_eq!(
        keys(&list_all(store, &p, 333).await),
        expected,
        "pages of 333"
    );
    assert_eq!(
        keys(&list_all(store, &p, 1000).await),
        expected,
        "pages of 1000"
    );

    let max = store.capabilities().max_batch_delete;
    if PAGING_OBJECTS <= max {
        eprintln!("note: batch delete of {PAGING_OBJECTS} keys fits in one request (max {max})");
    }
    let mut doomed = expected.clone();
    doomed.push(format!("{p}never-existed"));
    store
        .delete_batch(&doomed)
        .await
        .expect("delete_batch incl. a missing key");
    assert!(store
        .list(&p, None, 10)
        .await
        .expect("list after batch delete")
        .is_empty());
    store.delete_batch(&[]).await.expect("empty delete_batch");
}

async fn delete_semantics(store: &Arc<dyn ObjectStore>, base: &str) {
    let k = format!("{base}delete/obj");
    store.put(&k, pseudo_random(6, 10)).await.expect("put");
    store.delete(&k).await.expect("delete");
    expect_kind(
        store.get(&k).await,
        StoreErrorKind::NotFound,
        "get after delete",
    );
    store
        .delete(&k)
        .await
        .expect("deleting a missing object succeeds");
    assert!(store
        .list(&format!("{base}delete/"), None, 10)
        .await
        .expect("list")
        .is_empty());
    // A deleted key can be created again, also conditionally.
    let again = pseudo_random(7, 10);
    assert_eq!(
        store
            .put_if_absent(&k, again.clone())
            .await
            .expect("recreate"),
        PutOutcome::Created
    );
    assert_eq!(store.get(&k).await.expect("get"), again);
}

async fn put_if_absent_semantics(store: &Arc<dyn ObjectStore>, base: &str) {
    let k = format!("{base}pia/obj");
    let first = pseudo_random(8, 500);
    assert_eq!(
        store
            .put_if_absent(&k, first.clone())
            .await
            .expect("create"),
        PutOutcome::Created
    );
    let second = pseudo_random(9, 600);
    assert_eq!(
        store
            .put_if_absent(&k, second)
            .await
            .expect("second create"),
        PutOutcome::AlreadyExists
    );
    assert_eq!(
        store.get(&k).await.expect("get"),
        first,
        "loser wrote nothing"
    );
    assert_eq!(store.head(&k).await.expect("head").size, 500);
}

/// The store requirements of format-spec/repository.md §6 "Store requirements" that a
/// client can observe: (R3) a created object's Last-Modified is not before the create
/// request began (nor after it was answered), within the store's timestamp granularity;
/// (R4) it never changes — HEAD, listing, a losing create-if-absent and time passing
/// leave it as it was; (R5) a listing begun after a create was acknowledged shows the
/// object. Servers under test run on this host, so their clocks are ours.
async fn store_time_requirements(store: &Arc<dyn ObjectStore>, base: &str) {
    // Swift dates objects to the second; the kernel stamps files with a coarse clock.
    let granularity = Duration::from_millis(1100);
    let mut created = Vec::new();
    for i in 0..5u64 {
        let k = format!("{base}times/marker-{i}");
        let before = SystemTime::now();
        let out = store
            .put_if_absent(&k, pseudo_random(40 + i, 300))
            .await
            .expect("create");
        let after = SystemTime::now();
        assert_eq!(out, PutOutcome::Created);
        // R5: a listing started now shows it (and everything created before it).
        let listed = list_all(store, &format!("{base}times/"), 1000).await;
        assert_eq!(listed.len(), created.len() + 1, "listing after create {k}");
        let lm = store
            .head(&k)
            .await
            .expect("head")
            .last_modified
            .expect("Last-Modified");
        assert!(
            lm + granularity >= before && lm <= after + granularity,
            "R3: Last-Modified {lm:?} of {k} outside its create request {before:?}..{after:?}"
        );
        created.push((k, lm));
    }
    tokio::time::sleep(granularity).await;
    for (k, lm) in &created {
        assert_eq!(
            store
                .put_if_absent(k, pseudo_random(99, 10))
                .await
                .expect("lose"),
            PutOutcome::AlreadyExists
        );
        store.get(k).await.expect("get");
        let again = store.head(k).await.expect("head").last_modified;
        assert_eq!(again, Some(*lm), "R4: Last-Modified of {k} changed");
    }
    let listed = list_all(store, &format!("{base}times/"), 1000).await;
    // S3 HEADs give whole seconds where its listings give milliseconds: the two agree to
    // the second, and each is stable on its own.
    for (m, (k, lm)) in listed.iter().zip(&created) {
        assert_eq!(&m.key, k);
        let listed_lm = m.last_modified.expect("listing reports Last-Modified");
        let apart = listed_lm
            .duration_since(*lm)
            .unwrap_or_else(|e| e.duration());
        assert!(
            apart < Duration::from_secs(1),
            "R4: listing {listed_lm:?} vs HEAD {lm:?}"
        );
    }
    let relisted = list_all(store, &format!("{base}times/"), 1000).await;
    assert_eq!(relisted, listed, "R4: listings agree");
}

/// `RACERS` tasks released together call `create` on `key`, each with its own bytes;
/// returns the bytes of every racer told `Created`.
async fn race<F, Fut>(key: &str, seed: u64, create: F) -> Vec<Bytes>
where
    F: Fn(String, Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<PutOutcome, StoreError>> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let barrier = barrier.clone();
            let data = pseudo_random(seed + i as u64, 64 * 1024 + i);
            let fut = create(key.to_string(), data.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                (fut.await, data)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        let (outcome, data) = t.await.expect("racer task");
        match outcome.expect("racing create") {
            PutOutcome::Created => winners.push(data),
            PutOutcome::AlreadyExists => {}
        }
    }
    winners
}

/// Racing creators of one key. Atomic stores: exactly one `put_if_absent` wins. Stores
/// that declare `atomic_create: false` (Swift) get the documented weaker check — at least
/// one winner, the object is a winner's, a create after the race is refused — and
/// `repo::create_exclusive` must still give exactly one winner there.
async fn racing_put_if_absent(store: &Arc<dyn ObjectStore>, base: &str) {
    let atomic = store.capabilities().atomic_create;
    for round in 0..3u64 {
        let k = format!("{base}race/{round}");
        let s = store.clone();
        let winners = race(&k, 1000 * round, move |k, d| {
            let s = s.clone();
            async move { s.put_if_absent(&k, d).await }
        })
        .await;
        let stored = store.get(&k).await.expect("get");
        if atomic {
            assert_eq!(
                winners.len(),
                1,
                "exactly one of {RACERS} racers creates {k}"
            );
            assert_eq!(stored, winners[0], "object is the winner's");
        } else {
            eprintln!(
                "{}: {} of {RACERS} racers got Created from a non-atomic put_if_absent",
                store.location(),
                winners.len()
            );
            assert!(!winners.is_empty(), "nobody created {k}");
            assert!(winners.contains(&stored), "object is a winner's");
        }
        let late = store
            .put_if_absent(&k, Bytes::from_static(b"late"))
            .await
            .expect("late create");
        assert_eq!(late, PutOutcome::AlreadyExists, "create after the race");
        assert_eq!(
            store.get(&k).await.expect("get"),
            stored,
            "late create wrote"
        );

        let k = format!("{base}race-exclusive/{round}");
        let s = store.clone();
        let winners = race(&k, 5000 + 1000 * round, move |k, d| {
            let s = s.clone();
            async move { island::repo::create_exclusive(s.as_ref(), &k, d).await }
        })
        .await;
        assert_eq!(
            winners.len(),
            1,
            "create_exclusive: exactly one of {RACERS} racers wins {k}"
        );
        assert_eq!(
            store.get(&k).await.expect("get"),
            winners[0],
            "object is the create_exclusive winner's"
        );
    }
}

async fn cleanup(store: &Arc<dyn ObjectStore>, base: &str) {
    let left = keys(&list_all(store, base, 1000).await);
    store.delete_batch(&left).await.expect("cleanup");
    assert!(
        list_all(store, base, 1000).await.is_empty(),
        "prefix empty after cleanup"
    );
}

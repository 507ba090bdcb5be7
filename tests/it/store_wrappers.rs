//! The wrappers around any store: retry, timeout, limit, throttle, counting, faults.

use crate::common::pseudo_random;
use async_trait::async_trait;
use bytes::Bytes;
use island::store::faults::{FaultConfig, FaultOp, FaultStore};
use island::store::{
    wrap_store, Capabilities, CountingStore, LimitStore, MemoryStore, ObjectMeta, ObjectStore,
    PutOutcome, RetryOptions, RetryStore, StoreError, StoreErrorKind, StoreOptions, ThrottleStore,
    TimeoutStore, TokenBucket,
};
use proptest::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn memory() -> Arc<dyn ObjectStore> {
    Arc::new(MemoryStore::new_unique().expect("memory store"))
}

fn fast_retry(max_attempts: u32) -> RetryOptions {
    RetryOptions {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
        max_elapsed: Duration::from_secs(30),
    }
}

#[tokio::test]
async fn retry_recovers_from_injected_temporary_errors() {
    let faults = Arc::new(FaultStore::new(
        memory(),
        FaultConfig {
            seed: 7,
            error_probability: 0.4,
            temporary: true,
            ..FaultConfig::default()
        },
    ));
    let retry = RetryStore::new(faults.clone(), fast_retry(30));
    for i in 0..100u64 {
        let k = format!("obj/{i}");
        let data = pseudo_random(i, 100);
        retry
            .put(&k, data.clone())
            .await
            .expect("put through retries");
        assert_eq!(retry.get(&k).await.expect("get through retries"), data);
    }
    assert!(
        faults.injected() > 20,
        "faults were injected: {}",
        faults.injected()
    );
    assert_eq!(
        retry.retries(),
        faults.injected(),
        "every injected error was retried once"
    );
}

#[tokio::test]
async fn retry_gives_up_at_once_on_permanent_errors() {
    let faults = Arc::new(FaultStore::new(
        memory(),
        FaultConfig {
            error_probability: 1.0,
            temporary: false,
            ..FaultConfig::default()
        },
    ));
    let retry = RetryStore::new(faults.clone(), fast_retry(10));
    let err = retry
        .put("k", Bytes::from_static(b"x"))
        .await
        .expect_err("permanent");
    assert!(!err.is_temporary());
    assert_eq!(faults.operations(), 1, "no retry of a permanent error");
    assert_eq!(retry.retries(), 0);
    // A NotFound from the real store is permanent too.
    let plain = RetryStore::new(memory(), fast_retry(10));
    assert_eq!(
        plain.get("missing").await.expect_err("missing").kind(),
        StoreErrorKind::NotFound
    );
    assert_eq!(plain.retries(), 0);
}

#[tokio::test]
async fn retry_attempts_are_bounded() {
    let faults = Arc::new(FaultStore::new(
        memory(),
        FaultConfig {
            error_probability: 1.0,
            temporary: true,
            ..FaultConfig::default()
        },
    ));
    let retry = RetryStore::new(faults.clone(), fast_retry(5));
    let err = retry.get("k").await.expect_err("always failing");
    assert!(
        err.is_temporary(),
        "the last temporary error is returned: {err}"
    );
    assert_eq!(faults.operations(), 5);
    assert_eq!(retry.retries(), 4);
    let timed = RetryStore::new(
        faults.clone(),
        RetryOptions {
            max_attempts: 1000,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(20),
            max_elapsed: Duration::from_millis(100),
        },
    );
    let start = Instant::now();
    timed.get("k").await.expect_err("always failing");
    assert!(
        timed.retries() < 20,
        "total-time bound stops retrying: {}",
        timed.retries()
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn retried_put_if_absent_recognises_its_own_lost_create() {
    let inner = memory();
    let faults = Arc::new(FaultStore::new(
        inner.clone(),
        FaultConfig {
            seed: 11,
            ack_loss_probability: 0.5,
            ops: vec![FaultOp::PutIfAbsent],
            ..FaultConfig::default()
        },
    ));
    let retry = RetryStore::new(faults.clone(), fast_retry(40));
    for i in 0..40u64 {
        let k = format!("leases/holder/{i}");
        let data = pseudo_random(i, 64);
        assert_eq!(
            retry.put_if_absent(&k, data.clone()).await.expect("create"),
            PutOutcome::Created,
            "{k}: our own write, whose first response was lost"
        );
        assert_eq!(inner.get(&k).await.expect("stored"), data);
    }
    assert!(
        faults.injected() > 5,
        "acks were lost: {}",
        faults.injected()
    );
    // Someone else's object stays theirs, lost acks or not.
    inner
        .put_if_absent("taken", Bytes::from_static(b"theirs"))
        .await
        .expect("theirs");
    for _ in 0..10 {
        assert_eq!(
            retry
                .put_if_absent("taken", Bytes::from_static(b"mine"))
                .await
                .expect("race"),
            PutOutcome::AlreadyExists
        );
    }
    assert_eq!(
        inner.get("taken").await.expect("get"),
        Bytes::from_static(b"theirs")
    );
}

#[tokio::test]
async fn timeout_turns_a_slow_request_into_a_temporary_error() {
    let slow = Arc::new(FaultStore::new(
        memory(),
        FaultConfig {
            latency: Some((Duration::from_millis(300), Duration::from_millis(300))),
            ..FaultConfig::default()
        },
    ));
    let store = TimeoutStore::new(slow.clone(), Duration::from_millis(20));
    let err = store
        .put("k", Bytes::from_static(b"x"))
        .await
        .expect_err("too slow");
    assert_eq!(err.kind(), StoreErrorKind::Timeout);
    assert!(err.is_temporary());
    // The timed-out write was dropped during its latency: nothing reached the store.
    assert_eq!(
        slow.inner().get("k").await.expect_err("dropped").kind(),
        StoreErrorKind::NotFound
    );
}

/// An inner store that records the most requests it ever saw at once.
#[derive(Debug)]
struct InFlight {
    inner: Arc<dyn ObjectStore>,
    now: AtomicUsize,
    max: AtomicUsize,
}

impl InFlight {
    async fn track<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = f.await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

#[async_trait]
impl ObjectStore for InFlight {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.track(self.inner.put(key, data)).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        self.track(self.inner.put_if_absent(key, data)).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.track(self.inner.get(key)).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.track(self.inner.get_range(key, range)).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.track(self.inner.head(key)).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        self.track(self.inner.list(prefix, start_after, limit))
            .await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.track(self.inner.delete(key)).await
    }
    async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError> {
        self.track(self.inner.delete_batch(keys)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limit_caps_requests_in_flight() {
    let tracker = Arc::new(InFlight {
        inner: memory(),
        now: AtomicUsize::new(0),
        max: AtomicUsize::new(0),
    });
    let limited = Arc::new(LimitStore::new(tracker.clone(), 3));
    let tasks: Vec<_> = (0..24u64)
        .map(|i| {
            let s = limited.clone();
            tokio::spawn(async move { s.put(&format!("k{i}"), pseudo_random(i, 10)).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("put");
    }
    assert_eq!(
        tracker.max.load(Ordering::SeqCst),
        3,
        "never more than 3, and 3 reached"
    );
    assert_eq!(limited.available(), 3, "every slot released");
}

#[test]
fn token_bucket_accounting() {
    let b = TokenBucket::new(1000);
    let t0 = Instant::now() + Duration::from_secs(1);
    assert_eq!(
        b.reserve_at(1000, t0),
        Duration::ZERO,
        "a full bucket pays a burst at once"
    );
    assert_eq!(
        b.reserve_at(500, t0),
        Duration::from_millis(500),
        "then debt is waited off"
    );
    // One second later 1000 tokens have come back: the 500 of debt and 500 more.
    assert_eq!(
        b.reserve_at(500, t0 + Duration::from_secs(1)),
        Duration::ZERO
    );
    assert_eq!(
        b.reserve_at(2000, t0 + Duration::from_secs(1)),
        Duration::from_secs(2)
    );
    // Time running backwards (concurrent callers) refills nothing.
    assert_eq!(b.reserve_at(100, t0), Duration::from_millis(2100));
    // An idle bucket refills only up to one second's worth.
    let later = t0 + Duration::from_secs(100);
    assert_eq!(b.reserve_at(1000, later), Duration::ZERO);
    assert_eq!(b.reserve_at(1, later), Duration::from_millis(1));
    assert_eq!(b.charged(), 5101);
}

proptest! {
    /// Whatever the request sizes and arrival times, the bytes a caller may send by the
    /// time its wait ends never exceed burst + rate × elapsed.
    #[test]
    fn token_bucket_never_exceeds_the_rate(
        rate in 1u64..10_000_000,
        events in prop::collection::vec((0u64..20_000_000, 0u64..2_000_000), 1..60),
    ) {
        let b = TokenBucket::new(rate);
        let start = Instant::now() + Duration::from_secs(1);
        // The bucket starts full, as if it had been idle since one second before `start`.
        let mut now = start;
        let mut sent: u128 = 0;
        for (bytes, gap_us) in events {
            now += Duration::from_micros(gap_us);
            let wait = b.reserve_at(bytes, now);
            sent += u128::from(bytes);
            let done = (now + wait).duration_since(start).as_secs_f64();
            let allowed = rate as f64 * (1.0 + done);
            prop_assert!(sent as f64 <= allowed * (1.0 + 1e-9) + 1.0,
                "sent {sent} > allowed {allowed} at {done}s");
        }
    }
}

#[tokio::test]
async fn throttle_charges_payloads_to_the_right_bucket() {
    let store = ThrottleStore::new(memory(), Some(100_000), Some(10_000_000));
    for i in 0..4u64 {
        store
            .put(&format!("k{i}"), pseudo_random(i, 50_000))
            .await
            .expect("put");
    }
    let up = store.upload_bucket().expect("upload limited");
    assert_eq!(up.charged(), 200_000);
    // 200 kB through a 100 kB/s bucket holding 100 kB: 1 s of waits in all, less what
    // refilled while the puts themselves ran.
    assert!(
        up.waited() <= Duration::from_secs(1),
        "waited {:?}",
        up.waited()
    );
    assert!(
        up.waited() >= Duration::from_millis(800),
        "waited {:?}",
        up.waited()
    );
    store.get("k0").await.expect("get");
    store.get_range("k1", 0..1000).await.expect("range");
    let down = store.download_bucket().expect("download limited");
    assert_eq!(down.charged(), 51_000);
    assert_eq!(
        up.charged(),
        200_000,
        "downloads do not touch the upload bucket"
    );
}

#[tokio::test]
async fn counting_counts_requests_and_bytes() {
    let store = CountingStore::new(memory());
    store.put("a", pseudo_random(1, 100)).await.expect("put");
    store.put("b", pseudo_random(2, 50)).await.expect("put");
    assert_eq!(
        store
            .put_if_absent("a", pseudo_random(3, 7))
            .await
            .expect("pia"),
        PutOutcome::AlreadyExists
    );
    assert_eq!(
        store
            .put_if_absent("c", pseudo_random(4, 7))
            .await
            .expect("pia"),
        PutOutcome::Created
    );
    store.get("a").await.expect("get");
    store.get("zzz").await.expect_err("missing");
    store.get_range("a", 10..30).await.expect("range");
    store.head("b").await.expect("head");
    store.list("", None, 10).await.expect("list");
    store.delete("b").await.expect("delete");
    let many: Vec<String> = (0..2500).map(|i| format!("gone/{i}")).collect();
    store.delete_batch(&many).await.expect("batch");
    let c = store.counts();
    assert_eq!(c.puts, 2);
    assert_eq!(c.conditional_puts, 2);
    assert_eq!(c.gets, 2, "failed requests are requests too");
    assert_eq!(c.range_gets, 1);
    assert_eq!(c.heads, 1);
    assert_eq!(c.lists, 1);
    assert_eq!(c.deletes, 1);
    assert_eq!(c.batch_deletes, 3, "2500 keys at 1000 per request");
    assert_eq!(c.total(), 13);
    assert_eq!(c.bytes_uploaded, 157, "only created objects count");
    assert_eq!(c.bytes_downloaded, 120);
    assert_eq!(store.request_counts(), Some(c));
}

#[tokio::test]
async fn crash_fails_everything_after_n_operations() {
    let faults = FaultStore::new(
        memory(),
        FaultConfig {
            crash_after: Some(5),
            ..FaultConfig::default()
        },
    );
    for i in 0..5 {
        faults
            .put(&format!("k{i}"), Bytes::from_static(b"x"))
            .await
            .expect("before crash");
    }
    assert!(!faults.is_crashed());
    faults
        .put("k5", Bytes::from_static(b"x"))
        .await
        .expect_err("sixth op");
    assert!(faults.is_crashed());
    faults
        .get("k0")
        .await
        .expect_err("reads fail after the crash too");
    let survivor = faults.inner();
    let left = survivor.list("", None, 100).await.expect("list");
    assert_eq!(
        left.len(),
        5,
        "acknowledged writes survive, the refused one does not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loses_writes_still_in_flight() {
    let faults = Arc::new(FaultStore::new(
        memory(),
        FaultConfig {
            latency: Some((Duration::from_millis(200), Duration::from_millis(200))),
            ops: vec![FaultOp::Put],
            ..FaultConfig::default()
        },
    ));
    faults
        .put_if_absent("acked", Bytes::from_static(b"a"))
        .await
        .expect("no latency");
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let f = faults.clone();
            tokio::spawn(async move {
                f.put(&format!("inflight/{i}"), Bytes::from_static(b"x"))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    faults.crash();
    for w in writers {
        w.await.expect("task").expect_err("in-flight write fails");
    }
    let survivor = faults.inner();
    assert!(survivor
        .list("inflight/", None, 10)
        .await
        .expect("list")
        .is_empty());
    assert_eq!(
        survivor.get("acked").await.expect("acked"),
        Bytes::from_static(b"a")
    );
}

#[tokio::test]
async fn dropped_write_futures_write_nothing() {
    let faults = FaultStore::new(
        memory(),
        FaultConfig {
            latency: Some((Duration::from_millis(100), Duration::from_millis(100))),
            ..FaultConfig::default()
        },
    );
    let r = tokio::time::timeout(
        Duration::from_millis(10),
        faults.put("dropped", Bytes::from_static(b"x")),
    )
    .await;
    assert!(r.is_err(), "the put future was dropped mid-flight");
    assert!(!faults.is_crashed());
    assert_eq!(
        faults
            .inner()
            .get("dropped")
            .await
            .expect_err("nothing written")
            .kind(),
        StoreErrorKind::NotFound
    );
}

#[tokio::test]
async fn fault_schedules_replay_from_their_seed() {
    async fn run(seed: u64) -> Vec<bool> {
        let f = FaultStore::new(
            memory(),
            FaultConfig {
                seed,
                error_probability: 0.3,
                temporary: true,
                ..FaultConfig::default()
            },
        );
        let mut outcomes = Vec::new();
        for i in 0..64 {
            outcomes.push(
                f.put(&format!("k{i}"), Bytes::from_static(b"x"))
                    .await
                    .is_ok(),
            );
        }
        outcomes
    }
    assert_eq!(run(42).await, run(42).await);
    assert_ne!(run(42).await, run(43).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_stack_rides_out_faults_and_counts_logical_requests() {
    let inner = memory();
    let faults = Arc::new(FaultStore::new(
        inner.clone(),
        FaultConfig {
            seed: 3,
            error_probability: 0.2,
            ack_loss_probability: 0.2,
            temporary: true,
            latency: Some((Duration::ZERO, Duration::from_millis(2))),
            ..FaultConfig::default()
        },
    ));
    let opts = StoreOptions {
        concurrency: 4,
        retry: fast_retry(30),
        ..StoreOptions::default()
    };
    let store = wrap_store(faults.clone(), &opts);
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move {
                let k = format!("snapshots/v/{i:03}");
                let data = pseudo_random(i, 1000);
                let created = s.put_if_absent(&k, data.clone()).await?;
                let back = s.get(&k).await?;
                Ok::<_, StoreError>((created, back == data))
            })
        })
        .collect();
    for t in tasks {
        let (created, same) = t.await.expect("task").expect("ops through the stack");
        assert_eq!(created, PutOutcome::Created);
        assert!(same);
    }
    assert!(
        faults.injected() > 10,
        "faults injected: {}",
        faults.injected()
    );
    let c = store.request_counts().expect("counting layer");
    assert_eq!(
        (c.conditional_puts, c.gets),
        (64, 64),
        "logical requests, not attempts"
    );
    assert_eq!(c.bytes_uploaded, 64_000);
    assert_eq!(
        inner
            .list("snapshots/", None, 100)
            .await
            .expect("list")
            .len(),
        64
    );
}

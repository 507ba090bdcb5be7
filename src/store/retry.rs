//! Retries temporary failures (throttling, timeouts, 5xx, transient I/O) with jittered
//! exponential backoff, bounded in attempts and in total time. Permanent errors (not
//! found, permission denied, bad config) are returned at once.
//!
//! `put_if_absent` needs care: when an attempt fails temporarily its write may still have
//! landed (the response was lost), so a later attempt can see `AlreadyExists` for our own
//! object. After such an ambiguous failure, an `AlreadyExists` is resolved by reading the
//! object back: identical bytes ⇒ `Created`. Callers make create-if-absent payloads unique
//! to the writer (holder id, snapshot id, nonce), so identical bytes mean our write.
//!
//! Why not opendal's `RetryLayer`: it wraps one opendal operator, while this layer must
//! cover every store — the fs driver (Island's own `std::fs` code), and Swift's requests
//! that bypass opendal (login, conditional create, ranged reads, bulk deletes). It decides
//! by opendal's own `is_temporary`, not by Island's classification (`opendal_errors.rs`:
//! conflicts and transport failures temporary; Island's own timeouts). And it cannot
//! resolve the ambiguous create above: a retried `If-None-Match: *` PUT that already
//! landed comes back as "condition not met", i.e. the writer would be told it lost to
//! itself.

use super::{ObjectMeta, ObjectStore, PutOutcome, RetryOptions, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Retries temporary errors of the inner store according to a [`RetryOptions`].
#[derive(Debug)]
pub struct RetryStore {
    inner: Arc<dyn ObjectStore>,
    opts: RetryOptions,
    retries: AtomicU64,
}

impl RetryStore {
    /// Retries temporary errors of `inner` as `opts` allow.
    pub fn new(inner: Arc<dyn ObjectStore>, opts: RetryOptions) -> RetryStore {
        RetryStore {
            inner,
            opts,
            retries: AtomicU64::new(0),
        }
    }

    /// Retries performed so far (attempts beyond the first), for reports and tests.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Backoff before retry number `retry` (0-based): "equal jitter", half fixed and half
    /// random, so concurrent clients spread out but every wait still grows.
    fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .opts
            .initial_backoff
            .saturating_mul(1u32 << retry.min(20))
            .min(self.opts.max_backoff);
        let half = exp / 2;
        let jitter_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::rng().random_range(0..=jitter_nanos))
    }

    /// Runs `attempt` until it succeeds, fails permanently, or the budget is spent.
    /// `attempt` gets whether an earlier attempt failed temporarily.
    async fn run<T, F, Fut>(&self, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut(bool) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let start = Instant::now();
        let mut failed_before = false;
        let mut tries: u32 = 0;
        loop {
            tries += 1;
            match attempt(failed_before).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if !e.is_temporary() || tries >= self.opts.max_attempts.max(1) {
                        return Err(e);
                    }
                    let wait = self.backoff(tries - 1);
                    if start.elapsed() + wait > self.opts.max_elapsed {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, attempt = tries, ?wait, "retrying store request");
                    failed_before = true;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[async_trait]
impl ObjectStore for RetryStore {
    super::forward_descriptive_methods!();
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.run(|_| self.inner.put(key, data.clone())).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        self.run(|ambiguous| {
            let data = data.clone();
            async move {
                match self.inner.put_if_absent(key, data.clone()).await? {
                    PutOutcome::AlreadyExists if ambiguous => {
                        let existing = self.inner.get(key).await?;
                        Ok(if existing == data {
                            PutOutcome::Created
                        } else {
                            PutOutcome::AlreadyExists
                        })
                    }
                    outcome => Ok(outcome),
                }
            }
        })
        .await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.run(|_| self.inner.get(key)).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.run(|_| self.inner.get_range(key, range.clone())).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.run(|_| self.inner.head(key)).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        self.run(|_| self.inner.list(prefix, start_after, limit))
            .await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.run(|_| self.inner.delete(key)).await
    }
    async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError> {
        self.run(|_| self.inner.delete_batch(keys)).await
    }
}

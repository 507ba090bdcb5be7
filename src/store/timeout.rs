//! Per-request timeout: a request that does not finish in time fails as a temporary
//! `Timeout`, which the retry layer above may retry. The timed-out future is dropped;
//! drivers keep a dropped write atomic (all or nothing), so a late completion is harmless
//! and a retried `put_if_absent` sees it (see the retry layer).
//!
//! Why not opendal's `TimeoutLayer`: its two fixed budgets (one per non-I/O call, one per
//! body read/write call) give a large upload no more time than a small one, where this
//! layer allows one more second per MiB; and it bounds only an opendal operator's calls,
//! while this layer bounds each attempt on every store (a hung NFS mount under the fs
//! driver, Swift's own requests) and must sit under the retry layer to make each attempt,
//! not the whole retried operation, fail in time.

use super::{ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Bounds every request to the inner store by `timeout`, plus one second per MiB of
/// payload for puts (a 1 MiB/s floor, so large packs on slow links are not cut off).
#[derive(Debug)]
pub struct TimeoutStore {
    inner: Arc<dyn ObjectStore>,
    timeout: Duration,
}

impl TimeoutStore {
    /// Bounds each request to `inner` by `timeout` (plus one second per MiB of payload).
    pub fn new(inner: Arc<dyn ObjectStore>, timeout: Duration) -> TimeoutStore {
        TimeoutStore { inner, timeout }
    }

    async fn run<T>(
        &self,
        op: &'static str,
        key: &str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.run_sized(op, key, 0, fut).await
    }

    async fn run_sized<T>(
        &self,
        op: &'static str,
        key: &str,
        payload: usize,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mibs = u32::try_from(payload >> 20).unwrap_or(u32::MAX);
        let budget = self
            .timeout
            .saturating_add(Duration::from_secs(1).saturating_mul(mibs));
        match tokio::time::timeout(budget, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Timeout,
                op,
                &self.inner.location(),
                key,
                format!("no answer within {budget:?}"),
            )
            .with_temporary(true)),
        }
    }
}

#[async_trait]
impl ObjectStore for TimeoutStore {
    super::forward_descriptive_methods!();
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let n = data.len();
        self.run_sized("put", key, n, self.inner.put(key, data))
            .await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        let n = data.len();
        self.run_sized("put_if_absent", key, n, self.inner.put_if_absent(key, data))
            .await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.run("get", key, self.inner.get(key)).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.run("get_range", key, self.inner.get_range(key, range))
            .await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.run("head", key, self.inner.head(key)).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        self.run("list", prefix, self.inner.list(prefix, start_after, limit))
            .await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.run("delete", key, self.inner.delete(key)).await
    }
    async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError> {
        let first = keys.first().map(String::as_str).unwrap_or("");
        self.run("delete_batch", first, self.inner.delete_batch(keys))
            .await
    }
}

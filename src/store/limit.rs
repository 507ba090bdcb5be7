//! Concurrency limit: at most N requests in flight through this store, so a parallel
//! upload pipeline cannot open unbounded connections or trip a server's rate limit.
//!
//! Why not opendal's `ConcurrentLimitLayer`: it counts HTTP requests of one operator, while
//! this layer counts logical operations of any store (fs included) and holds the slot
//! across the retry layer's backoff beneath it, so retries never multiply the load. The
//! Swift driver also builds a new operator at every re-login and sends some requests
//! itself; a per-operator limit would reset and miss those.

use super::{ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Admits at most `limit` concurrent operations to the inner store (FIFO, tokio
/// `Semaphore`). A dropped waiting future gives up its place; a dropped running one
/// releases its slot.
#[derive(Debug)]
pub struct LimitStore {
    inner: Arc<dyn ObjectStore>,
    sem: Semaphore,
    limit: usize,
}

impl LimitStore {
    /// `limit` is raised to 1 if 0 (a store that admits nothing would hang every job).
    pub fn new(inner: Arc<dyn ObjectStore>, limit: usize) -> LimitStore {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        LimitStore {
            inner,
            sem: Semaphore::new(limit),
            limit,
        }
    }

    /// Operations that can run at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Operations that could start right now without waiting.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    async fn permit(&self, op: &'static str, key: &str) -> Result<SemaphorePermit<'_>, StoreError> {
        self.sem.acquire().await.map_err(|_| {
            StoreError::new(
                StoreErrorKind::Unexpected,
                op,
                &self.inner.location(),
                key,
                "concurrency limiter closed",
            )
        })
    }
}

#[async_trait]
impl ObjectStore for LimitStore {
    super::forward_descriptive_methods!();
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let _p = self.permit("put", key).await?;
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        let _p = self.permit("put_if_absent", key).await?;
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let _p = self.permit("get", key).await?;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let _p = self.permit("get_range", key).await?;
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let _p = self.permit("head", key).await?;
        self.inner.head(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let _p = self.permit("list", prefix).await?;
        self.inner.list(prefix, start_after, limit).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let _p = self.permit("delete", key).await?;
        self.inner.delete(key).await
    }
    async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError> {
        let _p = self
            .permit(
                "delete_batch",
                keys.first().map(String::as_str).unwrap_or(""),
            )
            .await?;
        self.inner.delete_batch(keys).await
    }
}

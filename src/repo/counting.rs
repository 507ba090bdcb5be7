//! Request and byte counters around the repository's store, so every operation can report
//! what it cost (bytes uploaded/downloaded, requests) without relying on the driver.

use crate::store::{Capabilities, ObjectMeta, ObjectStore, PutOutcome, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Totals since the handle was opened; operations report the difference.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RequestCounts {
    pub puts: u64,
    pub gets: u64,
    pub heads: u64,
    pub lists: u64,
    pub deletes: u64,
    pub bytes_uploaded: u64,
    pub bytes_downloaded: u64,
}

impl RequestCounts {
    /// All requests.
    pub fn requests(&self) -> u64 {
        self.puts + self.gets + self.heads + self.lists + self.deletes
    }

    /// `self - earlier`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            puts: self.puts - earlier.puts,
            gets: self.gets - earlier.gets,
            heads: self.heads - earlier.heads,
            lists: self.lists - earlier.lists,
            deletes: self.deletes - earlier.deletes,
            bytes_uploaded: self.bytes_uploaded - earlier.bytes_uploaded,
            bytes_downloaded: self.bytes_downloaded - earlier.bytes_downloaded,
        }
    }
}

#[derive(Default, Debug)]
pub(crate) struct Counters {
    puts: AtomicU64,
    gets: AtomicU64,
    heads: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            puts: self.puts.load(Relaxed),
            gets: self.gets.load(Relaxed),
            heads: self.heads.load(Relaxed),
            lists: self.lists.load(Relaxed),
            deletes: self.deletes.load(Relaxed),
            bytes_uploaded: self.up.load(Relaxed),
            bytes_downloaded: self.down.load(Relaxed),
        }
    }
}

/// Counting pass-through store.
#[derive(Debug)]
pub(crate) struct Counting {
    pub inner: Arc<dyn ObjectStore>,
    pub counters: Arc<Counters>,
}

#[async_trait]
impl ObjectStore for Counting {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.counters.puts.fetch_add(1, Relaxed);
        self.counters.up.fetch_add(data.len() as u64, Relaxed);
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        self.counters.puts.fetch_add(1, Relaxed);
        self.counters.up.fetch_add(data.len() as u64, Relaxed);
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.counters.gets.fetch_add(1, Relaxed);
        let b = self.inner.get(key).await?;
        self.counters.down.fetch_add(b.len() as u64, Relaxed);
        Ok(b)
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.counters.gets.fetch_add(1, Relaxed);
        let b = self.inner.get_range(key, range).await?;
        self.counters.down.fetch_add(b.len() as u64, Relaxed);
        Ok(b)
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.counters.heads.fetch_add(1, Relaxed);
        self.inner.head(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        self.counters.lists.fetch_add(1, Relaxed);
        self.inner.list(prefix, start_after, limit).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.counters.deletes.fetch_add(1, Relaxed);
        self.inner.delete(key).await
    }
    async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError> {
        let per = self.inner.capabilities().max_batch_delete.max(1);
        self.counters
            .deletes
            .fetch_add(keys.len().div_ceil(per) as u64, Relaxed);
        self.inner.delete_batch(keys).await
    }
}

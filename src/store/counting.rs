//! Counts requests by kind and bytes moved, so backups can report `requests` and
//! `bytes_uploaded` (and benchmarks requests per GiB) without each caller keeping tally.

use super::{Capabilities, ObjectMeta, ObjectStore, PutOutcome, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A snapshot of the counters. Subtract two snapshots to get what one job did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// `put` calls (overwrites), failed ones included; retries below this layer are not
    /// counted again.
    pub puts: u64,
    /// `put_if_absent` calls, counted apart from `puts`: they are the protocol's commit
    /// points and the only conditional requests.
    pub conditional_puts: u64,
    /// `get` calls (whole-object reads).
    pub gets: u64,
    /// `get_range` calls (pack frames, segment records).
    pub range_gets: u64,
    /// `head` calls.
    pub heads: u64,
    /// `list` calls, one per page asked for.
    pub lists: u64,
    /// `delete` calls (single objects).
    pub deletes: u64,
    /// Wire requests of `delete_batch`: ⌈keys / max_batch_delete⌉ per call.
    pub batch_deletes: u64,
    /// Payload bytes of successful puts.
    pub bytes_uploaded: u64,
    /// Payload bytes of successful gets and ranged gets.
    pub bytes_downloaded: u64,
}

impl RequestCounts {
    /// All requests of every kind.
    pub fn total(&self) -> u64 {
        self.puts
            + self.conditional_puts
            + self.gets
            + self.range_gets
            + self.heads
            + self.lists
            + self.deletes
            + self.batch_deletes
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            puts: self.puts.saturating_sub(earlier.puts),
            conditional_puts: self
                .conditional_puts
                .saturating_sub(earlier.conditional_puts),
            gets: self.gets.saturating_sub(earlier.gets),
            range_gets: self.range_gets.saturating_sub(earlier.range_gets),
            heads: self.heads.saturating_sub(earlier.heads),
            lists: self.lists.saturating_sub(earlier.lists),
            deletes: self.deletes.saturating_sub(earlier.deletes),
            batch_deletes: self.batch_deletes.saturating_sub(earlier.batch_deletes),
            bytes_uploaded: self.bytes_uploaded.saturating_sub(earlier.bytes_uploaded),
            bytes_downloaded: self
                .bytes_downloaded
                .saturating_sub(earlier.bytes_downloaded),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    puts: AtomicU64,
    conditional_puts: AtomicU64,
    gets: AtomicU64,
    range_gets: AtomicU64,
    heads: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    batch_deletes: AtomicU64,
    bytes_uploaded: AtomicU64,
    bytes_downloaded: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Counts every request made through it (attempted, whether or not it succeeded) and
/// the payload bytes of the successful ones.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    c: Counters,
}

impl CountingStore {
    /// Counts every request made through it to `inner`, from zero.
    pub fn new(inner: Arc<dyn ObjectStore>) -> CountingStore {
        CountingStore {
            inner,
            c: Counters::default(),
        }
    }

    /// The counters now.
    pub fn counts(&self) -> RequestCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RequestCounts {
            puts: l(&self.c.puts),
            conditional_puts: l(&self.c.conditional_puts),
            gets: l(&self.c.gets),
            range_gets: l(&self.c.range_gets),
            heads: l(&self.c.heads),
            lists: l(&self.c.lists),
            deletes: l(&self.c.deletes),
            batch_deletes: l(&self.c.batch_deletes),
            bytes_uploaded: l(&self.c.bytes_uploaded),
            bytes_downloaded: l(&self.c.bytes_downloaded),
        }
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn request_counts(&self) -> Option<RequestCounts> {
        Some(self.counts())
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        bump(&self.c.puts, 1);
        let n = data.len() as u64;
        self.inner.put(key, data).await?;
        bump(&self.c.bytes_uploaded, n);
        Ok(())
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        bump(&self.c.conditional_puts, 1);
        let n = data.len() as u64;
        let outcome = self.inner.put_if_absent(key, data).await?;
        if outcome == PutOutcome::Created {
            bump(&self.c.bytes_uploaded, n);
        }
        Ok(outcome)
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        bump(&self.c.gets, 1);
        let b = self.inner.get(key).await?;
        bump(&self.c.bytes_downloaded, b.len() as u64);
        Ok(b)
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        bump(&self.c.range_gets, 1);
        let b = self.inner.get_range(key, range).await?;
        bump(&self.c.bytes_downloaded, b.len() as u64);
        Ok(b)
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        bump(&self.c.heads, 1);
        self.inner.head(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        bump(&self.c.lists, 1);
        self.inner.list(prefix, start_after, limit).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        bump(&self.c.deletes, 1);
        self.inner.delete(key).await
    }
    async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError> {
        let per = self.inner.capabilities().max_batch_delete.max(1);
        bump(&self.c.batch_deletes, keys.len().div_ceil(per) as u64);
        self.inner.delete_batch(keys).await
    }
}

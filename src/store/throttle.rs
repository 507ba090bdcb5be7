//! Bandwidth limits (`--limit-upload`, `--limit-download`) so a nightly job does not starve
//! production traffic: a token bucket per direction, charged with each request's payload.
//!
//! Why not opendal's `ThrottleLayer`: its GCRA limiter must be given a burst larger than
//! any single transfer or it refuses the transfer, so a 16 MiB pack would need a 16 MiB
//! burst and pass at full speed; the bucket here runs into debt instead, so the rate holds
//! for objects larger than one second's worth. It also applies to one opendal operator
//! only, not to the fs driver or Swift's own ranged reads.

use super::{ObjectStore, PutOutcome, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket of `rate` bytes per second holding at most one second's worth (the
/// burst). A transfer takes its size in tokens at once and may drive the bucket into
/// debt; the caller then waits until the debt would be repaid. Later callers queue behind
/// that debt, so over any interval of length t at most `burst + rate·t` bytes pass, also
/// for single objects larger than the burst (a 16 MiB pack at 1 MiB/s waits ~15 s).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<BucketState>,
    charged: AtomicU64,
    waited_nanos: AtomicU64,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` bytes per second (0 is treated as 1).
    pub fn new(rate: u64) -> TokenBucket {
        let rate = rate.max(1) as f64;
        TokenBucket {
            rate,
            burst: rate,
            state: Mutex::new(BucketState {
                tokens: rate,
                last: Instant::now(),
            }),
            charged: AtomicU64::new(0),
            waited_nanos: AtomicU64::new(0),
        }
    }

    /// Takes `bytes` tokens as of `now` and returns how long the caller must wait before
    /// its transfer counts as within the rate. Instants earlier than the last call count
    /// as no elapsed time.
    pub fn reserve_at(&self, bytes: u64, now: Instant) -> Duration {
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let elapsed = now.saturating_duration_since(st.last).as_secs_f64();
        if now > st.last {
            st.last = now;
        }
        st.tokens = (st.tokens + elapsed * self.rate).min(self.burst);
        st.tokens -= bytes as f64;
        self.charged.fetch_add(bytes, Ordering::Relaxed);
        let wait = if st.tokens < 0.0 {
            Duration::from_secs_f64(-st.tokens / self.rate)
        } else {
            Duration::ZERO
        };
        self.waited_nanos.fetch_add(
            u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        wait
    }

    /// Takes `bytes` tokens now and sleeps for the wait they impose.
    pub async fn take(&self, bytes: u64) {
        let wait = self.reserve_at(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Bytes charged so far.
    pub fn charged(&self) -> u64 {
        self.charged.load(Ordering::Relaxed)
    }

    /// Sum of the waits imposed so far (each caller's own wait, not wall time).
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_nanos.load(Ordering::Relaxed))
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }
}

/// Throttles uploads (put payloads, charged before sending) and downloads (get payloads,
/// charged when they arrive, delaying their delivery) independently.
#[derive(Debug)]
pub struct ThrottleStore {
    inner: Arc<dyn ObjectStore>,
    up: Option<TokenBucket>,
    down: Option<TokenBucket>,
}

impl ThrottleStore {
    /// `None` leaves a direction unlimited.
    pub fn new(inner: Arc<dyn ObjectStore>, up: Option<u64>, down: Option<u64>) -> ThrottleStore {
        ThrottleStore {
            inner,
            up: up.map(TokenBucket::new),
            down: down.map(TokenBucket::new),
        }
    }

    /// The upload bucket, if uploads are limited.
    pub fn upload_bucket(&self) -> Option<&TokenBucket> {
        self.up.as_ref()
    }

    /// The download bucket, if downloads are limited.
    pub fn download_bucket(&self) -> Option<&TokenBucket> {
        self.down.as_ref()
    }

    async fn upload(&self, n: usize) {
        if let Some(b) = &self.up {
            b.take(n as u64).await;
        }
    }

    async fn download(&self, n: usize) {
        if let Some(b) = &self.down {
            b.take(n as u64).await;
        }
    }
}

#[async_trait]
impl ObjectStore for ThrottleStore {
    super::forward_descriptive_methods!();
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.upload(data.len()).await;
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        self.upload(data.len()).await;
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let b = self.inner.get(key).await?;
        self.download(b.len()).await;
        Ok(b)
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let b = self.inner.get_range(key, range).await?;
        self.download(b.len()).await;
        Ok(b)
    }
    super::forward_io_methods!(head, list, delete, delete_batch);
}

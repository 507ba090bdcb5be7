//! Fault injection for tests (public so integration tests and the schedule runner use
//! it): seeded random errors per operation kind, latency, lost acknowledgements, and a
//! "crash" after which the store is dead and writes still in flight are lost, and seeded
//! yields that interleave concurrent tasks at every request.
//!
//! Every decision comes from one seeded RNG, so a failing schedule replays from its seed
//! (given the same order of requests). Dropping an operation's future is always safe: a
//! write dropped during its injected latency never reaches the inner store, and one
//! dropped later is as atomic as the inner driver's write.

use super::{ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The operation kinds faults can be aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// [`ObjectStore::put`].
    Put,
    /// [`ObjectStore::put_if_absent`].
    PutIfAbsent,
    /// [`ObjectStore::get`].
    Get,
    /// [`ObjectStore::get_range`].
    GetRange,
    /// [`ObjectStore::head`].
    Head,
    /// [`ObjectStore::list`].
    List,
    /// [`ObjectStore::delete`].
    Delete,
    /// [`ObjectStore::delete_batch`].
    DeleteBatch,
}

impl FaultOp {
    /// Every kind.
    pub const ALL: [FaultOp; 8] = [
        FaultOp::Put,
        FaultOp::PutIfAbsent,
        FaultOp::Get,
        FaultOp::GetRange,
        FaultOp::Head,
        FaultOp::List,
        FaultOp::Delete,
        FaultOp::DeleteBatch,
    ];

    /// Kinds that change the store.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            FaultOp::Put | FaultOp::PutIfAbsent | FaultOp::Delete | FaultOp::DeleteBatch
        )
    }

    fn name(self) -> &'static str {
        match self {
            FaultOp::Put => "put",
            FaultOp::PutIfAbsent => "put_if_absent",
            FaultOp::Get => "get",
            FaultOp::GetRange => "get_range",
            FaultOp::Head => "head",
            FaultOp::List => "list",
            FaultOp::Delete => "delete",
            FaultOp::DeleteBatch => "delete_batch",
        }
    }
}

/// What to inject. `Default` injects nothing.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    /// Seed of the RNG behind every random decision.
    pub seed: u64,
    /// Probability that an operation fails before reaching the inner store.
    pub error_probability: f64,
    /// Probability that a write is applied to the inner store and then reported as a
    /// (temporary) failure: the lost-response case.
    pub ack_loss_probability: f64,
    /// Whether injected errors are temporary (retryable) or permanent.
    pub temporary: bool,
    /// Kinds the errors and latency apply to; empty = all kinds.
    pub ops: Vec<FaultOp>,
    /// Extra latency per operation, uniform in `[min, max]`.
    pub latency: Option<(Duration, Duration)>,
    /// Up to this many `yield_now`s per operation (uniform in `0..=yields`): lets other
    /// tasks of a single-threaded runtime run at every request, so a seeded schedule
    /// interleaves concurrent operations at await points without real-time sleeps.
    pub yields: u32,
    /// Crash when operation number `crash_after + 1` starts: it and every later operation
    /// fail, and writes still in their latency phase are lost.
    pub crash_after: Option<u64>,
}

/// Wraps a store and injects the faults of a [`FaultConfig`].
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    cfg: FaultConfig,
    rng: Mutex<StdRng>,
    started: AtomicU64,
    injected: AtomicU64,
    crashed: AtomicBool,
}

/// What was decided for one operation before it ran.
struct Plan {
    lose_ack: bool,
}

impl FaultStore {
    /// Injects the faults `cfg` describes into requests to `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, cfg: FaultConfig) -> FaultStore {
        FaultStore {
            inner,
            rng: Mutex::new(StdRng::seed_from_u64(cfg.seed)),
            cfg,
            started: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            crashed: AtomicBool::new(false),
        }
    }

    /// The wrapped store: what survives a crash ("restart" by using it directly).
    pub fn inner(&self) -> Arc<dyn ObjectStore> {
        self.inner.clone()
    }

    /// Crashes now: every later operation fails and in-flight writes not yet handed to
    /// the inner store are lost.
    pub fn crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
    }

    /// Whether the store has crashed.
    pub fn is_crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Errors injected so far (including lost acknowledgements and crash refusals).
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Operations started so far.
    pub fn operations(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    fn targeted(&self, op: FaultOp) -> bool {
        self.cfg.ops.is_empty() || self.cfg.ops.contains(&op)
    }

    fn fault(&self, op: FaultOp, key: &str, what: &str, temporary: bool) -> StoreError {
        self.injected.fetch_add(1, Ordering::Relaxed);
        StoreError::new(
            StoreErrorKind::Unexpected,
            op.name(),
            &self.inner.location(),
            key,
            format!("injected fault: {what}"),
        )
        .with_temporary(temporary)
    }

    fn crashed_error(&self, op: FaultOp, key: &str) -> StoreError {
        self.fault(op, key, "store crashed", false)
    }

    /// Admits one operation: crash check, random decisions, latency.
    async fn gate(&self, op: FaultOp, key: &str) -> Result<Plan, StoreError> {
        if self.is_crashed() {
            return Err(self.crashed_error(op, key));
        }
        let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        if self.cfg.crash_after.is_some_and(|c| n > c) {
            self.crash();
            return Err(self.crashed_error(op, key));
        }
        let targeted = self.targeted(op);
        let (delay, yields, fail, lose_ack) = {
            let mut rng = match self.rng.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let delay = match self.cfg.latency {
                Some((lo, hi)) if targeted && hi > lo => rng.random_range(lo..=hi),
                Some((lo, _)) if targeted => lo,
                _ => Duration::ZERO,
            };
            let yields = if targeted && self.cfg.yields > 0 {
                rng.random_range(0..=self.cfg.yields)
            } else {
                0
            };
            let fail = targeted && rng.random::<f64>() < self.cfg.error_probability;
            let lose_ack =
                targeted && op.is_write() && rng.random::<f64>() < self.cfg.ack_loss_probability;
            (delay, yields, fail, lose_ack)
        };
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // A crash during the wait loses this request: a write not yet acknowledged.
        if self.is_crashed() {
            return Err(self.crashed_error(op, key));
        }
        if fail {
            return Err(self.fault(op, key, "request failed", self.cfg.temporary));
        }
        Ok(Plan { lose_ack })
    }

    /// After a write reached the inner store: maybe report it as failed anyway.
    fn ack<T>(&self, plan: Plan, op: FaultOp, key: &str, v: T) -> Result<T, StoreError> {
        if plan.lose_ack {
            return Err(self.fault(op, key, "response lost after the write", true));
        }
        Ok(v)
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    super::forward_descriptive_methods!();
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let plan = self.gate(FaultOp::Put, key).await?;
        self.inner.put(key, data).await?;
        self.ack(plan, FaultOp::Put, key, ())
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        let plan = self.gate(FaultOp::PutIfAbsent, key).await?;
        let outcome = self.inner.put_if_absent(key, data).await?;
        self.ack(plan, FaultOp::PutIfAbsent, key, outcome)
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.gate(FaultOp::Get, key).await?;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.gate(FaultOp::GetRange, key).await?;
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.gate(FaultOp::Head, key).await?;
        self.inner.head(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        self.gate(FaultOp::List, prefix).await?;
        self.inner.list(prefix, start_after, limit).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let plan = self.gate(FaultOp::Delete, key).await?;
        self.inner.delete(key).await?;
        self.ack(plan, FaultOp::Delete, key, ())
    }
    async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError> {
        let first = keys.first().map(String::as_str).unwrap_or("");
        let plan = self.gate(FaultOp::DeleteBatch, first).await?;
        self.inner.delete_batch(keys).await?;
        self.ack(plan, FaultOp::DeleteBatch, first, ())
    }
}

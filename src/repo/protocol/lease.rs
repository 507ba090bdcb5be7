//! Leases: `leases/<holder>/<generation>` objects created with create-if-absent. A holder
//! renews by creating the next generation; age is judged by the store's Last-Modified of
//! the newest generation, never by the host clock alone.
//!
//! Invariants used by gc (see format-spec): a writer commits only after a renewal that
//! proves (by store time) its lease is younger than `LEASE_TTL`; gc treats a lease as live
//! until `LEASE_TTL + SKEW` after its newest generation, so a committing writer is always
//! seen as live by any gc that could collect what it references.

use crate::repo::format::envelope::{self, MAGIC_LEASE};
use crate::repo::{create_own, RepoError};
use crate::store::{ObjectStore, PutOutcome, StoreErrorKind};
use crate::Result;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long a lease generation is valid after its creation (store clock).
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(30 * 60);
/// Allowance for clock differences between store nodes and for request latency.
pub(crate) const SKEW: Duration = Duration::from_secs(5 * 60);
/// Renew when the newest generation is older than this (host monotonic clock).
pub(crate) const RENEW_AFTER: Duration = Duration::from_secs(5 * 60);
/// The op of a generation by which a failing holder says it stopped for good
/// ([`Lease::abandon`]).
pub(crate) const ABANDONED: &str = "abandoned";
/// Generation number of the adoption claim in the adopted holder's lease chain: above any
/// real generation, so the holder itself can never create it.
pub(crate) const ADOPT_GENERATION: u64 = 9_999_999_999;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct LeaseBody {
    pub holder: String,
    pub op: String,
    pub volume: Option<String>,
    pub generation: u64,
}

#[derive(Debug)]
struct LeaseState {
    generation: u64,
    /// Store time of the newest generation.
    store_time: SystemTime,
    local: Instant,
    /// Why this holder may no longer write, once a renewal found it fenced (permanent).
    fenced: Option<String>,
    /// The holder wrote a checkpoint, so a re-run may adopt it: renewals also look for the
    /// adoption claim ([`ADOPT_GENERATION`]).
    adoptable: bool,
    /// The lease was released (or abandoned): the holder creates no generation any more.
    released: bool,
}

/// What a renewal found (see [`Lease::try_renew`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// The next generation is ours, created at this store time within `LEASE_TTL` of the
    /// previous one: the holder is live for gc until `LEASE_TTL + SKEW` after it.
    Renewed(SystemTime),
    /// The holder must stop writing: its chain broke (the new generation came more than
    /// `LEASE_TTL` after the previous one), the generation exists with someone else's
    /// body, or a re-run claimed (adopted) this holder.
    Fenced(String),
}

/// A held lease.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    store: Arc<dyn ObjectStore>,
    pub holder: String,
    op: String,
    volume: Option<String>,
    /// Store time of generation 0: when this writer started.
    pub started: SystemTime,
    state: Arc<Mutex<LeaseState>>,
}

pub(crate) fn lease_key(holder: &str, generation: u64) -> String {
    format!("leases/{holder}/{generation:010}")
}

/// Store time of an object we just wrote (falls back to host time where the store
/// reports none; documented as weaker).
async fn stamp(store: &dyn ObjectStore, key: &str) -> Result<SystemTime> {
    let meta = store.head(key).await?;
    Ok(meta.last_modified.unwrap_or_else(SystemTime::now))
}

impl Lease {
    /// Take a new lease for `holder` (a fresh time id, so generation 0 cannot exist).
    pub(crate) async fn acquire(
        store: Arc<dyn ObjectStore>,
        holder: &str,
        op: &str,
        volume: Option<&str>,
    ) -> Result<Lease> {
        let body = LeaseBody {
            holder: holder.into(),
            op: op.into(),
            volume: volume.map(String::from),
            generation: 0,
        };
        let key = lease_key(holder, 0);
        if create_own(
            store.as_ref(),
            &key,
            Bytes::from(envelope::seal(MAGIC_LEASE, &body)),
        )
        .await?
            != PutOutcome::Created
        {
            return Err(RepoError::InvalidArgument(format!("lease {key} already exists")).into());
        }
        let t = stamp(store.as_ref(), &key).await?;
        Ok(Lease {
            store,
            holder: holder.into(),
            op: op.into(),
            volume: volume.map(String::from),
            started: t,
            state: Arc::new(Mutex::new(LeaseState {
                generation: 0,
                store_time: t,
                local: Instant::now(),
                fenced: None,
                adoptable: false,
                released: false,
            })),
        })
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, LeaseState>> {
        Ok(self
            .state
            .lock()
            .map_err(|_| RepoError::Task("lease state poisoned".into()))?)
    }

    /// Create the next generation; returns its store time, or `LeaseFenced` when the
    /// holder must stop (see [`Renewal::Fenced`]).
    pub(crate) async fn renew(&self) -> Result<SystemTime> {
        match self.try_renew().await? {
            Renewal::Renewed(t) => Ok(t),
            Renewal::Fenced(reason) => Err(RepoError::LeaseFenced {
                holder: self.holder.clone(),
                reason,
            }
            .into()),
        }
    }

    /// Create the next generation and say what that proves. A request error leaves the
    /// state unchanged, so a retry creates the same generation again: finding it with our
    /// own (deterministic) body means the earlier attempt landed and only its answer was
    /// lost. Any other outcome that is not a clean renewal fences the holder for good.
    pub(crate) async fn try_renew(&self) -> Result<Renewal> {
        let (gen, prev, adoptable) = {
            let s = self.state()?;
            if let Some(reason) = &s.fenced {
                return Ok(Renewal::Fenced(reason.clone()));
            }
            (s.generation + 1, s.store_time, s.adoptable)
        };
        let body = LeaseBody {
            holder: self.holder.clone(),
            op: self.op.clone(),
            volume: self.volume.clone(),
            generation: gen,
        };
        let key = lease_key(&self.holder, gen);
        let sealed = Bytes::from(envelope::seal(MAGIC_LEASE, &body));
        let outcome = create_own(self.store.as_ref(), &key, sealed.clone()).await?;
        if outcome == PutOutcome::AlreadyExists && self.store.get(&key).await? != sealed {
            return self.fence(format!("{key} was created by someone else"));
        }
        let t = stamp(self.store.as_ref(), &key).await?;
        // The previous generation must still have been valid when this one was created,
        // otherwise gc may already have judged this holder dead.
        if t.duration_since(prev).unwrap_or_default() > LEASE_TTL {
            return self.fence(format!(
                "{key} was created more than {LEASE_TTL:?} after the previous generation"
            ));
        }
        if adoptable {
            let claim = lease_key(&self.holder, ADOPT_GENERATION);
            match self.store.head(&claim).await {
                Ok(_) => return self.fence(format!("a re-run adopted this holder ({claim})")),
                Err(e) if e.kind() == StoreErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut s = self.state()?;
        s.generation = gen;
        s.store_time = t;
        s.local = Instant::now();
        Ok(Renewal::Renewed(t))
    }

    /// Record that the holder is fenced: every later renewal and write check refuses.
    fn fence(&self, reason: String) -> Result<Renewal> {
        tracing::warn!("lease {} fenced: {reason}", self.holder);
        self.state()?.fenced = Some(reason.clone());
        Ok(Renewal::Fenced(reason))
    }

    /// Fence the holder from outside the lease (the writer found its intent removed by a
    /// gc that judged it dead).
    pub(crate) fn fence_now(&self, reason: String) {
        if let Ok(mut s) = self.state.lock() {
            s.fenced.get_or_insert(reason);
        }
    }

    /// Fails with `LeaseFenced` once a renewal found the holder fenced: writers call it
    /// before every object they create, so a fenced holder stops writing at once.
    pub(crate) fn ensure_usable(&self) -> Result<()> {
        match &self.state()?.fenced {
            Some(reason) => Err(RepoError::LeaseFenced {
                holder: self.holder.clone(),
                reason: reason.clone(),
            }
            .into()),
            None => Ok(()),
        }
    }

    /// The holder has written a checkpoint: from now on its renewals also check for an
    /// adoption claim (one HEAD), so an adopted holder stops writing at its next renewal
    /// instead of only right before its commit.
    pub(crate) fn watch_adoption(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.adoptable = true;
        }
    }

    /// Store time of the newest generation this holder created.
    pub(crate) fn store_time(&self) -> Result<SystemTime> {
        Ok(self.state()?.store_time)
    }

    /// The holder stops for good (it failed and is about to exit): create the next
    /// generation with the op [`ABANDONED`], so that a re-run may adopt its checkpoint at
    /// once instead of waiting until the holder looks dead (`checkpoint::ADOPT_AFTER`).
    /// Best effort, and nothing once fenced or released: a missing abandonment only delays
    /// adoption. The holder is fenced from here on (it writes nothing more).
    pub(crate) async fn abandon(&self) {
        let gen = match self.state() {
            Ok(mut s) if s.fenced.is_none() && !s.released => {
                s.fenced = Some("abandoned".into());
                s.released = true;
                s.generation + 1
            }
            _ => return,
        };
        let body = LeaseBody {
            holder: self.holder.clone(),
            op: ABANDONED.into(),
            volume: self.volume.clone(),
            generation: gen,
        };
        let key = lease_key(&self.holder, gen);
        let sealed = Bytes::from(envelope::seal(MAGIC_LEASE, &body));
        if let Err(e) = create_own(self.store.as_ref(), &key, sealed).await {
            tracing::warn!("abandoning lease {}: {e}", self.holder);
        }
    }

    /// Renew if the newest generation is getting old (called from long pipelines).
    pub(crate) async fn keep_alive(&self) -> Result<()> {
        self.ensure_usable()?;
        let due = self.state()?.local.elapsed() > RENEW_AFTER;
        if due {
            self.renew().await?;
        }
        Ok(())
    }

    /// Fence check right before a commit: renew and require the chain to be unbroken.
    /// Returns the renewal's store time (ms since the epoch), which the commit marker
    /// records so readers can ignore a marker written more than `LEASE_TTL` later.
    pub(crate) async fn check_before_commit(&self) -> Result<u64> {
        let t = self.renew().await?;
        Ok(unix_ms(t))
    }

    /// Remove every generation (best effort; gc removes leftovers of dead holders).
    pub(crate) async fn release(&self) {
        let gen = self
            .state
            .lock()
            .map(|mut s| {
                s.released = true;
                s.generation
            })
            .unwrap_or(0);
        let keys: Vec<String> = (0..=gen).map(|g| lease_key(&self.holder, g)).collect();
        if let Err(e) = self.store.delete_batch(&keys).await {
            tracing::warn!("releasing lease {}: {e}", self.holder);
        }
    }
}

/// Is a holder's lease chain unbroken up to store time `until` (an adoption claim)? The
/// listed generations (number, store time; the claim excluded) must be exactly
/// `0, 1, …, n`, each created at most `LEASE_TTL` after the previous one, and `until` at
/// most `LEASE_TTL` after generation `n` (format-spec §12.2 step 1). A gap in time means a
/// renewal came too late: the holder was fenced and a gc may have judged it dead since, and
/// the late generation is only a zombie's fenced renewal. A missing generation means a gc
/// deleted generations of a holder it judged dead (generation 0 is kept until release).
pub(crate) fn chain_unbroken(generations: &[(u64, SystemTime)], until: SystemTime) -> bool {
    let mut gens = generations.to_vec();
    gens.sort();
    let numbered = gens.iter().enumerate().all(|(i, g)| g.0 == i as u64);
    let times: Vec<SystemTime> = gens.iter().map(|g| g.1).chain([until]).collect();
    !gens.is_empty()
        && numbered
        && times
            .windows(2)
            .all(|w| w[1].duration_since(w[0]).unwrap_or_default() <= LEASE_TTL)
}

/// A lease seen by gc.
#[derive(Debug, Clone)]
pub(crate) struct LeaseView {
    pub holder: String,
    pub started: SystemTime,
    pub newest: SystemTime,
    pub keys: Vec<String>,
}

impl LeaseView {
    /// Live unless its newest generation is older than TTL + SKEW at store time `now`.
    pub(crate) fn live_at(&self, now: SystemTime) -> bool {
        now.duration_since(self.newest).unwrap_or_default() <= LEASE_TTL + SKEW
    }
}

/// List every lease holder (cost ∝ live writers + dead ones not yet cleaned).
pub(crate) async fn list_leases(store: &dyn ObjectStore) -> Result<Vec<LeaseView>> {
    let mut out: Vec<LeaseView> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list("leases/", after.as_deref(), 1000).await?;
        let n = page.len();
        for m in page {
            let mut parts = m.key.splitn(3, '/');
            let (_, holder) = (parts.next(), parts.next().unwrap_or_default().to_string());
            let t = m.last_modified.unwrap_or_else(SystemTime::now);
            match out.last_mut() {
                Some(v) if v.holder == holder => {
                    v.started = v.started.min(t);
                    v.newest = v.newest.max(t);
                    v.keys.push(m.key.clone());
                }
                _ => out.push(LeaseView {
                    holder,
                    started: t,
                    newest: t,
                    keys: vec![m.key.clone()],
                }),
            }
            after = Some(m.key);
        }
        if n < 1000 {
            return Ok(out);
        }
    }
}

/// Milliseconds since the epoch (0 for times before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Was a commit marker stored (`stored`, store time) more than `LEASE_TTL` after the
/// lease check it records? Then its writer may have been judged dead: the marker is void.
pub(crate) fn fenced(stored: Option<SystemTime>, lease_time_ms: u64) -> bool {
    match stored {
        Some(t) => unix_ms(t).saturating_sub(lease_time_ms) > LEASE_TTL.as_millis() as u64,
        None => false,
    }
}

//! The actors of a schedule (backup writers, deleters, a gc, a clock) and the log of what
//! each one was told, which is the oracle's model: a backup that reported success must
//! restore bit-exact, whatever else ran.

use crate::backup::{backup, BackupOptions, BlockSource, SourceRange};
use crate::repo::protocol::lease::{LEASE_TTL, SKEW};
use crate::repo::tests::testing::MemStore;
use crate::repo::{BaseIdentity, Repository};
use crate::store::faults::{FaultConfig, FaultOp, FaultStore};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Chunk size of every schedule's repository (the smallest allowed: cheap schedules).
pub(super) const CS: usize = 4096;
/// Chunk contents shared by every volume and version, so dedup across volumes, hosts and
/// snapshots (and therefore refcount races on shared blobs) is the common case.
const SHARED_PATTERNS: u64 = 8;

/// A backup that reported success.
#[derive(Clone, Debug)]
pub(super) struct Success {
    pub volume: String,
    pub id: String,
    pub parent: Option<String>,
    pub data: Arc<Vec<u8>>,
}

/// What the actors were told, shared by them.
#[derive(Default, Debug)]
pub(super) struct Log {
    pub successes: Vec<Success>,
    /// Every volume state a backup was attempted on: a snapshot whose outcome the writer
    /// never learnt (lost answer, crash after the commit) must restore to one of these.
    pub attempted: Vec<(String, Arc<Vec<u8>>)>,
    pub backups_failed: u64,
    /// Deletes that reported success, and those whose outcome is unknown.
    pub deleted: HashSet<(String, String)>,
    pub maybe_deleted: HashSet<(String, String)>,
    pub deletes_failed: u64,
    pub gcs_ok: u64,
    pub gcs_failed: u64,
    pub blobs_collected: u64,
    pub tables_revived: u64,
    /// The clock jumped past `LEASE_TTL + SKEW` while writers ran: a writer judged dead
    /// and cleaned by gc may still write (an intent, a pack, segments) before its renewal
    /// fails. gc must reclaim those too (format-spec §5, zombies); printed on failure.
    pub leases_expired: bool,
    /// A repair quarantined a damaged index segment: frames of its packs that neither a
    /// live root reached nor the counts knew stay unnamed (orphans for the sweep).
    pub index_quarantined: bool,
    /// Creates of commit markers paused past `LEASE_TTL + SKEW` (`copies.rs`).
    pub paused_creates: u64,
    /// What happened, in order: printed when a schedule fails.
    pub events: Vec<String>,
}

pub(super) type SharedLog = Arc<Mutex<Log>>;

/// Locks the log even after a panicking actor poisoned it (the panic is reported anyway).
pub(super) fn log(l: &SharedLog) -> std::sync::MutexGuard<'_, Log> {
    match l.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// One state of a host's volume. It tells the backup which chunks changed since the last
/// state of the same host that was committed successfully, so incremental backups (parent
/// tree edited in place) race with full ones and with the other host's backups.
pub(super) struct VersionSource {
    host: String,
    version: u64,
    data: Arc<Vec<u8>>,
    base: Option<(u64, Arc<Vec<u8>>)>,
}

impl VersionSource {
    /// A source that never reports changes (every backup of it reads everything).
    pub(super) fn fixed(data: Vec<u8>) -> Arc<VersionSource> {
        Arc::new(VersionSource {
            host: "fixed".into(),
            version: 0,
            data: Arc::new(data),
            base: None,
        })
    }
}

impl BlockSource for VersionSource {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let src = self
            .data
            .get(offset as usize..offset as usize + buf.len())
            .ok_or_else(|| std::io::Error::other("read past the end of the volume"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn changed_since(&self, base: &BaseIdentity) -> Option<Vec<SourceRange>> {
        let (version, old) = self.base.as_ref()?;
        if base.name != self.host || base.id != version.to_string() {
            return None;
        }
        Some(
            (0..self.data.len() / CS)
                .filter(|c| old[c * CS..(c + 1) * CS] != self.data[c * CS..(c + 1) * CS])
                .map(|c| SourceRange {
                    offset: (c * CS) as u64,
                    length: CS as u64,
                    zero: false,
                })
                .collect(),
        )
    }
    fn identity(&self) -> Option<BaseIdentity> {
        Some(BaseIdentity {
            name: self.host.clone(),
            id: self.version.to_string(),
            date: String::new(),
            vm_clock_ns: 0,
            l1_digest: String::new(),
        })
    }
}

/// Chunk content: a shared pattern (dedups everywhere), fresh random bytes, or zeros.
fn fill_chunk(rng: &mut StdRng, chunk: &mut [u8]) {
    match rng.random_range(0..20) {
        0..=9 => {
            let p = rng.random_range(0..SHARED_PATTERNS);
            let mut prng = StdRng::seed_from_u64(0x5eed_0000 + p);
            prng.fill_bytes(chunk);
        }
        10..=16 => rng.fill_bytes(chunk),
        _ => chunk.fill(0),
    }
}

/// The faults one actor's "host" sees: always seeded yields (the interleaving), and
/// sometimes request failures, lost acknowledgements or a crash after a random number of
/// requests (every later request of that host fails; writes not yet acknowledged at
/// that moment are lost).
pub(super) fn host_store(mem: &Arc<MemStore>, rng: &mut StdRng) -> Arc<FaultStore> {
    let mut cfg = FaultConfig {
        seed: rng.random(),
        yields: 4,
        ..FaultConfig::default()
    };
    match rng.random_range(0..12) {
        0 => cfg.error_probability = 0.02,
        1 => {
            cfg.ack_loss_probability = 0.08;
            cfg.ops = FaultOp::ALL.into_iter().filter(|o| o.is_write()).collect();
        }
        2 | 3 => cfg.crash_after = Some(rng.random_range(3..150)),
        _ => {}
    }
    Arc::new(FaultStore::new(mem.clone(), cfg))
}

async fn yields(rng: &mut StdRng, max: u32) {
    for _ in 0..rng.random_range(0..=max) {
        tokio::task::yield_now().await;
    }
}

/// A host backing up `volume` `rounds` times, changing a few chunks before each round.
pub(super) async fn writer(
    log_: SharedLog,
    store: Arc<FaultStore>,
    host: String,
    volume: String,
    mut data: Vec<u8>,
    rounds: u32,
    mut rng: StdRng,
) {
    let Ok(repo) = Repository::open(store).await else {
        return;
    };
    let mut base: Option<(u64, Arc<Vec<u8>>)> = None;
    for version in 1..=u64::from(rounds) {
        yields(&mut rng, 8).await;
        // Sometimes nothing changes: the backup keeps its parent's table, which a
        // concurrent delete of the parent may free (the revival case of gc).
        for _ in 0..rng.random_range(0..=4) {
            let c = rng.random_range(0..data.len() / CS);
            fill_chunk(&mut rng, &mut data[c * CS..(c + 1) * CS]);
        }
        let state = Arc::new(data.clone());
        log(&log_).attempted.push((volume.clone(), state.clone()));
        let source = Arc::new(VersionSource {
            host: host.clone(),
            version,
            data: state.clone(),
            base: base.clone(),
        });
        let opts = BackupOptions {
            volume: volume.clone(),
            ..BackupOptions::default()
        };
        log(&log_)
            .events
            .push(format!("{host}: backup {volume} v{version} starts"));
        match backup(&repo, source, &opts).await {
            Ok(r) => {
                log(&log_).events.push(format!(
                    "{host}: backup {volume} v{version} = {} (parent {:?}, new {}, reused {})",
                    r.id, r.parent, r.chunks_new, r.chunks_reused
                ));
                log(&log_).successes.push(Success {
                    volume: volume.clone(),
                    id: r.id,
                    parent: r.parent,
                    data: state.clone(),
                });
                base = Some((version, state));
            }
            Err(e) => {
                let mut l = log(&log_);
                l.backups_failed += 1;
                l.events
                    .push(format!("{host}: backup {volume} v{version} failed: {e}"));
            }
        }
    }
}

/// Initial content of a volume of `chunks` chunks.
pub(super) fn initial(rng: &mut StdRng, chunks: usize) -> Vec<u8> {
    let mut data = vec![0u8; chunks * CS];
    for c in data.chunks_exact_mut(CS) {
        fill_chunk(rng, c);
    }
    data
}

/// Deletes `n` snapshots picked from the listing it sees at that moment.
pub(super) async fn deleter(
    log_: SharedLog,
    store: Arc<FaultStore>,
    name: &'static str,
    n: u32,
    mut rng: StdRng,
) {
    let Ok(repo) = Repository::open(store).await else {
        return;
    };
    for _ in 0..n {
        yields(&mut rng, 24).await;
        let Ok(snaps) = repo.snapshots(None).await else {
            continue;
        };
        if snaps.is_empty() {
            continue;
        }
        let s = &snaps[rng.random_range(0..snaps.len())];
        let key = (s.volume.clone(), s.id.clone());
        // Unknown until it returns: the task may be cancelled at any await point.
        log(&log_).maybe_deleted.insert(key.clone());
        log(&log_)
            .events
            .push(format!("{name}: delete {}/{} starts", s.volume, s.id));
        match repo.delete_snapshot(&s.volume, &s.id).await {
            Ok(r) => {
                let mut l = log(&log_);
                l.events.push(format!(
                    "{name}: deleted {}/{}, freed {}",
                    s.volume, s.id, r.freed_blobs
                ));
                l.deleted.insert(key);
            }
            Err(e) => {
                let mut l = log(&log_);
                l.deletes_failed += 1;
                l.events.push(format!("{name}: delete failed: {e}"));
            }
        }
    }
}

/// Runs gc `n` times.
pub(super) async fn collector(log_: SharedLog, store: Arc<FaultStore>, n: u32, mut rng: StdRng) {
    let Ok(repo) = Repository::open(store).await else {
        return;
    };
    for _ in 0..n {
        yields(&mut rng, 32).await;
        log(&log_).events.push("gc: starts".into());
        match repo.gc().await {
            Ok(r) => {
                let mut l = log(&log_);
                l.events.push(format!("gc: {r:?}"));
                l.gcs_ok += 1;
                l.blobs_collected += r.blobs_collected;
                l.tables_revived += r.tables_revived;
            }
            Err(e) => {
                let mut l = log(&log_);
                l.gcs_failed += 1;
                l.events.push(format!("gc: failed: {e}"));
            }
        }
    }
}

/// Moves the store clock: past `SKEW` (deletes become processable by gc) or, rarely, past
/// `LEASE_TTL + SKEW` (every running writer is judged dead; its renewals fail and gc
/// reclaims what it left).
pub(super) async fn clock(
    log_: SharedLog,
    mem: Arc<MemStore>,
    n: u32,
    expire: bool,
    mut rng: StdRng,
) {
    for _ in 0..n {
        yields(&mut rng, 64).await;
        if expire && rng.random_range(0..4) == 0 {
            log(&log_).leases_expired = true;
            log(&log_).events.push("clock: + TTL + SKEW + 1 min".into());
            mem.advance(LEASE_TTL + SKEW + Duration::from_secs(60));
        } else {
            log(&log_).events.push("clock: + 2 SKEW".into());
            mem.advance(SKEW * 2);
        }
    }
}

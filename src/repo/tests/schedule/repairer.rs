//! The repairer of a schedule (issue 13): `check --repair` alongside the writers, the
//! deleters and gc, some runs with one object damaged for the duration of the repair (a
//! flipped bit in an index segment or a pack, written to the healthy
//! store underneath every host), put back afterwards unless it is gone (gc removed it,
//! or repair moved it under `quarantine/`).
//!
//! The oracle is the runner's (every successful backup restores bit-exact at the end,
//! `check --read-data` is clean, a final repair finds nothing): a repair that lowered a
//! count or moved anything a root reaches while an object was damaged breaks it, so
//! "repair never reduces what can be restored".

use super::actors::{log, SharedLog};
use crate::repo::tests::testing::MemStore;
use crate::repo::Repository;
use crate::store::faults::FaultStore;
use crate::store::ObjectStore;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::Rng;
use std::sync::{Arc, Mutex};

/// Prefixes whose objects get damaged. Markers are left out: one put back after the
/// clock actor moved past `LEASE_TTL` is void by its store time (format-spec §6), so the
/// put-back would not restore it. Refs segments too: repair raises counts without a
/// damaged one and then quarantines it, so a delete's decrements it held become a leak
/// (by design, format-spec §11) the final "check is clean" would report.
/// `repair::damage_tests` and `tests/it/repo_damage.rs` cover those.
const DAMAGED: [&str; 2] = ["index/", "packs/"];

/// The object damaged now, with its good bytes: put back by the repairer, or by
/// [`put_back`] after the schedule when the repairer was cancelled in between.
pub(super) type Damaged = Arc<Mutex<Option<(String, Bytes)>>>;

/// Put the damaged object back unless it is gone (removed by gc, quarantined by repair).
/// Single-threaded runtime and a store that does not yield: no actor runs between the
/// look and the put.
pub(super) async fn put_back(mem: &MemStore, damaged: &Damaged, log_: &SharedLog) {
    let taken = damaged.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((key, good)) = taken {
        if !mem.keys(&key).is_empty() {
            let _ = mem.put(&key, good).await;
            log(log_).events.push(format!("repair: {key} put back"));
        }
    }
}

pub(super) async fn repairer(
    log_: SharedLog,
    mem: Arc<MemStore>,
    store: Arc<FaultStore>,
    damaged: Damaged,
    n: u32,
    mut rng: StdRng,
) {
    let Ok(repo) = Repository::open(store).await else {
        return;
    };
    for _ in 0..n {
        for _ in 0..rng.random_range(0..=48) {
            tokio::task::yield_now().await;
        }
        let now = match rng.random_range(0..2) {
            0 => damage(&mem, &mut rng).await,
            _ => None,
        };
        let what = now.as_ref().map_or("nothing".into(), |(k, _)| k.clone());
        *damaged.lock().unwrap_or_else(|p| p.into_inner()) = now;
        log(&log_)
            .events
            .push(format!("repair: starts, {what} damaged"));
        let r = repo.repair().await;
        if let Ok(r) = &r {
            if r.quarantined.iter().any(|k| k.starts_with("index/")) {
                log(&log_).index_quarantined = true;
            }
        }
        log(&log_).events.push(match r {
            Ok(r) => format!(
                "repair: rebuilt {} records, fixed {}, released {}, complete {}, quarantined {:?}",
                r.index_records_rebuilt,
                r.refcounts_fixed,
                r.blobs_released,
                r.complete,
                r.quarantined
            ),
            Err(e) => format!("repair: failed: {e}"),
        });
        for _ in 0..rng.random_range(0..=8) {
            tokio::task::yield_now().await;
        }
        put_back(&mem, &damaged, &log_).await;
    }
}

/// Flip one bit of a random object under [`DAMAGED`]; returns its key and good bytes.
async fn damage(mem: &MemStore, rng: &mut StdRng) -> Option<(String, Bytes)> {
    let keys = mem.keys(DAMAGED[rng.random_range(0..DAMAGED.len())]);
    if keys.is_empty() {
        return None;
    }
    let key = keys[rng.random_range(0..keys.len())].clone();
    let good = mem.get(&key).await.ok()?;
    if good.is_empty() {
        return None;
    }
    let mut bad = good.to_vec();
    let at = rng.random_range(0..bad.len());
    bad[at] ^= 1 << rng.random_range(0..8);
    mem.put(&key, Bytes::from(bad)).await.ok()?;
    Some((key, good))
}

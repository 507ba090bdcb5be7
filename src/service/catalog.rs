//! The volume catalog, kept in the repository's own object store under `service/` so every
//! `island serve` sharing the repository sees the same volumes (see
//! `format-spec/service.md`).
//!
//! Nothing is overwritten: each change of a volume is a new numbered generation
//! `service/volumes/<uuid>/<gen:020>` holding the whole record, created with
//! create-if-absent. Two servers changing one volume at once both try generation n+1;
//! exactly one wins, the other re-reads and re-applies its change to the new state (or
//! refuses, e.g. when the winner took the last attachment slot). That makes every
//! read-modify-write of a volume — the read-write claim, the user limit — atomic across
//! hosts without a lock server.

use super::error::ServiceError;
use super::model::Volume;
use crate::repo::format::envelope;
use crate::store::{ObjectMeta, ObjectStore, PutOutcome, StoreError};
use bytes::Bytes;
use std::sync::Arc;

/// Envelope magic of a volume record generation.
pub(crate) const MAGIC_VOLUME: &[u8; 4] = b"ISVO";
/// Root of the service's objects in the repository store (the tests list everything
/// under it).
#[cfg(test)]
pub(crate) const PREFIX: &str = "service/";
/// Where volume generations live.
const VOLUMES: &str = "service/volumes/";
/// Listing page size.
const PAGE: usize = 1000;
/// Attempts at committing one change before giving up under contention.
const MAX_ATTEMPTS: usize = 16;

/// Key of generation `gen` of volume `uuid`.
pub(crate) fn generation_key(uuid: &str, gen: u64) -> String {
    format!("{VOLUMES}{uuid}/{gen:020}")
}

/// The one conditional create of the service: every catalog mutation goes through the
/// repository's create-if-absent policy (exactly one winner, also on Swift, where it waits
/// a settle time and reads back; `format-spec/object-stores.md`). Concurrent changes that
/// differ give different bytes (attachments carry server and time); two writers of the very
/// same record describe the same state, so both being told `Created` is harmless.
pub(crate) async fn create_exclusive(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    data: Bytes,
) -> Result<PutOutcome, StoreError> {
    crate::repo::create_exclusive(store.as_ref(), key, data).await
}

/// Every object under `prefix`, following pagination.
async fn list_all(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
) -> Result<Vec<ObjectMeta>, StoreError> {
    let mut out: Vec<ObjectMeta> = Vec::new();
    loop {
        let after = out.last().map(|m| m.key.clone());
        let page = store.list(prefix, after.as_deref(), PAGE).await?;
        let n = page.len();
        out.extend(page);
        if n < PAGE {
            return Ok(out);
        }
    }
}

/// Parse the generation number and uuid out of a volume generation key.
fn parse_key(key: &str) -> Option<(&str, u64)> {
    let rest = key.strip_prefix(VOLUMES)?;
    let (uuid, gen) = rest.split_once('/')?;
    if gen.len() != 20 || !gen.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((uuid, gen.parse().ok()?))
}

/// Read and check one generation object.
async fn read_generation(store: &Arc<dyn ObjectStore>, key: &str) -> Result<Volume, ServiceError> {
    let bytes = store.get(key).await?;
    decode_generation(key, &bytes)
}

/// Check and parse a generation object read from `key`: its body must name that key.
pub(crate) fn decode_generation(key: &str, bytes: &[u8]) -> Result<Volume, ServiceError> {
    let v: Volume = envelope::open(MAGIC_VOLUME, key, bytes)?;
    match parse_key(key) {
        Some((uuid, gen)) if uuid == v.uuid && gen == v.generation => Ok(v),
        _ => Err(crate::repo::RepoError::Corrupt {
            key: key.to_string(),
            reason: format!(
                "record names volume {} generation {}, not its key",
                v.uuid, v.generation
            ),
        }
        .into()),
    }
}

/// The newest generation of volume `uuid` (deleted volumes included), if it ever existed.
pub(crate) async fn latest(
    store: &Arc<dyn ObjectStore>,
    uuid: &str,
) -> Result<Option<Volume>, ServiceError> {
    // A compaction may delete a generation between the listing and the read, but only once
    // a newer one exists: list again as long as each listing shows a newer newest key (so
    // every retry follows a real update and the loop ends when updates stop).
    let mut vanished: Option<String> = None;
    let mut empty_listings = 0;
    loop {
        let keys = list_all(store, &format!("{VOLUMES}{uuid}/")).await?;
        let Some(m) = keys.iter().rev().find(|m| parse_key(&m.key).is_some()) else {
            // A listing is not a snapshot: one racing a compaction can miss the generation
            // being created and the older one being deleted. List again before answering
            // that the volume does not exist.
            empty_listings += 1;
            if empty_listings < 3 {
                continue;
            }
            return Ok(None);
        };
        if vanished.as_deref().is_some_and(|v| v >= m.key.as_str()) {
            return Err(ServiceError::Conflict(format!(
                "volume {uuid}: its newest generation {} vanished; try again",
                m.key
            )));
        }
        match read_generation(store, &m.key).await {
            Err(ServiceError::Engine(crate::Error::Store(e)))
                if e.kind() == crate::store::StoreErrorKind::NotFound =>
            {
                vanished = Some(m.key.clone());
            }
            r => return r.map(Some),
        }
    }
}

/// The newest generation of every volume ever created, in uuid order.
pub(crate) async fn all(store: &Arc<dyn ObjectStore>) -> Result<Vec<Volume>, ServiceError> {
    let keys = list_all(store, VOLUMES).await?;
    let mut newest: Vec<&str> = Vec::new();
    let mut last_uuid: Option<&str> = None;
    for m in &keys {
        let Some((uuid, _)) = parse_key(&m.key) else {
            continue;
        };
        // Keys sort by uuid, then by zero-padded generation: the last of a run is newest.
        if last_uuid == Some(uuid) {
            newest.pop();
        }
        newest.push(&m.key);
        last_uuid = Some(uuid);
    }
    let mut out = Vec::with_capacity(newest.len());
    for key in newest {
        out.push(read_generation(store, key).await?);
    }
    Ok(out)
}

/// Write `v` as its generation; `false` when another writer created it first.
pub(crate) async fn commit(store: &Arc<dyn ObjectStore>, v: &Volume) -> Result<bool, ServiceError> {
    let key = generation_key(&v.uuid, v.generation);
    let data = Bytes::from(envelope::seal(MAGIC_VOLUME, v));
    Ok(create_exclusive(store, &key, data).await? == PutOutcome::Created)
}

/// Apply `change` to the newest live generation of `uuid` and commit it as the next
/// generation, re-reading and re-applying when another server commits first. `change`
/// sees the current record and may refuse; it must be repeatable.
pub(crate) async fn update<F>(
    store: &Arc<dyn ObjectStore>,
    uuid: &str,
    mut change: F,
) -> Result<Volume, ServiceError>
where
    F: FnMut(&mut Volume) -> Result<(), ServiceError>,
{
    for _ in 0..MAX_ATTEMPTS {
        let mut v = match latest(store, uuid).await? {
            Some(v) if !v.deleted => v,
            _ => return Err(ServiceError::NotFound(format!("volume {uuid}"))),
        };
        change(&mut v)?;
        v.generation += 1;
        if commit(store, &v).await? {
            return Ok(v);
        }
        tracing::debug!(
            "volume {uuid}: lost the race for generation {}",
            v.generation
        );
    }
    Err(ServiceError::Conflict(format!(
        "volume {uuid}: {MAX_ATTEMPTS} concurrent changes in a row won the race; try again"
    )))
}

/// What a catalog compaction removed (or, dry, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct CompactReport {
    /// Superseded generations deleted (or deletable).
    pub generations: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Volumes that had some.
    pub volumes: u64,
}

/// Delete superseded volume generations whose successor is older than `grace` (by the
/// store's Last-Modified against this host's clock), never a volume's newest one. With
/// `dry_run` only count them.
///
/// Safe against concurrent readers and writers as long as `grace` exceeds the longest
/// list-then-read (readers) or list-then-create (claim protocol) of any server plus the
/// clock skew between hosts and store: a reader only ever reads the newest generation it
/// listed, and a generation is deleted only once a newer one has existed for `grace`, so
/// nobody still acting on the older one can be left. Deleted volumes keep their last
/// generation, so a uuid is never reused.
pub(crate) async fn compact(
    store: &Arc<dyn ObjectStore>,
    grace: std::time::Duration,
    dry_run: bool,
) -> Result<CompactReport, ServiceError> {
    let keys = list_all(store, VOLUMES).await?;
    let cutoff = std::time::SystemTime::now()
        .checked_sub(grace)
        .unwrap_or(std::time::UNIX_EPOCH);
    let mut report = CompactReport::default();
    let mut last_volume: Option<&str> = None;
    for pair in keys.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        let (Some((u_old, _)), Some((u_new, _))) = (parse_key(&old.key), parse_key(&new.key))
        else {
            continue;
        };
        let old_enough = new.last_modified.is_some_and(|t| t <= cutoff);
        if u_old != u_new || !old_enough {
            continue;
        }
        if !dry_run {
            match store.delete(&old.key).await {
                Ok(()) => {}
                Err(e) if e.kind() == crate::store::StoreErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        report.generations += 1;
        report.bytes += old.size;
        if last_volume != Some(u_old) {
            report.volumes += 1;
            last_volume = Some(u_old);
        }
    }
    Ok(report)
}

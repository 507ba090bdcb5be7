//! Operation records in the repository's store, so every server sharing the repository
//! answers `GET /api/operations/{id}` for operations any of them runs (see
//! `format-spec/service.md`, "Operations").
//!
//! One object per operation, `service/operations/<id>`, in the checked envelope with
//! magic `ISOP`, overwritten in place by its owner only: the id is a fresh random UUID
//! the owner chose, the record names the owner (`server`), and no other server ever
//! writes it (others read it, and prune it once it is old). Within the owner, every write
//! of one record goes through one async lock and writes the record's state as of that
//! moment, so the object only moves forward. Writes are throttled: stage changes and the
//! end at once, progress at most every [`OpTiming::progress`], and a heartbeat every
//! [`OpTiming::heartbeat`] while running, which is how readers tell a live owner from a
//! gone one ([`OpTiming::expiry`]).

use super::error::ServiceError;
use super::ops::{OpState, Operation};
use crate::repo::format::envelope;
use crate::store::{ObjectStore, StoreErrorKind};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Envelope magic of a shared operation record.
pub(crate) const MAGIC_OPERATION: &[u8; 4] = b"ISOP";
/// Where operation records live.
pub(crate) const OPERATIONS: &str = "service/operations/";
/// Listing page size.
const PAGE: usize = 1000;

/// How often the owner writes an operation's shared record and how readers and the
/// pruner judge its age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpTiming {
    /// Least time between two writes that only carry progress (stage changes and the
    /// end are written at once): the store is remote, a byte counter is not worth a PUT
    /// per chunk.
    pub progress: Duration,
    /// Most time between two writes of a queued or running record: the owner's heartbeat.
    pub heartbeat: Duration,
    /// A queued or running record whose heartbeat is older than this is shown `failed`
    /// ("owner server X gone since …"); must exceed `heartbeat` plus the clock skew
    /// between servers.
    pub expiry: Duration,
    /// Done and failed records older than this (and queued or running ones whose owner
    /// has been gone this long) are deleted by the pruner of any server.
    pub retention: Duration,
}

impl Default for OpTiming {
    /// Progress every 5 s, heartbeat every 30 s, expiry after 5 min, retention 7 days.
    fn default() -> OpTiming {
        OpTiming {
            progress: Duration::from_secs(5),
            heartbeat: Duration::from_secs(30),
            expiry: Duration::from_secs(300),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl OpTiming {
    /// Refuse timings under which a live owner could look gone, or a record be pruned
    /// before it could be shown as gone.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let mut problems = Vec::new();
        if self.heartbeat.is_zero() || self.progress.is_zero() {
            problems.push("operation heartbeat and progress intervals must be positive".into());
        }
        if self.expiry < self.heartbeat.saturating_mul(2) {
            problems.push(format!(
                "operation expiry {} s must be at least twice the heartbeat {} s",
                self.expiry.as_secs_f64(),
                self.heartbeat.as_secs_f64()
            ));
        }
        if self.retention < self.expiry {
            problems.push(format!(
                "operation retention {} s must be at least the expiry {} s",
                self.retention.as_secs_f64(),
                self.expiry.as_secs_f64()
            ));
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(ServiceError::Invalid(problems)),
        }
    }

    /// How often a server runs the pruner: a quarter of the retention, 1 s to 1 h.
    pub fn prune_every(&self) -> Duration {
        (self.retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }
}

/// Key of operation `id`'s shared record.
pub(crate) fn operation_key(id: &str) -> String {
    format!("{OPERATIONS}{id}")
}

/// Write (create or overwrite) `op`'s shared record. Only its owner calls this.
pub(crate) async fn put(store: &Arc<dyn ObjectStore>, op: &Operation) -> Result<(), ServiceError> {
    let data = Bytes::from(envelope::seal(MAGIC_OPERATION, op));
    Ok(store.put(&operation_key(&op.id), data).await?)
}

/// Read operation `id`'s shared record, `None` if there is none (never written, or
/// pruned). A record whose id is not its key's is corrupt.
pub(crate) async fn read(
    store: &Arc<dyn ObjectStore>,
    id: &str,
) -> Result<Option<Operation>, ServiceError> {
    let key = operation_key(id);
    let bytes = match store.get(&key).await {
        Ok(b) => b,
        Err(e) if e.kind() == StoreErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    decode(id, &bytes).map(Some)
}

/// Check and parse operation `id`'s record: its body must name that id.
pub(crate) fn decode(id: &str, bytes: &[u8]) -> Result<Operation, ServiceError> {
    let key = operation_key(id);
    let op: Operation = envelope::open(MAGIC_OPERATION, &key, bytes)?;
    if op.id != id {
        return Err(crate::repo::RepoError::Corrupt {
            key,
            reason: format!("record names operation {}, not its key", op.id),
        }
        .into());
    }
    Ok(op)
}

/// Ids of every shared record, in key order.
pub(crate) async fn list_ids(store: &Arc<dyn ObjectStore>) -> Result<Vec<String>, ServiceError> {
    let mut ids: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(OPERATIONS, after.as_deref(), PAGE).await?;
        let n = page.len();
        after = page.last().map(|m| m.key.clone());
        ids.extend(page.into_iter().filter_map(|m| {
            let id = m.key.strip_prefix(OPERATIONS)?;
            super::model::valid_uuid(id).then(|| id.to_string())
        }));
        if n < PAGE {
            return Ok(ids);
        }
    }
}

/// Delete operation `id`'s shared record (gone already counts as deleted).
pub(crate) async fn delete(store: &Arc<dyn ObjectStore>, id: &str) -> Result<(), ServiceError> {
    match store.delete(&operation_key(id)).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// When the owner last wrote the record: its heartbeat, else its last update.
fn last_sign_of_life(op: &Operation) -> Option<OffsetDateTime> {
    let at = op.heartbeat.as_deref().unwrap_or(&op.updated);
    OffsetDateTime::parse(at, &Rfc3339).ok()
}

/// Age of `op`'s last sign of life at `now` (zero if in the future, by clock skew; an
/// unreadable time counts as infinitely old).
fn age(op: &Operation, now: OffsetDateTime) -> Duration {
    match last_sign_of_life(op) {
        Some(t) => Duration::try_from(now - t).unwrap_or(Duration::ZERO),
        None => Duration::MAX,
    }
}

/// How a reader shows a record it does not run itself: a queued or running record
/// whose owner has not written it for longer than `timing.expiry` is `failed`, naming
/// the owner and since when. The stored record is not changed: if the owner comes back
/// with its data dir, it resumes the operation and the record moves on.
pub(crate) fn view(mut op: Operation, timing: &OpTiming, now: OffsetDateTime) -> Operation {
    if !matches!(op.state, OpState::Queued | OpState::Running) {
        return op;
    }
    let silent = age(&op, now);
    if silent > timing.expiry {
        let since = op.heartbeat.clone().unwrap_or_else(|| op.updated.clone());
        op.error = Some(format!(
            "owner server {} gone since {since} (no heartbeat for {} s, expiry {} s); \
             it resumes the operation if it restarts with its data dir",
            op.server,
            silent.as_secs(),
            timing.expiry.as_secs()
        ));
        op.state = OpState::Failed;
    }
    op
}

/// Whether the pruner deletes `op` at `now`: done or failed and older than the
/// retention, or queued or running with an owner silent for longer than the retention.
pub(crate) fn prunable(op: &Operation, timing: &OpTiming, now: OffsetDateTime) -> bool {
    age(op, now) > timing.retention
}

/// What one pruning pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    /// Records looked at.
    pub records: u64,
    /// Records deleted.
    pub deleted: u64,
    /// Of those, records that were still queued or running (owner gone).
    pub abandoned: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: OpState, heartbeat: &str) -> Operation {
        Operation {
            id: "6f1c0e8e-2b7a-4a53-9d55-6c1f3f0f6d2a".into(),
            kind: "detach".into(),
            user: "alice".into(),
            volume: None,
            node: None,
            vm_id: None,
            device: None,
            args: None,
            state,
            stage: "upload".into(),
            stage_index: 1,
            stage_count: 3,
            percent: 40,
            done: 4,
            total: 10,
            error: None,
            result: None,
            created: heartbeat.into(),
            updated: heartbeat.into(),
            server: "host-a".into(),
            heartbeat: Some(heartbeat.into()),
        }
    }

    #[tokio::test]
    async fn stored_as_a_checked_envelope_and_checked_on_read() {
        let store: Arc<dyn ObjectStore> =
            Arc::new(crate::store::MemoryStore::new_unique().unwrap());
        let op = record(OpState::Running, "2026-01-01T11:59:30.000000000Z");
        put(&store, &op).await.unwrap();
        let key = format!("service/operations/{}", op.id);
        let bytes = store.get(&key).await.unwrap().to_vec();
        let json = serde_json::to_vec(&op).unwrap();
        assert_eq!(&bytes[..4], b"ISOP");
        assert_eq!(&bytes[4..8], &[1, 0, 0, 0], "version 1, reserved 0");
        assert_eq!(bytes[8..12], (json.len() as u32).to_le_bytes());
        assert_eq!(&bytes[12..12 + json.len()], &json[..]);
        let crc = crc32c::crc32c(&bytes[..12 + json.len()]);
        assert_eq!(bytes[12 + json.len()..], crc.to_le_bytes());
        assert_eq!(bytes.len(), json.len() + 16);
        assert_eq!(read(&store, &op.id).await.unwrap(), Some(op.clone()));
        assert_eq!(list_ids(&store).await.unwrap(), vec![op.id.clone()]);

        // A flipped byte, or a record under another operation's key, is corrupt.
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        store.put(&key, Bytes::from(bad)).await.unwrap();
        let e = read(&store, &op.id).await.unwrap_err().to_string();
        assert!(e.contains(&key), "{e}");
        let other = "0b9f4c1e-1d2a-4f3b-8c5d-6e7f8091a2b3";
        store
            .put(&operation_key(other), Bytes::from(bytes))
            .await
            .unwrap();
        let e = read(&store, other).await.unwrap_err().to_string();
        assert!(e.contains("not its key"), "{e}");
        delete(&store, other).await.unwrap();
        delete(&store, other).await.unwrap();
        assert_eq!(read(&store, other).await.unwrap(), None);
    }

    #[test]
    fn a_silent_owner_is_shown_gone_and_pruned_after_the_retention() {
        let timing = OpTiming {
            progress: Duration::from_secs(1),
            heartbeat: Duration::from_secs(10),
            expiry: Duration::from_secs(60),
            retention: Duration::from_secs(3600),
        };
        let now = OffsetDateTime::parse("2026-01-01T12:00:00Z", &Rfc3339).unwrap();
        let fresh = record(OpState::Running, "2026-01-01T11:59:30.000000000Z");
        assert_eq!(view(fresh.clone(), &timing, now), fresh);
        let silent = view(
            record(OpState::Running, "2026-01-01T11:58:00.000000000Z"),
            &timing,
            now,
        );
        assert_eq!(silent.state, OpState::Failed);
        let e = silent.error.unwrap();
        assert!(
            e.contains("owner server host-a gone since 2026-01-01T11:58:00"),
            "{e}"
        );
        assert!(e.contains("no heartbeat for 120 s"), "{e}");
        let old_done = record(OpState::Done, "2026-01-01T10:00:00.000000000Z");
        assert_eq!(
            view(old_done.clone(), &timing, now),
            old_done,
            "final states stay"
        );
        assert!(prunable(&old_done, &timing, now));
        let recent = record(OpState::Done, "2026-01-01T11:00:01.000000000Z");
        assert!(!prunable(&recent, &timing, now));
        assert!(prunable(
            &record(OpState::Failed, "2026-01-01T10:59:00.000000000Z"),
            &timing,
            now
        ));
        let mut garbled = record(OpState::Running, "yesterday");
        garbled.updated = "never".into();
        assert_eq!(view(garbled.clone(), &timing, now).state, OpState::Failed);
        assert!(prunable(&garbled, &timing, now));
        assert!(OpTiming::default().validate().is_ok());
        let bad = OpTiming {
            expiry: Duration::from_secs(15),
            retention: Duration::from_secs(5),
            ..timing
        };
        let Err(ServiceError::Invalid(problems)) = bad.validate() else {
            panic!("accepted {bad:?}");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}

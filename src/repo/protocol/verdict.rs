//! Recorded verdicts on commit markers (format-spec §6 "Verdicts"; issue 20, finding 3).
//!
//! Whether a commit marker is void is decided by its store time (`lease::fenced`). That
//! time is only trustworthy where it was first stamped: `cp -r`, `aws s3 sync`, replication
//! and restores from the provider's backups re-stamp every object, and a re-stamped marker
//! of a valid snapshot looks void — gc and repair then destroy what it references. So the
//! judgment "valid" is made once, where the time is trustworthy, and recorded as the object
//! `verdicts/<marker key>/<holder>`: by the committing writer right after its HEAD check,
//! and by every gc, repair and delete for each valid marker that has no verdict yet, before
//! it acts on its view. A marker with a verdict is valid whatever its time says.
//!
//! "Void" needs no record: a void marker stays void under any copy, since copies only
//! move times later (store requirement: a Last-Modified never moves earlier). What a copy
//! can still flip is an unrecorded valid marker (one whose writer crashed between its
//! marker and its verdict, or written by an older build): a destructive operation that
//! finds an unrecorded void marker whose writer renewed its lease before the repository's
//! `config` was (re)stamped refuses with [`RepoError::CopiedRepository`] — `config` is the
//! first object of every repository, so a genuine marker's lease time is never older than
//! it — until `check --adopt-copy` records verdicts for every unrecorded marker. A writer
//! whose own HEAD check finds its marker fenced records `…/<holder>.void`, so adoption
//! leaves that marker void (found by the schedule runner: a root published after gc
//! cleaned its paused writer was adopted and broke the copy's listing).

use super::lease::{fenced, unix_ms, SKEW};
use crate::repo::format::envelope::{self, MAGIC_VERDICT};
use crate::repo::repository::Markers;
use crate::repo::{RepoError, Repository};
use crate::store::{ObjectStore, StoreErrorKind};
use crate::Result;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// Key prefix of verdicts.
pub(crate) const VERDICTS: &str = "verdicts/";

/// Body of a verdict (informational: readers go by the key alone).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The marker's key.
    pub marker: String,
    /// The marker's holder (its writer).
    pub holder: String,
    /// The lease time the marker records.
    pub lease_time_ms: u64,
    /// The marker's store time when it was judged.
    pub marker_time_ms: u64,
    /// Who judged: the marker's own holder, a gc/repair/delete holder, or "adopt-copy".
    pub judged_by: String,
}

/// `verdicts/<marker key>/<holder>`: the holder binds the verdict to one marker even where
/// a marker key could be written again by someone else.
pub(crate) fn verdict_key(marker_key: &str, holder: &str) -> String {
    format!("{VERDICTS}{marker_key}/{holder}")
}

/// Suffix of the verdict "void" a writer records when its own HEAD check finds its marker
/// fenced: `check --adopt-copy` then leaves that marker void.
const VOID_SUFFIX: &str = ".void";

/// `verdicts/<marker key>/<holder>.void`.
pub(crate) fn void_verdict_key(marker_key: &str, holder: &str) -> String {
    format!("{}{VOID_SUFFIX}", verdict_key(marker_key, holder))
}

/// (marker key, holder, void) of a verdict key; `None` for any other key (ignored).
pub(crate) fn parse_verdict_key(key: &str) -> Option<(String, String, bool)> {
    let rest = key.strip_prefix(VERDICTS)?;
    let (marker, holder) = rest.rsplit_once('/')?;
    let (holder, void) = match holder.strip_suffix(VOID_SUFFIX) {
        Some(h) => (h, true),
        None => (holder, false),
    };
    if !crate::repo::format::ids::is_time_id(holder) || !marker.contains('/') {
        return None;
    }
    Some((marker.to_string(), holder.to_string(), void))
}

/// A marker listed without a verdict (see [`Markers::unjudged`]).
#[derive(Debug, Clone)]
pub(crate) struct Unjudged {
    pub key: String,
    pub holder: String,
    pub lease_time_ms: u64,
    pub stored: Option<SystemTime>,
}

impl Unjudged {
    pub(crate) fn void(&self) -> bool {
        fenced(self.stored, self.lease_time_ms)
    }
}

/// Records the verdict "void" for the writer's own fenced marker (best effort: without it
/// the marker is still void by its time, only an adopted copy would keep it).
pub(crate) async fn record_void(store: &dyn ObjectStore, u: &Unjudged) {
    let key = void_verdict_key(&u.key, &u.holder);
    let _ = store
        .put_if_absent(&key, Bytes::from(body(u, &u.holder)))
        .await;
}

fn body(u: &Unjudged, judged_by: &str) -> Vec<u8> {
    let v = Verdict {
        marker: u.key.clone(),
        holder: u.holder.clone(),
        lease_time_ms: u.lease_time_ms,
        marker_time_ms: u.stored.map_or(0, unix_ms),
        judged_by: judged_by.to_string(),
    };
    envelope::seal(MAGIC_VERDICT, &v)
}

/// Records the verdict "valid" for a marker (create-if-absent: the first record stays).
pub(crate) async fn record_valid(
    store: &dyn ObjectStore,
    u: &Unjudged,
    judged_by: &str,
) -> Result<()> {
    let body = Bytes::from(body(u, judged_by));
    store
        .put_if_absent(&verdict_key(&u.key, &u.holder), body)
        .await?;
    Ok(())
}

impl Repository {
    /// Before a destructive operation (gc, repair, delete) acts on a view: refuses a copied
    /// repository ([`RepoError::CopiedRepository`]), then records the verdict of every
    /// valid marker that has none, so no later run (on this store or on a copy of it)
    /// can judge it void. Returns how many verdicts it recorded.
    pub(crate) async fn judge_markers(&self, markers: &Markers, judge: &str) -> Result<u64> {
        self.refuse_if_copied(markers).await?;
        let mut n = 0;
        for u in markers.unjudged.iter().filter(|u| !u.void()) {
            record_valid(self.store().as_ref(), u, judge).await?;
            n += 1;
        }
        Ok(n)
    }

    /// An unjudged void marker whose lease time predates `config`'s store time by more
    /// than `SKEW` cannot be genuine: `config` exists before any lease. Its time (and
    /// `config`'s) were re-stamped by a copy.
    pub(crate) async fn refuse_if_copied(&self, markers: &Markers) -> Result<()> {
        let voids: Vec<&Unjudged> = markers.unjudged.iter().filter(|u| u.void()).collect();
        if voids.is_empty() {
            return Ok(());
        }
        let config = match self
            .store()
            .head(crate::repo::format::config::CONFIG_KEY)
            .await
        {
            Ok(m) => m.last_modified,
            Err(e) if e.kind() == StoreErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let Some(config_ms) = config.map(unix_ms) else {
            return Ok(());
        };
        let copied: Vec<&&Unjudged> = voids
            .iter()
            .filter(|u| u.lease_time_ms + (SKEW.as_millis() as u64) < config_ms)
            .collect();
        if let Some(first) = copied.first() {
            return Err(RepoError::CopiedRepository {
                markers: copied.len() as u64,
                example: first.key.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// `Repository::refuse_if_copied` on a fresh marker listing (for `check`).
    pub async fn refuse_if_copied_now(&self) -> Result<()> {
        let markers = self.load_markers().await?;
        self.refuse_if_copied(&markers).await
    }

    /// `check --adopt-copy`: records the verdict "valid" for every marker that has none,
    /// void-looking ones included — on a copy their times are not theirs, and a marker
    /// wrongly kept only keeps data (`check` then names any snapshot whose blobs are
    /// missing), while one wrongly dropped loses it. Returns how many it recorded.
    pub async fn adopt_copy(&self) -> Result<u64> {
        let markers = self.load_markers().await?;
        let mut n = 0;
        for u in &markers.unjudged {
            record_valid(self.store().as_ref(), u, "adopt-copy").await?;
            n += 1;
        }
        Ok(n)
    }
}

/// Right after creating commit marker `key`: fail with `LeaseExpired` if the marker is
/// fenced. A writer that stalled for longer than `LEASE_TTL` between its last renewal and
/// the marker's creation must not report success (or, for gc, go on deleting what its
/// void marker was to replace): every reader ignores that marker.
pub(crate) async fn ensure_not_fenced(
    store: &dyn ObjectStore,
    key: &str,
    holder: &str,
    lease_time_ms: u64,
) -> Result<()> {
    let stored = store.head(key).await?.last_modified;
    // Record the judgment while the time is still the store's own (format-spec §6
    // "Verdicts"): a copy of the repository re-stamps the marker but keeps this object.
    let marker = Unjudged {
        key: key.to_string(),
        holder: holder.to_string(),
        lease_time_ms,
        stored,
    };
    if fenced(stored, lease_time_ms) {
        record_void(store, &marker).await;
        return Err(RepoError::LeaseExpired {
            holder: holder.into(),
        }
        .into());
    }
    record_valid(store, &marker, holder).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_keys_round_trip_and_stray_keys_are_ignored() {
        let h = "20260101T000000.000000Z-0123456789abcdef";
        let k = verdict_key("tombstones/v/x.1", h);
        assert_eq!(
            parse_verdict_key(&k),
            Some(("tombstones/v/x.1".to_string(), h.to_string(), false))
        );
        assert_eq!(
            parse_verdict_key(&format!("{k}.void")),
            Some(("tombstones/v/x.1".to_string(), h.to_string(), true))
        );
        assert_eq!(parse_verdict_key("verdicts/junk"), None);
        assert_eq!(parse_verdict_key("verdicts/gc/1/not-a-holder"), None);
    }
}

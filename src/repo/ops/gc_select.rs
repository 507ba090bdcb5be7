//! Which blobs a gc run may collect and which it must keep (format-spec §7 item 1), and
//! the repairs of children counts it makes first (revival, release of orphaned tables).
//!
//! The rule is about *decrements*, never about the FREED flag a delete chose from its own
//! view (two deletes racing on a shared blob each see it still referenced and neither sets
//! FREED, yet together they bring it to zero: issue 20, finding 1):
//! * a *release segment* is a counted refs segment committed by a tombstone or by a gc
//!   marker with `freed: true` (`check --repair`'s corrections, and gc runs that released
//!   tables); it is *processable* once its marker's Last-Modified is before the cutoff;
//! * **protected**: every blob a non-processable release segment decrements (negative
//!   delta or FREED), and every blob this run itself decrements;
//! * **candidates**: every blob a processable release segment decrements; one is garbage
//!   iff its count, re-summed now with this run's own deltas, is 0 and it is not
//!   protected. The same "count ≤ 0 and not protected" judges the other frames of a pack
//!   that holds garbage.
//!
//! A table that reached zero without FREED still has its children counted on its behalf
//! (contribution c > 0, §4): before collecting it, gc releases them exactly as the delete
//! that should have freed it would have (−c on each child, FREED with contribution change
//! −c; recursively for child tables reaching zero). Those decrements are this run's own,
//! so the children are protected now and become candidates of a later run once this
//! run's marker (written with `freed: true`) is older than that run's cutoff.

use crate::repo::format::segment::segment_records;
use crate::repo::format::segment::{self, SegmentHead, FREED, REFS_RECORD, REVIVED};
use crate::repo::repository::SegmentSet;
use crate::repo::writer::Writer;
use crate::repo::{pack_key_of, BlobId, BlobKind, Repository};
use crate::Result;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

/// What a gc run decided about blobs before looking at packs.
#[derive(Default)]
pub(crate) struct Selection {
    /// Decremented by processable release segments.
    pub candidates: HashSet<BlobId>,
    /// Never collected by this run (see the module docs); also the children of tables
    /// this run revived.
    pub protected: HashSet<BlobId>,
    /// Refs segments a compaction may merge: every counted one except the release
    /// segments that are not processable yet (their decrements must stay identifiable).
    pub processed_refs: Vec<Arc<SegmentHead>>,
    /// Tables whose children were re-counted because a backup reused them.
    pub revived: u64,
    /// Tables at zero whose children this run released.
    pub released: u64,
    /// Packs of tables that could not be read (missing or corrupt frames).
    pub damaged: Vec<String>,
    /// A table to revive could not be read: its children may be under-counted, so this
    /// run collects nothing and does not compact ("unknown" is never "zero references").
    pub halt: bool,
}

/// Store time of the release marker committing `h`, `Some(None)` for a release marker
/// without a time (never processable), `None` when `h` is not a release segment.
fn release_time(set: &SegmentSet, h: &SegmentHead) -> Option<Option<SystemTime>> {
    if let Some((_, meta)) = set.markers.tombstones.get(&h.meta.commit) {
        return Some(meta.last_modified);
    }
    match set.markers.gcs.get(&h.meta.commit) {
        Some(g) if g.freed => Some(g.stored),
        _ => None,
    }
}

/// Record bytes of the release segments (the `gc-scan` stage's total).
pub(crate) fn scan_bytes(set: &SegmentSet) -> u64 {
    set.refs
        .iter()
        .filter(|h| release_time(set, h).is_some())
        .map(|h| u64::from(h.fanout[256]) * h.record_size as u64)
        .sum()
}

/// Steps 1–1c of a gc run: candidates and protection from the release segments, then
/// revival, then the release of tables at zero whose children are still counted. Every
/// record goes into `w` (this run's own deltas).
pub(crate) async fn select(
    repo: &Repository,
    set: &SegmentSet,
    cutoff: SystemTime,
    w: &mut Writer,
    advance: &(dyn Fn(u64) + Sync),
) -> Result<Selection> {
    let mut s = Selection::default();
    for h in &set.refs {
        let processable = match release_time(set, h) {
            None => {
                s.processed_refs.push(h.clone());
                continue;
            }
            Some(t) => t.is_some_and(|t| t < cutoff),
        };
        if processable {
            s.processed_refs.push(h.clone());
        }
        let recs = segment_records(repo.store().as_ref(), h).await?;
        for r in recs.chunks_exact(REFS_RECORD) {
            let (id, delta, flags) = segment::decode_refs_record(h, r)?;
            if delta < 0 || flags & FREED != 0 {
                if processable {
                    s.candidates.insert(id);
                } else {
                    s.protected.insert(id);
                }
            }
        }
        advance(u64::from(h.fanout[256]) * h.record_size as u64);
    }
    revive(repo, set, w, &mut s).await?;
    release(repo, set, w, &mut s).await?;
    Ok(s)
}

/// A table's entries, or `None` when it is located nowhere or is not a table.
async fn table_entries(
    repo: &Repository,
    set: &SegmentSet,
    id: &BlobId,
) -> Result<Option<Vec<BlobId>>> {
    let Some(loc) = repo.locate(set, id).await? else {
        return Ok(None);
    };
    if loc.kind != BlobKind::Table {
        return Ok(None);
    }
    let plain = repo.read_blob(&loc, id).await?;
    Ok(Some(crate::repo::format::table::decode_any(
        &pack_key_of(&loc.pack),
        &plain,
    )?))
}

async fn count(repo: &Repository, set: &SegmentSet, w: &Writer, id: &BlobId) -> Result<i64> {
    Ok(repo.refcount(set, id).await? + w.own_delta(id).await?)
}

async fn is_table(repo: &Repository, set: &SegmentSet, id: &BlobId) -> Result<bool> {
    Ok(repo
        .locate(set, id)
        .await?
        .is_some_and(|l| l.kind == BlobKind::Table))
}

/// Revival (format-spec §6): a candidate table with a positive count whose children are
/// not counted on its behalf (a delete released them while a backup reused it) gets them
/// back, once (contribution 1), recursively for child tables in the same state; none of
/// those children are collected in this run.
async fn revive(
    repo: &Repository,
    set: &SegmentSet,
    w: &mut Writer,
    s: &mut Selection,
) -> Result<()> {
    let mut done: HashSet<BlobId> = HashSet::new();
    let mut stack: Vec<BlobId> = s.candidates.iter().copied().collect();
    while let Some(id) = stack.pop() {
        if done.contains(&id)
            || count(repo, set, w, &id).await? <= 0
            || !is_table(repo, set, &id).await?
        {
            continue;
        }
        let contribution = repo.children_contribution(set, &id).await?;
        if contribution > 0 {
            continue;
        }
        let entries = match table_entries(repo, set, &id).await {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) if crate::repo::error::is_damage(&e) => {
                tracing::warn!("gc: table {id} to revive is unreadable, nothing collected: {e}");
                s.damaged.push(damaged_pack(repo, set, &id).await?);
                s.halt = true;
                continue;
            }
            Err(e) => return Err(e),
        };
        done.insert(id);
        // Back to exactly one count on its behalf, whatever was released before.
        let missing = 1 - contribution;
        w.add_ref_with_contribution(id, 0, REVIVED, missing);
        for c in entries.into_iter().filter(|c| !c.is_zero()) {
            w.add_ref(c, missing, 0);
            s.protected.insert(c);
            stack.push(c);
        }
    }
    s.revived = done.len() as u64;
    Ok(())
}

/// Release the children of candidate tables at zero that still count them (two deletes
/// racing on a shared table each left it referenced in their own view): exactly the
/// delete walk's rule (§4), with this run as the releasing writer.
async fn release(
    repo: &Repository,
    set: &SegmentSet,
    w: &mut Writer,
    s: &mut Selection,
) -> Result<()> {
    let mut roots: Vec<BlobId> = Vec::new();
    for id in &s.candidates {
        if !s.protected.contains(id)
            && count(repo, set, w, id).await? == 0
            && is_table(repo, set, id).await?
            && repo.children_contribution(set, id).await? > 0
        {
            roots.push(*id);
        }
    }
    roots.sort();
    // (blob, references released; 0 for a candidate table already at zero)
    let mut stack: Vec<(BlobId, i64)> = roots.into_iter().map(|id| (id, 0)).collect();
    while let Some((id, times)) = stack.pop() {
        if times > 0 {
            // Decremented by this run: not collectable before this run's marker is older
            // than a later run's cutoff.
            s.protected.insert(id);
        }
        let freed = count(repo, set, w, &id).await? - times == 0;
        if !is_table(repo, set, &id).await? {
            w.add_ref(id, -times, if freed { FREED } else { 0 });
            continue;
        }
        let contribution = match freed {
            true => repo.children_contribution(set, &id).await?,
            false => 0,
        };
        let mut entries = Vec::new();
        if contribution > 0 {
            match table_entries(repo, set, &id).await {
                Ok(e) => entries = e.unwrap_or_default(),
                Err(e) if crate::repo::error::is_damage(&e) => {
                    // Its children stay counted (a leak `check --repair` reclaims) and the
                    // table is kept, so a later run can still release them.
                    tracing::warn!("gc: table {id} at zero is unreadable, kept: {e}");
                    s.damaged.push(damaged_pack(repo, set, &id).await?);
                    s.protected.insert(id);
                    w.add_ref(id, -times, 0);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        // A released table's contribution drops to 0; one at zero whose children were
        // already released keeps its contribution (the delete walk's FREED|adjustment).
        w.add_ref_with_contribution(
            id,
            -times,
            if freed { FREED } else { 0 },
            -contribution.max(0),
        );
        if contribution > 0 {
            s.released += 1;
            for c in entries.into_iter().filter(|c| !c.is_zero()) {
                stack.push((c, contribution));
            }
        }
    }
    Ok(())
}

/// The pack holding an unreadable table (its name, for the report), or the table's id.
async fn damaged_pack(repo: &Repository, set: &SegmentSet, id: &BlobId) -> Result<String> {
    Ok(match repo.locate(set, id).await? {
        Some(loc) => loc.pack,
        None => format!("(table {id} located nowhere)"),
    })
}

/// Old gc markers this run (committed as `gc/<own_seq>`) deletes (format-spec §7 item 6):
/// numbered below its own, named by no segment its view listed (counted, superseded or
/// not: the segments a marker commits are always written before it, so none can appear
/// later), and with a Last-Modified before the cutoff. The last condition keeps the
/// marker for as long as any gc, repair or heal that could have numbered its own commit
/// from a listing made before that marker existed may still commit: such a run's lease
/// started before the marker existed, so while it is live the cutoff (≤ its start −
/// `SKEW`) is before the marker; once it is not live, its pre-commit renewal fences it.
/// Losing the marker race is what makes those runs exclusive; the newest marker (this
/// run's) is never deleted, so numbering always continues past every marker.
pub(crate) fn retired_markers(set: &SegmentSet, own_seq: u64, cutoff: SystemTime) -> Vec<String> {
    let mut keys: Vec<String> = set
        .markers
        .gc_listed
        .iter()
        .filter(|(seq, o)| {
            *seq < own_seq
                && !set.named_commits.contains(&o.key)
                && o.last_modified.is_some_and(|t| t < cutoff)
        })
        .map(|(_, o)| o.key.clone())
        .collect();
    keys.sort();
    keys
}

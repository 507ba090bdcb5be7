//! Stray objects: packs that no counted index segment names, segments no commit marker
//! counts, intents and backup checkpoints, whose writer holds no lease; and objects under
//! the marker and segment prefixes whose name the format does not define, or whose head
//! is damaged. They are listed *before* the leases and the leases before the view, so a
//! writer that produced a listed object either still holds its lease (the object is left
//! alone), or committed before the view was loaded (the object is counted), or died and
//! lost its lease to gc (the object is garbage).
//!
//! Nothing is deleted: a stray is moved under `quarantine/` (copy, then delete of the
//! original), and only when it is older than `LEASE_TTL + SKEW` at the repair's store
//! time, like gc's sweeps. A stray pack is moved only when every frame it holds is
//! located elsewhere; one holding anything the index does not locate is kept (its frames
//! were rebuilt into the index by step 1, or fail their checks: kept, never garbage).

use super::rebuild::{footer_entries, pack_entries_of};
use super::RepairReport;
use crate::repo::protocol::lease::{list_leases, LEASE_TTL, SKEW};
use crate::repo::protocol::stale::lost_root_segments;
use crate::repo::repository::{segment_writer, SegmentSet};
use crate::repo::writer::Intent;
use crate::repo::Repository;
use crate::store::{ObjectMeta, StoreErrorKind};
use crate::Result;
use std::collections::HashSet;
use std::time::SystemTime;

/// Where moved objects go: `quarantine/<original key>`.
const QUARANTINE: &str = "quarantine/";

/// Objects listed before the leases: packs, segments, intents, checkpoints.
pub(super) struct Listed {
    pub packs: Vec<ObjectMeta>,
    segments: Vec<ObjectMeta>,
    intents: Vec<ObjectMeta>,
    checkpoints: Vec<ObjectMeta>,
}

pub(super) async fn list_candidates(repo: &Repository) -> Result<Listed> {
    let packs = repo.list_all("packs/").await?;
    let mut segments = repo.list_all("index/").await?;
    segments.extend(repo.list_all("refs/").await?);
    let intents = repo.list_all("intents/").await?;
    let checkpoints = repo.list_all("checkpoints/").await?;
    Ok(Listed {
        packs,
        segments,
        intents,
        checkpoints,
    })
}

/// Holders with any lease generation (live, or dead and not yet cleaned by gc).
pub(super) async fn leased_holders(repo: &Repository, me: &str) -> Result<HashSet<String>> {
    Ok(list_leases(repo.store().as_ref())
        .await?
        .into_iter()
        .map(|l| l.holder)
        .filter(|h| h != me)
        .collect())
}

/// Holders whose packs a leased writer adopted from a checkpoint (format-spec §12): its
/// intent (listed before the leases) names them. `None` when an intent of a leased
/// holder cannot be read: which packs are adopted is then unknown.
pub(super) async fn adopted_holders(
    repo: &Repository,
    listed: &Listed,
    leased: &HashSet<String>,
) -> Result<Option<HashSet<String>>> {
    let mut adopted = HashSet::new();
    for o in &listed.intents {
        if !leased.contains(o.key.trim_start_matches("intents/")) {
            continue;
        }
        if let Some(bytes) = repo.get_opt(&o.key).await? {
            match Intent::decode(&o.key, &bytes) {
                Ok(i) => adopted.extend(i.adopted),
                Err(_) => return Ok(None),
            }
        }
    }
    Ok(Some(adopted))
}

/// Listed packs `set` does not name whose holder has no lease and was not adopted.
pub(super) fn unnamed_packs(
    set: &SegmentSet,
    listed: &Listed,
    leased: &HashSet<String>,
    adopted: &HashSet<String>,
) -> Vec<ObjectMeta> {
    let named = named(set);
    listed
        .packs
        .iter()
        .filter(|o| {
            let name = o.key.rsplit('/').next().unwrap_or("");
            let holder = segment_writer(name);
            !named.contains(name) && !leased.contains(holder) && !adopted.contains(holder)
        })
        .cloned()
        .collect()
}

fn named(set: &SegmentSet) -> HashSet<&str> {
    set.index
        .iter()
        .flat_map(|h| h.meta.packs.iter().map(String::as_str))
        .filter(|p| !set.dead_packs.contains(*p))
        .collect()
}

/// Move `key` under [`QUARANTINE`]; returns its size, `None` if it is gone already.
async fn quarantine(repo: &Repository, key: &str) -> Result<Option<u64>> {
    let bytes = match repo.store().get(key).await {
        Ok(b) => b,
        Err(e) if e.kind() == StoreErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let size = bytes.len() as u64;
    repo.store()
        .put(&format!("{QUARANTINE}{key}"), bytes)
        .await?;
    repo.store().delete(key).await?;
    Ok(Some(size))
}

fn old(o: &ObjectMeta, now: SystemTime) -> bool {
    o.last_modified
        .is_some_and(|t| now.duration_since(t).unwrap_or_default() > LEASE_TTL + SKEW)
}

/// Quarantine the unusable objects of `set` that can be moved safely: stray names under
/// the marker and segment prefixes (nothing can name them), and damaged segment heads of
/// holders with no lease under `prefix` (index segments once the index was rebuilt from
/// the packs; refs segments once the counts were raised without them). Damaged roots,
/// tombstones and gc markers stay: they are the only record of what they commit.
pub(super) async fn quarantine_unusable(
    repo: &Repository,
    set: &SegmentSet,
    leased: &HashSet<String>,
    prefix: &str,
    report: &mut RepairReport,
) -> Result<()> {
    let movable: Vec<String> = (set.unusable())
        .filter(|u| {
            if u.stray {
                prefix == "index/"
            } else {
                u.key.starts_with(prefix)
                    && set.unusable.contains(u)
                    && !leased.contains(segment_writer(&u.key))
            }
        })
        .map(|u| u.key.clone())
        .collect();
    for key in movable {
        if quarantine(repo, &key).await?.is_some() {
            report.damaged_quarantined += 1;
            report.quarantined.push(key);
        }
    }
    Ok(())
}

/// Quarantine the old strays of the final view `set` (see the module docs).
pub(super) async fn quarantine_strays(
    repo: &Repository,
    set: &SegmentSet,
    listed: Listed,
    leased: &HashSet<String>,
    adopted: &HashSet<String>,
    now: SystemTime,
    report: &mut RepairReport,
) -> Result<()> {
    let mut doomed: Vec<(ObjectMeta, Kind)> = Vec::new();
    for o in unnamed_packs(set, &listed, leased, adopted) {
        if !old(&o, now) {
            report.strays_too_young += 1;
        } else if pack_is_redundant(repo, set, &o, report).await? {
            doomed.push((o, Kind::Pack));
        }
    }
    let mut keep: Vec<String> = (lost_root_segments(repo, set).await?)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    // Segments of a damaged tombstone: its commit exists, it may be put back.
    let damaged: HashSet<String> = (set.markers.unusable.iter())
        .filter(|u| !u.stray)
        .map(|u| u.key.clone())
        .collect();
    if !damaged.is_empty() {
        for o in &set.uncounted {
            if let Ok(h) = repo.segment_head(&o.key).await {
                if damaged.contains(&h.meta.commit) {
                    keep.push(o.key.clone());
                }
            }
        }
    }
    let candidates = other_candidates(set, listed, &keep);
    for (holder, o, kind) in candidates {
        if leased.contains(&holder) {
            report.objects_of_leased_writers += 1;
        } else if !old(&o, now) {
            report.strays_too_young += 1;
        } else {
            doomed.push((o, kind));
        }
    }
    for (o, kind) in doomed {
        let Some(size) = quarantine(repo, &o.key).await? else {
            continue;
        };
        report.stray_bytes_deleted += size;
        report.quarantined.push(o.key);
        *match kind {
            Kind::Pack => &mut report.stray_packs_deleted,
            Kind::Segment => &mut report.stray_segments_deleted,
            Kind::Intent => &mut report.stray_intents_deleted,
            Kind::Checkpoint => &mut report.stray_checkpoints_deleted,
        } += 1;
    }
    Ok(())
}

/// Uncounted segments (minus damaged ones and `keep`: a lost root's, its only record
/// besides its packs, and a damaged tombstone's), intents and checkpoints, each with its
/// holder.
fn other_candidates(
    set: &SegmentSet,
    listed: Listed,
    keep: &[String],
) -> Vec<(String, ObjectMeta, Kind)> {
    let counted: HashSet<&str> = (set.index.iter().chain(set.refs.iter()))
        .map(|h| h.key.as_str())
        .collect();
    let unusable: HashSet<&str> = set.unusable.iter().map(|u| u.key.as_str()).collect();
    let holder_at = |key: &str| key.split('/').nth(1).unwrap_or("").to_string();
    let mut out = Vec::new();
    for o in listed.segments {
        let k = o.key.as_str();
        if !counted.contains(k) && !unusable.contains(k) && !keep.iter().any(|l| l == k) {
            out.push((segment_writer(k).to_string(), o, Kind::Segment));
        }
    }
    for o in listed.intents {
        out.push((holder_at(&o.key), o, Kind::Intent));
    }
    for o in listed.checkpoints {
        out.push((holder_at(&o.key), o, Kind::Checkpoint));
    }
    out
}

enum Kind {
    Pack,
    Segment,
    Intent,
    Checkpoint,
}

/// Whether every frame of an unnamed pack is located elsewhere by `set`, so moving it
/// cannot take away anything a table or root reaches. A pack of which no frame can be
/// read (neither its footer nor its first frame checks out) holds nothing readable.
async fn pack_is_redundant(
    repo: &Repository,
    set: &SegmentSet,
    o: &ObjectMeta,
    report: &mut RepairReport,
) -> Result<bool> {
    let bytes = match repo.store().get(&o.key).await {
        Ok(b) => b,
        Err(e) if e.kind() == StoreErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    // Frames scanned past a damaged footer may stop before the end: what follows is
    // unknown, so only a checked footer can prove the pack redundant.
    let entries = match footer_entries(&o.key, &bytes) {
        Ok(e) => e,
        Err(_) if pack_entries_of(&o.key, &bytes).is_err() => return Ok(true),
        Err(_) => {
            report.stray_packs_kept += 1;
            return Ok(false);
        }
    };
    for e in entries {
        if repo.locate(set, &e.id).await?.is_none() {
            report.stray_packs_kept += 1;
            return Ok(false);
        }
    }
    Ok(true)
}

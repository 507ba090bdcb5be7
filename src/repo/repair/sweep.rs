//! Stray objects: packs that no counted index segment names, segments no commit marker
//! counts, intents and backup checkpoints, whose writer holds no lease. They are listed *before* the leases
//! and the leases before the segment view, so a writer that produced a listed object
//! either still holds its lease (the object is left alone), or committed before the view
//! was loaded (the object is counted), or died and lost its lease to gc (the object is
//! garbage). Packs are never located through anything but a counted index segment, so
//! deleting a stray one cannot break a snapshot.

use super::RepairReport;
use crate::repo::lease::list_leases;
use crate::repo::repository::{segment_writer, SegmentSet};
use crate::repo::writer::Intent;
use crate::repo::Repository;
use crate::store::ObjectMeta;
use crate::Result;
use std::collections::HashSet;

/// Objects listed before the view: packs, segments, intents.
pub(super) struct Listed {
    packs: Vec<ObjectMeta>,
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

/// Holder of a pack name `<holder>-p<seq>` or segment name `<holder>-<seq>`.
fn holder_of(key: &str) -> &str {
    segment_writer(key)
}

pub(super) async fn delete_strays(
    repo: &Repository,
    set: &SegmentSet,
    listed: Listed,
    leased: &HashSet<String>,
    report: &mut RepairReport,
) -> Result<()> {
    let named: HashSet<&str> = set
        .index
        .iter()
        .flat_map(|h| h.meta.packs.iter().map(String::as_str))
        .filter(|p| !set.dead_packs.contains(*p))
        .collect();
    let counted: HashSet<&str> = set
        .index
        .iter()
        .chain(set.refs.iter())
        .map(|h| h.key.as_str())
        .collect();
    // Packs a writer adopted from a checkpoint (format-spec §12) belong to that writer: its
    // intent (listed before the leases) names their first holder.
    let mut adopted: HashSet<String> = HashSet::new();
    for o in &listed.intents {
        if let Some(bytes) = repo.get_opt(&o.key).await? {
            if let Ok(i) = Intent::decode(&o.key, &bytes) {
                if leased.contains(&i.holder) {
                    adopted.extend(i.adopted);
                }
            }
        }
    }
    let mut doomed: Vec<String> = Vec::new();
    for o in listed.packs {
        let name = o.key.rsplit('/').next().unwrap_or("");
        if named.contains(name) {
            continue;
        }
        if leased.contains(holder_of(name)) || adopted.contains(holder_of(name)) {
            report.objects_of_leased_writers += 1;
            continue;
        }
        report.stray_packs_deleted += 1;
        report.stray_bytes_deleted += o.size;
        doomed.push(o.key);
    }
    for o in listed.segments {
        if counted.contains(o.key.as_str()) {
            continue;
        }
        if leased.contains(holder_of(&o.key)) {
            report.objects_of_leased_writers += 1;
            continue;
        }
        report.stray_segments_deleted += 1;
        report.stray_bytes_deleted += o.size;
        doomed.push(o.key);
    }
    for o in listed.intents {
        let holder = o.key.trim_start_matches("intents/");
        if leased.contains(holder) {
            continue;
        }
        report.stray_intents_deleted += 1;
        doomed.push(o.key);
    }
    for o in listed.checkpoints {
        let holder = o.key.split('/').nth(1).unwrap_or_default();
        if leased.contains(holder) {
            continue;
        }
        report.stray_checkpoints_deleted += 1;
        report.stray_bytes_deleted += o.size;
        doomed.push(o.key);
    }
    repo.store().delete_batch(&doomed).await?;
    Ok(())
}

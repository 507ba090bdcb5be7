//! `check --repair`: rebuild what the packs and the snapshots can tell, reclaim leaked
//! objects, safely alongside running backups (format-spec §11). It never deletes an
//! object: what it takes away is moved under `quarantine/`.
//!
//! 1. Rebuild ([`rebuild`]): packs no counted index segment names (their writer's segment
//!    or root was lost or damaged) are read back, and the locations of their valid frames
//!    the index lacks are committed in a new index segment.
//! 2. Quarantine of objects the view cannot use: stray names under the marker and segment
//!    prefixes, and damaged index segment heads (their packs were just re-indexed).
//!    Damaged refs segments are moved after step 3 raised the counts without them, and
//!    only when nothing else is unknown. Damaged roots, tombstones and gc markers stay
//!    where they are, reported.
//! 3. Counts: every live snapshot's tree is walked (as `check` does) to get the expected
//!    count of each blob; the stored sums of the counted refs segments are compared, and a
//!    correcting delta is written for each difference. A live table whose children
//!    contribution is ≤ 0 gets REVIVED (its children are counted again by the deltas).
//!    Blobs no live snapshot references that are still stored and were never freed get a
//!    FREED flag. Counts are lowered and blobs released only when the walk is complete:
//!    every live table was read and no object of the view is damaged. An unreadable table
//!    means its children are unknown, never unreferenced; then counts are only raised.
//!    Nothing is overwritten: the corrections are a new refs segment committed by a
//!    `gc/<seq>` marker created with create-if-absent (so repair and gc exclude each
//!    other), marked `freed` so gc treats its FREED flags like a delete's, under gc's
//!    cutoff: a backup that started before the repair may still reference one of them.
//! 4. Strays ([`sweep`]): old enough (`LEASE_TTL + SKEW`), of holders without a lease,
//!    and for a pack only when every frame it holds is located elsewhere.

pub(crate) mod rebuild;
mod sweep;

use super::check::{child_weight, StoredCount};
use crate::repo::format::ids::new_time_id;
use crate::repo::format::segment::{FREED, REVIVED};
use crate::repo::format::table::{Geometry, FANOUT};
use crate::repo::protocol::commit::{commit_gc_marker, next_gc_marker};
use crate::repo::protocol::lease::Lease;
use crate::repo::repository::SegmentSet;
use crate::repo::writer::Writer;
use crate::repo::{BlobId, BlobKind, CheckIssue, CheckOptions, CheckReport, Repository};
use crate::Result;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// What `check --repair` found and fixed. Field names are a stable JSON interface.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RepairReport {
    /// The check run before repairing (its refcount issues are what was fixed).
    pub check: CheckReport,
    /// Blobs whose stored count was corrected.
    pub refcounts_fixed: u64,
    /// Live tables whose children were counted again (REVIVED).
    pub tables_revived: u64,
    /// Unreferenced stored blobs handed to gc (FREED); gc reclaims their space.
    pub blobs_released: u64,
    /// Stray packs moved under `quarantine/` (the names predate quarantine: nothing is
    /// destroyed, `<key>` becomes `quarantine/<key>`).
    pub stray_packs_deleted: u64,
    /// Stray segments moved under `quarantine/`.
    pub stray_segments_deleted: u64,
    /// Stray intents moved under `quarantine/`.
    pub stray_intents_deleted: u64,
    /// Backup checkpoints (format-spec §12) whose writer holds no lease, moved under
    /// `quarantine/`.
    pub stray_checkpoints_deleted: u64,
    /// Bytes of the strays moved under `quarantine/`.
    pub stray_bytes_deleted: u64,
    /// Uncommitted objects left alone because their writer holds a lease (running, or
    /// dead and left to gc's expiry).
    pub objects_of_leased_writers: u64,
    /// Commit marker of the corrections (`gc/<seq>`), if anything needed correcting.
    pub commit: Option<String>,
    /// Problems that damage snapshots (missing or corrupt objects): repair cannot restore
    /// data, it reports which snapshots are affected.
    pub damaged: Vec<CheckIssue>,
    /// Store requests of every kind this repair made.
    pub requests: u64,
    /// Packs no counted index segment named whose frames were indexed again.
    pub packs_reindexed: u64,
    /// Index records rebuilt from those packs.
    pub index_records_rebuilt: u64,
    /// Commit marker of the rebuilt index segment, if any.
    pub rebuild_commit: Option<String>,
    /// True when every live table was read and no object of the view is damaged, so
    /// counts were corrected both ways; false: counts were only raised, nothing released.
    pub complete: bool,
    /// Objects whose content is unknown (unreadable tables, damaged markers or segments,
    /// unreadable stray packs): why `complete` is false, and what was kept.
    pub unknown: Vec<String>,
    /// Objects under the marker and segment prefixes with a stray name or a damaged
    /// segment head, moved under `quarantine/`.
    pub damaged_quarantined: u64,
    /// Unnamed packs kept because they hold frames the index does not locate.
    pub stray_packs_kept: u64,
    /// Strays younger than `LEASE_TTL + SKEW`, left for a later run.
    pub strays_too_young: u64,
    /// Every key moved under `quarantine/`.
    pub quarantined: Vec<String>,
}

/// Expected counts from the live snapshots.
#[derive(Default)]
struct Expected {
    counts: HashMap<BlobId, i64>,
    tables: HashSet<BlobId>,
    /// Live tables that could not be read: their children are unknown.
    unreadable: Vec<BlobId>,
}

impl Repository {
    /// Repair the repository (see module docs).
    pub async fn repair(&self) -> Result<RepairReport> {
        let before = self.counts();
        let holder = new_time_id();
        let lease = Lease::acquire(self.store().clone(), &holder, "repair", None).await?;
        let now = lease.started;
        let mut report = RepairReport::default();
        // Listing order matters for the sweep: objects, then leases, then the view.
        let listed = sweep::list_candidates(self).await?;
        let leased = sweep::leased_holders(self, &holder).await?;
        let adopted = sweep::adopted_holders(self, &listed, &leased).await?;
        let first = self.load_view().await?;
        self.judge_markers(&first.markers, &holder).await?;
        if let Some(adopted) = &adopted {
            let candidates = sweep::unnamed_packs(&first, &listed, &leased, adopted);
            let present: HashSet<&str> = (listed.packs.iter())
                .map(|o| o.key.rsplit('/').next().unwrap_or(""))
                .collect();
            rebuild::rebuild_index(self, &first, &candidates, &present, &mut report).await?;
        } else {
            tracing::warn!("repair: an intent of a leased writer is unreadable: no pack touched");
        }
        sweep::quarantine_unusable(self, &first, &leased, "index/", &mut report).await?;
        drop(first);
        let set = self.load_view().await?;
        // The check runs on the same view; its stored counts are what gets corrected.
        let (check, stored) = self
            .check_view(&set, &CheckOptions::default(), None)
            .await?;
        report.damaged = (check.issues.iter())
            .filter(|i| !i.snapshots.is_empty())
            .cloned()
            .collect();
        report.check = check;
        let (seq, marker_key) = next_gc_marker(&set);
        let mut w = Writer::new(self, lease.clone(), marker_key.clone(), "repair");
        let (changes, only_refs_unknown) = self
            .correct_counts(&set, &stored, &mut w, &mut report)
            .await?;
        if changes > 0 {
            commit_gc_marker(self, &mut w, &lease, seq, &marker_key, true).await?;
            report.commit = Some(marker_key);
        }
        // Counts are now at least what the complete walk expects without the damaged
        // refs segments: moving them aside lowers nothing below what a root reaches.
        if only_refs_unknown {
            sweep::quarantine_unusable(self, &set, &leased, "refs/", &mut report).await?;
        }
        if let Some(adopted) = &adopted {
            sweep::quarantine_strays(self, &set, listed, &leased, adopted, now, &mut report)
                .await?;
        }
        w.finish().await;
        report.requests = self.counts().since(&before).total();
        Ok(report)
    }

    /// Walk the live snapshots' trees (each table once); children count as often as their
    /// table's contribution says ([`child_weight`]).
    async fn expected_counts(
        &self,
        set: &SegmentSet,
        stored: &HashMap<BlobId, StoredCount>,
    ) -> Result<Expected> {
        let mut e = Expected::default();
        for m in self.live_roots(&set.markers, None) {
            let geo = Geometry::new(m.size, m.chunk_size);
            let mut stack = Vec::new();
            for (i, id) in m.top_ids()?.into_iter().enumerate() {
                if !id.is_zero() {
                    *e.counts.entry(id).or_default() += 1;
                    stack.push((id, geo.depth - 1, i as u64));
                }
            }
            while let Some((id, level, index)) = stack.pop() {
                if !e.tables.insert(id) {
                    continue;
                }
                // Unreadable tables are reported by the check as damage; their children
                // are unknown: the caller then lowers no count.
                let Ok(entries) = self
                    .read_table(set, &id, level, geo.table_len(level, index))
                    .await
                else {
                    e.unreadable.push(id);
                    continue;
                };
                let weight = child_weight(stored, &id);
                for (j, c) in entries.into_iter().enumerate() {
                    if c.is_zero() {
                        continue;
                    }
                    *e.counts.entry(c).or_default() += weight;
                    if level > 0 {
                        stack.push((c, level - 1, index * FANOUT + j as u64));
                    }
                }
            }
        }
        Ok(e)
    }

    /// Record in `w` the deltas and flags that make the stored counts match the live
    /// snapshots; returns how many records were added, and whether damaged refs segments
    /// were all that was unknown. When something is unknown (an unreadable table, a
    /// damaged object in the view), only raises are written.
    async fn correct_counts(
        &self,
        set: &SegmentSet,
        stored: &HashMap<BlobId, StoredCount>,
        w: &mut Writer,
        report: &mut RepairReport,
    ) -> Result<(u64, bool)> {
        let expected = self.expected_counts(set, stored).await?;
        let only_refs_unknown = expected.unreadable.is_empty()
            && set
                .unusable()
                .all(|u| u.stray || u.key.starts_with("refs/"));
        let unknown: Vec<String> = (expected.unreadable.iter())
            .map(|id| format!("table {id}: unreadable, children unknown"))
            .chain(
                set.unusable()
                    .filter(|u| !u.stray && !set.deleted_damaged_root(&u.key))
                    .map(|u| format!("{}: {}", u.key, u.problem)),
            )
            .collect();
        report.complete = unknown.is_empty();
        report.unknown.extend(unknown);
        let lower = report.complete;
        let mut changes = 0u64;
        for (id, want) in &expected.counts {
            let StoredCount {
                sum: have,
                contribution,
                ..
            } = stored.get(id).copied().unwrap_or_default();
            let delta = if lower {
                want - have
            } else {
                (want - have).max(0)
            };
            // A live table whose children are not counted on its behalf is counted once
            // again (the deltas bring its children to that weight): a raise. Not one that
            // could not be read: no delta raised its children, and a REVIVED flag would
            // say they are counted (gc would then collect them); gc revives it once read.
            let revive = expected.tables.contains(id)
                && contribution <= 0
                && !expected.unreadable.contains(id);
            if revive {
                report.tables_revived += 1;
            }
            if delta != 0 {
                report.refcounts_fixed += 1;
            }
            if revive {
                w.add_ref_with_contribution(*id, delta, REVIVED, 1 - contribution);
                changes += 1;
            } else if delta != 0 {
                w.add_ref(*id, delta, 0);
                changes += 1;
            }
        }
        if !lower {
            return Ok((changes, only_refs_unknown));
        }
        for (
            id,
            StoredCount {
                sum: have,
                contribution,
                freed,
            },
        ) in stored
        {
            if expected.counts.contains_key(id) {
                continue;
            }
            // Still stored, never freed: a leak gc would never find on its own. A table's
            // children are released by the deltas of the other records (they are expected
            // only from live tables), so its contribution goes to exactly 0.
            let located = match freed {
                true => None,
                false => self.locate(set, id).await?,
            };
            if located.is_some() {
                report.blobs_released += 1;
            }
            if *have != 0 {
                report.refcounts_fixed += 1;
            }
            if let Some(loc) = located {
                match loc.kind {
                    BlobKind::Chunk => w.add_ref(*id, -have, FREED),
                    BlobKind::Table => {
                        w.add_ref_with_contribution(*id, -have, FREED, -contribution)
                    }
                }
                changes += 1;
            } else if *have != 0 {
                w.add_ref(*id, -have, 0);
                changes += 1;
            }
        }
        Ok((changes, only_refs_unknown))
    }
}

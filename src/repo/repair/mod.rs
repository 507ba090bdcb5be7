//! `check --repair`: rebuild reference counts from the committed snapshots and reclaim
//! leaked objects, safely alongside running backups.
//!
//! * Counts: every live snapshot's tree is walked (as `check` does) to get the expected
//!   count of each blob; the stored sums of the counted refs segments are compared, and a
//!   correcting delta is written for each difference. A live table whose children
//!   contribution is ≤ 0 gets REVIVED (its children are counted again by the deltas).
//!   Blobs no live snapshot references that are still stored and were never freed get a
//!   FREED flag. Nothing is overwritten: the corrections are a new refs segment committed
//!   by a `gc/<seq>` marker created with create-if-absent (so repair and gc exclude each
//!   other), marked `freed` so gc treats its FREED flags like a delete's.
//! * Collection of those released blobs is gc's job, under gc's cutoff: a backup that
//!   started before the repair may still reference one of them, exactly as with a delete.
//!   A corrected count only matters relative to the view: deltas committed concurrently
//!   by others add on top of the corrected sum.
//! * Stray objects ([`sweep`]): packs no counted index segment names, and segments no
//!   marker counts, whose writer holds no lease, are deleted right away (nobody can
//!   locate them, and no writer is still producing them).

mod sweep;

use super::check::{child_weight, StoredCount};
use super::gc::{commit_gc_marker, next_gc_marker};
use super::ids::new_time_id;
use super::lease::Lease;
use super::repository::SegmentSet;
use super::segment::{FREED, REVIVED};
use super::table::{Geometry, FANOUT};
use super::writer::Writer;
use super::{BlobId, BlobKind, CheckIssue, CheckOptions, CheckReport, Repository};
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
    pub stray_packs_deleted: u64,
    pub stray_segments_deleted: u64,
    pub stray_intents_deleted: u64,
    /// Backup checkpoints (format-spec §12) whose writer holds no lease.
    pub stray_checkpoints_deleted: u64,
    pub stray_bytes_deleted: u64,
    /// Uncommitted objects left alone because their writer holds a lease (running, or
    /// dead and left to gc's expiry).
    pub objects_of_leased_writers: u64,
    /// Commit marker of the corrections (`gc/<seq>`), if anything needed correcting.
    pub commit: Option<String>,
    /// Problems that damage snapshots (missing or corrupt objects): repair cannot restore
    /// data, it reports which snapshots are affected.
    pub damaged: Vec<CheckIssue>,
    pub requests: u64,
}

/// Expected counts from the live snapshots.
#[derive(Default)]
struct Expected {
    counts: HashMap<BlobId, i64>,
    tables: HashSet<BlobId>,
}

impl Repository {
    /// Repair the repository (see module docs).
    pub async fn repair(&self) -> Result<RepairReport> {
        let before = self.counts();
        let holder = new_time_id();
        let lease = Lease::acquire(self.store().clone(), &holder, "repair", None).await?;
        // Listing order matters for the sweep: objects, then leases, then the view.
        let listed = sweep::list_candidates(self).await?;
        let leased = sweep::leased_holders(self, &holder).await?;
        let set = self.load_segments().await?;
        self.judge_markers(&set.markers, &holder).await?;
        // The check runs on the same view; its stored counts are what gets corrected.
        let (check, stored) = self
            .check_view(&set, &CheckOptions::default(), None)
            .await?;
        let mut report = RepairReport {
            damaged: check
                .issues
                .iter()
                .filter(|i| !i.snapshots.is_empty())
                .cloned()
                .collect(),
            check,
            ..Default::default()
        };
        let (seq, marker_key) = next_gc_marker(&set);
        let mut w = Writer::new(self, lease.clone(), marker_key.clone(), "repair");
        let changes = self
            .correct_counts(&set, &stored, &mut w, &mut report)
            .await?;
        if changes > 0 {
            commit_gc_marker(self, &mut w, &lease, seq, &marker_key, true).await?;
            report.commit = Some(marker_key);
        }
        sweep::delete_strays(self, &set, listed, &leased, &mut report).await?;
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
                // cannot be counted (nor collected: they are not located either).
                let Ok(entries) = self
                    .read_table(set, &id, level, geo.table_len(level, index))
                    .await
                else {
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
    /// snapshots; returns how many records were added.
    async fn correct_counts(
        &self,
        set: &SegmentSet,
        stored: &HashMap<BlobId, StoredCount>,
        w: &mut Writer,
        report: &mut RepairReport,
    ) -> Result<u64> {
        let expected = self.expected_counts(set, stored).await?;
        let mut changes = 0u64;
        for (id, want) in &expected.counts {
            let StoredCount {
                sum: have,
                contribution,
                ..
            } = stored.get(id).copied().unwrap_or_default();
            // A live table whose children are not counted on its behalf is counted once
            // again (the deltas bring its children to that weight).
            let revive = expected.tables.contains(id) && contribution <= 0;
            if revive {
                report.tables_revived += 1;
            }
            if have != *want {
                report.refcounts_fixed += 1;
            }
            if revive {
                w.add_ref_with_contribution(*id, want - have, REVIVED, 1 - contribution);
                changes += 1;
            } else if have != *want {
                w.add_ref(*id, want - have, 0);
                changes += 1;
            }
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
        Ok(changes)
    }
}

#[cfg(test)]
mod tests;

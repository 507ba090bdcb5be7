//! `check`: structure of every live snapshot, refcounts recomputed from the snapshots
//! against the stored sums, and optionally re-hashing data. Problems are reported with the
//! snapshots they damage. Cost is ∝ the repository (it is the full sweep), memory ∝ the
//! number of distinct blobs (counts are held in a map).

use super::gc::segment_records;
use super::repository::SegmentSet;
use super::segment::{self, REFS_RECORD};
use super::table::{Geometry, FANOUT};
use super::{BlobId, Repository};
use crate::Result;
use rand::Rng;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// Damaged objects → (problem, snapshots damaged).
type Findings = HashMap<String, (String, HashSet<String>)>;

/// What `check` verifies beyond structure.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Re-read and re-hash chunk data.
    pub read_data: bool,
    /// With `read_data`: only this percentage of chunks, chosen at random.
    pub sample_pct: Option<f64>,
}

/// One problem found.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CheckIssue {
    /// Object key or blob id concerned.
    pub object: String,
    pub problem: String,
    /// `volume/id` of the snapshots that cannot be restored because of it.
    pub snapshots: Vec<String>,
}

/// Result of `check`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct CheckReport {
    pub snapshots_checked: u64,
    pub tables_checked: u64,
    pub chunks_referenced: u64,
    pub chunks_read: u64,
    pub refcount_mismatches: u64,
    pub issues: Vec<CheckIssue>,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.issues.is_empty()
    }
}

impl Repository {
    /// Verify the repository (see module docs).
    pub async fn check(&self, opts: &CheckOptions) -> Result<CheckReport> {
        let set = self.load_segments().await?;
        let mut report = CheckReport::default();
        let mut expected: HashMap<BlobId, i64> = HashMap::new();
        let mut tables_seen: HashSet<BlobId> = HashSet::new();
        let mut chunks_seen: HashSet<BlobId> = HashSet::new();
        let mut bad: HashMap<String, (String, HashSet<String>)> = HashMap::new();
        // Pack sizes (or the error reading them), one HEAD per pack.
        let mut packs: HashMap<String, Result<u64, String>> = HashMap::new();
        let sample = opts.sample_pct.unwrap_or(100.0).clamp(0.0, 100.0) / 100.0;
        for m in self.live_roots(&set.markers, None) {
            report.snapshots_checked += 1;
            let snap = format!("{}/{}", m.volume, m.id);
            let geo = Geometry::new(m.size, m.chunk_size);
            let mut stack = Vec::new();
            for (i, id) in m.top_ids()?.into_iter().enumerate() {
                if !id.is_zero() {
                    *expected.entry(id).or_default() += 1;
                    stack.push((id, geo.depth - 1, i as u64));
                }
            }
            while let Some((id, level, index)) = stack.pop() {
                let first = tables_seen.insert(id);
                match self
                    .read_table(&set, &id, level, geo.table_len(level, index))
                    .await
                {
                    Ok(entries) => {
                        if first {
                            report.tables_checked += 1;
                        }
                        for (j, c) in entries.into_iter().enumerate() {
                            if c.is_zero() {
                                continue;
                            }
                            if first {
                                *expected.entry(c).or_default() += 1;
                            }
                            if level > 0 {
                                stack.push((c, level - 1, index * FANOUT + j as u64));
                            } else if chunks_seen.insert(c) {
                                report.chunks_referenced += 1;
                                self.check_chunk(
                                    &set,
                                    &c,
                                    opts.read_data && rand::rng().random::<f64>() < sample,
                                    &mut report,
                                    (&mut packs, &mut bad),
                                    &snap,
                                )
                                .await?;
                            } else if let Some(e) = bad.get_mut(&c.to_hex()) {
                                e.1.insert(snap.clone());
                            }
                        }
                    }
                    Err(e) => {
                        bad.entry(id.to_hex())
                            .or_insert_with(|| (format!("table: {e}"), HashSet::new()))
                            .1
                            .insert(snap.clone());
                    }
                }
            }
        }
        // Stored sums, streamed segment by segment.
        let mut stored: HashMap<BlobId, i64> = HashMap::new();
        for h in &set.refs {
            let recs = segment_records(self, h).await?;
            for r in recs.chunks_exact(REFS_RECORD) {
                let (id, d, _) = segment::decode_refs_record(h, r)?;
                *stored.entry(id).or_default() += d as i64;
            }
        }
        for (id, n) in &expected {
            let s = stored.get(id).copied().unwrap_or(0);
            if s != *n {
                report.refcount_mismatches += 1;
                report.issues.push(CheckIssue {
                    object: id.to_hex(),
                    problem: format!("refcount {s}, snapshots reference it {n} times"),
                    snapshots: vec![],
                });
            }
        }
        for (id, s) in &stored {
            if *s < 0 || (*s > 0 && !expected.contains_key(id)) {
                report.refcount_mismatches += 1;
                report.issues.push(CheckIssue {
                    object: id.to_hex(),
                    problem: format!("refcount {s}, no live snapshot references it"),
                    snapshots: vec![],
                });
            }
        }
        let mut bad: Vec<_> = bad.into_iter().collect();
        bad.sort_by(|a, b| a.0.cmp(&b.0));
        for (object, (problem, snaps)) in bad {
            let mut snapshots: Vec<String> = snaps.into_iter().collect();
            snapshots.sort();
            report.issues.push(CheckIssue {
                object,
                problem,
                snapshots,
            });
        }
        Ok(report)
    }

    async fn check_chunk(
        &self,
        set: &SegmentSet,
        id: &BlobId,
        read: bool,
        report: &mut CheckReport,
        (packs, bad): (&mut HashMap<String, Result<u64, String>>, &mut Findings),
        snap: &str,
    ) -> Result<()> {
        let problem = match self.locate(set, id).await? {
            None => Some("chunk missing from the index".to_string()),
            Some(loc) if read => {
                report.chunks_read += 1;
                self.read_blob(&loc, id)
                    .await
                    .err()
                    .map(|e| format!("chunk: {e}"))
            }
            Some(loc) => {
                if !packs.contains_key(&loc.pack) {
                    let head = self.store().head(&super::pack::pack_key(&loc.pack)).await;
                    packs.insert(
                        loc.pack.clone(),
                        head.map(|m| m.size).map_err(|e| e.to_string()),
                    );
                }
                match packs.get(&loc.pack) {
                    Some(Ok(size)) if *size >= loc.offset as u64 + loc.frame_len as u64 => None,
                    Some(Ok(_)) => Some(format!("pack {} too short", loc.pack)),
                    Some(Err(e)) => Some(format!("pack {}: {e}", loc.pack)),
                    None => None,
                }
            }
        };
        if let Some(p) = problem {
            bad.entry(id.to_hex())
                .or_insert_with(|| (p, HashSet::new()))
                .1
                .insert(snap.to_string());
        }
        Ok(())
    }
}

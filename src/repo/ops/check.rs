//! `check`: structure of every live snapshot, refcounts recomputed from the snapshots
//! against the stored sums, and optionally re-hashing data. Problems are reported with the
//! snapshots they damage.
//!
//! Cost: every distinct table is read once (a subtree already walked for an earlier
//! snapshot is not walked again), and chunk verifications go out in concurrent batches, so
//! a clean check costs ∝ the distinct data, not ∝ snapshots × volume size. Only when
//! something is damaged does a second walk visit every snapshot to name all it damages.
//! Memory ∝ the number of distinct blobs (counts are held in a map).

use crate::repo::format::segment::{self, Location, FREED, REFS_RECORD};
use crate::repo::format::segment::{flag_contribution, segment_records};
use crate::repo::format::table::Geometry;
use crate::repo::protocol::stale::lost_root_segments;
use crate::repo::repository::SegmentSet;
use crate::repo::walk::{walk_tree, TreeVisitor};
use crate::repo::{BlobId, Progress, Repository, SnapshotManifest};
use crate::Result;
use futures::stream::{self, StreamExt};
use rand::Rng;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Damaged objects → (problem, snapshots damaged).
type Findings = HashMap<String, (String, HashSet<String>)>;

/// Chunk verifications gathered before they are sent as one concurrent batch.
const VERIFY_BATCH: usize = 256;
/// Requests in flight while verifying a batch.
const VERIFY_CONCURRENCY: usize = 8;

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
    /// What is wrong with it (e.g. missing from the index, corrupt frame, refcount off).
    pub problem: String,
    /// `volume/id` of the snapshots that cannot be restored because of it.
    pub snapshots: Vec<String>,
}

/// Result of `check`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct CheckReport {
    /// Live snapshots walked (all volumes).
    pub snapshots_checked: u64,
    /// Distinct tables read and decoded (a table shared by several snapshots counts once).
    pub tables_checked: u64,
    /// Distinct chunks the live snapshots reference (all-zero chunks are not stored, so not
    /// counted); each is located in the index and its pack checked.
    pub chunks_referenced: u64,
    /// Chunks re-read and re-hashed (`read_data`; a sample of `chunks_referenced` with
    /// `sample_pct`); 0 without `read_data`.
    pub chunks_read: u64,
    /// Blobs whose stored reference count differs from the count the live snapshots imply
    /// (`check --repair` corrects them); each is also listed in `issues`.
    pub refcount_mismatches: u64,
    /// Every problem found, with the snapshots it damages; empty when the repository is clean.
    pub issues: Vec<CheckIssue>,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.issues.is_empty()
    }
}

/// What the counted refs segments say of one blob.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StoredCount {
    /// Sum of the deltas: the blob's reference count.
    pub sum: i64,
    /// Children contribution of a table (STORED + REVIVED − FREED flags): how many times
    /// its children are counted on its behalf.
    pub contribution: i64,
    /// Some record carries FREED.
    pub freed: bool,
}

/// The stored counts of every blob the counted refs segments name.
pub(crate) async fn stored_counts(
    repo: &Repository,
    set: &SegmentSet,
) -> Result<HashMap<BlobId, StoredCount>> {
    let mut stored: HashMap<BlobId, StoredCount> = HashMap::new();
    for h in &set.refs {
        let recs = segment_records(repo.store().as_ref(), h).await?;
        for r in recs.chunks_exact(REFS_RECORD) {
            let (id, d, flags) = segment::decode_refs_record(h, r)?;
            let e = stored.entry(id).or_default();
            e.sum += d as i64;
            e.contribution += flag_contribution(flags);
            e.freed |= flags & FREED != 0;
        }
    }
    Ok(stored)
}

/// How many times a live table's children are expected to be counted on its behalf: once,
/// or as often as its contribution says when that is more. Two writers that store the same
/// new table at once both count its children (a leak, released when the table is freed);
/// expecting once there would have `check --repair` lower the children below what the
/// table's later release takes away.
pub(crate) fn child_weight(stored: &HashMap<BlobId, StoredCount>, table: &BlobId) -> i64 {
    stored.get(table).map_or(1, |s| s.contribution.max(1))
}

/// State of one check run.
struct Walk<'a> {
    repo: &'a Repository,
    set: &'a SegmentSet,
    read_data: bool,
    sample: f64,
    progress: Option<&'a dyn Progress>,
    /// Chunk size of the snapshot being walked (progress is counted in volume bytes).
    chunk_bytes: u64,
    report: CheckReport,
    stored: &'a HashMap<BlobId, StoredCount>,
    /// Times the live snapshots reference each blob (tables and chunks).
    expected: HashMap<BlobId, i64>,
    tables_seen: HashSet<BlobId>,
    bad: Findings,
    /// Pack sizes (or the error reading them), one HEAD per pack.
    packs: HashMap<String, Result<u64, String>>,
    /// Chunks waiting for verification: (id, re-read it, first snapshot naming it).
    pending: Vec<(BlobId, bool, String)>,
    /// `volume/id` of the snapshot being walked.
    snap: String,
}

impl Walk<'_> {
    fn damaged(&mut self, object: String, problem: String, snap: &str) {
        self.bad
            .entry(object)
            .or_insert_with(|| (problem, HashSet::new()))
            .1
            .insert(snap.to_string());
    }

    /// Walk one snapshot, descending only into tables no earlier snapshot had.
    async fn snapshot(&mut self, m: &SnapshotManifest) -> Result<()> {
        self.report.snapshots_checked += 1;
        self.snap = format!("{}/{}", m.volume, m.id);
        self.chunk_bytes = m.chunk_size as u64;
        walk_tree(m, self).await
    }

    /// Verify the pending chunks: locate each, re-hash those chosen for reading, and check
    /// that the others' packs exist and are long enough (one HEAD per pack).
    async fn verify_pending(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let (repo, set) = (self.repo, self.set);
        let located: Vec<(BlobId, bool, String, Result<Option<Location>>)> = stream::iter(pending)
            .map(|(id, read, snap)| async move {
                let loc = repo.locate(set, &id).await;
                (id, read, snap, loc)
            })
            .buffered(VERIFY_CONCURRENCY)
            .collect()
            .await;
        let mut reads = Vec::new();
        let mut heads = Vec::new();
        for (id, read, snap, loc) in located {
            match loc? {
                None => self.damaged(id.to_hex(), "chunk missing from the index".into(), &snap),
                Some(loc) if read => reads.push((id, snap, loc)),
                Some(loc) => heads.push((id, snap, loc)),
            }
        }
        self.report.chunks_read += reads.len() as u64;
        let read_errors: Vec<(BlobId, String, String)> = stream::iter(reads)
            .map(|(id, snap, loc)| async move {
                let r = repo.read_blob(&loc, &id).await;
                r.err().map(|e| (id, snap, format!("chunk: {e}")))
            })
            .buffer_unordered(VERIFY_CONCURRENCY)
            .filter_map(|e| async move { e })
            .collect()
            .await;
        for (id, snap, problem) in read_errors {
            self.damaged(id.to_hex(), problem, &snap);
        }
        let unseen: HashSet<String> = heads
            .iter()
            .filter(|(_, _, loc)| !self.packs.contains_key(&loc.pack))
            .map(|(_, _, loc)| loc.pack.clone())
            .collect();
        let sizes: Vec<(String, Result<u64, String>)> = stream::iter(unseen)
            .map(|pack| async move {
                let head = repo
                    .store()
                    .head(&crate::repo::format::pack::pack_key(&pack))
                    .await;
                (pack, head.map(|m| m.size).map_err(|e| e.to_string()))
            })
            .buffer_unordered(VERIFY_CONCURRENCY)
            .collect()
            .await;
        self.packs.extend(sizes);
        for (id, snap, loc) in heads {
            let problem = match self.packs.get(&loc.pack) {
                Some(Ok(size)) if *size >= loc.offset as u64 + loc.frame_len as u64 => None,
                Some(Ok(_)) => Some(format!("pack {} too short", loc.pack)),
                Some(Err(e)) => Some(format!("pack {}: {e}", loc.pack)),
                None => None,
            };
            if let Some(p) = problem {
                self.damaged(id.to_hex(), p, &snap);
            }
        }
        Ok(())
    }

    /// Name every snapshot that references a damaged object (the first walk named only
    /// the first one). Walks all snapshots in full, so it runs only when there is damage.
    async fn attribute(&mut self, roots: &[Arc<SnapshotManifest>]) -> Result<()> {
        for m in roots {
            let mut a = Attribution {
                repo: self.repo,
                set: self.set,
                bad: &mut self.bad,
                snap: format!("{}/{}", m.volume, m.id),
            };
            walk_tree(m, &mut a).await?;
        }
        Ok(())
    }
}

impl TreeVisitor for Walk<'_> {
    fn advance(&mut self, chunks: u64) {
        if let Some(p) = self.progress {
            p.advance(chunks.saturating_mul(self.chunk_bytes));
        }
    }

    fn top(&mut self, id: &BlobId) {
        *self.expected.entry(*id).or_default() += 1;
    }

    fn first(&mut self, id: &BlobId) -> bool {
        self.tables_seen.insert(*id)
    }

    async fn table(&mut self, id: &BlobId, level: u8, count: usize) -> Result<Option<Vec<BlobId>>> {
        match self.repo.read_table(self.set, id, level, count).await {
            Ok(entries) => {
                self.report.tables_checked += 1;
                Ok(Some(entries))
            }
            Err(e) => {
                let snap = self.snap.clone();
                self.damaged(id.to_hex(), format!("table: {e}"), &snap);
                Ok(None)
            }
        }
    }

    async fn entry(&mut self, parent: &BlobId, level: u8, c: BlobId) -> Result<()> {
        let weight = child_weight(self.stored, parent);
        let n = self.expected.entry(c).or_default();
        let first = *n == 0;
        *n += weight;
        if level == 0 && first {
            self.report.chunks_referenced += 1;
            let read = self.read_data && rand::rng().random::<f64>() < self.sample;
            self.pending.push((c, read, self.snap.clone()));
            if self.pending.len() >= VERIFY_BATCH {
                self.verify_pending().await?;
            }
        }
        Ok(())
    }
}

/// The walk that names every snapshot reaching a damaged object: a damaged table's
/// subtree is not descended into, unreadable tables are skipped.
struct Attribution<'a> {
    repo: &'a Repository,
    set: &'a SegmentSet,
    bad: &'a mut Findings,
    snap: String,
}

impl TreeVisitor for Attribution<'_> {
    fn advance(&mut self, _chunks: u64) {}

    fn first(&mut self, _id: &BlobId) -> bool {
        true
    }

    async fn table(&mut self, id: &BlobId, level: u8, count: usize) -> Result<Option<Vec<BlobId>>> {
        if let Some(e) = self.bad.get_mut(&id.to_hex()) {
            e.1.insert(self.snap.clone());
            return Ok(None);
        }
        Ok(self.repo.read_table(self.set, id, level, count).await.ok())
    }

    async fn entry(&mut self, _parent: &BlobId, level: u8, c: BlobId) -> Result<()> {
        if level == 0 {
            if let Some(e) = self.bad.get_mut(&c.to_hex()) {
                e.1.insert(self.snap.clone());
            }
        }
        Ok(())
    }
}

/// Checks run, each on a fresh view, while gc runs overtake them (`check_with_progress`).
const CHECK_ATTEMPTS: usize = 3;

impl Repository {
    /// Verify the repository (see module docs).
    pub async fn check(&self, opts: &CheckOptions) -> Result<CheckReport> {
        self.check_with_progress(opts, None).await
    }

    /// `check`, reporting one stage ("check", in logical bytes of the live snapshots'
    /// volumes, whole chunks) so a caller can show how far a long `--read-data` run has come.
    pub async fn check_with_progress(
        &self,
        opts: &CheckOptions,
        progress: Option<&dyn Progress>,
    ) -> Result<CheckReport> {
        // A check that lost a race with a gc committed after its view (a superseded
        // segment or a repacked pack is gone, or its reads followed the gc to a newer view,
        // `follow.rs`) is run again on a fresh view; what a check reports after a view no
        // gc overtook, or after the last attempt, is reported as it is.
        let mut attempt = 1;
        loop {
            let set = self.load_view().await?;
            let r = self.check_view(&set, opts, progress).await.map(|r| r.0);
            let clean = matches!(&r, Ok(report) if report.is_clean()) && !set.followed();
            if clean
                || attempt == CHECK_ATTEMPTS
                || self.newest_gc_seq().await? <= set.markers.gc_seq_max
            {
                return r;
            }
            attempt += 1;
        }
    }

    /// `check` of one view, handing back the stored counts it summed so `check --repair`
    /// corrects against the same view without reading every refs segment again.
    pub(crate) async fn check_view(
        &self,
        set: &SegmentSet,
        opts: &CheckOptions,
        progress: Option<&dyn Progress>,
    ) -> Result<(CheckReport, HashMap<BlobId, StoredCount>)> {
        let stored = stored_counts(self, set).await?;
        let roots = self.live_roots(&set.markers, None);
        if let Some(p) = progress {
            let total = roots
                .iter()
                .map(|m| Geometry::new(m.size, m.chunk_size).chunks * m.chunk_size as u64)
                .sum();
            p.stage("check", total);
        }
        let mut walk = Walk {
            repo: self,
            set,
            read_data: opts.read_data,
            sample: opts.sample_pct.unwrap_or(100.0).clamp(0.0, 100.0) / 100.0,
            progress,
            chunk_bytes: 0,
            report: CheckReport::default(),
            stored: &stored,
            expected: HashMap::new(),
            tables_seen: HashSet::new(),
            bad: HashMap::new(),
            packs: HashMap::new(),
            pending: Vec::new(),
            snap: String::new(),
        };
        for m in &roots {
            walk.snapshot(m).await?;
        }
        walk.verify_pending().await?;
        if !walk.bad.is_empty() {
            walk.attribute(&roots).await?;
        }
        let mut findings = unusable_issues(set);
        findings.extend(missing_commit_issues(self, set).await?);
        if opts.read_data {
            findings.extend(pack_footer_issues(self, set).await?);
        }
        let Walk {
            mut report,
            expected,
            bad,
            ..
        } = walk;
        for (id, n) in &expected {
            let s = stored.get(id).map_or(0, |s| s.sum);
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
            let s = s.sum;
            if s < 0 || (s > 0 && !expected.contains_key(id)) {
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
        report.issues.extend(findings);
        Ok((report, stored))
    }
}

/// The objects the view left out (format-spec §11, "Damage containment"), with what each
/// one affects.
fn unusable_issues(set: &SegmentSet) -> Vec<CheckIssue> {
    set.unusable()
        .map(|u| {
            let mut snapshots = Vec::new();
            let problem = if u.stray {
                format!("stray object ({}); `check --repair` quarantines it", u.problem)
            } else if let Some(snap) = u.key.strip_prefix("snapshots/") {
                snapshots.push(snap.to_string());
                format!("root unreadable, the snapshot cannot be restored; its data is kept: {}", u.problem)
            } else if u.key.starts_with("tombstones/") {
                format!("tombstone unreadable: the snapshot stays deleted, its decrements do not count (a leak, never a loss): {}", u.problem)
            } else if u.key.starts_with("gc/") {
                format!("gc marker unreadable: its segments still count: {}", u.problem)
            } else {
                format!("segment unreadable: its records are unknown, so gc and delete refuse until `check --repair` rebuilds the index from the packs and quarantines it: {}", u.problem)
            };
            CheckIssue {
                object: u.key.clone(),
                problem,
                snapshots,
            }
        })
        .collect()
}

/// [`lost_root_segments`] as issues naming the lost snapshot.
async fn missing_commit_issues(repo: &Repository, set: &SegmentSet) -> Result<Vec<CheckIssue>> {
    Ok((lost_root_segments(repo, set).await?)
        .into_iter()
        .map(|(key, commit)| CheckIssue {
            object: key,
            problem: format!(
                "counts for nothing: its commit {commit} is missing or void, and its writer left no lease, intent or checkpoint (a lost root? the segment and its packs are kept; `check --repair` re-indexes what other snapshots need)"
            ),
            snapshots: vec![commit.trim_start_matches("snapshots/").to_string()],
        })
        .collect())
}

/// With `--read-data`: every counted pack's trailer and footer (its own index, what a
/// rebuild reads) must check out and agree with the frames' layout (3 requests a pack).
async fn pack_footer_issues(repo: &Repository, set: &SegmentSet) -> Result<Vec<CheckIssue>> {
    let packs: HashSet<String> = (set.index.iter())
        .flat_map(|h| h.meta.packs.iter())
        .filter(|p| !set.dead_packs.contains(*p))
        .cloned()
        .collect();
    let results: Vec<(String, Result<()>)> = stream::iter(packs)
        .map(|p| async move {
            let r = crate::repo::format::pack::pack_entries(repo.store().as_ref(), &p)
                .await
                .map(|_| ());
            (p, r)
        })
        .buffer_unordered(VERIFY_CONCURRENCY)
        .collect()
        .await;
    let mut out = Vec::new();
    for (pack, r) in results {
        match r {
            Ok(()) => {}
            Err(e) if crate::repo::error::is_damage(&e) => out.push(CheckIssue {
                object: crate::repo::format::pack::pack_key(&pack),
                problem: format!("pack footer or trailer: {e} (the pack can no longer be re-indexed from itself)"),
                snapshots: vec![],
            }),
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.object.cmp(&b.object));
    Ok(out)
}

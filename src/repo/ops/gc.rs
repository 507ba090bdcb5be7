//! Garbage collection: reclaim blobs freed by deletes, repack packs with much dead space,
//! compact segments, and clean up after dead writers.
//!
//! Safety (see format-spec "Concurrency"): a blob freed by a delete is collected only if
//! the delete's tombstone is older (store time) than every live lease's start minus
//! `SKEW`, and its count, re-summed now, is still zero. A running backup can only hold a
//! reference to a blob it saw with a positive count, so the delete that freed it committed
//! after the backup's lease began: that blob is not collected while the backup may commit.
//!
//! Crash ordering: new packs → new segments (index with repacked locations and the list of
//! dead packs; compacted refs) → gc marker `gc/<seq>` (create-if-absent, the commit point;
//! also makes concurrent gcs exclusive) → deletes of dead packs and superseded segments.

use crate::repo::format::ids::new_time_id;
use crate::repo::format::pack::{pack_entries, pack_key};
use crate::repo::format::segment::{
    bucket_records, decode_index_record, decode_refs_record, flag_contribution, SegmentHead,
    INDEX_RECORD, REFS_RECORD, STORED,
};
use crate::repo::protocol::commit::{commit_gc_marker, next_gc_marker};
use crate::repo::protocol::lease::{list_leases, Lease, SKEW};
use crate::repo::writer::Writer;
use crate::repo::{BlobId, BlobKind, Frame, Location, Progress, RepoError, Repository};
use crate::Result;
use bytes::Bytes;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

/// A pack is repacked when at least this fraction of its bytes is dead.
pub(crate) const REPACK_DEAD_FRACTION: f64 = 0.5;
/// Segments of one kind above which gc merges them into one (small under test so the
/// model test exercises compaction).
pub(crate) const COMPACT_AT: usize = if cfg!(test) { 4 } else { 32 };
/// Records (index and refs, over all input segments) compaction holds at once; tiny under
/// test so the schedule runner exercises groups and compactions written as several segments.
pub(crate) const COMPACT_GROUP_RECORDS: u64 = if cfg!(test) { 24 } else { 128 * 1024 };

/// How gc runs.
#[derive(Clone, Debug, Default)]
pub struct GcOptions {
    /// Decide and report only: the report says what a gc would do now, and nothing is
    /// written or deleted except the run's own lease, taken for the store's time (the cutoff)
    /// and removed at the end. Repacking is counted, not done; compaction reads the index
    /// to find the packs it would drop.
    pub dry_run: bool,
}

/// What a gc run did (or, with `dry_run`, would do). Field names are a stable JSON
/// interface.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct GcReport {
    /// A dry run: nothing was collected, the figures are what a gc would do now.
    pub dry_run: bool,
    /// Garbage blobs whose space this run reclaimed: their pack was deleted or repacked.
    /// Garbage left in a pack below the repack threshold is counted in `blobs_dead_kept`
    /// instead, so a later run does not report the same blobs as collected again.
    pub blobs_collected: u64,
    /// Packs deleted whole: every frame garbage, adopted packs a backup released, and packs
    /// whose every frame compaction found shadowed (orphans: `orphan_packs_deleted`).
    pub packs_deleted: u64,
    /// Packs whose dead share reached the repack threshold: live frames copied to a new pack,
    /// the old pack deleted.
    pub packs_repacked: u64,
    /// Store bytes freed: whole deleted packs, the dead frames of repacked packs, and orphan
    /// packs.
    pub bytes_reclaimed: u64,
    /// Bytes of live frames copied into new packs by repacking (upload cost of the run).
    pub bytes_rewritten: u64,
    /// Dead bytes left in packs below the repack threshold.
    pub dead_bytes_kept: u64,
    /// Garbage blobs left in packs below the repack threshold (like `dead_bytes_kept`, a
    /// state: reported by every run until their pack is repacked or deleted).
    pub blobs_dead_kept: u64,
    /// Packs no counted index segment names and no writer can still need, found by the
    /// periodic orphan sweep (format-spec §5, "Orphan packs"); their bytes are in
    /// `bytes_reclaimed`. Adopted packs a committed backup released (§12.2) are counted in
    /// `packs_deleted`.
    pub orphan_packs_deleted: u64,
    /// Index and refs segments merged into new ones and deleted by compaction (0 when this
    /// run did not compact).
    pub segments_compacted: u64,
    /// Writers whose lease expired (crashed or killed backups, deletes…) whose
    /// uncommitted objects this run removed, zombies included (format-spec §5).
    pub dead_writers_cleaned: u64,
    /// Packs holding garbage that are missing or corrupt (damage `check` reports): skipped.
    pub packs_unreadable: u64,
    /// Freed tables whose children were re-counted because a backup reused them.
    pub tables_revived: u64,
    /// Tables at count zero whose children were still counted on their behalf (racing
    /// deletes each left them referenced): this run released the children, which a later
    /// run collects (format-spec §7 item 1).
    pub tables_released: u64,
    /// Packs this run skipped because they are damaged (missing, a corrupt footer or a
    /// corrupt live frame): kept whole, neither repacked nor deleted; `check` names the
    /// snapshots they hurt. The CLI exits with 3 when this is not empty.
    pub damaged_packs: Vec<String>,
    /// Old gc markers this run deleted (format-spec §7 item 6: no segment names them any
    /// more and they predate the cutoff).
    pub gc_markers_deleted: u64,
    /// Roots whose writer committed and whose key is now missing (format-spec §11.1,
    /// "Lost roots"): damage, not a dead writer. Their segments and packs are kept and
    /// nothing is collected while any is listed (counts lack their increments). The CLI
    /// exits with 3 when this is not empty.
    pub roots_missing: Vec<String>,
    /// Store requests of every kind this run made.
    pub requests: u64,
}

/// Bytes of a segment's record area (the unit of the scan and compaction stages).
fn records_bytes(h: &SegmentHead) -> u64 {
    u64::from(h.fanout[256]) * h.record_size as u64
}

/// Contiguous bucket ranges whose records, summed over `segs`, stay within
/// [`COMPACT_GROUP_RECORDS`] (a bucket larger than that is a group of its own): compaction
/// holds one group at a time, so its memory is bounded whatever the repository's size.
fn bucket_groups<'a>(segs: impl Iterator<Item = &'a SegmentHead> + Clone) -> Vec<(u8, u8)> {
    let mut groups = Vec::new();
    let (mut lo, mut n) = (0u8, 0u64);
    for b in 0..=255u8 {
        let here: u64 = segs
            .clone()
            .map(|h| u64::from(h.fanout[b as usize + 1] - h.fanout[b as usize]))
            .sum();
        if n > 0 && n + here > COMPACT_GROUP_RECORDS {
            groups.push((lo, b - 1));
            (lo, n) = (b, 0);
        }
        n += here;
    }
    groups.push((lo, 255));
    groups
}

/// `entries` (the footer read at pack `name`'s key) when they list every location the
/// index gives for `garbage` in that pack (same id, offset and length); otherwise the
/// object is not this pack (swapped or misplaced) or its footer is damaged, and judging
/// which frames are live by it could delete frames other snapshots need: damage.
fn footer_agrees(
    name: &str,
    entries: Vec<crate::repo::format::pack::PackEntry>,
    garbage: &[(BlobId, Location)],
) -> Result<Vec<crate::repo::format::pack::PackEntry>> {
    let listed: HashSet<(BlobId, u32, u32)> = (entries.iter())
        .map(|e| (e.id, e.offset, e.frame_len))
        .collect();
    match garbage
        .iter()
        .find(|(id, l)| !listed.contains(&(*id, l.offset, l.frame_len)))
    {
        None => Ok(entries),
        Some((id, l)) => Err(RepoError::corrupt(
            &pack_key(name),
            format!(
                "footer does not list blob {id} at offset {} where the index locates it",
                l.offset
            ),
        )
        .into()),
    }
}

/// The live frames of a pack about to be repacked, each read with a ranged GET and
/// verified (crc32c, BLAKE3 = its id); `None` when one is damaged or missing: the caller
/// keeps the pack whole, so damage never stops gc (issue 13, defect 9) and gc never drops
/// the only copy of a frame a heal could still repair.
async fn live_frames(
    repo: &Repository,
    name: &str,
    live: &[crate::repo::format::pack::PackEntry],
) -> Result<Option<Vec<Frame>>> {
    let key = pack_key(name);
    let mut out = Vec::with_capacity(live.len());
    for e in live {
        let range = e.offset as u64..e.offset as u64 + e.frame_len as u64;
        let decoded = match repo.store().get_range(&key, range).await {
            Ok(bytes) => crate::repo::format::chunk::decode_frame(&key, &bytes, Some(e.id))
                .map(|(id, kind, plain)| (id, kind, plain.len(), bytes))
                .map_err(crate::Error::from),
            Err(err) => Err(err.into()),
        };
        match decoded {
            Ok((id, kind, plain_len, bytes)) => out.push(Frame {
                id,
                kind,
                plain_len: plain_len as u32,
                bytes: bytes.to_vec(),
            }),
            Err(err) if crate::repo::error::is_damage(&err) => {
                tracing::warn!(
                    "gc: pack {name} has a damaged live frame {}, kept: {err}",
                    e.id
                );
                return Ok(None);
            }
            Err(err) => return Err(err),
        }
    }
    Ok(Some(out))
}

impl Repository {
    /// Collect garbage. Safe to run alongside backups and deletes; one gc at a time
    /// commits (a second one fails with `GcConflict` without deleting anything).
    pub async fn gc(&self) -> Result<GcReport> {
        self.gc_with(&GcOptions::default(), None).await
    }

    /// What a gc would do now, writing and deleting nothing (see [`GcOptions::dry_run`]).
    pub async fn gc_plan(&self) -> Result<GcReport> {
        self.gc_with(&GcOptions { dry_run: true }, None).await
    }

    /// Bytes a gc would reclaim now (the volume service's estimate for its `clean:gc` fix).
    pub async fn gc_reclaimable_bytes(&self) -> Result<u64> {
        Ok(self.gc_plan().await?.bytes_reclaimed)
    }

    /// gc (or its dry run) reporting its stages (format-spec §7, README "JSON output"):
    /// `gc-scan` (record bytes of the deletes' refs segments), `gc-collect` (bytes of
    /// garbage frames), `gc-compact` (record bytes of the segments merged; total 0 when
    /// gc does not compact) and `gc-delete` (objects deleted after the commit; total 0 in
    /// a dry run).
    pub async fn gc_with(
        &self,
        opts: &GcOptions,
        progress: Option<&dyn Progress>,
    ) -> Result<GcReport> {
        let dry = opts.dry_run;
        let stage = |name: &str, total: u64| {
            if let Some(p) = progress {
                p.stage(name, total);
            }
        };
        let advance = |n: u64| {
            if let Some(p) = progress {
                p.advance(n);
            }
        };
        let before = self.counts();
        let holder = new_time_id();
        let lease = Lease::acquire(self.store().clone(), &holder, "gc", None).await?;
        let now = lease.started;
        let leases = list_leases(self.store().as_ref()).await?;
        let live: Vec<_> = leases
            .iter()
            .filter(|l| l.holder != holder && l.live_at(now))
            .collect();
        let earliest = live.iter().map(|l| l.started).min().unwrap_or(now).min(now);
        let cutoff = earliest.checked_sub(SKEW).unwrap_or(SystemTime::UNIX_EPOCH);
        let set = self.load_view().await?;
        // Damaged objects make what is garbage unknown (format-spec §11): refuse.
        if let Err(e) = set.ensure_no_damage() {
            lease.release().await;
            return Err(e.into());
        }
        if dry {
            self.refuse_if_copied(&set.markers).await?;
        } else {
            self.judge_markers(&set.markers, &holder).await?;
        }
        let (seq, marker_key) = next_gc_marker(&set);
        let mut w = Writer::new(self, lease.clone(), marker_key.clone(), "gc");
        let lost = crate::repo::protocol::stale::lost_writers(self, &set).await?;
        let mut report = GcReport {
            dry_run: dry,
            roots_missing: lost.roots.values().cloned().collect(),
            ..GcReport::default()
        };

        // 1. Candidates and protection (decrements of release segments), revival, and the
        // release of tables at zero whose children are still counted (gc_select.rs).
        stage("gc-scan", super::gc_select::scan_bytes(&set));
        let mut sel = super::gc_select::select(self, &set, cutoff, &mut w, &advance).await?;
        report.tables_revived = sel.revived;
        report.tables_released = sel.released;
        report.damaged_packs.extend(sel.damaged.iter().cloned());
        if sel.halt || !lost.roots.is_empty() {
            // Unknown children counts (halt), or counts lacking a lost root's increments
            // (a blob at zero may be one the root reaches): collect nothing this run (and
            // keep the decrements identifiable on halt: no compaction, below).
            sel.candidates.clear();
        }
        let protected = &sel.protected;
        let processed_refs = &sel.processed_refs;
        // 2. Garbage by pack.
        let mut by_pack: HashMap<String, Vec<(BlobId, Location)>> = HashMap::new();
        for id in &sel.candidates {
            if protected.contains(id)
                || self.refcount(&set, id).await? + w.own_delta(id).await? != 0
            {
                continue;
            }
            if let Some(loc) = self.locate(&set, id).await? {
                by_pack
                    .entry(loc.pack.clone())
                    .or_default()
                    .push((*id, loc));
            }
        }
        // 3. Delete whole-dead packs, repack mostly-dead ones.
        stage(
            "gc-collect",
            by_pack
                .values()
                .flatten()
                .map(|(_, l)| u64::from(l.frame_len))
                .sum(),
        );
        let mut dead_packs: Vec<String> = set.dead_packs.iter().cloned().collect();
        for (name, garbage) in &by_pack {
            // A missing or corrupt pack holds no space to reclaim; its live frames are
            // damage that `check` reports with the snapshots it hurts (and a service mend
            // heals). gc skips it — deleting nothing — instead of failing on every run.
            let read = pack_entries(self.store().as_ref(), name).await;
            let entries = match read.and_then(|e| footer_agrees(name, e, garbage)) {
                Ok(entries) => entries,
                Err(e) if crate::repo::error::is_damage(&e) => {
                    tracing::warn!("gc: pack {name} unreadable, its garbage skipped: {e}");
                    report.packs_unreadable += 1;
                    report.damaged_packs.push(name.clone());
                    advance(garbage.iter().map(|(_, l)| u64::from(l.frame_len)).sum());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let garbage_ids: HashSet<BlobId> = garbage.iter().map(|g| g.0).collect();
            let (mut live, mut dead_bytes, mut total) = (Vec::new(), 0u64, 0u64);
            for e in entries {
                total += e.frame_len as u64;
                let is_live = if garbage_ids.contains(&e.id) {
                    false
                } else {
                    let here = self
                        .locate(&set, &e.id)
                        .await?
                        .is_some_and(|l| &l.pack == name);
                    here && (protected.contains(&e.id)
                        || self.refcount(&set, &e.id).await? + w.own_delta(&e.id).await? > 0)
                };
                if is_live {
                    live.push(e);
                } else {
                    dead_bytes += e.frame_len as u64;
                }
            }
            if live.is_empty() {
                report.blobs_collected += garbage.len() as u64;
                report.packs_deleted += 1;
                report.bytes_reclaimed += total;
                w.dead_packs.push(name.clone());
            } else if dead_bytes as f64 >= REPACK_DEAD_FRACTION * total as f64 {
                if !dry {
                    // Every live frame is read and verified before any is written: one that
                    // is damaged keeps the whole pack (neither repacked nor deleted).
                    let Some(frames) = live_frames(self, name, &live).await? else {
                        report.damaged_packs.push(name.clone());
                        advance(garbage.iter().map(|(_, l)| u64::from(l.frame_len)).sum());
                        continue;
                    };
                    for f in &frames {
                        w.add(f).await?;
                    }
                }
                report.blobs_collected += garbage.len() as u64;
                report.bytes_rewritten += live.iter().map(|e| e.frame_len as u64).sum::<u64>();
                report.packs_repacked += 1;
                report.bytes_reclaimed += dead_bytes;
                w.dead_packs.push(name.clone());
            } else {
                report.blobs_dead_kept += garbage.len() as u64;
                report.dead_bytes_kept += dead_bytes;
            }
            advance(garbage.iter().map(|(_, l)| u64::from(l.frame_len)).sum());
        }
        // 3b. Adopted packs that a committed backup did not use (§12.2), once old enough.
        let (expired, waiting) = {
            let named = crate::repo::protocol::stale::named_packs(&set);
            crate::repo::protocol::stale::released_packs(&set, &named, now)
        };
        report.packs_deleted += expired.len() as u64;
        w.dead_packs.extend(expired);
        dead_packs.extend(w.dead_packs.iter().cloned());
        // 4. Compaction (amortised: only when segments pile up).
        let mut superseded: Vec<String> = Vec::new();
        // Not in a run that released tables: its own records must stay identifiable as
        // decrements, and a compacted sum for the same blob would hide them (the
        // writer keeps one record per blob). The next run compacts.
        let compacting = !sel.halt
            && sel.released == 0
            && (set.index.len() > COMPACT_AT || set.refs.len() > COMPACT_AT);
        stage(
            "gc-compact",
            match compacting {
                true => set
                    .index
                    .iter()
                    .chain(processed_refs.iter())
                    .map(|h| records_bytes(h))
                    .sum(),
                false => 0,
            },
        );
        if compacting {
            let dead: HashSet<String> = dead_packs.iter().cloned().collect();
            let mut named: HashSet<String> = HashSet::new();
            superseded.extend(set.index.iter().map(|h| h.key.clone()));
            superseded.extend(processed_refs.iter().map(|h| h.key.clone()));
            w.supersedes = superseded.clone();
            // Every index segment is superseded: releases not yet due move into ours (our
            // marker is younger than theirs, so they wait at least as long).
            w.released = waiting;
            let inputs = set.index.iter().chain(processed_refs.iter()).map(|h| &**h);
            // Bucket group by bucket group (an id lives in one bucket, so each group is
            // complete on its own); the writer's buffer goes out as a segment whenever it
            // fills: all of them carry this gc's commit and count only once its marker exists.
            for (lo, hi) in bucket_groups(inputs) {
                let group_bytes: u64 = set
                    .index
                    .iter()
                    .chain(processed_refs.iter())
                    .map(|h| h.bucket_range(hi).end - h.bucket_range(lo).start)
                    .sum();
                let mut seen: HashSet<BlobId> = HashSet::new();
                let mut tables: HashSet<BlobId> = HashSet::new();
                for h in &set.index {
                    let recs = bucket_records(self.store().as_ref(), h, lo, hi).await?;
                    for r in recs.chunks_exact(INDEX_RECORD) {
                        let (id, loc) = decode_index_record(h, r)?;
                        if !dead.contains(&loc.pack) && seen.insert(id) {
                            if loc.kind == BlobKind::Table {
                                tables.insert(id);
                            }
                            named.insert(loc.pack.clone());
                            if !dry {
                                w.add_location(id, loc);
                            }
                        }
                    }
                }
                // A dry run needs only which packs stay named (for the shadowed ones).
                if dry {
                    advance(group_bytes);
                    continue;
                }
                let mut contribution: HashMap<BlobId, i64> = HashMap::new();
                for h in processed_refs {
                    let recs = bucket_records(self.store().as_ref(), h, lo, hi).await?;
                    for r in recs.chunks_exact(REFS_RECORD) {
                        let (id, delta, flags) = decode_refs_record(h, r)?;
                        w.add_ref(id, delta as i64, 0);
                        *contribution.entry(id).or_default() += flag_contribution(flags);
                    }
                }
                // The compacted record carries a located table's contribution over the
                // processed segments exactly (adjustment bits beyond what STORED says): a
                // table stored by two writers at once has 2; one stored, freed by a delete
                // not yet processed (its FREED stays counted) and stored again has 2 here
                // and −1 outside. A chunk's FREED flags carry no contribution, and the
                // records of a collected blob (located nowhere) are dropped.
                for (id, c) in contribution {
                    if tables.contains(&id) || c > 0 {
                        let flags = if c > 0 { STORED } else { 0 };
                        w.add_ref_with_contribution(id, 0, flags, c);
                    }
                }
                if w.buffered_records() >= COMPACT_GROUP_RECORDS as usize {
                    w.flush().await?;
                }
                advance(group_bytes);
            }
            // A pack whose every frame is shadowed by a newer copy of the same blob (two
            // writers stored it concurrently, or it was stored again after being freed)
            // is named by no compacted location: no reader can reach it any more.
            let mut shadowed: Vec<String> = set
                .index
                .iter()
                .flat_map(|h| h.meta.packs.iter())
                .filter(|p| !dead.contains(*p) && !named.contains(*p))
                .cloned()
                .collect::<HashSet<String>>()
                .into_iter()
                .collect();
            shadowed.sort();
            report.packs_deleted += shadowed.len() as u64;
            w.dead_packs.extend(shadowed.iter().cloned());
            dead_packs.extend(shadowed);
            report.segments_compacted = superseded.len() as u64;
        }
        // 4b. Orphan packs (double faults, earlier builds): at most once per period.
        let orphans = match crate::repo::protocol::stale::sweep_due(self, now).await? {
            true => Some(
                crate::repo::protocol::stale::find_orphan_packs(
                    self, &set, &leases, &holder, now, &lost,
                )
                .await?,
            ),
            false => None,
        };
        if let Some(o) = &orphans {
            report.orphan_packs_deleted = o.keys.len() as u64;
            report.bytes_reclaimed += o.bytes;
        }
        if dry {
            report.dead_writers_cleaned = leases
                .iter()
                .filter(|l| l.holder != holder && !l.live_at(now))
                .count() as u64;
            stage("gc-delete", 0);
            w.finish().await;
            report.requests = self.counts().since(&before).total();
            return Ok(report);
        }
        // A run that released tables committed decrements: later runs must treat its refs
        // segments as a release (protected until its marker is older than their cutoff).
        let releases = sel.released > 0;
        commit_gc_marker(self, &mut w, &lease, seq, &marker_key, releases).await?;
        // 5. Committed: physical deletes (idempotent; a crash here is finished next time).
        let mut doomed: Vec<String> = dead_packs.iter().map(|p| pack_key(p)).collect();
        for h in set.index.iter().chain(set.refs.iter()) {
            doomed.extend(h.meta.supersedes.iter().cloned());
        }
        doomed.extend(superseded.iter().cloned());
        let mut tombstones: Vec<String> = Vec::new();
        // Deletes whose decrements now live only in the compacted segment: their roots and
        // tombstones are no longer needed.
        if !superseded.is_empty() {
            for (tkey, (t, _)) in &set.markers.tombstones {
                let all_gone = processed_refs
                    .iter()
                    .filter(|h| &h.meta.commit == tkey)
                    .count()
                    > 0
                    && set
                        .refs
                        .iter()
                        .filter(|h| &h.meta.commit == tkey)
                        .all(|h| superseded.contains(&h.key));
                if all_gone {
                    doomed.push(crate::repo::format::manifest::root_key(&t.volume, &t.id));
                    tombstones.push(tkey.clone());
                    // Void generations of the same snapshot go with it.
                    let snapshot = (t.volume.clone(), t.id.clone());
                    let all = set.markers.tombstone_keys.get(&snapshot).into_iter();
                    tombstones.extend(
                        all.flatten()
                            .map(|(_, k)| k)
                            .filter(|k| *k != tkey)
                            .cloned(),
                    );
                }
            }
        }
        let dead_writers: Vec<_> = leases
            .iter()
            .filter(|l| l.holder != holder && !l.live_at(now))
            .collect();
        let retired = super::gc_select::retired_markers(&set, seq, cutoff);
        stage(
            "gc-delete",
            (doomed.len()
                + tombstones.len()
                + retired.len()
                + dead_writers.len()
                + orphans.as_ref().map_or(0, |o| o.keys.len())) as u64,
        );
        self.store().delete_batch(&doomed).await?;
        advance(doomed.len() as u64);
        // Only after their roots are gone: a batch delete is not atomic on every store (and
        // is split into several requests), and a root left without its tombstone would be
        // a live snapshot again whose decrements were already applied.
        if !tombstones.is_empty() {
            self.store().delete_batch(&tombstones).await?;
            advance(tombstones.len() as u64);
        }
        if let Some(o) = orphans {
            self.store().delete_batch(&o.keys).await?;
            advance(o.keys.len() as u64);
            if o.complete {
                let body = format!(
                    "{{\"holder\":\"{holder}\",\"packs_deleted\":{}}}",
                    o.keys.len()
                );
                self.store()
                    .put(crate::repo::protocol::stale::SWEEP_KEY, Bytes::from(body))
                    .await?;
            }
        }
        // 5b. gc markers that commit nothing any more (after everything above: a crash
        // before this only leaves them for the next run).
        if !retired.is_empty() {
            self.store().delete_batch(&retired).await?;
            advance(retired.len() as u64);
            report.gc_markers_deleted = retired.len() as u64;
        }
        // Their verdicts last: a verdict outliving its marker is only a small leak.
        let gone = |(k, _): &&(String, String)| {
            doomed.contains(k) || tombstones.contains(k) || retired.contains(k)
        };
        let verdicts: Vec<String> = (set.markers.judged.iter().filter(gone))
            .map(|(k, h)| crate::repo::protocol::verdict::verdict_key(k, h))
            .chain(
                (set.markers.judged_void.iter().filter(gone))
                    .map(|(k, h)| crate::repo::protocol::verdict::void_verdict_key(k, h)),
            )
            .collect();
        if !verdicts.is_empty() {
            self.store().delete_batch(&verdicts).await?;
        }
        // 6. Dead writers.
        // A lost root's writer is damage, not a dead writer: kept as found.
        for l in dead_writers {
            if lost.roots.contains_key(&l.holder) {
                continue;
            }
            crate::repo::protocol::stale::clean_dead_writer(self, &set, &l.holder).await?;
            self.store().delete_batch(&l.keys).await?;
            report.dead_writers_cleaned += 1;
            advance(1);
        }
        // 6b. Zombies: writers judged dead that wrote on, which no lease names any more.
        report.dead_writers_cleaned +=
            crate::repo::protocol::stale::sweep_unleased(self, &set, &leases, now, &lost).await?;
        w.finish().await;
        report.requests = self.counts().since(&before).total();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(per_bucket: impl Fn(usize) -> u32) -> SegmentHead {
        let mut fanout = vec![0u32];
        for b in 0..256 {
            fanout.push(fanout[b] + per_bucket(b));
        }
        SegmentHead {
            key: "index/x".into(),
            record_size: INDEX_RECORD,
            fanout,
            bucket_crc: vec![0; 256],
            meta: Default::default(),
            records_at: 0,
        }
    }

    /// Groups tile 0..=255 in order, and each holds at most the limit unless it is one
    /// bucket that alone exceeds it.
    #[test]
    fn bucket_groups_tile_the_buckets_within_the_limit() {
        let a = head(|b| (b % 7) as u32);
        let b = head(|b| if b == 100 { 1000 } else { (b % 3) as u32 });
        let segs = [a, b];
        let groups = bucket_groups(segs.iter());
        assert!(groups.len() > 2, "{groups:?}");
        let mut next = 0u32;
        for &(lo, hi) in &groups {
            assert_eq!(u32::from(lo), next, "{groups:?}");
            assert!(lo <= hi);
            let n: u64 = segs
                .iter()
                .map(|h| u64::from(h.fanout[hi as usize + 1] - h.fanout[lo as usize]))
                .sum();
            assert!(n <= COMPACT_GROUP_RECORDS || lo == hi, "{lo}..={hi}: {n}");
            next = u32::from(hi) + 1;
        }
        assert_eq!(next, 256);
        assert_eq!(bucket_groups([head(|_| 0)].iter()), vec![(0, 255)]);
    }
}

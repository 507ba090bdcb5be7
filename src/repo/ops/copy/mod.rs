//! `copy`: copy one snapshot, or a volume's whole history oldest-first, into another
//! repository, keeping snapshot ids, parents, created times, user data and base identity.
//!
//! Same chunk size: the source tree is walked top-down and every table the target can
//! already reference (reuse rule: committed with a positive count and located by its index,
//! or written by this copy) is skipped with its whole subtree, so an incremental copy reads
//! and uploads only what the new snapshot changed. Chunks the target has are not sent.
//! Frames are copied verbatim after their crc and BLAKE3 check (no recompression).
//!
//! Different chunk sizes: the snapshot is read through the source's tables and re-chunked
//! into the target's size ([`rechunk`]); the report says so.
//!
//! Either way the target is written by the backup writer with the backup's commit step
//! ([`crate::repo::snapshot_writer`], which commits through
//! [`crate::repo::protocol::commit`]): lease → packs → index and refs segments → lease renewal → root
//! (create-if-absent). Each snapshot is one commit, and snapshots the target already has
//! are skipped, so a copy that dies resumes at the first snapshot it had not committed.

mod fetch;
mod heal;
mod rechunk;

pub use heal::{heal, HealReport};

use crate::repo::format::ids::new_time_id;
use crate::repo::format::manifest::SnapshotManifest;
use crate::repo::format::segment::STORED;
use crate::repo::format::table::{self, Geometry, FANOUT};
use crate::repo::protocol::lease::Lease;
use crate::repo::repository::{check_names, check_volume, SegmentSet};
use crate::repo::snapshot_writer::SnapshotWriter;
use crate::repo::{BlobId, BlobKind, Frame, Location, Progress, RepoError, Repository};
use crate::Result;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Source frames gathered before they are fetched and added (bounds memory per batch).
const BATCH_BYTES: u64 = 32 << 20;

/// What to copy.
#[derive(Clone, Default)]
pub struct CopyOptions {
    /// Volume whose snapshots are copied (same name in both repositories).
    pub volume: String,
    /// One snapshot; `None` = every live snapshot of the volume, oldest first.
    pub snapshot: Option<String>,
    /// Stage `copy`, counted in logical bytes of the snapshots handled (copied or skipped).
    pub progress: Option<Arc<dyn Progress>>,
    /// Checkpoint interval within one snapshot (format-spec §12.4); `None` = the backup's
    /// default, zero = after every batch that sealed a data pack.
    pub checkpoint_interval: Option<Duration>,
}

/// What a copy did. Field names match `BackupReport`'s where they mean the same.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CopyReport {
    /// Volume copied.
    pub volume: String,
    /// Snapshot ids committed in the target by this run, oldest first.
    pub copied: Vec<String>,
    /// Snapshot ids the target already had.
    pub skipped: Vec<String>,
    /// Number of snapshots committed in the target (length of `copied`).
    pub snapshots_copied: u64,
    /// Number of snapshots the target already had (length of `skipped`).
    pub snapshots_skipped: u64,
    /// True when the chunk sizes differ and the data was re-chunked.
    pub rechunked: bool,
    /// Chunk size of the source repository, in bytes.
    pub source_chunk_size: u32,
    /// Chunk size of the target repository, in bytes.
    pub target_chunk_size: u32,
    /// Bytes downloaded from the source repository.
    pub bytes_read: u64,
    /// Bytes uploaded to the target repository.
    pub bytes_uploaded: u64,
    /// Requests against both repositories.
    pub requests: u64,
    /// Chunks stored in the target.
    pub chunks_new: u64,
    /// Chunks the target already had (not sent).
    pub chunks_reused: u64,
    /// Tables stored in the target.
    pub tables_new: u64,
    /// Subtrees skipped because the target already had their table.
    pub subtrees_skipped: u64,
    /// Killed copies whose checkpoint this run took over (their chunks are not sent again).
    pub resumed_from: Vec<String>,
    /// Chunks of those checkpoints offered for reuse.
    pub blobs_adopted: u64,
}

/// Copy snapshots of `opts.volume` from `from` to `to` (see module docs).
pub async fn copy(from: &Repository, to: &Repository, opts: &CopyOptions) -> Result<CopyReport> {
    check_volume(&opts.volume)?;
    if let Some(id) = &opts.snapshot {
        check_names(&opts.volume, id)?;
    }
    let (from_before, to_before) = (from.counts(), to.counts());
    let src_set = from.load_segments().await?;
    let mut snaps = from.live_roots(&src_set.markers, Some(&opts.volume));
    snaps.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
    if let Some(id) = &opts.snapshot {
        snaps.retain(|m| &m.id == id);
        if snaps.is_empty() {
            return Err(RepoError::SnapshotNotFound {
                volume: opts.volume.clone(),
                id: id.clone(),
            }
            .into());
        }
    }
    // Every root key the target holds, even tombstoned ones: a root is never re-created.
    let present: HashSet<String> = to
        .list_all(&format!("snapshots/{}/", opts.volume))
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    let mut report = CopyReport {
        volume: opts.volume.clone(),
        rechunked: snaps.iter().any(|m| m.chunk_size != to.chunk_size()),
        source_chunk_size: from.chunk_size(),
        target_chunk_size: to.chunk_size(),
        ..Default::default()
    };
    if let Some(p) = &opts.progress {
        p.stage("copy", snaps.iter().map(|m| m.size).sum());
    }
    for m in snaps {
        let done = if present.contains(&m.key()) {
            false
        } else {
            let interval = opts
                .checkpoint_interval
                .unwrap_or(crate::backup::DEFAULT_CHECKPOINT_INTERVAL);
            copy_one(from, &src_set, to, &m, &mut report, interval).await?
        };
        if done {
            report.copied.push(m.id.clone());
        } else {
            report.skipped.push(m.id.clone());
        }
        if let Some(p) = &opts.progress {
            p.advance(m.size);
        }
    }
    report.snapshots_copied = report.copied.len() as u64;
    report.snapshots_skipped = report.skipped.len() as u64;
    let (f, t) = (
        from.counts().since(&from_before),
        to.counts().since(&to_before),
    );
    report.bytes_read = f.bytes_downloaded;
    report.bytes_uploaded = t.bytes_uploaded;
    report.requests = f.total() + t.total();
    Ok(report)
}

/// Copy one snapshot as one commit; false if the target got the same root first.
async fn copy_one(
    from: &Repository,
    src_set: &SegmentSet,
    to: &Repository,
    m: &SnapshotManifest,
    report: &mut CopyReport,
    interval: Duration,
) -> Result<bool> {
    let before = to.counts();
    // A holder of its own (not the snapshot id), so a killed copy's lease never blocks the
    // re-run; the lease comes before the target's view, as for a backup.
    let holder = new_time_id();
    let lease = Lease::acquire(to.store().clone(), &holder, "copy", Some(&m.volume)).await?;
    let r: Result<bool> = async {
        let set = to.load_segments().await?;
        let (mut sw, adopted) =
            SnapshotWriter::copy(to, &set, &lease, m.key(), &m.volume, m.size, interval).await?;
        if let Some((holder, n)) = adopted {
            report.resumed_from.push(holder);
            report.blobs_adopted += n;
        }
        let mut root = m.clone();
        if m.chunk_size != to.chunk_size() {
            let top = rechunk::rechunk(from, src_set, &mut sw, m, report).await?;
            root.chunk_size = to.chunk_size();
            root.depth = sw.depth();
            root.top = top.iter().map(BlobId::to_hex).collect();
        } else {
            let top = m.top_ids()?;
            copy_tree(from, src_set, &mut sw, m, report).await?;
            sw.add_top_refs(&top);
        }
        root.writer = holder;
        root.stats.new_bytes = sw.new_chunk_bytes();
        sw.commit_root(&mut root, &before).await
    }
    .await;
    if r.is_err() {
        // A failed copy stops for good: a re-run may adopt its checkpoint at once.
        lease.abandon().await;
    }
    r
}

/// Chunks waiting to be fetched from the source in one batch.
#[derive(Default)]
struct Pending {
    blobs: Vec<(BlobId, Location)>,
    ids: HashSet<BlobId>,
    bytes: u64,
}

/// Walk `m`'s tree top-down, storing in `w` every table and chunk the target cannot reuse.
async fn copy_tree(
    from: &Repository,
    src_set: &SegmentSet,
    w: &mut SnapshotWriter<'_>,
    m: &SnapshotManifest,
    report: &mut CopyReport,
) -> Result<()> {
    let geo = Geometry::new(m.size, m.chunk_size);
    let mut stack: Vec<(BlobId, u8, u64)> = m
        .top_ids()?
        .into_iter()
        .enumerate()
        .filter(|(_, id)| !id.is_zero())
        .map(|(i, id)| (id, geo.depth - 1, i as u64))
        .collect();
    let mut pending = Pending::default();
    while let Some((id, level, index)) = stack.pop() {
        if w.reusable(&id).await? {
            report.subtrees_skipped += 1;
            continue;
        }
        let entries = from
            .read_table(src_set, &id, level, geo.table_len(level, index))
            .await?;
        let plain = table::encode(level, &entries);
        w.add(&Frame::encode_with_id(BlobKind::Table, &plain, id))
            .await?;
        report.tables_new += 1;
        for e in entries.iter().filter(|e| !e.is_zero()) {
            w.add_ref(*e, 1, 0);
        }
        w.add_ref(id, 0, STORED);
        for (j, c) in entries.into_iter().enumerate() {
            if c.is_zero() {
                continue;
            }
            if level > 0 {
                stack.push((c, level - 1, index * FANOUT + j as u64));
                continue;
            }
            if pending.ids.contains(&c) || w.reusable(&c).await? {
                w.use_adoptable(&c);
                report.chunks_reused += 1;
                continue;
            }
            let loc = from
                .locate(src_set, &c)
                .await?
                .ok_or_else(|| RepoError::MissingBlob {
                    id: c.to_hex(),
                    context: format!("snapshot {}/{} in the copy source", m.volume, m.id),
                })?;
            pending.bytes += loc.frame_len as u64;
            pending.ids.insert(c);
            pending.blobs.push((c, loc));
            if pending.bytes >= BATCH_BYTES {
                add_fetched(from, src_set, w, std::mem::take(&mut pending), report).await?;
                w.checkpoint_if_due(0).await?;
            }
        }
    }
    add_fetched(from, src_set, w, pending, report).await
}

/// Fetch a batch of source chunks (verified) and add their frames verbatim.
async fn add_fetched(
    from: &Repository,
    src_set: &SegmentSet,
    w: &mut SnapshotWriter<'_>,
    pending: Pending,
    report: &mut CopyReport,
) -> Result<()> {
    for f in fetch::fetch(from, src_set, pending.blobs).await? {
        w.add(&f.frame).await?;
        report.chunks_new += 1;
    }
    Ok(())
}

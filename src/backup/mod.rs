//! Backup pipeline: read → zero-detect → hash → dedup → compress → pack → upload → commit.
//!
//! Memory is bounded: a bounded channel of chunk buffers between the reader thread and a
//! small pool of blocking hash/compress tasks, at most a few packs in flight, one path of
//! tables, and segment buffers flushed at a fixed record count.
//!
//! Commit order (crash-safe): packs → index segment → refs segment → lease check → root
//! manifest (create-if-absent). A crash before the root leaves only uncommitted objects.

mod qcow2;
mod resume;
mod source;

pub use crate::repo::Progress;
pub use qcow2::{
    backup_image, backup_image_snapshot, identity_of, ImageSnapshotSource, SNAPSHOT_PREFIX,
};
pub use source::{check_source_kind, BaseIdentity, BlockSource, RawSource, SourceRange};

use crate::repo::format::ids::new_time_id;
use crate::repo::repository::SegmentSet;
use crate::repo::snapshot_writer::{BackupJob, Counters, NewSnapshot, SnapshotWriter};
use crate::repo::{BlobId, BlobKind, Frame, Lease, RepoError, Repository, SnapshotManifest};
use crate::Result;
use futures::StreamExt;
use serde::Serialize;
use std::sync::Arc;

/// Chunk buffers queued between reader and hashers.
const QUEUE: usize = 16;
/// Hash/compress tasks in parallel.
const WORKERS: usize = 3;

/// What to back up and how to label it.
#[derive(Clone, Default)]
pub struct BackupOptions {
    /// Volume the snapshot belongs to; its latest snapshot is the default parent.
    pub volume: String,
    /// Parent snapshot id; `None` = the volume's latest snapshot.
    pub parent: Option<String>,
    /// Caller's label, stored verbatim in the root manifest.
    pub user_data: serde_json::Value,
    /// Receives stage `backup`, counted in source bytes visited.
    pub progress: Option<Arc<dyn Progress>>,
    /// Snapshot id to use (a time id, format-spec/repository.md §2); `None` = a fresh one. Lets a caller name
    /// something else after the snapshot before the backup starts (the qcow2 path names
    /// its internal snapshot `island-<id>`).
    pub id: Option<String>,
    /// How often a running backup makes its work durable for a re-run to resume
    /// (format-spec §12): at most this often, and only after a new data pack. `None` =
    /// [`DEFAULT_CHECKPOINT_INTERVAL`]; zero = after every data pack.
    pub checkpoint_interval: Option<std::time::Duration>,
}

/// Default checkpoint interval: the lease renewal period, so a killed backup loses at
/// most about five minutes of uploads and a long backup writes few extra segments.
pub const DEFAULT_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// What a backup did. Field names are a stable JSON interface.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BackupReport {
    /// Id of the committed snapshot.
    pub id: String,
    /// Volume it belongs to.
    pub volume: String,
    /// Snapshot recorded as its parent (the one it was planned against).
    pub parent: Option<String>,
    /// True when only ranges the source reported as changed were read.
    pub incremental: bool,
    /// Source bytes read by this run (not counting what a resumed run skipped).
    pub bytes_read: u64,
    /// Bytes sent to the store, metadata included.
    pub bytes_uploaded: u64,
    /// Store requests of every kind.
    pub requests: u64,
    /// Store writes, conditional ones included.
    pub puts: u64,
    /// Chunks stored because the repository could not reuse them.
    pub chunks_new: u64,
    /// Chunks referenced without upload: equal to the parent's, or already in the
    /// repository.
    pub chunks_reused: u64,
    /// Chunks that read as zero (never stored).
    pub chunks_zero: u64,
    /// Bytes of chunks whose content differs from the parent snapshot.
    pub bytes_changed: u64,
    /// bytes_uploaded / bytes_changed (0 when nothing changed).
    pub amplification: f64,
    /// Holder (snapshot id) of a killed run whose checkpoint this run resumed.
    pub resumed_from: Option<String>,
    /// Blobs of the killed run taken over without upload.
    pub blobs_adopted: u64,
    /// Source bytes the killed run had already processed, not read again.
    pub bytes_skipped: u64,
    /// Packs the killed run sealed after its last checkpoint whose chunks this run took
    /// over (read back from the packs' footers, format-spec §12.2).
    pub tail_packs_adopted: u64,
}

enum Item {
    Zero(u64),
    Data {
        idx: u64,
        id: BlobId,
        frame: Option<Frame>,
        plain: Option<Vec<u8>>,
    },
}

/// Chunk indices to visit, in order, with whether they are known zero.
fn plan(size: u64, cs: u64, ranges: &[SourceRange], zero_rest: bool) -> Vec<(u64, u64, bool)> {
    // (first chunk, end chunk, zero) runs; gaps between ranges are zero only if zero_rest.
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let mut push = |a: u64, b: u64, zero: bool| {
        if a >= b {
            return;
        }
        let last = out.last().copied();
        match last {
            Some(l) if l.1 > a => {
                // Overlaps the previous run (unaligned ranges): a shared chunk is read.
                if !zero {
                    if let Some(p) = out.last_mut() {
                        p.2 = false;
                    }
                }
                if b > l.1 {
                    out.push((l.1, b, zero));
                }
            }
            Some(l) if l.1 == a && l.2 == zero => {
                if let Some(p) = out.last_mut() {
                    p.1 = b;
                }
            }
            _ => out.push((a, b, zero)),
        }
    };
    let n = size.div_ceil(cs);
    let mut next = 0u64;
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| r.offset);
    for r in sorted {
        let end = r.offset.saturating_add(r.length).min(size);
        if r.offset >= end {
            continue;
        }
        let (a, b) = (r.offset / cs, end.div_ceil(cs));
        if zero_rest && a > next {
            push(next, a, true);
        }
        // A zero range covers only the chunks it spans entirely.
        let whole = r.zero && r.offset % cs == 0 && (end % cs == 0 || end == size);
        push(a, b, whole);
        next = next.max(b);
    }
    if zero_rest && n > next {
        push(next, n, true);
    }
    out
}

/// Back up `source` as a new snapshot of `opts.volume`.
pub async fn backup(
    repo: &Repository,
    source: Arc<dyn BlockSource>,
    opts: &BackupOptions,
) -> Result<BackupReport> {
    crate::repo::repository::check_volume(&opts.volume)?;
    let before = repo.counts();
    // The lease is taken before the segment view is loaded: every delete this backup does
    // not see committed after its lease began, which is what gc's cutoff relies on.
    let id = match &opts.id {
        Some(id) if crate::repo::format::ids::is_time_id(id) => id.clone(),
        Some(id) => {
            return Err(RepoError::InvalidArgument(format!(
                "snapshot id {id:?} does not have the shape of a generated id"
            ))
            .into())
        }
        None => new_time_id(),
    };
    let lease = Lease::acquire(repo.store().clone(), &id, "backup", Some(&opts.volume)).await?;
    let r = backup_leased(repo, source, opts, id, &lease, &before).await;
    if r.is_err() {
        // A failed run stops for good: a re-run may adopt its checkpoint at once.
        lease.abandon().await;
    }
    r
}

/// [`backup`] once its lease is held: plan, open the snapshot writer (resuming a killed
/// run), run the pipeline, commit.
async fn backup_leased(
    repo: &Repository,
    source: Arc<dyn BlockSource>,
    opts: &BackupOptions,
    id: String,
    lease: &Lease,
    before: &crate::store::RequestCounts,
) -> Result<BackupReport> {
    let set = repo.load_segments().await?;
    let mut plan = Plan::new(repo, &set, source.as_ref(), opts).await?;
    if let Some(p) = &opts.progress {
        p.stage("backup", plan.to_read);
    }
    let job = BackupJob {
        volume: &opts.volume,
        id: &id,
        size: plan.size,
        parent: plan.parent.as_ref(),
        parent_top: plan.parent_top.take(),
        resume_token: source.resume_token(),
        checkpoint_interval: opts
            .checkpoint_interval
            .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL),
    };
    let (mut sw, resumed) = SnapshotWriter::backup(repo, &set, lease, job).await?;
    let start = resumed.as_ref().map_or(0, |r| r.next_chunk);
    plan.runs = resume::runs_from(std::mem::take(&mut plan.runs), start);
    let bytes_skipped = plan.to_read.saturating_sub(resume::bytes_to_read(
        &plan.runs,
        plan.cs,
        plan.size,
        plan.skip_zero(),
    ));
    if let Some(p) = &opts.progress {
        p.advance(bytes_skipped);
    }
    let bytes_read = run_pipeline(&mut sw, &plan, source.clone(), opts).await?;
    let (manifest, c) = commit(sw, &plan, source, opts, &id, before).await?;
    let used = repo.counts().since(before);
    let bytes_changed = c.chunks_changed * plan.cs;
    Ok(BackupReport {
        id,
        volume: opts.volume.clone(),
        parent: manifest.parent,
        incremental: plan.incremental,
        bytes_read,
        bytes_uploaded: used.bytes_uploaded,
        requests: used.total(),
        puts: used.puts + used.conditional_puts,
        chunks_new: c.chunks_new,
        chunks_reused: c.chunks_reused,
        chunks_zero: c.chunks_zero,
        bytes_changed,
        amplification: if bytes_changed == 0 {
            0.0
        } else {
            used.bytes_uploaded as f64 / bytes_changed as f64
        },
        resumed_from: resumed.as_ref().map(|r| r.from.clone()),
        blobs_adopted: resumed.as_ref().map_or(0, |r| r.blobs),
        bytes_skipped,
        tail_packs_adopted: resumed.as_ref().map_or(0, |r| r.tail_packs),
    })
}

/// Stage "plan": what the backup reads, against which parent.
struct Plan {
    /// The snapshot the job is planned against (named as the new snapshot's parent).
    parent: Option<SnapshotManifest>,
    /// The parent's logical bytes when its shape matches (the new count starts there).
    parent_logical: Option<u64>,
    /// The parent's top-level ids when its shape matches, until the writer takes them.
    parent_top: Option<Vec<BlobId>>,
    /// Whether a parent tree is edited (zero chunks must then clear its data).
    has_parent_tree: bool,
    /// Only the source's changed ranges are read.
    incremental: bool,
    size: u64,
    cs: u64,
    /// (first chunk, end chunk, known zero) runs to visit, in order.
    runs: Vec<(u64, u64, bool)>,
    /// Bytes the pipeline advances the progress by over the whole job.
    to_read: u64,
}

impl Plan {
    async fn new(
        repo: &Repository,
        set: &SegmentSet,
        source: &dyn BlockSource,
        opts: &BackupOptions,
    ) -> Result<Plan> {
        let parent: Option<SnapshotManifest> = match &opts.parent {
            Some(id) => Some(repo.snapshot(&opts.volume, id).await?),
            None => repo
                .live_roots(&set.markers, Some(&opts.volume))
                .last()
                .map(|m| (**m).clone()),
        };
        let size = source.size();
        let cs = repo.chunk_size() as u64;
        let same_shape = parent
            .as_ref()
            .filter(|p| p.size == size && p.chunk_size as u64 == cs);
        let changed = same_shape
            .and_then(|p| p.base.as_ref())
            .and_then(|b| source.changed_since(b));
        let incremental = changed.is_some();
        let parent_top = same_shape.map(|p| p.top_ids()).transpose()?;
        let parent_logical = same_shape.map(|p| p.stats.logical_bytes);
        let runs = match changed {
            Some(ch) => plan(size, cs, &ch, false),
            None => match source.allocated() {
                Some(alloc) => plan(size, cs, &alloc, true),
                None => plan(
                    size,
                    cs,
                    &[SourceRange {
                        offset: 0,
                        length: size,
                        zero: false,
                    }],
                    true,
                ),
            },
        };
        let mut p = Plan {
            parent,
            parent_logical,
            has_parent_tree: parent_top.is_some(),
            parent_top,
            incremental,
            size,
            cs,
            runs,
            to_read: 0,
        };
        p.to_read = resume::bytes_to_read(&p.runs, cs, size, p.skip_zero());
        Ok(p)
    }

    /// Known-zero runs are sent through the pipeline (and advance the progress) only when
    /// a parent tree may hold data there to clear.
    fn skip_zero(&self) -> bool {
        !self.has_parent_tree
    }

    /// Compress speculatively in the parallel stage when most chunks are likely new.
    fn speculative(&self) -> bool {
        self.incremental || !self.has_parent_tree
    }
}

/// Stage "backup": read → zero-detect → hash (→ compress) in parallel, then store each
/// chunk in order through the writer, checkpointing when due. Returns the bytes read.
async fn run_pipeline(
    sw: &mut SnapshotWriter<'_>,
    plan: &Plan,
    source: Arc<dyn BlockSource>,
    opts: &BackupOptions,
) -> Result<u64> {
    let (tx, rx) = tokio::sync::mpsc::channel::<ReadMsg>(QUEUE);
    let reader = spawn_reader(source, plan, tx);
    let speculative = plan.speculative();
    let mut items = tokio_stream_from(rx)
        .map(|msg| tokio::task::spawn_blocking(move || hash(msg, speculative)))
        .buffered(WORKERS);
    let mut bytes_read = 0u64;
    let result: Result<()> = async {
        while let Some(joined) = items.next().await {
            let item = joined.map_err(|e| RepoError::Task(format!("hash task: {e}")))??;
            let done = store_item(sw, plan, item, &mut bytes_read).await?;
            if let Some(p) = &opts.progress {
                p.advance(chunk_len(plan.size, plan.cs, done));
            }
            sw.checkpoint_if_due(done + 1).await?;
        }
        Ok(())
    }
    .await;
    drop(items);
    reader
        .await
        .map_err(|e| RepoError::Task(format!("reader: {e}")))?;
    result?;
    Ok(bytes_read)
}

/// One chunk from the reader thread: its index and its bytes (`None`: a known-zero run
/// the plan sends through to clear the parent tree), or why the source could not be read.
type ReadMsg = std::result::Result<(u64, Option<Vec<u8>>), RepoError>;

/// The reader thread: the plan's chunks in order into a bounded channel (known-zero ones
/// without data).
fn spawn_reader(
    source: Arc<dyn BlockSource>,
    plan: &Plan,
    tx: tokio::sync::mpsc::Sender<ReadMsg>,
) -> tokio::task::JoinHandle<()> {
    let (runs, cs, size, skip_zero) = (plan.runs.clone(), plan.cs, plan.size, plan.skip_zero());
    tokio::task::spawn_blocking(move || {
        for (a, b, zero) in runs {
            if zero && skip_zero {
                continue;
            }
            for idx in a..b {
                let msg = if zero {
                    Ok((idx, None))
                } else {
                    let off = idx * cs;
                    let len = cs.min(size - off) as usize;
                    let mut buf = vec![0u8; len];
                    source
                        .read_at(&mut buf, off)
                        .map(|_| (idx, Some(buf)))
                        .map_err(|e| RepoError::Io {
                            path: "backup source".into(),
                            op: "read",
                            offset: off,
                            source: e,
                        })
                };
                if tx.blocking_send(msg).is_err() {
                    return;
                }
            }
        }
    })
}

/// The parallel stage for one chunk: zero detection, hash, and the frame when compressing
/// speculatively.
fn hash(msg: ReadMsg, speculative: bool) -> std::result::Result<Item, RepoError> {
    let (idx, buf) = msg?;
    let Some(buf) = buf else {
        return Ok(Item::Zero(idx));
    };
    if buf.iter().all(|b| *b == 0) {
        return Ok(Item::Zero(idx));
    }
    let id = BlobId::of(&buf);
    if speculative {
        Ok(Item::Data {
            idx,
            id,
            frame: Some(Frame::encode_with_id(BlobKind::Chunk, &buf, id)),
            plain: None,
        })
    } else {
        Ok(Item::Data {
            idx,
            id,
            frame: None,
            plain: Some(buf),
        })
    }
}

/// The ordered stage for one chunk: compare with the tree, store it unless reusable, set
/// it in the tree, count. Returns the chunk's index.
async fn store_item(
    sw: &mut SnapshotWriter<'_>,
    plan: &Plan,
    item: Item,
    bytes_read: &mut u64,
) -> Result<u64> {
    match item {
        Item::Zero(idx) => {
            sw.counters().chunks_zero += 1;
            if plan.has_parent_tree {
                let prev = sw.chunk(idx).await?;
                if !prev.is_zero() {
                    let c = sw.counters();
                    c.chunks_changed += 1;
                    c.logical_delta -= chunk_len(plan.size, plan.cs, idx) as i64;
                    sw.set_chunk(idx, BlobId::ZERO).await?;
                }
            }
            Ok(idx)
        }
        Item::Data {
            idx,
            id,
            frame,
            plain,
        } => {
            let len = chunk_len(plan.size, plan.cs, idx);
            *bytes_read += len;
            let prev = sw.chunk(idx).await?;
            if prev == id {
                sw.counters().chunks_reused += 1;
                return Ok(idx);
            }
            sw.counters().chunks_changed += 1;
            if prev.is_zero() {
                sw.counters().logical_delta += len as i64;
            }
            let stored = sw
                .store_chunk(&id, || match (frame, plain) {
                    (Some(f), _) => Ok(f),
                    (None, Some(p)) => Ok(Frame::encode_with_id(BlobKind::Chunk, &p, id)),
                    (None, None) => Err(RepoError::Task("chunk without data".into())),
                })
                .await?;
            if stored {
                sw.counters().chunks_new += 1;
            } else {
                sw.counters().chunks_reused += 1;
            }
            sw.set_chunk(idx, id).await?;
            Ok(idx)
        }
    }
}

/// Stage "commit": store the tree, check the source did not change under the backup,
/// then commit the root. Returns the root and the job's counters.
async fn commit(
    mut sw: SnapshotWriter<'_>,
    plan: &Plan,
    source: Arc<dyn BlockSource>,
    opts: &BackupOptions,
    id: &str,
    before: &crate::store::RequestCounts,
) -> Result<(SnapshotManifest, Counters)> {
    sw.finish_tree().await?;
    let delta = sw.counters().logical_delta;
    let logical_bytes = match plan.parent_logical {
        Some(l) => (l as i64 + delta).max(0) as u64,
        None => (delta.max(0)) as u64,
    };
    let verify_src = source.clone();
    tokio::task::spawn_blocking(move || verify_src.verify_unchanged())
        .await
        .map_err(|e| RepoError::Task(format!("verify source: {e}")))??;
    let counters = sw.counters().clone();
    let snap = NewSnapshot {
        parent: plan.parent.as_ref().map(|p| p.id.clone()),
        logical_bytes,
        base: source.identity(),
        user_data: opts.user_data.clone(),
    };
    let manifest = sw.commit_backup(id, snap, before).await?;
    Ok((manifest, counters))
}

fn chunk_len(size: u64, cs: u64, idx: u64) -> u64 {
    cs.min(size.saturating_sub(idx * cs))
}

/// Adapt a tokio receiver to a `Stream`.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod race_tests;
#[cfg(test)]
mod resume_tests;
#[cfg(test)]
mod tail_tests;
#[cfg(test)]
mod tests;

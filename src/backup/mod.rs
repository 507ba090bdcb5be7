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

use crate::repo::format::ids::{new_time_id, now_rfc3339};
use crate::repo::format::table::Geometry;
use crate::repo::protocol::checkpoint::Counters;
use crate::repo::tree::{reusable, TreeWriter};
use crate::repo::writer::Writer;
use crate::repo::{
    BlobId, BlobKind, Frame, Lease, RepoError, Repository, SnapshotManifest, SnapshotStats,
};
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
    pub volume: String,
    /// Parent snapshot id; `None` = the volume's latest snapshot.
    pub parent: Option<String>,
    pub user_data: serde_json::Value,
    pub progress: Option<Arc<dyn Progress>>,
    /// Snapshot id to use (from [`new_time_id`]); `None` = a fresh one. Lets a caller name
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
    pub id: String,
    pub volume: String,
    pub parent: Option<String>,
    /// True when only ranges the source reported as changed were read.
    pub incremental: bool,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub requests: u64,
    pub puts: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
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

/// [`backup`] once its lease is held.
async fn backup_leased(
    repo: &Repository,
    source: Arc<dyn BlockSource>,
    opts: &BackupOptions,
    id: String,
    lease: &Lease,
    before: &crate::store::RequestCounts,
) -> Result<BackupReport> {
    let set = repo.load_segments().await?;
    let parent: Option<SnapshotManifest> = match &opts.parent {
        Some(id) => Some(repo.snapshot(&opts.volume, id).await?),
        None => repo
            .live_roots(&set.markers, Some(&opts.volume))
            .last()
            .map(|m| (**m).clone()),
    };
    let size = source.size();
    let cs = repo.chunk_size() as u64;
    let geo = Geometry::new(size, repo.chunk_size());
    let same_shape = parent
        .as_ref()
        .filter(|p| p.size == size && p.chunk_size as u64 == cs);
    let changed = same_shape
        .and_then(|p| p.base.as_ref())
        .and_then(|b| source.changed_since(b));
    let incremental = changed.is_some();
    let parent_top = same_shape.map(|p| p.top_ids()).transpose()?;
    let has_parent_tree = parent_top.is_some();
    let mut runs = match changed {
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
    // Known-zero runs are sent through the pipeline (and advance the progress) when a
    // parent tree may hold data there to clear; the total counts what will advance.
    let skip_zero = !has_parent_tree;
    let to_read = resume::bytes_to_read(&runs, cs, size, skip_zero);
    if let Some(p) = &opts.progress {
        p.stage("backup", to_read);
    }

    let root_key = crate::repo::format::manifest::root_key(&opts.volume, &id);
    let mut w = Writer::new(repo, lease.clone(), root_key, "backup");
    let job = resume::job_identity(source.as_ref(), parent.as_ref(), size, cs);
    let resumed = resume::resume(repo, &mut w, &opts.volume, &job).await?;
    let (mut tree, mut c, start) = match resumed.as_ref().and_then(|r| r.position.as_ref()) {
        Some(p) => (
            TreeWriter::resume(geo, &p.tree)?,
            p.counters.clone(),
            p.next_chunk,
        ),
        None => (TreeWriter::new(geo, parent_top), Counters::default(), 0),
    };
    w.new_chunk_bytes = c.new_chunk_bytes;
    runs = resume::runs_from(runs, start);
    let bytes_skipped = to_read.saturating_sub(resume::bytes_to_read(&runs, cs, size, skip_zero));
    if let Some(p) = &opts.progress {
        p.advance(bytes_skipped);
    }
    let mut checkpointer = resume::Checkpointer::new(
        opts.checkpoint_interval
            .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL),
        job,
        opts.volume.clone(),
        w.checkpoint_keys.len() as u64,
    );
    // Compress speculatively in the parallel stage when most chunks are likely new.
    let speculative = incremental || !has_parent_tree;

    // Reader thread → bounded channel.
    let (tx, rx) =
        tokio::sync::mpsc::channel::<std::result::Result<(u64, Option<Vec<u8>>), RepoError>>(QUEUE);
    let reader_src = source.clone();
    let reader_runs = runs.clone();
    let reader = tokio::task::spawn_blocking(move || {
        for (a, b, zero) in reader_runs {
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
                    reader_src
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
    });
    let mut items = tokio_stream_from(rx)
        .map(|msg| {
            tokio::task::spawn_blocking(move || -> std::result::Result<Item, RepoError> {
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
            })
        })
        .buffered(WORKERS);

    let mut bytes_read = 0u64;
    let result: Result<()> = async {
        while let Some(joined) = items.next().await {
            let item = joined.map_err(|e| RepoError::Task(format!("hash task: {e}")))??;
            let done = match item {
                Item::Zero(idx) => {
                    c.chunks_zero += 1;
                    if has_parent_tree {
                        let prev = tree.get(repo, &set, &mut w, idx).await?;
                        if !prev.is_zero() {
                            c.chunks_changed += 1;
                            c.logical_delta -= chunk_len(size, cs, idx) as i64;
                            tree.set(repo, &set, &mut w, idx, BlobId::ZERO).await?;
                        }
                    }
                    if let Some(p) = &opts.progress {
                        p.advance(chunk_len(size, cs, idx));
                    }
                    idx
                }
                Item::Data {
                    idx,
                    id,
                    frame,
                    plain,
                } => {
                    let len = chunk_len(size, cs, idx);
                    bytes_read += len;
                    let prev = tree.get(repo, &set, &mut w, idx).await?;
                    if prev == id {
                        c.chunks_reused += 1;
                    } else {
                        c.chunks_changed += 1;
                        if prev.is_zero() {
                            c.logical_delta += len as i64;
                        }
                        if reusable(repo, &set, &w, &id).await? {
                            w.use_adoptable(&id);
                            c.chunks_reused += 1;
                        } else {
                            let frame = match (frame, plain) {
                                (Some(f), _) => f,
                                (None, Some(p)) => Frame::encode_with_id(BlobKind::Chunk, &p, id),
                                (None, None) => {
                                    return Err(RepoError::Task("chunk without data".into()).into())
                                }
                            };
                            w.add(&frame).await?;
                            c.chunks_new += 1;
                        }
                        tree.set(repo, &set, &mut w, idx, id).await?;
                    }
                    if let Some(p) = &opts.progress {
                        p.advance(len);
                    }
                    idx
                }
            };
            if checkpointer.due(&w) {
                c.new_chunk_bytes = w.new_chunk_bytes;
                checkpointer
                    .write(repo, &mut w, &tree, done + 1, &c)
                    .await?;
            }
        }
        Ok(())
    }
    .await;
    drop(items);
    reader
        .await
        .map_err(|e| RepoError::Task(format!("reader: {e}")))?;
    result?;

    let top = tree.finish(repo, &set, &mut w).await?;
    for t in top.iter().filter(|t| !t.is_zero()) {
        w.add_ref(*t, 1, 0);
    }
    let new_bytes = w.new_chunk_bytes;
    let logical_bytes = match same_shape {
        Some(p) => (p.stats.logical_bytes as i64 + c.logical_delta).max(0) as u64,
        None => (c.logical_delta.max(0)) as u64,
    };
    let verify_src = source.clone();
    tokio::task::spawn_blocking(move || verify_src.verify_unchanged())
        .await
        .map_err(|e| RepoError::Task(format!("verify source: {e}")))??;
    let mut manifest = SnapshotManifest {
        format: crate::repo::format::manifest::MANIFEST_VERSION,
        volume: opts.volume.clone(),
        id: id.clone(),
        parent: parent.as_ref().map(|p| p.id.clone()),
        created: now_rfc3339(),
        size,
        chunk_size: cs as u32,
        depth: geo.depth,
        top: top.iter().map(BlobId::to_hex).collect(),
        stats: SnapshotStats {
            logical_bytes,
            new_bytes,
            uploaded_bytes: 0,
        },
        base: source.identity(),
        user_data: opts.user_data.clone(),
        writer: id.clone(),
        lease_time_ms: 0,
    };
    crate::repo::protocol::commit::commit_new_root(repo, w, lease, &mut manifest, before).await?;
    let used = repo.counts().since(before);
    let bytes_changed = c.chunks_changed * cs;
    Ok(BackupReport {
        id,
        volume: opts.volume.clone(),
        parent: manifest.parent.clone(),
        incremental,
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

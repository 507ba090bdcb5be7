//! One walk of a snapshot's Merkle tree, shared by `check` (verify, count references,
//! name damaged snapshots) and `heal` (verify and re-fetch): top-down and depth-first, so
//! memory is one stack of table ids per level; a table the visitor has seen is not walked
//! again, and zero entries and skipped subtrees count toward progress at once for the
//! volume range they cover. What is read and how chunks are verified is the visitor's:
//! its own batches set the concurrency and memory bounds, as before.
//!
//! The delete walk ([`walk_delete`]) is the other one: it descends only into blobs whose
//! count reaches zero, so its cost is what a snapshot holds exclusively. A delete records
//! its decrements with it; without a writer it is the dry run that gives a listing's
//! `exclusive_bytes` and forget's estimates.

use super::format::segment::FREED;
use super::format::table::{span, Geometry, FANOUT};
use super::repository::SegmentSet;
use super::writer::Writer;
use super::{BlobId, Progress, Repository, SnapshotManifest};
use crate::Result;
use std::collections::HashMap;

/// Chunks of the volume covered by table `index` at `level` (the last tables are shorter).
pub(crate) fn coverage(geo: &Geometry, level: u8, index: u64) -> u64 {
    let per = span(level + 1);
    let first = index.saturating_mul(per);
    geo.chunks.saturating_sub(first).min(per)
}

/// What a walk does at each table and entry.
pub(crate) trait TreeVisitor {
    /// `chunks` more chunk positions of the volume are done.
    fn advance(&mut self, chunks: u64);

    /// A non-zero top-level table of the snapshot (each one, seen before or not).
    fn top(&mut self, _id: &BlobId) {}

    /// Whether table `id` is new to this visitor, so its subtree is walked now.
    fn first(&mut self, id: &BlobId) -> bool;

    /// The entries of table `id` at `level` (`count` of them), or `None` to skip its
    /// subtree (damaged, or of no interest).
    async fn table(&mut self, id: &BlobId, level: u8, count: usize) -> Result<Option<Vec<BlobId>>>;

    /// Non-zero entry `child` of table `parent` at `level`: a chunk at level 0, else a
    /// table the walk visits next.
    async fn entry(&mut self, parent: &BlobId, level: u8, child: BlobId) -> Result<()>;
}

/// Walk snapshot `m`'s tree with `v`.
pub(crate) async fn walk_tree<V: TreeVisitor>(m: &SnapshotManifest, v: &mut V) -> Result<()> {
    let geo = Geometry::new(m.size, m.chunk_size);
    let mut stack: Vec<(BlobId, u8, u64)> = Vec::new();
    for (i, id) in m.top_ids()?.into_iter().enumerate() {
        if id.is_zero() {
            v.advance(coverage(&geo, geo.depth - 1, i as u64));
        } else {
            v.top(&id);
            stack.push((id, geo.depth - 1, i as u64));
        }
    }
    while let Some((id, level, index)) = stack.pop() {
        if !v.first(&id) {
            v.advance(coverage(&geo, level, index));
            continue;
        }
        let count = geo.table_len(level, index);
        let Some(entries) = v.table(&id, level, count).await? else {
            v.advance(coverage(&geo, level, index));
            continue;
        };
        for (j, c) in entries.into_iter().enumerate() {
            let child = index * FANOUT + j as u64;
            if c.is_zero() {
                if level > 0 {
                    v.advance(coverage(&geo, level - 1, child));
                }
                continue;
            }
            v.entry(&id, level, c).await?;
            if level > 0 {
                stack.push((c, level - 1, child));
            }
        }
        if level == 0 {
            v.advance(count as u64);
        }
    }
    Ok(())
}
/// What a delete walk released (or, without a writer, would release).
#[derive(Default)]
pub(crate) struct DeleteWalk {
    pub freed_blobs: u64,
    pub freed_bytes: u64,
    pub tables_unreadable: u64,
    pub root_unreadable: bool,
}

/// Decrement everything `m` references, recursing into blobs that reach zero. With a
/// writer the decrements are recorded; without one it is a dry run.
pub(crate) async fn walk_delete(
    repo: &Repository,
    set: &SegmentSet,
    m: &SnapshotManifest,
    w: Option<&mut Writer>,
) -> Result<DeleteWalk> {
    walk_delete_with(repo, set, m, w, &mut HashMap::new(), None).await
}

/// Logical bytes a delete walk of `m` reports progress in: the volume's whole chunks.
pub(crate) fn walk_bytes(m: &SnapshotManifest) -> u64 {
    Geometry::new(m.size, m.chunk_size).chunks * m.chunk_size as u64
}

/// [`walk_delete`] whose dry-run decrements accumulate in `local`, so consecutive dry runs
/// of several snapshots give what deleting all of them would free (forget --dry-run).
/// `progress` advances by [`walk_bytes`] in all: a subtree not descended into (still
/// referenced elsewhere) counts at once for the volume range it covers.
pub(crate) async fn walk_delete_with(
    repo: &Repository,
    set: &SegmentSet,
    m: &SnapshotManifest,
    w: Option<&mut Writer>,
    local: &mut HashMap<BlobId, i64>,
    progress: Option<&dyn Progress>,
) -> Result<DeleteWalk> {
    delete_walk(repo, set, m, w, local, progress, false).await
}

/// The delete walk. With `tolerate_unreadable`, a freed table that cannot be read
/// (missing or corrupt: a damaged snapshot) is flagged FREED|STORED — a gc candidate
/// whose children contribution is unchanged, exactly as if its children had never been
/// released — and its subtree is left alone: the children keep their counts, a leak that
/// `check` reports and `check --repair` reclaims, never a loss.
pub(crate) async fn delete_walk(
    repo: &Repository,
    set: &SegmentSet,
    m: &SnapshotManifest,
    mut w: Option<&mut Writer>,
    local: &mut HashMap<BlobId, i64>,
    progress: Option<&dyn Progress>,
    tolerate_unreadable: bool,
) -> Result<DeleteWalk> {
    let geo = Geometry::new(m.size, m.chunk_size);
    let advance = |level: Option<u8>, index: u64| {
        if let Some(p) = progress {
            let chunks = level.map_or(1, |l| coverage(&geo, l, index));
            p.advance(chunks * m.chunk_size as u64);
        }
    };
    let mut out = DeleteWalk::default();
    // (id, level of the table it is or None for a chunk, table index, references released)
    let mut stack: Vec<(BlobId, Option<u8>, u64, i64)> = Vec::new();
    for (i, id) in m.top_ids()?.into_iter().enumerate() {
        if id.is_zero() {
            advance(Some(geo.depth - 1), i as u64);
        } else {
            stack.push((id, Some(geo.depth - 1), i as u64, 1));
        }
    }
    while let Some((id, level, index, times)) = stack.pop() {
        let own = match w.as_deref() {
            Some(w) => w.own_delta(&id).await?,
            None => *local.get(&id).unwrap_or(&0),
        };
        let count = repo.refcount(set, &id).await? + own - times;
        let freed = count == 0;
        // A freed table's children are released as many times as they are counted on its
        // behalf (its contribution: 2 when two writers stored it at once), leaving its
        // contribution at exactly 0. One whose children were already released (an earlier
        // delete freed it and a backup reused it since, before gc revived it) releases
        // nothing: it becomes a gc candidate (FREED) with its contribution unchanged.
        let mut contribution = match (freed, level) {
            (true, Some(_)) => repo.children_contribution(set, &id).await?,
            _ => 0,
        };
        let mut entries = Vec::new();
        if let (true, Some(l)) = (contribution > 0, level) {
            match repo.read_table(set, &id, l, geo.table_len(l, index)).await {
                Ok(e) => entries = e,
                Err(e) if tolerate_unreadable && super::error::is_damage(&e) => {
                    tracing::warn!(
                        "delete of {}/{}: table {id} unreadable, its subtree left as a leak: {e}",
                        m.volume,
                        m.id
                    );
                    out.tables_unreadable += 1;
                    // Released nothing: its contribution stays as it is.
                    contribution = 0;
                }
                Err(e) => return Err(e),
            }
        }
        match w.as_deref_mut() {
            Some(w) if freed && level.is_some() => {
                w.add_ref_with_contribution(id, -times, FREED, -contribution.max(0))
            }
            Some(w) => w.add_ref(id, -times, if freed { FREED } else { 0 }),
            None => *local.entry(id).or_insert(0) -= times,
        }
        if !freed {
            advance(level, index);
            continue;
        }
        out.freed_blobs += 1;
        match level {
            None => {
                let loc = repo.locate(set, &id).await?;
                out.freed_bytes += loc.map_or(0, |l| l.plain_len as u64);
                advance(level, index);
            }
            Some(_) if contribution <= 0 => advance(level, index),
            Some(l) => {
                for (j, c) in entries.into_iter().enumerate() {
                    let child = if l == 0 { None } else { Some(l - 1) };
                    let at = index * FANOUT + j as u64;
                    if c.is_zero() {
                        advance(child, at);
                    } else {
                        stack.push((c, child, at, contribution));
                    }
                }
            }
        }
    }
    Ok(out)
}

//! One walk of a snapshot's Merkle tree, shared by `check` (verify, count references,
//! name damaged snapshots) and `heal` (verify and re-fetch): top-down and depth-first, so
//! memory is one stack of table ids per level; a table the visitor has seen is not walked
//! again, and zero entries and skipped subtrees count toward progress at once for the
//! volume range they cover. What is read and how chunks are verified is the visitor's:
//! its own batches set the concurrency and memory bounds, as before.

use super::table::{span, Geometry, FANOUT};
use super::{BlobId, SnapshotManifest};
use crate::Result;

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

//! Building and walking Merkle trees.
//!
//! [`TreeWriter`] edits a parent snapshot's tree copy-on-write: chunks are set in
//! increasing index order, the path of tables above the current chunk is held in memory
//! (depth × 32 KiB), and a table is re-encoded and stored only if an entry changed. Unchanged
//! subtrees keep their ids, so an incremental backup uploads O(changed) tables.
//!
//! [`PairWalk`] walks two trees of the same geometry together, skipping subtrees whose ids
//! are equal; walking against the all-zero tree enumerates a snapshot's non-zero leaves.

use super::format::table::{self, span, Geometry, FANOUT};
use super::repository::SegmentSet;
use super::writer::Writer;
use super::{BlobId, BlobKind, Frame, RepoError, Repository};
use crate::Result;
use serde::{Deserialize, Serialize};

struct Node {
    index: u64,
    entries: Vec<BlobId>,
    dirty: bool,
}

/// Copy-on-write editor of one snapshot tree.
pub(crate) struct TreeWriter {
    geo: Geometry,
    top: Vec<BlobId>,
    path: Vec<Option<Node>>,
    /// Tables stored / reused while editing (for reports).
    pub tables_new: u64,
}

impl TreeWriter {
    /// Start from `parent_top` (same geometry) or from the all-zero tree.
    pub(crate) fn new(geo: Geometry, parent_top: Option<Vec<BlobId>>) -> TreeWriter {
        let top = parent_top.unwrap_or_else(|| vec![BlobId::ZERO; geo.top_len()]);
        TreeWriter {
            geo,
            top,
            path: (0..geo.depth).map(|_| None).collect(),
            tables_new: 0,
        }
    }

    /// Make the path of tables above chunk `idx` resident.
    async fn load_path(
        &mut self,
        repo: &Repository,
        set: &SegmentSet,
        w: &mut Writer,
        idx: u64,
    ) -> Result<()> {
        for level in (0..self.geo.depth).rev() {
            let want = idx / span(level + 1);
            if self.path[level as usize]
                .as_ref()
                .is_some_and(|n| n.index == want)
            {
                continue;
            }
            // Flush this level and everything below it before moving on.
            for l in 0..=level {
                self.flush_level(w, repo, set, l).await?;
            }
            let parent_id = if level + 1 == self.geo.depth {
                self.top[want as usize]
            } else {
                let p = self.path[level as usize + 1]
                    .as_ref()
                    .map(|n| n.entries[(want % FANOUT) as usize]);
                p.unwrap_or(BlobId::ZERO)
            };
            let count = self.geo.table_len(level, want);
            let entries = if parent_id.is_zero() {
                vec![BlobId::ZERO; count]
            } else {
                repo.read_table(set, &parent_id, level, count).await?
            };
            self.path[level as usize] = Some(Node {
                index: want,
                entries,
                dirty: false,
            });
        }
        Ok(())
    }

    /// Current id of chunk `idx`.
    pub(crate) async fn get(
        &mut self,
        repo: &Repository,
        set: &SegmentSet,
        w: &mut Writer,
        idx: u64,
    ) -> Result<BlobId> {
        self.load_path(repo, set, w, idx).await?;
        Ok(self.path[0]
            .as_ref()
            .map_or(BlobId::ZERO, |n| n.entries[(idx % FANOUT) as usize]))
    }

    /// Set chunk `idx` (indices must not go backwards across leaves).
    pub(crate) async fn set(
        &mut self,
        repo: &Repository,
        set: &SegmentSet,
        w: &mut Writer,
        idx: u64,
        id: BlobId,
    ) -> Result<()> {
        self.load_path(repo, set, w, idx).await?;
        if let Some(n) = self.path[0].as_mut() {
            let e = &mut n.entries[(idx % FANOUT) as usize];
            if *e != id {
                *e = id;
                n.dirty = true;
            }
        }
        Ok(())
    }

    async fn flush_level(
        &mut self,
        w: &mut Writer,
        repo: &Repository,
        set: &SegmentSet,
        level: u8,
    ) -> Result<()> {
        let Some(node) = self.path[level as usize].take() else {
            return Ok(());
        };
        if !node.dirty {
            return Ok(());
        }
        let id = store_table(repo, set, w, level, &node.entries).await?;
        if id != BlobId::ZERO || node.entries.iter().any(|e| !e.is_zero()) {
            self.tables_new += 1;
        }
        if level + 1 == self.geo.depth {
            self.top[node.index as usize] = id;
        } else if let Some(p) = self.path[level as usize + 1].as_mut() {
            let e = &mut p.entries[(node.index % FANOUT) as usize];
            if *e != id {
                *e = id;
                p.dirty = true;
            }
        }
        Ok(())
    }

    /// The editor's state between two chunks, for a backup checkpoint: the top list and
    /// the resident path (entries not yet stored as tables, with their dirty flags).
    pub(crate) fn state(&self) -> TreeState {
        TreeState {
            top: self.top.iter().map(BlobId::to_hex).collect(),
            path: self
                .path
                .iter()
                .enumerate()
                .filter_map(|(level, n)| {
                    n.as_ref().map(|n| PathNode {
                        level: level as u8,
                        index: n.index,
                        dirty: n.dirty,
                        entries: n.entries.iter().map(BlobId::to_hex).collect(),
                    })
                })
                .collect(),
        }
    }

    /// An editor continuing from a checkpoint's [`TreeState`] (checked against `geo`).
    pub(crate) fn resume(geo: Geometry, state: &TreeState) -> Result<TreeWriter, RepoError> {
        let bad = |why: String| RepoError::InvalidArgument(format!("checkpoint tree: {why}"));
        let top = parse_ids(&state.top).map_err(bad)?;
        if top.len() != geo.top_len() {
            return Err(bad(format!(
                "{} top entries, geometry has {}",
                top.len(),
                geo.top_len()
            )));
        }
        let mut path: Vec<Option<Node>> = (0..geo.depth).map(|_| None).collect();
        for n in &state.path {
            let entries = parse_ids(&n.entries).map_err(bad)?;
            let slot = path
                .get_mut(n.level as usize)
                .ok_or_else(|| bad(format!("level {} beyond depth {}", n.level, geo.depth)))?;
            let tables = geo.chunks.div_ceil(span(n.level + 1));
            if n.index >= tables || entries.len() != geo.table_len(n.level, n.index) {
                return Err(bad(format!(
                    "table {} at level {} does not fit",
                    n.index, n.level
                )));
            }
            *slot = Some(Node {
                index: n.index,
                entries,
                dirty: n.dirty,
            });
        }
        Ok(TreeWriter {
            geo,
            top,
            path,
            tables_new: 0,
        })
    }

    /// Store every dirty table and return the root's top-level list.
    pub(crate) async fn finish(
        &mut self,
        repo: &Repository,
        set: &SegmentSet,
        w: &mut Writer,
    ) -> Result<Vec<BlobId>> {
        for l in 0..self.geo.depth {
            self.flush_level(w, repo, set, l).await?;
        }
        Ok(std::mem::take(&mut self.top))
    }
}

/// Serializable state of a [`TreeWriter`] (hex ids, as in root manifests).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct TreeState {
    pub top: Vec<String>,
    pub path: Vec<PathNode>,
}

/// One resident table of the editor's path.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PathNode {
    pub level: u8,
    pub index: u64,
    pub dirty: bool,
    pub entries: Vec<String>,
}

fn parse_ids(hex: &[String]) -> std::result::Result<Vec<BlobId>, String> {
    hex.iter()
        .map(|h| BlobId::from_hex(h).ok_or_else(|| format!("bad id {h:?}")))
        .collect()
}

/// May a writer reference `id` without storing it? Only if it stored it itself, or the
/// blob is committed with a positive count (never a freed, not-yet-collected blob).
pub(crate) async fn reusable(
    repo: &Repository,
    set: &SegmentSet,
    w: &Writer,
    id: &BlobId,
) -> Result<bool> {
    if w.has_own(id).await? {
        return Ok(true);
    }
    if repo.refcount(set, id).await? <= 0 {
        return Ok(false);
    }
    Ok(repo.locate(set, id).await?.is_some())
}

/// Store a table unless an equal one is reusable; a newly stored table adds +1 to each
/// non-zero child. All-zero tables become the zero id.
async fn store_table(
    repo: &Repository,
    set: &SegmentSet,
    w: &mut Writer,
    level: u8,
    entries: &[BlobId],
) -> Result<BlobId> {
    if entries.iter().all(BlobId::is_zero) {
        return Ok(BlobId::ZERO);
    }
    let plain = table::encode(level, entries);
    let id = BlobId::of(&plain);
    if reusable(repo, set, w, &id).await? {
        return Ok(id);
    }
    w.add(&Frame::encode_with_id(BlobKind::Table, &plain, id))
        .await?;
    for e in entries.iter().filter(|e| !e.is_zero()) {
        w.add_ref(*e, 1, 0);
    }
    w.add_ref(id, 0, super::format::segment::STORED);
    Ok(id)
}

/// One differing leaf: chunk index of entry 0, and both leaves' entries.
pub(crate) struct LeafPair {
    pub first_chunk: u64,
    pub a: Vec<BlobId>,
    pub b: Vec<BlobId>,
}

/// Walk two trees of one geometry, yielding only leaves that differ.
pub(crate) struct PairWalk {
    geo: Geometry,
    stack: Vec<(u8, u64, BlobId, BlobId)>,
}

impl PairWalk {
    pub(crate) fn new(geo: Geometry, a_top: &[BlobId], b_top: &[BlobId]) -> PairWalk {
        let level = geo.depth.saturating_sub(1);
        let stack = (0..geo.top_len())
            .rev()
            .map(|i| (level, i as u64, a_top[i], b_top[i]))
            .collect();
        PairWalk { geo, stack }
    }

    /// Walk one tree against the all-zero tree.
    pub(crate) fn single(geo: Geometry, top: &[BlobId]) -> PairWalk {
        Self::new(geo, &vec![BlobId::ZERO; top.len()], top)
    }

    async fn load(
        repo: &Repository,
        set: &SegmentSet,
        id: &BlobId,
        level: u8,
        count: usize,
    ) -> Result<Vec<BlobId>> {
        if id.is_zero() {
            Ok(vec![BlobId::ZERO; count])
        } else {
            repo.read_table(set, id, level, count).await
        }
    }

    pub(crate) async fn next(
        &mut self,
        repo: &Repository,
        set: &SegmentSet,
    ) -> Result<Option<LeafPair>> {
        while let Some((level, index, a, b)) = self.stack.pop() {
            if a == b {
                continue;
            }
            let count = self.geo.table_len(level, index);
            let ea = Self::load(repo, set, &a, level, count).await?;
            let eb = Self::load(repo, set, &b, level, count).await?;
            if level == 0 {
                return Ok(Some(LeafPair {
                    first_chunk: index * FANOUT,
                    a: ea,
                    b: eb,
                }));
            }
            for j in (0..count).rev() {
                self.stack
                    .push((level - 1, index * FANOUT + j as u64, ea[j], eb[j]));
            }
        }
        Ok(None)
    }
}

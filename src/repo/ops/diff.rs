//! Differences between two snapshots of one volume, by walking both trees and skipping
//! equal subtrees (cost ∝ what changed).

use crate::repo::format::table::Geometry;
use crate::repo::repository::check_names;
use crate::repo::tree::PairWalk;
use crate::repo::Repository;
use crate::Result;
use serde::Serialize;

/// A byte range that differs; `zero` when it reads as zeros in the `to` snapshot.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct DiffRange {
    /// Start of the range: byte offset in the volume.
    pub offset: u64,
    /// Length of the range, in bytes.
    pub length: u64,
    /// The range reads as zeros in the `to` snapshot (it was discarded or zeroed).
    pub zero: bool,
}

impl Repository {
    /// Ranges where snapshot `to` differs from `from` (both of `volume`).
    pub async fn diff(&self, volume: &str, from: &str, to: &str) -> Result<Vec<DiffRange>> {
        check_names(volume, from)?;
        check_names(volume, to)?;
        let a = self.snapshot(volume, from).await?;
        let b = self.snapshot(volume, to).await?;
        let set = self.load_view().await?;
        let cs = b.chunk_size as u64;
        let mut out: Vec<DiffRange> = Vec::new();
        let mut push = |offset: u64, length: u64, zero: bool| match out.last_mut() {
            Some(l) if l.offset + l.length == offset && l.zero == zero => l.length += length,
            _ => out.push(DiffRange {
                offset,
                length,
                zero,
            }),
        };
        let (ga, gb) = (
            Geometry::new(a.size, a.chunk_size),
            Geometry::new(b.size, b.chunk_size),
        );
        let mut walk = if ga == gb && a.chunk_size == b.chunk_size {
            PairWalk::new(gb, &a.top_ids()?, &b.top_ids()?)
        } else {
            // Different shapes: everything non-zero in `to` differs, plus the rest as zero.
            let mut w = PairWalk::single(gb, &b.top_ids()?);
            let mut chunks = Vec::new();
            while let Some(leaf) = w.next(self, &set).await? {
                chunks.push(leaf);
            }
            let mut next = 0u64;
            for leaf in chunks {
                for (j, id) in leaf.b.iter().enumerate() {
                    let idx = leaf.first_chunk + j as u64;
                    if !id.is_zero() {
                        if idx > next {
                            push(next * cs, (idx - next) * cs, true);
                        }
                        push(idx * cs, cs, false);
                        next = idx + 1;
                    }
                }
            }
            if next * cs < b.size {
                push(next * cs, b.size - next * cs, true);
            }
            for r in out.iter_mut() {
                r.length = r.length.min(b.size.saturating_sub(r.offset));
            }
            return Ok(out);
        };
        while let Some(leaf) = walk.next(self, &set).await? {
            for (j, (x, y)) in leaf.a.iter().zip(leaf.b.iter()).enumerate() {
                if x != y {
                    let off = (leaf.first_chunk + j as u64) * cs;
                    push(off, cs.min(b.size - off), y.is_zero());
                }
            }
        }
        Ok(out)
    }
}

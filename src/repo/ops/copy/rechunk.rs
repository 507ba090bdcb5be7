//! Copy between repositories of different chunk sizes: the source snapshot is read in
//! order through its tables (non-zero leaves only, as restore walks them), cut into the
//! target's chunk size, and written through the backup's tree writer and reuse rule, so
//! chunks the target already has are referenced instead of uploaded.

use super::{fetch, CopyReport, BATCH_BYTES};
use crate::repo::format::manifest::SnapshotManifest;
use crate::repo::format::table::Geometry;
use crate::repo::repository::SegmentSet;
use crate::repo::snapshot_writer::SnapshotWriter;
use crate::repo::tree::PairWalk;
use crate::repo::{BlobId, BlobKind, Frame, RepoError, Repository};
use crate::Result;
use std::collections::{HashMap, HashSet};

/// The target chunk being filled: its index and bytes (zero where the source is zero).
struct Open {
    index: u64,
    buf: Vec<u8>,
}

struct Cutter {
    size: u64,
    cs: u64,
    open: Option<Open>,
}

impl Cutter {
    /// Copy source bytes `data` found at volume offset `start` into target chunks.
    async fn place(
        &mut self,
        w: &mut SnapshotWriter<'_>,
        data: &[u8],
        start: u64,
        report: &mut CopyReport,
    ) -> Result<()> {
        let end = start + data.len() as u64;
        let mut off = start;
        while off < end {
            let d = off / self.cs;
            if self.open.as_ref().is_none_or(|o| o.index != d) {
                self.close(w, report).await?;
                let len = self.cs.min(self.size - d * self.cs) as usize;
                self.open = Some(Open {
                    index: d,
                    buf: vec![0; len],
                });
            }
            let Some(o) = self.open.as_mut() else {
                return Err(RepoError::Task("re-chunking lost its open chunk".into()).into());
            };
            let dstart = d * self.cs;
            let n = end.min(dstart + o.buf.len() as u64) - off;
            let (b, s) = ((off - dstart) as usize, (off - start) as usize);
            o.buf[b..b + n as usize].copy_from_slice(&data[s..s + n as usize]);
            off += n;
        }
        Ok(())
    }

    /// Store the open chunk (unless all zero) and set it in the target tree.
    async fn close(&mut self, w: &mut SnapshotWriter<'_>, report: &mut CopyReport) -> Result<()> {
        let Some(o) = self.open.take() else {
            return Ok(());
        };
        if o.buf.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let id = BlobId::of(&o.buf);
        if w.store_chunk(&id, || {
            Ok(Frame::encode_with_id(BlobKind::Chunk, &o.buf, id))
        })
        .await?
        {
            report.chunks_new += 1;
        } else {
            report.chunks_reused += 1;
        }
        w.set_chunk(o.index, id).await
    }
}

/// Write `m` re-chunked into `w`; returns the new tree's top-level ids (referenced).
pub(super) async fn rechunk(
    from: &Repository,
    src_set: &SegmentSet,
    w: &mut SnapshotWriter<'_>,
    m: &SnapshotManifest,
    report: &mut CopyReport,
) -> Result<Vec<BlobId>> {
    let scs = m.chunk_size as u64;
    let mut cut = Cutter {
        size: m.size,
        cs: w.chunk_size() as u64,
        open: None,
    };
    let mut walk = PairWalk::single(Geometry::new(m.size, m.chunk_size), &m.top_ids()?);
    let per_batch = (BATCH_BYTES / scs).max(1) as usize;
    while let Some(leaf) = walk.next(from, src_set).await? {
        let chunks: Vec<(u64, BlobId)> = leaf
            .b
            .iter()
            .enumerate()
            .filter(|(_, id)| !id.is_zero())
            .map(|(j, id)| (leaf.first_chunk + j as u64, *id))
            .collect();
        for batch in chunks.chunks(per_batch) {
            let mut wanted = Vec::new();
            let mut seen = HashSet::new();
            for (_, id) in batch {
                if !seen.insert(*id) {
                    continue;
                }
                let loc =
                    from.locate(src_set, id)
                        .await?
                        .ok_or_else(|| RepoError::MissingBlob {
                            id: id.to_hex(),
                            context: format!("snapshot {}/{} in the copy source", m.volume, m.id),
                        })?;
                wanted.push((*id, loc));
            }
            let plain: HashMap<BlobId, Vec<u8>> = fetch::fetch(from, src_set, wanted)
                .await?
                .into_iter()
                .map(|f| (f.frame.id, f.plain))
                .collect();
            for (idx, id) in batch {
                let data = plain.get(id).ok_or_else(|| RepoError::MissingBlob {
                    id: id.to_hex(),
                    context: format!("fetch of snapshot {}/{}", m.volume, m.id),
                })?;
                cut.place(w, data, idx * scs, report).await?;
            }
        }
    }
    cut.close(w, report).await?;
    let top = w.finish_tree().await?;
    report.tables_new += w.tables_new();
    Ok(top)
}

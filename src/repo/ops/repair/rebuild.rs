//! Rebuilding lost index records from the packs themselves (format-spec §11, step 1).
//!
//! A pack no counted index segment names may still hold the only copy of blobs live
//! snapshots need: its writer's index segment was lost or damaged, or its commit marker
//! (a root) was lost while later snapshots reused its blobs. Every pack carries its own
//! index (the footer), and every frame its id and length, so the locations are read back
//! from the pack: the footer when it checks out, else a scan of the frames from offset 0.
//! Each frame is verified (crc, BLAKE3 = id) before its location is written, and only ids
//! the view does not locate are written, so a rebuilt record never shadows a good one;
//! and only what a live snapshot's tree reaches or the counts know (a refs record: a
//! running backup may have reused it), so a dead writer's packs stay strays.
//!
//! Crash ordering: the records go into one index segment of a fresh holder (lease op
//! `repair`) committed by a `gc/<seq>` marker (create-if-absent, exclusive with gc) after
//! a lease renewal: index segment → renewal → marker. A crash before the marker leaves an
//! uncounted segment of an unleased holder (a stray a later repair quarantines) and the
//! packs as they were; nothing is deleted or overwritten.

use super::RepairReport;
use crate::repo::error::is_damage;
use crate::repo::format::chunk::decode_frame;
use crate::repo::format::ids::new_time_id;
use crate::repo::format::pack::{pack_key, parse_footer, parse_trailer, PackEntry, TRAILER_SIZE};
use crate::repo::format::table::{self, Geometry, FANOUT};
use crate::repo::protocol::commit::{commit_gc_marker, next_gc_marker};
use crate::repo::protocol::lease::Lease;
use crate::repo::repository::SegmentSet;
use crate::repo::writer::Writer;
use crate::repo::{BlobId, Location, RepoError, Repository};
use crate::store::{ObjectMeta, StoreErrorKind};
use crate::Result;
use std::collections::{HashMap, HashSet};

/// Frame header and crc (format-spec §3.1): a frame is 52 bytes plus its payload.
const FRAME_OVERHEAD: usize = 52;

/// The entries of a pack from its bytes: its footer when the trailer and footer check
/// out, else the frames scanned from offset 0 (each verified; the scan stops at the first
/// bytes that are not a valid frame).
pub(crate) fn pack_entries_of(key: &str, bytes: &[u8]) -> Result<Vec<PackEntry>, RepoError> {
    match footer_entries(key, bytes) {
        Ok(e) => Ok(e),
        Err(footer_error) => {
            let scanned = scan_frames(key, bytes);
            if scanned.is_empty() {
                Err(footer_error)
            } else {
                Ok(scanned)
            }
        }
    }
}

pub(super) fn footer_entries(key: &str, bytes: &[u8]) -> Result<Vec<PackEntry>, RepoError> {
    let Some(t_at) = bytes.len().checked_sub(TRAILER_SIZE) else {
        return Err(RepoError::corrupt(key, "pack shorter than its trailer"));
    };
    let (count, off, crc) = parse_trailer(key, &bytes[t_at..])?;
    let footer = bytes
        .get(off as usize..t_at)
        .ok_or_else(|| RepoError::corrupt(key, "footer offset past the end"))?;
    parse_footer(key, footer, count, off, crc)
}

fn scan_frames(key: &str, bytes: &[u8]) -> Vec<PackEntry> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(head) = bytes.get(at..at + FRAME_OVERHEAD) {
        let n = u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as usize;
        let Some(frame) = bytes.get(at..at + FRAME_OVERHEAD + n) else {
            break;
        };
        let Ok((id, kind, plain)) = decode_frame(key, frame, None) else {
            break;
        };
        out.push(PackEntry {
            id,
            kind,
            offset: at as u32,
            frame_len: frame.len() as u32,
            plain_len: plain.len() as u32,
        });
        at += frame.len();
    }
    out
}

/// Read each candidate pack (listed, named by no counted index segment, of a holder with
/// no lease), then walk the live snapshots' trees and commit the locations of the blobs
/// they reach, and of the blobs the counts know, that the view does not locate in a pack
/// that exists (`present`: the names listed under `packs/`; a location in a pack gc
/// deleted, kept by a segment a crashed gc did not delete, locates nothing) and a
/// candidate pack holds in a frame that verifies. Nothing else is re-indexed: a dead
/// writer's packs stay strays.
/// Returns how many records were committed.
pub(super) async fn rebuild_index(
    repo: &Repository,
    set: &SegmentSet,
    candidates: &[ObjectMeta],
    present: &HashSet<&str>,
    report: &mut RepairReport,
) -> Result<u64> {
    let mut found: HashMap<BlobId, Location> = HashMap::new();
    for o in candidates {
        let bytes = match repo.store().get(&o.key).await {
            Ok(b) => b,
            Err(e) if e.kind() == StoreErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let name = o.key.rsplit('/').next().unwrap_or_default().to_string();
        let entries = match pack_entries_of(&o.key, &bytes) {
            Ok(e) => e,
            // Not a frame of it can be read: nothing can be rebuilt, nor lost (step 5).
            Err(e) => {
                tracing::warn!(
                    "repair: no frame of unnamed pack {} is readable: {e}",
                    o.key
                );
                continue;
            }
        };
        for e in entries {
            found.entry(e.id).or_insert_with(|| Location {
                pack: name.clone(),
                offset: e.offset,
                frame_len: e.frame_len,
                plain_len: e.plain_len,
                kind: e.kind,
            });
        }
    }
    if found.is_empty() {
        return Ok(0);
    }
    let mut walk = Needed {
        repo,
        set,
        present,
        found: &found,
        out: Vec::new(),
        seen: HashSet::new(),
    };
    walk.run().await?;
    walk.counted().await?;
    let records = walk.out;
    if records.is_empty() {
        return Ok(0);
    }
    report.packs_reindexed = (records.iter())
        .map(|(_, l)| l.pack.as_str())
        .collect::<HashSet<_>>()
        .len() as u64;
    let n = records.len() as u64;
    let holder = new_time_id();
    let lease = Lease::acquire(repo.store().clone(), &holder, "repair", None).await?;
    let (seq, marker_key) = next_gc_marker(set);
    let mut w = Writer::new(repo, lease.clone(), marker_key.clone(), "repair");
    for (id, loc) in records {
        w.add_location(id, loc);
    }
    let committed = commit_gc_marker(repo, &mut w, &lease, seq, &marker_key, false).await;
    w.finish().await;
    committed?;
    report.index_records_rebuilt += n;
    report.rebuild_commit = Some(marker_key);
    Ok(n)
}

/// The walk of the live trees that finds what only the unnamed packs hold.
struct Needed<'a> {
    repo: &'a Repository,
    set: &'a SegmentSet,
    present: &'a HashSet<&'a str>,
    found: &'a HashMap<BlobId, Location>,
    out: Vec<(BlobId, Location)>,
    seen: HashSet<BlobId>,
}

impl Needed<'_> {
    async fn run(&mut self) -> Result<()> {
        for m in self.repo.live_roots(&self.set.markers, None) {
            let geo = Geometry::new(m.size, m.chunk_size);
            let Ok(top) = m.top_ids() else {
                continue;
            };
            let mut stack: Vec<(BlobId, u8, u64)> = (top.into_iter().enumerate())
                .filter(|(_, id)| !id.is_zero())
                .map(|(i, id)| (id, geo.depth - 1, i as u64))
                .collect();
            while let Some((id, level, index)) = stack.pop() {
                if !self.seen.insert(id) {
                    continue;
                }
                let Some(loc) = self.where_is(&id).await? else {
                    continue;
                };
                let Ok(plain) = self.repo.read_blob(&loc, &id).await else {
                    continue;
                };
                let count = geo.table_len(level, index);
                let Ok(entries) = table::decode(&pack_key(&loc.pack), &plain, level, count) else {
                    continue;
                };
                for (j, c) in entries.into_iter().enumerate() {
                    if c.is_zero() {
                        continue;
                    }
                    if level > 0 {
                        stack.push((c, level - 1, index * FANOUT + j as u64));
                    } else if self.seen.insert(c) {
                        self.where_is(&c).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Blobs of the candidate packs that the counts know (a refs record in the view) and
    /// no live tree reached: a backup whose view predates the damage may have reused one
    /// and commit after this view, so no root shows it here. What the counts know is
    /// gc's to collect, never a dead writer's leftover.
    async fn counted(&mut self) -> Result<()> {
        let mut ids: Vec<BlobId> = (self.found.keys())
            .filter(|id| !self.seen.contains(*id))
            .copied()
            .collect();
        ids.sort_unstable_by_key(|id| id.0);
        for id in ids {
            if self.repo.is_counted(self.set, &id).await? {
                self.where_is(&id).await?;
            }
        }
        Ok(())
    }

    /// Where `id` is: the view's location when its pack exists, else a candidate pack's
    /// whose frame verifies (then recorded for the rebuilt segment).
    async fn where_is(&mut self, id: &BlobId) -> Result<Option<Location>> {
        if let Some(l) = self.repo.locate(self.set, id).await? {
            if self.present.contains(l.pack.as_str()) {
                return Ok(Some(l));
            }
        }
        let Some(l) = self.found.get(id) else {
            return Ok(None);
        };
        match self.repo.read_blob(l, id).await {
            Ok(_) => {
                self.out.push((*id, l.clone()));
                Ok(Some(l.clone()))
            }
            Err(e) if is_damage(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::format::pack::PackWriter;
    use crate::repo::{BlobKind, Frame};

    #[test]
    fn a_damaged_footer_falls_back_to_scanning_the_frames() {
        let mut w = PackWriter::new();
        let a = Frame::encode(BlobKind::Chunk, b"first frame");
        let b = Frame::encode(BlobKind::Table, &[7u8; 3000]);
        w.push(&a);
        w.push(&b);
        let (mut bytes, entries) = w.finish();
        assert_eq!(pack_entries_of("p", &bytes).unwrap(), entries);
        let n = bytes.len();
        bytes[n - 30] ^= 0xff; // in the footer
        assert!(footer_entries("p", &bytes).is_err());
        assert_eq!(pack_entries_of("p", &bytes).unwrap(), entries);
        bytes[20] ^= 0xff; // in the first frame's id: nothing verifies any more
        assert!(pack_entries_of("p", &bytes).is_err());
    }
}

//! The qcow2 snapshot table: entry parse/serialize and validation. The operations that
//! change refcounts (create, delete, revert) live in the engine, which owns the ordering.

use super::error::ImageError;
use super::overlap::Region;
use super::state::{strip_copied, State};
use super::types::HostCluster;
use std::path::Path;

/// QEMU's QCOW_MAX_SNAPSHOTS.
pub(super) const MAX_SNAPSHOTS: u32 = 65536;
/// QEMU's QCOW_MAX_SNAPSHOTS_SIZE: bound on the table read from a hostile file.
pub(super) const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Extra data Island writes: vm_state_size_large, disk_size, icount.
const EXTRA_WRITTEN: usize = 24;

/// What a snapshot creation has done so far, for undoing it when a later step fails.
#[derive(Default)]
struct Undo {
    /// Batches of the active tree whose refcounts went up (see `State::walk_tree`).
    batches: usize,
    /// Clusters allocated for the L1 copy: (first cluster, count).
    l1_copy: Option<(u64, u64)>,
    /// COPIED flags in the active tables may have been cleared.
    fixed: bool,
}

/// One snapshot table entry (qcow2.rst "Snapshots"; what Island writes: image.md §1
/// "Snapshot table entries"). Byte offsets are within the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotEntry {
    /// Bytes 0–7: host offset of the snapshot's own L1 table (cluster aligned; its
    /// entries have COPIED clear).
    pub l1_table_offset: u64,
    /// Bytes 8–11: number of entries in that L1 table.
    pub l1_size: u32,
    /// The unique id string (length at bytes 12–13; decimal, one more than the largest
    /// numeric id when Island creates it).
    pub id: String,
    /// The name (length at bytes 14–15); UTF-8 or the entry is refused.
    pub name: String,
    /// Bytes 16–19: creation time, seconds since the Unix epoch.
    pub date_sec: u32,
    /// Bytes 20–23: nanoseconds part of the creation time.
    pub date_nsec: u32,
    /// Bytes 24–31: guest clock at snapshot time in nanoseconds (0 from Island).
    pub vm_clock_nsec: u64,
    /// Saved VM state size: extra data bytes 0–7 when present, else bytes 32–35.
    pub vm_state_size: u64,
    /// Virtual disk size recorded in extra data bytes 8–15, if present.
    pub disk_size: Option<u64>,
    /// Extra data bytes as read (length at bytes 36–39, data from byte 40; kept so
    /// rewriting the table preserves them).
    pub extra: Vec<u8>,
}

fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn rd64(b: &[u8], at: usize) -> u64 {
    (u64::from(rd32(b, at)) << 32) | u64::from(rd32(b, at + 4))
}

impl SnapshotEntry {
    /// A new entry as Island writes it (extra data: vm_state_size_large = 0, disk_size,
    /// icount = -1 meaning "not recorded", as QEMU writes without record/replay).
    pub(crate) fn new(
        id: String,
        name: String,
        l1_table_offset: u64,
        l1_size: u32,
        disk_size: u64,
        date: (u32, u32),
    ) -> Self {
        let mut extra = vec![0u8; EXTRA_WRITTEN];
        extra[8..16].copy_from_slice(&disk_size.to_be_bytes());
        extra[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
        SnapshotEntry {
            l1_table_offset,
            l1_size,
            id,
            name,
            date_sec: date.0,
            date_nsec: date.1,
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: Some(disk_size),
            extra,
        }
    }

    fn encoded_len(&self) -> usize {
        (40 + self.extra.len() + self.id.len() + self.name.len() + 7) & !7
    }
}

/// Parse `count` entries from the table bytes at file offset `table_offset`.
pub(super) fn parse_table(
    path: &Path,
    buf: &[u8],
    table_offset: u64,
    count: u32,
    cluster_size: u64,
    file_len: u64,
) -> Result<Vec<SnapshotEntry>, ImageError> {
    let mut out = Vec::with_capacity(count.min(1024) as usize);
    let mut at = 0usize;
    for i in 0..count {
        let off = table_offset + at as u64;
        let bad = |reason: String| ImageError::Corrupt {
            path: path.to_path_buf(),
            what: "snapshot table entry",
            offset: off,
            reason: format!("entry {i}: {reason}"),
        };
        if at + 40 > buf.len() {
            return Err(bad("runs past the end of the table".into()));
        }
        let e = &buf[at..];
        let l1_table_offset = rd64(e, 0);
        let l1_size = rd32(e, 8);
        let id_len = usize::from(u16::from_be_bytes([e[12], e[13]]));
        let name_len = usize::from(u16::from_be_bytes([e[14], e[15]]));
        let date_sec = rd32(e, 16);
        let date_nsec = rd32(e, 20);
        let vm_clock_nsec = rd64(e, 24);
        let vm_state_small = rd32(e, 32);
        let extra_len = rd32(e, 36) as usize;
        if extra_len > 1024 {
            return Err(bad(format!("extra data size {extra_len} too large")));
        }
        let total = 40 + extra_len + id_len + name_len;
        if at + total > buf.len() {
            return Err(bad("runs past the end of the table".into()));
        }
        let extra = e[40..40 + extra_len].to_vec();
        // qcow2 leaves the encoding open; Island names snapshots by UTF-8 strings and would
        // otherwise rewrite (and look up) a name other than the one on disk.
        let text = |what: &str, raw: &[u8]| {
            String::from_utf8(raw.to_vec()).map_err(|_| ImageError::Unsupported {
                path: path.to_path_buf(),
                feature: format!("snapshot entry {i} at offset {off}: {what} is not UTF-8"),
            })
        };
        let id = text("id", &e[40 + extra_len..40 + extra_len + id_len])?;
        let name = text("name", &e[40 + extra_len + id_len..total])?;
        let vm_state_size = if extra_len >= 8 {
            rd64(&extra, 0)
        } else {
            u64::from(vm_state_small)
        };
        let disk_size = if extra_len >= 16 {
            Some(rd64(&extra, 8))
        } else {
            None
        };
        if u64::from(l1_size) * 8 > super::header::MAX_L1_BYTES {
            return Err(bad(format!("L1 size {l1_size} too large")));
        }
        super::header::check_table(
            path,
            "snapshot L1 table",
            l1_table_offset,
            u64::from(l1_size) * 8,
            cluster_size,
            file_len,
        )?;
        out.push(SnapshotEntry {
            l1_table_offset,
            l1_size,
            id,
            name,
            date_sec,
            date_nsec,
            vm_clock_nsec,
            vm_state_size,
            disk_size,
            extra,
        });
        at = (at + total + 7) & !7;
    }
    Ok(out)
}

/// Serialize the whole table.
pub(super) fn serialize_table(entries: &[SnapshotEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.encoded_len()).sum());
    for e in entries {
        let start = out.len();
        out.extend_from_slice(&e.l1_table_offset.to_be_bytes());
        out.extend_from_slice(&e.l1_size.to_be_bytes());
        out.extend_from_slice(&(e.id.len() as u16).to_be_bytes());
        out.extend_from_slice(&(e.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&e.date_sec.to_be_bytes());
        out.extend_from_slice(&e.date_nsec.to_be_bytes());
        out.extend_from_slice(&e.vm_clock_nsec.to_be_bytes());
        out.extend_from_slice(&(e.vm_state_size.min(u64::from(u32::MAX)) as u32).to_be_bytes());
        out.extend_from_slice(&(e.extra.len() as u32).to_be_bytes());
        out.extend_from_slice(&e.extra);
        out.extend_from_slice(e.id.as_bytes());
        out.extend_from_slice(e.name.as_bytes());
        out.resize(start + e.encoded_len(), 0);
    }
    out
}

/// The id QEMU would give the next snapshot: one more than the largest numeric id.
pub(super) fn next_id(entries: &[SnapshotEntry]) -> String {
    let max = entries
        .iter()
        .filter_map(|e| e.id.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    (max + 1).to_string()
}

/// Find by id first, then by name (QEMU's lookup order).
pub(super) fn find(entries: &[SnapshotEntry], name_or_id: &str) -> Option<usize> {
    entries
        .iter()
        .position(|e| e.id == name_or_id)
        .or_else(|| entries.iter().position(|e| e.name == name_or_id))
}

impl State {
    /// Create a snapshot. Order: flush; copy the active L1 to new clusters and +1 every
    /// L2 table and cluster reachable from it (refcounts durable); clear COPIED in the
    /// active tables (durable); write the new snapshot table, then the header; release
    /// the old table last.
    pub(crate) fn create_snapshot(
        &mut self,
        name: &str,
        date: (u32, u32),
    ) -> Result<SnapshotEntry, ImageError> {
        if name.is_empty() || name.len() > usize::from(u16::MAX) {
            return Err(ImageError::InvalidArgument {
                path: self.path.clone(),
                reason: "snapshot name must be 1 to 65535 bytes".into(),
            });
        }
        if self.snapshots.iter().any(|e| e.name == name) {
            return Err(ImageError::SnapshotExists {
                path: self.path.clone(),
                name: name.to_string(),
            });
        }
        if self.snapshots.len() as u32 >= MAX_SNAPSHOTS {
            return Err(ImageError::InvalidArgument {
                path: self.path.clone(),
                reason: format!("at most {MAX_SNAPSHOTS} snapshots"),
            });
        }
        if self.header.refcount_order == 0 {
            return Err(ImageError::Unsupported {
                path: self.path.clone(),
                feature: "snapshots with 1-bit refcounts; widen with `qemu-img amend -o refcount_bits=16`".into(),
            });
        }
        self.flush_locked()?;
        let active = self.l1.clone();
        let active_off = self.header.l1_table_offset;
        let before = self.header.nb_snapshots;
        let mut undo = Undo::default();
        let r = self.create_snapshot_steps(name, date, &active, &mut undo);
        // Once the header may name the new table the snapshot exists: nothing is undone.
        if r.is_err() && self.header.nb_snapshots == before {
            if let Err(u) = self.undo_create(&active, active_off, &undo) {
                tracing::error!(
                    "{}: undoing a failed snapshot creation failed (clusters may leak): {u}",
                    self.path.display()
                );
            }
        }
        r
    }

    /// The steps of [`State::create_snapshot`], recording in `undo` what they did. The
    /// active tree's refcounts go up first, before anything is allocated: a cluster the
    /// tree references with refcount 0 (a damaged refcount) is refused there, before the
    /// allocator could hand it out for the L1 copy and overwrite guest data.
    fn create_snapshot_steps(
        &mut self,
        name: &str,
        date: (u32, u32),
        active: &[u64],
        undo: &mut Undo,
    ) -> Result<SnapshotEntry, ImageError> {
        let active_off = self.header.l1_table_offset;
        self.walk_tree(active, active_off, |st, batch| {
            st.bulk_adjust(batch, 1)?;
            undo.batches += 1;
            Ok(())
        })?;
        let l1 = strip_copied(active);
        let mut bytes = Vec::with_capacity(l1.len() * 8);
        for e in &l1 {
            bytes.extend_from_slice(&e.to_be_bytes());
        }
        let l1_offset = if l1.is_empty() {
            0
        } else {
            let n = (bytes.len() as u64).div_ceil(self.cs);
            let start = self.alloc(n)?.0 << self.cb;
            undo.l1_copy = Some((start >> self.cb, n));
            self.claim(start, n, Region::SnapL1)?;
            bytes.resize((n * self.cs) as usize, 0);
            self.write(
                &bytes,
                start,
                "write snapshot L1 table",
                Some(Region::SnapL1),
            )?;
            start
        };
        self.flush_locked()?;
        undo.fixed = true;
        self.fix_copied()?;
        self.flush_locked()?;
        let entry = SnapshotEntry::new(
            next_id(&self.snapshots),
            name.to_string(),
            l1_offset,
            l1.len() as u32,
            self.header.size,
            date,
        );
        let mut entries = self.snapshots.clone();
        entries.push(entry.clone());
        self.write_snapshot_table(entries)?;
        Ok(entry)
    }

    /// Take back what a failed snapshot creation did before the header named the new
    /// table, so `qemu-img check` finds nothing leaked: the L1 copy's clusters (nothing
    /// points at them) and the +1 of every batch of the active tree, then COPIED recomputed,
    /// then one ordered flush.
    fn undo_create(
        &mut self,
        active: &[u64],
        active_off: u64,
        undo: &Undo,
    ) -> Result<(), ImageError> {
        if let Some((first, n)) = undo.l1_copy {
            for c in first..first + n {
                self.adjust(HostCluster(c), -1)?;
            }
        }
        let mut left = undo.batches;
        let r = self.walk_tree(active, active_off, |st, batch| {
            if left == 0 {
                batch.clear();
                return Ok(());
            }
            left -= 1;
            st.bulk_adjust(batch, -1)
        });
        // The walk fails again where the creation failed, after the batches to undo.
        if left > 0 {
            r?;
        }
        if undo.fixed {
            self.fix_copied()?;
        }
        self.flush_locked()
    }

    fn find_snapshot(&self, name_or_id: &str) -> Result<usize, ImageError> {
        find(&self.snapshots, name_or_id).ok_or_else(|| ImageError::NoSuchSnapshot {
            path: self.path.clone(),
            name: name_or_id.to_string(),
        })
    }

    /// Delete a snapshot: the table without it is made durable (header switched) first,
    /// then the refcounts of everything its L1 reached are decremented.
    pub(crate) fn delete_snapshot(&mut self, name_or_id: &str) -> Result<(), ImageError> {
        let idx = self.find_snapshot(name_or_id)?;
        let sn = self.snapshots[idx].clone();
        let sn_l1 = self.read_l1(sn.l1_table_offset, sn.l1_size)?;
        let mut entries = self.snapshots.clone();
        entries.remove(idx);
        self.write_snapshot_table(entries)?;
        self.walk_tree(&sn_l1, sn.l1_table_offset, |st, batch| {
            st.bulk_adjust(batch, -1)
        })?;
        if sn.l1_table_offset != 0 {
            let first = sn.l1_table_offset >> self.cb;
            let n = (u64::from(sn.l1_size) * 8).div_ceil(self.cs);
            let mut own: Vec<u64> = (first..first + n).collect();
            self.bulk_adjust(&mut own, -1)?;
        }
        self.flush_locked()?;
        self.fix_copied()?;
        self.flush_locked()
    }

    /// Revert the active layer to a snapshot (as QEMU's qcow2_snapshot_goto): +1 for the
    /// snapshot's tree (durable), install its L1 as the active one (durable, header with
    /// the snapshot's disk size), then -1 for the old active tree, then fix COPIED.
    pub(crate) fn revert_snapshot(&mut self, name_or_id: &str) -> Result<(), ImageError> {
        let idx = self.find_snapshot(name_or_id)?;
        let sn = self.snapshots[idx].clone();
        let sn_l1 = self.read_l1(sn.l1_table_offset, sn.l1_size)?;
        let size = sn.disk_size.unwrap_or(self.header.size);
        self.flush_locked()?;
        self.walk_tree(&sn_l1, sn.l1_table_offset, |st, batch| {
            st.bulk_adjust(batch, 1)
        })?;
        self.flush_locked()?;
        let old = self.l1.clone();
        let old_off = self.header.l1_table_offset;
        let len = old
            .len()
            .max(sn_l1.len())
            .max(self.l1_entries_for(size) as usize);
        let mut new = strip_copied(&sn_l1);
        new.resize(len, 0);
        self.install_l1(new, size)?;
        // install_l1 may have moved the table; the old tree is walked from our copy.
        self.walk_tree(&old, old_off, |st, batch| st.bulk_adjust(batch, -1))?;
        self.flush_locked()?;
        self.fix_copied()?;
        self.flush_locked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trip_and_golden_layout() {
        let a = SnapshotEntry::new("1".into(), "first".into(), 0x30000, 2, 1 << 20, (5, 6));
        let b = SnapshotEntry::new(
            "2".into(),
            "second-name".into(),
            0x40000,
            3,
            2 << 20,
            (7, 8),
        );
        let bytes = serialize_table(&[a.clone(), b.clone()]);
        // 40 fixed + 24 extra + 1 id + 5 name = 70, padded to 72.
        assert_eq!(&bytes[0..8], &0x30000u64.to_be_bytes());
        assert_eq!(&bytes[36..40], &24u32.to_be_bytes());
        assert_eq!(&bytes[64..70], b"1first");
        assert_eq!(bytes.len(), 72 + 80);
        let back = parse_table(Path::new("x"), &bytes, 0x50000, 2, 65536, 1 << 20).unwrap();
        assert_eq!(back, vec![a, b]);
        assert_eq!(next_id(&back), "3");
        assert_eq!(find(&back, "second-name"), Some(1));
        assert_eq!(find(&back, "1"), Some(0));
    }

    #[test]
    fn truncated_table_is_an_error() {
        let a = SnapshotEntry::new("1".into(), "first".into(), 0x30000, 2, 1 << 20, (5, 6));
        let bytes = serialize_table(&[a]);
        assert!(parse_table(Path::new("x"), &bytes[..60], 0, 1, 65536, 1 << 20).is_err());
        assert!(parse_table(Path::new("x"), &bytes, 0, 2, 65536, 1 << 20).is_err());
    }

    #[test]
    fn non_utf8_name_or_id_is_refused_not_decoded_lossily() {
        let a = SnapshotEntry::new("1".into(), "first".into(), 0x30000, 2, 1 << 20, (5, 6));
        for at in [64, 66] {
            // 64: the id "1"; 66: inside the name "first".
            let mut bytes = serialize_table(std::slice::from_ref(&a));
            bytes[at] = 0xff;
            let err = parse_table(Path::new("x"), &bytes, 0, 1, 65536, 1 << 20).unwrap_err();
            assert!(
                matches!(err, ImageError::Unsupported { .. }) && err.to_string().contains("UTF-8"),
                "{err}"
            );
        }
    }
}

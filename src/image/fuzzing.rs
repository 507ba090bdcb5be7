//! The qcow2 decoders as pure functions of bytes, for the fuzz targets (`fuzz/`) and the
//! regression tests that replay what they found (`tests/fuzz_regressions.rs`). Not an
//! API: each function panics only when the decoder did or when its round-trip property
//! fails (both findings).

use super::file::ImageFile;
use super::header::{check_table, Header};
use super::mapping::{classify, l1_target, Mapping, OFLAG_COPIED, OFLAG_ZERO};
use super::refcount::{get_entry, set_entry};
use super::snapshot::{parse_table, serialize_table};
use super::Image;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// File length the table decoders are told (1 TiB): tables anywhere in a small input lie
/// inside it, so the fuzzer reaches the checks behind the bounds check.
const CLAIMED_FILE_LEN: u64 = 1 << 40;

/// The qcow2 header and its extensions, read as `Image::open` reads them: the first
/// cluster (or the whole input if shorter). Round trip: the encoded header is the input's
/// first `header_length` bytes, and parses back (with the input's extension area) to the
/// same header.
pub fn header(bytes: &[u8]) {
    let path = Path::new("fuzz.qcow2");
    let cb = bytes
        .get(20..24)
        .map_or(16, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let first = if (9..=21).contains(&cb) {
        &bytes[..bytes.len().min(1 << cb)]
    } else {
        bytes
    };
    let Ok(mut h) = Header::parse(path, first, CLAIMED_FILE_LEN) else {
        return;
    };
    let len = h.header_length as usize;
    let encoded = h.encode();
    assert!(encoded == first[..len], "header re-encodes to other bytes");
    let again = Header::parse(path, first, CLAIMED_FILE_LEN).expect("parses twice");
    assert_eq!(again, h);
}

/// A snapshot table: input = entry count (u16, big-endian) ‖ table bytes, at a table
/// offset and cluster size of 512 in a 1 TiB file. Canonical form: entries serialized by
/// Island (zero padding, the 32-bit vm_state_size field derived from the extra data),
/// which must parse back to the same entries; ids and names keep their bytes (ones that
/// are not UTF-8 are refused, see format-spec/image.md §2).
pub fn snapshot_table(bytes: &[u8]) {
    let path = Path::new("fuzz.qcow2");
    let Some((count, table)) = bytes.split_first_chunk::<2>() else {
        return;
    };
    let count = u32::from(u16::from_be_bytes(*count));
    let Ok(entries) = parse_table(path, table, 512, count, 512, CLAIMED_FILE_LEN) else {
        return;
    };
    let encoded = serialize_table(&entries);
    let again = parse_table(path, &encoded, 512, count, 512, CLAIMED_FILE_LEN)
        .expect("a serialized table parses");
    assert_eq!(again, entries, "snapshot table round trip changed entries");
    let mut at = 0usize;
    for e in &entries {
        let raw = &table[at + 40 + e.extra.len()..];
        let (id_len, name_len) = (
            usize::from(u16::from_be_bytes([table[at + 12], table[at + 13]])),
            usize::from(u16::from_be_bytes([table[at + 14], table[at + 15]])),
        );
        let (id, name) = (&raw[..id_len], &raw[id_len..id_len + name_len]);
        assert!(e.id.as_bytes() == id, "snapshot id changed");
        assert!(e.name.as_bytes() == name, "snapshot name changed");
        at = (at + 40 + e.extra.len() + id_len + name_len + 7) & !7;
    }
}

/// L1 and L2 entries and refcount blocks: input = cluster_bits selector ‖ 8-byte entries.
/// Every entry is decoded as an L1 and as an L2 entry in an image of 1 TiB; a valid L2
/// entry re-encodes to itself (canonical form: the COPIED bit is dropped from zero and
/// unallocated entries, which own no cluster to write in place). The bytes are also read as a refcount
/// block at every refcount order, and writing each entry back must not change them.
pub fn tables(bytes: &[u8]) {
    let path = Path::new("fuzz.qcow2");
    let Some((&sel, rest)) = bytes.split_first() else {
        return;
    };
    let cs = 1u64 << (9 + u32::from(sel) % 13);
    for (i, e) in rest.chunks_exact(8).enumerate() {
        let e = u64::from_be_bytes(e.try_into().unwrap_or_default());
        let at = i as u64 * 8;
        if let Ok(l2) = l1_target(e, cs, CLAIMED_FILE_LEN, path, at) {
            assert_eq!(
                l2 | (e & OFLAG_COPIED),
                e,
                "L1 entry re-encodes differently"
            );
        }
        let back = match classify(e, cs, CLAIMED_FILE_LEN, path, at) {
            Ok(Mapping::Unallocated) => 0,
            Ok(Mapping::Zero { host }) => host.map_or(0, |h| h.0) | OFLAG_ZERO,
            Ok(Mapping::Data { host, copied }) => host.0 | if copied { OFLAG_COPIED } else { 0 },
            Ok(Mapping::Compressed) | Err(_) => continue,
        };
        let unowned = e & OFLAG_ZERO != 0 || e & !OFLAG_COPIED == 0;
        let canonical = if unowned { e & !OFLAG_COPIED } else { e };
        assert_eq!(back, canonical, "L2 entry {e:#x} re-encodes to {back:#x}");
    }
    for order in 0..=6u32 {
        let n = (rest.len() * 8) >> order;
        let mut copy = rest.to_vec();
        for i in 0..n {
            set_entry(&mut copy, i, order, get_entry(rest, i, order));
        }
        assert!(copy == rest, "refcount block order {order} round trip");
    }
    let _ = check_table(path, "table", rest.len() as u64, cs, cs, CLAIMED_FILE_LEN);
}

/// The fuzz input as a read-only image file.
struct ReadOnlyBytes(Vec<u8>);

impl ImageFile for ReadOnlyBytes {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|&s| s <= self.0.len());
        let src = start
            .and_then(|s| self.0.get(s..s.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past end of input"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only"))
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only"))
    }
}

/// Reads a few guest ranges of one view: start, middle and end, clipped to the size.
fn probe(img: &Image, snapshot: Option<&str>, size: u64) {
    let mut buf = vec![0u8; 16384];
    for at in [0, size / 2, size.saturating_sub(4096)] {
        let len = (size - at.min(size)).min(buf.len() as u64) as usize;
        let buf = &mut buf[..len];
        let _ = match snapshot {
            None => img.read_at(buf, at),
            Some(s) => img.read_snapshot_at(s, buf, at),
        };
    }
    let _ = img.extents(snapshot, 0, size.min(1 << 24));
}

/// A whole image opened read-only from the bytes (header, refcount table, L1, snapshot
/// table), then read through L2 tables at a few offsets of the active view and of up to
/// four snapshots, mapped, and diffed against the active view.
pub fn open(bytes: &[u8]) {
    let file = Arc::new(ReadOnlyBytes(bytes.to_vec()));
    let Ok(img) = Image::open_on(file, "fuzz.qcow2", false) else {
        return;
    };
    let _ = img.info();
    probe(&img, None, img.size());
    for s in img.snapshots().iter().take(4) {
        probe(&img, Some(&s.id), s.disk_size);
        let _ = img.changed_ranges(&s.id, None);
    }
}

//! Packs: many blob frames in one object, so a full backup costs about one PUT per pack
//! (target 16 MiB) while blobs stay 64 KiB for fine-grained incrementals.
//!
//! Layout: frames back to back ‖ footer (48-byte entries) ‖ 24-byte trailer.
//! ```text
//! footer entry: id[32] ‖ kind u8 ‖ 0[3] ‖ offset u32 ‖ frame_len u32 ‖ plain_len u32
//! trailer:      "ISPK" ‖ version u16 ‖ 0 u16 ‖ entry_count u32 ‖ footer_offset u32
//!               ‖ crc32c(footer) u32 ‖ crc32c(trailer[0..20]) u32
//! ```
//! The footer duplicates the index entries for the pack, so `check --repair` and gc can
//! rebuild locations from the packs alone.

use crate::repo::{BlobId, BlobKind, Frame, RepoError};
use crate::store::ObjectStore;
use crate::Result;

const PACK_MAGIC: &[u8; 4] = b"ISPK";
const PACK_VERSION: u16 = 1;
const ENTRY_SIZE: usize = 48;
pub(crate) const TRAILER_SIZE: usize = 24;

/// Where a blob sits inside a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PackEntry {
    pub id: BlobId,
    pub kind: BlobKind,
    pub offset: u32,
    pub frame_len: u32,
    pub plain_len: u32,
}

/// Accumulates frames for one pack.
#[derive(Default)]
pub(crate) struct PackWriter {
    data: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl PackWriter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Bytes of frames so far.
    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Append one frame.
    pub(crate) fn push(&mut self, frame: &Frame) {
        self.entries.push(PackEntry {
            id: frame.id,
            kind: frame.kind,
            offset: self.data.len() as u32,
            frame_len: frame.bytes.len() as u32,
            plain_len: frame.plain_len,
        });
        self.data.extend_from_slice(&frame.bytes);
    }

    /// Seal the pack: returns the object bytes and the entries (for the index).
    pub(crate) fn finish(mut self) -> (Vec<u8>, Vec<PackEntry>) {
        let footer_offset = self.data.len() as u32;
        let mut footer = Vec::with_capacity(self.entries.len() * ENTRY_SIZE);
        for e in &self.entries {
            footer.extend_from_slice(&e.id.0);
            footer.push(e.kind.code());
            footer.extend_from_slice(&[0, 0, 0]);
            footer.extend_from_slice(&e.offset.to_le_bytes());
            footer.extend_from_slice(&e.frame_len.to_le_bytes());
            footer.extend_from_slice(&e.plain_len.to_le_bytes());
        }
        let footer_crc = crc32c::crc32c(&footer);
        self.data.extend_from_slice(&footer);
        let mut trailer = Vec::with_capacity(TRAILER_SIZE);
        trailer.extend_from_slice(PACK_MAGIC);
        trailer.extend_from_slice(&PACK_VERSION.to_le_bytes());
        trailer.extend_from_slice(&0u16.to_le_bytes());
        trailer.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        trailer.extend_from_slice(&footer_offset.to_le_bytes());
        trailer.extend_from_slice(&footer_crc.to_le_bytes());
        let tcrc = crc32c::crc32c(&trailer);
        trailer.extend_from_slice(&tcrc.to_le_bytes());
        self.data.extend_from_slice(&trailer);
        (self.data, self.entries)
    }
}

/// Parse a pack's trailer: returns (entry count, footer offset, footer crc).
pub(crate) fn parse_trailer(key: &str, t: &[u8]) -> Result<(u32, u32, u32), RepoError> {
    let bad = |r: &str| RepoError::corrupt(key, r.to_string());
    if t.len() != TRAILER_SIZE {
        return Err(bad("pack trailer has wrong size"));
    }
    if &t[0..4] != PACK_MAGIC {
        return Err(bad("pack trailer magic is not ISPK"));
    }
    let crc = u32::from_le_bytes([t[20], t[21], t[22], t[23]]);
    if crc32c::crc32c(&t[..20]) != crc {
        return Err(bad("pack trailer crc32c mismatch"));
    }
    let version = u16::from_le_bytes([t[4], t[5]]);
    if version != PACK_VERSION {
        return Err(RepoError::Unsupported {
            key: key.to_string(),
            reason: format!("pack version {version}"),
        });
    }
    if t[6] != 0 || t[7] != 0 {
        return Err(bad("pack trailer reserved bytes are not zero"));
    }
    let rd = |o: usize| u32::from_le_bytes([t[o], t[o + 1], t[o + 2], t[o + 3]]);
    Ok((rd(8), rd(12), rd(16)))
}

/// Parse and check a footer (entries must lie within the frames area, in order).
pub(crate) fn parse_footer(
    key: &str,
    footer: &[u8],
    count: u32,
    footer_offset: u32,
    footer_crc: u32,
) -> Result<Vec<PackEntry>, RepoError> {
    let bad = |r: String| RepoError::corrupt(key, r);
    if Some(footer.len()) != (count as usize).checked_mul(ENTRY_SIZE) {
        return Err(bad(format!(
            "footer size {} for {count} entries",
            footer.len()
        )));
    }
    if crc32c::crc32c(footer) != footer_crc {
        return Err(bad("pack footer crc32c mismatch".into()));
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut next = 0u64;
    for (i, e) in footer.chunks_exact(ENTRY_SIZE).enumerate() {
        let rd = |o: usize| u32::from_le_bytes([e[o], e[o + 1], e[o + 2], e[o + 3]]);
        let kind =
            BlobKind::from_code(e[32]).ok_or_else(|| bad(format!("entry {i}: kind {}", e[32])))?;
        let id = BlobId::from_slice(&e[..32]).ok_or_else(|| bad(format!("entry {i}: id")))?;
        if e[33..36] != [0, 0, 0] {
            return Err(bad(format!("entry {i}: reserved bytes are not zero")));
        }
        let (offset, frame_len, plain_len) = (rd(36), rd(40), rd(44));
        let end = offset as u64 + frame_len as u64;
        if offset as u64 != next || end > footer_offset as u64 {
            return Err(bad(format!(
                "entry {i}: frame {offset}+{frame_len} out of place"
            )));
        }
        next = end;
        out.push(PackEntry {
            id,
            kind,
            offset,
            frame_len,
            plain_len,
        });
    }
    if next != footer_offset as u64 {
        return Err(bad("frames do not end at the footer".into()));
    }
    Ok(out)
}

/// Key of a pack: `packs/<first 2 hex of BLAKE3(name)>/<name>` (spreads keys over 256
/// prefixes for stores that partition by prefix).
pub(crate) fn pack_key(name: &str) -> String {
    let h = blake3::hash(name.as_bytes());
    format!("packs/{:02x}/{name}", h.as_bytes()[0])
}

/// The footer entries of pack `name` (HEAD, then the trailer and the footer: 3 requests),
/// the pack's own index that a rebuild and `check --read-data` rely on.
pub(crate) async fn pack_entries(store: &dyn ObjectStore, name: &str) -> Result<Vec<PackEntry>> {
    let key = pack_key(name);
    let size = store.head(&key).await?.size;
    if size < TRAILER_SIZE as u64 {
        return Err(RepoError::corrupt(&key, "pack shorter than its trailer").into());
    }
    let t = store
        .get_range(&key, size - TRAILER_SIZE as u64..size)
        .await?;
    let (count, off, crc) = parse_trailer(&key, &t)?;
    if off as u64 > size - TRAILER_SIZE as u64 {
        return Err(RepoError::corrupt(&key, "footer offset past the end").into());
    }
    let footer = store
        .get_range(&key, off as u64..size - TRAILER_SIZE as u64)
        .await?;
    Ok(parse_footer(&key, &footer, count, off, crc)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::format::chunk::decode_frame;

    #[test]
    fn pack_roundtrip_and_golden_trailer() {
        let mut w = PackWriter::new();
        let a = Frame::encode(BlobKind::Chunk, b"aaaa");
        let b = Frame::encode(BlobKind::Chunk, &[9u8; 5000]);
        w.push(&a);
        w.push(&b);
        let (bytes, entries) = w.finish();
        let t = &bytes[bytes.len() - TRAILER_SIZE..];
        assert_eq!(&t[0..8], b"ISPK\x01\x00\x00\x00");
        assert_eq!(u32::from_le_bytes(t[8..12].try_into().unwrap()), 2);
        let (count, off, crc) = parse_trailer("p", t).unwrap();
        let footer = &bytes[off as usize..bytes.len() - TRAILER_SIZE];
        let parsed = parse_footer("p", footer, count, off, crc).unwrap();
        assert_eq!(parsed, entries);
        let e = parsed[1];
        let frame = &bytes[e.offset as usize..(e.offset + e.frame_len) as usize];
        assert_eq!(
            decode_frame("p", frame, Some(b.id)).unwrap().2,
            vec![9u8; 5000]
        );
        let mut bad = footer.to_vec();
        bad[40] ^= 1;
        assert!(parse_footer("p", &bad, count, off, crc).is_err());
    }

    /// Reserved bytes must be zero (format-spec §3.2): a crc-valid pack with a non-zero
    /// reserved byte in its trailer or a footer entry was accepted (found by the `pack`
    /// fuzz target's round trip; fuzz/regressions/pack/).
    #[test]
    fn nonzero_reserved_bytes_are_refused() {
        let mut w = PackWriter::new();
        w.push(&Frame::encode(BlobKind::Chunk, b"aaaa"));
        let (bytes, _) = w.finish();
        let t_at = bytes.len() - TRAILER_SIZE;
        let mut t = bytes[t_at..].to_vec();
        t[7] = 1;
        let crc = crc32c::crc32c(&t[..20]);
        t[20..].copy_from_slice(&crc.to_le_bytes());
        assert!(parse_trailer("p", &t).is_err());
        let (count, off, _) = parse_trailer("p", &bytes[t_at..]).unwrap();
        let mut footer = bytes[off as usize..t_at].to_vec();
        footer[34] = 7;
        let crc = crc32c::crc32c(&footer);
        assert!(parse_footer("p", &footer, count, off, crc).is_err());
    }
}

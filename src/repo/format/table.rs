//! Merkle tables: a snapshot's full block map as a tree of content-addressed table blobs.
//!
//! Table plain bytes (stored as a `Table` blob frame, so they are crc- and BLAKE3-checked):
//! ```text
//!  0 4 magic "ISTT"   4 2 version (1)   6 1 level (0 = leaf: chunk ids)   7 1 reserved (0)
//!  8 4 entry count (1..=1024)           12 32×n ids (all-zero id = zero chunk / subtree)
//! ```
//! A table whose entries are all zero is never stored: its parent holds the zero id.

use crate::repo::{BlobId, RepoError};

const TABLE_MAGIC: &[u8; 4] = b"ISTT";
const TABLE_VERSION: u16 = 1;
/// Entries per table: 1024 × 32 B = 32 KiB tables; a leaf covers 64 MiB at 64 KiB chunks.
pub(crate) const FANOUT: u64 = 1024;

/// Encode a table of `level`.
pub(crate) fn encode(level: u8, ids: &[BlobId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + ids.len() * 32);
    out.extend_from_slice(TABLE_MAGIC);
    out.extend_from_slice(&TABLE_VERSION.to_le_bytes());
    out.push(level);
    out.push(0);
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.0);
    }
    out
}

/// Decode and check a table; `level` and `count` are what the tree geometry expects here.
pub(crate) fn decode(
    key: &str,
    plain: &[u8],
    level: u8,
    count: usize,
) -> Result<Vec<BlobId>, RepoError> {
    let bad = |r: String| RepoError::corrupt(key, r);
    if plain.len() < 12 || &plain[0..4] != TABLE_MAGIC {
        return Err(bad("table magic is not ISTT".into()));
    }
    let version = u16::from_le_bytes([plain[4], plain[5]]);
    if version != TABLE_VERSION {
        return Err(RepoError::Unsupported {
            key: key.into(),
            reason: format!("table version {version}"),
        });
    }
    if plain[6] != level || plain[7] != 0 {
        return Err(bad(format!(
            "table level {} where {level} expected",
            plain[6]
        )));
    }
    let n = u32::from_le_bytes([plain[8], plain[9], plain[10], plain[11]]) as usize;
    if n != count || Some(plain.len()) != n.checked_mul(32).and_then(|x| x.checked_add(12)) {
        return Err(bad(format!(
            "table holds {n} entries where {count} expected"
        )));
    }
    Ok(plain[12..]
        .chunks_exact(32)
        .map(|c| BlobId(c.try_into().unwrap_or([0; 32])))
        .collect())
}

/// Decode a table whose position is not known (gc revival): checks everything but the
/// geometry.
pub(crate) fn decode_any(key: &str, plain: &[u8]) -> Result<Vec<BlobId>, RepoError> {
    if plain.len() < 12 {
        return Err(RepoError::corrupt(key, "table shorter than its header"));
    }
    let n = u32::from_le_bytes([plain[8], plain[9], plain[10], plain[11]]) as usize;
    // No geometry to compare with, but no table Island writes is empty or over the fanout.
    if n == 0 || n as u64 > FANOUT {
        return Err(RepoError::corrupt(
            key,
            format!("table holds {n} entries (1..={FANOUT} allowed)"),
        ));
    }
    decode(key, plain, plain[6], n)
}

/// Shape of a snapshot's tree, derived from size and chunk size only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub chunks: u64,
    /// Number of table levels (≥ 1 when there is any chunk); the root lists level depth-1.
    pub depth: u8,
}

impl Geometry {
    pub(crate) fn new(size: u64, chunk_size: u32) -> Geometry {
        let chunks = size.div_ceil(chunk_size as u64);
        let mut depth = 1u8;
        while chunks.div_ceil(span(depth)) > FANOUT {
            depth += 1;
        }
        Geometry { chunks, depth }
    }

    /// Length of the root's top-level list.
    pub(crate) fn top_len(&self) -> usize {
        self.chunks.div_ceil(span(self.depth)) as usize
    }

    /// Entry count of table `index` at `level` (tables at the end are shorter).
    pub(crate) fn table_len(&self, level: u8, index: u64) -> usize {
        let covered = span(level + 1);
        let first = index * covered;
        let child = span(level);
        let chunks_here = self.chunks.saturating_sub(first).min(covered);
        chunks_here.div_ceil(child) as usize
    }
}

/// Chunks covered by one entry of a table at `level` (level 0 entries are chunks).
pub(crate) fn span(level: u8) -> u64 {
    FANOUT.saturating_pow(level as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_for_16_tib_keeps_root_small() {
        let g = Geometry::new(16 << 40, 65536);
        assert_eq!(g.chunks, 256 << 20);
        assert_eq!(g.depth, 2);
        assert_eq!(g.top_len(), 256);
        let g = Geometry::new(100 * 65536 + 1, 65536);
        assert_eq!((g.chunks, g.depth, g.top_len()), (101, 1, 1));
        assert_eq!(g.table_len(0, 0), 101);
        let g = Geometry::new(0, 65536);
        assert_eq!(g.top_len(), 0);
        let g = Geometry::new(3000 * 65536, 65536);
        assert_eq!((g.table_len(0, 2), g.top_len()), (952, 3));
    }

    #[test]
    fn golden_table() {
        let ids = [BlobId([1; 32]), BlobId::ZERO];
        let b = encode(0, &ids);
        assert_eq!(&b[..12], b"ISTT\x01\x00\x00\x00\x02\x00\x00\x00");
        assert_eq!(decode("t", &b, 0, 2).unwrap(), ids);
        assert!(decode("t", &b, 1, 2).is_err());
        assert!(decode("t", &b, 0, 3).is_err());
    }

    #[test]
    fn decode_any_refuses_empty_and_oversized_tables() {
        assert!(decode_any("t", &encode(0, &[])).is_err());
        let over = vec![BlobId([1; 32]); FANOUT as usize + 1];
        assert!(decode_any("t", &encode(1, &over)).is_err());
        let full = vec![BlobId([1; 32]); FANOUT as usize];
        assert_eq!(decode_any("t", &encode(1, &full)).unwrap(), full);
    }
}

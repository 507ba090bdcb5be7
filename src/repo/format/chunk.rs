//! Blob frames: the unit stored inside packs.
//!
//! Layout (little-endian), 48-byte header + payload + 4-byte crc32c:
//! ```text
//!  0  4  magic "ISBF"
//!  4  1  version (1)
//!  5  1  codec (0 raw, 1 lz4 block)
//!  6  1  kind (0 chunk, 1 table)
//!  7  1  flags (0; reserved for per-blob AEAD: key id / nonce follow the header when set)
//!  8  4  plain length
//! 12  4  stored (payload) length
//! 16 32  blob id = BLAKE3(plain)
//! 48  n  payload
//! 48+n 4 crc32c(header ‖ payload)
//! ```
//! The id inside the frame lets `check --read-data` and restore verify a frame without the
//! index, and the crc separates media corruption (crc) from a wrong blob (hash).

use crate::repo::{BlobId, RepoError};

pub(crate) const FRAME_MAGIC: &[u8; 4] = b"ISBF";
pub(crate) const FRAME_VERSION: u8 = 1;
pub(crate) const FRAME_HEADER: usize = 48;
/// Header + crc: what a frame costs beyond its payload.
pub(crate) const FRAME_OVERHEAD: usize = FRAME_HEADER + 4;
/// Largest plain blob accepted (chunk sizes go to 4 MiB; tables are 32 KiB).
pub(crate) const MAX_PLAIN: u32 = 4 << 20;

const CODEC_RAW: u8 = 0;
const CODEC_LZ4: u8 = 1;

/// What a blob holds; kept in frames and pack footers so table packs can be told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum BlobKind {
    /// Guest data.
    Chunk,
    /// A Merkle table node.
    Table,
}

impl BlobKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            BlobKind::Chunk => 0,
            BlobKind::Table => 1,
        }
    }
    pub(crate) fn from_code(c: u8) -> Option<BlobKind> {
        match c {
            0 => Some(BlobKind::Chunk),
            1 => Some(BlobKind::Table),
            _ => None,
        }
    }
}

/// One encoded blob frame ready to be appended to a pack.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub id: BlobId,
    pub kind: BlobKind,
    pub plain_len: u32,
    pub bytes: Vec<u8>,
}

impl Frame {
    /// Hash, compress (lz4 only when strictly smaller) and frame `plain`.
    #[cfg(test)]
    pub(crate) fn encode(kind: BlobKind, plain: &[u8]) -> Frame {
        let id = BlobId::of(plain);
        Self::encode_with_id(kind, plain, id)
    }

    /// Frame `plain` whose id the caller already computed.
    pub(crate) fn encode_with_id(kind: BlobKind, plain: &[u8], id: BlobId) -> Frame {
        let compressed = lz4_flex::block::compress(plain);
        let (codec, payload): (u8, &[u8]) = if compressed.len() < plain.len() {
            (CODEC_LZ4, &compressed)
        } else {
            (CODEC_RAW, plain)
        };
        let mut bytes = Vec::with_capacity(FRAME_OVERHEAD + payload.len());
        bytes.extend_from_slice(FRAME_MAGIC);
        bytes.push(FRAME_VERSION);
        bytes.push(codec);
        bytes.push(kind.code());
        bytes.push(0);
        bytes.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&id.0);
        bytes.extend_from_slice(payload);
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        Frame {
            id,
            kind,
            plain_len: plain.len() as u32,
            bytes,
        }
    }
}

/// Decode and fully verify one frame (magic, version, codec, lengths, crc, BLAKE3).
/// `key` names the containing object for messages; `expect` is the id the caller looked up.
pub(crate) fn decode_frame(
    key: &str,
    bytes: &[u8],
    expect: Option<BlobId>,
) -> Result<(BlobId, BlobKind, Vec<u8>), RepoError> {
    let bad = |r: String| RepoError::corrupt(key, r);
    if bytes.len() < FRAME_OVERHEAD {
        return Err(bad(format!(
            "frame of {} bytes is shorter than its header",
            bytes.len()
        )));
    }
    if &bytes[0..4] != FRAME_MAGIC {
        return Err(bad(format!(
            "frame magic {:02x?} is not ISBF",
            &bytes[0..4]
        )));
    }
    if bytes[4] != FRAME_VERSION {
        return Err(RepoError::Unsupported {
            key: key.to_string(),
            reason: format!("blob frame version {}", bytes[4]),
        });
    }
    let codec = bytes[5];
    let kind =
        BlobKind::from_code(bytes[6]).ok_or_else(|| bad(format!("blob kind {}", bytes[6])))?;
    if bytes[7] != 0 {
        return Err(RepoError::Unsupported {
            key: key.to_string(),
            reason: format!(
                "blob frame flags {:#x} (encryption not supported)",
                bytes[7]
            ),
        });
    }
    let plain_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let stored_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    if plain_len > MAX_PLAIN {
        return Err(bad(format!("plain length {plain_len} exceeds {MAX_PLAIN}")));
    }
    if stored_len.checked_add(FRAME_OVERHEAD) != Some(bytes.len()) {
        return Err(bad(format!(
            "stored length {stored_len} does not match frame size {}",
            bytes.len()
        )));
    }
    let body_end = FRAME_HEADER + stored_len;
    let crc = u32::from_le_bytes([
        bytes[body_end],
        bytes[body_end + 1],
        bytes[body_end + 2],
        bytes[body_end + 3],
    ]);
    if crc32c::crc32c(&bytes[..body_end]) != crc {
        return Err(bad("frame crc32c mismatch".into()));
    }
    let id = BlobId::from_slice(&bytes[16..48]).ok_or_else(|| bad("frame id".into()))?;
    if let Some(e) = expect {
        if e != id {
            return Err(bad(format!("frame holds blob {id}, expected {e}")));
        }
    }
    let payload = &bytes[FRAME_HEADER..body_end];
    let plain = match codec {
        CODEC_RAW => {
            if stored_len != plain_len as usize {
                return Err(bad("raw frame with stored length != plain length".into()));
            }
            payload.to_vec()
        }
        CODEC_LZ4 => lz4_flex::block::decompress(payload, plain_len as usize)
            .map_err(|e| bad(format!("lz4: {e}")))?,
        c => {
            return Err(RepoError::Unsupported {
                key: key.to_string(),
                reason: format!("codec {c}"),
            })
        }
    };
    if plain.len() != plain_len as usize {
        return Err(bad("decompressed length mismatch".into()));
    }
    if BlobId::of(&plain) != id {
        return Err(RepoError::HashMismatch {
            key: key.to_string(),
            id: id.to_hex(),
        });
    }
    Ok((id, kind, plain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_raw_frame() {
        let f = Frame::encode(BlobKind::Chunk, b"abc");
        let mut expect = Vec::new();
        expect.extend_from_slice(b"ISBF\x01\x00\x00\x00");
        expect.extend_from_slice(&3u32.to_le_bytes());
        expect.extend_from_slice(&3u32.to_le_bytes());
        expect.extend_from_slice(&BlobId::of(b"abc").0);
        expect.extend_from_slice(b"abc");
        let crc = crc32c::crc32c(&expect);
        expect.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(f.bytes, expect);
        // Pin the crc so a change in coverage is caught, not just recomputed.
        assert_eq!(f.bytes[f.bytes.len() - 4..], crc.to_le_bytes());
        assert_eq!(f.bytes.len(), 3 + FRAME_OVERHEAD);
    }

    #[test]
    fn lz4_used_only_when_smaller() {
        let zeros = vec![7u8; 65536];
        let f = Frame::encode(BlobKind::Chunk, &zeros);
        assert_eq!(f.bytes[5], CODEC_LZ4);
        assert!(f.bytes.len() < 1024);
        let (id, kind, plain) = decode_frame("k", &f.bytes, Some(f.id)).unwrap();
        assert_eq!((id, kind), (f.id, BlobKind::Chunk));
        assert_eq!(plain, zeros);
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let f = Frame::encode(BlobKind::Table, b"hello world hello world");
        for i in 0..f.bytes.len() {
            let mut b = f.bytes.clone();
            b[i] ^= 0x40;
            assert!(decode_frame("k", &b, None).is_err(), "flip at {i} accepted");
        }
        assert!(decode_frame("k", &f.bytes[..10], None).is_err());
    }
}

//! Checked envelope for the JSON objects (config, manifests, tombstones, leases, intents,
//! gc markers): JSON stays human-readable, the envelope makes it self-checking.
//!
//! Layout (little-endian): magic (4, distinct per object type) ‖ version u16 ‖ reserved
//! u16 (0) ‖ JSON length u32 ‖ JSON ‖ crc32c of everything before it (u32).

use crate::repo::RepoError;
use serde::{de::DeserializeOwned, Serialize};

/// Envelope format version written by this build.
pub(crate) const ENVELOPE_VERSION: u16 = 1;
/// Largest JSON body accepted (roots are ≤ 64 KiB by design; markers stay far smaller).
const MAX_JSON: usize = 1 << 20;

pub(crate) const MAGIC_CONFIG: &[u8; 4] = b"ISCF";
pub(crate) const MAGIC_ROOT: &[u8; 4] = b"ISRT";
pub(crate) const MAGIC_TOMBSTONE: &[u8; 4] = b"ISTB";
pub(crate) const MAGIC_LEASE: &[u8; 4] = b"ISLS";
pub(crate) const MAGIC_INTENT: &[u8; 4] = b"ISIN";
pub(crate) const MAGIC_GC: &[u8; 4] = b"ISGC";
pub(crate) const MAGIC_CHECKPOINT: &[u8; 4] = b"ISCP";
pub(crate) const MAGIC_VERDICT: &[u8; 4] = b"ISVD";

/// Serialize `value` into an envelope.
pub(crate) fn seal<T: Serialize>(magic: &[u8; 4], value: &T) -> Vec<u8> {
    // Serializing our own plain structs to JSON cannot fail (no maps with non-string keys).
    let json = serde_json::to_vec(value).unwrap_or_default();
    let mut out = Vec::with_capacity(json.len() + 16);
    out.extend_from_slice(magic);
    out.extend_from_slice(&ENVELOPE_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Check and parse an envelope read from `key`.
pub(crate) fn open<T: DeserializeOwned>(
    magic: &[u8; 4],
    key: &str,
    bytes: &[u8],
) -> Result<T, RepoError> {
    let bad = |r: String| RepoError::corrupt(key, r);
    if bytes.len() < 16 {
        return Err(bad(format!(
            "envelope of {} bytes is too short",
            bytes.len()
        )));
    }
    if &bytes[0..4] != magic {
        return Err(bad(format!(
            "magic {:?} is not {:?}",
            String::from_utf8_lossy(&bytes[0..4]),
            String::from_utf8_lossy(magic)
        )));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != ENVELOPE_VERSION {
        return Err(RepoError::Unsupported {
            key: key.to_string(),
            reason: format!("envelope version {version}"),
        });
    }
    if bytes[6] != 0 || bytes[7] != 0 {
        return Err(bad("reserved envelope bytes are not zero".into()));
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if len > MAX_JSON || len.checked_add(16) != Some(bytes.len()) {
        return Err(bad(format!(
            "JSON length {len} does not match object size {}",
            bytes.len()
        )));
    }
    let end = 12 + len;
    let crc = u32::from_le_bytes([bytes[end], bytes[end + 1], bytes[end + 2], bytes[end + 3]]);
    if crc32c::crc32c(&bytes[..end]) != crc {
        return Err(bad("envelope crc32c mismatch".into()));
    }
    serde_json::from_slice(&bytes[12..end]).map_err(|e| bad(format!("JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_envelope() {
        let b = seal(MAGIC_TOMBSTONE, &serde_json::json!({"a": 1}));
        let mut expect = b"ISTB\x01\x00\x00\x00\x07\x00\x00\x00{\"a\":1}".to_vec();
        let crc = crc32c::crc32c(&expect);
        expect.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(b, expect);
        let v: serde_json::Value = open(MAGIC_TOMBSTONE, "k", &b).unwrap();
        assert_eq!(v["a"], 1);
        assert!(open::<serde_json::Value>(MAGIC_ROOT, "k", &b).is_err());
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 1;
            assert!(
                open::<serde_json::Value>(MAGIC_TOMBSTONE, "k", &c).is_err(),
                "flip {i}"
            );
        }
    }
}

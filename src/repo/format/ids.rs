//! Identifiers: content ids of blobs and time-sortable ids of snapshots, segments and
//! writers.
//!
//! Blob ids are BLAKE3 of plain bytes so identical content deduplicates across volumes and
//! hosts. Writer ids start with a UTC timestamp so a key listing sorts by creation time and
//! end with 64 random bits so two hosts never collide without coordinating.

use rand::Rng;
use std::fmt;
use time::OffsetDateTime;

/// BLAKE3 id of a blob's plain bytes. All-zero is the sentinel for a zero chunk / zero
/// subtree and is never the id of a stored blob.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// The sentinel meaning "all zero" in tables; never stored.
    pub const ZERO: BlobId = BlobId([0u8; 32]);

    /// Id of `plain` content.
    pub fn of(plain: &[u8]) -> BlobId {
        BlobId(*blake3::hash(plain).as_bytes())
    }

    /// True for the zero sentinel.
    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; 32]
    }

    /// Lower-case hex form used in keys, JSON and messages.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parse the 64-character hex form.
    pub fn from_hex(s: &str) -> Option<BlobId> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(BlobId(out))
    }

    /// Build from a 32-byte slice (callers have already bounds-checked the slice length).
    pub(crate) fn from_slice(b: &[u8]) -> Option<BlobId> {
        let arr: [u8; 32] = b.try_into().ok()?;
        Some(BlobId(arr))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A new time-sortable unique id: `yyyymmddThhmmss.ffffffZ-<16 hex random>`.
pub(crate) fn new_time_id() -> String {
    let now = OffsetDateTime::now_utc();
    let r: u64 = rand::rng().random();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:06}Z-{:016x}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.microsecond(),
        r
    )
}

/// True when `s` has the shape of [`new_time_id`] (ids from keys are validated before
/// they are used to build other keys).
pub(crate) fn is_time_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 40
        && b[8] == b'T'
        && b[15] == b'.'
        && b[22] == b'Z'
        && b[23] == b'-'
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[16..22].iter().all(u8::is_ascii_digit)
        && b[24..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// Volume names become key components: refuse anything that could escape its prefix.
pub(crate) fn valid_volume(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
        && name != "."
        && name != ".."
}

/// Current UTC time as RFC 3339 (manifests are human-facing), always with nine
/// fractional digits: a fixed width keeps the size of every object that records a
/// time independent of the clock, so byte counts and golden files are reproducible.
pub(crate) fn now_rfc3339() -> String {
    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
    );
    OffsetDateTime::now_utc().format(FORMAT).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ids_sort_and_validate() {
        let a = new_time_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_time_id();
        assert!(is_time_id(&a), "{a}");
        let t = now_rfc3339();
        assert_eq!(t.len(), "2026-01-01T00:00:00.000000000Z".len(), "{t}");
        OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
        assert!(a < b);
        assert!(!is_time_id("../x"));
    }

    #[test]
    fn hex_roundtrip() {
        let id = BlobId::of(b"abc");
        assert_eq!(BlobId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(
            id.to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(BlobId::from_hex("zz"), None);
    }
}

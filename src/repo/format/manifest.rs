//! Root manifests (`snapshots/<volume>/<id>`): the commit point of a backup. Created with
//! create-if-absent after every object it names is durable, so a visible root is complete.

use super::envelope::{self, MAGIC_ROOT, MAGIC_TOMBSTONE};
use super::ids::{is_time_id, valid_volume};
use crate::repo::{BlobId, RepoError};
use serde::{Deserialize, Serialize};

/// Manifest format version (inside the envelope) written by this build.
pub(crate) const MANIFEST_VERSION: u32 = 1;

/// Identity of the source state a snapshot was taken from, so the next backup can tell
/// whether "changed since base" information is trustworthy (qcow2: internal snapshot name,
/// id, date, VM clock, L1 digest; raw sources record nothing).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BaseIdentity {
    /// The qcow2 internal snapshot's name (`island-<snapshot id>` for Island's own).
    pub name: String,
    /// The qcow2 internal snapshot's unique id string (its snapshot table entry).
    pub id: String,
    /// The internal snapshot's creation time, RFC 3339 (or `sec.nsec` if out of range).
    pub date: String,
    /// The guest's VM clock when the internal snapshot was taken, in nanoseconds.
    pub vm_clock_ns: u64,
    /// Digest of the internal snapshot's L1 table: a snapshot re-created under the same
    /// name and id has a different one, so stale change information is not trusted.
    pub l1_digest: String,
}

/// Per-snapshot numbers computed at backup time.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Non-zero bytes of the volume (logical data).
    pub logical_bytes: u64,
    /// Plain bytes of chunks this backup stored that the repository did not have.
    pub new_bytes: u64,
    /// Bytes this backup uploaded (frames, tables, segments, root).
    pub uploaded_bytes: u64,
}

/// The root of one snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SnapshotManifest {
    /// Manifest format version; only `MANIFEST_VERSION` (1) is read (format-spec/repository.md §3.5, root).
    pub format: u32,
    /// The volume this snapshot belongs to; with `id` it must match the object's key.
    pub volume: String,
    /// The snapshot id (a time id, §2); the key is `snapshots/<volume>/<id>`.
    pub id: String,
    /// The snapshot this one was taken incrementally against, if any (history only: every
    /// root names its whole tree, so a restore never needs the parent).
    pub parent: Option<String>,
    /// RFC 3339 UTC.
    pub created: String,
    /// Volume size in bytes.
    pub size: u64,
    /// Chunk size in bytes the tree was built with (a power of two, 4 KiB..4 MiB); with
    /// `size` it fixes `depth` and the length of `top` (format-spec/repository.md §3.5, root).
    pub chunk_size: u32,
    /// Table levels below the root.
    pub depth: u8,
    /// Hex ids of the top-level tables (zero id = zero subtree).
    pub top: Vec<String>,
    /// Sizes recorded at backup time, for listings.
    pub stats: SnapshotStats,
    /// The source state this snapshot was taken from (qcow2 internal snapshot), so the next
    /// backup can trust changed-block information; `None` for raw sources.
    pub base: Option<BaseIdentity>,
    /// The backup caller's free-form JSON (`BackupOptions::user_data`; a revert records
    /// `{"reverted_to": <id>}`), stored and returned as given.
    pub user_data: serde_json::Value,
    /// Lease holder that wrote this root (equals `id`).
    pub writer: String,
    /// Store time (ms) of the writer's last lease renewal before commit (fencing).
    pub lease_time_ms: u64,
}

impl SnapshotManifest {
    /// The store key of this root: `snapshots/<volume>/<id>` (§2).
    pub fn key(&self) -> String {
        root_key(&self.volume, &self.id)
    }

    /// Top-level ids, validated.
    pub fn top_ids(&self) -> Result<Vec<BlobId>, RepoError> {
        self.top
            .iter()
            .map(|h| {
                BlobId::from_hex(h)
                    .ok_or_else(|| RepoError::corrupt(&self.key(), format!("bad top id {h:?}")))
            })
            .collect()
    }

    /// The root object's bytes: the JSON in an envelope with magic `ISRT` (§3.5).
    pub fn encode(&self) -> Vec<u8> {
        envelope::seal(MAGIC_ROOT, self)
    }

    /// Parses root object `key`, refusing an unknown format, a body that names another
    /// key, an invalid chunk size, or a depth/top list that does not match the geometry.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<SnapshotManifest, RepoError> {
        let m: SnapshotManifest = envelope::open(MAGIC_ROOT, key, bytes)?;
        if m.format != MANIFEST_VERSION {
            return Err(RepoError::Unsupported {
                key: key.into(),
                reason: format!("manifest format {}", m.format),
            });
        }
        if root_key(&m.volume, &m.id) != key {
            return Err(RepoError::corrupt(
                key,
                format!("manifest names {}/{}", m.volume, m.id),
            ));
        }
        // The geometry divides by the chunk size: a zero (or any invalid) one is damage.
        if super::config::check_chunk_size(m.chunk_size).is_err() {
            return Err(RepoError::corrupt(
                key,
                format!("chunk size {}", m.chunk_size),
            ));
        }
        let geo = super::table::Geometry::new(m.size, m.chunk_size);
        if geo.depth != m.depth || geo.top_len() != m.top.len() {
            return Err(RepoError::corrupt(
                key,
                "tree depth/top list does not match size",
            ));
        }
        Ok(m)
    }
}

/// The commit point of a delete.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Tombstone {
    pub volume: String,
    pub id: String,
    pub deleted: String,
    /// Holder whose refs segments this tombstone commits (a losing concurrent delete's
    /// segments name another holder and stay uncounted).
    pub holder: String,
    /// Store time (ms) of the deleter's last lease renewal before commit (fencing).
    pub lease_time_ms: u64,
}

impl Tombstone {
    pub(crate) fn encode(&self) -> Vec<u8> {
        envelope::seal(MAGIC_TOMBSTONE, self)
    }
    /// Decode the tombstone stored at `key`, which must be one of the generation keys of
    /// the snapshot the body names.
    pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<Tombstone, RepoError> {
        let t: Tombstone = envelope::open(MAGIC_TOMBSTONE, key, bytes)?;
        match parse_tombstone_key(key) {
            Some((v, id, _)) if v == t.volume && id == t.id => Ok(t),
            _ => Err(RepoError::corrupt(
                key,
                format!("tombstone names {}/{}", t.volume, t.id),
            )),
        }
    }
}

pub(crate) fn root_key(volume: &str, id: &str) -> String {
    format!("snapshots/{volume}/{id}")
}

/// Key of the first tombstone generation of `volume/id` (the only key older builds write).
pub(crate) fn tombstone_key(volume: &str, id: &str) -> String {
    tombstone_key_gen(volume, id, 0)
}

/// Key of tombstone generation `gen` of `volume/id`: `tombstones/<volume>/<id>` for 0,
/// `tombstones/<volume>/<id>.<gen>` (decimal, no leading zeros) after it. A delete whose
/// tombstone turned out void (fenced) leaves that key occupied for ever, so the next
/// delete of the snapshot creates the next generation instead (format-spec §6).
pub(crate) fn tombstone_key_gen(volume: &str, id: &str, gen: u64) -> String {
    if gen == 0 {
        format!("tombstones/{volume}/{id}")
    } else {
        format!("tombstones/{volume}/{id}.{gen}")
    }
}

/// `(volume, id, generation)` of a tombstone key, `None` if `key` is not one.
pub(crate) fn parse_tombstone_key(key: &str) -> Option<(&str, &str, u64)> {
    let (volume, name) = key.strip_prefix("tombstones/")?.split_once('/')?;
    let id = name.get(..ID_LEN)?;
    if !valid_volume(volume) || !is_time_id(id) {
        return None;
    }
    let gen = match &name[ID_LEN..] {
        "" => 0,
        rest => {
            let digits = rest.strip_prefix('.')?;
            let gen: u64 = digits.parse().ok()?;
            // One spelling per generation: no leading zeros, no sign, no ".0".
            if gen == 0 || gen.to_string() != digits {
                return None;
            }
            gen
        }
    };
    Some((volume, id, gen))
}

/// Length of a time id (snapshot ids and holders).
const ID_LEN: usize = 40;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_roundtrip_and_key_check() {
        let m = SnapshotManifest {
            format: 1,
            volume: "v".into(),
            id: "20260101T000000.000000Z-0000000000000001".into(),
            parent: None,
            created: "2026-01-01T00:00:00Z".into(),
            size: 65536,
            chunk_size: 65536,
            depth: 1,
            top: vec![BlobId::ZERO.to_hex()],
            stats: SnapshotStats::default(),
            base: None,
            user_data: serde_json::Value::Null,
            writer: "20260101T000000.000000Z-0000000000000001".into(),
            lease_time_ms: 0,
        };
        let b = m.encode();
        assert_eq!(&b[..4], b"ISRT");
        assert_eq!(SnapshotManifest::decode(&m.key(), &b).unwrap(), m);
        assert!(SnapshotManifest::decode("snapshots/other/x", &b).is_err());
    }

    /// A crc-valid root with chunk size 0 made the geometry divide by zero (found by the
    /// `root` fuzz target; fuzz/regressions/root/); any invalid chunk size is corrupt.
    #[test]
    fn manifest_with_invalid_chunk_size_is_corrupt_not_a_panic() {
        for chunk_size in [0, 1, 4095, 65537, 8 << 20] {
            let m = SnapshotManifest {
                format: 1,
                volume: "v".into(),
                id: "20260101T000000.000000Z-0000000000000001".into(),
                parent: None,
                created: "2026-01-01T00:00:00Z".into(),
                size: 65536,
                chunk_size,
                depth: 1,
                top: vec![BlobId::ZERO.to_hex()],
                stats: SnapshotStats::default(),
                base: None,
                user_data: serde_json::Value::Null,
                writer: "20260101T000000.000000Z-0000000000000001".into(),
                lease_time_ms: 0,
            };
            let err = SnapshotManifest::decode(&m.key(), &m.encode()).unwrap_err();
            assert!(
                matches!(err, RepoError::Corrupt { .. }),
                "{chunk_size}: {err}"
            );
        }
    }

    /// Generation 0 keeps the key older builds wrote; later generations parse back and
    /// every other spelling is refused, so one generation has exactly one key.
    #[test]
    fn tombstone_generation_keys() {
        let id = "20260101T000000.000000Z-0000000000000001";
        assert_eq!(tombstone_key("v.1", id), format!("tombstones/v.1/{id}"));
        for gen in [0, 1, 2, 10, 12345] {
            let k = tombstone_key_gen("v.1", id, gen);
            assert_eq!(parse_tombstone_key(&k), Some(("v.1", id, gen)), "{k}");
        }
        for bad in [".0", ".01", ".", ".x", "1", ".-1", ".+1"] {
            let k = format!("tombstones/v/{id}{bad}");
            assert_eq!(parse_tombstone_key(&k), None, "{k}");
        }
        assert_eq!(parse_tombstone_key("tombstones/v/short"), None);
        assert_eq!(parse_tombstone_key(&format!("snapshots/v/{id}")), None);
        let t = Tombstone {
            volume: "v".into(),
            id: id.into(),
            deleted: "2026-01-01T00:00:00Z".into(),
            holder: id.into(),
            lease_time_ms: 0,
        };
        let k = tombstone_key_gen("v", id, 3);
        assert_eq!(Tombstone::decode(&k, &t.encode()).unwrap(), t);
        let other = tombstone_key("w", id);
        assert!(Tombstone::decode(&other, &t.encode()).is_err());
    }
}

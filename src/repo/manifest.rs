//! Root manifests (`snapshots/<volume>/<id>`): the commit point of a backup. Created with
//! create-if-absent after every object it names is durable, so a visible root is complete.

use super::envelope::{self, MAGIC_ROOT, MAGIC_TOMBSTONE};
use super::{BlobId, RepoError};
use serde::{Deserialize, Serialize};

/// Manifest format version (inside the envelope) written by this build.
pub const MANIFEST_VERSION: u32 = 1;

/// Identity of the source state a snapshot was taken from, so the next backup can tell
/// whether "changed since base" information is trustworthy (qcow2: internal snapshot name,
/// id, date, VM clock, L1 digest; raw sources record nothing).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BaseIdentity {
    pub name: String,
    pub id: String,
    pub date: String,
    pub vm_clock_ns: u64,
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
    pub format: u32,
    pub volume: String,
    pub id: String,
    pub parent: Option<String>,
    /// RFC 3339 UTC.
    pub created: String,
    pub size: u64,
    pub chunk_size: u32,
    /// Table levels below the root.
    pub depth: u8,
    /// Hex ids of the top-level tables (zero id = zero subtree).
    pub top: Vec<String>,
    pub stats: SnapshotStats,
    pub base: Option<BaseIdentity>,
    pub user_data: serde_json::Value,
    /// Lease holder that wrote this root (equals `id`).
    pub writer: String,
    /// Store time (ms) of the writer's last lease renewal before commit (fencing).
    pub lease_time_ms: u64,
}

impl SnapshotManifest {
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

    pub fn encode(&self) -> Vec<u8> {
        envelope::seal(MAGIC_ROOT, self)
    }

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
pub struct Tombstone {
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
    pub fn encode(&self) -> Vec<u8> {
        envelope::seal(MAGIC_TOMBSTONE, self)
    }
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Tombstone, RepoError> {
        envelope::open(MAGIC_TOMBSTONE, key, bytes)
    }
}

pub fn root_key(volume: &str, id: &str) -> String {
    format!("snapshots/{volume}/{id}")
}

pub fn tombstone_key(volume: &str, id: &str) -> String {
    format!("tombstones/{volume}/{id}")
}

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
}

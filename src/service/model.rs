//! The catalog's records. Field names are part of the catalog format
//! (`format-spec/service.md`): they change only compatibly.

use serde::{Deserialize, Serialize};

/// Smallest volume: 1 GiB.
pub const MIN_VOLUME_SIZE: u64 = 1 << 30;
/// Largest volume: 16 TiB − 1 MiB, just under ext4's file size limit, so a local image
/// of any volume fits on the usual data-dir filesystem.
pub const MAX_VOLUME_SIZE: u64 = (16 << 40) - (1 << 20);

/// Who may see and use a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Only the owner sees, reads, writes and deletes it (an admin sees it no more than
    /// anyone else).
    Private,
    /// Everyone sees and reads it and may attach it read-only. Only the owner or an
    /// admin changes it: attaches it read-write, snapshots, reverts, copies it to another
    /// repository, detaches an attachment of another user, deletes it or its snapshots
    /// ([`Volume::may_change`]).
    Public,
}

impl Visibility {
    /// Parse the API spelling.
    pub fn parse(s: &str) -> Option<Visibility> {
        match s {
            "private" => Some(Visibility::Private),
            "public" => Some(Visibility::Public),
            _ => None,
        }
    }

    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Public => "public",
        }
    }
}

/// How an attachment uses the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessMode {
    /// Owns the local image and its uploads; at most one per volume.
    ReadWrite,
    /// A local copy of the volume's head snapshot; uploads nothing.
    ReadOnly,
}

/// One VM using a volume: an element of a volume record's `attachments`
/// (format-spec/service.md, "Volume generations").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Node the VM runs on (as the client names it).
    pub node: String,
    /// The VM's identifier on that node.
    pub vm_id: String,
    /// The `island serve` instance holding the local image (`--server-id`).
    pub server: String,
    /// `read-write` (at most one, uploads on detach) or `read-only`.
    pub mode: AccessMode,
    /// Hot-plugged (may be hot-detached) rather than registered at VM start.
    pub hot: bool,
    /// Local image path on `server`.
    pub path: String,
    /// Snapshot the local image was materialised from; `None` = a new empty image.
    pub from_snapshot: Option<String>,
    /// When the attachment was recorded (RFC 3339).
    pub since: String,
    /// Device name the frontend reported for a hot-plugged volume (`vda`, ...), as in
    /// the StratusLab API's `target`; `None` until reported.
    #[serde(default)]
    pub target: Option<String>,
    /// The user who attached it; `None` in records written before this field (only the
    /// volume's owner or an admin detaches those).
    #[serde(default)]
    pub user: Option<String>,
}

/// The whole state of one volume at one generation: the JSON of one catalog object
/// `service/volumes/<uuid>/<generation>` (format-spec/service.md, "Volume generations").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// UUID; also the volume's name in the repository.
    pub uuid: String,
    /// Generation number, equal to the one in the object's key.
    pub generation: u64,
    /// The user who created it; with admins, the only one who may change it.
    pub owner: String,
    /// Free-form label its owner chose (the StratusLab API's `tag`), shown in listings.
    pub tag: String,
    /// Who else may see it and attach it read-only.
    pub visibility: Visibility,
    /// Size in bytes.
    pub size: u64,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Most simultaneous attachments.
    pub user_limit: u32,
    /// The VMs using it now, on any server sharing the repository.
    pub attachments: Vec<Attachment>,
    /// A deleted volume's last generation; it stays so the uuid is never reused.
    pub deleted: bool,
    /// The snapshot a volume created from a snapshot starts as (used by its first
    /// attach, while it has no snapshot of its own).
    #[serde(default)]
    pub source: Option<SnapshotRef>,
    /// The last revert: which snapshot the volume was reverted to, and the snapshot that
    /// revert committed (now or once its newest).
    #[serde(default)]
    pub last_revert: Option<Revert>,
    /// The snapshot the volume's content is: the one its last detach, snapshot or revert
    /// committed, recorded in the same change. Attach, copy and the next upload's parent
    /// follow it rather than the newest snapshot id, which carries the clock of whichever
    /// host took it (see `Service::head`). `None` in records written before this field
    /// and in records a copy created in another repository: the parent chain decides.
    #[serde(default)]
    pub head: Option<String>,
}

/// A revert of a volume to one of its snapshots (see `Service::revert`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revert {
    /// The snapshot reverted to.
    pub to: String,
    /// The snapshot the revert committed (same tree as `to`).
    pub snapshot: String,
    /// When (RFC 3339).
    pub at: String,
}

/// One snapshot of one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRef {
    /// The volume's uuid (its name in the repository).
    pub volume: String,
    /// The snapshot id.
    pub snapshot: String,
}

impl Volume {
    /// May `user` see (and read, attach read-only) this volume?
    pub fn visible_to(&self, user: &str) -> bool {
        !self.deleted && (self.visibility == Visibility::Public || self.owner == user)
    }

    /// May `user` (an admin when `admin`) change this volume: write it (a read-write
    /// attachment), move its head (snapshot, revert), copy it to another repository,
    /// delete it or its snapshots? Its owner and admins only, whatever its visibility.
    pub fn may_change(&self, user: &str, admin: bool) -> bool {
        admin || self.owner == user
    }

    /// May `user` (an admin when `admin`) detach attachment `a` of this volume? Its
    /// owner and admins any; another user only a read-only attachment of their own (a
    /// read-write one uploads a snapshot: a change of head).
    pub fn may_detach(&self, a: &Attachment, user: &str, admin: bool) -> bool {
        self.may_change(user, admin)
            || (a.mode == AccessMode::ReadOnly && a.user.as_deref() == Some(user))
    }

    /// The read-write attachment, if any.
    pub fn writer(&self) -> Option<&Attachment> {
        self.attachments
            .iter()
            .find(|a| a.mode == AccessMode::ReadWrite)
    }

    /// Attachment slots left under the user limit.
    pub fn remaining(&self) -> u32 {
        self.user_limit
            .saturating_sub(u32::try_from(self.attachments.len()).unwrap_or(u32::MAX))
    }
}

/// Names that become parts of file names and object keys (node, vm id, server id):
/// 1-128 of `[A-Za-z0-9._-]`, not starting with `.`.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A device name reported by a frontend (`vda`, `sdb`, `xvdc1`): 1-32 of `[a-z0-9]`.
pub(crate) fn valid_device(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// A volume id must be a canonical (lower-case, hyphenated) UUID.
pub(crate) fn valid_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_uuids() {
        assert!(valid_name("onehost-2.lal.in2p3.fr"));
        assert!(!valid_name("../x"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
        assert!(valid_uuid("eb198dec-3560-4a9a-b3b4-5f043410a3dd"));
        assert!(!valid_uuid("EB198DEC-3560-4A9A-B3B4-5F043410A3DD"));
        assert!(!valid_uuid("eb198dec35604a9ab3b45f043410a3dd"));
        assert!(!valid_uuid("../config"));
    }

    /// The change and detach rules of a public volume: owner and admins change it and
    /// detach anything; another user detaches only a read-only attachment they made.
    #[test]
    fn only_owner_or_admin_change_a_public_volume() {
        let att = |mode, user: Option<&str>| Attachment {
            node: "n".into(),
            vm_id: "1".into(),
            server: "s".into(),
            mode,
            hot: false,
            path: "/p".into(),
            from_snapshot: None,
            since: String::new(),
            target: None,
            user: user.map(str::to_string),
        };
        let v = Volume {
            uuid: "eb198dec-3560-4a9a-b3b4-5f043410a3dd".into(),
            generation: 0,
            owner: "alice".into(),
            tag: String::new(),
            visibility: Visibility::Public,
            size: MIN_VOLUME_SIZE,
            created: String::new(),
            user_limit: 4,
            attachments: Vec::new(),
            deleted: false,
            source: None,
            last_revert: None,
            head: None,
        };
        assert!(v.visible_to("bob"));
        assert!(v.may_change("alice", false) && v.may_change("carol", true));
        assert!(!v.may_change("bob", false));
        let bobs_ro = att(AccessMode::ReadOnly, Some("bob"));
        let alices_rw = att(AccessMode::ReadWrite, Some("alice"));
        let bobs_old_rw = att(AccessMode::ReadWrite, Some("bob"));
        let unknown_ro = att(AccessMode::ReadOnly, None);
        assert!(v.may_detach(&bobs_ro, "bob", false));
        assert!(v.may_detach(&bobs_ro, "alice", false));
        assert!(!v.may_detach(&bobs_ro, "carol", false));
        assert!(!v.may_detach(&alices_rw, "bob", false));
        assert!(v.may_detach(&alices_rw, "carol", true));
        assert!(!v.may_detach(&bobs_old_rw, "bob", false));
        assert!(!v.may_detach(&unknown_ro, "bob", false));
        assert!(v.may_detach(&unknown_ro, "alice", false));
    }

    #[test]
    fn size_bounds() {
        assert_eq!(MAX_VOLUME_SIZE, 17_592_184_995_840);
        assert_eq!(MIN_VOLUME_SIZE, 1_073_741_824);
    }
}

//! The volume service: volumes with owner, tag, visibility and user limit, attached as
//! local qcow2 images on a host and backed up to the repository on detach or snapshot;
//! reverted to a snapshot without copying data ([`Service::revert`]), copied to another
//! repository as a diff ([`Service::copy`]), and checked and fixed ([`Service::check`],
//! [`Service::fix`]).
//!
//! It sits on top of the engine (`backup`, `restore`, `repo`, `image`) and nothing below
//! uses it. Its catalog lives in the repository's store (format-spec/service.md, "Volume
//! generations") so several hosts sharing a repository serve the same volumes, and so do
//! operation records (service.md, "Operations") and the last check; what one host holds
//! locally (attached images, the journal of the operations it runs) lives in its data dir.
//!
//! ```no_run
//! # async fn demo() -> Result<(), island::service::ServiceError> {
//! use island::service::{CreateVolume, Service, ServiceConfig, Visibility};
//! let store = island::store::open_store("/srv/repo", &Default::default()).await?;
//! let repo = island::repo::Repository::open(store).await?;
//! let svc = Service::new(repo, ServiceConfig::new("/var/lib/island", "host-a"))?;
//! let v = svc
//!     .create_volume("alice", &CreateVolume {
//!         size: 1 << 30,
//!         tag: "scratch".into(),
//!         visibility: Visibility::Private,
//!         user_limit: None,
//!         source: None,
//!     })
//!     .await?;
//! assert_eq!(svc.get_volume("alice", &v.uuid).await?.tag, "scratch");
//! # Ok(()) }
//! ```

mod attach;
pub(crate) mod catalog;
mod check;
mod copy;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod head;
// Public for the fuzz crate's end-to-end target, which plants a last check in a store.
#[doc(hidden)]
pub mod last_check;
pub(crate) mod model;
pub(crate) mod ops;
pub(crate) mod ops_shared;
mod peer;
mod resume;
mod revert;

pub use attach::Plug;
pub use check::{CheckResult, Fix, FixKind, ImageStatus};
pub use copy::{CopyDone, CopyRequest};
pub use error::ServiceError;
pub use model::{
    AccessMode, Attachment, Revert, SnapshotRef, Visibility, Volume, MAX_VOLUME_SIZE,
    MIN_VOLUME_SIZE,
};
pub use ops::{OpHandle, OpSpec, OpState, Operation, Operations};
pub use ops_shared::{OpTiming, PruneReport};
pub use peer::CreatedFromPeer;

use crate::repo::format::ids::now_rfc3339;
use crate::repo::{Repository, SnapshotSummary};
use crate::store::ObjectStore;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Attachments per volume when the creator sets no limit.
pub const DEFAULT_USER_LIMIT: u32 = 2;
/// Default [`ServiceConfig::catalog_grace`]: one hour.
pub const DEFAULT_CATALOG_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);
/// Largest user limit a volume may have.
pub const MAX_USER_LIMIT: u32 = 64;

/// How one service instance runs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Where this host keeps attached local images and its operations' journal.
    pub data_dir: PathBuf,
    /// Names this instance in attachment records; must be unique among the servers
    /// sharing a repository (only the holder of a local image may detach it).
    pub server_id: String,
    /// User limit of volumes created without one.
    pub default_user_limit: u32,
    /// How long a superseded catalog generation's successor must exist before the
    /// catalog compaction deletes it (format-spec/service.md, "Catalog compaction"):
    /// longer than any server's list-then-write plus clock skew.
    pub catalog_grace: std::time::Duration,
    /// How often operation records are written to the store and when a silent owner
    /// counts as gone or its records are pruned (format-spec/service.md, "Operations").
    pub operations: OpTiming,
    /// Users who may change any volume, as its owner may (the users file's `admins`).
    pub admins: Vec<String>,
}

impl ServiceConfig {
    /// Defaults for everything but the data dir and server id.
    pub fn new(data_dir: impl Into<PathBuf>, server_id: impl Into<String>) -> ServiceConfig {
        ServiceConfig {
            data_dir: data_dir.into(),
            server_id: server_id.into(),
            default_user_limit: DEFAULT_USER_LIMIT,
            catalog_grace: DEFAULT_CATALOG_GRACE,
            operations: OpTiming::default(),
            admins: Vec::new(),
        }
    }
}

/// A request to create a volume.
#[derive(Debug, Clone)]
pub struct CreateVolume {
    /// Bytes, [`MIN_VOLUME_SIZE`]..=[`MAX_VOLUME_SIZE`].
    pub size: u64,
    /// Free-form label for listings (see [`Volume::tag`]).
    pub tag: String,
    /// Who else may see and read the volume.
    pub visibility: Visibility,
    /// `None` = the service's default.
    pub user_limit: Option<u32>,
    /// Start as this snapshot of a volume the creator can see (`size` must then be 0,
    /// meaning the snapshot's size, or equal to it).
    pub source: Option<SnapshotRef>,
}

/// What deleting a volume removed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeletedVolume {
    /// The volume deleted (its uuid is never reused).
    pub uuid: String,
    /// Snapshots deleted with it (forced delete); their data is freed by the next gc.
    pub snapshots_deleted: Vec<String>,
}

/// The volume service of one host.
#[derive(Debug)]
pub struct Service {
    repo: Repository,
    cfg: ServiceConfig,
    ops: Operations,
    /// Repositories copies may go to, by URL (the allow-list).
    targets: HashMap<String, Repository>,
    /// Serialises this host's work on one volume's local image (attach, snapshot,
    /// detach); other hosts are kept out by the catalog's attachment records.
    local: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Service {
    /// A service over `repo`, keeping local state in `cfg.data_dir`.
    pub fn new(repo: Repository, cfg: ServiceConfig) -> Result<Service, ServiceError> {
        if !model::valid_name(&cfg.server_id) {
            return Err(ServiceError::Invalid(vec![format!(
                "server id {:?}: use 1-128 of [A-Za-z0-9._-]",
                cfg.server_id
            )]));
        }
        let images = cfg.data_dir.join("volumes");
        std::fs::create_dir_all(&images).map_err(error::io_err(&images, "create_dir_all"))?;
        // Attachment records carry absolute image paths, whatever the caller's cwd.
        let mut cfg = cfg;
        cfg.data_dir = std::fs::canonicalize(&cfg.data_dir)
            .map_err(error::io_err(&cfg.data_dir, "canonicalize"))?;
        let ops = Operations::open(
            cfg.data_dir.join("operations"),
            repo.store().clone(),
            cfg.server_id.clone(),
            cfg.operations,
        )?;
        Ok(Service {
            repo,
            cfg,
            ops,
            targets: HashMap::new(),
            local: Mutex::new(HashMap::new()),
        })
    }

    /// The operations of every server sharing the repository (this host's own live).
    pub fn operations(&self) -> &Operations {
        &self.ops
    }

    /// This instance's server id.
    pub fn server_id(&self) -> &str {
        &self.cfg.server_id
    }

    fn store(&self) -> &Arc<dyn ObjectStore> {
        self.repo.store()
    }

    fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }

    /// The lock serialising this host's work on `uuid`'s local image.
    fn local_lock(&self, uuid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = match self.local.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry(uuid.to_string()).or_default().clone()
    }

    /// Create a volume owned by `user`.
    pub async fn create_volume(
        &self,
        user: &str,
        req: &CreateVolume,
    ) -> Result<Volume, ServiceError> {
        let source_size = match &req.source {
            Some(src) => Some(self.source_size(user, src).await?),
            None => None,
        };
        let v = self.plan_volume(user, req, source_size)?;
        if !catalog::commit(self.store(), &v).await? {
            return Err(ServiceError::Conflict(format!(
                "volume {} already exists (uuid collision)",
                v.uuid
            )));
        }
        Ok(v)
    }

    /// Check `req` and build the new volume's first generation (a fresh uuid), not yet
    /// committed. `source_size` is the size of the source snapshot, if any.
    fn plan_volume(
        &self,
        user: &str,
        req: &CreateVolume,
        source_size: Option<u64>,
    ) -> Result<Volume, ServiceError> {
        let mut problems = Vec::new();
        let mut size = req.size;
        if let (Some(src), Some(from)) = (&req.source, source_size) {
            if size == 0 {
                size = from;
            } else if size != from {
                problems.push(format!(
                    "size {size} differs from the {from} bytes of snapshot {}/{}",
                    src.volume, src.snapshot
                ));
            }
        }
        if !(MIN_VOLUME_SIZE..=MAX_VOLUME_SIZE).contains(&size) {
            problems.push(format!(
                "size {size} is outside {MIN_VOLUME_SIZE}..={MAX_VOLUME_SIZE} bytes (1 GiB to 16 TiB - 1 MiB)"
            ));
        }
        if req.tag.len() > 256 || req.tag.chars().any(char::is_control) {
            problems.push("tag: at most 256 bytes, no control characters".into());
        }
        let user_limit = req.user_limit.unwrap_or(self.cfg.default_user_limit);
        if !(1..=MAX_USER_LIMIT).contains(&user_limit) {
            problems.push(format!(
                "user_limit {user_limit} is outside 1..={MAX_USER_LIMIT}"
            ));
        }
        if !problems.is_empty() {
            return Err(ServiceError::Invalid(problems));
        }
        Ok(Volume {
            uuid: uuid::Uuid::new_v4().to_string(),
            generation: 0,
            owner: user.to_string(),
            tag: req.tag.clone(),
            visibility: req.visibility,
            size,
            created: now_rfc3339(),
            user_limit,
            attachments: Vec::new(),
            deleted: false,
            source: req.source.clone(),
            last_revert: None,
            head: None,
        })
    }

    /// Size of snapshot `src`, which must belong to a volume `user` can see.
    async fn source_size(&self, user: &str, src: &SnapshotRef) -> Result<u64, ServiceError> {
        let v = self.get_volume(user, &src.volume).await?;
        if !crate::repo::format::ids::is_time_id(&src.snapshot) {
            return Err(ServiceError::Invalid(vec![format!(
                "snapshot id {:?} is malformed",
                src.snapshot
            )]));
        }
        match self.repo.snapshot(&v.uuid, &src.snapshot).await {
            Ok(m) => Ok(m.size),
            Err(crate::Error::Repo(crate::repo::RepoError::SnapshotNotFound { .. })) => Err(
                ServiceError::NotFound(format!("snapshot {}/{}", src.volume, src.snapshot)),
            ),
            Err(e) => Err(e.into()),
        }
    }

    /// Volume `uuid` if `user` may see it (a private volume of someone else is "not
    /// found", so its existence does not leak).
    pub async fn get_volume(&self, user: &str, uuid: &str) -> Result<Volume, ServiceError> {
        let not_found = || ServiceError::NotFound(format!("volume {uuid}"));
        if !model::valid_uuid(uuid) {
            return Err(not_found());
        }
        match catalog::latest(self.store(), uuid).await? {
            Some(v) if v.visible_to(user) => Ok(v),
            _ => Err(not_found()),
        }
    }

    /// Is `user` an admin (`ServiceConfig::admins`)?
    pub fn is_admin(&self, user: &str) -> bool {
        self.cfg.admins.iter().any(|a| a == user)
    }

    /// Refuse (403) a change of `v` by `user` unless they are its owner or an admin
    /// ([`Volume::may_change`]); `what` completes "only its owner or an admin …".
    pub(crate) fn check_may_change(
        &self,
        v: &Volume,
        user: &str,
        what: &str,
    ) -> Result<(), ServiceError> {
        if v.may_change(user, self.is_admin(user)) {
            return Ok(());
        }
        Err(ServiceError::Forbidden(format!(
            "volume {} belongs to {}; only its owner or an admin {what} (others may read a \
             public volume and attach it read-only)",
            v.uuid, v.owner
        )))
    }

    /// Every live volume `user` may see, in uuid order.
    pub async fn list_volumes(&self, user: &str) -> Result<Vec<Volume>, ServiceError> {
        let mut all = catalog::all(self.store()).await?;
        all.retain(|v| v.visible_to(user));
        Ok(all)
    }

    /// Snapshots of a volume `user` may see.
    pub async fn snapshots(
        &self,
        user: &str,
        uuid: &str,
    ) -> Result<Vec<SnapshotSummary>, ServiceError> {
        let v = self.get_volume(user, uuid).await?;
        Ok(self.repo.snapshots(Some(&v.uuid)).await?)
    }

    /// Delete snapshot `id` of volume `uuid` (owner or admin); its data is freed by the next
    /// gc. An attached image's next upload then reads against the newest remaining one.
    pub async fn delete_snapshot(
        &self,
        user: &str,
        uuid: &str,
        id: &str,
    ) -> Result<crate::repo::DeleteReport, ServiceError> {
        let v = self.get_volume(user, uuid).await?;
        self.check_may_change(&v, user, "deletes its snapshots")?;
        if !crate::repo::format::ids::is_time_id(id) {
            return Err(ServiceError::NotFound(format!("snapshot {uuid}/{id}")));
        }
        match self.repo.delete_snapshot(uuid, id).await {
            Ok(r) => Ok(r),
            Err(crate::Error::Repo(crate::repo::RepoError::SnapshotNotFound { .. })) => {
                Err(ServiceError::NotFound(format!("snapshot {uuid}/{id}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Delete a volume: only its owner or an admin, never while attached, and while it has snapshots
    /// only when `force` (which deletes them too; gc frees their data).
    pub async fn delete_volume(
        &self,
        user: &str,
        uuid: &str,
        force: bool,
    ) -> Result<DeletedVolume, ServiceError> {
        let v = self.get_volume(user, uuid).await?;
        self.check_may_change(&v, user, "deletes it")?;
        refuse_attached(&v)?;
        let has_snapshots = self.repo.latest(uuid).await?.is_some();
        if has_snapshots && !force {
            return Err(ServiceError::Conflict(format!(
                "volume {uuid} has snapshots; delete them first or force the delete"
            )));
        }
        // The deleted generation is committed first: from then on no attach (which needs
        // a live generation) can race the snapshot deletes below.
        catalog::update(self.store(), uuid, |v| {
            refuse_attached(v)?;
            v.deleted = true;
            Ok(())
        })
        .await?;
        let mut snapshots_deleted = Vec::new();
        if has_snapshots {
            for s in self.repo.snapshots(Some(uuid)).await? {
                self.repo.delete_snapshot(uuid, &s.id).await?;
                snapshots_deleted.push(s.id);
            }
        }
        Ok(DeletedVolume {
            uuid: uuid.to_string(),
            snapshots_deleted,
        })
    }
}

/// Refuse to delete an attached volume, naming one of its attachments.
fn refuse_attached(v: &Volume) -> Result<(), ServiceError> {
    match v.attachments.first() {
        Some(a) => Err(ServiceError::Conflict(format!(
            "volume {} is attached to vm {} on node {} ({} attachment(s)); detach first",
            v.uuid,
            a.vm_id,
            a.node,
            v.attachments.len()
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod head_tests;
#[cfg(test)]
mod tests;

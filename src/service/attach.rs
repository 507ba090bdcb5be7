//! Attach, detach and snapshot: where the catalog meets this host's local images.
//!
//! Attach claims a slot in the catalog first (one create-if-absent generation: the user
//! limit and the single read-write claim are checked against the newest record, so two
//! hosts cannot both win), then materialises the local image, then records which snapshot
//! it came from. Detach uploads first, then releases the claim (recording the uploaded
//! snapshot as the volume's head in the same change), then drops the local image: a
//! crash at any point leaves either a claim with its image or a committed snapshot,
//! never a released claim whose data is only local.

use super::error::io_err;
use super::model::{valid_device, valid_name};
use super::{catalog, AccessMode, Attachment, OpHandle, Service, ServiceError, Volume};
use crate::backup::{backup_image, BackupOptions, BackupReport};
use crate::image::{CreateOptions, Image};
use crate::repo::format::ids::now_rfc3339;
use crate::restore::{restore, RestoreTarget};
use std::path::PathBuf;
use std::sync::Arc;

/// Cluster size of the local images the service creates (QEMU's default).
const CLUSTER_SIZE: u32 = 65536;

fn check_vm(node: &str, vm_id: &str) -> Result<(), ServiceError> {
    let mut problems = Vec::new();
    for (field, value) in [("node", node), ("vm_id", vm_id)] {
        if !valid_name(value) {
            problems.push(format!(
                "{field} {value:?}: use 1-128 of [A-Za-z0-9._-], not starting with '.'"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::Invalid(problems))
    }
}

/// Refuse early when the data dir's filesystem cannot hold a file of `size` bytes (ext4
/// stops just under 16 TiB with 4 KiB blocks, less with smaller ones): a sparse probe file
/// is grown to that length and removed. Without this a large volume would fail deep
/// inside a restore or, worse, on a guest write long after the attach.
pub(crate) fn check_file_size_limit(dir: &std::path::Path, size: u64) -> Result<(), ServiceError> {
    let probe = dir.join(format!("size-probe-{}", uuid::Uuid::new_v4().simple()));
    let file = std::fs::File::create(&probe).map_err(io_err(&probe, "create probe"))?;
    let grown = file.set_len(size);
    drop(file);
    let removed = std::fs::remove_file(&probe);
    if let Err(e) = grown {
        return Err(ServiceError::Conflict(format!(
            "the filesystem of {} cannot hold a {size}-byte image ({e}); use a data dir on a filesystem with a larger file size limit",
            dir.display()
        )));
    }
    removed.map_err(io_err(&probe, "remove probe"))
}

/// How an attachment is plugged into its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plug<'a> {
    /// Registered at VM start; it detaches with the VM.
    AtStart,
    /// Hot-plugged into a running VM (may be hot-detached), with the device name the
    /// frontend reported, if any.
    Hot {
        /// The guest's device name (`vda`, `sdb`), kept in the attachment record so a
        /// hot-detach can name it; `None` when the frontend did not say.
        device: Option<&'a str>,
    },
}

fn same_vm(a: &Attachment, node: &str, vm_id: &str) -> bool {
    a.node == node && a.vm_id == vm_id
}

impl Service {
    /// Local image path of an attachment on this host.
    fn image_path(&self, uuid: &str, mode: AccessMode, node: &str, vm_id: &str) -> PathBuf {
        let dir = self.data_dir().join("volumes");
        match mode {
            AccessMode::ReadWrite => dir.join(format!("{uuid}.qcow2")),
            AccessMode::ReadOnly => dir.join(format!("{uuid}.{node}.{vm_id}.ro.qcow2")),
        }
    }

    /// Attach volume `uuid` to vm `vm_id` on `node`, with its local image on this host:
    /// read-write if no attachment writes it yet and `user` may change it (its owner or an
    /// admin), else a read-only copy of its head snapshot. Refused past the volume's user
    /// limit. A hot plug records the device name
    /// the frontend reported (StratusLab's `target`) on the attachment.
    pub async fn attach(
        &self,
        user: &str,
        uuid: &str,
        node: &str,
        vm_id: &str,
        plug: Plug<'_>,
        op: &OpHandle,
    ) -> Result<Attachment, ServiceError> {
        check_vm(node, vm_id)?;
        let (hot, device) = match plug {
            Plug::AtStart => (false, None),
            Plug::Hot { device } => (true, device),
        };
        if let Some(d) = device.filter(|d| !valid_device(d)) {
            return Err(ServiceError::Invalid(vec![format!(
                "target {d:?}: a device name is 1-32 of [a-z0-9]"
            )]));
        }
        self.get_volume(user, uuid).await?;
        let admin = self.is_admin(user);
        let lock = self.local_lock(uuid);
        let _guard = lock.lock().await;
        op.enter(1, "claim");
        let mut claimed = None;
        let record = catalog::update(self.store(), uuid, |v| {
            if let Some(a) = v.attachments.iter().find(|a| same_vm(a, node, vm_id)) {
                return Err(ServiceError::Conflict(format!(
                    "volume {uuid} is already attached to vm {vm_id} on node {node} (server {})",
                    a.server
                )));
            }
            if v.remaining() == 0 {
                return Err(ServiceError::Conflict(format!(
                    "volume {uuid} reached its user limit of {} simultaneous attachments",
                    v.user_limit
                )));
            }
            let mode = match v.writer() {
                None if v.may_change(user, admin) => AccessMode::ReadWrite,
                _ => AccessMode::ReadOnly,
            };
            let a = Attachment {
                node: node.to_string(),
                vm_id: vm_id.to_string(),
                server: self.server_id().to_string(),
                mode,
                hot,
                path: self
                    .image_path(uuid, mode, node, vm_id)
                    .display()
                    .to_string(),
                from_snapshot: None,
                since: now_rfc3339(),
                target: device.map(str::to_string),
                user: Some(user.to_string()),
            };
            v.attachments.push(a.clone());
            claimed = Some(a);
            Ok(())
        })
        .await?;
        let Some(mut a) = claimed else {
            return Err(ServiceError::Conflict(format!("volume {uuid}: claim lost")));
        };
        op.enter(2, "materialise");
        match self.materialise(&record, &a, op).await {
            Ok(from) => a.from_snapshot = from,
            Err(e) => {
                self.release(uuid, node, vm_id).await?;
                return Err(e);
            }
        }
        op.enter(3, "record");
        let from = a.from_snapshot.clone();
        catalog::update(self.store(), uuid, |v| {
            match v.attachments.iter_mut().find(|x| same_vm(x, node, vm_id)) {
                Some(x) => {
                    x.from_snapshot = from.clone();
                    Ok(())
                }
                None => Err(ServiceError::Conflict(format!(
                    "volume {uuid}: the attachment to vm {vm_id} was removed while attaching"
                ))),
            }
        })
        .await?;
        Ok(a)
    }

    /// Create the local image of a fresh claim: the volume's head ([`Service::head`]) or,
    /// before it has one, its source snapshot, restored as qcow2; or an empty image for a
    /// volume never backed up. Returns the snapshot used.
    async fn materialise(
        &self,
        v: &Volume,
        a: &Attachment,
        op: &OpHandle,
    ) -> Result<Option<String>, ServiceError> {
        let path = PathBuf::from(&a.path);
        check_file_size_limit(&self.data_dir().join("volumes"), v.size)?;
        // Only our fresh claim names this path: a file there is what a crash between a
        // detach's release and its drop left behind, and its data is in the repository.
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::warn!("{}: removed a stale local image", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, "remove stale image")(e)),
        }
        let from = match self.head(v).await? {
            Some(m) => Some((v.uuid.clone(), m.id)),
            None => v
                .source
                .as_ref()
                .map(|s| (s.volume.clone(), s.snapshot.clone())),
        };
        match from {
            Some((volume, id)) => {
                let target = RestoreTarget::Qcow2 {
                    path: path.clone(),
                    cluster_size: CLUSTER_SIZE,
                };
                let progress: Arc<dyn crate::repo::Progress> = Arc::new(op.clone());
                restore(&self.repo, &volume, &id, &target, Some(progress)).await?;
                Ok(Some(id))
            }
            None => {
                let opts = CreateOptions {
                    size: v.size,
                    cluster_size: CLUSTER_SIZE,
                };
                Image::create(&path, &opts)?.close()?;
                Ok(None)
            }
        }
    }

    /// Remove the attachment of vm `vm_id` on `node` from the catalog.
    async fn release(&self, uuid: &str, node: &str, vm_id: &str) -> Result<Volume, ServiceError> {
        catalog::update(self.store(), uuid, |v| {
            v.attachments.retain(|a| !same_vm(a, node, vm_id));
            Ok(())
        })
        .await
    }

    /// Detach one attachment held by this host: a read-write one is backed up first
    /// (internal snapshot + incremental upload), then released, then its image dropped.
    async fn detach_one(
        &self,
        uuid: &str,
        a: &Attachment,
        op: &OpHandle,
    ) -> Result<Option<BackupReport>, ServiceError> {
        if a.server != self.server_id() {
            return Err(ServiceError::Conflict(format!(
                "volume {uuid} is attached to vm {} through server {}; detach it there",
                a.vm_id, a.server
            )));
        }
        let lock = self.local_lock(uuid);
        let _guard = lock.lock().await;
        let path = PathBuf::from(&a.path);
        let mut report = None;
        if a.mode == AccessMode::ReadWrite {
            op.enter(1, "upload");
            report = Some(self.backup_local(uuid, &path, op).await?);
        }
        op.enter(2, "release");
        let uploaded = report.as_ref().map(|r| r.id.clone());
        catalog::update(self.store(), uuid, |v| {
            v.attachments.retain(|x| !same_vm(x, &a.node, &a.vm_id));
            if let Some(id) = &uploaded {
                v.head = Some(id.clone());
            }
            Ok(())
        })
        .await?;
        op.enter(3, "drop local image");
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, "remove")(e)),
        }
        Ok(report)
    }

    /// Upload the read-write local image of `uuid` as a new snapshot whose parent is the
    /// volume's head (the snapshot the image was restored from or last uploaded as), not
    /// the newest id, so the history stays right whatever the hosts' clocks say.
    async fn backup_local(
        &self,
        uuid: &str,
        path: &std::path::Path,
        op: &OpHandle,
    ) -> Result<BackupReport, ServiceError> {
        if !path.exists() {
            return Err(ServiceError::Conflict(format!(
                "volume {uuid}: local image {} is missing; nothing to upload",
                path.display()
            )));
        }
        // A head deleted between its lookup and the backup's is looked up once more.
        let mut retried = false;
        loop {
            let v = catalog::latest(self.store(), uuid)
                .await?
                .ok_or_else(|| ServiceError::NotFound(format!("volume {uuid}")))?;
            let parent = self.head(&v).await?.map(|m| m.id);
            let opts = BackupOptions {
                volume: uuid.to_string(),
                parent: parent.clone(),
                progress: Some(Arc::new(op.clone())),
                ..BackupOptions::default()
            };
            match backup_image(&self.repo, path, &opts).await {
                Err(crate::Error::Repo(crate::repo::RepoError::SnapshotNotFound {
                    id, ..
                })) if !retried && parent.as_deref() == Some(id.as_str()) => {
                    retried = true;
                }
                r => return Ok(r?),
            }
        }
    }

    /// Detach every volume `user` can see from vm `vm_id` on `node` (the VM is gone).
    /// Returns the detached volumes' uuids. Refused (403, nothing detached) when one of
    /// those attachments is not `user`'s to detach ([`Volume::may_detach`]).
    pub async fn detach_vm(
        &self,
        user: &str,
        node: &str,
        vm_id: &str,
        op: &OpHandle,
    ) -> Result<Vec<String>, ServiceError> {
        let mut done = Vec::new();
        for (uuid, a) in self.detachable(user, node, vm_id).await? {
            self.detach_one(&uuid, &a, op).await?;
            done.push(uuid);
        }
        Ok(done)
    }

    /// The attachments of vm `vm_id` on `node` to the volumes `user` can see, each with
    /// its volume's uuid; refused (403) if one of them is not `user`'s to detach.
    pub(crate) async fn detachable(
        &self,
        user: &str,
        node: &str,
        vm_id: &str,
    ) -> Result<Vec<(String, Attachment)>, ServiceError> {
        check_vm(node, vm_id)?;
        let mut mine = Vec::new();
        for v in self.list_volumes(user).await? {
            if let Some(a) = v.attachments.iter().find(|a| same_vm(a, node, vm_id)) {
                self.check_may_detach(&v, a, user)?;
                mine.push((v.uuid.clone(), a.clone()));
            }
        }
        Ok(mine)
    }

    /// Detach a hot-plugged volume from a running VM.
    pub async fn hot_detach(
        &self,
        user: &str,
        uuid: &str,
        node: &str,
        vm_id: &str,
        op: &OpHandle,
    ) -> Result<Option<BackupReport>, ServiceError> {
        check_vm(node, vm_id)?;
        let v = self.get_volume(user, uuid).await?;
        let a = v
            .attachments
            .iter()
            .find(|a| same_vm(a, node, vm_id))
            .ok_or_else(|| {
                ServiceError::Conflict(format!(
                    "volume {uuid} is not attached to vm {vm_id} on node {node}"
                ))
            })?;
        self.check_may_detach(&v, a, user)?;
        if !a.hot {
            return Err(ServiceError::Conflict(format!(
                "volume {uuid} was attached at VM start, not hot-plugged; it detaches with the VM"
            )));
        }
        self.detach_one(uuid, a, op).await
    }

    /// Refuse (403) a detach of `a` by `user` unless [`Volume::may_detach`] allows it.
    pub(crate) fn check_may_detach(
        &self,
        v: &Volume,
        a: &Attachment,
        user: &str,
    ) -> Result<(), ServiceError> {
        if v.may_detach(a, user, self.is_admin(user)) {
            return Ok(());
        }
        Err(ServiceError::Forbidden(format!(
            "volume {} belongs to {}: its {} attachment to vm {} on node {} is not yours to \
             detach (only the volume's owner or an admin detaches another user's \
             attachment, and a read-write one)",
            v.uuid,
            v.owner,
            match a.mode {
                AccessMode::ReadWrite => "read-write",
                AccessMode::ReadOnly => "read-only",
            },
            a.vm_id,
            a.node
        )))
    }

    /// Uuids of the volumes `user` can see that are attached to vm `vm_id` on `node`.
    pub async fn vm_volumes(
        &self,
        user: &str,
        node: &str,
        vm_id: &str,
    ) -> Result<Vec<String>, ServiceError> {
        Ok(self
            .list_volumes(user)
            .await?
            .into_iter()
            .filter(|v| v.attachments.iter().any(|a| same_vm(a, node, vm_id)))
            .map(|v| v.uuid)
            .collect())
    }

    /// Snapshot volume `uuid` from its read-write local image on this host (internal
    /// snapshot + incremental upload + drop of the older internal snapshot).
    pub async fn snapshot(
        &self,
        user: &str,
        uuid: &str,
        op: &OpHandle,
    ) -> Result<BackupReport, ServiceError> {
        let v = self.get_volume(user, uuid).await?;
        self.check_may_change(&v, user, "snapshots it")?;
        let Some(a) = v.writer() else {
            return Err(ServiceError::Conflict(format!(
                "volume {uuid} has no read-write attachment; its last snapshot is current"
            )));
        };
        if a.server != self.server_id() {
            return Err(ServiceError::Conflict(format!(
                "volume {uuid} is attached read-write through server {}; snapshot it there",
                a.server
            )));
        }
        let lock = self.local_lock(uuid);
        let _guard = lock.lock().await;
        op.enter(1, "upload");
        let report = self.backup_local(uuid, &PathBuf::from(&a.path), op).await?;
        catalog::update(self.store(), uuid, |v| {
            v.head = Some(report.id.clone());
            Ok(())
        })
        .await?;
        Ok(report)
    }
}

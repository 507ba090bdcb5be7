//! Copying a volume's snapshot to another repository (another region), optionally as a
//! diff against a base the target already holds.
//!
//! The targets a server may write are an allow-list opened at start (`island serve
//! --copy-target URL`); a request names one by its URL, so a client can never make the
//! server open an arbitrary store. The data moves with [`crate::repo::copy`]: the
//! snapshot's tree is walked top-down and every table the target already counts is
//! skipped with its whole subtree, so copying a snapshot whose base is already there
//! uploads only what changed since. A named `base` must be a live snapshot of the same
//! volume in the target; it documents (and checks) what the diff is against.
//!
//! After the data, the volume's record is created in the target's catalog if it has none
//! (generation 0: same uuid, owner, tag, visibility, size, user limit; no attachments,
//! no source). A server on
//! the target repository then lists the volume and can create new volumes from its
//! copied snapshots — the cross-region restore — or attach it.

use super::{catalog, OpHandle, Service, ServiceError, Volume};
use crate::repo::{CopyOptions, CopyReport, RepoError, Repository};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What to copy where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRequest {
    /// URL of an allowed target repository (as given to `--copy-target`).
    pub target: String,
    /// Snapshot to copy; `None` = the volume's head (`Service::head`).
    pub snapshot: Option<String>,
    /// A snapshot of the same volume the target already holds (the diff's base).
    pub base: Option<String>,
}

/// What a copy did.
#[derive(Debug, Clone, Serialize)]
pub struct CopyDone {
    /// The volume copied (the same uuid in the target's catalog).
    pub uuid: String,
    /// The target repository's URL, as in the request.
    pub target: String,
    /// The snapshot copied (the head's id when the request named none).
    pub snapshot: String,
    /// The snapshot the copy was a diff against, if any.
    pub base: Option<String>,
    /// True when this copy created the volume's record in the target's catalog.
    pub record_created: bool,
    /// What the repository copy transferred.
    pub copy: CopyReport,
}

impl Service {
    /// Allow copies to repository `repo`, named `url` in requests.
    pub fn add_copy_target(&mut self, url: impl Into<String>, repo: Repository) {
        self.targets.insert(url.into(), repo);
    }

    /// The allowed copy targets' URLs, sorted.
    pub fn copy_targets(&self) -> Vec<String> {
        let mut v: Vec<String> = self.targets.keys().cloned().collect();
        v.sort();
        v
    }

    /// Check a copy request before it is recorded as an operation: target allowed,
    /// volume visible, ids well-formed. Returns the target repository.
    pub fn copy_target(&self, req: &CopyRequest) -> Result<Repository, ServiceError> {
        let mut problems = Vec::new();
        for (field, id) in [("snapshot", &req.snapshot), ("base", &req.base)] {
            if let Some(id) = id
                .as_deref()
                .filter(|id| !crate::repo::format::ids::is_time_id(id))
            {
                problems.push(format!("{field} {id:?} is not a snapshot id"));
            }
        }
        let target = self.targets.get(&req.target);
        if target.is_none() {
            problems.push(format!(
                "target {:?} is not an allowed copy target (allowed: {})",
                req.target,
                self.copy_targets().join(", ")
            ));
        }
        match target {
            Some(t) if problems.is_empty() => Ok(t.clone()),
            _ => Err(ServiceError::Invalid(problems)),
        }
    }

    /// Copy a snapshot of volume `uuid` (visible to `user`) to `req.target` (see module
    /// docs). Stages: 1 copy (percent of the snapshot's bytes handled), 2 record.
    ///
    /// ```no_run
    /// # async fn demo(svc: &island::service::Service, op: &island::service::OpHandle)
    /// # -> Result<(), island::service::ServiceError> {
    /// use island::service::CopyRequest;
    /// let req = CopyRequest { target: "s3://dr-bucket/island".into(), snapshot: None, base: None };
    /// let done = svc.copy("alice", "eb198dec-3560-4a9a-b3b4-5f043410a3dd", &req, op).await?;
    /// println!("uploaded {} bytes", done.copy.bytes_uploaded);
    /// # Ok(()) }
    /// ```
    pub async fn copy(
        &self,
        user: &str,
        uuid: &str,
        req: &CopyRequest,
        op: &OpHandle,
    ) -> Result<CopyDone, ServiceError> {
        let target = self.copy_target(req)?;
        let v = self.get_volume(user, uuid).await?;
        // The copy commits snapshots of this volume, and its record, in the target.
        self.check_may_change(&v, user, "copies it to another repository")?;
        let snapshot = match &req.snapshot {
            Some(id) => id.clone(),
            None => match self.head(&v).await? {
                Some(m) => m.id,
                None => {
                    return Err(ServiceError::Conflict(format!(
                        "volume {uuid} has no snapshot yet; detach or snapshot it first"
                    )))
                }
            },
        };
        if let Some(base) = &req.base {
            match target.snapshot(uuid, base).await {
                Ok(_) => {}
                Err(crate::Error::Repo(RepoError::SnapshotNotFound { .. })) => {
                    return Err(ServiceError::Conflict(format!(
                        "base {base} of volume {uuid} is not in {}",
                        req.target
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
        op.enter(1, "copy");
        let opts = CopyOptions {
            volume: uuid.to_string(),
            snapshot: Some(snapshot.clone()),
            progress: Some(Arc::new(op.clone())),
            checkpoint_interval: None,
        };
        let report = match crate::repo::copy(&self.repo, &target, &opts).await {
            Ok(r) => r,
            Err(crate::Error::Repo(RepoError::SnapshotNotFound { .. })) => {
                return Err(ServiceError::NotFound(format!(
                    "snapshot {uuid}/{snapshot}"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        op.enter(2, "record");
        let record_created = ensure_record(&target, v).await?;
        Ok(CopyDone {
            uuid: uuid.to_string(),
            target: req.target.clone(),
            snapshot,
            base: req.base.clone(),
            record_created,
            copy: report,
        })
    }
}

/// Create volume `v`'s record in `repo`'s catalog if it has none (generation 0: same uuid,
/// owner, tag, visibility, size, user limit; no attachments, no source), so a server on
/// that repository lists the volume whose snapshots were copied there. True if created.
pub(super) async fn ensure_record(repo: &Repository, v: Volume) -> Result<bool, ServiceError> {
    let record = Volume {
        generation: 0,
        attachments: Vec::new(),
        last_revert: None,
        source: None,
        // The target may hold only some of the volume's snapshots: its parent chain
        // decides the head there.
        head: None,
        ..v
    };
    // Looked up first: on a store without atomic create (Swift), a create of the very
    // same bytes as an existing record reads back as ours.
    Ok(match catalog::latest(repo.store(), &record.uuid).await? {
        Some(_) => false,
        None => catalog::commit(repo.store(), &record).await?,
    })
}

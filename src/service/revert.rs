//! Reverting a volume to one of its snapshots.
//!
//! A revert copies no data: the repository commits a new snapshot whose tree is the chosen
//! one's ([`Repository::revert`](crate::repo::Repository::revert)), so it becomes the
//! volume's newest and the next attach materialises it; every snapshot stays. It is
//! refused while the volume has a read-write attachment anywhere (that image would
//! upload over the revert on detach): detach first. Read-only attachments keep the view
//! they were materialised from.
//!
//! Race with an attach on another host: the catalog generation read before the revert
//! must still be the newest when the revert is recorded (the record's create-if-absent
//! is the fence); if a claim slipped in, the new snapshot is deleted again and the revert
//! refused, so no writer can end up holding pre-revert content unknowingly.

use super::model::Revert;
use super::{catalog, Service, ServiceError, Volume};
use crate::repo::format::ids::now_rfc3339;
use crate::repo::RepoError;

impl Service {
    /// Revert volume `uuid` to its snapshot `to` (its owner or an admin: a revert moves
    /// the head, which other users of a public volume may not).
    /// Returns the volume's new record; `last_revert.snapshot` names the new snapshot.
    ///
    /// ```no_run
    /// # async fn demo(svc: &island::service::Service) -> Result<(), island::service::ServiceError> {
    /// let uuid = "eb198dec-3560-4a9a-b3b4-5f043410a3dd";
    /// let first = svc.snapshots("alice", uuid).await?.remove(0);
    /// let v = svc.revert("alice", uuid, &first.id).await?;
    /// assert_eq!(v.last_revert.map(|r| r.to), Some(first.id));
    /// # Ok(()) }
    /// ```
    pub async fn revert(&self, user: &str, uuid: &str, to: &str) -> Result<Volume, ServiceError> {
        let before = self.get_volume(user, uuid).await?;
        self.check_may_change(&before, user, "reverts it")?;
        refuse_writer(&before)?;
        if !crate::repo::format::ids::is_time_id(to) {
            return Err(ServiceError::Invalid(vec![format!(
                "snapshot id {to:?} is malformed"
            )]));
        }
        let root = match self.repo.revert(uuid, to).await {
            Ok(m) => m,
            Err(crate::Error::Repo(RepoError::SnapshotNotFound { .. })) => {
                return Err(ServiceError::NotFound(format!("snapshot {uuid}/{to}")))
            }
            Err(e) => return Err(e.into()),
        };
        let record = Revert {
            to: to.to_string(),
            snapshot: root.id.clone(),
            at: now_rfc3339(),
        };
        let fenced = catalog::update(self.store(), uuid, |v| {
            if v.generation != before.generation {
                return Err(ServiceError::Conflict(format!(
                    "volume {uuid} changed during the revert (attached or reverted elsewhere); try again"
                )));
            }
            v.last_revert = Some(record.clone());
            v.head = Some(record.snapshot.clone());
            Ok(())
        })
        .await;
        match fenced {
            Ok(v) => Ok(v),
            Err(e) => {
                if let Err(d) = self.repo.delete_snapshot(uuid, &root.id).await {
                    tracing::warn!("revert of {uuid}: dropping snapshot {}: {d}", root.id);
                }
                Err(e)
            }
        }
    }
}

/// Refuse while a read-write attachment exists (it would upload over the revert).
fn refuse_writer(v: &Volume) -> Result<(), ServiceError> {
    match v.writer() {
        Some(a) => Err(ServiceError::Conflict(format!(
            "volume {} is attached read-write to vm {} on node {} (server {}); detach before reverting",
            v.uuid, a.vm_id, a.node, a.server
        ))),
        None => Ok(()),
    }
}

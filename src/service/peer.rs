//! Peer repositories (other regions) used both ways: the allow-list a server opens at
//! start (`island serve --copy-target URL`, alias `--peer`) names the repositories it may
//! copy to ([`Service::copy`]), create volumes from ([`Service::create_from_peer`]) and
//! mend damaged snapshots from (the `mend` fix). A request names a peer by its URL, so a
//! client can never make the server open an arbitrary store.
//!
//! Create from a peer's snapshot: the snapshot is copied into this repository first (the
//! repository copy: tables and chunks this repository already counts are not sent, ids
//! are kept), the source volume's record is created in this catalog if it has none (as a
//! copy to a target does), then the new volume is committed with that snapshot as its
//! source; its first attach restores it like any local source. Visibility is checked
//! against the peer's catalog: a private volume of someone else stays "not found".
//!
//! Mend from a peer: a peer holding the damaged snapshot (same volume uuid and snapshot
//! id: copies keep ids) supplies the damaged objects ([`crate::repo::heal`]); only when
//! no peer can, the snapshot is deleted ([`Repository::delete_damaged_snapshot`], which
//! also works when its tables are missing).

use super::copy::ensure_record;
use super::model::valid_uuid;
use super::{catalog, CreateVolume, OpHandle, Service, ServiceError, SnapshotRef, Volume};
use crate::repo::{CopyOptions, CopyReport, RepoError, Repository};
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// What a create from a peer's snapshot did.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedFromPeer {
    /// The new volume.
    pub uuid: String,
    /// The peer the snapshot came from.
    pub source_repository: String,
    /// The snapshot the new volume starts as (its volume's uuid and id in the peer).
    pub source: SnapshotRef,
    /// True when this create also created the source volume's record in this catalog.
    pub record_created: bool,
    /// The copy into this repository (skipped when it already held the snapshot).
    pub copy: CopyReport,
}

fn is_not_found(e: &crate::Error) -> bool {
    matches!(e, crate::Error::Repo(RepoError::SnapshotNotFound { .. }))
}

impl Service {
    /// The allowed peer repository named `url`.
    fn peer(&self, url: &str) -> Result<&Repository, ServiceError> {
        self.targets.get(url).ok_or_else(|| {
            ServiceError::Invalid(vec![format!(
                "source_repository {url:?} is not an allowed peer repository (allowed: {})",
                self.copy_targets().join(", ")
            )])
        })
    }

    /// Check a create from snapshot `req.source` of peer `url` before it is recorded as
    /// an operation (peer allowed, source volume visible to `user` in the peer's catalog,
    /// snapshot present there, size and fields valid) and plan the new volume: its uuid
    /// is fixed now, so a resumed operation creates the same volume.
    pub async fn plan_create_from_peer(
        &self,
        user: &str,
        req: &CreateVolume,
        url: &str,
    ) -> Result<Volume, ServiceError> {
        let peer = self.peer(url)?;
        let Some(src) = &req.source else {
            return Err(ServiceError::Invalid(vec![
                "source_repository needs source and snapshot".into(),
            ]));
        };
        let not_found = || ServiceError::NotFound(format!("volume {} in {url}", src.volume));
        if !valid_uuid(&src.volume) {
            return Err(not_found());
        }
        match catalog::latest(peer.store(), &src.volume).await? {
            Some(v) if v.visible_to(user) => {}
            _ => return Err(not_found()),
        }
        if !crate::repo::format::ids::is_time_id(&src.snapshot) {
            return Err(ServiceError::Invalid(vec![format!(
                "snapshot id {:?} is malformed",
                src.snapshot
            )]));
        }
        let size = match peer.snapshot(&src.volume, &src.snapshot).await {
            Ok(m) => m.size,
            Err(e) if is_not_found(&e) => {
                return Err(ServiceError::NotFound(format!(
                    "snapshot {}/{} in {url}",
                    src.volume, src.snapshot
                )))
            }
            Err(e) => return Err(e.into()),
        };
        self.plan_volume(user, req, Some(size))
    }

    /// Create volume `planned` (from [`Service::plan_create_from_peer`]) from its source
    /// snapshot in peer `url` (see module docs). Stages: 1 copy (percent of the snapshot's
    /// bytes), 2 record (the source volume in this catalog), 3 create. Idempotent: a
    /// resumed run skips what is done.
    ///
    /// ```no_run
    /// # async fn demo(svc: &island::service::Service, op: &island::service::OpHandle)
    /// # -> Result<(), island::service::ServiceError> {
    /// use island::service::{CreateVolume, SnapshotRef, Visibility};
    /// let req = CreateVolume {
    ///     size: 0, // the snapshot's size
    ///     tag: "dr".into(),
    ///     visibility: Visibility::Private,
    ///     user_limit: None,
    ///     source: Some(SnapshotRef {
    ///         volume: "eb198dec-3560-4a9a-b3b4-5f043410a3dd".into(),
    ///         snapshot: "20260101T000000.000000Z-0123456789abcdef".into(),
    ///     }),
    /// };
    /// let peer = "s3://region-a/island";
    /// let planned = svc.plan_create_from_peer("alice", &req, peer).await?;
    /// let done = svc.create_from_peer("alice", &planned, peer, op).await?;
    /// assert_eq!(done.uuid, planned.uuid);
    /// # Ok(()) }
    /// ```
    pub async fn create_from_peer(
        &self,
        user: &str,
        planned: &Volume,
        url: &str,
        op: &OpHandle,
    ) -> Result<CreatedFromPeer, ServiceError> {
        let peer = self.peer(url)?;
        let src = planned.source.clone().ok_or_else(|| {
            ServiceError::Invalid(vec!["a create from a peer needs a source snapshot".into()])
        })?;
        let source = match catalog::latest(peer.store(), &src.volume).await? {
            Some(v) if v.visible_to(user) => v,
            _ => {
                return Err(ServiceError::NotFound(format!(
                    "volume {} in {url}",
                    src.volume
                )))
            }
        };
        op.enter(1, "copy");
        let opts = CopyOptions {
            volume: src.volume.clone(),
            snapshot: Some(src.snapshot.clone()),
            progress: Some(Arc::new(op.clone())),
            checkpoint_interval: None,
        };
        let copy = match crate::repo::copy(peer, &self.repo, &opts).await {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => {
                return Err(ServiceError::NotFound(format!(
                    "snapshot {}/{} in {url}",
                    src.volume, src.snapshot
                )))
            }
            Err(e) => return Err(e.into()),
        };
        op.enter(2, "record");
        let record_created = ensure_record(&self.repo, source).await?;
        op.enter(3, "create");
        let committed = match catalog::latest(self.store(), &planned.uuid).await? {
            // A resumed run that had committed it already.
            Some(v) if v.owner == user && v.source.as_ref() == Some(&src) => true,
            Some(_) => false,
            None => catalog::commit(self.store(), planned).await?,
        };
        if !committed {
            return Err(ServiceError::Conflict(format!(
                "volume {} already exists (uuid collision)",
                planned.uuid
            )));
        }
        Ok(CreatedFromPeer {
            uuid: planned.uuid.clone(),
            source_repository: url.to_string(),
            source: src,
            record_created,
            copy,
        })
    }

    /// Peers holding a live snapshot `volume/id`, by URL.
    pub(super) async fn peers_holding(&self, volume: &str, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        for url in self.copy_targets() {
            if let Some(peer) = self.targets.get(&url) {
                if peer.snapshot(volume, id).await.is_ok() {
                    out.push(url);
                }
            }
        }
        out
    }

    /// Apply `mend:<volume>/<id>`: heal the snapshot from the first peer that can supply
    /// its damaged objects (`"mended": "recopied"`), else delete it (`"mended":
    /// "deleted"`, with why each peer could not help). `"already gone"` if it was deleted.
    pub(super) async fn mend(
        &self,
        volume: &str,
        id: &str,
        op: &OpHandle,
    ) -> Result<Value, ServiceError> {
        match self.repo.snapshot(volume, id).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(json!("already gone")),
            Err(e) => return Err(e.into()),
        }
        let mut tried = Vec::new();
        for url in self.peers_holding(volume, id).await {
            let Some(peer) = self.targets.get(&url) else {
                continue;
            };
            let progress: Arc<dyn crate::repo::Progress> = Arc::new(op.clone());
            match crate::repo::heal(&self.repo, peer, volume, id, Some(progress)).await {
                Ok(report) => {
                    let mut out = json!(report);
                    out["mended"] = json!("recopied");
                    out["from"] = json!(url);
                    return Ok(out);
                }
                Err(e) => {
                    tracing::warn!("mend of {volume}/{id} from {url} failed: {e}");
                    tried.push(format!("{url}: {e}"));
                }
            }
        }
        // Before forgetting it: a lost index segment or root makes intact snapshots look
        // damaged, and repair rebuilds the index from the packs (format-spec §11).
        let repaired = self.repo.repair().await?;
        let snap = format!("{volume}/{id}");
        // With the data read: damage inside a pack's frames is invisible to a check that
        // reads only the tables, and "rebuilt" must mean the snapshot restores again.
        let check = self
            .repo
            .check(&crate::repo::CheckOptions {
                read_data: true,
                sample_pct: None,
            })
            .await?;
        if !check.issues.iter().any(|i| i.snapshots.contains(&snap)) {
            return Ok(json!({"mended": "rebuilt", "repair": repaired, "peers_tried": tried}));
        }
        match self.repo.delete_damaged_snapshot(volume, id).await {
            Ok(report) => {
                let mut out = json!(report);
                out["mended"] = json!("deleted");
                out["peers_tried"] = json!(tried);
                Ok(out)
            }
            Err(e) if is_not_found(&e) => Ok(json!("already gone")),
            Err(e) => Err(e.into()),
        }
    }
}

//! Resuming the operations a crash or restart interrupted. Every operation is a sequence
//! of idempotent steps against the catalog and the local image, so resuming = running it
//! again under the same id:
//! - detach/hotdetach: if the attachment is still recorded, back up again (a fresh
//!   internal snapshot; the interrupted run's orphan is dropped after the commit), release,
//!   drop the image; if it was released already, nothing is left to do.
//! - snapshot: back up again.
//! - attach/hotattach: release this server's claim (its image may be partial) and attach
//!   again.
//! - copy: copy again (snapshots the target already has are skipped, tables it counts
//!   are not sent again).
//! - create (from a peer's snapshot): copy again, record the source volume if absent,
//!   commit the planned volume (same uuid) unless a previous run did.
//! - fix: apply the fixes again (deleting a deleted snapshot is "already gone"; repair,
//!   gc and compaction are safe to repeat).

use super::{catalog, OpHandle, Operation, Plug, Service, ServiceError};
use serde_json::{json, Value};
use std::sync::Arc;

impl Service {
    /// Start a server's background work: resume the operations the previous process left
    /// unfinished ([`Service::resume_interrupted`]) and prune operation records past
    /// their retention from the store at [`super::OpTiming::prune_every`]. Returns how
    /// many operations were resumed.
    pub fn start(self: &Arc<Self>) -> usize {
        let resumed = self.resume_interrupted();
        let every = self.operations().timing().prune_every();
        // A weak reference: the pruner ends with the service.
        let svc = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(s) = svc.upgrade() else {
                    return;
                };
                match s.operations().prune().await {
                    Ok(r) if r.deleted > 0 => tracing::info!(
                        "pruned {} operation record(s) ({} abandoned by their owner)",
                        r.deleted,
                        r.abandoned
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("pruning operation records: {e}"),
                }
                drop(s);
                tokio::time::sleep(every).await;
            }
        });
        resumed
    }

    /// Re-run, in the background, the operations the previous process left unfinished,
    /// and publish the final state of those it finished (its crash may have come before
    /// the shared write). Returns how many were resumed.
    pub fn resume_interrupted(self: &Arc<Self>) -> usize {
        self.operations().republish();
        let pending = self.operations().take_interrupted();
        let n = pending.len();
        for op in pending {
            tracing::warn!(
                "resuming operation {} ({}) interrupted at stage {}/{}",
                op.id,
                op.kind,
                op.stage_index,
                op.stage_count
            );
            let handle = self.operations().adopt(op.clone());
            let svc = self.clone();
            tokio::spawn(async move {
                let r = svc.redo(&op, &handle).await;
                handle.finish(r.map_err(|e| format!("resumed after a restart, then: {e}")));
                if let Err(e) = handle.flush().await {
                    tracing::warn!("operation {}: writing its end: {e}", op.id);
                }
            });
        }
        n
    }

    async fn redo(&self, op: &Operation, h: &OpHandle) -> Result<Value, ServiceError> {
        let missing =
            |what: &str| ServiceError::Conflict(format!("operation {} records no {what}", op.id));
        let node = op.node.as_deref().ok_or_else(|| missing("node"));
        let vm_id = op.vm_id.as_deref().ok_or_else(|| missing("vm_id"));
        let uuid = op.volume.as_deref().ok_or_else(|| missing("volume"));
        let user = op.user.as_str();
        match op.kind.as_str() {
            "detach" => {
                let (node, vm_id) = (node?, vm_id?);
                let done = self.detach_vm(user, node, vm_id, h).await?;
                Ok(json!({"node": node, "vm_id": vm_id, "uuid": done, "resumed": true}))
            }
            "hotdetach" => {
                let (uuid, node, vm_id) = (uuid?, node?, vm_id?);
                let v = self.get_volume(user, uuid).await?;
                let attached = v
                    .attachments
                    .iter()
                    .any(|a| a.node == node && a.vm_id == vm_id);
                let backup = if attached {
                    self.hot_detach(user, uuid, node, vm_id, h).await?
                } else {
                    None
                };
                Ok(json!({"node": node, "vm_id": vm_id, "backup": backup, "resumed": true}))
            }
            "snapshot" => {
                let uuid = uuid?;
                let report = self.snapshot(user, uuid, h).await?;
                Ok(json!({"uuid": uuid, "snapshot": report.id, "backup": report, "resumed": true}))
            }
            "attach" | "hotattach" => {
                let (uuid, node, vm_id) = (uuid?, node?, vm_id?);
                let server = self.server_id().to_string();
                catalog::update(self.store(), uuid, |v| {
                    v.attachments
                        .retain(|a| !(a.node == node && a.vm_id == vm_id && a.server == server));
                    Ok(())
                })
                .await?;
                let plug = match op.kind.as_str() {
                    "hotattach" => Plug::Hot {
                        device: op.device.as_deref(),
                    },
                    _ => Plug::AtStart,
                };
                let a = self.attach(user, uuid, node, vm_id, plug, h).await?;
                Ok(json!({
                    "node": node, "vm_id": vm_id, "uuid": [uuid], "mode": a.mode,
                    "path": a.path, "from_snapshot": a.from_snapshot, "resumed": true,
                }))
            }
            "copy" => {
                let uuid = uuid?;
                let req: super::CopyRequest = op
                    .args
                    .clone()
                    .and_then(|a| serde_json::from_value(a).ok())
                    .ok_or_else(|| missing("copy request"))?;
                let mut done = json!(self.copy(user, uuid, &req, h).await?);
                done["resumed"] = json!(true);
                Ok(done)
            }
            "create" => {
                let args = op.args.clone().unwrap_or_default();
                let url = args["source_repository"]
                    .as_str()
                    .ok_or_else(|| missing("source repository"))?
                    .to_string();
                let planned: super::Volume = serde_json::from_value(args["volume"].clone())
                    .map_err(|_| missing("planned volume"))?;
                let mut done = json!(self.create_from_peer(user, &planned, &url, h).await?);
                done["resumed"] = json!(true);
                Ok(done)
            }
            "fix" => {
                let ids: Vec<String> = op
                    .args
                    .as_ref()
                    .and_then(|a| serde_json::from_value(a["fixes"].clone()).ok())
                    .ok_or_else(|| missing("fix list"))?;
                Ok(json!({"fixes": self.fix(&ids, h).await?, "resumed": true}))
            }
            other => Err(ServiceError::Conflict(format!(
                "operation kind {other:?} cannot be resumed"
            ))),
        }
    }
}

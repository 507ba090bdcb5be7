//! Repository check → fixes, and image status.
//!
//! [`Service::check`] runs the repository's `check` (structure of every live snapshot,
//! reference counts) and a dry run of the catalog compaction, and turns the findings into
//! fixes a caller picks from (the storage-API thread's Fix objects):
//!
//! | kind | id | when | applying it |
//! |---|---|---|---|
//! | `mend` | `mend:<volume>/<snapshot>` | the snapshot cannot be restored (missing or corrupt object) | re-copy its damaged objects from a peer repository holding the same snapshot ([`crate::repo::heal`]); when no peer can, run `check --repair` (it rebuilds a lost index from the packs) and delete it only if it is still damaged, so attach and copy use the newest intact one |
//! | `optimize` | `optimize:refcounts` | stored reference counts disagree with the snapshots | `check --repair`: rebuild the counts, release leaked blobs to gc |
//! | `clean` | `clean:gc` | always | gc: reclaim the space of deleted snapshots and released blobs (`bytes` = what gc's dry run, `Repository::gc_plan`, would reclaim now) |
//! | `clean` | `clean:catalog` | superseded catalog generations older than `ServiceConfig::catalog_grace` | [`catalog::compact`] |
//!
//! `merge` is never produced: every Island snapshot is a complete tree (no chain of
//! deltas to merge). The result is kept as the repository's last check
//! (`service/check/last`, shared by every server: [`super::last_check`]);
//! [`Service::fix`] only applies fixes it lists, and
//! [`Service::image_status`] derives a volume's status from it: `broken` when the
//! volume's head snapshot (what an attach materialises) is damaged, `degraded` when an
//! older one is, `optimized` otherwise (also before any check).

use super::{catalog, last_check, OpHandle, Service, ServiceError};
use crate::repo::format::ids::now_rfc3339;
use crate::repo::{CheckOptions, CheckReport};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What kind of fix (the storage-API thread's four types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FixKind {
    /// Reclaims space: gc, or the catalog compaction.
    Clean,
    /// Makes a damaged snapshot restorable again (from a peer), or deletes it.
    Mend,
    /// Repairs the stored reference counts (`check --repair`).
    Optimize,
    /// Merges a delta chain; never proposed (every Island snapshot is a complete tree),
    /// kept so the storage API's four kinds all parse.
    Merge,
}

/// One proposed fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fix {
    /// Stable id to pass to [`Service::fix`].
    pub id: String,
    /// Which of the four kinds; decides the order [`Service::fix`] applies fixes in.
    pub kind: FixKind,
    /// For a person choosing fixes: what is wrong and what applying it does (a mend
    /// names the first peer holding the snapshot, or says none does).
    pub description: String,
    /// Bytes concerned: reclaimed (clean), or the snapshot's size a mend without a peer
    /// forgets by deleting it; `None` = not known in advance (a mend a peer can serve
    /// fetches only the damaged objects: its outcome's `bytes_from_peer`).
    pub bytes: Option<u64>,
}

/// A check's findings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// When it ran (RFC 3339).
    pub checked: String,
    /// Everything [`Service::fix`] may apply; it refuses ids not listed here.
    pub fixes: Vec<Fix>,
    /// `volume/snapshot` of every snapshot that cannot be restored.
    pub damaged: Vec<String>,
    /// Live snapshots whose structure the check walked.
    pub snapshots_checked: u64,
    /// Blobs whose stored reference count disagrees with the snapshots (an `optimize`
    /// fix is proposed when non-zero).
    pub refcount_mismatches: u64,
}

/// A volume's state as the last check saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageStatus {
    /// No snapshot of the volume is damaged (also before any check).
    Optimized,
    /// Only older snapshots are damaged: the volume works, part of its history does not.
    Degraded,
    /// The head snapshot (what an attach materialises) is damaged.
    Broken,
}

impl ImageStatus {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Optimized => "optimized",
            ImageStatus::Degraded => "degraded",
            ImageStatus::Broken => "broken",
        }
    }
}

impl Service {
    /// Check the repository and list fixes (see module docs); kept as the last check.
    /// `read_data` also re-reads and re-hashes every chunk (finds corrupt data, at the
    /// cost of reading the whole repository).
    ///
    /// ```no_run
    /// # async fn demo(svc: &island::service::Service, op: &island::service::OpHandle)
    /// # -> Result<(), island::service::ServiceError> {
    /// let found = svc.check(false).await?;
    /// let ids: Vec<String> = found.fixes.iter().map(|f| f.id.clone()).collect();
    /// svc.fix(&ids, op).await?;
    /// # Ok(()) }
    /// ```
    pub async fn check(&self, read_data: bool) -> Result<CheckResult, ServiceError> {
        let opts = CheckOptions {
            read_data,
            sample_pct: None,
        };
        let report: CheckReport = self.repo.check(&opts).await?;
        let mut fixes = Vec::new();
        let mut damaged: Vec<String> = Vec::new();
        for issue in &report.issues {
            for snap in &issue.snapshots {
                if damaged.contains(snap) {
                    continue;
                }
                damaged.push(snap.clone());
                let size = match snap.split_once('/') {
                    Some((v, id)) => self.repo.snapshot(v, id).await.ok().map(|m| m.size),
                    None => None,
                };
                let peers = match snap.split_once('/') {
                    Some((v, id)) => self.peers_holding(v, id).await,
                    None => Vec::new(),
                };
                let action = match peers.first() {
                    Some(p) => format!("mend re-copies its damaged objects from peer {p}, which holds the same snapshot (and deletes it only if no peer can supply them)"),
                    None => "no peer repository holds it: mend first runs `check --repair` (which rebuilds a lost index from the packs) and deletes it only if it is still damaged, so attach and copy use the newest intact snapshot".into(),
                };
                fixes.push(Fix {
                    id: format!("mend:{snap}"),
                    kind: FixKind::Mend,
                    description: format!(
                        "snapshot {snap} cannot be restored ({}: {}); {action}",
                        issue.object, issue.problem
                    ),
                    // A heal moves only the damaged objects, unknown until it runs (its
                    // outcome reports `bytes_from_peer`); a delete forgets the snapshot.
                    bytes: if peers.is_empty() { size } else { None },
                });
            }
        }
        damaged.sort();
        if report.refcount_mismatches > 0 {
            fixes.push(Fix {
                id: "optimize:refcounts".into(),
                kind: FixKind::Optimize,
                description: format!(
                    "{} stored reference counts disagree with the snapshots; rebuild them and release leaked blobs to gc",
                    report.refcount_mismatches
                ),
                bytes: None,
            });
        }
        // gc's dry run: what a gc would reclaim now (deletes younger than the lease
        // allowance are not processable yet and count from a later check on).
        // gc refuses while objects are damaged (format-spec §11): no clean fix then.
        match self.repo.gc_reclaimable_bytes().await {
            Ok(reclaimable) => fixes.push(Fix {
                id: "clean:gc".into(),
                kind: FixKind::Clean,
                description: format!(
                    "collect garbage: reclaim the space of deleted snapshots and released blobs ({reclaimable} bytes reclaimable now)"
                ),
                bytes: Some(reclaimable),
            }),
            Err(crate::Error::Repo(crate::repo::RepoError::Damaged { .. })) => {}
            Err(e) => return Err(e.into()),
        }
        let compact = catalog::compact(self.store(), self.cfg.catalog_grace, true).await?;
        if compact.generations > 0 {
            fixes.push(Fix {
                id: "clean:catalog".into(),
                kind: FixKind::Clean,
                description: format!(
                    "delete {} superseded catalog generations of {} volumes (superseded more than {} s ago)",
                    compact.generations,
                    compact.volumes,
                    self.cfg.catalog_grace.as_secs()
                ),
                bytes: Some(compact.bytes),
            });
        }
        let result = CheckResult {
            checked: now_rfc3339(),
            fixes,
            damaged,
            snapshots_checked: report.snapshots_checked,
            refcount_mismatches: report.refcount_mismatches,
        };
        last_check::put(self.store(), &result).await?;
        Ok(result)
    }

    /// The repository's last check (run by any server sharing it), if any.
    pub async fn last_check(&self) -> Result<Option<CheckResult>, ServiceError> {
        last_check::get(self.store()).await
    }

    /// Status of volume `uuid` by the last check (see module docs).
    pub async fn image_status(&self, uuid: &str) -> Result<ImageStatus, ServiceError> {
        let Some(last) = self.last_check().await? else {
            return Ok(ImageStatus::Optimized);
        };
        let prefix = format!("{uuid}/");
        if !last.damaged.iter().any(|d| d.starts_with(&prefix)) {
            return Ok(ImageStatus::Optimized);
        }
        let newest = match super::catalog::latest(self.store(), uuid).await? {
            Some(v) => self.head(&v).await?.map(|m| format!("{uuid}/{}", m.id)),
            None => None,
        };
        Ok(match newest {
            Some(n) if last.damaged.contains(&n) => ImageStatus::Broken,
            _ => ImageStatus::Degraded,
        })
    }

    /// Refuse fix ids the last check did not list (before recording an operation).
    pub async fn check_fix_ids(&self, ids: &[String]) -> Result<(), ServiceError> {
        let listed = self
            .last_check()
            .await?
            .map(|c| c.fixes)
            .unwrap_or_default();
        let unknown: Vec<String> = ids
            .iter()
            .filter(|id| !listed.iter().any(|f| &f.id == *id))
            .map(|id| format!("fix {id:?} is not in the last check's list; run the check again"))
            .collect();
        match (ids.is_empty(), unknown.is_empty()) {
            (true, _) => Err(ServiceError::Invalid(vec![
                "fixes: name at least one".into()
            ])),
            (false, true) => Ok(()),
            (false, false) => Err(ServiceError::Invalid(unknown)),
        }
    }

    /// Apply fixes of the last check, mends and optimize first so the gc that follows
    /// reclaims what they release; one stage per fix. Returns each fix's outcome.
    pub async fn fix(&self, ids: &[String], op: &OpHandle) -> Result<Value, ServiceError> {
        self.check_fix_ids(ids).await?;
        let rank = |id: &str| match id.split(':').next() {
            Some("mend") => 0,
            Some("optimize") => 1,
            _ if id == "clean:catalog" => 2,
            _ => 3,
        };
        let mut order: Vec<&String> = ids.iter().collect();
        order.sort_by_key(|id| (rank(id), *id));
        order.dedup();
        let mut done = serde_json::Map::new();
        for (i, id) in order.into_iter().enumerate() {
            op.enter(u32::try_from(i + 1).unwrap_or(u32::MAX), id);
            let outcome = if let Some(snap) = id.strip_prefix("mend:") {
                let (v, s) = snap.split_once('/').unwrap_or((snap, ""));
                self.mend(v, s, op).await?
            } else if id == "optimize:refcounts" {
                json!(self.repo.repair().await?)
            } else if id == "clean:catalog" {
                json!(catalog::compact(self.store(), self.cfg.catalog_grace, false).await?)
            } else {
                json!(self.repo.gc().await?)
            };
            done.insert(id.clone(), outcome);
        }
        Ok(Value::Object(done))
    }
}

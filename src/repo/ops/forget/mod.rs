//! `forget`: apply a retention policy ([`policy`]) to each volume's live snapshots and
//! delete the rest through the normal delete path (one refs segment + tombstone each), so
//! it is as safe alongside running backups as `delete` is. The freed space is reclaimed by
//! the next `gc`.

mod policy;

pub use policy::ForgetPolicy;

use super::delete::{AttemptProgress, DeleteOptions};
use crate::repo::walk::{walk_bytes, walk_delete_with};
use crate::repo::{Progress, RepoError, Repository};
use crate::Result;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// What `forget` should do.
#[derive(Clone, Debug, Default)]
pub struct ForgetOptions {
    /// One volume; `None` = every volume (the policy applies per volume).
    pub volume: Option<String>,
    /// Retention rules: which snapshots to keep per volume; the rest are deleted.
    pub policy: ForgetPolicy,
    /// Decide and report only; delete nothing.
    pub dry_run: bool,
}

/// One snapshot's fate.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ForgetEntry {
    /// Volume of the snapshot.
    pub volume: String,
    /// Snapshot id.
    pub id: String,
    /// When the snapshot was taken (RFC 3339, UTC).
    pub created: String,
    /// Rules that keep it (`last`, `daily`, `weekly`, `monthly`); empty when removed.
    pub reasons: Vec<String>,
    /// For a removed snapshot: plain bytes its delete freed (in a dry run: would free,
    /// counting the snapshots removed before it).
    pub freed_bytes: u64,
}

/// Result of `forget`. Field names are a stable JSON interface.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ForgetReport {
    /// A dry run: nothing was deleted; `removed` lists what forget would delete.
    pub dry_run: bool,
    /// Newest first per volume.
    pub kept: Vec<ForgetEntry>,
    /// Oldest first per volume (the order they are deleted in).
    pub removed: Vec<ForgetEntry>,
    /// Plain bytes of chunks freed (exclusive to the removed snapshots); gc reclaims them.
    pub bytes_freed: u64,
    /// Store requests of every kind this run made.
    pub requests: u64,
    /// Bytes uploaded to the store (refs segments, tombstones, leases); 0 in a dry run.
    pub bytes_uploaded: u64,
}

impl Repository {
    /// Apply `opts.policy` (see module docs).
    pub async fn forget(&self, opts: &ForgetOptions) -> Result<ForgetReport> {
        self.forget_with_progress(opts, None).await
    }

    /// `forget` reporting one stage, `forget`, in logical bytes of the snapshots it removes
    /// (each delete walk's volume bytes, as `delete` reports them; also in a dry run).
    pub async fn forget_with_progress(
        &self,
        opts: &ForgetOptions,
        progress: Option<&dyn Progress>,
    ) -> Result<ForgetReport> {
        if opts.policy.keeps_nothing() {
            return Err(RepoError::InvalidArgument(
                "forget needs at least one --keep-* rule keeping one or more snapshots".into(),
            )
            .into());
        }
        if let Some(v) = &opts.volume {
            crate::repo::repository::check_volume(v)?;
        }
        let before = self.counts();
        let set = self.load_segments().await?;
        let mut by_volume: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for m in self.live_roots(&set.markers, opts.volume.as_deref()) {
            by_volume.entry(m.volume.clone()).or_default().push(m);
        }
        let mut report = ForgetReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let mut local = HashMap::new();
        let mut removals = Vec::new();
        for (volume, snaps) in by_volume {
            let mut dated = Vec::new();
            let mut undated = Vec::new();
            for m in snaps {
                match OffsetDateTime::parse(&m.created, &Rfc3339) {
                    Ok(t) => dated.push((m, t)),
                    // Never delete what the policy cannot place in time.
                    Err(_) => undated.push(m),
                }
            }
            let pairs: Vec<(String, OffsetDateTime)> =
                dated.iter().map(|(m, t)| (m.id.clone(), *t)).collect();
            let reasons = policy::decide(&opts.policy, &pairs);
            let mut kept = Vec::new();
            let mut removed = Vec::new();
            for ((m, t), r) in dated.into_iter().zip(reasons) {
                if r.is_empty() {
                    removed.push((m, t));
                } else {
                    kept.push((t, entry(&volume, &m.id, &m.created, r)));
                }
            }
            kept.sort_by(|a, b| (b.0, &b.1.id).cmp(&(a.0, &a.1.id)));
            report.kept.extend(kept.into_iter().map(|k| k.1));
            for m in undated {
                let why = vec!["created time unreadable".to_string()];
                report.kept.push(entry(&volume, &m.id, &m.created, why));
            }
            removed.sort_by(|a, b| (a.1, &a.0.id).cmp(&(b.1, &b.0.id)));
            removals.extend(removed.into_iter().map(|(m, _)| m));
        }
        if let Some(p) = progress {
            p.stage("forget", removals.iter().map(|m| walk_bytes(m)).sum());
        }
        for m in removals {
            let freed = if opts.dry_run {
                walk_delete_with(self, &set, &m, None, &mut local, progress)
                    .await?
                    .freed_bytes
            } else {
                // A delete that loses its tombstone to a concurrent one has advanced part
                // of its walk: only the rest of this snapshot's bytes is added.
                let tracked = AttemptProgress::new(progress);
                let delete = DeleteOptions {
                    progress: Some(&tracked),
                    in_callers_stage: true,
                    ..Default::default()
                };
                match self.delete_snapshot_with(&m.volume, &m.id, delete).await {
                    Ok(d) => d.freed_bytes,
                    // Deleted concurrently by someone else: already gone.
                    Err(crate::Error::Repo(RepoError::SnapshotNotFound { .. })) => {
                        tracked.top_up(walk_bytes(&m));
                        0
                    }
                    Err(e) => return Err(e),
                }
            };
            report.bytes_freed += freed;
            let mut e = entry(&m.volume, &m.id, &m.created, Vec::new());
            e.freed_bytes = freed;
            report.removed.push(e);
        }
        let used = self.counts().since(&before);
        report.requests = used.total();
        report.bytes_uploaded = used.bytes_uploaded;
        Ok(report)
    }
}

fn entry(volume: &str, id: &str, created: &str, reasons: Vec<String>) -> ForgetEntry {
    ForgetEntry {
        volume: volume.into(),
        id: id.into(),
        created: created.into(),
        reasons,
        freed_bytes: 0,
    }
}

//! A volume's head: the snapshot its content currently is, which an attach materialises,
//! a copy takes by default, the next upload of its read-write image uses as parent, and
//! the image status judges.
//!
//! Snapshot ids start with the UTC time of the host that took them, so "the newest id"
//! is only the newest snapshot while every host's clock agrees: a host whose clock runs
//! ahead writes ids that sort after everything a correct host writes later, and an
//! attach would then restore stale content. So the service never orders a volume's
//! history by id. Each detach, snapshot and revert records the snapshot it committed as
//! the volume's `head` in the same catalog change, and the head is resolved as:
//!
//! 1. the recorded head, while it is live;
//! 2. a recorded head that was deleted since (a snapshot delete, a `mend` that could not
//!    heal it): its nearest live ancestor, following the manifests' `parent` links
//!    (each upload names the head it started from as parent, so the links are the
//!    volume's real history);
//! 3. no recorded head (a record written before the field existed, or created in a
//!    target repository by a copy), or no readable ancestor: the tip of the parent chain,
//!    i.e. the live snapshot no other live snapshot names as parent; only if several
//!    are tips (a fork) does the newest id among them decide, with a warning.

use super::{Service, ServiceError, Volume};
use crate::repo::{RepoError, SnapshotManifest};
use std::collections::HashSet;

/// Most parent links followed from a deleted head before falling back to the chain tip.
const MAX_ANCESTORS: usize = 10_000;

/// A root that is gone (collected) or cannot be decoded.
fn unreadable(e: &crate::Error) -> bool {
    matches!(
        e,
        crate::Error::Repo(RepoError::SnapshotNotFound { .. } | RepoError::Corrupt { .. })
    )
}

impl Service {
    /// The head snapshot of `v` (see module docs); `None` when it has no live snapshot.
    ///
    /// ```no_run
    /// # async fn demo(svc: &island::service::Service) -> Result<(), island::service::ServiceError> {
    /// let v = svc.get_volume("alice", "eb198dec-3560-4a9a-b3b4-5f043410a3dd").await?;
    /// if let Some(head) = svc.head(&v).await? {
    ///     println!("an attach restores {}", head.id);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn head(&self, v: &Volume) -> Result<Option<SnapshotManifest>, ServiceError> {
        let markers = self.repo.load_markers().await?;
        let live = self.repo.live_roots(&markers, Some(&v.uuid));
        if live.is_empty() {
            return Ok(None);
        }
        let mut next = v.head.clone();
        let mut steps = 0;
        while let Some(id) = next.take() {
            if let Some(m) = live.iter().find(|m| m.id == id) {
                return Ok(Some((**m).clone()));
            }
            steps += 1;
            if steps > MAX_ANCESTORS {
                break;
            }
            // A deleted snapshot's root stays readable until gc collects it; one that is
            // gone or unreadable leaves the chain tip to decide.
            match self.repo.read_root(&v.uuid, &id).await {
                Ok(m) => next = m.parent,
                Err(e) if unreadable(&e) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let parents: HashSet<&str> = live.iter().filter_map(|m| m.parent.as_deref()).collect();
        let tips: Vec<_> = live
            .iter()
            .filter(|m| !parents.contains(m.id.as_str()))
            .collect();
        if tips.len() > 1 {
            tracing::warn!(
                "volume {}: no recorded head and {} snapshots end the parent chain; taking the newest id",
                v.uuid,
                tips.len()
            );
        }
        // `live` is sorted by id; a chain without a tip (a cycle) cannot be written by the
        // engine, but the newest id is still an answer.
        let pick = tips.last().copied().or(live.last());
        Ok(pick.map(|m| (**m).clone()))
    }
}

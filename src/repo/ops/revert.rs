//! `revert`: make an older snapshot of a volume its newest again, without copying data.
//!
//! A revert commits a new root whose tree is the older snapshot's: the same top-level
//! table ids, each counted once more (+1 in a refs segment, exactly as a backup that
//! reused them would). Its parent is the volume's newest snapshot before the revert, so
//! the history stays linear and every earlier snapshot stays restorable; whatever restores
//! "the latest" (an attach, a copy) then gets the reverted content. Cost: one root, one
//! refs segment, one lease — independent of the volume's size.
//!
//! The root has no base identity: no local image matches it, so the next backup of an
//! image restored from it reads the image's allocated data rather than trusting a
//! changed-block list.

use crate::repo::format::ids::{new_time_id, now_rfc3339};
use crate::repo::format::manifest::{SnapshotManifest, SnapshotStats};
use crate::repo::protocol::commit::commit_new_root;
use crate::repo::protocol::lease::Lease;
use crate::repo::repository::check_names;
use crate::repo::tree::reusable;
use crate::repo::writer::Writer;
use crate::repo::{RepoError, Repository};
use crate::Result;

impl Repository {
    /// Commit a new snapshot of `volume` whose content is snapshot `to` (see module docs).
    /// `to` must be live and its tables still counted; returns the new root.
    pub async fn revert(&self, volume: &str, to: &str) -> Result<SnapshotManifest> {
        check_names(volume, to)?;
        // Refuse an unknown target before taking a lease (checked again in the view).
        self.snapshot(volume, to).await?;
        let before = self.counts();
        let id = new_time_id();
        // Lease before the view: gc cannot collect what this root is about to count again.
        let lease = Lease::acquire(self.store().clone(), &id, "revert", Some(volume)).await?;
        let set = self.load_segments().await?;
        let live = self.live_roots(&set.markers, Some(volume));
        let Some(target) = live.iter().find(|m| m.id == to) else {
            return Err(RepoError::SnapshotNotFound {
                volume: volume.into(),
                id: to.into(),
            }
            .into());
        };
        let parent = live.last().map(|m| m.id.clone());
        let root_key = crate::repo::format::manifest::root_key(volume, &id);
        let mut w = Writer::new(self, lease.clone(), root_key, "revert");
        for t in target.top_ids()?.iter().filter(|t| !t.is_zero()) {
            if !reusable(self, &set, &w, t).await? {
                return Err(RepoError::corrupt(
                    &target.key(),
                    format!("top table {} is no longer counted; run check", t.to_hex()),
                )
                .into());
            }
            w.add_ref(*t, 1, 0);
        }
        let mut manifest = SnapshotManifest {
            id: id.clone(),
            parent,
            created: now_rfc3339(),
            stats: SnapshotStats {
                logical_bytes: target.stats.logical_bytes,
                new_bytes: 0,
                uploaded_bytes: 0,
            },
            base: None,
            user_data: serde_json::json!({ "reverted_to": to }),
            writer: id,
            lease_time_ms: 0,
            ..(**target).clone()
        };
        commit_new_root(self, w, &lease, &mut manifest, &before).await?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use crate::backup::{backup, BackupOptions, BaseIdentity, BlockSource};
    use crate::repo::tests::testing::MemStore;
    use crate::repo::{InitOptions, Repository};
    use crate::restore::{restore, RestoreTarget};
    use std::sync::Arc;

    struct Bytes(Vec<u8>);

    impl BlockSource for Bytes {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let at = usize::try_from(offset).unwrap();
            buf.copy_from_slice(&self.0[at..at + buf.len()]);
            Ok(())
        }
        fn identity(&self) -> Option<BaseIdentity> {
            None
        }
    }

    async fn back_up(repo: &Repository, data: &[u8]) -> String {
        let opts = BackupOptions {
            volume: "v".into(),
            ..Default::default()
        };
        let src = Arc::new(Bytes(data.to_vec()));
        backup(repo, src, &opts).await.unwrap().id
    }

    async fn restored(repo: &Repository, id: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.raw");
        let target = RestoreTarget::Raw(out.clone());
        restore(repo, "v", id, &target, None).await.unwrap();
        std::fs::read(&out).unwrap()
    }

    #[tokio::test]
    async fn old_tree_becomes_newest_and_counts_stay_exact() {
        let store = Arc::new(MemStore::default());
        let opts = InitOptions { chunk_size: 4096 };
        let repo = Repository::init(store, &opts).await.unwrap();
        let a: Vec<u8> = (0..256u32 << 10).map(|i| (i % 251) as u8).collect();
        let mut b = a.clone();
        b[..8192].fill(7);
        let s1 = back_up(&repo, &a).await;
        let s2 = back_up(&repo, &b).await;
        let r = repo.revert("v", &s1).await.unwrap();
        assert_eq!(r.parent.as_deref(), Some(s2.as_str()));
        assert_eq!(repo.latest("v").await.unwrap().unwrap().id, r.id);
        assert!(restored(&repo, &r.id).await == a, "revert restores s1");
        // The original goes; the revert keeps its tree alive through gc.
        repo.delete_snapshot("v", &s1).await.unwrap();
        repo.gc().await.unwrap();
        assert!(restored(&repo, &r.id).await == a, "after gc");
        assert!(restored(&repo, &s2).await == b);
        let check = repo.check(&Default::default()).await.unwrap();
        assert!(check.is_clean(), "{check:?}");
        assert!(repo.revert("v", &s1).await.is_err(), "deleted target");
    }
}

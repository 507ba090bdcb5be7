//! `heal`: repair a damaged snapshot from a peer repository that holds a copy of it.
//!
//! A copy keeps snapshot ids and, at the same chunk size, blob ids (a blob id is the
//! BLAKE3 of its plain bytes), so the peer's copy of snapshot `volume/id` is the same tree
//! of the same blobs. Healing walks this repository's tree of the snapshot and reads every
//! table and chunk it references (verified: crc and BLAKE3 = id); each blob that is
//! missing from the index, whose pack is missing or too short, or whose frame is corrupt is
//! fetched from the peer (verified the same way) and stored again in a new pack of this
//! repository. Reference counts do not change (the snapshot and its blobs are the same);
//! only locations are added: the new index segment is the newest, so lookups find the new
//! frame first, and the damaged frame is shadowed (gc's compaction drops a pack once every
//! frame in it is shadowed).
//!
//! Commit: the new packs and index segment count under a `gc/<seq>` marker
//! (create-if-absent, the same commit kind `check --repair` uses; its refs segment is
//! empty and it frees nothing), so a heal and a gc exclude each other. Then the snapshot is
//! walked again against the committed view and must read back without damage.
//!
//! Cost: the whole snapshot is read once (its chunks in coalesced ranged GETs, as a
//! restore does) plus a second read to verify; only damaged blobs are fetched from the
//! peer and uploaded.

use super::fetch;
use crate::repo::error::is_damage;
use crate::repo::format::ids::new_time_id;
use crate::repo::format::manifest::root_key;
use crate::repo::format::table::{self, Geometry};
use crate::repo::protocol::commit::{commit_gc_marker, next_gc_marker};
use crate::repo::protocol::lease::Lease;
use crate::repo::repository::{check_names, SegmentSet};
use crate::repo::walk::{walk_tree, TreeVisitor};
use crate::repo::writer::Writer;
use crate::repo::{BlobId, Location, Progress, RepoError, Repository};
use crate::Result;
use futures::StreamExt;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;

/// Frame bytes of chunks read in one batch (bounds memory at any chunk size).
const BATCH_BYTES: u64 = 32 << 20;
/// Single-blob reads in flight when a batch holds damage.
const PARALLEL_READS: usize = 8;
/// Problems quoted in the report (the counts are complete).
const PROBLEMS_KEPT: usize = 16;

/// What a heal did. Field names are a stable JSON interface.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct HealReport {
    /// Volume of the healed snapshot.
    pub volume: String,
    /// Id of the healed snapshot.
    pub id: String,
    /// Distinct tables and chunks of the snapshot read and verified.
    pub tables_checked: u64,
    /// Distinct chunks of the snapshot read and verified (crc and BLAKE3).
    pub chunks_checked: u64,
    /// Blobs found damaged, fetched from the peer and stored again.
    pub tables_healed: u64,
    /// Chunks found damaged, fetched from the peer and stored again.
    pub chunks_healed: u64,
    /// The first problems found (object and error).
    pub problems: Vec<String>,
    /// Commit marker of the new locations (`gc/<seq>`); `None` when nothing was damaged.
    pub commit: Option<String>,
    /// Bytes downloaded from the peer, and uploaded to this repository.
    pub bytes_from_peer: u64,
    /// Bytes uploaded to this repository (new packs, index segment, marker, lease).
    pub bytes_uploaded: u64,
    /// Store requests of every kind, against both this repository and the peer.
    pub requests: u64,
}

/// The peer's side of a heal.
struct Peer<'a> {
    repo: &'a Repository,
    set: SegmentSet,
}

impl Peer<'_> {
    /// Fetch (verified) the peer's frames of `ids`.
    async fn fetch(&self, ids: &[BlobId]) -> Result<Vec<fetch::Fetched>> {
        let mut wanted = Vec::with_capacity(ids.len());
        for id in ids {
            let loc =
                self.repo
                    .locate(&self.set, id)
                    .await?
                    .ok_or_else(|| RepoError::MissingBlob {
                        id: id.to_hex(),
                        context: "the peer's copy of the snapshot lacks it too".into(),
                    })?;
            wanted.push((*id, loc));
        }
        fetch::fetch(self.repo, &self.set, wanted).await
    }
}

/// One walk of a snapshot's tree: verify only, or heal (with a peer and a writer).
struct Walk<'a> {
    repo: &'a Repository,
    set: &'a SegmentSet,
    heal: Option<(&'a Peer<'a>, &'a mut Writer, &'a Lease)>,
    tables: HashSet<BlobId>,
    chunks: HashSet<BlobId>,
    pending: Vec<(BlobId, Option<Location>)>,
    pending_bytes: u64,
    report: HealReport,
    /// Damaged blobs found (healed ones included).
    damaged: u64,
    /// Counted in volume bytes: every chunk position, zero or shared ones included.
    progress: Option<Arc<dyn Progress>>,
    chunk_bytes: u64,
}

impl Walk<'_> {
    fn problem(&mut self, what: String) {
        self.damaged += 1;
        if self.report.problems.len() < PROBLEMS_KEPT {
            self.report.problems.push(what);
        }
    }

    async fn run(&mut self, m: &crate::repo::SnapshotManifest, stage: &str) -> Result<()> {
        self.chunk_bytes = u64::from(m.chunk_size);
        if let Some(p) = &self.progress {
            let chunks = Geometry::new(m.size, m.chunk_size).chunks;
            p.stage(stage, chunks.saturating_mul(self.chunk_bytes));
        }
        walk_tree(m, self).await?;
        self.chunk_batch().await
    }

    /// A table's entries; a damaged table is healed from the peer, or (verify only)
    /// counted and its subtree skipped (`None`).
    async fn read_table(
        &mut self,
        id: &BlobId,
        level: u8,
        count: usize,
    ) -> Result<Option<Vec<BlobId>>> {
        self.report.tables_checked += 1;
        match self.repo.read_table(self.set, id, level, count).await {
            Ok(entries) => return Ok(Some(entries)),
            Err(e) if is_damage(&e) => self.problem(format!("table {id}: {e}")),
            Err(e) => return Err(e),
        }
        let Some((peer, w, _)) = self.heal.as_mut() else {
            return Ok(None);
        };
        let mut got = peer.fetch(&[*id]).await?;
        let f = got.pop().ok_or_else(|| RepoError::MissingBlob {
            id: id.to_hex(),
            context: "the peer returned no frame".into(),
        })?;
        let entries = table::decode(&format!("peer table {id}"), &f.plain, level, count)?;
        w.add(&f.frame).await?;
        self.report.tables_healed += 1;
        Ok(Some(entries))
    }

    /// Verify the pending chunks: one coalesced read of the batch, and only when it
    /// fails, one read per chunk to find the damaged ones; heal those from the peer.
    async fn chunk_batch(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.report.chunks_checked += pending.len() as u64;
        let mut bad: Vec<(BlobId, String)> = Vec::new();
        let mut located = Vec::with_capacity(pending.len());
        for (id, loc) in pending {
            match loc {
                Some(loc) => located.push((id, loc)),
                None => bad.push((id, "not in the index".into())),
            }
        }
        match fetch::fetch(self.repo, self.set, located.clone()).await {
            Ok(_) => {}
            Err(e) if is_damage(&e) => {
                let repo = self.repo;
                let results: Vec<(BlobId, Result<Vec<u8>>)> = futures::stream::iter(located)
                    .map(|(id, loc)| async move { (id, repo.read_blob(&loc, &id).await) })
                    .buffer_unordered(PARALLEL_READS)
                    .collect()
                    .await;
                for (id, r) in results {
                    match r {
                        Ok(_) => {}
                        Err(e) if is_damage(&e) => bad.push((id, e.to_string())),
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
        for (id, why) in &bad {
            self.problem(format!("chunk {id}: {why}"));
        }
        if let (Some((peer, w, lease)), false) = (self.heal.as_mut(), bad.is_empty()) {
            let ids: Vec<BlobId> = bad.iter().map(|(id, _)| *id).collect();
            for f in peer.fetch(&ids).await? {
                w.add(&f.frame).await?;
                self.report.chunks_healed += 1;
            }
            lease.keep_alive().await?;
        }
        Ok(())
    }
}

impl TreeVisitor for Walk<'_> {
    fn advance(&mut self, chunks: u64) {
        if let Some(p) = &self.progress {
            p.advance(chunks.saturating_mul(self.chunk_bytes));
        }
    }

    fn first(&mut self, id: &BlobId) -> bool {
        self.tables.insert(*id)
    }

    async fn table(&mut self, id: &BlobId, level: u8, count: usize) -> Result<Option<Vec<BlobId>>> {
        self.read_table(id, level, count).await
    }

    async fn entry(&mut self, _parent: &BlobId, level: u8, c: BlobId) -> Result<()> {
        if level == 0 && self.chunks.insert(c) {
            let loc = self.repo.locate(self.set, &c).await?;
            self.pending_bytes += loc.as_ref().map_or(0, |l| l.frame_len as u64);
            self.pending.push((c, loc));
            if self.pending_bytes >= BATCH_BYTES {
                self.chunk_batch().await?;
            }
        }
        Ok(())
    }
}

/// Heal snapshot `volume/id` of `repo` from `peer`'s copy of it (see module docs). Fails
/// when the peer does not hold the snapshot, holds a different tree (a copy re-chunked
/// to another chunk size), lacks a damaged blob too, or when the snapshot still does not
/// read back intact afterwards. `progress` gets stages `heal` and `verify`, each in
/// bytes of the volume.
///
/// ```no_run
/// # async fn demo() -> island::Result<()> {
/// use island::repo::{heal, Repository};
/// let here = Repository::open(island::store::open_store("/srv/repo", &Default::default()).await?).await?;
/// let peer = Repository::open(island::store::open_store("/srv/dr", &Default::default()).await?).await?;
/// let r = heal(&here, &peer, "vm1", "20260101T000000.000000Z-0123456789abcdef", None).await?;
/// println!("{} chunks and {} tables re-copied", r.chunks_healed, r.tables_healed);
/// # Ok(()) }
/// ```
pub async fn heal(
    repo: &Repository,
    peer: &Repository,
    volume: &str,
    id: &str,
    progress: Option<Arc<dyn Progress>>,
) -> Result<HealReport> {
    check_names(volume, id)?;
    let (before, peer_before) = (repo.counts(), peer.counts());
    let m = repo.snapshot(volume, id).await?;
    let pm = peer.snapshot(volume, id).await?;
    if (pm.size, pm.chunk_size, &pm.top) != (m.size, m.chunk_size, &m.top) {
        return Err(RepoError::InvalidArgument(format!(
            "the peer's snapshot {volume}/{id} is a different tree (size, chunk size or top tables differ): it cannot supply blobs by id"
        ))
        .into());
    }
    // The lease comes before the view, as for every writer.
    let holder = new_time_id();
    let lease = Lease::acquire(repo.store().clone(), &holder, "heal", Some(volume)).await?;
    let set = repo.load_segments().await?;
    let peer_side = Peer {
        repo: peer,
        set: peer.load_segments().await?,
    };
    let (seq, marker_key) = next_gc_marker(&set);
    let mut w = Writer::new(repo, lease.clone(), marker_key.clone(), "heal");
    let mut walk = Walk {
        repo,
        set: &set,
        heal: Some((&peer_side, &mut w, &lease)),
        tables: HashSet::new(),
        chunks: HashSet::new(),
        pending: Vec::new(),
        pending_bytes: 0,
        report: HealReport {
            volume: volume.into(),
            id: id.into(),
            ..Default::default()
        },
        damaged: 0,
        progress: progress.clone(),
        chunk_bytes: 0,
    };
    walk.run(&m, "heal").await?;
    let mut report = walk.report;
    if report.tables_healed + report.chunks_healed > 0 {
        commit_gc_marker(repo, &mut w, &lease, seq, &marker_key, false).await?;
        report.commit = Some(marker_key);
    }
    w.finish().await;
    // Verify against the committed view: every blob must now read back intact.
    let set = repo.load_segments().await?;
    let mut verify = Walk {
        repo,
        set: &set,
        heal: None,
        tables: HashSet::new(),
        chunks: HashSet::new(),
        pending: Vec::new(),
        pending_bytes: 0,
        report: HealReport::default(),
        damaged: 0,
        progress,
        chunk_bytes: 0,
    };
    verify.run(&m, "verify").await?;
    if verify.damaged > 0 {
        return Err(RepoError::Corrupt {
            key: root_key(volume, id),
            reason: format!(
                "still damaged after healing from the peer ({} blobs): {}",
                verify.damaged,
                verify.report.problems.join("; ")
            ),
        }
        .into());
    }
    let used = repo.counts().since(&before);
    report.bytes_uploaded = used.bytes_uploaded;
    report.bytes_from_peer = peer.counts().since(&peer_before).bytes_downloaded;
    report.requests = used.total() + peer.counts().since(&peer_before).total();
    Ok(report)
}

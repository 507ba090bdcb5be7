//! The one door through which a pipeline writes a new snapshot (backup, copy).
//!
//! It owns the pack and segment writer, the copy-on-write tree editor, the counters a
//! checkpoint carries, the checkpoint and resume protocol (format-spec §12) and the commit
//! (format-spec §5), so a pipeline hands it chunks and never sees those pieces. The write
//! order is theirs, unchanged: packs → the writer's own segments → checkpoint (each one only
//! after a flush made everything it names durable) → lease check → root manifest
//! (create-if-absent). A crash before the root leaves only uncommitted objects that a
//! re-run adopts or gc reclaims.

use super::format::ids::now_rfc3339;
use super::format::manifest::{root_key, MANIFEST_VERSION};
use super::format::table::Geometry;
pub(crate) use super::protocol::checkpoint::Counters;
use super::protocol::checkpoint::{self, Checkpoint, JobIdentity};
use super::protocol::commit::{commit_new_root, commit_root, Committed};
use super::protocol::lease::Lease;
use super::repository::SegmentSet;
use super::tree::{reusable, TreeWriter};
use super::writer::Writer;
use super::{BaseIdentity, BlobId, Frame, RepoError, Repository, SnapshotManifest, SnapshotStats};
use crate::store::RequestCounts;
use crate::Result;
use std::time::{Duration, Instant};

/// What a backup is, for matching a killed run's checkpoint and for its root.
pub(crate) struct BackupJob<'p> {
    /// Volume the snapshot belongs to.
    pub volume: &'p str,
    /// Snapshot id, also the writer's holder name.
    pub id: &'p str,
    /// Volume size in bytes.
    pub size: u64,
    /// Snapshot the job was planned against (its id is part of the job's identity).
    pub parent: Option<&'p SnapshotManifest>,
    /// Top-level ids of the parent's tree when it has this job's shape; the new tree is
    /// edited copy-on-write from it.
    pub parent_top: Option<Vec<BlobId>>,
    /// The source's resume token: without one a re-run takes over chunks, never the position.
    pub resume_token: Option<String>,
    /// Minimum time between two checkpoints after the first.
    pub checkpoint_interval: Duration,
}

/// A killed run whose checkpoint this writer adopted.
pub(crate) struct Resumed {
    /// Holder (snapshot id) of the killed run.
    pub from: String,
    /// Blobs taken over without upload.
    pub blobs: u64,
    /// Packs the killed run sealed after its checkpoint, taken over from their footers.
    pub tail_packs: u64,
    /// First chunk still to do: the killed run's position when it was the same job, else 0.
    pub next_chunk: u64,
}

/// What the pipeline knows of the snapshot it commits; the writer adds the tree, the
/// geometry and the protocol's fields.
pub(crate) struct NewSnapshot {
    /// Parent snapshot id recorded in the root.
    pub parent: Option<String>,
    /// Bytes of the volume that are not zero.
    pub logical_bytes: u64,
    /// Identity of the source's base, for a later incremental backup.
    pub base: Option<BaseIdentity>,
    /// Caller's label, stored verbatim.
    pub user_data: serde_json::Value,
}

/// When a writer checkpoints: only after a new data pack, and then at most once per
/// interval, except the first data pack, which always checkpoints so a killed run is
/// adoptable; packs sealed after the last checkpoint are adopted from their footers
/// (format-spec §12.2), so a long interval does not mean re-uploading everything.
struct Cadence {
    interval: Duration,
    last: Instant,
    packs_at_last: u64,
}

impl Cadence {
    fn due(&self, w: &Writer) -> bool {
        w.data_packs_sealed > self.packs_at_last
            && (self.packs_at_last == 0 || self.last.elapsed() >= self.interval)
    }

    fn done(&mut self, w: &Writer) {
        self.last = Instant::now();
        self.packs_at_last = w.data_packs_sealed;
    }
}

/// Writes one snapshot: see the module doc.
pub(crate) struct SnapshotWriter<'a> {
    repo: &'a Repository,
    set: &'a SegmentSet,
    lease: Lease,
    w: Writer,
    tree: TreeWriter,
    geo: Geometry,
    size: u64,
    counters: Counters,
    volume: String,
    /// `None` for a copy: its checkpoints carry chunks only, no resumable position (§12.4).
    job: Option<JobIdentity>,
    cadence: Cadence,
    top: Vec<BlobId>,
}

impl<'a> SnapshotWriter<'a> {
    fn new(
        repo: &'a Repository,
        set: &'a SegmentSet,
        lease: &Lease,
        w: Writer,
        size: u64,
        volume: &str,
        interval: Duration,
    ) -> SnapshotWriter<'a> {
        let geo = Geometry::new(size, repo.chunk_size());
        SnapshotWriter {
            repo,
            set,
            lease: lease.clone(),
            w,
            tree: TreeWriter::new(geo, None),
            geo,
            size,
            counters: Counters::default(),
            volume: volume.to_string(),
            job: None,
            cadence: Cadence {
                interval,
                last: Instant::now(),
                packs_at_last: 0,
            },
            top: Vec::new(),
        }
    }

    /// A backup's writer under `lease`, seen against `set`. It first adopts the newest
    /// checkpoint of a killed run of the volume, preferring one of the same job, whose
    /// tree, position and counters it then continues.
    pub(crate) async fn backup(
        repo: &'a Repository,
        set: &'a SegmentSet,
        lease: &Lease,
        job: BackupJob<'_>,
    ) -> Result<(SnapshotWriter<'a>, Option<Resumed>)> {
        let w = Writer::new(repo, lease.clone(), root_key(job.volume, job.id), "backup");
        let mut sw = SnapshotWriter::new(
            repo,
            set,
            lease,
            w,
            job.size,
            job.volume,
            job.checkpoint_interval,
        );
        let identity = JobIdentity {
            size: job.size,
            chunk_size: repo.chunk_size(),
            parent: job.parent.map(|p| p.id.clone()),
            source: job.resume_token,
        };
        let resumed = sw.resume(&identity).await?;
        let position = resumed.as_ref().and_then(|r| r.1.as_ref());
        match position {
            Some(ck) => {
                sw.tree = TreeWriter::resume(sw.geo, &ck.tree)?;
                sw.counters = ck.counters.clone();
            }
            None => sw.tree = TreeWriter::new(sw.geo, job.parent_top),
        }
        sw.w.new_chunk_bytes = sw.counters.new_chunk_bytes;
        sw.job = Some(identity);
        // The interval runs from the end of the resume, as it always has.
        sw.cadence.last = Instant::now();
        Ok((sw, resumed.map(|r| r.0)))
    }

    /// Adopt the newest checkpoint of a killed run of the volume, preferring one of the
    /// same job; the checkpoint comes back too when its position may be continued.
    async fn resume(&mut self, job: &JobIdentity) -> Result<Option<(Resumed, Option<Checkpoint>)>> {
        let (repo, w) = (self.repo, &mut self.w);
        let mut found = checkpoint::find(repo, &self.volume, w.holder()).await?;
        // Same job first (stable: newest first within each group).
        found.sort_by_key(|c| !c.job.resumable_by(job));
        let now = w.lease.store_time()?;
        for ck in found {
            let Some(claim) = checkpoint::claim(repo, &ck, w.holder(), now).await? else {
                continue;
            };
            let whole = ck.job.resumable_by(job);
            let tail_packs = claim.tail_packs();
            let blobs = checkpoint::take_over(repo, w, &ck, claim, whole).await?;
            tracing::info!(
                "resuming {} (blobs taken over: {blobs}, packs after its checkpoint: \
                 {tail_packs}, position kept: {whole})",
                ck.holder
            );
            let resumed = Resumed {
                from: ck.holder.clone(),
                blobs,
                tail_packs,
                next_chunk: if whole { ck.next_chunk } else { 0 },
            };
            return Ok(Some((resumed, whole.then_some(ck))));
        }
        Ok(None)
    }

    /// A copy's writer of the root `root_key` of `volume`, for a volume of `size` bytes in
    /// the target's chunk size. It takes over the chunks of a killed copy's checkpoint
    /// (never a position: a copy restarts its snapshot), returning that holder and the
    /// number of chunks offered.
    pub(crate) async fn copy(
        to: &'a Repository,
        set: &'a SegmentSet,
        lease: &Lease,
        root_key: String,
        volume: &str,
        size: u64,
        checkpoint_interval: Duration,
    ) -> Result<(SnapshotWriter<'a>, Option<(String, u64)>)> {
        let w = Writer::new(to, lease.clone(), root_key, "copy");
        let mut sw = SnapshotWriter::new(to, set, lease, w, size, volume, checkpoint_interval);
        let adopted = checkpoint::adopt_chunks(to, &mut sw.w, volume).await?;
        sw.cadence.last = Instant::now();
        Ok((sw, adopted))
    }

    /// Counters carried across a resume; the pipeline keeps them for its report.
    pub(crate) fn counters(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// Chunk size of the repository written to.
    pub(crate) fn chunk_size(&self) -> u32 {
        self.repo.chunk_size()
    }

    /// Depth of the new tree.
    pub(crate) fn depth(&self) -> u8 {
        self.geo.depth
    }

    /// Tables stored while editing the tree.
    pub(crate) fn tables_new(&self) -> u64 {
        self.tree.tables_new
    }

    /// Bytes of new chunk frames stored so far (adopted ones included).
    pub(crate) fn new_chunk_bytes(&self) -> u64 {
        self.w.new_chunk_bytes
    }

    /// The chunk the new tree holds at `idx` so far (the parent's until set).
    pub(crate) async fn chunk(&mut self, idx: u64) -> Result<BlobId> {
        self.tree.get(self.repo, self.set, &mut self.w, idx).await
    }

    /// Point chunk `idx` of the new tree at `id` (indices never go back across leaves).
    pub(crate) async fn set_chunk(&mut self, idx: u64, id: BlobId) -> Result<()> {
        self.tree
            .set(self.repo, self.set, &mut self.w, idx, id)
            .await
    }

    /// May the snapshot reference `id` without storing it (format-spec §5 reuse rule)?
    pub(crate) async fn reusable(&self, id: &BlobId) -> Result<bool> {
        reusable(self.repo, self.set, &self.w, id).await
    }

    /// Reference a reusable blob: one a killed run left is kept from release.
    pub(crate) fn use_adoptable(&mut self, id: &BlobId) {
        self.w.use_adoptable(id);
    }

    /// Store a frame (it is packed, and the pack uploaded when full).
    pub(crate) async fn add(&mut self, frame: &Frame) -> Result<()> {
        self.w.add(frame).await
    }

    /// Record a reference count change of the snapshot's refs segment.
    pub(crate) fn add_ref(&mut self, id: BlobId, delta: i64, flags: u32) {
        self.w.add_ref(id, delta, flags);
    }

    /// Store chunk `id` unless it is reusable; `frame` makes its frame only when needed.
    /// True when it was stored.
    pub(crate) async fn store_chunk(
        &mut self,
        id: &BlobId,
        frame: impl FnOnce() -> std::result::Result<Frame, RepoError>,
    ) -> Result<bool> {
        if self.reusable(id).await? {
            self.use_adoptable(id);
            return Ok(false);
        }
        self.w.add(&frame()?).await?;
        Ok(true)
    }

    /// Checkpoint when due (see [`Cadence`]): flush, so packs and the writer's segments are
    /// durable, then record that every chunk below `next_chunk` is done (a copy records
    /// its chunks only).
    pub(crate) async fn checkpoint_if_due(&mut self, next_chunk: u64) -> Result<()> {
        if !self.cadence.due(&self.w) {
            return Ok(());
        }
        match &self.job {
            Some(job) => {
                self.counters.new_chunk_bytes = self.w.new_chunk_bytes;
                self.w.flush().await?;
                let ck = Checkpoint {
                    holder: self.w.holder().to_string(),
                    volume: self.volume.clone(),
                    seq: self.w.checkpoint_keys.len() as u64,
                    job: job.clone(),
                    next_chunk,
                    tree: self.tree.state(),
                    segments: self.w.segment_keys(),
                    packs: self.w.packs.clone(),
                    adopted: self.w.adopted.clone(),
                    counters: self.counters.clone(),
                };
                let key = ck.write(self.repo).await?;
                self.w.checkpoint_keys.push(key);
                self.w.lease.watch_adoption();
            }
            None => checkpoint::write_chunks_only(self.repo, &mut self.w, &self.volume).await?,
        }
        self.cadence.done(&self.w);
        Ok(())
    }

    /// Store every dirty table and reference the new tree's top-level tables; returns
    /// the top-level ids.
    pub(crate) async fn finish_tree(&mut self) -> Result<Vec<BlobId>> {
        let top = self.tree.finish(self.repo, self.set, &mut self.w).await?;
        self.add_top_refs(&top);
        self.top = top.clone();
        Ok(top)
    }

    /// Reference a tree's top-level tables from the snapshot's refs segment.
    pub(crate) fn add_top_refs(&mut self, top: &[BlobId]) {
        for t in top.iter().filter(|t| !t.is_zero()) {
            self.w.add_ref(*t, 1, 0);
        }
    }

    /// Commit a backup: its root is `id`'s under the volume, and one that already exists
    /// is an error. Call after [`finish_tree`](Self::finish_tree); `before` is the request
    /// count at the start, for the uploaded bytes the root records.
    pub(crate) async fn commit_backup(
        self,
        id: &str,
        snap: NewSnapshot,
        before: &RequestCounts,
    ) -> Result<SnapshotManifest> {
        let mut manifest = SnapshotManifest {
            format: MANIFEST_VERSION,
            volume: self.volume.clone(),
            id: id.to_string(),
            parent: snap.parent,
            created: now_rfc3339(),
            size: self.size,
            chunk_size: self.repo.chunk_size(),
            depth: self.geo.depth,
            top: self.top.iter().map(BlobId::to_hex).collect(),
            stats: SnapshotStats {
                logical_bytes: snap.logical_bytes,
                new_bytes: self.w.new_chunk_bytes,
                uploaded_bytes: 0,
            },
            base: snap.base,
            user_data: snap.user_data,
            writer: id.to_string(),
            lease_time_ms: 0,
        };
        commit_new_root(self.repo, self.w, &self.lease, &mut manifest, before).await?;
        Ok(manifest)
    }

    /// Commit `root` (its tree and stats filled in by the caller); false when the target
    /// got the same root first, in which case nothing of this writer counts.
    pub(crate) async fn commit_root(
        self,
        root: &mut SnapshotManifest,
        before: &RequestCounts,
    ) -> Result<bool> {
        Ok(commit_root(self.repo, self.w, &self.lease, root, before).await? == Committed::Created)
    }
}

/// Resume tokens of the volume's killed runs' checkpoints: what proves a source snapshot
/// left behind by a killed backup is Island's own.
pub(crate) async fn resume_tokens(repo: &Repository, volume: &str) -> Result<Vec<String>> {
    Ok(checkpoint::find(repo, volume, "")
        .await?
        .into_iter()
        .filter_map(|c| c.job.source)
        .collect())
}

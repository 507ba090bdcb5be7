//! The write side shared by backup, delete and gc: packs blobs, uploads packs with bounded
//! parallelism, and writes index and refcount-delta segments that count only once the
//! writer's commit marker exists.
//!
//! Crash ordering: packs are uploaded and awaited before the index segment naming them;
//! index and refs segments are written before the commit marker (done by the caller).
//! A crash at any point leaves only uncommitted objects, which readers ignore and gc
//! reclaims once the writer's lease has expired (found via `intents/<holder>`).

use super::format::envelope::{self, MAGIC_INTENT};
use super::format::pack::{pack_key, PackWriter};
use super::format::segment::{
    self, SegmentHead, SegmentMeta, INDEX_MAGIC, INDEX_RECORD, REFS_MAGIC, REFS_RECORD,
};
use super::{BlobId, BlobKind, Frame, Lease, Location, RepoError, Repository};
use crate::store::{ObjectStore, StoreErrorKind};
use crate::Result;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::task::JoinSet;

/// Packs are sealed at this size: ≥ 4 MiB keeps full backups under 1 PUT per 4 MiB, 16 MiB
/// keeps the PUT count low without making a pack's dead space expensive to repack.
pub(crate) const PACK_TARGET: usize = 16 << 20;
/// Pack uploads in flight per writer (bounds memory to about PARALLEL × PACK_TARGET).
const PARALLEL: usize = 3;
/// Records buffered before a segment is flushed (bounds writer memory whatever the size).
const SEGMENT_FLUSH: usize = 512 * 1024;

/// What an in-flight writer may leave behind, so gc can reclaim it without a full listing:
/// packs `<holder>-p<seq>` and segments `index|refs/<holder>-<seq>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Intent {
    pub holder: String,
    pub op: String,
    /// Key whose existence means the writer committed.
    pub commit: String,
    /// Holders whose packs this writer took over from a checkpoint (resume, format-spec
    /// §12): if this writer dies uncommitted, gc reclaims their packs with its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adopted: Vec<String>,
    /// Set when a re-run adopted this writer's checkpoint: packs numbered below
    /// `unadopted_from` belong to that adopter now; gc reclaims only the later ones here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted_by: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unadopted_from: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub(crate) fn intent_key(holder: &str) -> String {
    format!("intents/{holder}")
}

pub(crate) fn pack_name(holder: &str, seq: u64) -> String {
    format!("{holder}-p{seq:06}")
}

pub(crate) struct Writer {
    repo: Repository,
    pub lease: Lease,
    commit: String,
    op: String,
    data_pack: PackWriter,
    table_pack: PackWriter,
    pack_seq: u64,
    seg_seq: u64,
    intent_written: bool,
    uploads: JoinSet<Result<()>>,
    /// Locations of blobs in sealed packs not yet in a segment.
    index: Vec<(BlobId, Location)>,
    /// Blobs added by this writer and not yet in one of its flushed segments.
    pending: HashSet<BlobId>,
    own: Vec<Arc<SegmentHead>>,
    own_refs: Vec<Arc<SegmentHead>>,
    /// Per blob: summed delta, OR of the meaning flags, summed children contribution.
    refs: HashMap<BlobId, (i64, u32, i64)>,
    /// gc only: packs it removes, and segments it replaces.
    pub dead_packs: Vec<String>,
    pub supersedes: Vec<String>,
    /// Plain bytes of chunks added.
    pub new_chunk_bytes: u64,
    /// Every pack this writer uploaded or adopted (listed by its checkpoints).
    pub packs: Vec<String>,
    /// Holders whose packs this writer adopted (recorded in its intent).
    pub adopted: Vec<String>,
    /// Packs written into the next index segment's `released` list (adopted packs this
    /// writer does not use, or a compaction's carried-over ones).
    pub released: Vec<String>,
    /// Chunks of adopted packs not (yet) in this writer's index: used only if the backup
    /// meets them again, so a resumed backup of a changed source indexes only what it uses.
    adoptable: HashMap<BlobId, Location>,
    /// Data packs sealed so far (a checkpoint is due only after new data is durable).
    pub data_packs_sealed: u64,
    /// Checkpoints this writer wrote (removed with its intent once it has committed).
    pub checkpoint_keys: Vec<String>,
}

impl Writer {
    pub(crate) fn new(repo: &Repository, lease: Lease, commit: String, op: &str) -> Writer {
        Writer {
            repo: repo.clone(),
            lease,
            commit,
            op: op.into(),
            data_pack: PackWriter::new(),
            table_pack: PackWriter::new(),
            pack_seq: 0,
            seg_seq: 0,
            intent_written: false,
            uploads: JoinSet::new(),
            index: Vec::new(),
            pending: HashSet::new(),
            own: Vec::new(),
            own_refs: Vec::new(),
            refs: HashMap::new(),
            dead_packs: Vec::new(),
            supersedes: Vec::new(),
            new_chunk_bytes: 0,
            packs: Vec::new(),
            adopted: Vec::new(),
            released: Vec::new(),
            adoptable: HashMap::new(),
            data_packs_sealed: 0,
            checkpoint_keys: Vec::new(),
        }
    }

    /// Take over a blob stored in an adopted pack: it goes into this writer's index and
    /// counts as its own (reusable without upload).
    pub(crate) fn adopt_location(&mut self, id: BlobId, loc: Location) {
        self.pending.insert(id);
        self.index.push((id, loc));
    }

    /// Offer a chunk of an adopted pack for reuse without indexing it yet
    /// ([`Writer::use_adoptable`] indexes it when the backup meets it).
    pub(crate) fn offer_adoptable(&mut self, id: BlobId, loc: Location) {
        self.adoptable.insert(id, loc);
    }

    /// If `id` is an offered adopted chunk, index it as this writer's own.
    pub(crate) fn use_adoptable(&mut self, id: &BlobId) {
        if let Some(loc) = self.adoptable.remove(id) {
            self.new_chunk_bytes += u64::from(loc.plain_len);
            self.adopt_location(*id, loc);
        }
    }

    /// Right before a snapshot commit: every pack this writer adopted from a checkpoint
    /// (format-spec §12.2) and indexes no blob of goes into its last index segment's
    /// `released` list, so that gc reclaims it once the commit is old enough. Without
    /// this a re-run of a changed source left the killed run's unused packs to nobody:
    /// the killed holder's intent no longer covers them and this writer's index does not
    /// name them (found by the schedule runner at seed 4242273).
    pub(crate) fn release_unused_adopted(&mut self) {
        let named: HashSet<&str> = self
            .own
            .iter()
            .flat_map(|h| h.meta.packs.iter().map(String::as_str))
            .chain(self.index.iter().map(|(_, l)| l.pack.as_str()))
            .collect();
        let unused: std::collections::BTreeSet<String> = self
            .packs
            .iter()
            .filter(|p| !named.contains(p.as_str()))
            .cloned()
            .collect();
        self.released.extend(unused);
    }

    /// Keys of the index and refs segments this writer has written so far.
    pub(crate) fn segment_keys(&self) -> Vec<String> {
        self.own
            .iter()
            .chain(self.own_refs.iter())
            .map(|h| h.key.clone())
            .collect()
    }

    /// Write `intents/<holder>` now (done lazily before the first pack otherwise). A
    /// resumed backup writes it before it releases the adopted holder's intent, so the
    /// adopted packs always have an intent that gc would clean them through.
    pub(crate) async fn write_intent(&mut self) -> Result<()> {
        self.lease.ensure_usable()?;
        let intent = Intent {
            holder: self.holder().into(),
            op: self.op.clone(),
            commit: self.commit.clone(),
            adopted: self.adopted.clone(),
            adopted_by: None,
            unadopted_from: 0,
        };
        let body = Bytes::from(envelope::seal(MAGIC_INTENT, &intent));
        self.repo
            .store()
            .put(&intent_key(self.holder()), body)
            .await?;
        self.intent_written = true;
        Ok(())
    }

    pub(crate) fn holder(&self) -> &str {
        &self.lease.holder
    }

    /// Did this writer already add `id` (uncommitted blobs are visible only to it)?
    pub(crate) async fn has_own(&self, id: &BlobId) -> Result<bool> {
        if self.pending.contains(id) || self.adoptable.contains_key(id) {
            return Ok(true);
        }
        Ok(self
            .repo
            .locate_in(&self.own, &HashSet::new(), id)
            .await?
            .is_some())
    }

    /// Add a blob frame to the current pack of its kind; seals and uploads full packs.
    pub(crate) async fn add(&mut self, frame: &Frame) -> Result<()> {
        self.pending.insert(frame.id);
        if frame.kind == BlobKind::Chunk {
            self.new_chunk_bytes += frame.plain_len as u64;
        }
        let pack = match frame.kind {
            BlobKind::Chunk => &mut self.data_pack,
            BlobKind::Table => &mut self.table_pack,
        };
        pack.push(frame);
        if pack.len() >= PACK_TARGET {
            self.seal(frame.kind).await?;
        }
        Ok(())
    }

    /// Carry an existing location into this writer's index segment (gc compaction).
    pub(crate) fn add_location(&mut self, id: BlobId, loc: Location) {
        self.index.push((id, loc));
    }

    /// Index and refs records buffered for the next segment (the larger of the two).
    pub(crate) fn buffered_records(&self) -> usize {
        self.index.len().max(self.refs.len())
    }

    /// Record a refcount delta with `segment::{FREED, STORED, REVIVED}` flags; the children
    /// contribution changes by what the flags say (+1 STORED/REVIVED, −1 FREED).
    pub(crate) fn add_ref(&mut self, id: BlobId, delta: i64, flags: u32) {
        self.add_ref_with_contribution(
            id,
            delta,
            flags,
            super::format::segment::flag_contribution(flags),
        );
    }

    /// Record a refcount delta with meaning `flags` and an exact children contribution
    /// (a table released or revived more than once, a compacted sum): the segment record
    /// carries the difference as its adjustment bits.
    pub(crate) fn add_ref_with_contribution(
        &mut self,
        id: BlobId,
        delta: i64,
        flags: u32,
        contribution: i64,
    ) {
        let e = self.refs.entry(id).or_insert((0, 0, 0));
        e.0 += delta;
        e.1 |= flags & segment::FLAG_BITS;
        e.2 += contribution;
    }

    /// Delta recorded so far for `id` by this writer (buffered and flushed).
    pub(crate) async fn own_delta(&self, id: &BlobId) -> Result<i64> {
        let mut d = self.refs.get(id).map_or(0, |e| e.0);
        for h in &self.own_refs {
            let bucket = self.repo.bucket(h, id.0[0]).await?;
            for r in segment::find_in_bucket(&bucket, REFS_RECORD, id) {
                d += segment::decode_refs_record(h, r)?.1 as i64;
            }
        }
        Ok(d)
    }

    async fn seal(&mut self, kind: BlobKind) -> Result<()> {
        let pack = match kind {
            BlobKind::Chunk => std::mem::take(&mut self.data_pack),
            BlobKind::Table => std::mem::take(&mut self.table_pack),
        };
        if pack.is_empty() {
            return Ok(());
        }
        self.lease.ensure_usable()?;
        if !self.intent_written {
            self.write_intent().await?;
        }
        let name = pack_name(self.holder(), self.pack_seq);
        self.pack_seq += 1;
        self.packs.push(name.clone());
        if kind == BlobKind::Chunk {
            self.data_packs_sealed += 1;
        }
        let (bytes, entries) = pack.finish();
        for e in entries {
            let loc = Location {
                pack: name.clone(),
                offset: e.offset,
                frame_len: e.frame_len,
                plain_len: e.plain_len,
                kind: e.kind,
            };
            self.index.push((e.id, loc));
        }
        while self.uploads.len() >= PARALLEL {
            self.join_one().await?;
        }
        let store = self.repo.store().clone();
        let key = pack_key(&name);
        let lease = self.lease.clone();
        self.uploads.spawn(async move {
            store.put(&key, Bytes::from(bytes)).await?;
            confirm_intent(store.as_ref(), &lease, &key).await
        });
        if let Err(e) = self.lease.keep_alive().await {
            self.drain().await;
            return Err(e);
        }
        if self.index.len() >= SEGMENT_FLUSH || self.refs.len() >= SEGMENT_FLUSH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        let r = match self.uploads.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(RepoError::Task(format!("pack upload: {e}")).into()),
            None => Ok(()),
        };
        if r.is_err() {
            self.drain().await;
        }
        r
    }

    /// Wait for the uploads still in flight, ignoring their outcome, before failing: each
    /// checks the intent after landing (and removes its pack if the holder was judged
    /// dead), whereas dropping the writer would abort them, possibly after the pack landed
    /// and before that check (a pack gc could never find).
    async fn drain(&mut self) {
        while self.uploads.join_next().await.is_some() {}
    }

    /// Seal open packs, wait for every upload, then write index and refs segments.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        if !self.data_pack.is_empty() {
            Box::pin(self.seal(BlobKind::Chunk)).await?;
        }
        if !self.table_pack.is_empty() {
            Box::pin(self.seal(BlobKind::Table)).await?;
        }
        while !self.uploads.is_empty() {
            self.join_one().await?;
        }
        self.lease.ensure_usable()?;
        let store = self.repo.store().clone();
        if !self.index.is_empty()
            || !self.dead_packs.is_empty()
            || !self.released.is_empty()
            || self.supersedes.iter().any(|k| k.starts_with("index/"))
        {
            let mut packs: Vec<String> = Vec::new();
            let mut pack_idx: HashMap<String, u32> = HashMap::new();
            let mut records = Vec::with_capacity(self.index.len());
            for (id, loc) in self.index.drain(..) {
                let next = packs.len() as u32;
                let i = *pack_idx.entry(loc.pack.clone()).or_insert_with(|| {
                    packs.push(loc.pack.clone());
                    next
                });
                records.push(segment::index_record(&id, i, &loc));
            }
            let meta = SegmentMeta {
                commit: self.commit.clone(),
                supersedes: self
                    .supersedes
                    .iter()
                    .filter(|k| k.starts_with("index/"))
                    .cloned()
                    .collect(),
                packs,
                dead_packs: std::mem::take(&mut self.dead_packs),
                released: std::mem::take(&mut self.released),
            };
            let key = format!("index/{}-{:04}", self.holder(), self.seg_seq);
            let bytes = segment::encode(INDEX_MAGIC, INDEX_RECORD, records, &meta);
            store.put(&key, Bytes::from(bytes)).await?;
            let head = self.repo.segment_head(&key).await?;
            self.own.push(head);
            self.pending.clear();
        }
        if !self.refs.is_empty() || self.supersedes.iter().any(|k| k.starts_with("refs/")) {
            let mut records = Vec::with_capacity(self.refs.len());
            for (id, (delta, flags, contribution)) in self.refs.drain() {
                if delta == 0 && flags == 0 && contribution == 0 {
                    continue;
                }
                let d = i32::try_from(delta).map_err(|_| {
                    RepoError::InvalidArgument(format!("refcount delta {delta} for {id}"))
                })?;
                let flags =
                    segment::flags_with_contribution(flags, contribution).ok_or_else(|| {
                        RepoError::InvalidArgument(format!(
                            "children contribution {contribution} for {id}"
                        ))
                    })?;
                records.push(segment::refs_record(&id, d, flags));
            }
            let meta = SegmentMeta {
                commit: self.commit.clone(),
                supersedes: self
                    .supersedes
                    .iter()
                    .filter(|k| k.starts_with("refs/"))
                    .cloned()
                    .collect(),
                ..Default::default()
            };
            let key = format!("refs/{}-{:04}", self.holder(), self.seg_seq);
            store
                .put(
                    &key,
                    Bytes::from(segment::encode(REFS_MAGIC, REFS_RECORD, records, &meta)),
                )
                .await?;
            let head = self.repo.segment_head(&key).await?;
            self.own_refs.push(head);
        }
        self.supersedes.clear();
        self.seg_seq += 1;
        Ok(())
    }

    /// Remove the intent after a commit, then the checkpoints, then the lease (best
    /// effort: gc removes leftovers). gc finds leftovers through leases, so an intent that
    /// could not be removed keeps its lease: after expiry gc removes both.
    ///
    /// The lease is released even when removing the checkpoints failed, and that is the
    /// safe order: a checkpoint is adopted only through a claim whose holder still has a
    /// lease generation within `LEASE_TTL` (`checkpoint::claim`), so a released lease makes
    /// the committed work unadoptable, whereas a kept one would let a re-run take it over
    /// and commit it a second time. The leftover checkpoints name only packs and segments
    /// the committed root counts; gc's sweep of unleased holders (`stale::sweep_unleased`,
    /// which lists `checkpoints/`) deletes them once they are older than `LEASE_TTL +
    /// SKEW`, and nothing reads them meanwhile except a re-run, whose claim then fails.
    pub(crate) async fn finish(self) {
        if self.intent_written {
            if let Err(e) = self.repo.store().delete(&intent_key(self.holder())).await {
                tracing::warn!("removing intent of {}: {e}", self.holder());
                return;
            }
        }
        if !self.checkpoint_keys.is_empty() {
            if let Err(e) = self.repo.store().delete_batch(&self.checkpoint_keys).await {
                tracing::warn!("removing checkpoints of {}: {e}", self.holder());
            }
        }
        self.lease.release().await;
    }
}

/// After a pack upload: the writer's intent must still exist. gc deletes the intent of a
/// holder it judged dead *before* its last probe for that holder's packs (format-spec §5),
/// so either this HEAD sees the intent and the pack landed before gc's last probe (gc
/// finds and deletes it), or it sees no intent: the holder was judged dead, deletes the
/// pack itself and is fenced. A zombie writer leaves no pack that nothing names. Both
/// requests are tried [`CONFIRM_ATTEMPTS`] times: a failed one would leave that pack
/// unnamed if the holder was judged dead.
async fn confirm_intent(store: &dyn ObjectStore, lease: &Lease, pack: &str) -> Result<()> {
    let ikey = intent_key(&lease.holder);
    let mut attempt = 1;
    let gone = loop {
        match store.head(&ikey).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == StoreErrorKind::NotFound => break e,
            Err(e) if attempt >= CONFIRM_ATTEMPTS => return Err(e.into()),
            Err(_) => attempt += 1,
        }
    };
    let reason = format!("{ikey} was removed (judged dead by gc) while {pack} uploaded");
    lease.fence_now(reason.clone());
    for attempt in 1..=CONFIRM_ATTEMPTS {
        match store.delete(pack).await {
            Ok(()) => break,
            Err(e) if attempt == CONFIRM_ATTEMPTS => {
                tracing::warn!("removing {pack} of fenced {} ({gone}): {e}", lease.holder)
            }
            Err(_) => {}
        }
    }
    Err(RepoError::LeaseFenced {
        holder: lease.holder.clone(),
        reason,
    }
    .into())
}

/// Attempts of each request of [`confirm_intent`].
const CONFIRM_ATTEMPTS: u32 = 3;

impl Intent {
    pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<Intent, RepoError> {
        envelope::open(MAGIC_INTENT, key, bytes)
    }
}

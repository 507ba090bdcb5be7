//! Backup checkpoints and their adoption by a re-run (format-spec §12).
//!
//! A running backup periodically makes its work durable: it flushes its packs and its
//! index and refs segments (uncommitted: they count only under its own root), then writes
//! `checkpoints/<holder>/<seq>` naming them, the source position reached and the tree
//! editor's resident path. A re-run of the same volume that finds the checkpoint of a
//! writer that is gone *adopts* it:
//!
//! 1. **claim**: only a holder that neither renewed for [`ADOPT_AFTER`] nor abandoned its
//!    lease (a live one renews more often); create `leases/<old>/9999999999` with
//!    create-if-absent (one adopter per holder, ever) and require the old holder's lease
//!    chain to be unbroken up to the claim's store time (`lease::chain_unbroken`:
//!    generations `0..=n`, each within `LEASE_TTL` of the previous, the claim within
//!    `LEASE_TTL` of `n`): so no gc can have judged the old holder dead (gc waits
//!    `LEASE_TTL + SKEW`), not even through a zombie's fenced renewal (a fresh generation
//!    after a gap), and no gc can judge it dead before the claim is `LEASE_TTL + SKEW` old;
//! 2. **verify** every listed pack still exists (HEAD), and read the footers of the packs
//!    the old holder sealed *after* the checkpoint (its tail: self-describing, checked by
//!    crc32c; a corrupt or unreadable one ends the tail);
//! 3. **transfer**: write its own intent listing the old holder (and whatever that one had
//!    adopted) as `adopted`, then mark the old intent `adopted_by` (it keeps only the packs
//!    numbered after the last adopted one) and delete the old checkpoints. From then on
//!    the adopted packs are reclaimed by gc only through the new intent (if the new writer
//!    dies uncommitted) and are kept once its root commits;
//! 4. **copy** the old segments' records into its own writer: index records make the blobs
//!    its own (no upload), refs records carry the counts of the tables already stored. The
//!    tail's chunks are offered for reuse (indexed only when the backup meets them again).
//!
//! When the source is not the same (another image snapshot, another parent), only the
//! chunk locations are offered for reuse: the tree is rebuilt, chunks met again are not
//! uploaded again, and the old refs are not copied (they describe the old tree).

use super::lease::{self, lease_key, LeaseBody, ADOPT_GENERATION, RENEW_AFTER};
use crate::repo::format::envelope::{self, MAGIC_CHECKPOINT, MAGIC_INTENT, MAGIC_LEASE};
use crate::repo::format::pack::{pack_entries, PackEntry};
use crate::repo::format::segment::{self, segment_records, INDEX_RECORD, REFS_RECORD};
use crate::repo::tree::TreeState;
use crate::repo::writer::{intent_key, pack_name, Intent, Writer};
use crate::repo::{create_exclusive, BlobKind, Location, RepoError, Repository};
use crate::store::{PutOutcome, StoreErrorKind};
use crate::Result;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

/// A holder that neither renewed its lease for this long nor abandoned it is presumed dead
/// and may be adopted (issue 20, finding 4: a concurrent backup of the same volume adopted
/// a live writer, which was then fenced). A live writer renews at least every
/// `RENEW_AFTER` while it seals packs, so twice that; the claim must still come within
/// `LEASE_TTL` of the newest generation (`lease::chain_unbroken`), which leaves a window of
/// `LEASE_TTL − ADOPT_AFTER` (20 min) after a kill in which a re-run adopts.
pub(crate) const ADOPT_AFTER: Duration = Duration::from_secs(2 * RENEW_AFTER.as_secs());
/// Chunk locations of a non-matching checkpoint offered for reuse at most (bounds memory
/// to roughly 100 bytes each).
const OFFER_MAX: usize = 2 << 20;
/// Pack existence checks (and tail footer reads) in flight.
const HEADS_IN_FLIGHT: usize = 16;
/// Absent pack names in a row that end the probe of a killed holder's tail: gc's
/// dead-writer probe gives up after as many, so every adopted tail pack stays reachable
/// from its adopter's intent (format-spec §12.2).
const TAIL_MISSES: u64 = 8;
/// Time spent reading a tail at most; what is left stays with the old holder's intent.
const TAIL_BUDGET: Duration = Duration::from_secs(5 * 60);
/// The transfer (step 3) is abandoned when the claim is older than this: far inside the
/// `LEASE_TTL + SKEW` during which no gc can judge the claimed holder dead.
const TRANSFER_WITHIN: Duration = Duration::from_secs(15 * 60);

/// What makes two backup runs the same job: a re-run resumes the old tree and position only
/// when all of this is equal and the source token is known.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct JobIdentity {
    pub size: u64,
    pub chunk_size: u32,
    pub parent: Option<String>,
    /// [`crate::backup::BlockSource::resume_token`] of the source.
    pub source: Option<String>,
}

impl JobIdentity {
    /// May a re-run with identity `other` continue this job's tree and position?
    pub(crate) fn resumable_by(&self, other: &JobIdentity) -> bool {
        self.source.is_some() && self == other
    }
}

/// Progress counters carried across a resume so the final report covers the whole job.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Counters {
    pub chunks_new: u64,
    pub chunks_reused: u64,
    pub chunks_zero: u64,
    pub chunks_changed: u64,
    pub bytes_read: u64,
    pub logical_delta: i64,
    pub new_chunk_bytes: u64,
}

/// Body of `checkpoints/<holder>/<seq>` (envelope "ISCP").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub holder: String,
    pub volume: String,
    pub seq: u64,
    pub job: JobIdentity,
    /// Every chunk below this index has been processed (its frame, if new, is in `packs`).
    pub next_chunk: u64,
    pub tree: TreeState,
    /// The writer's own (uncommitted) index and refs segments.
    pub segments: Vec<String>,
    /// Every pack those segments name, adopted ones included.
    pub packs: Vec<String>,
    /// Holders this writer adopted in turn (their packs are among `packs`).
    pub adopted: Vec<String>,
    pub counters: Counters,
}

pub(crate) fn checkpoint_key(holder: &str, seq: u64) -> String {
    format!("checkpoints/{holder}/{seq:06}")
}

impl Checkpoint {
    pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<Checkpoint, RepoError> {
        envelope::open(MAGIC_CHECKPOINT, key, bytes)
    }

    /// Store this checkpoint (the writer must have been flushed first).
    pub(crate) async fn write(&self, repo: &Repository) -> Result<String> {
        let key = checkpoint_key(&self.holder, self.seq);
        repo.store()
            .put(&key, Bytes::from(envelope::seal(MAGIC_CHECKPOINT, self)))
            .await?;
        Ok(key)
    }
}

/// The newest checkpoint of every other holder for `volume`, newest holder first.
/// Unreadable checkpoints are skipped with a warning: they only ever save work.
pub(crate) async fn find(repo: &Repository, volume: &str, me: &str) -> Result<Vec<Checkpoint>> {
    let mut newest: BTreeMap<String, String> = BTreeMap::new();
    for o in repo.list_all("checkpoints/").await? {
        let holder = o.key.split('/').nth(1).unwrap_or_default().to_string();
        if holder != me && crate::repo::format::ids::is_time_id(&holder) {
            newest.insert(holder, o.key);
        }
    }
    let mut out = Vec::new();
    for key in newest.into_values().rev() {
        let Some(bytes) = repo.get_opt(&key).await? else {
            continue;
        };
        match Checkpoint::decode(&key, &bytes) {
            Ok(c) if c.volume == volume && key.contains(&c.holder) => out.push(c),
            Ok(_) => {}
            Err(e) => tracing::warn!("ignoring checkpoint {key}: {e}"),
        }
    }
    Ok(out)
}

/// A successful claim of a killed holder (steps 1–2 of the module doc).
pub(crate) struct Claim {
    /// When the claim was sent (local monotonic clock): step 3 must be stored within
    /// [`TRANSFER_WITHIN`] of it (format-spec §12.2).
    at: Instant,
    /// Packs the holder sealed after its checkpoint, read from their footers.
    tail: Vec<(String, Vec<PackEntry>)>,
    /// First of the holder's own pack numbers left to its intent after the transfer.
    unadopted_from: u64,
}

impl Claim {
    /// Packs sealed after the checkpoint that this claim takes over.
    pub(crate) fn tail_packs(&self) -> u64 {
        self.tail.len() as u64
    }
}

/// Claim `ck`'s holder for `me`, check that its packs survive and read the footers of the
/// packs it sealed after the checkpoint (steps 1–2 of the module doc). `now` is the store
/// time of `me`'s newest lease generation. `None`: the holder may still be running (it
/// renewed within [`ADOPT_AFTER`] of `now` and did not abandon its lease), somebody else
/// adopted it, its lease chain is broken (a gc may already have judged it dead) or a pack
/// is gone; the caller then starts afresh.
pub(crate) async fn claim(
    repo: &Repository,
    ck: &Checkpoint,
    me: &str,
    now: SystemTime,
) -> Result<Option<Claim>> {
    let store = repo.store();
    let at = Instant::now();
    let gens = generations(repo, &ck.holder).await?;
    if !lease::chain_unbroken(&gens, now) {
        tracing::info!("not resuming {}: its lease chain is broken", ck.holder);
        return Ok(None);
    }
    let newest = gens.iter().map(|g| g.1).max().unwrap_or(now);
    let age = now.duration_since(newest).unwrap_or_default();
    if age <= ADOPT_AFTER && !abandoned(repo, &ck.holder, &gens).await {
        tracing::info!(
            "not resuming {}: its lease was renewed {age:?} ago, it may still be running",
            ck.holder
        );
        return Ok(None);
    }
    let key = lease_key(&ck.holder, ADOPT_GENERATION);
    let body = LeaseBody {
        holder: ck.holder.clone(),
        op: format!("adopted by {me}"),
        volume: Some(ck.volume.clone()),
        generation: ADOPT_GENERATION,
    };
    let sealed = Bytes::from(envelope::seal(MAGIC_LEASE, &body));
    if create_exclusive(store.as_ref(), &key, sealed).await? == PutOutcome::AlreadyExists {
        return Ok(None);
    }
    let claimed = store
        .head(&key)
        .await?
        .last_modified
        .unwrap_or_else(SystemTime::now);
    if !lease::chain_unbroken(&generations(repo, &ck.holder).await?, claimed) {
        tracing::info!(
            "not resuming {}: its lease expired before the claim",
            ck.holder
        );
        return Ok(None);
    }
    let keys: Vec<String> = ck
        .packs
        .iter()
        .map(|p| crate::repo::pack_key_of(p))
        .collect();
    let mut heads = futures::stream::iter(keys.into_iter().map(|key| {
        let store = store.clone();
        async move {
            match store.head(&key).await {
                Ok(_) => Ok(false),
                Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(true),
                Err(e) => Err(e),
            }
        }
    }))
    .buffer_unordered(HEADS_IN_FLIGHT);
    let mut missing = 0u64;
    while let Some(gone) = heads.next().await {
        missing += u64::from(gone?);
    }
    if missing > 0 {
        tracing::warn!(
            "not resuming {}: {missing} of its packs are gone",
            ck.holder
        );
        return Ok(None);
    }
    let prefix = format!("{}-p", ck.holder);
    let first = ck
        .packs
        .iter()
        .filter_map(|p| p.strip_prefix(&prefix)?.parse::<u64>().ok())
        .max()
        .map_or(0, |s| s + 1);
    let (tail, unadopted_from) = read_tail(repo, &ck.holder, first).await;
    Ok(Some(Claim {
        at,
        tail,
        unadopted_from,
    }))
}

/// What probing one pack name of the tail found.
enum TailPack {
    Absent,
    Chunks(Vec<PackEntry>),
    /// Unreadable, corrupt or without chunks: ends the tail.
    Unusable,
}

/// The lease generations of `holder` (number, store time), its adoption claim excluded.
/// A key that is not a generation number, or a generation without a store time, is kept
/// as generation `u64::MAX` at the epoch, which breaks the chain: adoption is then refused.
async fn generations(repo: &Repository, holder: &str) -> Result<Vec<(u64, SystemTime)>> {
    Ok(repo
        .list_all(&format!("leases/{holder}/"))
        .await?
        .into_iter()
        .filter_map(|o| {
            let gen = o.key.rsplit('/').next()?.parse::<u64>().ok();
            match (gen, o.last_modified) {
                (Some(ADOPT_GENERATION), _) => None,
                (Some(g), Some(t)) => Some((g, t)),
                _ => Some((u64::MAX, SystemTime::UNIX_EPOCH)),
            }
        })
        .collect())
}

/// Did `holder` abandon its lease (its highest generation has the op
/// [`lease::ABANDONED`])? Unreadable means no: adoption then waits for [`ADOPT_AFTER`].
async fn abandoned(repo: &Repository, holder: &str, gens: &[(u64, SystemTime)]) -> bool {
    let Some(top) = gens.iter().map(|g| g.0).max() else {
        return false;
    };
    let key = lease_key(holder, top);
    match repo.get_opt(&key).await {
        Ok(Some(bytes)) => envelope::open::<LeaseBody>(MAGIC_LEASE, &key, &bytes)
            .is_ok_and(|b| b.op == lease::ABANDONED && b.holder == holder),
        _ => false,
    }
}

/// The packs `holder-p<first>`, `holder-p<first+1>`, … that a killed holder sealed after
/// its checkpoint: each pack's trailer and footer are read with ranged GETs and checked
/// (magic, version, crc32c, frames tiling the data area). Probing ends after
/// [`TAIL_MISSES`] absent names in a row (uploads run in parallel, so a pack in flight at
/// the kill leaves a gap), at the first pack that is unusable (corrupt, unreadable, or
/// holding no chunk: it stays with the holder's intent for gc), or when
/// [`TAIL_BUDGET`] has passed. Returns the adopted packs and the first number not adopted
/// (everything from it on stays with the holder's intent).
async fn read_tail(
    repo: &Repository,
    holder: &str,
    first: u64,
) -> (Vec<(String, Vec<PackEntry>)>, u64) {
    let started = Instant::now();
    let mut tail = Vec::new();
    let mut offered = 0usize;
    let (mut seq, mut misses, mut next_unadopted) = (first, 0u64, first);
    'probe: while misses < TAIL_MISSES && started.elapsed() < TAIL_BUDGET {
        let names: Vec<String> = (seq..seq + HEADS_IN_FLIGHT as u64)
            .map(|s| pack_name(holder, s))
            .collect();
        let found: Vec<TailPack> = futures::stream::iter(names.clone().into_iter().map(|name| {
            let repo = repo.clone();
            let holder = holder.to_string();
            async move {
                match pack_entries(repo.store().as_ref(), &name).await {
                    Ok(entries) if entries.iter().any(|e| e.kind == BlobKind::Chunk) => {
                        TailPack::Chunks(entries)
                    }
                    Ok(_) => TailPack::Unusable,
                    Err(crate::Error::Store(e)) if e.kind() == StoreErrorKind::NotFound => {
                        TailPack::Absent
                    }
                    Err(e) => {
                        tracing::warn!("not adopting {name} (nor later packs of {holder}): {e}");
                        TailPack::Unusable
                    }
                }
            }
        }))
        .buffered(HEADS_IN_FLIGHT)
        .collect()
        .await;
        for (name, probe) in names.into_iter().zip(found) {
            match probe {
                TailPack::Absent => misses += 1,
                TailPack::Chunks(entries) if offered + entries.len() <= OFFER_MAX => {
                    offered += entries.len();
                    tail.push((name, entries));
                    misses = 0;
                    next_unadopted = seq + 1;
                }
                TailPack::Chunks(_) | TailPack::Unusable => break 'probe,
            }
            if misses >= TAIL_MISSES {
                break 'probe;
            }
            seq += 1;
        }
    }
    (tail, next_unadopted)
}

/// Steps 3–4 of the module doc, after a successful [`claim`]. With `whole`, the old index
/// and refs records become `w`'s own (the caller continues the old tree); otherwise only
/// chunk locations are offered for reuse. The chunks of the packs sealed after the
/// checkpoint are offered for reuse in both cases (the tree they went into is not in the
/// checkpoint). Returns the number of blobs taken over.
pub(crate) async fn take_over(
    repo: &Repository,
    w: &mut Writer,
    ck: &Checkpoint,
    claim: Claim,
    whole: bool,
) -> Result<u64> {
    let mut blobs = 0u64;
    let mut offered = 0usize;
    let mut locations = Vec::new();
    let mut refs = Vec::new();
    for key in &ck.segments {
        let h = repo.segment_head(key).await?;
        let records = segment_records(repo.store().as_ref(), &h).await?;
        if key.starts_with("index/") {
            for r in records.chunks_exact(INDEX_RECORD) {
                let (id, loc) = segment::decode_index_record(&h, r)?;
                if whole || (loc.kind == BlobKind::Chunk && offered < OFFER_MAX) {
                    offered += usize::from(!whole);
                    locations.push((id, loc));
                }
            }
        } else if whole {
            for r in records.chunks_exact(REFS_RECORD) {
                refs.push(segment::decode_refs_record(&h, r)?);
            }
        }
    }
    // The transfer must be stored well before a gc could judge the claimed holder dead
    // (`LEASE_TTL + SKEW` after the claim); `w` is untouched until here.
    if claim.at.elapsed() > TRANSFER_WITHIN {
        return Err(RepoError::LeaseExpired {
            holder: ck.holder.clone(),
        }
        .into());
    }
    w.adopted.push(ck.holder.clone());
    w.adopted.extend(ck.adopted.iter().cloned());
    w.packs.extend(ck.packs.iter().cloned());
    for (id, loc) in locations {
        if whole {
            w.adopt_location(id, loc);
        } else {
            w.offer_adoptable(id, loc);
        }
        blobs += 1;
    }
    for (id, delta, flags) in refs {
        w.add_ref(id, i64::from(delta), flags);
    }
    for (name, entries) in claim.tail {
        for e in entries.iter().filter(|e| e.kind == BlobKind::Chunk) {
            w.offer_adoptable(
                e.id,
                Location {
                    pack: name.clone(),
                    offset: e.offset,
                    frame_len: e.frame_len,
                    plain_len: e.plain_len,
                    kind: e.kind,
                },
            );
            blobs += 1;
        }
        w.packs.push(name);
    }
    // The new intent names the adopted holders before the old intent gives them up, so
    // the packs always have an intent through which gc would reclaim them. The old intent
    // keeps the packs numbered from `unadopted_from` on (never adopted).
    w.write_intent().await?;
    let ikey = intent_key(&ck.holder);
    if let Some(bytes) = repo.get_opt(&ikey).await? {
        let mut old = Intent::decode(&ikey, &bytes)?;
        old.adopted_by = Some(w.holder().to_string());
        old.unadopted_from = claim.unadopted_from;
        old.adopted.clear();
        repo.store()
            .put(&ikey, Bytes::from(envelope::seal(MAGIC_INTENT, &old)))
            .await?;
    }
    let mut doomed = Vec::new();
    doomed.extend(
        repo.list_all(&format!("checkpoints/{}/", ck.holder))
            .await?
            .into_iter()
            .map(|o| o.key),
    );
    repo.store().delete_batch(&doomed).await?;
    Ok(blobs)
}

/// Keys of `holder`'s checkpoints (gc removes them with a dead writer).
pub(crate) async fn keys_of(repo: &Repository, holder: &str) -> Result<Vec<String>> {
    Ok(repo
        .list_all(&format!("checkpoints/{holder}/"))
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect())
}

/// A writer that checkpointed checks, right before its commit, that no re-run adopted it
/// (a process wrongly thought dead). This narrows the double commit of the same work to
/// the instant between this HEAD and the root's creation; even then both roots are valid
/// (the shared tables are counted twice: a leak `check --repair` reclaims, never a loss).
pub(crate) async fn refuse_if_adopted(repo: &Repository, holder: &str) -> Result<()> {
    match repo
        .store()
        .head(&lease_key(holder, ADOPT_GENERATION))
        .await
    {
        Ok(_) => Err(RepoError::LeaseExpired {
            holder: holder.to_string(),
        }
        .into()),
        Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A checkpoint of a writer without a resumable position (a snapshot copy, §12.4): a
/// re-run can only take over its chunks.
pub(crate) async fn write_chunks_only(
    repo: &Repository,
    w: &mut Writer,
    volume: &str,
) -> Result<()> {
    w.flush().await?;
    let ck = Checkpoint {
        holder: w.holder().to_string(),
        volume: volume.to_string(),
        seq: w.checkpoint_keys.len() as u64,
        job: JobIdentity {
            size: 0,
            chunk_size: repo.chunk_size(),
            parent: None,
            source: None,
        },
        next_chunk: 0,
        tree: TreeState {
            top: Vec::new(),
            path: Vec::new(),
        },
        segments: w.segment_keys(),
        packs: w.packs.clone(),
        adopted: w.adopted.clone(),
        counters: Counters::default(),
    };
    let key = ck.write(repo).await?;
    w.checkpoint_keys.push(key);
    w.lease.watch_adoption();
    Ok(())
}

/// Take over the chunks of the newest adoptable checkpoint of `volume` (a snapshot copy's
/// re-run); returns the adopted holder and the number of chunks offered.
pub(crate) async fn adopt_chunks(
    repo: &Repository,
    w: &mut Writer,
    volume: &str,
) -> Result<Option<(String, u64)>> {
    for ck in find(repo, volume, w.holder()).await? {
        if let Some(claim) = claim(repo, &ck, w.holder(), w.lease.store_time()?).await? {
            let n = take_over(repo, w, &ck, claim, false).await?;
            return Ok(Some((ck.holder, n)));
        }
    }
    Ok(None)
}

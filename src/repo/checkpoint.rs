//! Backup checkpoints and their adoption by a re-run (format-spec §12).
//!
//! A running backup periodically makes its work durable: it flushes its packs and its
//! index and refs segments (uncommitted: they count only under its own root), then writes
//! `checkpoints/<holder>/<seq>` naming them, the source position reached and the tree
//! editor's resident path. A re-run of the same volume that finds the checkpoint of a
//! writer that is gone *adopts* it:
//!
//! 1. **claim**: create `leases/<old>/9999999999` with create-if-absent (one adopter per
//!    holder, ever) and require its store time to be within `LEASE_TTL` of the old holder's
//!    newest generation: exactly the renewal rule, so no gc can have judged the old holder
//!    dead (gc waits `LEASE_TTL + SKEW`) and no gc can judge it dead before the claim is
//!    `LEASE_TTL + SKEW` old;
//! 2. **verify** every listed pack still exists (HEAD);
//! 3. **transfer**: write its own intent listing the old holder (and whatever that one had
//!    adopted) as `adopted`, then mark the old intent `adopted_by` (it keeps only the packs
//!    sealed after the checkpoint) and delete the old checkpoints. From then on the adopted
//!    packs are reclaimed by gc only through the new intent (if the new writer dies
//!    uncommitted) and are kept once its root commits;
//! 4. **copy** the old segments' records into its own writer: index records make the blobs
//!    its own (no upload), refs records carry the counts of the tables already stored.
//!
//! When the source is not the same (another image snapshot, another parent), only the
//! chunk locations are offered for reuse: the tree is rebuilt, chunks met again are not
//! uploaded again, and the old refs are not copied (they describe the old tree).

use super::envelope::{self, MAGIC_CHECKPOINT, MAGIC_INTENT, MAGIC_LEASE};
use super::gc::segment_records;
use super::lease::{lease_key, LeaseBody, LEASE_TTL};
use super::segment::{self, INDEX_RECORD, REFS_RECORD};
use super::tree::TreeState;
use super::writer::{intent_key, Intent, Writer};
use super::{create_exclusive, BlobKind, RepoError, Repository};
use crate::store::{PutOutcome, StoreErrorKind};
use crate::Result;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Generation number of the adoption claim in the adopted holder's lease chain: above any
/// real generation, so the holder itself can never create it.
pub(crate) const ADOPT_GENERATION: u64 = 9_999_999_999;
/// Chunk locations of a non-matching checkpoint offered for reuse at most (bounds memory
/// to roughly 100 bytes each).
const OFFER_MAX: usize = 2 << 20;
/// Pack existence checks in flight.
const HEADS_IN_FLIGHT: usize = 16;

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
    pub fn resumable_by(&self, other: &JobIdentity) -> bool {
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
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Checkpoint, RepoError> {
        envelope::open(MAGIC_CHECKPOINT, key, bytes)
    }

    /// Store this checkpoint (the writer must have been flushed first).
    pub async fn write(&self, repo: &Repository) -> Result<String> {
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
        if holder != me && super::ids::is_time_id(&holder) {
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

/// Claim `ck`'s holder for `me` and check that its packs survive (steps 1–2 of the module
/// doc). `false`: somebody else adopted it, its lease chain is broken (a gc may already
/// have judged it dead) or a pack is gone; the caller then starts afresh.
pub(crate) async fn claim(repo: &Repository, ck: &Checkpoint, me: &str) -> Result<bool> {
    let store = repo.store();
    let key = lease_key(&ck.holder, ADOPT_GENERATION);
    let body = LeaseBody {
        holder: ck.holder.clone(),
        op: format!("adopted by {me}"),
        volume: Some(ck.volume.clone()),
        generation: ADOPT_GENERATION,
    };
    let sealed = Bytes::from(envelope::seal(MAGIC_LEASE, &body));
    if create_exclusive(store.as_ref(), &key, sealed).await? == PutOutcome::AlreadyExists {
        return Ok(false);
    }
    let claimed = store
        .head(&key)
        .await?
        .last_modified
        .unwrap_or_else(SystemTime::now);
    let newest = repo
        .list_all(&format!("leases/{}/", ck.holder))
        .await?
        .into_iter()
        .filter(|o| o.key != key)
        .filter_map(|o| o.last_modified)
        .max();
    let Some(newest) = newest else {
        return Ok(false);
    };
    if claimed.duration_since(newest).unwrap_or_default() > LEASE_TTL {
        tracing::info!(
            "not resuming {}: its lease expired before the claim",
            ck.holder
        );
        return Ok(false);
    }
    let keys: Vec<String> = ck.packs.iter().map(|p| super::pack_key_of(p)).collect();
    let mut heads = futures::stream::iter(keys.into_iter().map(|key| {
        let store = store.clone();
        async move {
            match store.head(&key).await {
                Ok(_) => Ok(false),
                Err(e) if e.kind == StoreErrorKind::NotFound => Ok(true),
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
        return Ok(false);
    }
    Ok(true)
}

/// Steps 3–4 of the module doc, after a successful [`claim`]. With `whole`, the old index
/// and refs records become `w`'s own (the caller continues the old tree); otherwise only
/// chunk locations are offered for reuse. Returns the number of blobs taken over.
pub(crate) async fn take_over(
    repo: &Repository,
    w: &mut Writer,
    ck: &Checkpoint,
    whole: bool,
) -> Result<u64> {
    w.adopted.push(ck.holder.clone());
    w.adopted.extend(ck.adopted.iter().cloned());
    w.packs.extend(ck.packs.iter().cloned());
    let mut blobs = 0u64;
    let mut offered = 0usize;
    for key in &ck.segments {
        let h = repo.segment_head(key).await?;
        let records = segment_records(repo, &h).await?;
        if key.starts_with("index/") {
            for r in records.chunks_exact(INDEX_RECORD) {
                let (id, loc) = segment::decode_index_record(&h, r)?;
                if whole {
                    w.adopt_location(id, loc);
                    blobs += 1;
                } else if loc.kind == BlobKind::Chunk && offered < OFFER_MAX {
                    w.offer_adoptable(id, loc);
                    offered += 1;
                    blobs += 1;
                }
            }
        } else if whole {
            for r in records.chunks_exact(REFS_RECORD) {
                let (id, delta, flags) = segment::decode_refs_record(&h, r)?;
                w.add_ref(id, i64::from(delta), flags);
            }
        }
    }
    // The new intent names the adopted holders before the old intent gives them up, so
    // the packs always have an intent through which gc would reclaim them. The old intent
    // keeps the packs the old holder sealed after its checkpoint (never adopted).
    w.write_intent().await?;
    let prefix = format!("{}-p", ck.holder);
    let unadopted_from = ck
        .packs
        .iter()
        .filter_map(|p| p.strip_prefix(&prefix)?.parse::<u64>().ok())
        .max()
        .map_or(0, |s| s + 1);
    let ikey = intent_key(&ck.holder);
    if let Some(bytes) = repo.get_opt(&ikey).await? {
        let mut old = Intent::decode(&ikey, &bytes)?;
        old.adopted_by = Some(w.holder().to_string());
        old.unadopted_from = unadopted_from;
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
        Err(e) if e.kind == StoreErrorKind::NotFound => Ok(()),
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
        if claim(repo, &ck, w.holder()).await? {
            let n = take_over(repo, w, &ck, false).await?;
            return Ok(Some((ck.holder, n)));
        }
    }
    Ok(None)
}

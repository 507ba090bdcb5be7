//! Reclaiming what dead writers left uncommitted (format-spec §5, "Dead and zombie
//! writers"), called by gc.
//!
//! * A holder whose lease expired is cleaned through its lease ([`clean_dead_writer`]).
//! * A *zombie* — a writer gc already judged dead and cleaned, that resumed and wrote on
//!   before its next renewal failed — may leave an intent, checkpoints or segments that no
//!   lease names any more. [`sweep_unleased`] finds their holders from the small prefixes
//!   (`intents/`, `checkpoints/`, and the segment listing gc's view already made) and
//!   cleans those whose newest object is older than `LEASE_TTL + SKEW` at gc's store time.
//! * A zombie's *packs* are not listed per run (`packs/` is the big prefix). They cannot
//!   escape a single fault: a writer HEADs its intent after each pack upload and deletes
//!   the pack itself when the intent is gone, and gc deletes the intent *before* its last
//!   probe for packs, so every pack either lands before that probe or is removed by its
//!   own writer. A double fault (killed between the upload and that HEAD, the upload
//!   landing after the probe) leaves a pack nothing names: the orphan sweep
//!   ([`find_orphan_packs`], at most once per [`ORPHAN_SWEEP_PERIOD`]) reclaims it.
//! * Adopted packs a committed re-run did not use are listed in its segment's `released`
//!   ([`released_packs`]).
//!
//! Why an unleased holder's old object is dead: gc lists leases right after creating its
//! own lease, and lists every object considered here after that. A writer creates its
//! lease before any object and keeps it until its commit marker exists (then its segments
//! count and are not considered here). A holder without a lease at the listing is
//! therefore committed, judged dead (its later commit is fenced), or a writer that started
//! after the listing — whose objects are younger than gc's lease minus `SKEW`.

use super::lease::{LeaseView, LEASE_TTL, SKEW};
use crate::repo::format::pack::pack_key;
use crate::repo::repository::{segment_writer, SegmentSet};
use crate::repo::writer::{intent_key, pack_name, Intent};
use crate::repo::Repository;
use crate::store::{ObjectMeta, StoreErrorKind};
use crate::Result;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

/// Consecutive missing pack numbers after which a probe stops: at most 3 uploads are in
/// flight per writer, so a gap in a holder's pack numbers is at most 3 long.
const PROBE_MISSES: u32 = 8;

/// Remove what a dead holder left uncommitted: its packs (found through its intent and
/// sequential names, with those of holders it adopted), its segments (listed by its id
/// prefix) and its checkpoints; then the intent it read, and then a last probe for packs
/// that a zombie of the holder uploaded meanwhile (see the module doc). Idempotent.
pub(crate) async fn clean_dead_writer(
    repo: &Repository,
    set: &SegmentSet,
    holder: &str,
) -> Result<()> {
    let ikey = intent_key(holder);
    let intent = match repo.get_opt(&ikey).await? {
        Some(b) => Some(Intent::decode(&ikey, &b)?),
        None => None,
    };
    let intent_read = intent.is_some();
    let mut doomed = Vec::new();
    for prefix in ["index/", "refs/"] {
        for o in repo.list_all(&format!("{prefix}{holder}")).await? {
            let h = repo.segment_head(&o.key).await?;
            if segment_writer(&h.key) == holder
                && !set
                    .index
                    .iter()
                    .chain(set.refs.iter())
                    .any(|s| s.key == h.key)
            {
                doomed.push(o.key);
            }
        }
    }
    // The commit key may exist written by another holder (a copy re-run after a kill
    // commits the same root): only a marker naming this holder keeps its packs.
    // Packs it adopted from a checkpoint (§12) are reclaimed with its own.
    let mut probe = intent
        .filter(|i| !set.markers.commits(&i.commit, holder))
        .map(|i| PackProbe::new(set, &i));
    if let Some(p) = probe.as_mut() {
        doomed.extend(p.run(repo).await?);
    }
    doomed.extend(super::checkpoint::keys_of(repo, holder).await?);
    repo.store().delete_batch(&doomed).await?;
    // Only an intent read above is deleted: one the holder (a zombie) wrote since then
    // names packs this run has not probed for, and stays for a later run.
    if intent_read {
        repo.store().delete_batch(&[ikey]).await?;
    }
    if let Some(p) = probe.as_mut() {
        let late = p.run(repo).await?;
        repo.store().delete_batch(&late).await?;
    }
    Ok(())
}

/// Probes a dead holder's pack names (and those of the holders it adopted) with HEAD.
struct PackProbe {
    /// (owner, pack number the next run starts at).
    chains: Vec<(String, u64)>,
    /// Packs a counted index segment names: never deleted here (an adopted holder may have
    /// committed after all: adopted while alive, §12).
    named: HashSet<String>,
    /// Packs an earlier run found (and the caller deleted): neither a find nor a miss.
    seen: HashSet<String>,
}

impl PackProbe {
    fn new(set: &SegmentSet, i: &Intent) -> PackProbe {
        let own = (i.holder.clone(), i.unadopted_from);
        let adopted = i.adopted.iter().map(|a| (a.clone(), 0));
        PackProbe {
            chains: std::iter::once(own).chain(adopted).collect(),
            named: set
                .index
                .iter()
                .flat_map(|h| h.meta.packs.iter().cloned())
                .collect(),
            seen: HashSet::new(),
        }
    }

    /// Keys of the existing packs, neither named nor seen before, from each chain's start
    /// until [`PROBE_MISSES`] consecutive misses. The next run starts at this run's first
    /// miss: a gap may be an upload still in flight that lands later. So a second run
    /// costs about `PROBE_MISSES` HEADs per chain, plus the gaps (at most 3 each).
    async fn run(&mut self, repo: &Repository) -> Result<Vec<String>> {
        let PackProbe {
            chains,
            named,
            seen,
        } = self;
        let mut found = Vec::new();
        for (owner, start) in chains.iter_mut() {
            let (mut misses, mut seq, mut first_miss) = (0, *start, None);
            while misses < PROBE_MISSES {
                let name = pack_name(owner, seq);
                seq += 1;
                if named.contains(&name) || seen.contains(&name) {
                    misses = 0;
                    continue;
                }
                let key = pack_key(&name);
                match repo.store().head(&key).await {
                    Ok(_) => {
                        found.push(key);
                        seen.insert(name);
                        misses = 0;
                    }
                    Err(e) if e.kind() == StoreErrorKind::NotFound => {
                        misses += 1;
                        first_miss.get_or_insert(seq - 1);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            *start = first_miss.unwrap_or(seq);
        }
        Ok(found)
    }
}

/// Clean every holder that has objects under `intents/`, `checkpoints/` or uncounted
/// segments in `set`, no lease generation in `leases` (gc's listing, made before all of
/// these), and whose newest such object is older than `LEASE_TTL + SKEW` at `now` (gc's
/// lease time), except the writers of `lost` roots ([`lost_writers`]). Returns the number
/// of holders cleaned. Cost: two listings of small prefixes, plus the cleaning of what it
/// finds.
pub(crate) async fn sweep_unleased(
    repo: &Repository,
    set: &SegmentSet,
    leases: &[LeaseView],
    now: SystemTime,
    lost: &Lost,
) -> Result<u64> {
    let leased: HashSet<&str> = (leases.iter().map(|l| l.holder.as_str()))
        .chain(lost.roots.keys().map(String::as_str))
        .collect();
    // Holder → store time of its newest object (None: some object has no time, so its
    // age is unknown and the holder is left alone).
    let mut newest: HashMap<String, Option<SystemTime>> = HashMap::new();
    let mut note = |holder: &str, o: &ObjectMeta| {
        if holder.len() != 40 || leased.contains(holder) {
            return;
        }
        let e = newest
            .entry(holder.to_string())
            .or_insert(Some(SystemTime::UNIX_EPOCH));
        *e = match (*e, o.last_modified) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    };
    for o in &set.uncounted {
        note(segment_writer(&o.key), o);
    }
    for o in repo.list_all("intents/").await? {
        note(o.key.trim_start_matches("intents/"), &o);
    }
    for o in repo.list_all("checkpoints/").await? {
        note(o.key.split('/').nth(1).unwrap_or_default(), &o);
    }
    let mut cleaned = 0;
    let mut holders: Vec<(String, Option<SystemTime>)> = newest.into_iter().collect();
    holders.sort();
    for (holder, t) in holders {
        let old = t.is_some_and(|t| now.duration_since(t).unwrap_or_default() > LEASE_TTL + SKEW);
        if old {
            tracing::info!(
                "cleaning {holder}: uncommitted objects, no lease, older than TTL + SKEW"
            );
            clean_dead_writer(repo, set, &holder).await?;
            cleaned += 1;
        }
    }
    Ok(cleaned)
}

/// Store time of the commit marker of a counted segment (a root or a gc marker).
fn commit_time(set: &SegmentSet, commit: &str) -> Option<SystemTime> {
    match set.markers.roots.get(commit) {
        Some((_, meta)) => meta.last_modified,
        None => set.markers.gcs.get(commit).and_then(|g| g.stored),
    }
}

/// Packs a counted index segment names, minus those a committed gc declared dead.
pub(crate) fn named_packs(set: &SegmentSet) -> HashSet<&str> {
    set.index
        .iter()
        .flat_map(|h| h.meta.packs.iter().map(String::as_str))
        .filter(|p| !set.dead_packs.contains(*p))
        .collect()
}

/// Released adopted packs (format-spec §12.2, "Unused adopted packs"), split into those gc
/// deletes now — the releasing segment's commit marker is older than `LEASE_TTL + SKEW`
/// at `now`, no counted index segment names the pack and no committed gc declared it
/// dead yet — and those still waiting (a compaction carries them into its own segment).
pub(crate) fn released_packs(
    set: &SegmentSet,
    named: &HashSet<&str>,
    now: SystemTime,
) -> (Vec<String>, Vec<String>) {
    let (mut expired, mut waiting) = (HashSet::new(), HashSet::new());
    for h in &set.index {
        let old = commit_time(set, &h.meta.commit)
            .is_some_and(|t| now.duration_since(t).unwrap_or_default() > LEASE_TTL + SKEW);
        for p in &h.meta.released {
            if named.contains(p.as_str()) || set.dead_packs.contains(p) {
                continue;
            }
            if old {
                expired.insert(p.clone());
            } else {
                waiting.insert(p.clone());
            }
        }
    }
    waiting.retain(|p| !expired.contains(p));
    let mut expired: Vec<String> = expired.into_iter().collect();
    let mut waiting: Vec<String> = waiting.into_iter().collect();
    expired.sort();
    waiting.sort();
    (expired, waiting)
}

/// How often gc lists `packs/` for orphans (format-spec §5, "Orphan packs"): a gc sweeps
/// when `sweeps/orphans` is absent or older than this (store time).
pub(crate) const ORPHAN_SWEEP_PERIOD: Duration = Duration::from_secs(24 * 3600);
/// Key whose Last-Modified is the end of the last complete orphan sweep.
pub(crate) const SWEEP_KEY: &str = "sweeps/orphans";
/// Orphans one sweep collects at most (bounds its memory; the rest wait for the next run,
/// which sweeps again because this one is not recorded as complete).
const ORPHANS_MAX: usize = 100_000;

/// What an orphan sweep found (deleted by gc after its marker).
#[derive(Default, Debug)]
pub(crate) struct Orphans {
    pub keys: Vec<String>,
    pub bytes: u64,
    /// Every page of `packs/` was examined: the sweep may be recorded as done.
    pub complete: bool,
}

/// Is an orphan sweep due at gc's lease time `now` (one HEAD)?
pub(crate) async fn sweep_due(repo: &Repository, now: SystemTime) -> Result<bool> {
    match repo.store().head(SWEEP_KEY).await {
        Ok(m) => Ok(m
            .last_modified
            .is_none_or(|t| now.duration_since(t).unwrap_or_default() > ORPHAN_SWEEP_PERIOD)),
        Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// The orphan packs: listed under `packs/` page by page (memory: one page plus the
/// orphans), named by no counted index segment of `set`, of a holder with no lease
/// generation in `leases` (gc's listing, made before `set` was loaded) that no intent of
/// a leased holder lists as adopted, not of or named by a `lost` root's writer,
/// and with a store time more than `LEASE_TTL + SKEW` before `now` (gc's lease). The
/// safety argument is format-spec §5, "Orphan packs".
pub(crate) async fn find_orphan_packs(
    repo: &Repository,
    set: &SegmentSet,
    leases: &[LeaseView],
    me: &str,
    now: SystemTime,
    lost: &Lost,
) -> Result<Orphans> {
    let mut named = named_packs(set);
    named.extend(lost.packs.iter().map(String::as_str));
    let leased: HashSet<&str> = leases
        .iter()
        .map(|l| l.holder.as_str())
        .chain(std::iter::once(me))
        .chain(lost.roots.keys().map(String::as_str))
        .collect();
    let mut adopted: HashSet<String> = HashSet::new();
    for o in repo.list_all("intents/").await? {
        if !leased.contains(o.key.trim_start_matches("intents/")) {
            continue;
        }
        let Some(bytes) = repo.get_opt(&o.key).await? else {
            continue;
        };
        match Intent::decode(&o.key, &bytes) {
            Ok(i) => adopted.extend(i.adopted),
            // Which holders it adopted is unknown: sweep nothing this time.
            Err(e) => {
                tracing::warn!("orphan sweep skipped: {e}");
                return Ok(Orphans::default());
            }
        }
    }
    let mut out = Orphans::default();
    let mut after: Option<String> = None;
    loop {
        let page = repo.store().list("packs/", after.as_deref(), 1000).await?;
        let n = page.len();
        after = page.last().map(|m| m.key.clone());
        for o in page {
            let name = o.key.rsplit('/').next().unwrap_or_default();
            let holder = segment_writer(name);
            let old = o
                .last_modified
                .is_some_and(|t| now.duration_since(t).unwrap_or_default() > LEASE_TTL + SKEW);
            if !crate::repo::format::ids::is_time_id(holder)
                || named.contains(name)
                || leased.contains(holder)
                || adopted.contains(holder)
                || !old
            {
                continue;
            }
            out.bytes += o.size;
            out.keys.push(o.key);
            if out.keys.len() >= ORPHANS_MAX {
                return Ok(out);
            }
        }
        if n < 1000 {
            out.complete = true;
            return Ok(out);
        }
    }
}

/// Writers whose root was committed and is now missing (format-spec §11.1, "Lost roots"):
/// the segments [`lost_root_segments`] finds whose root has a valid verdict
/// and whose root key no longer
/// exists (a HEAD says so: a void root still exists and its writer is a zombie). Such a
/// writer is damage, not a dead writer: its
/// segments are the only record of its counts and its packs may hold blobs the other
/// snapshots reach, so gc keeps both and reports the root.
pub(crate) async fn lost_writers(repo: &Repository, set: &SegmentSet) -> Result<Lost> {
    let mut out = std::collections::BTreeMap::new();
    for (key, commit) in lost_root_segments(repo, set).await? {
        // Only a root seen committed (its valid verdict, recorded by its writer right
        // after the commit's HEAD check or by the first gc, repair or delete) is lost: a
        // zombie's segment also names a root that does not exist and that no lease, intent
        // or checkpoint explains, and gc must reclaim it (format-spec §5, zombies).
        let writer = segment_writer(&key).to_string();
        if set
            .markers
            .judged
            .contains(&(commit.clone(), writer.clone()))
        {
            out.insert(writer, commit);
        }
    }
    let mut lost = std::collections::BTreeMap::new();
    for (holder, commit) in out {
        match repo.store().head(&commit).await {
            Err(e) if e.kind() == StoreErrorKind::NotFound => {
                lost.insert(holder, commit);
            }
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut packs = HashSet::new();
    for o in &set.uncounted {
        if !o.key.starts_with("index/") || !lost.contains_key(segment_writer(&o.key)) {
            continue;
        }
        match repo.segment_head(&o.key).await {
            Ok(h) => packs.extend(h.meta.packs.iter().cloned()),
            Err(e) if crate::repo::error::is_damage(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Lost { roots: lost, packs })
}

/// What [`lost_writers`] found.
#[derive(Default, Debug)]
pub(crate) struct Lost {
    /// Writer (holder) → the root key it committed, now missing.
    pub roots: std::collections::BTreeMap<String, String>,
    /// Packs their index segments name (never orphans while the root may come back).
    pub packs: HashSet<String>,
}
/// Segments that count for nothing because the root they name as their commit does not
/// exist (or is void), of a writer that holds no lease and left no intent or checkpoint
/// (a writer deletes its intent only after its commit; a dead one's intent outlives its
/// segments, gc removes them first), or that has a valid verdict on that root (it was
/// seen committed): a root lost after its commit looks exactly so, and
/// the snapshots that reused its blobs then miss them. Returns (segment key, commit).
/// Repair keeps these segments (putting the root back makes them count again).
pub(crate) async fn lost_root_segments(
    repo: &Repository,
    set: &SegmentSet,
) -> Result<Vec<(String, String)>> {
    if set.uncounted.is_empty() {
        return Ok(Vec::new());
    }
    let mut busy: HashSet<String> = (super::lease::list_leases(repo.store().as_ref()).await?)
        .into_iter()
        .map(|l| l.holder)
        .collect();
    for o in repo.list_all("intents/").await? {
        busy.insert(o.key.trim_start_matches("intents/").to_string());
    }
    for o in repo.list_all("checkpoints/").await? {
        busy.insert(o.key.split('/').nth(1).unwrap_or_default().to_string());
    }
    let mut out = Vec::new();
    for o in &set.uncounted {
        let writer = segment_writer(&o.key);
        let h = match repo.segment_head(&o.key).await {
            Ok(h) => h,
            Err(e) if crate::repo::error::is_damage(&e) => continue,
            Err(e) => return Err(e),
        };
        let commit = &h.meta.commit;
        // A valid verdict on the root names it seen committed, whatever the writer left.
        let judged = (set.markers.judged).contains(&(commit.clone(), writer.to_string()));
        if commit.starts_with("snapshots/")
            && !set.markers.roots.contains_key(commit)
            && !set.markers.damaged_commits.contains(commit)
            && (judged || !busy.contains(writer))
        {
            out.push((o.key.clone(), commit.clone()));
        }
    }
    Ok(out)
}

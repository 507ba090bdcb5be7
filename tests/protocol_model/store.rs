//! The modelled repository: objects with store times, and the facts every reader derives from
//! them (voidness, counted segments, counts, locations). This is format-spec/repository.md
//! §4–§7 read literally, independent of the crate: `src/repo/lease.rs` `fenced` (voidness),
//! `src/repo/repository.rs` `load_segments` (counted segments), `src/repo/gc.rs` (counts).

use std::collections::BTreeMap;

/// A holder id (writer, delete, gc, repair; also the snapshot id of a backup's root).
pub type H = u8;
/// A blob id (index into `[_; NB]`).
pub type Blob = usize;
/// A set of blobs (bit `b`).
pub type Blobs = u8;

/// Chunk shared by every snapshot: the one issue 20's finding 1 loses.
pub const X: Blob = 0;
/// Chunk freed by an old, processable delete, in the same pack as `X` (so gc processes it).
pub const Z: Blob = 1;
/// The new chunk every backup stores.
pub const Y: Blob = 2;
pub const NB: usize = 3;
pub const BLOB_NAMES: [&str; NB] = ["X", "Z", "Y"];

/// Snapshot of volume `w` holding X and Z, deleted long ago (its tombstone is processable).
pub const SZ: H = 0;
/// Snapshot of the shared volume `v` (the parent of both writers), holding X.
pub const S0: H = 1;
/// Snapshot of volume `u`, holding X.
pub const S1: H = 2;
/// The old delete of `SZ`.
pub const DOLD: H = 3;
pub const W1: H = 4;
pub const W2: H = 5;
pub const D1: H = 6;
pub const D2: H = 7;
pub const G: H = 8;
pub const R: H = 9;
/// Holders of the gc/repair/gc runs of the quiescence closure (P3).
pub const CLOSE: [H; 3] = [10, 11, 12];
pub const HOLDER_NAMES: [&str; 13] = [
    "Sz", "S0", "S1", "Dold", "W1", "W2", "D1", "D2", "G", "R", "G'", "R'", "G''",
];

/// Lease TTL in ticks of the store clock. SKEW is 0: the model's store clock is exact, so the
/// margin the spec adds on top of every age comparison is not needed for its safety.
pub const TTL: u8 = 1;
pub const SKEW: u8 = 0;

/// A refs delta of `d` for every blob of `blobs`.
pub fn deltas(blobs: Blobs, d: i8) -> [i8; NB] {
    let mut delta = [0i8; NB];
    for (b, x) in delta.iter_mut().enumerate() {
        if blobs & bit(b) != 0 {
            *x = d;
        }
    }
    delta
}

pub fn bit(b: Blob) -> Blobs {
    1 << b
}
pub fn hbit(h: H) -> u16 {
    1 << h
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Key {
    Config,
    /// `leases/<h>/<gen>`.
    Lease(H, u8),
    /// `leases/<h>/9999999999`: an adoption claim (§12.2), a lease generation of `h`.
    Claim(H),
    Intent(H),
    Checkpoint(H),
    /// The one pack of holder `h` (`packs/xx/<h>-p000000`).
    Pack(H),
    Index(H),
    Refs(H),
    /// `snapshots/<volume>/<h>`: root of snapshot `h`, written by backup `h`.
    Root(H),
    /// `tombstones/<volume>/<snapshot>` (one generation: the two deletes target different snapshots).
    Tomb(H),
    /// `gc/<seq>`: marker of a gc or a repair.
    Gc(u8),
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Body {
    Plain,
    Intent {
        adopted: Option<H>,
        adopted_by: Option<H>,
    },
    Pack(Blobs),
    /// Index segment: blob → pack holder, and the packs a gc declared dead.
    Index {
        entries: Vec<(Blob, H)>,
        dead: u16,
    },
    /// Refs segment: count deltas and FREED flags.
    Refs {
        delta: [i8; NB],
        freed: Blobs,
    },
    Root {
        blobs: Blobs,
        lease_time: u8,
    },
    Tomb {
        holder: H,
        lease_time: u8,
    },
    /// gc marker; `freed` = a repair's release segment (§11.2); `verdicts` = the voidness of
    /// every marker this run judged (the recorded-verdict rule of finding 3).
    Gc {
        holder: H,
        lease_time: u8,
        freed: bool,
        verdicts: Vec<(Key, bool)>,
    },
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Obj {
    /// Last-Modified (store time).
    pub lm: u8,
    /// Creation rank among index segments ("newest location" wins).
    pub cseq: u8,
    pub body: Body,
}

/// Which gc protection rule (issue 20 finding 1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GcRule {
    /// Before the fix: protect only blobs FREED by deletes after the cutoff; any located
    /// entry of a processed pack with count ≤ 0 is dead.
    FreedOnly,
    /// The fix: protect every blob any not-yet-processable delete decremented; candidates are
    /// all blobs processable deletes decremented, garbage iff the re-summed count is 0.
    Decremented,
}

/// What Last-Modified a create-if-absent gives (finding 2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StoreTime {
    /// Before the fix (directory store: temp file + link): the time of the write.
    WriteTime,
    /// Requirement: the time the key became visible.
    Visible,
}

/// How voidness is decided (finding 3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdicts {
    /// Before the fix: re-derived from Last-Modified by every reader.
    Rederive,
    /// The fix: the first gc/repair that judges a marker records its verdict in its own
    /// marker; later readers use it; a gc/repair that meets an unjudged marker whose lease
    /// time predates `config`'s Last-Modified (a copied repository) refuses to run.
    Recorded,
}

/// How an adoption claim decides that the adopted holder was never judged dead (§12.2 step 1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ClaimRule {
    /// Before the fix: claim time − newest other generation ≤ TTL. A zombie's fenced
    /// renewal is a fresh generation, so it passes after a gc judged the holder dead.
    NewestGeneration,
    /// `checkpoint::claim` (`lease::chain_unbroken`): the generations are exactly `0..=n`
    /// and, in order and ending with the claim, each at most TTL after the previous one (a
    /// gap means the holder was fenced and may have been judged dead).
    UnbrokenChain,
}

#[derive(Clone, Copy, Debug)]
pub struct Cfg {
    pub name: &'static str,
    pub gc_rule: GcRule,
    pub store_time: StoreTime,
    pub verdicts: Verdicts,
    /// Enable the Copy action (a whole-repository copy that resets every Last-Modified).
    pub copy: bool,
    /// Which actors take part.
    pub writers: &'static [H],
    pub deleters: &'static [H],
    pub gc: bool,
    pub repair: bool,
    /// W2 may adopt W1's checkpoint (§12.2).
    pub adopt: bool,
    pub claim_rule: ClaimRule,
    /// First and last tick of the clock (the initial repository's objects are at time 0).
    pub t0: u8,
    pub tmax: u8,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct Store {
    pub objs: BTreeMap<Key, Obj>,
}

impl Store {
    pub fn get(&self, k: Key) -> Option<&Obj> {
        self.objs.get(&k)
    }
    pub fn has(&self, k: Key) -> bool {
        self.objs.contains_key(&k)
    }
    /// Create-if-absent: false if the key exists (the caller lost).
    pub fn create(&mut self, k: Key, lm: u8, body: Body) -> bool {
        if self.has(k) {
            return false;
        }
        self.put(k, lm, body);
        true
    }
    /// Plain PUT (overwrites). Only index segments get a creation rank (all "newest
    /// location" needs); other objects get 0, so creation order does not split states.
    pub fn put(&mut self, k: Key, lm: u8, body: Body) {
        let cseq = match k {
            Key::Index(_) => {
                1 + self
                    .objs
                    .iter()
                    .filter(|(k, _)| matches!(k, Key::Index(_)))
                    .map(|(_, o)| o.cseq)
                    .max()
                    .unwrap_or(0)
            }
            _ => 0,
        };
        self.objs.insert(k, Obj { lm, cseq, body });
    }
    pub fn del(&mut self, k: Key) {
        self.objs.remove(&k);
    }
    pub fn pack(&self, p: H) -> Blobs {
        match self.get(Key::Pack(p)).map(|o| &o.body) {
            Some(Body::Pack(b)) => *b,
            _ => 0,
        }
    }
    /// Lease generations (claim included) of `h`: (gen 0 time or oldest, newest time).
    pub fn lease_times(&self, h: H) -> Option<(u8, u8)> {
        let mut r: Option<(u8, u8)> = None;
        for (k, o) in &self.objs {
            let mine = matches!(k, Key::Lease(x, _) | Key::Claim(x) if *x == h);
            if mine {
                r = Some(match r {
                    None => (o.lm, o.lm),
                    Some((s, n)) => (s.min(o.lm), n.max(o.lm)),
                });
            }
        }
        r
    }
    pub fn marker_keys(&self) -> Vec<Key> {
        self.objs
            .keys()
            .filter(|k| matches!(k, Key::Root(_) | Key::Tomb(_) | Key::Gc(_)))
            .copied()
            .collect()
    }
}

fn lease_time(b: &Body) -> Option<u8> {
    match b {
        Body::Root { lease_time, .. }
        | Body::Tomb { lease_time, .. }
        | Body::Gc { lease_time, .. } => Some(*lease_time),
        _ => None,
    }
}

/// The verdict recorded for `k` by the earliest non-void gc marker that judged it.
pub fn recorded(s: &Store, cfg: &Cfg, k: Key) -> Option<bool> {
    if cfg.verdicts != Verdicts::Recorded {
        return None;
    }
    for (gk, o) in s.objs.range(Key::Gc(0)..=Key::Gc(u8::MAX)) {
        if *gk >= k && matches!(k, Key::Gc(_)) {
            break;
        }
        if let Body::Gc { verdicts, .. } = &o.body {
            if let Some((_, v)) = verdicts.iter().find(|(m, _)| *m == k) {
                if !void(s, cfg, *gk) {
                    return Some(*v);
                }
            }
        }
    }
    None
}

/// §6 Fencing: a marker is void if its Last-Modified is more than TTL after its lease time.
/// An absent key is void (it commits nothing).
pub fn void(s: &Store, cfg: &Cfg, k: Key) -> bool {
    let Some(o) = s.get(k) else { return true };
    if let Some(v) = recorded(s, cfg, k) {
        return v;
    }
    let lt = lease_time(&o.body).expect("a marker");
    o.lm > lt.saturating_add(TTL)
}

/// The derived view every actor reads: what counts, the counts, the locations.
#[derive(Clone, Debug)]
pub struct View {
    /// Holders with a non-void marker committing their segments.
    pub committed: u16,
    /// Committed holders whose marker is a delete's tombstone or a repair's `freed` marker,
    /// with that marker's Last-Modified.
    pub releases: Vec<(H, u8)>,
    pub count: [i8; NB],
    /// Newest location of each blob through counted index segments, minus dead packs.
    pub loc: [Option<H>; NB],
    /// Packs a counted index segment names (minus dead packs).
    pub named: u16,
    /// Snapshots with a non-void root and no non-void tombstone, and their blobs.
    pub live_roots: Vec<(H, Blobs)>,
    /// Snapshots with a non-void root; with a non-void tombstone.
    pub valid_roots: u16,
    pub deleted: u16,
}

type IndexSeg<'a> = (u8, &'a Vec<(Blob, H)>, u16);

pub fn view(s: &Store, cfg: &Cfg) -> View {
    let mut committed = 0u16;
    let mut valid_roots = 0u16;
    let mut releases = Vec::new();
    let mut deleted = 0u16;
    for k in s.marker_keys() {
        if void(s, cfg, k) {
            continue;
        }
        let o = s.get(k).unwrap();
        match (&k, &o.body) {
            (Key::Root(h), _) => {
                committed |= hbit(*h);
                valid_roots |= hbit(*h);
            }
            (Key::Tomb(snap), Body::Tomb { holder, .. }) => {
                committed |= hbit(*holder);
                deleted |= hbit(*snap);
                releases.push((*holder, o.lm));
            }
            (Key::Gc(_), Body::Gc { holder, freed, .. }) => {
                committed |= hbit(*holder);
                if *freed {
                    releases.push((*holder, o.lm));
                }
            }
            _ => {}
        }
    }
    let mut count = [0i8; NB];
    // (creation rank, entries, dead packs) of each counted index segment.
    let mut idx: Vec<IndexSeg> = Vec::new();
    for (k, o) in &s.objs {
        match (k, &o.body) {
            (Key::Refs(h), Body::Refs { delta, .. }) if committed & hbit(*h) != 0 => {
                for b in 0..NB {
                    count[b] += delta[b];
                }
            }
            (Key::Index(h), Body::Index { entries, dead }) if committed & hbit(*h) != 0 => {
                idx.push((o.cseq, entries, *dead));
            }
            _ => {}
        }
    }
    idx.sort_by_key(|e| e.0);
    let dead: u16 = idx.iter().fold(0, |a, e| a | e.2);
    let mut loc = [None; NB];
    let mut named = 0u16;
    for (_, entries, _) in &idx {
        for &(b, p) in entries.iter() {
            loc[b] = Some(p);
            named |= hbit(p);
        }
    }
    named &= !dead;
    for l in loc.iter_mut() {
        if l.is_some_and(|p| dead & hbit(p) != 0) {
            *l = None;
        }
    }
    let mut live_roots = Vec::new();
    for (k, o) in &s.objs {
        if let (Key::Root(h), Body::Root { blobs, .. }) = (k, &o.body) {
            if committed & hbit(*h) != 0 && deleted & hbit(*h) == 0 {
                live_roots.push((*h, *blobs));
            }
        }
    }
    View {
        committed,
        releases,
        count,
        loc,
        named,
        live_roots,
        valid_roots,
        deleted,
    }
}

impl View {
    /// Each blob's count as the live roots alone make it (what repair sets, what P3 expects).
    pub fn expected_counts(&self) -> [i8; NB] {
        let mut expected = [0i8; NB];
        for &(_, blobs) in &self.live_roots {
            for (b, e) in expected.iter_mut().enumerate() {
                if blobs & bit(b) != 0 {
                    *e += 1;
                }
            }
        }
        expected
    }

    pub fn reachable(&self) -> Blobs {
        self.live_roots.iter().fold(0, |a, r| a | r.1)
    }
    /// A reader can fetch `b`: its newest location's pack exists and holds it.
    pub fn available(&self, s: &Store, b: Blob) -> bool {
        self.loc[b].is_some_and(|p| s.pack(p) & bit(b) != 0)
    }
}

//! The actors: each is a sequential program whose steps are single store operations (or a
//! read of the store plus the local decision it leads to). A step's name says which code it
//! stands for. An actor that is never scheduled again has crashed or is paused; a paused
//! actor scheduled after the clock moved on is a zombie.

use super::store::*;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Kind {
    Writer,
    Deleter,
    Gc,
    Repair,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Status {
    Running,
    Done,
    /// Stopped without committing (fenced, lost a race, refused): it writes nothing more.
    Failed,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Actor {
    pub kind: Kind,
    pub h: H,
    pub pc: u8,
    pub status: Status,
    /// Lease generation number and the store time of the newest one.
    pub gen: u8,
    pub last: u8,
    /// Writer: root write time (two-phase create); reused X; blobs adopted from W1's pack;
    /// the claim's store time; whether it wrote a checkpoint.
    pub wt: u8,
    pub reuse_x: bool,
    pub adopted: Blobs,
    pub claim_t: u8,
    pub checkpointed: bool,
    /// Deleter: the snapshot, decremented and freed blobs.
    pub target: H,
    pub dec: Blobs,
    pub freed: Blobs,
    /// gc / repair: lease time, cutoff, holders with a lease generation at the listing, dead
    /// ones, committed at the view, processed (dead) packs, moved blobs, orphan packs,
    /// marker seq, verdicts; repair's deltas and strays; intents read by the dead-writer clean.
    pub now_gc: u8,
    pub cutoff: u8,
    pub leased: u16,
    pub dead: u16,
    pub committed: u16,
    pub dead_packs: u16,
    pub moved: Blobs,
    pub orphans: u16,
    pub seq: u8,
    pub verdicts: Vec<(Key, bool)>,
    pub delta: [i8; NB],
    pub listed: Vec<Key>,
    pub strays: Vec<Key>,
    pub intents_read: Vec<(H, Option<H>, Option<H>)>,
}

impl Actor {
    pub fn new(kind: Kind, h: H, target: H) -> Actor {
        Actor {
            kind,
            h,
            pc: 0,
            status: Status::Running,
            gen: 0,
            last: 0,
            wt: 0,
            reuse_x: false,
            adopted: 0,
            claim_t: 0,
            checkpointed: false,
            target,
            dec: 0,
            freed: 0,
            now_gc: 0,
            cutoff: 0,
            leased: 0,
            dead: 0,
            committed: 0,
            dead_packs: 0,
            moved: 0,
            orphans: 0,
            seq: 0,
            verdicts: Vec::new(),
            delta: [0; NB],
            listed: Vec::new(),
            strays: Vec::new(),
            intents_read: Vec::new(),
        }
    }
}

/// Everything a step may touch: the store, the clock, the configuration and the ghost set of
/// holders a gc judged dead and cleaned (for P2).
pub struct Ctx<'a> {
    pub s: &'a mut Store,
    pub now: u8,
    pub cfg: &'a Cfg,
    pub judged_dead: &'a mut u16,
}

/// `lease::Lease::acquire`: generation 0.
fn lease0(c: &mut Ctx, a: &mut Actor) {
    c.s.create(Key::Lease(a.h, 0), c.now, Body::Plain);
    a.last = c.now;
    a.now_gc = c.now;
}

/// `lease::Lease::try_renew`: next generation; fenced if more than TTL after the previous
/// one, or (a writer that checkpointed) if an adoption claim exists.
fn renew(c: &mut Ctx, a: &mut Actor) -> bool {
    a.gen += 1;
    c.s.create(Key::Lease(a.h, a.gen), c.now, Body::Plain);
    if c.now - a.last > TTL || (a.checkpointed && c.s.has(Key::Claim(a.h))) {
        a.status = Status::Failed;
        return false;
    }
    a.last = c.now;
    true
}

/// `lease::Lease::release`: delete its generations (the claim is another holder's object).
fn release(c: &mut Ctx, a: &mut Actor) {
    for g in 0..=a.gen {
        c.s.del(Key::Lease(a.h, g));
    }
    a.status = Status::Done;
}

impl Actor {
    /// A stopped actor keeps only who it was and how it ended (its locals would only split
    /// states that behave alike).
    pub fn canonical(&mut self) {
        if self.status != Status::Running {
            *self = Actor { status: self.status, ..Actor::new(self.kind, self.h, self.target) };
        }
    }
}

/// Step names, for traces.
pub fn step_name(a: &Actor) -> &'static str {
    const W: [&str; 13] = [
        "lease gen 0 (Lease::acquire)",
        "view: markers, segments, reuse X iff count>0 and located (Writer/backup view)",
        "adoption claim leases/W1/9999999999 (checkpoint::claim)",
        "transfer: own intent adopted=[W1] (checkpoint::take_over)",
        "transfer: mark intents/W1 adopted_by, delete its checkpoint",
        "intent (Writer::write_intent)",
        "pack upload (Writer::seal)",
        "intent check after upload (writer::confirm_intent); W1: checkpoint (Checkpoint::write)",
        "-",
        "index + refs segments (Writer::flush)",
        "pre-commit renewal (Lease::check_before_commit)",
        "root: write (store put_if_absent, first half)",
        "root: visible + HEAD fence check (commit::commit_root); then release",
    ];
    const D: [&str; 5] = [
        "lease gen 0",
        "view: counts, decrement, FREED iff own view reaches 0 (delete::walk)",
        "refs segment (delete_attempt)",
        "renewal",
        "tombstone create-if-absent + HEAD fence check; release",
    ];
    const GC: [&str; 9] = [
        "lease gen 0 (gc_with)",
        "list leases: dead holders, cutoff (list_leases)",
        "view: candidates, protection, dead packs, orphans (gc_with steps 1-2, find_orphan_packs)",
        "repack: intent, new pack, index segment with dead_packs",
        "renewal",
        "gc/<seq> create-if-absent + HEAD fence check (commit_gc_marker)",
        "delete dead packs and orphans",
        "dead writers: intent, uncounted segments, checkpoints, packs (stale::clean_dead_writer)",
        "dead writers: re-probe packs, delete leases; unleased holders (stale::sweep_unleased); release",
    ];
    const R: [&str; 8] = [
        "lease gen 0 (repair)",
        "list packs/, index/, refs/, intents/, checkpoints/",
        "list leases",
        "view + check: expected counts, FREED for unreferenced, strays (repair/mod.rs)",
        "delete strays (repair/sweep.rs)",
        "refs segment of corrections",
        "renewal",
        "gc/<seq> freed:true create-if-absent + HEAD fence check; release",
    ];
    let t: &[&str] = match a.kind {
        Kind::Writer => &W,
        Kind::Deleter => &D,
        Kind::Gc => &GC,
        Kind::Repair => &R,
    };
    t.get(a.pc as usize).copied().unwrap_or("?")
}

pub fn step(c: &mut Ctx, a: &mut Actor) {
    match a.kind {
        Kind::Writer => writer(c, a),
        Kind::Deleter => deleter(c, a),
        Kind::Gc => gc(c, a),
        Kind::Repair => repair(c, a),
    }
}

fn need(a: &Actor) -> Blobs {
    bit(Y) | if a.reuse_x { 0 } else { bit(X) }
}

/// backup: §5 write order, §12.2 adoption. W1 checkpoints; W2 may adopt it.
fn writer(c: &mut Ctx, a: &mut Actor) {
    let h = a.h;
    match a.pc {
        0 => {
            lease0(c, a);
            a.pc = 1;
        }
        1 => {
            let v = view(c.s, c.cfg);
            a.reuse_x = v.count[X] > 0 && v.available(c.s, X);
            let adopt = c.cfg.adopt && h == W2 && c.s.has(Key::Checkpoint(W1));
            a.pc = if adopt { 2 } else { 5 };
        }
        2 => {
            a.pc = 5;
            if !c.s.create(Key::Claim(W1), c.now, Body::Plain) {
                return;
            }
            a.claim_t = c.now;
            let newest = c
                .s
                .objs
                .iter()
                .filter(|(k, _)| matches!(k, Key::Lease(x, _) if *x == W1))
                .map(|(_, o)| o.lm)
                .max();
            let ok = newest.is_some_and(|n| c.now - n <= TTL)
                && c.s.has(Key::Checkpoint(W1))
                && c.s.has(Key::Pack(W1));
            if ok {
                a.adopted = c.s.pack(W1);
                a.pc = 3;
            }
        }
        3 => {
            // Transfer only within TTL/2 of the claim (same tick here).
            if c.now != a.claim_t {
                a.status = Status::Failed;
                return;
            }
            c.s.put(Key::Intent(h), c.now, Body::Intent { adopted: Some(W1), adopted_by: None });
            a.pc = 4;
        }
        4 => {
            c.s.put(Key::Intent(W1), c.now, Body::Intent { adopted: None, adopted_by: Some(h) });
            c.s.del(Key::Checkpoint(W1));
            a.pc = if need(a) & !a.adopted != 0 { 6 } else { 9 };
        }
        5 => {
            c.s.put(Key::Intent(h), c.now, Body::Intent { adopted: None, adopted_by: None });
            a.pc = 6;
        }
        6 => {
            c.s.create(Key::Pack(h), c.now, Body::Pack(need(a) & !a.adopted));
            a.pc = 7;
        }
        7 => {
            if !c.s.has(Key::Intent(h)) {
                // Judged dead meanwhile: delete the pack, fenced.
                c.s.del(Key::Pack(h));
                a.status = Status::Failed;
                return;
            }
            if c.cfg.adopt && h == W1 {
                c.s.put(Key::Checkpoint(h), c.now, Body::Plain);
                a.checkpointed = true;
            }
            a.pc = 9;
        }
        9 => {
            let mut entries = Vec::new();
            for b in [X, Y] {
                if need(a) & bit(b) != 0 {
                    let p = if a.adopted & bit(b) != 0 { W1 } else { h };
                    entries.push((b, p));
                }
            }
            c.s.create(Key::Index(h), c.now, Body::Index { entries, dead: 0 });
            let mut delta = [0i8; NB];
            delta[X] = 1;
            delta[Y] = 1;
            c.s.create(Key::Refs(h), c.now, Body::Refs { delta, freed: 0 });
            a.pc = 10;
        }
        10 => {
            if renew(c, a) {
                a.pc = if c.cfg.store_time == StoreTime::WriteTime { 11 } else { 12 };
            }
        }
        11 => {
            a.wt = c.now;
            a.pc = 12;
        }
        _ => {
            if a.checkpointed && c.s.has(Key::Claim(h)) {
                a.status = Status::Failed;
                return;
            }
            let lm = if c.cfg.store_time == StoreTime::WriteTime { a.wt } else { c.now };
            let body = Body::Root { blobs: bit(X) | bit(Y), lease_time: a.last };
            c.s.create(Key::Root(h), lm, body);
            if void(c.s, c.cfg, Key::Root(h)) {
                a.status = Status::Failed;
                return;
            }
            c.s.del(Key::Intent(h));
            c.s.del(Key::Checkpoint(h));
            release(c, a);
        }
    }
}

/// delete: lease before view (§5), decrements, FREED where its own view reaches 0.
fn deleter(c: &mut Ctx, a: &mut Actor) {
    match a.pc {
        0 => {
            lease0(c, a);
            a.pc = 1;
        }
        1 => {
            let v = view(c.s, c.cfg);
            let live = v.live_roots.iter().find(|r| r.0 == a.target);
            let Some(&(_, blobs)) = live else {
                release(c, a);
                return;
            };
            a.dec = blobs;
            a.freed = (0..NB).filter(|&b| blobs & bit(b) != 0 && v.count[b] <= 1).fold(0, |m, b| m | bit(b));
            a.pc = 2;
        }
        2 => {
            let mut delta = [0i8; NB];
            for (b, d) in delta.iter_mut().enumerate() {
                if a.dec & bit(b) != 0 {
                    *d = -1;
                }
            }
            c.s.create(Key::Refs(a.h), c.now, Body::Refs { delta, freed: a.freed });
            a.pc = 3;
        }
        3 => {
            if renew(c, a) {
                a.pc = 4;
            }
        }
        _ => {
            let body = Body::Tomb { holder: a.h, lease_time: a.last };
            let k = Key::Tomb(a.target);
            if !c.s.create(k, c.now, body) || void(c.s, c.cfg, k) {
                a.status = Status::Failed;
                return;
            }
            release(c, a);
        }
    }
}

/// A copied repository: an unjudged marker whose lease time predates `config`'s store time.
fn copied_repository(s: &Store, cfg: &Cfg) -> bool {
    let config_lm = s.get(Key::Config).map_or(0, |o| o.lm);
    s.marker_keys().into_iter().any(|k| {
        recorded(s, cfg, k).is_none()
            && match &s.get(k).unwrap().body {
                Body::Root { lease_time, .. }
                | Body::Tomb { lease_time, .. }
                | Body::Gc { lease_time, .. } => *lease_time < config_lm,
                _ => false,
            }
    })
}

fn judge_all(s: &Store, cfg: &Cfg) -> Vec<(Key, bool)> {
    if cfg.verdicts != Verdicts::Recorded {
        return Vec::new();
    }
    s.marker_keys()
        .into_iter()
        .filter(|k| recorded(s, cfg, *k).is_none())
        .map(|k| (k, void(s, cfg, k)))
        .collect()
}

fn next_seq(s: &Store) -> u8 {
    s.objs.keys().filter_map(|k| if let Key::Gc(n) = k { Some(*n + 1) } else { None }).max().unwrap_or(0)
}

/// Holders with a lease generation, and those whose newest is older than TTL + SKEW.
fn list_leases(s: &Store, me: H, now: u8) -> (u16, u16, u8) {
    let (mut leased, mut dead, mut cutoff) = (0u16, 0u16, now);
    for h in 0..16u8 {
        if h == me {
            continue;
        }
        if let Some((start, newest)) = s.lease_times(h) {
            leased |= hbit(h);
            // A generation created after gc's lease (newest > now) is live.
            if now.saturating_sub(newest) > TTL + SKEW {
                dead |= hbit(h);
            } else {
                cutoff = cutoff.min(start);
            }
        }
    }
    (leased, dead, cutoff.saturating_sub(SKEW))
}

/// gc: §5 gc order, §6 cutoff, §7 candidates, §5 dead writers and orphan sweep.
fn gc(c: &mut Ctx, a: &mut Actor) {
    let h = a.h;
    match a.pc {
        0 => {
            lease0(c, a);
            a.pc = 1;
        }
        1 => {
            (a.leased, a.dead, a.cutoff) = list_leases(c.s, h, a.now_gc);
            a.pc = 2;
        }
        2 => {
            if c.cfg.verdicts == Verdicts::Recorded && copied_repository(c.s, c.cfg) {
                a.status = Status::Failed;
                return;
            }
            gc_plan(c.s, c.cfg, a);
            a.pc = 3;
        }
        3 => {
            if a.dead_packs != 0 {
                c.s.put(Key::Intent(h), c.now, Body::Intent { adopted: None, adopted_by: None });
                if a.moved != 0 {
                    c.s.create(Key::Pack(h), c.now, Body::Pack(a.moved));
                }
                let entries = (0..NB).filter(|&b| a.moved & bit(b) != 0).map(|b| (b, h)).collect();
                c.s.create(Key::Index(h), c.now, Body::Index { entries, dead: a.dead_packs });
            }
            a.pc = 4;
        }
        4 => {
            if renew(c, a) {
                a.pc = 5;
            }
        }
        5 => {
            let body = Body::Gc { holder: h, lease_time: a.last, freed: false, verdicts: a.verdicts.clone() };
            if !c.s.create(Key::Gc(a.seq), c.now, body) || void(c.s, c.cfg, Key::Gc(a.seq)) {
                a.status = Status::Failed;
                return;
            }
            a.pc = 6;
        }
        6 => {
            for p in 0..16u8 {
                if (a.dead_packs | a.orphans) & hbit(p) != 0 {
                    c.s.del(Key::Pack(p));
                }
            }
            a.pc = 7;
        }
        7 => {
            a.intents_read.clear();
            for t in 0..16u8 {
                if a.dead & hbit(t) != 0 {
                    clean_dead_first(c, a, t);
                }
            }
            a.pc = 8;
        }
        _ => {
            for t in 0..16u8 {
                if a.dead & hbit(t) != 0 {
                    clean_dead_second(c, a, t);
                }
            }
            sweep_unleased(c, a);
            c.s.del(Key::Intent(h));
            release(c, a);
        }
    }
}

/// gc's decisions on its view (gc.rs steps 1–2 and `find_orphan_packs`).
fn gc_plan(s: &Store, cfg: &Cfg, a: &mut Actor) {
    let v = view(s, cfg);
    a.committed = v.committed;
    a.seq = next_seq(s);
    a.verdicts = judge_all(s, cfg);
    let (mut cand, mut prot) = (0 as Blobs, 0 as Blobs);
    for &(d, lm) in &v.releases {
        let Some(Body::Refs { delta, freed }) = s.get(Key::Refs(d)).map(|o| &o.body) else { continue };
        let touched = match cfg.gc_rule {
            GcRule::FreedOnly => *freed,
            GcRule::Decremented => (0..NB).filter(|&b| delta[b] < 0).fold(*freed, |m, b| m | bit(b)),
        };
        if lm < a.cutoff {
            cand |= touched;
        } else {
            prot |= touched;
        }
    }
    let garbage_blob = |b: Blob| match cfg.gc_rule {
        GcRule::FreedOnly => v.count[b] <= 0 && prot & bit(b) == 0,
        GcRule::Decremented => cand & bit(b) != 0 && v.count[b] == 0 && prot & bit(b) == 0,
    };
    a.dead_packs = 0;
    for b in 0..NB {
        if cand & bit(b) != 0 && garbage_blob(b) {
            if let Some(p) = v.loc[b] {
                a.dead_packs |= hbit(p);
            }
        }
    }
    a.moved = 0;
    for p in 0..16u8 {
        if a.dead_packs & hbit(p) != 0 {
            for b in 0..NB {
                if s.pack(p) & bit(b) != 0 && v.loc[b] == Some(p) && !garbage_blob(b) {
                    a.moved |= bit(b);
                }
            }
        }
    }
    // Orphan sweep (§5 (a)–(d)).
    a.orphans = 0;
    for (k, o) in &s.objs {
        let Key::Pack(p) = *k else { continue };
        let adopted_by_leased = s.objs.iter().any(|(ik, io)| {
            matches!((ik, &io.body), (Key::Intent(i), Body::Intent { adopted: Some(x), .. })
                if *x == p && a.leased & hbit(*i) != 0)
        });
        if v.named & hbit(p) == 0
            && a.leased & hbit(p) == 0
            && p != a.h
            && !adopted_by_leased
            && o.lm + TTL + SKEW < a.now_gc
        {
            a.orphans |= hbit(p);
        }
    }
}

/// `stale::clean_dead_writer`, first part: read the intent, delete uncounted segments,
/// checkpoints, and (uncommitted holder) its packs and those it adopted; delete the intent read.
fn clean_dead_first(c: &mut Ctx, a: &mut Actor, t: H) {
    let intent = match c.s.get(Key::Intent(t)).map(|o| &o.body) {
        Some(Body::Intent { adopted, adopted_by }) => Some((*adopted, *adopted_by)),
        _ => None,
    };
    let committed = a.committed & hbit(t) != 0;
    if !committed {
        c.s.del(Key::Index(t));
        c.s.del(Key::Refs(t));
        *c.judged_dead |= hbit(t);
    }
    c.s.del(Key::Checkpoint(t));
    if let Some((adopted, adopted_by)) = intent {
        a.intents_read.push((t, adopted, adopted_by));
        probe(c, a, t, adopted, adopted_by);
        c.s.del(Key::Intent(t));
    }
}

fn probe(c: &mut Ctx, a: &Actor, t: H, adopted: Option<H>, adopted_by: Option<H>) {
    if a.committed & hbit(t) != 0 {
        return;
    }
    let named = view(c.s, c.cfg).named;
    for p in [Some(t).filter(|_| adopted_by.is_none()), adopted].into_iter().flatten() {
        if named & hbit(p) == 0 {
            c.s.del(Key::Pack(p));
        }
    }
}

/// `stale::clean_dead_writer`, second part: probe again, then delete the listed generations.
fn clean_dead_second(c: &mut Ctx, a: &mut Actor, t: H) {
    if let Some(&(_, adopted, adopted_by)) = a.intents_read.iter().find(|i| i.0 == t) {
        probe(c, a, t, adopted, adopted_by);
    }
    let keys: Vec<Key> = c
        .s
        .objs
        .iter()
        .filter(|(k, o)| matches!(k, Key::Lease(x, _) | Key::Claim(x) if *x == t) && o.lm <= a.now_gc)
        .map(|(k, _)| *k)
        .collect();
    for k in keys {
        c.s.del(k);
    }
}

/// `stale::sweep_unleased`: holders without a lease whose uncommitted objects are old.
fn sweep_unleased(c: &mut Ctx, a: &mut Actor) {
    for t in 0..16u8 {
        if a.leased & hbit(t) != 0 || t == a.h {
            continue;
        }
        let mut newest: Option<u8> = None;
        for (k, o) in &c.s.objs {
            let mine = match k {
                Key::Index(x) | Key::Refs(x) => *x == t && a.committed & hbit(t) == 0,
                Key::Intent(x) | Key::Checkpoint(x) => *x == t,
                _ => false,
            };
            if mine {
                newest = Some(newest.map_or(o.lm, |n: u8| n.max(o.lm)));
            }
        }
        if newest.is_some_and(|n| n + TTL + SKEW < a.now_gc) {
            clean_dead_first(c, a, t);
            clean_dead_second(c, a, t);
        }
    }
}

/// check --repair (§11).
fn repair(c: &mut Ctx, a: &mut Actor) {
    let h = a.h;
    match a.pc {
        0 => {
            lease0(c, a);
            a.pc = 1;
        }
        1 => {
            a.listed = c
                .s
                .objs
                .keys()
                .filter(|k| matches!(k, Key::Pack(_) | Key::Index(_) | Key::Refs(_) | Key::Intent(_) | Key::Checkpoint(_)))
                .copied()
                .collect();
            a.pc = 2;
        }
        2 => {
            (a.leased, a.dead, a.cutoff) = list_leases(c.s, h, a.now_gc);
            a.pc = 3;
        }
        3 => {
            if c.cfg.verdicts == Verdicts::Recorded && copied_repository(c.s, c.cfg) {
                a.status = Status::Failed;
                return;
            }
            repair_plan(c.s, c.cfg, a);
            a.pc = 4;
        }
        4 => {
            for k in std::mem::take(&mut a.strays) {
                c.s.del(k);
            }
            a.pc = 5;
        }
        5 => {
            if a.delta == [0; NB] && a.freed == 0 {
                release(c, a);
                return;
            }
            c.s.create(Key::Refs(h), c.now, Body::Refs { delta: a.delta, freed: a.freed });
            a.pc = 6;
        }
        6 => {
            if renew(c, a) {
                a.pc = 7;
            }
        }
        _ => {
            let body = Body::Gc { holder: h, lease_time: a.last, freed: true, verdicts: a.verdicts.clone() };
            if !c.s.create(Key::Gc(a.seq), c.now, body) || void(c.s, c.cfg, Key::Gc(a.seq)) {
                a.status = Status::Failed;
                return;
            }
            release(c, a);
        }
    }
}

fn repair_plan(s: &Store, cfg: &Cfg, a: &mut Actor) {
    let v = view(s, cfg);
    a.seq = next_seq(s);
    a.verdicts = judge_all(s, cfg);
    let mut expected = [0i8; NB];
    for &(_, blobs) in &v.live_roots {
        for (b, e) in expected.iter_mut().enumerate() {
            if blobs & bit(b) != 0 {
                *e += 1;
            }
        }
    }
    let mut flagged: Blobs = 0;
    for (k, o) in &s.objs {
        if let (Key::Refs(x), Body::Refs { freed, .. }) = (k, &o.body) {
            if v.committed & hbit(*x) != 0 {
                flagged |= freed;
            }
        }
    }
    a.freed = 0;
    for b in 0..NB {
        a.delta[b] = expected[b] - v.count[b];
        if expected[b] == 0 && flagged & bit(b) == 0 && v.loc[b].is_some() {
            a.freed |= bit(b);
        }
    }
    a.strays.clear();
    for k in &a.listed {
        let holder = match k {
            Key::Pack(x) | Key::Index(x) | Key::Refs(x) | Key::Intent(x) | Key::Checkpoint(x) => *x,
            _ => continue,
        };
        if a.leased & hbit(holder) != 0 || holder == a.h {
            continue;
        }
        let stray = match k {
            Key::Pack(p) => {
                let adopted = s.objs.iter().any(|(ik, io)| {
                    matches!((ik, &io.body), (Key::Intent(i), Body::Intent { adopted: Some(x), .. })
                        if x == p && a.leased & hbit(*i) != 0)
                });
                v.named & hbit(*p) == 0 && !adopted
            }
            Key::Index(x) | Key::Refs(x) => v.committed & hbit(*x) == 0,
            _ => true,
        };
        if stray {
            a.strays.push(*k);
        }
    }
}

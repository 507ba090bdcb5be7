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
    /// Packs a counted index segment names in gc's view (`stale::named_packs`).
    pub named: u16,
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
            named: 0,
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
pub(super) fn lease0(c: &mut Ctx, a: &mut Actor) {
    c.s.create(Key::Lease(a.h, 0), c.now, Body::Plain);
    a.last = c.now;
    a.now_gc = c.now;
}

/// `lease::Lease::try_renew`: next generation; fenced if more than TTL after the previous
/// one, or (a writer that checkpointed) if an adoption claim exists.
pub(super) fn renew(c: &mut Ctx, a: &mut Actor) -> bool {
    a.gen += 1;
    c.s.create(Key::Lease(a.h, a.gen), c.now, Body::Plain);
    if c.now - a.last > TTL || (a.checkpointed && c.s.has(Key::Claim(a.h))) {
        a.status = Status::Failed;
        return false;
    }
    a.last = c.now;
    true
}

/// A commit marker: create-if-absent, then the HEAD fence check (`commit::commit_root`,
/// `delete_attempt`, `commit_gc_marker`). False, and the actor failed, if it lost the
/// create or its marker is void.
pub(super) fn commit_marker(c: &mut Ctx, a: &mut Actor, k: Key, lm: u8, body: Body) -> bool {
    if !c.s.create(k, lm, body) || void(c.s, c.cfg, k) {
        a.status = Status::Failed;
        return false;
    }
    true
}

/// One step of the lease-then-view start every actor shares: generation 0 at `pc` 0.
/// True if this step was it.
pub(super) fn started(c: &mut Ctx, a: &mut Actor) -> bool {
    if a.pc != 0 {
        return false;
    }
    lease0(c, a);
    a.pc = 1;
    true
}

/// An intent that adopts nobody and was adopted by nobody.
pub(super) fn own_intent() -> Body {
    Body::Intent {
        adopted: None,
        adopted_by: None,
    }
}

/// `lease::Lease::release`: delete its generations (the claim is another holder's object).
pub(super) fn release(c: &mut Ctx, a: &mut Actor) {
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
            *self = Actor {
                status: self.status,
                ..Actor::new(self.kind, self.h, self.target)
            };
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
        Kind::Gc => super::collect::gc(c, a),
        Kind::Repair => super::collect::repair(c, a),
    }
}

fn need(a: &Actor) -> Blobs {
    bit(Y) | if a.reuse_x { 0 } else { bit(X) }
}

/// `lease::chain_unbroken`, literally: the generations (number, store time), sorted, are
/// exactly `0..=n`, each at most TTL after the previous one, and the claim (`until`) at most
/// TTL after generation `n`.
fn chain_unbroken(gens: &[(u8, u8)], until: u8) -> bool {
    let numbered = gens.iter().enumerate().all(|(i, g)| g.0 as usize == i);
    let times: Vec<u8> = gens.iter().map(|g| g.1).chain([until]).collect();
    !gens.is_empty() && numbered && times.windows(2).all(|w| w[1].saturating_sub(w[0]) <= TTL)
}

/// backup: §5 write order, §12.2 adoption. W1 checkpoints; W2 may adopt it.
fn writer(c: &mut Ctx, a: &mut Actor) {
    let h = a.h;
    if started(c, a) {
        return;
    }
    match a.pc {
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
            let mut gens: Vec<(u8, u8)> =
                c.s.objs
                    .iter()
                    .filter_map(|(k, o)| match k {
                        Key::Lease(x, g) if *x == W1 => Some((*g, o.lm)),
                        _ => None,
                    })
                    .collect();
            gens.sort();
            let alive = match c.cfg.claim_rule {
                ClaimRule::NewestGeneration => gens
                    .iter()
                    .map(|g| g.1)
                    .max()
                    .is_some_and(|n| c.now - n <= TTL),
                ClaimRule::UnbrokenChain => chain_unbroken(&gens, c.now),
            };
            let ok = alive && c.s.has(Key::Checkpoint(W1)) && c.s.has(Key::Pack(W1));
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
            c.s.put(
                Key::Intent(h),
                c.now,
                Body::Intent {
                    adopted: Some(W1),
                    adopted_by: None,
                },
            );
            a.pc = 4;
        }
        4 => {
            c.s.put(
                Key::Intent(W1),
                c.now,
                Body::Intent {
                    adopted: None,
                    adopted_by: Some(h),
                },
            );
            c.s.del(Key::Checkpoint(W1));
            a.pc = if need(a) & !a.adopted != 0 { 6 } else { 9 };
        }
        5 => {
            c.s.put(Key::Intent(h), c.now, own_intent());
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
                a.pc = if c.cfg.store_time == StoreTime::WriteTime {
                    11
                } else {
                    12
                };
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
            let lm = if c.cfg.store_time == StoreTime::WriteTime {
                a.wt
            } else {
                c.now
            };
            let body = Body::Root {
                blobs: bit(X) | bit(Y),
                lease_time: a.last,
            };
            // The root's key is the writer's own: it never loses the create.
            if !commit_marker(c, a, Key::Root(h), lm, body) {
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
    if started(c, a) {
        return;
    }
    match a.pc {
        1 => {
            let v = view(c.s, c.cfg);
            let live = v.live_roots.iter().find(|r| r.0 == a.target);
            let Some(&(_, blobs)) = live else {
                release(c, a);
                return;
            };
            a.dec = blobs;
            a.freed = (0..NB)
                .filter(|&b| blobs & bit(b) != 0 && v.count[b] <= 1)
                .fold(0, |m, b| m | bit(b));
            a.pc = 2;
        }
        2 => {
            let delta = deltas(a.dec, -1);
            c.s.create(
                Key::Refs(a.h),
                c.now,
                Body::Refs {
                    delta,
                    freed: a.freed,
                },
            );
            a.pc = 3;
        }
        3 => {
            if renew(c, a) {
                a.pc = 4;
            }
        }
        _ => {
            let body = Body::Tomb {
                holder: a.h,
                lease_time: a.last,
            };
            if !commit_marker(c, a, Key::Tomb(a.target), c.now, body) {
                return;
            }
            release(c, a);
        }
    }
}

//! The collectors: gc (`src/repo/gc.rs`, `src/repo/stale.rs`) and `check --repair`
//! (`src/repo/repair/`), as steps of the model.

use super::actors::*;
use super::store::*;

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
    s.objs
        .keys()
        .filter_map(|k| {
            if let Key::Gc(n) = k {
                Some(*n + 1)
            } else {
                None
            }
        })
        .max()
        .unwrap_or(0)
}

/// `verdict::refuse_if_copied` before a gc or repair acts on its view: true (and the
/// actor failed) on a copied repository.
fn refused_as_copy(c: &mut Ctx, a: &mut Actor) -> bool {
    let refused = c.cfg.verdicts == Verdicts::Recorded && copied_repository(c.s, c.cfg);
    if refused {
        a.status = Status::Failed;
    }
    refused
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
pub fn gc(c: &mut Ctx, a: &mut Actor) {
    let h = a.h;
    if started(c, a) {
        return;
    }
    match a.pc {
        1 => {
            (a.leased, a.dead, a.cutoff) = list_leases(c.s, h, a.now_gc);
            a.pc = 2;
        }
        2 => {
            if !refused_as_copy(c, a) {
                gc_plan(c.s, c.cfg, a);
                a.pc = 3;
            }
        }
        3 => {
            if a.dead_packs != 0 {
                c.s.put(Key::Intent(h), c.now, own_intent());
                if a.moved != 0 {
                    c.s.create(Key::Pack(h), c.now, Body::Pack(a.moved));
                }
                let entries = (0..NB)
                    .filter(|&b| a.moved & bit(b) != 0)
                    .map(|b| (b, h))
                    .collect();
                c.s.create(
                    Key::Index(h),
                    c.now,
                    Body::Index {
                        entries,
                        dead: a.dead_packs,
                    },
                );
            }
            a.pc = 4;
        }
        4 => {
            if renew(c, a) {
                a.pc = 5;
            }
        }
        5 => {
            let body = Body::Gc {
                holder: h,
                lease_time: a.last,
                freed: false,
                verdicts: a.verdicts.clone(),
            };
            if !commit_marker(c, a, Key::Gc(a.seq), c.now, body) {
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
    a.named = v.named;
    a.seq = next_seq(s);
    a.verdicts = judge_all(s, cfg);
    let (mut cand, mut prot) = (0 as Blobs, 0 as Blobs);
    for &(d, lm) in &v.releases {
        let Some(Body::Refs { delta, freed }) = s.get(Key::Refs(d)).map(|o| &o.body) else {
            continue;
        };
        let touched = match cfg.gc_rule {
            GcRule::FreedOnly => *freed,
            GcRule::Decremented => (0..NB)
                .filter(|&b| delta[b] < 0)
                .fold(*freed, |m, b| m | bit(b)),
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
        Some(Body::Intent {
            adopted,
            adopted_by,
        }) => Some((*adopted, *adopted_by)),
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
    for p in [Some(t).filter(|_| adopted_by.is_none()), adopted]
        .into_iter()
        .flatten()
    {
        if a.named & hbit(p) == 0 {
            c.s.del(Key::Pack(p));
        }
    }
}

/// `stale::clean_dead_writer`, second part: probe again, then delete the listed generations.
fn clean_dead_second(c: &mut Ctx, a: &mut Actor, t: H) {
    if let Some(&(_, adopted, adopted_by)) = a.intents_read.iter().find(|i| i.0 == t) {
        probe(c, a, t, adopted, adopted_by);
    }
    let keys: Vec<Key> =
        c.s.objs
            .iter()
            .filter(|(k, o)| {
                matches!(k, Key::Lease(x, _) | Key::Claim(x) if *x == t) && o.lm <= a.now_gc
            })
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
pub fn repair(c: &mut Ctx, a: &mut Actor) {
    let h = a.h;
    if started(c, a) {
        return;
    }
    match a.pc {
        1 => {
            a.listed =
                c.s.objs
                    .keys()
                    .filter(|k| {
                        matches!(
                            k,
                            Key::Pack(_)
                                | Key::Index(_)
                                | Key::Refs(_)
                                | Key::Intent(_)
                                | Key::Checkpoint(_)
                        )
                    })
                    .copied()
                    .collect();
            a.pc = 2;
        }
        2 => {
            (a.leased, a.dead, a.cutoff) = list_leases(c.s, h, a.now_gc);
            a.pc = 3;
        }
        3 => {
            if !refused_as_copy(c, a) {
                repair_plan(c.s, c.cfg, a);
                a.pc = 4;
            }
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
            c.s.create(
                Key::Refs(h),
                c.now,
                Body::Refs {
                    delta: a.delta,
                    freed: a.freed,
                },
            );
            a.pc = 6;
        }
        6 => {
            if renew(c, a) {
                a.pc = 7;
            }
        }
        _ => {
            let body = Body::Gc {
                holder: h,
                lease_time: a.last,
                freed: true,
                verdicts: a.verdicts.clone(),
            };
            if !commit_marker(c, a, Key::Gc(a.seq), c.now, body) {
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
    let expected = v.expected_counts();
    let mut flagged: Blobs = 0;
    for (k, o) in &s.objs {
        if let (Key::Refs(x), Body::Refs { freed, .. }) = (k, &o.body) {
            if v.committed & hbit(*x) != 0 {
                flagged |= freed;
            }
        }
    }
    a.freed = 0;
    for (b, &e) in expected.iter().enumerate() {
        a.delta[b] = e - v.count[b];
        if e == 0 && flagged & bit(b) == 0 && v.loc[b].is_some() {
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

//! The state, its transitions (actor steps, clock ticks, a whole-repository copy), the
//! properties P1–P3, and an exhaustive breadth-first search over 64-bit state fingerprints
//! (hash compaction, as TLC does) that prints the shortest counterexample.

use super::actors::*;
use super::store::*;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct State {
    pub now: u8,
    pub store: Store,
    pub actors: Vec<Actor>,
    pub copied: bool,
    /// Ghost: snapshots whose root was ever non-void (a reader may have listed it, its
    /// backup may have reported success).
    pub ever_valid: u16,
    /// Ghost: holders a gc judged dead and cleaned while uncommitted.
    pub judged_dead: u16,
    /// Ghost: snapshots a tombstone ever deleted (their blobs may go).
    pub ever_deleted: u16,
}

/// The repository every configuration starts from: Sz = {X, Z} (pack Sz holds X and Z),
/// S0 = {X} on the shared volume, S1 = {X}; Sz was deleted at time 0 (Z freed).
/// Counts: X = 2, Z = 0.
pub fn initial(cfg: &Cfg) -> State {
    let mut s = Store::default();
    s.put(Key::Config, 0, Body::Plain);
    s.put(Key::Pack(SZ), 0, Body::Pack(bit(X) | bit(Z)));
    let idx = Body::Index {
        entries: vec![(X, SZ), (Z, SZ)],
        dead: 0,
    };
    s.put(Key::Index(SZ), 0, idx);
    for (h, blobs) in [(SZ, bit(X) | bit(Z)), (S0, bit(X)), (S1, bit(X))] {
        let delta = deltas(blobs, 1);
        s.put(Key::Refs(h), 0, Body::Refs { delta, freed: 0 });
        s.put(
            Key::Root(h),
            0,
            Body::Root {
                blobs,
                lease_time: 0,
            },
        );
    }
    let mut delta = [0i8; NB];
    delta[X] = -1;
    delta[Z] = -1;
    s.put(
        Key::Refs(DOLD),
        0,
        Body::Refs {
            delta,
            freed: bit(Z),
        },
    );
    s.put(
        Key::Tomb(SZ),
        0,
        Body::Tomb {
            holder: DOLD,
            lease_time: 0,
        },
    );
    let mut actors = Vec::new();
    for &w in cfg.writers {
        actors.push(Actor::new(Kind::Writer, w, 0));
    }
    for &d in cfg.deleters {
        actors.push(Actor::new(Kind::Deleter, d, if d == D1 { S0 } else { S1 }));
    }
    if cfg.gc {
        actors.push(Actor::new(Kind::Gc, G, 0));
    }
    if cfg.repair {
        actors.push(Actor::new(Kind::Repair, R, 0));
    }
    let mut st = State {
        now: cfg.t0,
        store: s,
        actors,
        copied: false,
        ever_valid: 0,
        judged_dead: 0,
        ever_deleted: 0,
    };
    let v = view(&st.store, cfg);
    update_ghosts(&mut st, &v);
    st
}

/// One transition: `i < actors` steps actor `i`; then Tick; then Copy.
pub fn successor(st: &State, cfg: &Cfg, i: usize) -> Option<(State, View)> {
    let n = st.actors.len();
    let mut next = st.clone();
    if i < n {
        if st.actors[i].status != Status::Running {
            return None;
        }
        let mut a = next.actors[i].clone();
        let mut c = Ctx {
            s: &mut next.store,
            now: st.now,
            cfg,
            judged_dead: &mut next.judged_dead,
        };
        step(&mut c, &mut a);
        a.canonical();
        next.actors[i] = a;
    } else if i == n {
        if st.now >= cfg.tmax {
            return None;
        }
        next.now += 1;
    } else {
        if !cfg.copy || st.copied {
            return None;
        }
        // A copy that resets Last-Modified (`aws s3 sync`, replication, `cp -r`), which then
        // replaces the repository. Actors already started keep working on the original (they
        // stop here); those not started yet run on the copy.
        next.copied = true;
        for a in next.actors.iter_mut() {
            if a.status == Status::Running && a.pc > 0 {
                a.status = Status::Failed;
                a.canonical();
            }
        }
        for o in next.store.objs.values_mut() {
            o.lm = st.now;
        }
    }
    let v = view(&next.store, cfg);
    update_ghosts(&mut next, &v);
    Some((next, v))
}

pub fn label(st: &State, i: usize) -> String {
    let n = st.actors.len();
    if i < n {
        let a = &st.actors[i];
        format!("{:>4}: {}", HOLDER_NAMES[a.h as usize], step_name(a))
    } else if i == n {
        format!("tick → t={}", st.now + 1)
    } else {
        format!(
            "COPY the repository at t={} (every Last-Modified := {})",
            st.now, st.now
        )
    }
}

fn update_ghosts(st: &mut State, v: &View) {
    st.ever_valid |= v.valid_roots;
    st.ever_deleted |= v.deleted;
}

/// P1: no blob reachable from a committed root is deleted. (a) Every snapshot whose root was
/// ever non-void and that no tombstone ever deleted still has each of its blobs in some pack;
/// (b) every snapshot a reader sees now (non-void root, no non-void tombstone) can read each
/// blob through its newest counted location (not judged after a copy: there readers must
/// refuse until the operator's `--adopt-copy`, which is outside the model).
/// P2: a writer a gc judged dead (and cleaned) has no non-void root.
pub fn safety(st: &State, v: &View, cfg: &Cfg) -> Result<(), String> {
    let stored: Blobs = st.store.objs.values().fold(0, |m, o| match o.body {
        Body::Pack(b) => m | b,
        _ => m,
    });
    for (k, o) in &st.store.objs {
        let (Key::Root(h), Body::Root { blobs, .. }) = (k, &o.body) else {
            continue;
        };
        let kept = st.ever_valid & hbit(*h) != 0 && st.ever_deleted & hbit(*h) == 0;
        let visible = v.committed & hbit(*h) != 0 && v.deleted & hbit(*h) == 0 && !st.copied;
        for (b, name) in BLOB_NAMES.iter().enumerate() {
            let gone = (kept && stored & bit(b) == 0) || (visible && !v.available(&st.store, b));
            let lost = blobs & bit(b) != 0 && gone;
            if lost {
                return Err(format!(
                    "P1: snapshot {} (committed, not deleted) references blob {name} which is no longer stored",
                    HOLDER_NAMES[*h as usize]
                ));
            }
        }
    }
    for h in 0..16u8 {
        if st.judged_dead & hbit(h) != 0 && !void(&st.store, cfg, Key::Root(h)) {
            return Err(format!(
                "P2: writer {} was judged dead and cleaned by gc, yet its root is not void",
                HOLDER_NAMES[h as usize]
            ));
        }
    }
    Ok(())
}

/// P3 (quiescence): everyone still running crashes now; once every lease expired a gc, a
/// repair and a gc run alone; then nothing uncommitted is left and every stored blob is
/// reachable from a live snapshot (a copy shadowed by a newer location of a reachable blob
/// is dead space compaction reclaims, §6 "Known gaps", not modelled) and counts are exact.
pub fn quiesce(st: &State, cfg: &Cfg) -> Result<(), String> {
    let mut st = st.clone();
    for a in st.actors.iter_mut() {
        if a.status == Status::Running {
            a.status = Status::Failed;
        }
    }
    let runs = [
        (Kind::Gc, CLOSE[0]),
        (Kind::Repair, CLOSE[1]),
        (Kind::Gc, CLOSE[2]),
    ];
    for (kind, h) in runs {
        st.now += TTL + SKEW + 1;
        let mut a = Actor::new(kind, h, 0);
        while a.status == Status::Running {
            let mut c = Ctx {
                s: &mut st.store,
                now: st.now,
                cfg,
                judged_dead: &mut st.judged_dead,
            };
            step(&mut c, &mut a);
        }
        if a.status != Status::Done {
            return Err(format!(
                "P3: the closing {:?} run {} failed",
                kind, HOLDER_NAMES[h as usize]
            ));
        }
    }
    let v = view(&st.store, cfg);
    let reach = v.reachable();
    let expected = v.expected_counts();
    for (k, o) in &st.store.objs {
        let leak = match (k, &o.body) {
            (Key::Lease(..) | Key::Claim(_) | Key::Intent(_) | Key::Checkpoint(_), _) => true,
            (Key::Index(h) | Key::Refs(h), _) => v.committed & hbit(*h) == 0,
            (Key::Pack(_), Body::Pack(blobs)) => *blobs & !reach != 0,
            _ => false,
        };
        if leak {
            return Err(format!(
                "P3: after crash + gc + repair + gc, {k:?} is left over: {:?}",
                o.body
            ));
        }
    }
    for b in 0..NB {
        if (reach & bit(b) != 0 || v.loc[b].is_some()) && v.count[b] != expected[b] {
            return Err(format!(
                "P3: after crash + gc + repair + gc, blob {} has count {} but {} live references",
                BLOB_NAMES[b], v.count[b], expected[b]
            ));
        }
    }
    Ok(())
}

fn fingerprint<T: Hash>(t: &T) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// A guard for the machine, not a bound of the search: a configuration that grows past it
/// fails instead of being reported as checked.
const MAX_STATES: usize = 20_000_000;

/// Facts a configuration must reach, so that a safe verdict is not vacuous.
pub const REACHED_ADOPTED_COMMIT: u32 = 1;
pub const REACHED_JUDGED_DEAD: u32 = 2;
pub const REACHED_PACK_COLLECTED: u32 = 4;
pub const REACHED_RACING_DELETES_WITH_REUSE: u32 = 8;
pub const REACHED_REPAIR_RELEASE: u32 = 16;
pub const REACHED_FENCED_ROOT: u32 = 32;
pub const REACHED_COPY_REFUSED: u32 = 64;

fn facts(st: &State, v: &View, cfg: &Cfg) -> u32 {
    let s = &st.store;
    let valid = |k: Key| match k {
        Key::Root(h) => v.valid_roots & hbit(h) != 0,
        Key::Tomb(h) => v.deleted & hbit(h) != 0,
        _ => !void(s, cfg, k),
    };
    let mut f = 0;
    if valid(Key::Root(W2))
        && matches!(s.get(Key::Index(W2)).map(|o| &o.body), Some(Body::Index { entries, .. }) if entries.iter().any(|e| e.1 == W1))
    {
        f |= REACHED_ADOPTED_COMMIT;
    }
    if st.judged_dead != 0 {
        f |= REACHED_JUDGED_DEAD;
    }
    if !s.has(Key::Pack(SZ)) {
        f |= REACHED_PACK_COLLECTED;
    }
    if valid(Key::Tomb(S0)) && valid(Key::Tomb(S1)) && valid(Key::Root(W1)) {
        f |= REACHED_RACING_DELETES_WITH_REUSE;
    }
    if s.objs
        .iter()
        .any(|(k, o)| matches!(o.body, Body::Gc { freed: true, .. }) && valid(*k))
    {
        f |= REACHED_REPAIR_RELEASE;
    }
    if s.has(Key::Root(W1)) && !valid(Key::Root(W1)) {
        f |= REACHED_FENCED_ROOT;
    }
    if st.copied
        && st.actors.iter().any(|a| {
            matches!(a.kind, Kind::Gc | Kind::Repair) && a.status == Status::Failed && a.h != 0
        })
        && s.has(Key::Pack(SZ))
    {
        f |= REACHED_COPY_REFUSED;
    }
    f
}

pub struct Outcome {
    /// OR of the `REACHED_*` facts over every explored state.
    pub reached: u32,
    pub states: usize,
    pub transitions: usize,
    pub quiescence_checks: usize,
    pub seconds: f64,
    /// The violated property and the shortest trace reaching it.
    pub violation: Option<(String, Vec<String>)>,
}

/// Exhaustive BFS. P1/P2 are checked in every state, P3 in every state whose store differs
/// from all checked before (it depends only on the store and the ghosts; the actors crash).
pub fn explore(cfg: &Cfg, check_p3: bool, bfs: bool) -> Outcome {
    let t0 = std::time::Instant::now();
    let init = initial(cfg);
    let mut seen: HashSet<u64> = HashSet::new();
    let mut quiesced: HashSet<u64> = HashSet::new();
    let mut parents: Vec<(u32, u8)> = vec![(u32::MAX, 0)];
    // Breadth-first (shortest counterexample) when hunting one, depth-first (memory ∝ depth,
    // not ∝ frontier) when proving a configuration.
    let mut queue: VecDeque<(State, u32)> = VecDeque::new();
    seen.insert(fingerprint(&init));
    queue.push_back((init.clone(), 0));
    let mut transitions = 0;
    let n_actions = init.actors.len() + 2;
    let mut violation = None;
    let mut reached = 0;
    let pop = |q: &mut VecDeque<(State, u32)>| if bfs { q.pop_front() } else { q.pop_back() };
    'bfs: while let Some((st, idx)) = pop(&mut queue) {
        for i in 0..n_actions {
            let Some((next, v)) = successor(&st, cfg, i) else {
                continue;
            };
            transitions += 1;
            if !seen.insert(fingerprint(&next)) {
                continue;
            }
            parents.push((idx, i as u8));
            let nidx = (parents.len() - 1) as u32;
            reached |= facts(&next, &v, cfg);
            let mut bad = safety(&next, &v, cfg).err();
            if bad.is_none() && check_p3 && !next.copied {
                let key = fingerprint(&(&next.store, next.now, next.judged_dead));
                if quiesced.insert(key) {
                    bad = quiesce(&next, cfg).err();
                }
            }
            if let Some(msg) = bad {
                violation = Some((msg, trace(&init, cfg, &parents, nidx)));
                break 'bfs;
            }
            if seen.len() > MAX_STATES {
                panic!(
                    "[{}] more than {MAX_STATES} states: shrink the configuration",
                    cfg.name
                );
            }
            if seen.len() % 1_000_000 == 0 {
                println!(
                    "[{}] {} states, queue {}, {:.0} s",
                    cfg.name,
                    seen.len(),
                    queue.len(),
                    t0.elapsed().as_secs_f64()
                );
            }
            queue.push_back((next, nidx));
        }
    }
    Outcome {
        reached,
        states: seen.len(),
        transitions,
        quiescence_checks: quiesced.len(),
        seconds: t0.elapsed().as_secs_f64(),
        violation,
    }
}

fn trace(init: &State, cfg: &Cfg, parents: &[(u32, u8)], mut idx: u32) -> Vec<String> {
    let mut path = Vec::new();
    while parents[idx as usize].0 != u32::MAX {
        path.push(parents[idx as usize].1 as usize);
        idx = parents[idx as usize].0;
    }
    path.reverse();
    let mut st = init.clone();
    let mut out = Vec::new();
    for i in path {
        out.push(label(&st, i));
        st = successor(&st, cfg, i).expect("replayed step").0;
    }
    out
}

//! Damage suite (issue 13): a directory repository with three volumes (chunks shared
//! within and across volumes, several snapshots, a delete and a gc done, so roots,
//! tombstones, index and refs segments, packs, gc markers and the config all exist). The
//! cases are generated from listing that repository: for every object kind found (the
//! first key component; packs also by region: a frame, the footer, the trailer) a few
//! objects get each damage — a flipped bit, zeroed bytes, truncation, deletion, a swap with
//! another object of the same kind — plus a stray object under each marker and segment
//! prefix. New object kinds are covered as soon as the repository holds one.
//!
//! Each case runs on a copy of the repository, through the library (in process), with
//! every file aged past `LEASE_TTL + SKEW` and gc's cutoff so repair's age limit and gc's
//! protection of recent deletes hide nothing: restore of every snapshot, `check
//! --read-data`, `check --repair`, a delete, gc. The oracle: a restore never produces
//! wrong bytes; `check` is never clean over damage it reads; a repair reporting
//! `complete` with nothing damaged leaves a clean check; damage to one volume's marker
//! leaves the other volumes restoring; after the damaged object is put back every
//! snapshot not deleted restores bit-exact (nothing a root reaches was deleted). A few
//! cases also run through the binary for its exit codes.

use crate::repo_ops_util::{files_under, json_with_code, s};
use island::backup::{backup, BackupOptions, RawSource};
use island::repo::{CheckOptions, InitOptions, Repository};
use island::restore::{restore, RestoreTarget};
use island::store::{open_store, StoreOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const CS: usize = 16 << 10;
const SIZE: usize = 24 * CS;

/// A snapshot of the base repository and its contents.
#[derive(Clone)]
struct Snap {
    volume: String,
    id: String,
    data: Arc<Vec<u8>>,
}

struct Base {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    scratch: PathBuf,
    live: Vec<Snap>,
    /// Every backup's id (its segments' holder), deleted one included.
    all_ids: Vec<String>,
}

fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("tempdir")
    } else {
        tempfile::tempdir().expect("tempdir")
    }
}

async fn open(repo: &Path) -> island::Result<Repository> {
    let store = open_store(
        &format!("file://{}", repo.display()),
        &StoreOptions::default(),
    )
    .await
    .map_err(island::Error::from)?;
    Repository::open(store).await
}

/// Deterministic chunk `n` of a pattern shared by every volume (dedup across volumes).
fn chunk(n: u64) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(CS);
    while v.len() < CS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// Set every file's mtime (the directory store's Last-Modified) two hours back.
fn age(repo: &Path) {
    let then = SystemTime::now() - Duration::from_secs(2 * 3600);
    for f in files_under(repo, "") {
        let h = std::fs::File::options().write(true).open(&f).expect("open");
        h.set_modified(then).expect("set mtime");
    }
}

async fn back_up(repo: &Repository, scratch: &Path, volume: &str, data: &[u8]) -> String {
    let path = scratch.join(format!("{volume}.raw"));
    std::fs::write(&path, data).expect("write volume");
    let opts = BackupOptions {
        volume: volume.into(),
        ..Default::default()
    };
    let src = Arc::new(RawSource::open(&path).expect("open volume"));
    backup(repo, src, &opts).await.expect("backup").id
}

async fn build_base() -> Base {
    let dir = scratch_dir();
    let repo_dir = dir.path().join("repo");
    std::fs::create_dir_all(&repo_dir).expect("mkdir");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    let store = open_store(
        &format!("file://{}", repo_dir.display()),
        &StoreOptions::default(),
    )
    .await
    .expect("store");
    let repo = Repository::init(
        store,
        &InitOptions {
            chunk_size: CS as u32,
        },
    )
    .await
    .expect("init");
    let mut all = Vec::new();
    for (v, volume) in ["a", "b", "c"].into_iter().enumerate() {
        // Chunks 0..12 shared by every volume; the rest the volume's own.
        let mut data: Vec<u8> = (0..SIZE / CS)
            .flat_map(|i| {
                chunk(if i < 12 {
                    i as u64
                } else {
                    1000 * (v as u64 + 1) + i as u64
                })
            })
            .collect();
        for step in 0..3 - v.min(1) {
            if step > 0 {
                let at = (12 + step * 3) * CS;
                data[at..at + CS].copy_from_slice(&chunk(5000 + step as u64 * 10 + v as u64));
            }
            let id = back_up(&repo, &scratch, volume, &data).await;
            all.push(Snap {
                volume: volume.into(),
                id,
                data: Arc::new(data.clone()),
            });
        }
    }
    let all_ids = all.iter().map(|x| x.id.clone()).collect();
    let gone = all.remove(0);
    repo.delete_snapshot(&gone.volume, &gone.id)
        .await
        .expect("delete");
    age(&repo_dir);
    let g = repo.gc().await.expect("gc");
    assert!(g.blobs_collected > 0, "{g:?}");
    Base {
        _dir: dir,
        repo: repo_dir,
        scratch,
        live: all,
        all_ids,
    }
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Flip a bit at this offset from the start (negative: from the end).
    Flip(i64),
    /// Zero 16 bytes from the first non-zero byte at or after the middle.
    Zero,
    /// Keep the first half.
    Truncate,
    Delete,
    /// Exchange the contents with another object of the same kind.
    Swap,
    /// A 3-byte object with a name the format does not define, under this kind's prefix.
    Stray,
}

/// Offset `at` (negative: from the end) clamped into `len`.
fn offset(at: i64, len: usize) -> usize {
    let i = if at < 0 { len as i64 + at } else { at };
    i.clamp(0, len as i64 - 1) as usize
}

/// The damages of one object of `kind` (packs by region: a frame, the footer, the
/// trailer; others at their start, middle and end).
fn damages(kind: &str, len: usize) -> Vec<Damage> {
    let mut d = match kind {
        "packs" => vec![Damage::Flip(60), Damage::Flip(-40), Damage::Flip(-10)],
        _ => vec![
            Damage::Flip(0),
            Damage::Flip(len as i64 / 2),
            Damage::Flip(-1),
        ],
    };
    d.extend([Damage::Zero, Damage::Truncate, Damage::Delete, Damage::Swap]);
    d
}

fn kind_of(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

/// Keys of the repository by kind.
fn by_kind(repo: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in files_under(repo, "") {
        let key = f
            .strip_prefix(repo)
            .expect("under repo")
            .to_string_lossy()
            .into_owned();
        out.entry(kind_of(&key).to_string()).or_default().push(key);
    }
    for keys in out.values_mut() {
        keys.sort();
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for f in files_under(from, "") {
        let rel = f.strip_prefix(from).expect("under");
        let dst = to.join(rel);
        std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&f, &dst).expect("copy");
    }
}

/// Apply `d` to `key` (swapping with `other`); returns what to put back.
fn apply(repo: &Path, key: &str, other: Option<&str>, d: Damage) -> Vec<(String, Option<Vec<u8>>)> {
    let path = repo.join(key);
    let good = std::fs::read(&path).ok();
    let mut undo = vec![(key.to_string(), good.clone())];
    let good = good.unwrap_or_default();
    match d {
        Damage::Flip(at) => {
            let mut b = good.clone();
            if !b.is_empty() {
                let i = offset(at, b.len());
                b[i] ^= 0x04;
            }
            std::fs::write(&path, b).expect("write");
        }
        Damage::Zero => {
            // From the first non-zero byte at or after the middle (wrapping): zeroing
            // bytes that are zero already (a segment's empty buckets have crc 0) would
            // be no damage at all.
            let mut b = good.clone();
            let mid = b.len() / 2;
            let at = (b[mid..].iter().position(|x| *x != 0).map(|i| mid + i))
                .or_else(|| b.iter().position(|x| *x != 0))
                .unwrap_or(mid);
            let end = (at + 16).min(b.len());
            b[at..end].iter_mut().for_each(|x| *x = 0);
            std::fs::write(&path, b).expect("write");
        }
        Damage::Truncate => std::fs::write(&path, &good[..good.len() / 2]).expect("write"),
        Damage::Delete => std::fs::remove_file(&path).expect("remove"),
        Damage::Swap => {
            let other = other.expect("another object of the kind");
            let opath = repo.join(other);
            let ob = std::fs::read(&opath).expect("read other");
            undo.push((other.to_string(), Some(ob.clone())));
            std::fs::write(&path, ob).expect("write");
            std::fs::write(&opath, good).expect("write other");
        }
        Damage::Stray => {
            undo = vec![(key.to_string(), None)];
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, b"abc").expect("write stray");
        }
    }
    undo
}

fn put_back(repo: &Path, undo: &[(String, Option<Vec<u8>>)]) {
    for (key, bytes) in undo {
        let path = repo.join(key);
        match bytes {
            Some(b) => {
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(&path, b).expect("put back");
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        // A repair moved it aside: the original is back, the quarantined copy goes.
        let _ = std::fs::remove_file(repo.join("quarantine").join(key));
    }
}

/// Restore `s`: `Ok(true)` bit-exact, `Ok(false)` refused; wrong bytes panic.
async fn try_restore(repo: &Repository, scratch: &Path, s: &Snap, case: &str) -> bool {
    let out = scratch.join(format!("r-{}-{}.raw", s.volume, s.id));
    let _ = std::fs::remove_file(&out);
    let r = restore(
        repo,
        &s.volume,
        &s.id,
        &RestoreTarget::Raw(out.clone()),
        None,
    )
    .await;
    if let Err(e) = &r {
        eprintln!("{case}: restore of {}/{} refused: {e}", s.volume, s.id);
    }
    let ok = r.is_ok();
    if ok {
        let got = std::fs::read(&out).expect("read restored");
        assert!(
            got == *s.data,
            "{case}: {}/{} restored WRONG BYTES",
            s.volume,
            s.id
        );
    }
    let _ = std::fs::remove_file(&out);
    ok
}

/// Whether `check --read-data` must see damage `d` to `key`: anything that changes the
/// bytes of an object it reads in full, or removes one a live snapshot needs. Not seen by
/// design: deleting a tombstone (undeletes its snapshot, whose data gc kept), a gc marker
/// or the sweep stamp; damage to a pack frame or the middle of a pack (it may be a
/// garbage frame nothing reads); deleting a segment gc or a delete wrote.
fn must_see(key: &str, d: Damage, base: &Base) -> bool {
    let kind = kind_of(key);
    let of_a_backup = base.all_ids.iter().any(|id| key.contains(id.as_str()));
    match (kind, d) {
        // A verdict's body is informational: readers use its key alone (format-spec §6).
        ("leases" | "intents" | "checkpoints" | "sweeps" | "quarantine" | "verdicts", _) => false,
        (_, Damage::Stray) => true,
        ("tombstones" | "gc", Damage::Delete) => false,
        ("packs", Damage::Flip(at)) => at < 0,
        ("packs", Damage::Zero) => false,
        ("index" | "refs", Damage::Delete) => of_a_backup,
        ("snapshots", Damage::Delete) => base.live.iter().any(|s| key.ends_with(&s.id)),
        _ => true,
    }
}

struct Case<'a> {
    base: &'a Base,
    key: String,
    other: Option<String>,
    damage: Damage,
}

async fn run_case(c: &Case<'_>, n: usize) {
    let name = format!("{} {:?}", c.key, c.damage);
    let dir = c.base.scratch.join(format!("case{n}"));
    copy_dir(&c.base.repo, &dir);
    let undo = apply(&dir, &c.key, c.other.as_deref(), c.damage);
    age(&dir);
    let scratch = &c.base.scratch;
    let repo = match open(&dir).await {
        Ok(r) => r,
        Err(e) => {
            assert!(kind_of(&c.key) == "config", "{name}: open failed: {e}");
            put_back(&dir, &undo);
            let repo = open(&dir).await.expect("open after put back");
            for s in &c.base.live {
                assert!(
                    try_restore(&repo, scratch, s, &name).await,
                    "{name}: put back"
                );
            }
            std::fs::remove_dir_all(&dir).expect("rm case");
            return;
        }
    };
    // During the damage: restores are exact or refused; a marker of one volume leaves
    // the others restoring; the listing works.
    let volume_of = |k: &str| k.split('/').nth(1).unwrap_or_default().to_string();
    let marker_volumes: Option<Vec<String>> = match kind_of(&c.key) {
        "snapshots" | "tombstones" => Some(
            std::iter::once(c.key.as_str())
                .chain(
                    c.other
                        .as_deref()
                        .filter(|_| matches!(c.damage, Damage::Swap)),
                )
                .map(volume_of)
                .collect(),
        ),
        _ => None,
    };
    for s in &c.base.live {
        let ok = try_restore(&repo, scratch, s, &name).await;
        let unaffected = marker_volumes
            .as_ref()
            .is_some_and(|v| !v.contains(&s.volume));
        if matches!(c.damage, Damage::Stray) || unaffected {
            assert!(
                ok,
                "{name}: {}/{} of an unaffected volume fails",
                s.volume, s.id
            );
        }
    }
    repo.snapshots(None)
        .await
        .unwrap_or_else(|e| panic!("{name}: snapshots: {e}"));
    let full = CheckOptions {
        read_data: true,
        sample_pct: None,
    };
    let check = repo.check(&full).await;
    if must_see(&c.key, c.damage, c.base) {
        let clean = check.as_ref().is_ok_and(|r| r.is_clean());
        assert!(!clean, "{name}: check --read-data is clean over the damage");
    }
    // A repair that reports nothing damaged and nothing unknown leaves a check (of what
    // it checks: structure and counts) clean.
    let repair = repo.repair().await;
    eprintln!("{name}: repair {repair:?}");
    if let Ok(r) = repair {
        if r.complete && r.damaged.is_empty() {
            let after = repo.check(&CheckOptions::default()).await;
            let after = after.unwrap_or_else(|e| panic!("{name}: check after repair: {e}"));
            assert!(
                after.is_clean(),
                "{name}: repair reported nothing left, check finds {:?}",
                after.issues
            );
        }
    }
    // A delete either works or refuses; either way it may not destroy (checked below).
    let victim = c.base.live.iter().rev().find(|s| s.volume == "c");
    let deleted = match victim {
        Some(v) => match repo.delete_snapshot(&v.volume, &v.id).await {
            Ok(_) => Some(v.id.clone()),
            Err(e) => {
                eprintln!("{name}: delete refused: {e}");
                None
            }
        },
        None => None,
    };
    age(&dir);
    let gc = repo.gc().await;
    eprintln!("{name}: gc {gc:?}");
    drop(repo);

    put_back(&dir, &undo);
    let repo = open(&dir).await.expect("open after put back");
    for s in &c.base.live {
        if deleted.as_deref() == Some(s.id.as_str()) {
            continue;
        }
        assert!(
            try_restore(&repo, scratch, s, &name).await,
            "{name}: {}/{} does not restore after the damaged object was put back",
            s.volume,
            s.id
        );
    }
    std::fs::remove_dir_all(&dir).expect("rm case");
}

/// At most this many objects of each kind (spread over the sorted keys) get every damage.
const PER_KIND: usize = 3;

fn cases(base: &Base) -> Vec<Case<'_>> {
    let kinds = by_kind(&base.repo);
    let mut out = Vec::new();
    for (kind, keys) in &kinds {
        let step = keys.len().div_ceil(PER_KIND).max(1);
        for (i, key) in keys.iter().enumerate().step_by(step) {
            let len = std::fs::metadata(base.repo.join(key)).map_or(0, |m| m.len() as usize);
            let other = keys
                .get((i + 1) % keys.len())
                .filter(|o| *o != key)
                .cloned();
            for damage in damages(kind, len) {
                if matches!(damage, Damage::Swap) && other.is_none() {
                    continue;
                }
                out.push(Case {
                    base,
                    key: key.clone(),
                    other: other.clone(),
                    damage,
                });
            }
        }
    }
    for stray in [
        "snapshots/vol/bogus",
        "tombstones/vol/bogus",
        "gc/bogus",
        "index/garbage",
        "refs/garbage",
    ] {
        out.push(Case {
            base,
            key: stray.into(),
            other: None,
            damage: Damage::Stray,
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_damage_to_every_object_kind_is_contained() {
    let base = build_base().await;
    let kinds = by_kind(&base.repo);
    for k in [
        "config",
        "snapshots",
        "tombstones",
        "gc",
        "index",
        "refs",
        "packs",
    ] {
        assert!(
            kinds.contains_key(k),
            "the base repository has no {k}: {kinds:?}"
        );
    }
    let all = cases(&base);
    let start = std::time::Instant::now();
    // Every case runs; the failures are reported together.
    let mut failed = Vec::new();
    for (n, c) in all.iter().enumerate() {
        let run = std::panic::AssertUnwindSafe(run_case(c, n));
        if let Err(e) = futures::FutureExt::catch_unwind(run).await {
            let why = (e.downcast_ref::<String>().cloned())
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(why);
        }
    }
    eprintln!(
        "damage suite: {} cases over kinds {:?} in {:.1} s",
        all.len(),
        kinds.keys().collect::<Vec<_>>(),
        start.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{} cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// The binary's exit codes over damage: check 3 naming the object, other volumes restore
/// (0), gc refuses (1) over a damaged segment, repair rebuilds it (then check is 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_exit_codes_of_the_binary() {
    let base = build_base().await;
    let dir = base.scratch.join("cli");
    copy_dir(&base.repo, &dir);
    let r = s(&dir);
    let a = base.live.iter().find(|x| x.volume == "a").expect("a");
    let b = base.live.iter().find(|x| x.volume == "b").expect("b");
    let root = format!("snapshots/a/{}", a.id);
    let undo = apply(&dir, &root, None, Damage::Truncate);
    let check = json_with_code(&["check", "--repo", r, "--json"], 3);
    assert!(check.to_string().contains(&root), "{check}");
    let out = base.scratch.join("cli-b.raw");
    let o = crate::common::cli::island(&[
        "restore",
        "--repo",
        r,
        "--volume",
        "b",
        "--snapshot",
        &b.id,
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(std::fs::read(&out).expect("restored") == *b.data);
    put_back(&dir, &undo);

    let seg = files_under(&dir, "index")
        .into_iter()
        .find(|p| p.to_string_lossy().contains(&b.id))
        .expect("b's index segment");
    let key = seg
        .strip_prefix(&dir)
        .expect("under")
        .to_string_lossy()
        .into_owned();
    apply(&dir, &key, None, Damage::Flip(30));
    let o = crate::common::cli::island(&["gc", "--repo", r]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains(&key), "{o:?}");
    json_with_code(&["check", "--repo", r, "--json"], 3);
    let repair = json_with_code(&["check", "--repo", r, "--repair", "--json"], 0);
    assert!(
        repair["index_records_rebuilt"].as_u64() > Some(0),
        "{repair}"
    );
    json_with_code(&["check", "--repo", r, "--read-data", "--json"], 0);
}

/// Issue 13, defect 7: a snapshot whose root is damaged can be deleted. What it referenced
/// is unknown, so the delete writes its tombstone and releases nothing (`root_unreadable`,
/// no blob freed: a leak). The leak is reclaimed by a complete recount (`check --repair`;
/// the deleted damaged root does not make it incomplete), and after it and a gc every
/// other snapshot still restores bit-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_root_is_damaged_is_deleted_releasing_nothing() {
    let base = build_base().await;
    let dir = base.scratch.join("delroot");
    copy_dir(&base.repo, &dir);
    let victim = base
        .live
        .iter()
        .find(|x| x.volume == "b")
        .expect("b")
        .clone();
    apply(
        &dir,
        &format!("snapshots/b/{}", victim.id),
        None,
        Damage::Truncate,
    );
    let repo = open(&dir).await.expect("open");
    let d = repo
        .delete_snapshot("b", &victim.id)
        .await
        .expect("delete of a damaged root");
    assert!(d.root_unreadable, "{d:?}");
    assert_eq!(d.freed_blobs, 0, "{d:?}");
    let listed = repo.snapshots(None).await.expect("snapshots");
    assert!(
        !listed.iter().any(|x| x.id == victim.id),
        "the deleted snapshot is still listed: {listed:?}"
    );
    age(&dir);
    let r = repo.repair().await.expect("repair");
    assert!(r.complete, "a deleted damaged root is no unknown: {r:?}");
    age(&dir);
    repo.gc().await.expect("gc");
    let repo = open(&dir).await.expect("reopen");
    for s in base.live.iter().filter(|s| s.id != victim.id) {
        assert!(
            try_restore(&repo, &base.scratch, s, "delroot").await,
            "{}/{} no longer restores",
            s.volume,
            s.id
        );
    }
}

/// Issue 13: gc run before repair over a lost root (its file deleted after the commit)
/// keeps that writer's segments and packs — damage, not a dead writer — reports the root
/// (`roots_missing`, exit code 3) and collects nothing. Putting the root back, everything
/// restores bit-exact; without putting it back, repair still re-indexes what the other
/// snapshots need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_a_lost_roots_segments_and_packs() {
    let base = build_base().await;
    for put_back_root in [true, false] {
        let dir = base.scratch.join(format!("lost-{put_back_root}"));
        copy_dir(&base.repo, &dir);
        let lost = base.live.iter().find(|x| x.volume == "a").expect("a");
        let key = format!("snapshots/a/{}", lost.id);
        let undo = apply(&dir, &key, None, Damage::Delete);
        // The orphan sweep is due (its stamp gone) and every writer is long dead.
        std::fs::remove_file(dir.join("sweeps/orphans")).expect("rm sweep stamp");
        age(&dir);
        let mut kept = files_under(&dir, "packs");
        kept.extend(
            (files_under(&dir, "index").into_iter())
                .chain(files_under(&dir, "refs"))
                .filter(|p| p.to_string_lossy().contains(&lost.id)),
        );
        let o = crate::common::cli::island(&["gc", "--repo", s(&dir), "--json"]);
        assert_eq!(o.status.code(), Some(3), "{o:?}");
        let g: serde_json::Value = serde_json::from_slice(&o.stdout).expect("gc json");
        assert_eq!(g["roots_missing"], serde_json::json!([key]), "{g}");
        assert_eq!(g["blobs_collected"], 0, "{g}");
        for k in &kept {
            assert!(k.exists(), "gc removed {}: {g}", k.display());
        }
        if put_back_root {
            put_back(&dir, &undo);
        } else {
            age(&dir);
            let repo = open(&dir).await.expect("open");
            repo.repair().await.expect("repair");
        }
        let repo = open(&dir).await.expect("open");
        for s in &base.live {
            if !put_back_root && s.id == lost.id {
                continue;
            }
            assert!(
                try_restore(&repo, &base.scratch, s, &key).await,
                "{}/{} does not restore (root put back: {put_back_root})",
                s.volume,
                s.id
            );
        }
    }
}

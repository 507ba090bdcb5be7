//! Crash safety. (a) A child process writing, flushing and snapshotting is killed with
//! SIGKILL at random times. (b) Power loss: the engine runs over a storage that logs every
//! write and sync; a random prefix of the log that respects sync barriers (everything before
//! the last completed sync, a random subset of 512-byte sectors after it) becomes the disk.
//! Both: `qemu-img check` finds no corruption (leaks are allowed) and flushed data is intact.

use crate::common::memfile::{LogFile, LogOp, MemFile};
use crate::common::qemu::assert_crash_consistent;
use crate::common::{
    assert_same, create_image, options, random_bytes, read_active, read_snapshot, rng, seeds,
    tempdir,
};
use island::image::{Image, OpenMode};
use rand::rngs::StdRng;
use rand::Rng;
use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------- (a) SIGKILL

const KILL_SIZE: u64 = 16 << 20;

/// One step of the child's deterministic script; the child prints `ISLAND-DONE k` once
/// step k is complete and flushed.
#[derive(Clone, Debug)]
enum Step {
    /// `len` bytes generated from `seed` (generated when used: a script holds no data).
    Write {
        off: u64,
        len: u64,
        seed: u64,
    },
    Zero {
        off: u64,
        len: u64,
    },
    Snap(String),
    Delete(String),
}

/// The script of a child run: writes and zero-writes, a snapshot every 7 writes, and the
/// run's oldest snapshot deleted once it has more than three.
fn script(seed: u64) -> Vec<Step> {
    let mut r = rng(seed);
    let mut steps = Vec::new();
    let mut live = std::collections::VecDeque::new();
    for i in 0..2000u64 {
        let off = r.random_range(0..KILL_SIZE - 1);
        let len = r.random_range(1..=65536u64).min(KILL_SIZE - off);
        if r.random_bool(0.85) {
            steps.push(Step::Write {
                off,
                len,
                seed: r.random(),
            });
        } else {
            steps.push(Step::Zero { off, len });
        }
        if i % 7 == 6 {
            let name = format!("k{seed}-{i}");
            live.push_back(name.clone());
            steps.push(Step::Snap(name));
            if live.len() > 3 {
                steps.push(Step::Delete(live.pop_front().unwrap()));
            }
        }
    }
    steps
}

/// The child half of `sigkill_during_writes_and_snapshots`; does nothing unless started
/// by it (hence ignored in normal runs).
#[test]
#[ignore]
fn crash_child() {
    let (Ok(path), Ok(seed)) = (
        std::env::var("ISLAND_CRASH_IMAGE"),
        std::env::var("ISLAND_CRASH_SEED"),
    ) else {
        return;
    };
    let img = Image::open(&path, OpenMode::ReadWrite).expect("child: open");
    for (k, step) in script(seed.parse().unwrap()).into_iter().enumerate() {
        match step {
            Step::Write { off, len, seed } => img
                .write_at(&random_bytes(&mut rng(seed), len as usize), off)
                .expect("child: write"),
            Step::Zero { off, len } => img.write_zeroes(off, len).expect("child: zero"),
            Step::Snap(n) => drop(img.create_snapshot(&n).expect("child: snapshot")),
            Step::Delete(n) => img.delete_snapshot(&n).expect("child: delete"),
        }
        img.flush().expect("child: flush");
        println!("ISLAND-DONE {k}");
    }
    img.close().expect("child: close");
}

/// Guest contents where some bytes may hold either of two values (an interrupted write).
struct Uncertain {
    data: Vec<u8>,
    alt: Vec<Option<u8>>,
    snaps: Vec<(String, Vec<u8>)>,
}

fn apply(step: &Step, data: &mut [u8]) -> Option<Range<usize>> {
    match step {
        Step::Write { off, len, seed } => {
            let d = random_bytes(&mut rng(*seed), *len as usize);
            let r = *off as usize..*off as usize + d.len();
            data[r.clone()].copy_from_slice(&d);
            Some(r)
        }
        Step::Zero { off, len } => {
            let r = *off as usize..(*off + *len) as usize;
            data[r.clone()].fill(0);
            Some(r)
        }
        _ => None,
    }
}

/// Checks the image against the model after a kill, then resolves every uncertain byte
/// and snapshot to what the image actually holds. `copied_window`: a snapshot operation
/// was cut short since the last one that completed, so COPIED flags may disagree with
/// refcounts (format-spec/image.md §4, "Known window"): nothing recomputes them until the
/// next snapshot operation completes, so they outlive the round that was killed.
fn verify_after_kill(
    path: &Path,
    m: &mut Uncertain,
    in_flight: Option<&Step>,
    copied_window: bool,
    seed: u64,
) {
    assert_crash_consistent(path, 4096, copied_window, &format!("seed {seed}"));
    let img = Image::open(path, OpenMode::ReadOnly)
        .unwrap_or_else(|e| panic!("seed {seed}: reopen after kill: {e}"));
    let got = read_active(&img);
    for (i, (&g, &w)) in got.iter().zip(&m.data).enumerate() {
        assert!(
            g == w || m.alt[i] == Some(g),
            "seed {seed}: byte {i} is {g:#x}, flushed value {w:#x} (alternative {:?})",
            m.alt[i]
        );
    }
    m.data = got;
    m.alt.iter_mut().for_each(|a| *a = None);
    let names: Vec<String> = img.snapshots().into_iter().map(|s| s.name).collect();
    for (name, want) in &m.snaps {
        let deleting = matches!(in_flight, Some(Step::Delete(n)) if n == name);
        if !names.contains(name) {
            assert!(
                deleting,
                "seed {seed}: flushed snapshot {name} vanished ({names:?})"
            );
            continue;
        }
        assert_same(
            &format!("seed {seed}: snapshot {name}"),
            &read_snapshot(&img, name, KILL_SIZE),
            want,
        );
    }
    m.snaps.retain(|(n, _)| names.contains(n));
    for name in &names {
        if !m.snaps.iter().any(|(n, _)| n == name) {
            assert!(
                matches!(in_flight, Some(Step::Snap(n)) if n == name),
                "seed {seed}: unexpected snapshot {name}"
            );
            m.snaps
                .push((name.clone(), read_snapshot(&img, name, KILL_SIZE)));
        }
    }
    img.close().unwrap();
}

#[test]
fn sigkill_during_writes_and_snapshots() {
    let exe = std::env::current_exe().unwrap();
    for seed in seeds(501, 2) {
        eprintln!("seed {seed} (ISLAND_SEED={seed} to replay)");
        let dir = tempdir();
        let (img, path) = create_image(dir.path(), "k.qcow2", KILL_SIZE, 4096);
        img.close().unwrap();
        let mut m = Uncertain {
            data: vec![0; KILL_SIZE as usize],
            alt: vec![None; KILL_SIZE as usize],
            snaps: Vec::new(),
        };
        let mut r = rng(seed);
        let mut total = 0;
        let mut snapshots_taken = 0;
        let mut copied_window = false;
        for round in 0..8u64 {
            let child_seed = seed * 100 + round;
            let mut child = Command::new(&exe)
                .args([
                    "image_crash::crash_child",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("ISLAND_CRASH_IMAGE", &path)
                .env("ISLAND_CRASH_SEED", child_seed.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                let mut last = None;
                for line in BufReader::new(stdout).lines() {
                    // Not a prefix: libtest prints "test image_crash::crash_child ... "
                    // without a newline before the child's first line, so matching only
                    // at the start missed step 0 (a kill during step 1 then looked like
                    // damage outside the step in flight).
                    if let Some((_, k)) = line.unwrap().rsplit_once("ISLAND-DONE ") {
                        last = Some(k.trim().parse::<usize>().unwrap());
                    }
                }
                last
            });
            std::thread::sleep(Duration::from_millis(r.random_range(30..600)));
            let _ = child.kill();
            let status = child.wait().unwrap();
            let done = reader.join().unwrap();
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            assert!(
                !err.contains("child:"),
                "seed {seed} round {round}: child failed before the kill ({status}):\n{err}"
            );
            let steps = script(child_seed);
            let completed = done.map_or(0, |k| k + 1);
            eprintln!("round {round}: {completed} steps done before the kill");
            total += completed;
            snapshots_taken += steps[..completed]
                .iter()
                .filter(|s| matches!(s, Step::Snap(_)))
                .count();
            for step in &steps[..completed] {
                if let Some(range) = apply(step, &mut m.data) {
                    m.alt[range].iter_mut().for_each(|a| *a = None);
                }
                match step {
                    Step::Snap(n) => m.snaps.push((n.clone(), m.data.clone())),
                    Step::Delete(n) => m.snaps.retain(|(s, _)| s != n),
                    _ => {}
                }
            }
            let in_flight = steps.get(completed);
            let is_snapshot_op = |s: &Step| matches!(s, Step::Snap(_) | Step::Delete(_));
            if steps[..completed].iter().any(is_snapshot_op) {
                copied_window = false;
            }
            copied_window |= in_flight.is_some_and(is_snapshot_op);
            if let Some(step) = in_flight {
                let mut next = m.data.clone();
                if let Some(range) = apply(step, &mut next) {
                    for i in range {
                        m.alt[i] = Some(next[i]);
                    }
                }
            }
            verify_after_kill(&path, &mut m, in_flight, copied_window, seed);
        }
        // The kills must land in the middle of real work, or this test proves nothing.
        assert!(
            total >= 50 && snapshots_taken >= 3,
            "seed {seed}: children did too little before being killed ({total} steps, \
             {snapshots_taken} snapshots)"
        );
    }
}

// ---------------------------------------------------------------- (b) power loss

const PL_SIZE: u64 = 2 << 20;

#[derive(Clone, Debug)]
enum Effect {
    Range(Range<usize>),
    All,
    Created(String, Vec<u8>),
    Deleted(String),
}

/// A guest operation and the log position where it started.
struct Done {
    pos: usize,
    effect: Effect,
}

/// State known durable once `flush` returned at log position `pos`.
struct Checkpoint {
    pos: usize,
    active: Vec<u8>,
    snaps: Vec<(String, Vec<u8>)>,
}

fn run_logged(cluster: u32, seed: u64) -> (Vec<LogOp>, Vec<Checkpoint>, Vec<Done>) {
    let file = Arc::new(LogFile::new(Vec::new()));
    let img = Image::create_on(file.clone(), "pl.qcow2", &options(PL_SIZE, cluster)).unwrap();
    img.flush().unwrap();
    let mut r = rng(seed);
    let mut active = vec![0u8; PL_SIZE as usize];
    let mut snaps: Vec<(String, Vec<u8>)> = Vec::new();
    let mut cps = vec![Checkpoint {
        pos: file.position(),
        active: active.clone(),
        snaps: snaps.clone(),
    }];
    let mut done = Vec::new();
    let cl = u64::from(cluster);
    for i in 0..80 {
        let pos = file.position();
        let effect = match r.random_range(0..100) {
            0..=59 => {
                let (off, len) = crate::image_qemu::random_range(&mut r, PL_SIZE, cl);
                let data = random_bytes(&mut r, len as usize);
                img.write_at(&data, off).unwrap();
                let range = off as usize..(off + len) as usize;
                active[range.clone()].copy_from_slice(&data);
                Effect::Range(range)
            }
            60..=69 => {
                let (off, len) = crate::image_qemu::random_range(&mut r, PL_SIZE, cl);
                if r.random_bool(0.5) {
                    img.write_zeroes(off, len).unwrap();
                } else {
                    img.discard(off, len).unwrap();
                }
                let range = off as usize..(off + len) as usize;
                active[range.clone()].fill(0);
                Effect::Range(range)
            }
            70..=81 => {
                let name = format!("pl{i}");
                img.create_snapshot(&name).unwrap();
                snaps.push((name.clone(), active.clone()));
                Effect::Created(name, active.clone())
            }
            82..=89 if !snaps.is_empty() => {
                let (name, _) = snaps.remove(r.random_range(0..snaps.len()));
                img.delete_snapshot(&name).unwrap();
                Effect::Deleted(name)
            }
            90..=94 if !snaps.is_empty() => {
                let (name, data) = &snaps[r.random_range(0..snaps.len())];
                img.revert_snapshot(name).unwrap();
                active = data.clone();
                Effect::All
            }
            _ => {
                img.flush().unwrap();
                cps.push(Checkpoint {
                    pos: file.position(),
                    active: active.clone(),
                    snaps: snaps.clone(),
                });
                continue;
            }
        };
        done.push(Done { pos, effect });
    }
    img.close().unwrap();
    (file.log(), cps, done)
}

/// The disk after a power loss at log position `crash`: every op up to the last sync
/// before it, then a random subset of the 512-byte sectors written after that sync.
/// Returns the bytes and the index of the last sync that made it.
fn replay(log: &[LogOp], crash: usize, r: &mut StdRng) -> (Vec<u8>, usize) {
    let last_sync = log[..crash]
        .iter()
        .rposition(|op| matches!(op, LogOp::Sync))
        .unwrap_or(0);
    let mut disk = Vec::new();
    let write = |disk: &mut Vec<u8>, off: usize, d: &[u8]| {
        if disk.len() < off + d.len() {
            disk.resize(off + d.len(), 0);
        }
        disk[off..off + d.len()].copy_from_slice(d);
    };
    for (i, op) in log[..crash].iter().enumerate() {
        let durable = i <= last_sync;
        match op {
            LogOp::Write { offset, data } => {
                let mut off = *offset as usize;
                let mut rest = &data[..];
                while !rest.is_empty() {
                    let n = (512 - off % 512).min(rest.len());
                    if durable || r.random_bool(0.5) {
                        write(&mut disk, off, &rest[..n]);
                    }
                    off += n;
                    rest = &rest[n..];
                }
            }
            LogOp::SetLen(n) if durable || r.random_bool(0.5) => disk.resize(*n as usize, 0),
            _ => {}
        }
    }
    (disk, last_sync)
}

fn power_loss(cluster: u32, seed_base: u64) {
    for seed in seeds(seed_base, 12) {
        let (log, cps, done) = run_logged(cluster, seed);
        let mut r = rng(seed ^ 0xdead);
        let dir = tempdir();
        let file = dir.path().join("crashed.qcow2");
        for n in 0..10 {
            let crash = r.random_range(cps[0].pos..=log.len());
            let (disk, last_sync) = replay(&log, crash, &mut r);
            let ctx = format!(
                "cluster {cluster}, seed {seed} (ISLAND_SEED={seed}), crash at log op {crash}/{}",
                log.len()
            );
            let cp = cps
                .iter()
                .rev()
                .find(|c| c.pos <= last_sync + 1)
                .expect("checkpoint 0 is durable");
            std::fs::write(&file, &disk).unwrap();

            let img = Image::open_on(Arc::new(MemFile::new(disk.clone())), "crashed.qcow2", false)
                .unwrap_or_else(|e| panic!("{ctx}: open after power loss: {e}"));
            let after: Vec<&Done> = done
                .iter()
                .filter(|d| d.pos >= cp.pos && d.pos < crash)
                .collect();
            // Unsynced writes of any snapshot operation since the checkpoint may be torn.
            let snapshot_op = after.iter().any(|d| {
                matches!(
                    d.effect,
                    Effect::Deleted(_) | Effect::Created(..) | Effect::All
                )
            });
            assert_crash_consistent(&file, cluster.into(), snapshot_op, &ctx);
            let mut touched = vec![false; PL_SIZE as usize];
            let mut all = false;
            for d in &after {
                match &d.effect {
                    Effect::Range(range) => {
                        touched[range.clone()].iter_mut().for_each(|t| *t = true)
                    }
                    Effect::All => all = true,
                    _ => {}
                }
            }
            if !all {
                let got = read_active(&img);
                for (i, (&g, &w)) in got.iter().zip(&cp.active).enumerate() {
                    assert!(
                        touched[i] || g == w,
                        "{ctx}: flushed byte {i} is {g:#x}, want {w:#x}"
                    );
                }
            }
            let names: Vec<String> = img.snapshots().into_iter().map(|s| s.name).collect();
            for (name, want) in &cp.snaps {
                let deleted = after
                    .iter()
                    .any(|d| matches!(&d.effect, Effect::Deleted(n) if n == name));
                if names.contains(name) {
                    assert_same(
                        &format!("{ctx}: snapshot {name}"),
                        &read_snapshot(&img, name, PL_SIZE),
                        want,
                    );
                } else {
                    assert!(deleted, "{ctx}: flushed snapshot {name} lost ({names:?})");
                }
            }
            for name in names
                .iter()
                .filter(|n| !cp.snaps.iter().any(|(s, _)| s == *n))
            {
                let created = after.iter().find_map(|d| match &d.effect {
                    Effect::Created(n, data) if n == name => Some(data),
                    _ => None,
                });
                let data = created
                    .unwrap_or_else(|| panic!("{ctx}: snapshot {name} appeared from nowhere"));
                assert_same(
                    &format!("{ctx}: snapshot {name}"),
                    &read_snapshot(&img, name, PL_SIZE),
                    data,
                );
            }
            drop(img);

            if n % 3 == 0 {
                // The crashed image is usable again: write, close, still no corruption.
                let img = Image::open(&file, OpenMode::ReadWrite)
                    .unwrap_or_else(|e| panic!("{ctx}: reopen rw: {e}"));
                img.write_at(&[0xEE; 10_000], 1234).unwrap();
                img.create_snapshot("after-crash").unwrap();
                img.close().unwrap();
                assert_crash_consistent(
                    &file,
                    cluster.into(),
                    snapshot_op,
                    &format!("{ctx}, after reopening"),
                );
            }
        }
    }
}

#[test]
fn power_loss_cluster_4k() {
    power_loss(4096, 40);
}

#[test]
fn power_loss_cluster_64k() {
    power_loss(65536, 640);
}

//! Multi-process crash tests (issue 4): `island backup`, `restore`, `delete` and `gc` are
//! killed with SIGKILL at seeded random times, then re-run. The re-run of a backup or a
//! restore resumes (its uploaded / downloaded bytes are measured against a full run); after
//! every kill `check` is clean and every committed snapshot restores bit-exact; a killed
//! delete or gc leaves the repository consistent and its re-run finishes the job.
//! (`copy` has its own SIGKILL test in `repo_copy`.)
//!
//! Store time on a directory repository is the files' mtime: to move past the lease expiry
//! of the killed processes (`LEASE_TTL + SKEW`) and let gc process a delete, the tests age
//! `leases/` and `tombstones/` by two hours, as the documented expiry would.

use crate::common::kill::{
    age, age_by, assert_check_clean, init_repos, kill_after, refs, spawn, spawn_and_kill,
    CopyRepos, ADOPTABLE_AGE,
};
use crate::common::rng;
use crate::repo_ops_util::*;
use island::image::{Image, OpenMode};
use rand::Rng;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// Bytes of all packs of a directory repository.
fn pack_bytes(repo: &Path) -> u64 {
    files_under(repo, "packs")
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

fn backup_args<'a>(repo: &'a str, vol: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "backup",
        "--repo",
        repo,
        "--volume",
        "vm",
        vol,
        "--checkpoint-interval",
        "0",
        "--json",
    ];
    a.extend_from_slice(extra);
    a
}

/// Three rounds: a full backup of fresh random data is killed after its first checkpoint
/// plus a seeded random delay, then re-run. The re-run resumes (adopts the killed run's
/// packs, skips what it read) and uploads less than a full backup of the same data. A
/// fourth round kills at a random time from the start (maybe before any checkpoint): the
/// re-run must still commit a correct snapshot.
#[test]
fn backup_killed_with_sigkill_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [repo, reference] = init_repos(dir.path(), ["repo", "ref"]);
    let vol = dir.path().join("vol.raw");
    let mut committed: Vec<(String, Vec<u8>)> = Vec::new();
    let mut killed = 0;
    for round in 0..4u64 {
        let seed = 4000 + round;
        let early = round == 3;
        let data = write_volume(&vol, 80 * MIB, 64 * MIB, seed);
        let full = ok_json(&backup_args(s(&reference), s(&vol), &[]));
        let full_up = u64_field(&full, "bytes_uploaded");
        let mut child = spawn(&backup_args(s(&repo), s(&vol), &["--limit-upload", "24M"]));
        let delay = Duration::from_millis(rng(seed).random_range(0..1500));
        let ck = repo.clone();
        if !kill_after(
            &mut child,
            || early || !files_under(&ck, "checkpoints").is_empty(),
            delay,
            "backup",
        ) {
            eprintln!("seed {seed}: the backup finished before the kill");
            let latest = snapshots(s(&repo), "vm");
            let id = str_field(latest.last().expect("a snapshot"), "id").to_string();
            committed.push((id, data));
            continue;
        }
        assert_check_clean(s(&repo));
        // The killed run looks stopped once it has not renewed for `ADOPT_AFTER`.
        age_by(&repo, "leases", ADOPTABLE_AGE);
        let r = ok_json(&backup_args(s(&repo), s(&vol), &[]));
        if early {
            eprintln!("seed {seed}: killed {delay:?} after the start; re-run: {r}");
            assert_check_clean(s(&repo));
            committed.push((str_field(&r, "id").to_string(), data));
            continue;
        }
        killed += 1;
        let up = u64_field(&r, "bytes_uploaded");
        let skipped = u64_field(&r, "bytes_skipped");
        eprintln!(
            "MEASURED seed {seed}: killed after {delay:?} past the first checkpoint; re-run \
             uploaded {up} B of {full_up} B, skipped {skipped} B of reading, resumed from {}",
            r["resumed_from"]
        );
        assert!(r["resumed_from"].is_string(), "seed {seed}: no resume: {r}");
        assert!(skipped >= 16 * MIB, "seed {seed}: {r}");
        assert!(
            up + 15 * MIB <= full_up,
            "seed {seed}: uploaded {up} of {full_up}"
        );
        committed.push((str_field(&r, "id").to_string(), data));
        assert_check_clean(s(&repo));
        assert!(
            files_under(&repo, "checkpoints").is_empty(),
            "seed {seed}: checkpoints left after the commit"
        );
    }
    assert!(
        killed >= 2,
        "only {killed} of 3 backups were killed mid-way"
    );
    for (id, want) in &committed {
        assert_restores(s(&repo), "vm", id, want, dir.path());
    }
    // gc after the killed writers' expiry: their leftovers go, the data stays.
    age(&repo, "leases");
    let g = ok_json(&["gc", "--repo", s(&repo), "--json"]);
    assert!(u64_field(&g, "dead_writers_cleaned") >= killed, "{g}");
    assert!(files_under(&repo, "intents").is_empty());
    assert_check_clean(s(&repo));
    for (id, want) in &committed {
        assert_restores(s(&repo), "vm", id, want, dir.path());
    }
}

/// Restore `id` to `out` (`--format FORMAT`), killed after the target (or its temporary
/// image) appears plus a seeded delay, then re-run: the re-run keeps what is in place and
/// downloads less than a full restore. Returns the re-run's report.
fn killed_restore(repo: &str, id: &str, out: &Path, format: &str, seed: u64) -> Value {
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "restore",
            "--repo",
            repo,
            "--volume",
            "vm",
            "--snapshot",
            id,
            "--format",
            format,
            "--json",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.push(s(out).to_string());
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let slow = args(&["--limit-download", "24M"]);
    let mut child = spawn(&slow.iter().map(String::as_str).collect::<Vec<_>>());
    let dir = out.parent().expect("out has a directory").to_path_buf();
    let name = out
        .file_name()
        .expect("out has a name")
        .to_string_lossy()
        .into_owned();
    // Started: the marker or temporary image exists and at least 32 MiB of the 64 MiB are
    // on disk (so a qcow2 target has been flushed at least once); then a seeded delay.
    let out_path = out.to_path_buf();
    let started = move || -> bool {
        use std::os::unix::fs::MetadataExt;
        let on_disk = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.blocks() * 512);
        let ours: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(&format!(".{name}."))
                    })
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        let written = ours.iter().chain([&out_path]).map(|p| on_disk(p)).max();
        !ours.is_empty() && written.unwrap_or(0) >= 32 * MIB
    };
    let delay = Duration::from_millis(rng(seed).random_range(0..300));
    assert!(
        kill_after(&mut child, started, delay, "restore"),
        "seed {seed}: the {format} restore finished before the kill"
    );
    assert!(
        !out.exists() || format == "raw",
        "a killed qcow2 restore published OUT"
    );
    ok_json(&args(&[]).iter().map(String::as_str).collect::<Vec<_>>())
}

/// A raw and a qcow2 restore of a 64 MiB snapshot, each killed part way and re-run.
#[test]
fn restore_killed_with_sigkill_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [repo] = init_repos(dir.path(), ["repo"]);
    let vol = dir.path().join("vol.raw");
    let data = write_volume(&vol, 64 * MIB, 64 * MIB, 4100);
    let id = str_field(&backup(s(&repo), "vm", &vol), "id").to_string();
    let full = dir.path().join("full.raw");
    let f = ok_json(&[
        "restore",
        "--repo",
        s(&repo),
        "--volume",
        "vm",
        "--snapshot",
        &id,
        s(&full),
        "--json",
    ]);
    let full_down = u64_field(&f, "bytes_downloaded");

    let raw = dir.path().join("out.raw");
    let r = killed_restore(s(&repo), &id, &raw, "raw", 4101);
    let (down, kept) = (
        u64_field(&r, "bytes_downloaded"),
        u64_field(&r, "bytes_kept"),
    );
    eprintln!("MEASURED raw restore re-run: downloaded {down} B of {full_down} B, kept {kept} B");
    assert_eq!(r["resumed"], Value::Bool(true), "{r}");
    assert!(kept > 0 && down < full_down, "{r}");
    assert!(
        std::fs::read(&raw).expect("read OUT") == data,
        "raw restore differs"
    );
    assert!(!dir.path().join(".out.raw.island-restore").exists());

    let qcow = dir.path().join("out.qcow2");
    let r = killed_restore(s(&repo), &id, &qcow, "qcow2", 4102);
    let (down, kept) = (
        u64_field(&r, "bytes_downloaded"),
        u64_field(&r, "bytes_kept"),
    );
    eprintln!("MEASURED qcow2 restore re-run: downloaded {down} B of {full_down} B, kept {kept} B");
    assert_eq!(r["resumed"], Value::Bool(true), "{r}");
    assert!(kept > 0 && down < full_down, "{r}");
    let img = Image::open(&qcow, OpenMode::ReadOnly).expect("open the restored image");
    let mut got = vec![0u8; data.len()];
    img.read_at(&mut got, 0).expect("read the restored image");
    assert!(got == data, "qcow2 restore differs");
    drop(img);
    // Clusters the killed run wrote but never mapped may leak; nothing may be corrupt.
    let check = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2", s(&qcow)])
        .output()
        .expect("run qemu-img check");
    assert!(
        matches!(check.status.code(), Some(0 | 3)),
        "qemu-img check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let leftovers: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains("island-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Four snapshots; each round deletes one with a `delete` killed at a random time, checks,
/// re-runs the delete if it had not committed, ages the repository past the expiry, runs a
/// `gc` killed at a random time, checks, re-runs gc; the remaining snapshots restore
/// bit-exact and the deleted snapshots' data is reclaimed by the end.
#[test]
fn delete_and_gc_killed_with_sigkill_stay_consistent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [repo] = init_repos(dir.path(), ["repo"]);
    let vol = dir.path().join("vol.raw");
    let mut live: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..4u64 {
        let data = write_volume(&vol, 16 * MIB, 16 * MIB, 4200 + i);
        live.push((
            str_field(&backup(s(&repo), "vm", &vol), "id").to_string(),
            data,
        ));
    }
    let before = pack_bytes(&repo);
    for round in 0..3u64 {
        let seed = 4300 + round;
        let mut r = rng(seed);
        let (id, _) = live.remove(0);
        let del = [
            "delete",
            "--repo",
            s(&repo),
            "--volume",
            "vm",
            "--snapshot",
            &id,
            "--limit-upload",
            "2K",
        ];
        let mut child = spawn(&del);
        let delay = Duration::from_millis(r.random_range(0..2500));
        let killed = kill_after(&mut child, || true, delay, "delete");
        assert_check_clean(s(&repo));
        let still = snapshots(s(&repo), "vm")
            .iter()
            .any(|x| str_field(x, "id") == id);
        eprintln!(
            "seed {seed}: delete killed={killed} after {delay:?}, committed={}",
            !still
        );
        if still {
            ok(&[
                "delete",
                "--repo",
                s(&repo),
                "--volume",
                "vm",
                "--snapshot",
                &id,
            ]);
        }
        assert_check_clean(s(&repo));
        age(&repo, "leases");
        age(&repo, "tombstones");
        let mut child = spawn(&["gc", "--repo", s(&repo)]);
        let delay = Duration::from_millis(r.random_range(0..400));
        let killed = kill_after(&mut child, || true, delay, "gc");
        eprintln!("seed {seed}: gc killed={killed} after {delay:?}");
        assert_check_clean(s(&repo));
        for (id, want) in &live {
            assert_restores(s(&repo), "vm", id, want, dir.path());
        }
        age(&repo, "leases");
        ok(&["gc", "--repo", s(&repo)]);
        assert_check_clean(s(&repo));
    }
    for (id, want) in &live {
        assert_restores(s(&repo), "vm", id, want, dir.path());
    }
    let after = pack_bytes(&repo);
    eprintln!("MEASURED packs before {before} B, after 3 killed delete+gc rounds {after} B");
    assert!(
        after + 40 * MIB <= before,
        "3 deleted snapshots of 16 MiB each were not reclaimed: {before} → {after}"
    );
}

/// A backup of a qcow2 image (Island takes an internal snapshot `island-<id>`) killed after
/// its first checkpoint, then the image is written. Issue 13 defect 5: the re-run backed
/// up the killed run's snapshot (the state before the write) under a new, later id. Now
/// the stale snapshot is dropped and a new one taken, so the commit holds the image as it
/// is when the commit is dated; the killed run's uploads are still adopted, not repeated.
/// Afterwards the image holds exactly one `island-*` snapshot, the next increment's base.
/// (Without a write in between, the re-run resumes the killed run's snapshot and skips
/// what it read: `qcow2_backup_killed_resumes_its_snapshot_when_unchanged`.)
#[test]
fn qcow2_backup_killed_with_sigkill_resumes_from_its_snapshot() {
    killed_qcow2_backup(true);
}

/// A qcow2 backup killed after its first checkpoint, the image not written since: the
/// killed run's snapshot still is the image's state, so the re-run backs it up (resume)
/// and neither re-reads nor re-uploads what the killed run did.
#[test]
fn qcow2_backup_killed_resumes_its_snapshot_when_unchanged() {
    killed_qcow2_backup(false);
}

/// Kill a qcow2 backup after its first checkpoint, optionally write the image, re-run.
fn killed_qcow2_backup(write_after: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let [repo] = init_repos(dir.path(), ["repo"]);
    let (img, path) = crate::common::create_image(dir.path(), "vm.qcow2", 80 * MIB, 65536);
    let data = crate::common::random_bytes(&mut rng(4400), (64 * MIB) as usize);
    img.write_at(&data, 0).expect("write the image");
    img.close().expect("close the image");
    let mut want = data.clone();
    want.resize((80 * MIB) as usize, 0);
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "backup",
            "--repo",
            s(&repo),
            "--volume",
            "vm",
            s(&path),
            "--checkpoint-interval",
            "0",
            "--json",
        ];
        a.extend_from_slice(extra);
        a
    };
    let delay = Duration::from_millis(rng(4401).random_range(0..800));
    let ready = || !files_under(&repo, "checkpoints").is_empty();
    spawn_and_kill(
        &args(&["--limit-upload", "24M"]),
        ready,
        delay,
        "qcow2 backup",
    );
    // The image is written after the kill: the killed run's snapshot no longer is the
    // image's state, so the re-run must not commit it.
    let change = crate::common::random_bytes(&mut rng(4402), 65536);
    if write_after {
        let img = Image::open(&path, OpenMode::ReadWrite).expect("reopen the image");
        img.write_at(&change, 0).expect("write after the kill");
        img.close().expect("close the image");
    }
    age_by(&repo, "leases", ADOPTABLE_AGE);
    let r = ok_json(&args(&[]));
    let (up, skipped) = (
        u64_field(&r, "bytes_uploaded"),
        u64_field(&r, "bytes_skipped"),
    );
    eprintln!("MEASURED qcow2 backup re-run: uploaded {up} B, skipped reading {skipped} B");
    assert!(r["resumed_from"].is_string(), "{r}");
    // At least one 16 MiB pack adopted: at most the other 48 MiB (plus metadata) uploaded.
    assert!(up <= 50 * MIB, "{r}");
    if write_after {
        want[..65536].copy_from_slice(&change);
    } else {
        assert!(skipped >= 16 * MIB, "{r}");
    }
    assert_check_clean(s(&repo));
    assert_restores(s(&repo), "vm", str_field(&r, "id"), &want, dir.path());
    let img = Image::open(&path, OpenMode::ReadOnly).expect("open the image");
    let ours: Vec<String> = img
        .snapshots()
        .into_iter()
        .map(|x| x.name)
        .filter(|n| n.starts_with("island-"))
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    drop(img);
    let next = ok_json(&args(&[]));
    assert_eq!(next["incremental"], Value::Bool(true), "{next}");
    assert_restores(s(&repo), "vm", str_field(&next, "id"), &want, dir.path());
}

/// `copy` of one 64 MiB snapshot killed after its first checkpoint in the target: the
/// re-run takes the killed copy's chunks over (`resumed_from`) and uploads less than a full
/// copy; the target checks clean and restores bit-exact with the source gone.
#[test]
fn copy_killed_within_a_snapshot_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = CopyRepos::new(dir.path(), 64 * MIB, 4500);
    let (a, b, id) = (&c.a, &c.b, &c.id);
    let copy = |to: &Path, extra: &[&str]| {
        let mut more = vec!["--checkpoint-interval", "0"];
        more.extend_from_slice(extra);
        c.args(to, &more)
    };
    let full = ok_json(&refs(&copy(&c.reference, &[])));
    let full_up = u64_field(&full, "bytes_uploaded");
    let slow = copy(b, &["--limit-upload", "24M"]);
    let delay = Duration::from_millis(rng(4501).random_range(0..600));
    let ready = || !files_under(b, "checkpoints").is_empty();
    spawn_and_kill(&refs(&slow), ready, delay, "copy");
    assert_check_clean(s(b));
    age_by(b, "leases", ADOPTABLE_AGE);
    let again = ok_json(&refs(&copy(b, &[])));
    let up = u64_field(&again, "bytes_uploaded");
    eprintln!("MEASURED copy re-run after a kill within the snapshot: uploaded {up} B of {full_up} B: {again}");
    assert_eq!(str_list(&again, "copied"), vec![id.clone()], "{again}");
    assert_eq!(
        again["resumed_from"].as_array().map(Vec::len),
        Some(1),
        "{again}"
    );
    assert!(up + 15 * MIB <= full_up, "uploaded {up} of {full_up}");
    assert_check_clean(s(b));
    assert!(files_under(b, "checkpoints").is_empty());
    std::fs::remove_dir_all(a).expect("remove the source");
    assert_restores(s(b), "vm", id, &c.data, dir.path());
}

//! Resumable raw restores beyond a fresh file (issue 4, format-spec §12.3), with the real
//! binary: `restore --into` killed with SIGKILL and re-run (resumes, refuses another job
//! or a replaced OUT), a restore onto a block device (a loop device: capacity checked, no
//! resize, zero chunks written, resume state kept in `--state-dir`, never in /dev), and
//! the removal of stale temporary images of other snapshots' killed qcow2 restores.

use crate::common::kill::{init_repos, spawn_and_kill};
use crate::common::{create_image, rng};
use crate::repo_ops_util::*;
use rand::Rng;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn restore_args<'a>(repo: &'a str, id: &'a str, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "restore",
        "--repo",
        repo,
        "--volume",
        "vm",
        "--snapshot",
        id,
        s(out),
        "--json",
    ];
    a.extend_from_slice(extra);
    a
}

/// Runs `island ARGS`, requires failure, returns stderr.
#[track_caller]
fn fails(args: &[&str]) -> String {
    let out = island(args);
    assert!(!out.status.success(), "island {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Snapshots A (64 MiB random) and B (A with 48 MiB rewritten) of `vm`.
fn two_snapshots(dir: &Path, repo: &Path, seed: u64) -> [(String, Vec<u8>); 2] {
    let vol = dir.join("vol.raw");
    let mut a = write_volume(&vol, 64 * MIB, 64 * MIB, seed);
    let id_a = str_field(&backup(s(repo), "vm", &vol), "id").to_string();
    let data_a = a.clone();
    change(&vol, &mut a, &(0..768).collect::<Vec<u64>>(), seed + 1);
    let id_b = str_field(&backup(s(repo), "vm", &vol), "id").to_string();
    [(id_a, data_a), (id_b, a)]
}

/// OUT holds A; `restore --into --base A` of B is killed part way; another `--into` job on
/// OUT is refused, the same job resumes (keeps what was written, downloads the rest) and
/// leaves OUT equal to B. Killed again going back to A, with OUT then replaced by a copy:
/// the re-run refuses, naming the reason.
#[test]
fn restore_into_killed_with_sigkill_resumes_and_refuses_a_changed_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [repo] = init_repos(dir.path(), ["repo"]);
    let [(a, data_a), (b, data_b)] = two_snapshots(dir.path(), &repo, 4700);
    let out = dir.path().join("out.raw");
    ok_json(&restore_args(s(&repo), &a, &out, &[]));
    let marker = dir.path().join(".out.raw.island-restore");
    // Reference: an uninterrupted --into restore of A -> B downloads this much.
    let refcopy = dir.path().join("ref.raw");
    std::fs::copy(&out, &refcopy).expect("copy OUT");
    let full = ok_json(&restore_args(
        s(&repo),
        &b,
        &refcopy,
        &["--into", "--base", &a],
    ));
    let full_down = u64_field(&full, "bytes_downloaded");

    // 48 MiB at 8 MiB/s: killed after the first window (16 MiB) is written and recorded.
    let slow = restore_args(
        s(&repo),
        &b,
        &out,
        &["--into", "--base", &a, "--limit-download", "8M"],
    );
    let delay = Duration::from_millis(3000 + rng(4702).random_range(0..600));
    spawn_and_kill(&slow, || marker.exists(), delay, "restore --into");
    assert!(marker.exists(), "a killed --into restore leaves its marker");
    // OUT is neither A nor B now: restoring A -> B again from "A" or B -> A is refused.
    let err = fails(&restore_args(s(&repo), &a, &out, &["--into", "--base", &b]));
    assert!(err.contains("unfinished restore"), "{err}");
    let r = ok_json(&restore_args(s(&repo), &b, &out, &["--into", "--base", &a]));
    let (down, kept, before) = (
        u64_field(&r, "bytes_downloaded"),
        u64_field(&r, "bytes_kept"),
        u64_field(&r, "bytes_done_before"),
    );
    eprintln!(
        "MEASURED restore --into re-run: downloaded {down} B of {full_down} B, kept {kept} B \
         (hash-checked), {before} B below the recorded progress"
    );
    assert_eq!(r["resumed"], Value::Bool(true), "{r}");
    assert!(kept + before > 0 && down < full_down, "{r}");
    // The resume point is saved per window, not only per 1 GiB: the re-run skips what
    // lies below it instead of re-verifying everything the killed run wrote.
    assert!(
        before >= 16 * MIB,
        "no resume point recorded inside the leaf: {r}"
    );
    assert!(
        std::fs::read(&out).expect("read OUT") == data_b,
        "OUT is not B"
    );
    assert!(!marker.exists(), "marker left after the finished restore");

    // Back to A, killed; then OUT replaced by a copy of itself (new inode).
    let slow = restore_args(
        s(&repo),
        &a,
        &out,
        &["--into", "--base", &b, "--limit-download", "16M"],
    );
    let delay = Duration::from_millis(800);
    spawn_and_kill(&slow, || marker.exists(), delay, "restore");
    let copy = dir.path().join("copy.raw");
    std::fs::copy(&out, &copy).expect("copy OUT");
    std::fs::rename(&copy, &out).expect("replace OUT");
    let err = fails(&restore_args(s(&repo), &a, &out, &["--into", "--base", &b]));
    assert!(err.contains("replaced or resized"), "{err}");
    // A whole restore (no --into) is always possible and clears the state.
    ok_json(&restore_args(s(&repo), &a, &out, &[]));
    assert!(
        std::fs::read(&out).expect("read OUT") == data_a,
        "OUT is not A"
    );
    assert!(!marker.exists());
}

/// A loop device over a file, detached on drop.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    /// `None` (with the reason printed) where loop devices cannot be set up (not root).
    fn attach(backing: &Path) -> Option<Loop> {
        let out = Command::new("losetup")
            .args(["--find", "--show", s(backing)])
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Loop {
                dev: PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
            }),
            Ok(o) => {
                eprintln!(
                    "SKIP: losetup failed ({}); loop devices need root",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIP: losetup not runnable: {e}");
                None
            }
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Restore onto a loop device 8 MiB larger than the 40 MiB snapshot and pre-filled with
/// 0xAA: the snapshot's zero chunks read as zero afterwards, the 8 MiB beyond it are left
/// alone, no marker is written next to the device; a device smaller than the snapshot is
/// refused; `--into` a device needs `--state-dir`; with `--state-dir` a killed restore
/// resumes.
#[test]
fn restore_onto_a_block_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [repo] = init_repos(dir.path(), ["repo"]);
    let vol = dir.path().join("vol.raw");
    // 24 MiB random then 16 MiB of zeros.
    let data = write_volume(&vol, 40 * MIB, 24 * MIB, 4800);
    let id = str_field(&backup(s(&repo), "vm", &vol), "id").to_string();
    let backing = dir.path().join("disk.img");
    std::fs::write(&backing, vec![0xAAu8; (48 * MIB) as usize]).expect("backing file");
    let small_backing = dir.path().join("small.img");
    std::fs::write(&small_backing, vec![0u8; (32 * MIB) as usize]).expect("backing file");
    let Some(dev) = Loop::attach(&backing) else {
        return;
    };
    let Some(small) = Loop::attach(&small_backing) else {
        return;
    };
    let r = ok_json(&restore_args(s(&repo), &id, &dev.dev, &[]));
    assert_eq!(u64_field(&r, "chunks_zeroed"), 256, "{r}");
    let got = std::fs::read(&backing).expect("read the backing file");
    assert!(got[..data.len()] == data[..], "device content differs");
    assert!(
        got[data.len()..].iter().all(|b| *b == 0xAA),
        "bytes past the snapshot changed"
    );
    let name = dev
        .dev
        .file_name()
        .expect("device name")
        .to_string_lossy()
        .into_owned();
    assert!(!Path::new(&format!("/dev/.{name}.island-restore")).exists());

    let err = fails(&restore_args(s(&repo), &id, &small.dev, &[]));
    assert!(err.contains("device holds 33554432 bytes"), "{err}");
    let err = fails(&restore_args(
        s(&repo),
        &id,
        &dev.dev,
        &["--into", "--base", &id],
    ));
    assert!(err.contains("--state-dir"), "{err}");

    // Killed with --state-dir, then resumed from the marker kept there.
    std::fs::write(&backing, vec![0xAAu8; (48 * MIB) as usize]).expect("refill");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let slow = restore_args(
        s(&repo),
        &id,
        &dev.dev,
        &["--state-dir", s(&state), "--limit-download", "8M"],
    );
    let ready = || std::fs::read_dir(&state).is_ok_and(|d| d.count() > 0);
    let delay = Duration::from_millis(1500);
    spawn_and_kill(&slow, ready, delay, "device restore");
    let r = ok_json(&restore_args(
        s(&repo),
        &id,
        &dev.dev,
        &["--state-dir", s(&state)],
    ));
    eprintln!("MEASURED device restore re-run: {r}");
    assert_eq!(r["resumed"], Value::Bool(true), "{r}");
    assert!(
        u64_field(&r, "bytes_kept") + u64_field(&r, "bytes_done_before") > 0,
        "{r}"
    );
    let got = std::fs::read(&backing).expect("read the backing file");
    assert!(
        got[..data.len()] == data[..],
        "resumed device content differs"
    );
    assert!(
        std::fs::read_dir(&state).expect("state").count() == 0,
        "marker left"
    );
}

/// Temporary images of killed qcow2 restores of other snapshots to the same OUT are
/// removed by the next qcow2 restore to OUT; one held open (locked) by a running restore,
/// and files whose middle is not a snapshot id, are left alone.
#[test]
fn stale_qcow2_temps_of_other_snapshots_are_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [repo] = init_repos(dir.path(), ["repo"]);
    let vol = dir.path().join("vol.raw");
    let data = write_volume(&vol, 8 * MIB, 8 * MIB, 4900);
    let id = str_field(&backup(s(&repo), "vm", &vol), "id").to_string();
    let other = "20260101T000000.000000Z-0123456789abcdef";
    let busy = "20260101T000001.000000Z-0123456789abcdef";
    // Killed during creation (not an image), and a live one (locked by this process).
    let dead = dir.path().join(format!(".out.qcow2.{other}.island-tmp"));
    std::fs::write(&dead, b"half-created").expect("write");
    let (img, live) = create_image(
        dir.path(),
        &format!(".out.qcow2.{busy}.island-tmp"),
        8 * MIB,
        65536,
    );
    let unrelated = dir.path().join(".out.qcow2.notes.island-tmp");
    std::fs::write(&unrelated, b"x").expect("write");
    let out = dir.path().join("out.qcow2");
    let r = ok_json(&restore_args(s(&repo), &id, &out, &["--format", "qcow2"]));
    assert_eq!(u64_field(&r, "stale_temps_removed"), 1, "{r}");
    assert!(!dead.exists() && live.exists() && unrelated.exists());
    drop(img);
    let img =
        island::image::Image::open(&out, island::image::OpenMode::ReadOnly).expect("open OUT");
    let mut got = vec![0u8; data.len()];
    img.read_at(&mut got, 0).expect("read OUT");
    assert!(got == data, "qcow2 restore differs");
}

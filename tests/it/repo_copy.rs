//! `island copy` end to end: full history fs → fs with ids, parents and created times kept;
//! incremental and no-op re-copies measured by bytes uploaded; different chunk sizes
//! (re-chunking both ways); a copy killed with SIGKILL and re-run; fs → real S3 → real
//! Swift → fs. Every copied snapshot is restored from the target with the source gone.

use crate::objstore_common::{setting, unique_prefix};
use crate::repo_ops_util::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Three snapshots of an 8 MiB volume (4 MiB random, then 24 changed clusters twice).
/// Returns the snapshots with their data, and the bytes the backups uploaded in total.
fn history(repo: &str, vol: &Path) -> (Vec<(String, Vec<u8>)>, u64) {
    let mut data = write_volume(vol, 8 * MIB, 4 * MIB, 11);
    let mut out = Vec::new();
    let mut uploaded = 0;
    for step in 0..3u64 {
        if step > 0 {
            let clusters: Vec<u64> = (0..24).map(|i| (i * 5 + step * 3) % 128).collect();
            change(vol, &mut data, &clusters, 100 + step);
        }
        let r = backup(repo, "vm", vol);
        uploaded += u64_field(&r, "bytes_uploaded");
        out.push((str_field(&r, "id").to_string(), data.clone()));
    }
    (out, uploaded)
}

fn copy(from: &str, to: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "copy", "--from", from, "--to", to, "--volume", "vm", "--json",
    ];
    args.extend_from_slice(extra);
    ok_json(&args)
}

/// The fields copy must keep, per snapshot, in id order.
fn kept_fields(repo: &str) -> Vec<(String, String, Value)> {
    snapshots(repo, "vm")
        .iter()
        .map(|s| {
            (
                str_field(s, "id").to_string(),
                str_field(s, "created").to_string(),
                s.get("parent").cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

#[test]
fn copy_full_history_then_incremental_then_noop_fs_to_fs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let vol = dir.path().join("vol.raw");
    ok(&["init", s(&a)]);
    ok(&["init", s(&b)]);
    let (mut snaps, backups_up) = history(s(&a), &vol);

    let full = copy(s(&a), s(&b), &[]);
    assert_eq!(u64_field(&full, "snapshots_copied"), 3, "{full}");
    assert_eq!(full["rechunked"], Value::Bool(false));
    let full_up = u64_field(&full, "bytes_uploaded");
    // 4 MiB of random data plus 2 × 24 changed clusters: what the three backups sent.
    assert!(
        full_up * 10 <= backups_up * 11 && full_up * 10 >= backups_up * 9,
        "full copy uploaded {full_up}, the backups {backups_up}"
    );
    assert_eq!(u64_field(&full, "chunks_new"), 64 + 2 * 24, "{full}");
    assert_eq!(
        kept_fields(s(&a)),
        kept_fields(s(&b)),
        "ids, created, parents kept"
    );

    // One more backup: the second copy sends about what that backup uploaded.
    let mut data = snaps.last().expect("a snapshot").1.clone();
    change(&vol, &mut data, &[7, 70, 71, 100, 127], 200);
    let inc_backup = backup(s(&a), "vm", &vol);
    snaps.push((str_field(&inc_backup, "id").to_string(), data));
    let backup_up = u64_field(&inc_backup, "bytes_uploaded");
    let inc = copy(s(&a), s(&b), &[]);
    assert_eq!(str_list(&inc, "copied"), vec![snaps[3].0.clone()]);
    assert_eq!(u64_field(&inc, "snapshots_skipped"), 3);
    assert_eq!(u64_field(&inc, "chunks_new"), 5);
    let inc_up = u64_field(&inc, "bytes_uploaded");
    assert!(
        inc_up * 10 <= backup_up * 12 && inc_up * 10 >= backup_up * 8,
        "incremental copy uploaded {inc_up}, the backup it copies uploaded {backup_up}"
    );
    // The walk skipped every unchanged subtree: it read about the changed chunks only.
    let inc_read = u64_field(&inc, "bytes_read");
    assert!(inc_read < 2 * MIB, "incremental copy downloaded {inc_read}");

    let noop = copy(s(&a), s(&b), &[]);
    assert_eq!(u64_field(&noop, "snapshots_copied"), 0);
    assert_eq!(u64_field(&noop, "bytes_uploaded"), 0, "{noop}");
    eprintln!("MEASURED copy fs->fs: full {full_up} B, incremental {inc_up} B (backup uploaded {backup_up} B), no-op {} B",
        u64_field(&noop, "bytes_uploaded"));

    // A single snapshot by id into a third repository.
    let c = dir.path().join("c");
    ok(&["init", s(&c)]);
    let one = copy(s(&a), s(&c), &["--snapshot", &snaps[1].0]);
    assert_eq!(str_list(&one, "copied"), vec![snaps[1].0.clone()]);

    // The source is gone: every snapshot restores from the target, bit-exact.
    std::fs::remove_dir_all(&a).expect("remove the source repository");
    ok(&["check", "--repo", s(&b)]);
    for (id, want) in &snaps {
        assert_restores(s(&b), "vm", id, want, dir.path());
    }
    assert_restores(s(&c), "vm", &snaps[1].0, &snaps[1].1, dir.path());
}

#[test]
fn copy_rechunks_between_chunk_sizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    ok(&["init", s(&a)]);
    ok(&["init", s(&b), "--chunk-size", "16K"]);
    ok(&["init", s(&c), "--chunk-size", "256K"]);
    // Not a multiple of any chunk size: the last chunks are short.
    let vol = dir.path().join("vol.raw");
    let size = 6 * MIB + 12288;
    let mut data = write_volume(&vol, size, 3 * MIB, 5);
    data[(5 * MIB) as usize..]
        .iter_mut()
        .for_each(|b| *b = 0x5a);
    std::fs::write(&vol, &data).expect("write the tail");
    let first = (
        str_field(&backup(s(&a), "vm", &vol), "id").to_string(),
        data.clone(),
    );
    change(&vol, &mut data, &[1, 2, 60, 96], 9);
    let second = (
        str_field(&backup(s(&a), "vm", &vol), "id").to_string(),
        data.clone(),
    );

    let to_small = copy(s(&a), s(&b), &["--snapshot", &first.0]);
    assert_eq!(to_small["rechunked"], Value::Bool(true), "{to_small}");
    assert_eq!(u64_field(&to_small, "target_chunk_size"), 16384);
    let again = copy(s(&a), s(&b), &[]);
    assert_eq!(str_list(&again, "copied"), vec![second.0.clone()]);
    // Only the 16 KiB pieces of the changed 64 KiB clusters are new: 4 each for clusters
    // 1, 2 and 60, and 1 for cluster 96, which holds only the volume's 12 KiB tail.
    assert_eq!(u64_field(&again, "chunks_new"), 13, "{again}");
    assert!(u64_field(&again, "chunks_reused") > 100, "{again}");

    // And back up to a larger chunk size, from the 16 KiB repository.
    let to_large = copy(s(&b), s(&c), &[]);
    assert_eq!(u64_field(&to_large, "snapshots_copied"), 2);
    assert_eq!(kept_fields(s(&a)), kept_fields(s(&c)));
    std::fs::remove_dir_all(&a).expect("remove the source");
    for repo in [&b, &c] {
        ok(&["check", "--repo", s(repo)]);
        for (id, want) in [&first, &second] {
            assert_restores(s(repo), "vm", id, want, dir.path());
        }
    }
    let plain = ok(&["copy", "--from", s(&b), "--to", s(&c), "--volume", "vm"]);
    assert!(
        plain.contains("re-chunked"),
        "text output says it re-chunks: {plain}"
    );
}

#[test]
fn copy_killed_with_sigkill_resumes_per_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, full_ref) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("ref"),
    );
    for r in [&a, &b, &full_ref] {
        ok(&["init", s(r)]);
    }
    // Five snapshots with 24 MiB of new data each: slow enough to kill mid-way.
    let vol = dir.path().join("vol.raw");
    let mut snaps = Vec::new();
    for i in 0..5u64 {
        let data = write_volume(&vol, 24 * MIB, 24 * MIB, 300 + i);
        snaps.push((
            str_field(&backup(s(&a), "vm", &vol), "id").to_string(),
            data,
        ));
    }
    let reference = copy(s(&a), s(&full_ref), &[]);
    let full_up = u64_field(&reference, "bytes_uploaded");

    let mut child = island_cmd(&[
        "copy",
        "--from",
        s(&a),
        "--to",
        s(&b),
        "--volume",
        "vm",
        "--json",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("spawn island copy");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let roots = files_under(&b, "snapshots").len();
        if roots >= 1 {
            break;
        }
        assert!(
            child.try_wait().expect("poll copy").is_none(),
            "copy ended before the kill"
        );
        assert!(Instant::now() < deadline, "copy committed nothing in 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL the copy");
    child.wait().expect("reap the copy");
    let committed = files_under(&b, "snapshots").len();
    assert!(committed < 5, "the copy finished before it was killed");

    let resumed = copy(s(&a), s(&b), &[]);
    assert_eq!(
        u64_field(&resumed, "snapshots_skipped"),
        committed as u64,
        "{resumed}"
    );
    assert_eq!(
        u64_field(&resumed, "snapshots_copied"),
        5 - committed as u64
    );
    let resumed_up = u64_field(&resumed, "bytes_uploaded");
    assert!(
        resumed_up < full_up,
        "resumed copy uploaded {resumed_up} of {full_up}"
    );
    eprintln!("MEASURED copy killed after {committed}/5 snapshots: re-run uploaded {resumed_up} B of {full_up} B");
    ok(&["check", "--repo", s(&b)]);
    // The killed copy's lease is younger than its expiry: repair leaves its objects alone.
    let repair = ok_json(&["check", "--repo", s(&b), "--repair", "--json"]);
    assert_eq!(u64_field(&repair, "refcounts_fixed"), 0, "{repair}");
    std::fs::remove_dir_all(&a).expect("remove the source");
    for (id, want) in &snaps {
        assert_restores(s(&b), "vm", id, want, dir.path());
    }
}

/// fs → S3 → Swift → fs through the real servers; the incremental hop to S3 sends only
/// the new snapshot's data.
#[test]
fn copy_fs_to_s3_to_swift_and_back() {
    let test = "copy_fs_s3_swift_fs";
    let (Some(bucket), Some(endpoint), Some(region), Some(container)) = (
        setting(test, "ISLAND_TEST_S3_BUCKET"),
        setting(test, "ISLAND_TEST_S3_ENDPOINT"),
        setting(test, "ISLAND_TEST_S3_REGION"),
        setting(test, "ISLAND_TEST_SWIFT_CONTAINER"),
    ) else {
        return;
    };
    if setting(test, "AWS_ACCESS_KEY_ID").is_none() || setting(test, "ST_AUTH").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, d) = (dir.path().join("a"), dir.path().join("d"));
    let s3 = format!("s3://{bucket}/{}", unique_prefix(test));
    let swift = format!("swift://{container}/{}", unique_prefix(test));
    let g = [
        "--s3-endpoint",
        &endpoint,
        "--s3-region",
        &region,
        "--s3-path-style",
    ];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter().chain(g.iter()).map(|x| x.to_string()).collect()
    };
    let run = |args: &[&str]| -> Value {
        let v = with(args);
        ok_json(&v.iter().map(String::as_str).collect::<Vec<_>>())
    };
    ok(&["init", s(&a)]);
    ok(&with(&["init", &s3])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    ok(&with(&["init", &swift])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    ok(&["init", s(&d)]);
    let vol = dir.path().join("vol.raw");
    let mut data = write_volume(&vol, 4 * MIB, 2 * MIB, 21);
    let mut snaps = vec![(
        str_field(&backup(s(&a), "vm", &vol), "id").to_string(),
        data.clone(),
    )];

    let hop = |from: &str, to: &str| {
        run(&[
            "copy", "--from", from, "--to", to, "--volume", "vm", "--json",
        ])
    };
    let first = hop(s(&a), &s3);
    assert_eq!(u64_field(&first, "snapshots_copied"), 1);
    change(&vol, &mut data, &[3, 4, 50], 22);
    let b2 = backup(s(&a), "vm", &vol);
    snaps.push((str_field(&b2, "id").to_string(), data.clone()));
    let inc = hop(s(&a), &s3);
    assert_eq!(u64_field(&inc, "chunks_new"), 3, "{inc}");
    let (inc_up, backup_up) = (
        u64_field(&inc, "bytes_uploaded"),
        u64_field(&b2, "bytes_uploaded"),
    );
    assert!(
        inc_up * 10 <= backup_up * 12,
        "S3 incremental copy uploaded {inc_up}, backup {backup_up}"
    );
    eprintln!(
        "MEASURED copy fs->s3: full {} B, incremental {inc_up} B",
        u64_field(&first, "bytes_uploaded")
    );
    assert_eq!(u64_field(&hop(&s3, &swift), "snapshots_copied"), 2);
    // And back from Swift to another S3 repository (cross-cloud both ways), then to a
    // directory; every hop keeps the snapshot ids.
    let s3_back = format!("s3://{bucket}/{}", unique_prefix(test));
    ok(&with(&["init", &s3_back])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    let back = hop(&swift, &s3_back);
    assert_eq!(u64_field(&back, "snapshots_copied"), 2, "{back}");
    assert_eq!(u64_field(&hop(&swift, &s3_back), "bytes_uploaded"), 0);
    assert_eq!(u64_field(&hop(&s3_back, s(&d)), "snapshots_copied"), 2);
    std::fs::remove_dir_all(&a).expect("remove the source");
    for (id, want) in &snaps {
        assert_restores(s(&d), "vm", id, want, dir.path());
    }
    assert_eq!(kept_fields(s(&d)).len(), 2);
}

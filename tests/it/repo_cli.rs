//! End to end through the built `island` binary on a local directory repository: the
//! commands, flags, JSON fields and exit codes scripts depend on (README.md), with real
//! files compared byte for byte.

use crate::common::cli::{island, ok, ok_json};
use rand::{RngCore, SeedableRng};
use serde_json::Value;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;
const CLUSTER: u64 = 64 << 10;
/// 64 MiB volume: the first half random, the second half zeros (written, not sparse).
const VOLUME_SIZE: u64 = 64 * MIB;

/// Runs `island ARGS`, requires exit code `code`, returns (stdout, stderr).
fn fails(args: &[&str], code: i32) -> (String, String) {
    let out = island(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "island {args:?}: expected exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    );
    (stdout, stderr)
}

fn u64_field(v: &Value, name: &str) -> u64 {
    v.get(name)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("field {name} missing or not an unsigned integer in {v}"))
}

fn str_field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("field {name} missing or not a string in {v}"))
}

fn write_volume(path: &Path) -> Vec<u8> {
    let mut data = vec![0u8; VOLUME_SIZE as usize];
    rand::rngs::StdRng::seed_from_u64(3).fill_bytes(&mut data[..(VOLUME_SIZE / 2) as usize]);
    std::fs::write(path, &data).expect("write the volume");
    data
}

/// Clusters rewritten by the incremental step: 8 in the random half, 8 in the zero half
/// (16 of 1024 = 1.6 %), two of them adjacent.
const CHANGED: [u64; 16] = [
    3, 40, 41, 97, 200, 301, 404, 511, 512, 600, 700, 777, 800, 901, 1000, 1023,
];

fn change_clusters(path: &Path, data: &mut [u8]) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    for c in CHANGED {
        let at = (c * CLUSTER) as usize;
        rng.fill_bytes(&mut data[at..at + CLUSTER as usize]);
    }
    std::fs::write(path, &*data).expect("rewrite the volume");
}

fn assert_same_file(path: &Path, expected: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(
        got.len(),
        expected.len(),
        "{}: size differs",
        path.display()
    );
    if let Some(at) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{}: first difference at byte {at}", path.display());
    }
}

fn largest_pack(repo: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut dirs = vec![repo.join("packs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("list packs") {
            let entry = entry.expect("dir entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if best.as_ref().is_none_or(|(len, _)| meta.len() > *len) {
                best = Some((meta.len(), entry.path()));
            }
        }
    }
    best.expect("the repository has a pack").1
}

#[test]
fn backup_incremental_restore_delete_gc_check_diff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let repo_s = repo.to_str().expect("utf-8 path");
    let vol = dir.path().join("volume.raw");
    let vol_s = vol.to_str().expect("utf-8 path");
    let mut data = write_volume(&vol);
    let first_data = data.clone();

    ok(&["init", repo_s]);
    // A second init must refuse to overwrite the repository.
    let (_, err) = fails(&["init", repo_s], 1);
    assert!(err.contains("already"), "second init: {err}");

    // Full backup: only the random half is uploaded (zero chunks are never stored).
    let out = island(&[
        "backup", "--repo", repo_s, "--volume", "vm1", vol_s, "--json",
    ]);
    assert!(
        out.status.success(),
        "backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full: Value = serde_json::from_slice(&out.stdout).expect("backup --json");
    let statuses: Vec<Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("type").and_then(Value::as_str) == Some("status"))
        .collect();
    assert!(
        !statuses.is_empty(),
        "backup --json wrote no status lines to stderr"
    );
    for s in &statuses {
        str_field(s, "stage");
        let pct = s.get("percent").and_then(Value::as_f64).expect("percent");
        assert!((0.0..=100.0).contains(&pct), "percent {pct}");
    }
    let id1 = str_field(&full, "id").to_string();
    assert_eq!(str_field(&full, "volume"), "vm1");
    // bytes_read counts the non-zero chunks read (zero chunks are detected, not counted).
    assert_eq!(u64_field(&full, "bytes_read"), VOLUME_SIZE / 2);
    let up = u64_field(&full, "bytes_uploaded");
    assert!(
        (VOLUME_SIZE / 2..VOLUME_SIZE / 2 + 2 * MIB).contains(&up),
        "full backup uploaded {up} bytes for 32 MiB of random data"
    );
    assert_eq!(u64_field(&full, "chunks_new"), 512);
    assert_eq!(u64_field(&full, "chunks_reused"), 0);
    // ≤ 1 PUT per 4 MiB of new data and 1 HEAD of the writer's intent per pack (a writer
    // gc judged dead stops: format-spec §5), plus the fixed objects: lease, intent, the
    // first checkpoint after the first pack (§12), commit, view loading.
    let reqs = u64_field(&full, "requests");
    assert!(
        (1..=8 + 8 + 26).contains(&reqs),
        "full backup made {reqs} requests"
    );

    // 1.6 % changed: the incremental upload is about the changed bytes.
    change_clusters(&vol, &mut data);
    let changed = CHANGED.len() as u64 * CLUSTER;
    let inc = ok_json(&[
        "backup", "--repo", repo_s, "--volume", "vm1", vol_s, "--json",
    ]);
    let id2 = str_field(&inc, "id").to_string();
    assert!(
        id2 > id1,
        "snapshot ids sort by creation time: {id1} then {id2}"
    );
    let up = u64_field(&inc, "bytes_uploaded");
    assert!(
        (changed..=4 * changed).contains(&up),
        "incremental uploaded {up} bytes for {changed} changed"
    );
    assert_eq!(u64_field(&inc, "chunks_new"), CHANGED.len() as u64);

    // snapshots --json: the documented fields, parent chain, sizes.
    let list = ok_json(&["snapshots", "--repo", repo_s, "--json"]);
    let list = list.as_array().expect("snapshots --json is a list");
    assert_eq!(list.len(), 2, "{list:?}");
    let (s1, s2) = (&list[0], &list[1]);
    assert_eq!(str_field(s1, "id"), id1);
    assert_eq!(str_field(s2, "id"), id2);
    for s in list {
        assert_eq!(str_field(s, "volume"), "vm1");
        assert_eq!(u64_field(s, "size"), VOLUME_SIZE);
        let created = str_field(s, "created");
        time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("created {created:?} is not RFC 3339: {e}"));
    }
    assert!(s1.get("parent").expect("parent field").is_null());
    assert_eq!(str_field(s2, "parent"), id1);
    assert!(u64_field(s1, "new_bytes") >= VOLUME_SIZE / 2);
    let new2 = u64_field(s2, "new_bytes");
    assert!((changed..=2 * changed).contains(&new2), "new_bytes {new2}");
    // Deleting the first would free the 8 random clusters the second overwrote (and the
    // tables only it uses); the second holds all 16 of its new clusters exclusively.
    let ex1 = u64_field(s1, "exclusive_bytes");
    assert!(
        (8 * CLUSTER..=8 * CLUSTER + 256 * 1024).contains(&ex1),
        "exclusive_bytes {ex1}"
    );
    let ex2 = u64_field(s2, "exclusive_bytes");
    assert!(
        (changed..=changed + 256 * 1024).contains(&ex2),
        "exclusive_bytes {ex2}"
    );
    let only_other = ok_json(&["snapshots", "--repo", repo_s, "--volume", "other", "--json"]);
    assert_eq!(only_other.as_array().map(Vec::len), Some(0));

    // diff: exactly the rewritten clusters, all data.
    let ranges = ok_json(&[
        "diff", "--repo", repo_s, "--volume", "vm1", "--from", &id1, "--to", &id2, "--json",
    ]);
    let mut clusters = Vec::new();
    for r in ranges.as_array().expect("diff --json is a list") {
        let (off, len) = (u64_field(r, "offset"), u64_field(r, "length"));
        assert_eq!(r.get("zero").and_then(Value::as_bool), Some(false), "{r}");
        assert!(off % CLUSTER == 0 && len % CLUSTER == 0 && len > 0, "{r}");
        clusters.extend((off / CLUSTER)..((off + len) / CLUSTER));
    }
    assert_eq!(clusters, CHANGED.to_vec());

    // Both snapshots restore bit-exact.
    let out1 = dir.path().join("restore1.raw");
    let out2 = dir.path().join("restore2.raw");
    ok(&[
        "restore",
        "--repo",
        repo_s,
        "--volume",
        "vm1",
        "--snapshot",
        &id1,
        out1.to_str().unwrap(),
    ]);
    assert_same_file(&out1, &first_data);
    ok(&[
        "restore",
        "--repo",
        repo_s,
        "--volume",
        "vm1",
        "--snapshot",
        &id2,
        out2.to_str().unwrap(),
    ]);
    assert_same_file(&out2, &data);

    // --into --base: turn the restored first snapshot into the second in place.
    ok(&[
        "restore",
        "--repo",
        repo_s,
        "--volume",
        "vm1",
        "--snapshot",
        &id2,
        "--into",
        "--base",
        &id1,
        out1.to_str().unwrap(),
    ]);
    assert_same_file(&out1, &data);

    // Delete the first, gc, and the second still restores bit-exact; check is clean.
    ok(&[
        "delete",
        "--repo",
        repo_s,
        "--volume",
        "vm1",
        "--snapshot",
        &id1,
    ]);
    let list = ok_json(&["snapshots", "--repo", repo_s, "--json"]);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| str_field(s, "id"))
        .collect();
    assert_eq!(ids, vec![id2.as_str()]);
    ok(&["gc", "--repo", repo_s]);
    std::fs::remove_file(&out2).unwrap();
    ok(&[
        "restore",
        "--repo",
        repo_s,
        "--volume",
        "vm1",
        "--snapshot",
        &id2,
        out2.to_str().unwrap(),
    ]);
    assert_same_file(&out2, &data);
    let clean = ok(&["check", "--repo", repo_s, "--read-data"]);
    assert!(clean.contains("no problems"), "check: {clean}");
    ok(&["check", "--repo", repo_s, "--read-data", "--sample", "50"]);
    let (_, err) = fails(
        &[
            "restore",
            "--repo",
            repo_s,
            "--volume",
            "vm1",
            "--snapshot",
            &id1,
            dir.path().join("gone.raw").to_str().unwrap(),
        ],
        1,
    );
    assert!(err.contains(&id1), "restore of a deleted snapshot: {err}");

    // One flipped byte inside a data pack: check --read-data names the damaged snapshot
    // and exits 3; the structural check (no data read) does not see it.
    let pack = largest_pack(&repo);
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&pack, &bytes).unwrap();
    ok(&["check", "--repo", repo_s]);
    let (stdout, _) = fails(&["check", "--repo", repo_s, "--read-data"], 3);
    assert!(
        stdout.contains(&id2),
        "check output does not name snapshot {id2}: {stdout}"
    );
    let (stdout, _) = fails(&["check", "--repo", repo_s, "--read-data", "--json"], 3);
    let report: Value = serde_json::from_str(&stdout).expect("check --json");
    assert!(report.to_string().contains(&id2), "check --json: {report}");
}

#[test]
fn errors_exit_non_zero_with_clear_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-repo");
    let missing_s = missing.to_str().unwrap();
    let vol = dir.path().join("v.raw");
    std::fs::write(&vol, vec![7u8; 1 << 20]).unwrap();
    let vol_s = vol.to_str().unwrap();

    let (_, err) = fails(&["snapshots", "--repo", missing_s], 1);
    assert!(err.contains("no-such-repo"), "missing repo: {err}");
    let (_, err) = fails(&["backup", "--repo", missing_s, "--volume", "v", vol_s], 1);
    assert!(err.contains("no-such-repo"), "missing repo: {err}");

    let repo = dir.path().join("repo");
    let repo_s = repo.to_str().unwrap();
    ok(&["init", repo_s, "--chunk-size", "64K"]);
    let id = str_field(
        &ok_json(&["backup", "--repo", repo_s, "--volume", "v", vol_s, "--json"]),
        "id",
    )
    .to_string();
    let bogus = "20260101T000000.000000Z-0123456789abcdef";
    let out = dir.path().join("out.raw");
    let (_, err) = fails(
        &[
            "restore",
            "--repo",
            repo_s,
            "--volume",
            "v",
            "--snapshot",
            bogus,
            out.to_str().unwrap(),
        ],
        1,
    );
    assert!(err.contains(bogus), "unknown snapshot: {err}");
    let (_, err) = fails(
        &[
            "delete",
            "--repo",
            repo_s,
            "--volume",
            "v",
            "--snapshot",
            bogus,
        ],
        1,
    );
    assert!(err.contains(bogus), "unknown snapshot: {err}");
    let (_, err) = fails(
        &[
            "diff", "--repo", repo_s, "--volume", "v", "--from", &id, "--to", bogus,
        ],
        1,
    );
    assert!(err.contains(bogus), "unknown snapshot: {err}");
    let (_, err) = fails(
        &[
            "backup",
            "--repo",
            repo_s,
            "--volume",
            "v",
            "/no/such/image",
        ],
        1,
    );
    assert!(err.contains("/no/such/image"), "missing image: {err}");

    // Usage errors are exit 2 (clap).
    fails(
        &[
            "restore",
            "--repo",
            repo_s,
            "--volume",
            "v",
            "--snapshot",
            &id,
            "--into",
            "x",
        ],
        2,
    );
    fails(&["check", "--repo", repo_s, "--sample", "10"], 2);
    fails(&["init", repo_s, "--chunk-size", "lots"], 2);
    fails(&["frobnicate"], 2);
    // A chunk size the format refuses is a clear failure, not a crash.
    let (_, err) = fails(
        &[
            "init",
            dir.path().join("r2").to_str().unwrap(),
            "--chunk-size",
            "3000",
        ],
        1,
    );
    assert!(err.contains("chunk"), "bad chunk size: {err}");
}

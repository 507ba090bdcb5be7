//! `island forget` end to end: a nightly-style history whose created times are set to
//! chosen UTC dates (root manifests re-sealed per format-spec §3.5, the only way to age a
//! snapshot in a test), then the policy keeps exactly the snapshots restic's rules keep,
//! a dry run deletes nothing, the real run frees exactly the removed snapshots' exclusive
//! chunks, and the kept snapshots still restore after gc.

use crate::repo_ops_util::*;
use serde_json::Value;
use std::collections::BTreeMap;

const MIB: u64 = 1 << 20;

/// Created times (UTC), oldest first: weeks are ISO weeks (Monday–Sunday).
const CREATED: [&str; 8] = [
    "2026-01-05T10:00:00.000000Z", // Mon, ISO week 2, January
    "2026-01-20T10:00:00.000000Z", // Tue, week 4, January
    "2026-02-02T10:00:00.000000Z", // Mon, week 6
    "2026-02-03T09:00:00.000000Z", // Tue, week 6
    "2026-02-03T18:00:00.000000Z", // Tue, week 6 (newest of week 6)
    "2026-02-09T08:00:00.000000Z", // Mon, week 7
    "2026-02-10T08:00:00.000000Z", // Tue, week 7
    "2026-02-10T20:00:00.000000Z", // Tue, week 7 (newest)
];

fn set_created(repo: &std::path::Path, volume: &str, id: &str, created: &str) {
    let path = repo.join("snapshots").join(volume).join(id);
    let mut root = open_envelope(&std::fs::read(&path).expect("read root"));
    root["created"] = Value::String(created.into());
    std::fs::write(&path, envelope(b"ISRT", &root)).expect("rewrite root");
}

/// id → reasons, from a forget report's `kept` list.
fn kept(report: &Value) -> BTreeMap<String, Vec<String>> {
    report["kept"]
        .as_array()
        .expect("kept list")
        .iter()
        .map(|k| (str_field(k, "id").to_string(), str_list(k, "reasons")))
        .collect()
}

fn removed(report: &Value) -> Vec<String> {
    report["removed"]
        .as_array()
        .expect("removed list")
        .iter()
        .map(|k| str_field(k, "id").to_string())
        .collect()
}

#[test]
fn forget_keeps_exactly_the_policy_and_dry_run_deletes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let r = s(&repo);
    ok(&["init", r]);
    let vol = dir.path().join("vol.raw");
    let mut data = write_volume(&vol, 2 * MIB, MIB, 40);
    let mut snaps = Vec::new();
    for (i, created) in CREATED.iter().enumerate() {
        // Clusters 10 and 11 get new data every night: each version is exclusive to its
        // snapshot, so removing a snapshot frees exactly 2 × 64 KiB.
        change(&vol, &mut data, &[10, 11], 500 + i as u64);
        let id = str_field(&backup(r, "vm", &vol), "id").to_string();
        set_created(&repo, "vm", &id, created);
        snaps.push((id, data.clone()));
    }
    let other = str_field(&backup(r, "other", &vol), "id").to_string();
    ok(&["check", "--repo", r]);

    let policy = [
        "--keep-last",
        "1",
        "--keep-daily",
        "2",
        "--keep-weekly",
        "2",
        "--keep-monthly",
        "2",
    ];
    let mut dry_args = vec!["forget", "--repo", r, "--dry-run", "--json"];
    dry_args.extend_from_slice(&policy);
    let dry = ok_json(&dry_args);
    let id = |i: usize| snaps[i].0.clone();
    let strs = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let want_kept: BTreeMap<String, Vec<String>> = [
        (id(7), strs(&["last", "daily", "weekly", "monthly"])),
        (id(5), strs(&["daily"])),
        (id(4), strs(&["weekly"])),
        (id(1), strs(&["monthly"])),
        (other.clone(), strs(&["last", "daily", "weekly", "monthly"])),
    ]
    .into_iter()
    .collect();
    assert_eq!(kept(&dry), want_kept, "{dry}");
    assert_eq!(
        removed(&dry),
        vec![id(0), id(2), id(3), id(6)],
        "oldest first"
    );
    assert_eq!(dry["dry_run"], Value::Bool(true));
    assert_eq!(u64_field(&dry, "bytes_freed"), 4 * 2 * CLUSTER);
    assert_eq!(
        u64_field(&dry, "bytes_uploaded"),
        0,
        "a dry run writes nothing"
    );
    assert_eq!(snapshots(r, "vm").len(), 8, "the dry run deleted nothing");

    let mut args = vec!["forget", "--repo", r, "--json"];
    args.extend_from_slice(&policy);
    let real = ok_json(&args);
    assert_eq!(kept(&real), want_kept);
    assert_eq!(removed(&real), removed(&dry));
    assert_eq!(u64_field(&real, "bytes_freed"), 4 * 2 * CLUSTER);
    let left: Vec<String> = snapshots(r, "vm")
        .iter()
        .map(|s| str_field(s, "id").to_string())
        .collect();
    assert_eq!(left, vec![id(1), id(4), id(5), id(7)]);
    assert_eq!(snapshots(r, "other").len(), 1);

    // Running it again removes nothing more; the text output names reasons.
    let mut again = vec!["forget", "--repo", r, "--volume", "vm"];
    again.extend_from_slice(&policy);
    let text = ok(&again);
    assert!(text.contains("0 removed"), "{text}");
    assert!(text.contains("(last, daily, weekly, monthly)"), "{text}");

    ok(&["gc", "--repo", r]);
    ok(&["check", "--repo", r, "--read-data"]);
    for i in [1, 4, 5, 7] {
        assert_restores(r, "vm", &snaps[i].0, &snaps[i].1, dir.path());
    }
}

#[test]
fn forget_refuses_a_policy_that_keeps_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    ok(&["init", s(&repo)]);
    let out = island(&["forget", "--repo", s(&repo)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--keep-last"));
    let out = island(&["forget", "--repo", s(&repo), "--keep-last", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least one"));
}

//! `island gc --dry-run` and the progress of `gc`, `delete` and `forget` (issue 4), end to
//! end on a directory repository. The dry run must predict the gc that follows exactly and
//! leave every object untouched; every stage's `--json` status lines must end at 100 %.
//!
//! Store time on a directory repository is the files' mtime: to let gc process a delete,
//! the tests age `tombstones/` past gc's cutoff (`SKEW`) as `repo_kill` does.

use crate::common::cli::island;
use crate::common::tempdir;
use crate::repo_ops_util::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// gc report fields a dry run predicts (all but `requests` and `dry_run`).
const PREDICTED: &[&str] = &[
    "blobs_collected",
    "packs_deleted",
    "packs_repacked",
    "bytes_reclaimed",
    "bytes_rewritten",
    "dead_bytes_kept",
    "segments_compacted",
    "dead_writers_cleaned",
    "tables_revived",
];

/// Move the mtime of every file under `repo/sub` two hours back (past gc's cutoff).
fn age(repo: &Path, sub: &str) {
    let then = SystemTime::now() - Duration::from_secs(2 * 3600);
    for f in files_under(repo, sub) {
        std::fs::File::options()
            .write(true)
            .open(&f)
            .and_then(|h| h.set_modified(then))
            .unwrap_or_else(|e| panic!("age {}: {e}", f.display()));
    }
}

/// Every file of the repository with its size and mtime.
fn listing(repo: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    files_under(repo, "")
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).expect("stat a repository file");
            let t = m.modified().expect("mtime");
            (p.display().to_string(), (m.len(), t))
        })
        .collect()
}

/// Runs `island ARGS` (exit 0); returns the stdout JSON and the stderr status lines.
#[track_caller]
fn run_with_status(args: &[&str]) -> (Value, Vec<Value>) {
    let out = island(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "island {args:?}: {:?}\n{stderr}",
        out.status.code()
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("island {args:?}: bad JSON on stdout ({e})"));
    let status = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("type").and_then(Value::as_str) == Some("status"))
        .collect();
    (report, status)
}

/// The stages of `status` in order of first appearance; each must end with a line at
/// 100 % whose `done` equals its `total`, and never go backwards.
#[track_caller]
fn stages_completed(what: &str, status: &[Value]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut last: BTreeMap<String, &Value> = BTreeMap::new();
    for v in status {
        let stage = str_field(v, "stage").to_string();
        if let Some(prev) = last.get(&stage) {
            assert!(
                u64_field(v, "done") >= u64_field(prev, "done"),
                "{what}: {stage} went backwards: {prev} then {v}"
            );
        } else {
            order.push(stage.clone());
        }
        last.insert(stage, v);
    }
    for (stage, v) in &last {
        assert_eq!(
            v.get("percent").and_then(Value::as_f64),
            Some(100.0),
            "{what}: stage {stage} ended at {v}"
        );
        assert_eq!(
            u64_field(v, "done"),
            u64_field(v, "total"),
            "{what}: stage {stage} ended at {v}"
        );
    }
    order
}

/// A repository with history: three snapshots of one volume (each changing clusters), a
/// second volume sharing data, then the first two snapshots deleted and aged past gc's
/// cutoff, so a gc collects, deletes and repacks packs.
fn repository_with_deletes(dir: &Path) -> (String, Vec<u8>, String) {
    let repo = dir.join("repo");
    let r = s(&repo).to_string();
    crate::common::cli::ok(&["init", &r]);
    let vol = dir.join("vol.raw");
    let mut data = write_volume(&vol, 4 << 20, 3 << 20, 11);
    let mut ids = Vec::new();
    for (round, clusters) in [&[0u64, 1, 2, 3, 9][..], &[4, 5, 20, 21], &[]]
        .iter()
        .enumerate()
    {
        if !clusters.is_empty() {
            change(&vol, &mut data, clusters, 100 + round as u64);
        }
        ids.push(str_field(&backup(&r, "vm", &vol), "id").to_string());
    }
    backup(&r, "other", &vol);
    for id in &ids[..2] {
        ok_json(&[
            "delete",
            "--repo",
            &r,
            "--volume",
            "vm",
            "--snapshot",
            id,
            "--json",
        ]);
    }
    age(&repo, "tombstones");
    (r, data, ids[2].clone())
}

#[test]
fn gc_dry_run_predicts_the_gc_that_follows_and_writes_nothing() {
    let dir = tempdir();
    let (r, data, kept) = repository_with_deletes(dir.path());
    let repo = dir.path().join("repo");
    let before = listing(&repo);
    let (plan, _) = run_with_status(&["gc", "--repo", &r, "--dry-run", "--json"]);
    assert_eq!(plan.get("dry_run"), Some(&Value::Bool(true)), "{plan}");
    assert_eq!(listing(&repo), before, "the dry run changed the repository");
    let (done, _) = run_with_status(&["gc", "--repo", &r, "--json"]);
    assert_eq!(done.get("dry_run"), Some(&Value::Bool(false)), "{done}");
    for f in PREDICTED {
        assert_eq!(
            u64_field(&plan, f),
            u64_field(&done, f),
            "{f}: plan {plan}\ngc {done}"
        );
    }
    assert!(u64_field(&plan, "blobs_collected") > 0, "{plan}");
    assert!(u64_field(&plan, "bytes_reclaimed") > 0, "{plan}");
    assert!(
        u64_field(&plan, "packs_deleted") + u64_field(&plan, "packs_repacked") > 0,
        "{plan}"
    );
    // Nothing left to reclaim, and the plan says so (garbage kept in packs below the
    // repack threshold is still counted as collected and kept dead).
    let (again, _) = run_with_status(&["gc", "--repo", &r, "--dry-run", "--json"]);
    assert_eq!(u64_field(&again, "bytes_reclaimed"), 0, "{again}");
    assert_eq!(u64_field(&again, "packs_deleted"), 0, "{again}");
    let check = ok_json(&["check", "--repo", &r, "--json"]);
    assert_eq!(check.get("issues"), Some(&Value::Array(vec![])), "{check}");
    assert_restores(&r, "vm", &kept, &data, dir.path());
}

#[test]
fn gc_delete_and_forget_json_progress_reaches_100_percent() {
    let dir = tempdir();
    let (r, _, kept) = repository_with_deletes(dir.path());
    let gc_stages = ["gc-scan", "gc-collect", "gc-compact", "gc-delete"];
    let (_, status) = run_with_status(&["gc", "--repo", &r, "--dry-run", "--json"]);
    assert_eq!(stages_completed("gc --dry-run", &status), gc_stages);
    let (report, status) = run_with_status(&["gc", "--repo", &r, "--json"]);
    assert_eq!(stages_completed("gc", &status), gc_stages);
    assert!(u64_field(&report, "blobs_collected") > 0, "{report}");
    let scan = status.iter().find(|v| str_field(v, "stage") == "gc-scan");
    assert!(
        scan.is_some_and(|v| u64_field(v, "total") > 0),
        "gc scanned the deletes' segments: {status:?}"
    );

    let vol = dir.path().join("vol.raw");
    let id = str_field(&backup(&r, "vm", &vol), "id").to_string();
    let (report, status) = run_with_status(&[
        "delete",
        "--repo",
        &r,
        "--volume",
        "vm",
        "--snapshot",
        &id,
        "--json",
    ]);
    assert_eq!(stages_completed("delete", &status), ["delete"]);
    assert_eq!(str_field(&report, "id"), id);
    let total = status.last().map(|v| u64_field(v, "total"));
    assert_eq!(total, Some(4 << 20), "delete counts the volume's bytes");

    for _ in 0..2 {
        backup(&r, "vm", &vol);
    }
    let forget = |dry: bool| {
        let mut args = vec!["forget", "--repo", &r, "--keep-last", "1", "--json"];
        if dry {
            args.push("--dry-run");
        }
        run_with_status(&args)
    };
    let (plan, status) = forget(true);
    assert_eq!(stages_completed("forget --dry-run", &status), ["forget"]);
    let removed = plan.get("removed").and_then(Value::as_array).map(Vec::len);
    assert_eq!(removed, Some(2), "{plan}");
    let (report, status) = forget(false);
    assert_eq!(stages_completed("forget", &status), ["forget"]);
    let total = status.last().map(|v| u64_field(v, "total"));
    assert_eq!(
        total,
        Some(2 * (4 << 20)),
        "forget counts every removed snapshot"
    );
    assert_eq!(report.get("removed"), plan.get("removed"));
    assert!(snapshots(&r, "vm")
        .iter()
        .all(|v| str_field(v, "id") != kept));
}

//! `island check --repair` end to end on a directory repository with injected faults:
//! a backup killed with SIGKILL (its lease is live, so its objects must be left alone),
//! a stray pack no index names (must be quarantined), and wrong reference counts written as a
//! hand-built refs segment (format-spec §3.3) that counts because it names a real root's
//! writer: an over-count, an under-count and a count for a blob that does not exist.
//! check reports them, repair fixes them, check is clean, every snapshot restores, and
//! deletes + gc afterwards keep the survivors intact. Missing packs are reported with the
//! snapshots they damage.

use crate::repo_ops_util::*;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const STRAY: &str = "packs/ab/20200101T000000.000000Z-00000000000000aa-p000000";

fn cluster_id(data: &[u8], c: u64) -> [u8; 32] {
    let at = (c * CLUSTER) as usize;
    *blake3::hash(&data[at..at + CLUSTER as usize]).as_bytes()
}

#[test]
fn repair_fixes_counts_and_reclaims_strays_but_not_leased_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let r = s(&repo);
    ok(&["init", r]);
    let vol = dir.path().join("vol.raw");
    let mut data = write_volume(&vol, 4 * MIB, 2 * MIB, 60);
    let mut snaps = Vec::new();
    for step in 0..3u64 {
        if step > 0 {
            change(&vol, &mut data, &[0, 1, 2, 3], 600 + step);
        }
        snaps.push((
            str_field(&backup(r, "vm", &vol), "id").to_string(),
            data.clone(),
        ));
    }

    // A backup killed after its first pack: a live lease guards its uncommitted objects.
    let big = dir.path().join("big.raw");
    write_volume(&big, 96 * MIB, 96 * MIB, 61);
    let packs_before = files_under(&repo, "packs").len();
    let mut child = island_cmd(&["backup", "--repo", r, "--volume", "big", s(&big)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn island backup");
    let deadline = Instant::now() + Duration::from_secs(120);
    while files_under(&repo, "packs").len() == packs_before {
        assert!(
            child.try_wait().expect("poll").is_none(),
            "backup ended before the kill"
        );
        assert!(Instant::now() < deadline, "backup wrote no pack in 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL the backup");
    child.wait().expect("reap the backup");
    let killed_packs: Vec<_> = files_under(&repo, "packs")
        .into_iter()
        .filter(|p| {
            !snaps
                .iter()
                .any(|(id, _)| p.to_string_lossy().contains(id.as_str()))
        })
        .collect();
    assert!(!killed_packs.is_empty());

    // A stray pack no index names, written by no leased holder.
    let stray = repo.join(STRAY);
    std::fs::create_dir_all(stray.parent().expect("parent")).expect("mkdir");
    std::fs::write(&stray, vec![7u8; 5000]).expect("write stray pack");
    // Strays younger than LEASE_TTL + SKEW are left for a later run (format-spec §11).
    let old = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&stray)
        .and_then(|f| f.set_modified(old))
        .expect("age the stray pack");

    // Wrong counts, committed by the first backup's root (segment writer = its id).
    let s1 = &snaps[0].0;
    let seg = refs_segment(
        &format!("snapshots/vm/{s1}"),
        vec![
            (cluster_id(&data, 20), 3, 0),  // over-count of a shared chunk
            (cluster_id(&data, 21), -1, 0), // under-count: a delete could free it too early
            ([0x77; 32], 1, 0),             // a count for a blob that does not exist
        ],
    );
    std::fs::write(repo.join(format!("refs/{s1}-0042")), seg).expect("write refs segment");

    let before = json_with_code(&["check", "--repo", r, "--json"], 3);
    assert_eq!(u64_field(&before, "refcount_mismatches"), 3, "{before}");

    let repair = ok_json(&["check", "--repo", r, "--repair", "--json"]);
    assert_eq!(u64_field(&repair, "refcounts_fixed"), 3, "{repair}");
    assert_eq!(u64_field(&repair, "stray_packs_deleted"), 1, "{repair}");
    assert_eq!(u64_field(&repair, "stray_bytes_deleted"), 5000, "{repair}");
    assert!(
        u64_field(&repair, "objects_of_leased_writers") >= 1,
        "{repair}"
    );
    assert!(repair["damaged"].as_array().expect("damaged").is_empty());
    assert!(str_field(&repair, "commit").starts_with("gc/"), "{repair}");
    assert!(!stray.exists(), "the stray pack is gone");
    assert!(
        repo.join("quarantine").join(STRAY).exists(),
        "moved, not deleted"
    );
    for p in &killed_packs {
        assert!(p.exists(), "{} of the leased backup was kept", p.display());
    }

    ok(&["check", "--repo", r]);
    for (id, want) in &snaps {
        assert_restores(r, "vm", id, want, dir.path());
    }
    // A second repair finds nothing to fix.
    let again = ok_json(&["check", "--repo", r, "--repair", "--json"]);
    assert_eq!(u64_field(&again, "refcounts_fixed"), 0, "{again}");
    assert_eq!(again["commit"], serde_json::Value::Null);

    // The counts are right: deleting the older snapshots and collecting keeps the newest.
    ok(&[
        "delete",
        "--repo",
        r,
        "--volume",
        "vm",
        "--snapshot",
        &snaps[0].0,
    ]);
    ok(&[
        "delete",
        "--repo",
        r,
        "--volume",
        "vm",
        "--snapshot",
        &snaps[1].0,
    ]);
    ok(&["gc", "--repo", r]);
    ok(&["check", "--repo", r, "--read-data"]);
    assert_restores(r, "vm", &snaps[2].0, &snaps[2].1, dir.path());

    // A missing pack is reported with the snapshot it damages.
    // p000000 is its data pack (flush seals the data pack before the table pack).
    let name = format!("{}-p000000", snaps[0].0);
    let first_pack = files_under(&repo, "packs")
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(&name))
        .expect("the first backup's data pack");
    std::fs::remove_file(&first_pack).expect("remove a pack");
    let damaged = json_with_code(&["check", "--repo", r, "--repair", "--json"], 3);
    let list = damaged["damaged"].as_array().expect("damaged list");
    assert!(!list.is_empty(), "{damaged}");
    let want = format!("vm/{}", snaps[2].0);
    assert!(
        list.iter()
            .all(|i| str_list(i, "snapshots") == vec![want.clone()]),
        "{damaged}"
    );
}

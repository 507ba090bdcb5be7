//! `island check` end to end: damage is reported with every snapshot it damages (the
//! check walks each distinct table once, then names all snapshots in a second walk only
//! when something is damaged), snapshots of other volumes are not blamed, and `--json`
//! reports progress as status lines on stderr that end at 100 %.

use crate::repo_ops_util::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn chunk_id(data: &[u8], c: u64) -> String {
    let at = (c * CLUSTER) as usize;
    blake3::hash(&data[at..at + CLUSTER as usize])
        .to_hex()
        .to_string()
}

/// The issue about `object`, or a panic naming the report.
fn issue<'a>(report: &'a Value, object: &str) -> &'a Value {
    report["issues"]
        .as_array()
        .expect("issues list")
        .iter()
        .find(|i| i["object"] == object)
        .unwrap_or_else(|| panic!("no issue about {object} in {report}"))
}

#[test]
fn damage_names_every_snapshot_it_breaks_and_progress_reaches_100() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let r = s(&repo);
    ok(&["init", r]);
    let vol = dir.path().join("vol.raw");
    let mut data = write_volume(&vol, 4 * MIB, 2 * MIB, 70);
    let mut snaps = Vec::new();
    let mut contents = Vec::new();
    for step in 0..3u64 {
        if step > 0 {
            change(&vol, &mut data, &[step - 1], 700 + step);
        }
        contents.push(data.clone());
        snaps.push(format!("vm/{}", str_field(&backup(r, "vm", &vol), "id")));
    }
    let other = dir.path().join("other.raw");
    write_volume(&other, 2 * MIB, 2 * MIB, 71);
    let other_snap = format!("other/{}", str_field(&backup(r, "other", &other), "id"));

    let out = island(&["check", "--repo", r, "--read-data", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let clean: Value = serde_json::from_slice(&out.stdout).expect("check JSON");
    assert_eq!(u64_field(&clean, "snapshots_checked"), 4, "{clean}");
    // 32 + 1 + 1 random chunks of vm, 32 of other; zero chunks are not stored.
    assert_eq!(u64_field(&clean, "chunks_referenced"), 66, "{clean}");
    assert_eq!(u64_field(&clean, "chunks_read"), 66, "{clean}");
    let status: Vec<Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "status" && v["stage"] == "check")
        .collect();
    let last = status.last().expect("check status lines on stderr");
    assert_eq!(last["percent"], 100.0, "{status:?}");
    assert_eq!(last["done"], last["total"], "{status:?}");
    assert_eq!(u64_field(last, "total"), 3 * 4 * MIB + 2 * MIB, "{last}");

    // The first backup's data pack holds chunks all three vm snapshots share.
    let first_id = snaps[0].trim_start_matches("vm/");
    let pack = files_under(&repo, "packs")
        .into_iter()
        .find(|p| {
            p.to_string_lossy()
                .ends_with(&format!("{first_id}-p000000"))
        })
        .expect("the first backup's data pack");
    std::fs::remove_file(&pack).expect("remove a pack");
    let damaged = json_with_code(&["check", "--repo", r, "--json"], 3);
    let mut all = snaps.clone();
    all.sort();
    // Chunk 0 of the first version was replaced by the second backup, chunk 1 by the third.
    assert_eq!(
        str_list(issue(&damaged, &chunk_id(&contents[0], 0)), "snapshots"),
        vec![snaps[0].clone()]
    );
    assert_eq!(
        str_list(issue(&damaged, &chunk_id(&contents[0], 1)), "snapshots"),
        vec![snaps[0].clone(), snaps[1].clone()]
    );
    for c in 2..32 {
        assert_eq!(
            str_list(issue(&damaged, &chunk_id(&contents[0], c)), "snapshots"),
            all,
            "chunk {c}"
        );
    }
    for i in damaged["issues"].as_array().expect("issues") {
        assert!(
            !str_list(i, "snapshots").contains(&other_snap),
            "{other_snap} blamed: {i}"
        );
    }
}

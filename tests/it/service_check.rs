//! Repository check and fix over real HTTP on loopback: only admins check and fix; a
//! healthy repository proposes only cleaning (gc, and the catalog's superseded
//! generations with their exact bytes); a byte flipped in the chunk data of the newest
//! snapshot makes the volume `broken` and proposes a `mend` for exactly that snapshot;
//! applying the fixes as an operation leaves the volume `optimized`, its catalog down to
//! one generation, and its next attach restoring the intact older snapshot bit-exact.

use super::common::pseudo_random;
use super::service_common::{files_under, read_image, session, write_image, Site, ALICE, BOB};
use serde_json::json;
use std::collections::BTreeSet;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_proposes_fixes_and_fix_mends_a_broken_volume() {
    let site = Site::new();
    let repo = site.local_repo().expect("local repository");
    let a = site.serve("host-a", &["--catalog-grace-secs", "0"]);
    let uuid = a
        .create(
            ALICE,
            json!({"size": 1, "tag": "t", "visibility": "public"}),
        )
        .await;
    let first = pseudo_random(81, 2 << 20);
    let (s1, _) = session(&a, &uuid, "1", |p| write_image(p, 0, &first)).await;
    let packs_before: BTreeSet<String> = files_under(&repo.join("packs")).into_iter().collect();
    let second = pseudo_random(82, 2 << 20);
    let (s2, _) = session(&a, &uuid, "1", |p| write_image(p, 100 * MIB, &second)).await;
    let new_packs: Vec<String> = files_under(&repo.join("packs"))
        .into_iter()
        .filter(|p| !packs_before.contains(p))
        .collect();
    assert!(!new_packs.is_empty());

    // Admins only.
    a.get("/api/check", BOB).await.refused(403, "not an admin");
    a.post("/api/fix", BOB, json!({"fixes": ["clean:gc"]}))
        .await
        .refused(403, "not an admin");
    a.get("/api/check?read_data=maybe", ALICE)
        .await
        .refused(422, "read_data");

    // Healthy: clean fixes only; the catalog's superseded generations, bytes exact.
    let healthy = a.get("/api/check", ALICE).await.expect(200);
    assert_eq!(healthy["damaged"], json!([]));
    assert_eq!(healthy["snapshots_checked"], 2);
    let gens = repo.join(format!("service/volumes/{uuid}"));
    let gen_files = files_under(&gens);
    let superseded: u64 = gen_files[..gen_files.len() - 1]
        .iter()
        .map(|f| std::fs::metadata(gens.join(f)).expect("gen").len())
        .sum();
    let fixes = healthy["fixes"].as_array().expect("fixes");
    let kinds: Vec<(&str, &str)> = fixes
        .iter()
        .map(|f| {
            (
                f["id"].as_str().expect("id"),
                f["kind"].as_str().expect("k"),
            )
        })
        .collect();
    assert_eq!(kinds, [("clean:gc", "clean"), ("clean:catalog", "clean")]);
    assert_eq!(fixes[1]["bytes"], superseded, "{}", fixes[1]);
    assert_eq!(
        fixes[0]["bytes"], 0,
        "nothing deleted, nothing to reclaim: {}",
        fixes[0]
    );
    let disk = a
        .get(&format!("/api/disks/{uuid}"), ALICE)
        .await
        .expect(200);
    assert_eq!(disk["status"], "optimized");

    // Flip bytes in the middle of s2's largest new pack: its chunk data (the tables a
    // backup changes are a small fraction, written after the chunks below them).
    let largest = new_packs
        .iter()
        .map(|p| repo.join("packs").join(p))
        .max_by_key(|p| std::fs::metadata(p).expect("pack").len())
        .expect("a new pack");
    let mut bytes = std::fs::read(&largest).expect("pack");
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&largest, bytes).expect("corrupt pack");
    let found = a.get("/api/check?read_data=true", ALICE).await.expect(200);
    let damaged = format!("{uuid}/{s2}");
    assert_eq!(found["damaged"], json!([damaged]), "{found}");
    let mend = format!("mend:{damaged}");
    let m = found["fixes"]
        .as_array()
        .expect("fixes")
        .iter()
        .find(|f| f["id"] == mend.as_str())
        .unwrap_or_else(|| panic!("no {mend} in {found}"));
    assert_eq!(m["kind"], "mend");
    assert_eq!(m["bytes"], 1u64 << 30);
    let disk = a.get(&format!("/api/disks/{uuid}"), BOB).await.expect(200);
    assert_eq!(disk["status"], "broken");

    // Fix: ids must come from the last check; then mend + clean as one operation.
    a.post("/api/fix", ALICE, json!({"fixes": ["clean:everything"]}))
        .await
        .refused(422, "not in the last check");
    a.post("/api/fix", ALICE, json!({"fixes": []}))
        .await
        .refused(422, "fixes must be a list");
    a.post("/api/fix", ALICE, json!({"fixes": "clean:gc", "extra": 1}))
        .await
        .refused(422, "unknown field");
    let started = a
        .post(
            "/api/fix",
            ALICE,
            json!({"fixes": ["clean:gc", "clean:catalog", mend], "wait": false}),
        )
        .await
        .expect(202);
    let op = a
        .wait_op(started["operation"].as_str().expect("id"), ALICE)
        .await;
    assert_eq!(op["state"], "done", "{op}");
    assert_eq!(
        (op["kind"].as_str(), op["stage_count"].as_u64()),
        (Some("fix"), Some(3))
    );
    assert_eq!(op["stage"], "clean:gc", "gc runs last");
    assert_eq!(op["result"]["fixes"][&mend]["id"], s2.as_str(), "{op}");
    assert_eq!(
        files_under(&gens).len(),
        1,
        "catalog compacted to the newest"
    );

    // Healthy again; the volume restores its intact snapshot.
    let again = a.get("/api/check?read_data=1", ALICE).await.expect(200);
    assert_eq!(again["damaged"], json!([]), "{again}");
    assert!(
        again["fixes"][0]["bytes"].is_u64(),
        "gc's dry run estimate: {again}"
    );
    let disk = a
        .get(&format!("/api/disks/{uuid}"), ALICE)
        .await
        .expect(200);
    assert_eq!(disk["status"], "optimized");
    let att = a.vm("attach", &uuid, ALICE, "n1", "2").await.expect(200);
    assert_eq!(att["from_snapshot"], s1.as_str());
    let p = att["path"].as_str().expect("path");
    assert!(read_image(p, 0, first.len()) == first[..], "s1 restored");
    assert!(read_image(p, 100 * MIB, 4096).iter().all(|&b| b == 0));
}

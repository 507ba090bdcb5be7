//! The `mend` fix (re-copy a damaged snapshot's objects from a peer repository holding the
//! same snapshot) beyond a clean run between two directories:
//! - with the peer on a real S3 (Ceph radosgw): the damaged directory repository heals
//!   from it (skipped, with the reason printed, without ISLAND_TEST_S3_*);
//! - SIGKILL of `island serve` in the middle of the heal (uploads throttled so the kill
//!   lands inside it): restarted on the same data dir, the fix operation resumes under its
//!   id and completes, the repository checks clean with every chunk re-read, and the
//!   volume attaches and reads back bit-exact.
//!
//! Both also prove the fix reports honestly what a mend moves: the check's `bytes` of a
//! mend that a peer can serve is null (unknown until the heal finds the damaged objects,
//! not the snapshot's size), and the outcome's `bytes_from_peer` is what was fetched —
//! a few MiB for a 1 GiB volume.

use super::common::{pseudo_random, tempdir};
use super::objstore_common::{setting, unique_prefix};
use super::service_common::{files_under, read_image, write_image, Server, Site, ALICE};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mend_from_a_peer_on_s3() {
    let test = "service_mend_s3";
    let (Some(bucket), Some(_), Some(_)) = (
        setting(test, "ISLAND_TEST_S3_BUCKET"),
        setting(test, "AWS_ENDPOINT_URL"),
        setting(test, "AWS_ACCESS_KEY_ID"),
    ) else {
        return;
    };
    let flags = vec!["--s3-path-style".to_string()];
    let url = format!("s3://{bucket}/{}", unique_prefix(test));
    let peer = Site::init(tempdir(), url, flags.clone());
    scenario(&peer, flags, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mend_killed_mid_heal_resumes_after_restart() {
    scenario(&Site::new(), Vec::new(), true).await;
}

/// Packs under `repo` now, relative to `packs/`.
fn packs(repo: &Path) -> BTreeSet<String> {
    files_under(&repo.join("packs")).into_iter().collect()
}

/// Damage the packs `new` of one snapshot: delete the largest (chunk data), truncate
/// every other one to half (tables, further data).
fn damage(repo: &Path, new: &[String]) {
    let path = |p: &String| repo.join("packs").join(p);
    let largest = new
        .iter()
        .max_by_key(|p| std::fs::metadata(path(p)).expect("pack").len())
        .expect("a new pack");
    std::fs::remove_file(path(largest)).expect("delete the data pack");
    for p in new.iter().filter(|p| *p != largest) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path(p))
            .expect("pack");
        let len = f.metadata().expect("len").len();
        f.set_len(len / 2).expect("truncate");
    }
}

/// Wait until fix operation `op` on `s` is inside stage `stage` for two seconds (still
/// running), so a kill lands mid-heal.
async fn inside_stage(s: &Server, op: &str, stage: &str) {
    let t0 = Instant::now();
    loop {
        let o = s
            .get(&format!("/api/operations/{op}"), ALICE)
            .await
            .expect(200);
        assert_ne!(o["state"], "done", "the heal finished before the kill: {o}");
        assert_ne!(o["state"], "failed", "{o}");
        if o["stage"] == stage {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "never entered {stage}: {o}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let o = s
        .get(&format!("/api/operations/{op}"), ALICE)
        .await
        .expect(200);
    assert_eq!(
        (o["state"].as_str(), o["stage"].as_str()),
        (Some("running"), Some(stage)),
        "{o}"
    );
    let done = o["done"].as_u64().expect("done");
    assert!(done > 0, "the heal is under way: {o}");
    eprintln!("killed at {done} of {} in {stage}", o["total"]);
}

/// A directory repository (store flags `flags`) whose only snapshot of a volume is
/// damaged, mended from `peer`; killed mid-heal when `kill`.
async fn scenario(peer: &Site, flags: Vec<String>, kill: bool) {
    let dir = tempdir();
    let repo = dir.path().join("repo");
    let site = Site::init(dir, repo.display().to_string(), flags);
    let with_peer = ["--peer", peer.repo_url.as_str()];
    let a = site.serve("host-a", &with_peer);
    let uuid = a
        .create(
            ALICE,
            json!({"size": 1, "tag": "t", "visibility": "private"}),
        )
        .await;
    let data = pseudo_random(101, (24 * MIB) as usize);
    let before = packs(&repo);
    let att = a.vm("attach", &uuid, ALICE, "n", "1").await.expect(200);
    write_image(att["path"].as_str().expect("path"), 0, &data);
    a.post("/api/detach", ALICE, json!({"node": "n", "vm_id": "1"}))
        .await
        .expect(200);
    let new: Vec<String> = packs(&repo).difference(&before).cloned().collect();
    let snaps = a
        .get(&format!("/api/disks/{uuid}/snapshots"), ALICE)
        .await
        .expect(200);
    let s1 = snaps[0]["id"].as_str().expect("id").to_string();
    let copied = a
        .post(
            &format!("/api/copy/{uuid}"),
            ALICE,
            json!({"target": peer.repo_url}),
        )
        .await
        .expect(200);
    assert_eq!(copied["copy"]["copied"], json!([s1]));

    damage(&repo, &new);
    let found = a.get("/api/check", ALICE).await.expect(200);
    let mend = format!("mend:{uuid}/{s1}");
    let fix = found["fixes"]
        .as_array()
        .expect("fixes")
        .iter()
        .find(|f| f["id"] == mend.as_str())
        .unwrap_or_else(|| panic!("no {mend} in {found}"))
        .clone();
    assert_eq!(
        fix["bytes"],
        Value::Null,
        "a heal's size is unknown before it runs, not the snapshot's: {fix}"
    );
    let description = fix["description"].as_str().expect("description");
    assert!(description.contains(&peer.repo_url), "{description}");
    let disk = a
        .get(&format!("/api/disks/{uuid}"), ALICE)
        .await
        .expect(200);
    assert_eq!(disk["status"], "broken");

    let (a, out) = if kill {
        drop(a);
        // Uploads into the damaged repository at 2 MiB/s: the heal takes about 12 s.
        let slow = site.serve(
            "host-a",
            &["--peer", &peer.repo_url, "--limit-upload", "2M"],
        );
        let started = slow
            .post("/api/fix", ALICE, json!({"fixes": [mend], "wait": false}))
            .await
            .expect(202);
        let op = started["operation"].as_str().expect("id").to_string();
        inside_stage(&slow, &op, &mend).await;
        drop(slow);
        let a = site.serve("host-a", &with_peer);
        let done = a.wait_op(&op, ALICE).await;
        assert_eq!(done["state"], "done", "{done}");
        assert_eq!(done["result"]["resumed"], true, "{done}");
        assert!(
            done["error"].is_null(),
            "a completed resume clears the interruption note: {done}"
        );
        let out = done["result"]["fixes"][&mend].clone();
        (a, out)
    } else {
        let fixed = a
            .post("/api/fix", ALICE, json!({"fixes": [mend]}))
            .await
            .expect(200);
        let out = fixed["fixes"][&mend].clone();
        (a, out)
    };
    eprintln!("mend (killed: {kill}): {out}");
    assert_eq!(out["mended"], "recopied", "{out}");
    assert_eq!(out["from"], peer.repo_url.as_str());
    assert_eq!(out["id"], s1.as_str());
    assert!(out["chunks_healed"].as_u64().expect("n") > 0, "{out}");
    let fetched = out["bytes_from_peer"].as_u64().expect("bytes");
    assert!(
        (MIB..32 * MIB).contains(&fetched),
        "fetched {fetched} B of a 1 GiB volume holding 24 MiB: {out}"
    );

    // Clean with every chunk re-read; the volume is whole again, bit-exact.
    let again = a.get("/api/check?read_data=true", ALICE).await.expect(200);
    assert_eq!(again["damaged"], json!([]), "{again}");
    assert_eq!(again["refcount_mismatches"], 0, "{again}");
    let disk = a
        .get(&format!("/api/disks/{uuid}"), ALICE)
        .await
        .expect(200);
    assert_eq!(disk["status"], "optimized");
    let att = a.vm("attach", &uuid, ALICE, "n", "2").await.expect(200);
    assert_eq!(att["from_snapshot"], s1.as_str());
    assert!(
        read_image(att["path"].as_str().expect("path"), 0, data.len()) == data[..],
        "healed data differs"
    );
}

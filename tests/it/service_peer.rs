//! Peer repositories (regions) over real HTTP on loopback, two repositories:
//! - create in region B from a snapshot that exists only in region A (`source_repository`):
//!   bad peers, missing fields, someone else's private volume and unknown snapshots are
//!   refused before any operation; the create runs as an operation (kind `create`, 3
//!   stages, pollable) that copies the snapshot into B; the new volume attaches in B and
//!   reads back bit-exact what A wrote; a second create from the same snapshot copies no
//!   chunk again;
//! - mend from a peer: a deleted data pack and truncated table packs in A make the volume
//!   `broken`; the check's mend names the peer; the fix re-copies exactly the damaged
//!   objects from B; the repository checks clean with data re-read, and the volume
//!   attaches and reads back bit-exact;
//! - mend without a peer: the same damage (tables missing) and the fix deletes the
//!   snapshot, says so, and the volume attaches empty.
//!
//! Run on local directories, and region A and B on a real S3 when ISLAND_TEST_S3_* is set.

use super::common::pseudo_random;
use super::service_common::{
    files_under, read_image, session, write_image, Server, Site, ALICE, BOB,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_in_region_b_from_a_snapshot_in_region_a() {
    create_from_peer(&Site::new(), &Site::new()).await;
}

/// The same with both regions on a real S3 (Ceph radosgw), under two prefixes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_in_region_b_from_region_a_on_s3() {
    let test = "service_peer_s3";
    let (Some(region_a), Some(region_b)) = (Site::s3(test), Site::s3(test)) else {
        return;
    };
    create_from_peer(&region_a, &region_b).await;
}

async fn create_from_peer(region_a: &Site, region_b: &Site) {
    let a = region_a.serve("host-a", &[]);
    let uuid = a
        .create(
            ALICE,
            json!({"size": 1, "tag": "origin", "visibility": "private"}),
        )
        .await;
    let head = pseudo_random(91, 3 << 20);
    let tail = pseudo_random(92, MIB as usize);
    let (s1, _) = session(&a, &uuid, "1", |p| {
        write_image(p, 0, &head);
        write_image(p, 700 * MIB, &tail);
    })
    .await;

    // Region B names region A as a peer (the --peer alias of --copy-target).
    let b = region_b.serve("host-b", &["--peer", &region_a.repo_url]);
    b.get(&format!("/api/disks/{uuid}"), ALICE)
        .await
        .refused(404, "not found");
    let from_a = json!({"tag": "dr", "visibility": "private", "source": uuid,
        "snapshot": s1, "source_repository": region_a.repo_url});
    let with = |k: &str, v: Value| {
        let mut body = from_a.clone();
        body[k] = v;
        body
    };
    b.post(
        "/api/create",
        ALICE,
        with("source_repository", json!("/etc")),
    )
    .await
    .refused(422, "not an allowed peer repository");
    b.post(
        "/api/create",
        ALICE,
        json!({"size": 1, "tag": "t", "visibility": "private",
            "source_repository": region_a.repo_url}),
    )
    .await
    .refused(422, "source_repository needs source and snapshot");
    b.post("/api/create", ALICE, with("wait", json!("soon")))
        .await
        .refused(422, "wait must be true or false");
    b.post("/api/create", ALICE, with("snapshot", json!("../x")))
        .await
        .refused(422, "malformed");
    let unknown = "20200101T000000.000000Z-0000000000000000";
    b.post("/api/create", ALICE, with("snapshot", json!(unknown)))
        .await
        .refused(404, "not found");
    b.post("/api/create", ALICE, with("size", json!(2)))
        .await
        .refused(422, "differs");
    // Bob may not see Alice's private volume in region A: not found, as locally.
    b.post("/api/create", BOB, from_a.clone())
        .await
        .refused(404, "not found");
    let ops_dir = b.data.join("operations");
    assert_eq!(
        files_under(&ops_dir).len(),
        0,
        "refused before any operation"
    );

    // The create as an operation: 202 with its id and the volume's uuid.
    let started = b
        .post("/api/create", ALICE, with("wait", json!(false)))
        .await
        .expect(202);
    let created = started["uuid"].as_str().expect("uuid").to_string();
    let op = b
        .wait_op(started["operation"].as_str().expect("id"), ALICE)
        .await;
    assert_eq!(op["state"], "done", "{op}");
    assert_eq!(
        (
            op["kind"].as_str(),
            op["stage_count"].as_u64(),
            op["volume"].as_str()
        ),
        (Some("create"), Some(3), Some(created.as_str()))
    );
    assert_eq!(op["percent"], 100);
    let result = &op["result"];
    assert_eq!(result["uuid"], created.as_str());
    assert_eq!(result["copy"]["copied"], json!([s1]));
    assert_eq!(result["record_created"], true);
    let first_bytes = result["copy"]["bytes_uploaded"].as_u64().expect("bytes");
    assert!(first_bytes > 4 * MIB, "{}", result["copy"]);

    // Region B lists both: the new volume and (its record copied) the source.
    let listed = b.get("/api/disks", ALICE).await.expect(200);
    let uuids: BTreeSet<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|d| d["uuid"].as_str().expect("uuid"))
        .collect();
    assert_eq!(
        uuids,
        BTreeSet::from([uuid.as_str(), created.as_str()]),
        "{listed}"
    );
    b.get(&format!("/api/disks/{created}"), BOB)
        .await
        .refused(404, "not found");

    // Attach in B: what A wrote, bit-exact; B's own write stays in B.
    let extra = pseudo_random(93, MIB as usize);
    let (b1, att) = session(&b, &created, "2", |p| {
        assert!(
            read_image(p, 0, head.len()) == head[..],
            "head from region A"
        );
        assert!(
            read_image(p, 700 * MIB, tail.len()) == tail[..],
            "tail from region A"
        );
        write_image(p, 300 * MIB, &extra);
    })
    .await;
    assert_eq!(att["from_snapshot"], s1.as_str());
    let (_, again) = session(&b, &created, "3", |p| {
        assert!(read_image(p, 300 * MIB, extra.len()) == extra[..]);
    })
    .await;
    assert_eq!(again["from_snapshot"], b1.as_str());

    // A second create from the same snapshot waits (201) and copies nothing again.
    let second = b
        .post("/api/create", ALICE, from_a.clone())
        .await
        .expect(201);
    assert_eq!(second["copy"]["skipped"], json!([s1]));
    assert_eq!(second["copy"]["chunks_new"], 0);
    assert_eq!(second["record_created"], false);
    assert!(second["operation"].is_string());
    let uploaded = second["copy"]["bytes_uploaded"].as_u64().expect("bytes");
    eprintln!("create from region A: first copy {first_bytes} B uploaded, second {uploaded} B");
    assert!(uploaded < 64 << 10, "{}", second["copy"]);
    let (_, att) = session(&b, second["uuid"].as_str().expect("uuid"), "4", |p| {
        assert!(read_image(p, 0, head.len()) == head[..]);
    })
    .await;
    assert_eq!(att["from_snapshot"], s1.as_str());
}

/// Packs under `repo` now, relative to `packs/`.
fn packs(repo: &Path) -> BTreeSet<String> {
    files_under(&repo.join("packs")).into_iter().collect()
}

/// Damage the packs `new` (those of one snapshot) in `repo`: delete the largest (chunk
/// data) and truncate every other one (the tables) to half. Returns how many were cut.
fn damage(repo: &Path, new: &[String]) -> usize {
    let path = |p: &String| repo.join("packs").join(p);
    let largest = new
        .iter()
        .max_by_key(|p| std::fs::metadata(path(p)).expect("pack").len())
        .expect("a new pack");
    std::fs::remove_file(path(largest)).expect("delete the data pack");
    let mut cut = 0;
    for p in new.iter().filter(|p| *p != largest) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path(p))
            .expect("pack");
        let len = f.metadata().expect("len").len();
        f.set_len(len / 2).expect("truncate");
        cut += 1;
    }
    cut
}

/// A site with volume `uuid` holding one snapshot `s1` of `data` at 0 written on `a`;
/// the packs that snapshot added.
async fn one_snapshot(a: &Server, repo: &Path, data: &[u8]) -> (String, String, Vec<String>) {
    let uuid = a
        .create(
            ALICE,
            json!({"size": 1, "tag": "t", "visibility": "public"}),
        )
        .await;
    let before = packs(repo);
    let (s1, _) = session(a, &uuid, "1", |p| write_image(p, 0, data)).await;
    let new: Vec<String> = packs(repo).difference(&before).cloned().collect();
    assert!(new.len() >= 2, "a data pack and a table pack: {new:?}");
    (uuid, s1, new)
}

/// The check's mend for `uuid/s1`, asserting it is the only damage.
async fn mend_fix(a: &Server, uuid: &str, s1: &str) -> Value {
    let found = a.get("/api/check", ALICE).await.expect(200);
    let damaged = format!("{uuid}/{s1}");
    assert_eq!(found["damaged"], json!([damaged]), "{found}");
    let mend = format!("mend:{damaged}");
    found["fixes"]
        .as_array()
        .expect("fixes")
        .iter()
        .find(|f| f["id"] == mend.as_str())
        .unwrap_or_else(|| panic!("no {mend} in {found}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mend_recopies_damaged_objects_from_a_peer() {
    let (region_a, region_b) = (Site::new(), Site::new());
    let repo = region_a.local_repo().expect("local");
    let a = region_a.serve("host-a", &["--copy-target", &region_b.repo_url]);
    let data = pseudo_random(94, 3 << 20);
    let (uuid, s1, new) = one_snapshot(&a, &repo, &data).await;
    let copied = a
        .post(
            &format!("/api/copy/{uuid}"),
            ALICE,
            json!({"target": region_b.repo_url}),
        )
        .await
        .expect(200);
    assert_eq!(copied["copy"]["copied"], json!([s1]));

    let cut = damage(&repo, &new);
    let m = mend_fix(&a, &uuid, &s1).await;
    let description = m["description"].as_str().expect("description");
    assert!(
        description.contains(&format!("from peer {}", region_b.repo_url)),
        "{description}"
    );
    let disk = a
        .get(&format!("/api/disks/{uuid}"), ALICE)
        .await
        .expect(200);
    assert_eq!(disk["status"], "broken");

    let id = m["id"].as_str().expect("id");
    let fixed = a
        .post("/api/fix", ALICE, json!({"fixes": [id]}))
        .await
        .expect(200);
    let out = &fixed["fixes"][id];
    assert_eq!(out["mended"], "recopied", "{fixed}");
    assert_eq!(out["from"], region_b.repo_url.as_str());
    assert_eq!(out["id"], s1.as_str());
    // 3 MiB of 64 KiB chunks were in the deleted pack; every table was in a cut one.
    assert_eq!(out["chunks_healed"], 48, "{out}");
    assert!(
        out["tables_healed"].as_u64().expect("n") >= cut as u64,
        "{out}"
    );
    assert!(out["commit"].as_str().expect("commit").starts_with("gc/"));
    let from_peer = out["bytes_from_peer"].as_u64().expect("bytes");
    eprintln!("mend from a peer: {out}");
    assert!((3 * MIB..4 * MIB).contains(&from_peer), "{out}");

    // Clean, data re-read; the volume is whole again.
    let again = a.get("/api/check?read_data=true", ALICE).await.expect(200);
    assert_eq!(again["damaged"], json!([]), "{again}");
    assert_eq!(again["refcount_mismatches"], 0, "{again}");
    let disk = a
        .get(&format!("/api/disks/{uuid}"), ALICE)
        .await
        .expect(200);
    assert_eq!(disk["status"], "optimized");
    let (_, att) = session(&a, &uuid, "2", |p| {
        assert!(read_image(p, 0, data.len()) == data[..], "healed data");
    })
    .await;
    assert_eq!(att["from_snapshot"], s1.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mend_without_a_peer_deletes_the_snapshot_even_with_tables_missing() {
    let site = Site::new();
    let repo = site.local_repo().expect("local");
    let a = site.serve("host-a", &[]);
    let data = pseudo_random(95, 2 << 20);
    let (uuid, s1, new) = one_snapshot(&a, &repo, &data).await;
    damage(&repo, &new);
    let m = mend_fix(&a, &uuid, &s1).await;
    let description = m["description"].as_str().expect("description");
    assert!(description.contains("no peer"), "{description}");
    let id = m["id"].as_str().expect("id");
    let fixed = a
        .post("/api/fix", ALICE, json!({"fixes": [id]}))
        .await
        .expect(200);
    let out = &fixed["fixes"][id];
    assert_eq!(out["mended"], "deleted", "{fixed}");
    assert_eq!(out["id"], s1.as_str());
    assert!(out["tables_unreadable"].as_u64().expect("n") >= 1, "{out}");
    assert_eq!(out["peers_tried"], json!([]));
    let snaps = a
        .get(&format!("/api/disks/{uuid}/snapshots"), ALICE)
        .await
        .expect(200);
    assert_eq!(snaps, json!([]));
    // No damage left; what the unreadable tables held is a leak for optimize.
    let again = a.get("/api/check", ALICE).await.expect(200);
    assert_eq!(again["damaged"], json!([]), "{again}");
    let att = a.vm("attach", &uuid, ALICE, "n1", "2").await.expect(200);
    assert_eq!(att["from_snapshot"], Value::Null);
    let p = att["path"].as_str().expect("path");
    assert!(
        read_image(p, 0, 4096).iter().all(|&b| b == 0),
        "empty again"
    );
}

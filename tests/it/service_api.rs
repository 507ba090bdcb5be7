//! `island serve` end to end over real HTTP on loopback: two server processes ("hosts",
//! each with its own data dir) share one local repository. Proves that the catalog lives
//! in the repository (host B sees what host A created), visibility and owner rules, the
//! user limit and single read-write claim across hosts, that detach uploads what was
//! written into the attached local image, and that re-attaching on the other host
//! restores it bit-exact; a volume created from a snapshot starts as that snapshot.

use super::common::pseudo_random;
use super::service_common::{files_under, read_image, write_image, Body, Site, ALICE, BOB};
use reqwest::Method;
use serde_json::json;

const GIB: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_volumes_attach_detach_and_restore_bit_exact() {
    scenario(&Site::new()).await;
}

/// The same on a real S3 (Ceph radosgw): the catalog's create-if-absent generations and
/// the repository live in one bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_on_s3() {
    let Some(site) = Site::s3("service_api_s3") else {
        return;
    };
    scenario(&site).await;
}

async fn scenario(site: &Site) {
    let a = site.serve("host-a", &[]);
    let b = site.serve("host-b", &[]);

    // Create: JSON on host A, form on host B.
    let private = a
        .create(
            ALICE,
            json!({"size": 1, "tag": "alice's disk", "visibility": "private"}),
        )
        .await;
    let public = b
        .call(
            Method::POST,
            "/api/create",
            Some(ALICE),
            Body::Form("size=2&tag=shared+disk&visibility=public"),
        )
        .await
        .expect(201)["uuid"]
        .as_str()
        .expect("uuid")
        .to_string();

    // The catalog is in the repository: both hosts list both volumes for the owner.
    if let Some(repo) = site.local_repo() {
        let keys = files_under(&repo.join("service/volumes"));
        assert!(keys.contains(&format!("{private}/{:020}", 0)), "{keys:?}");
    }
    for host in [&a, &b] {
        let list = host.get("/api/disks", ALICE).await.expect(200);
        let mut uuids: Vec<&str> = list
            .as_array()
            .expect("array")
            .iter()
            .map(|d| d["uuid"].as_str().expect("uuid"))
            .collect();
        uuids.sort();
        let mut want = vec![private.as_str(), public.as_str()];
        want.sort();
        assert_eq!(uuids, want);
    }
    // Another user sees only the public one; the private one is "not found" to him.
    let bob_list = a.get("/api/disks", BOB).await.expect(200);
    assert_eq!(bob_list.as_array().expect("array").len(), 1);
    assert_eq!(bob_list[0]["uuid"], public.as_str());
    assert_eq!(bob_list[0]["size"], "2");
    assert_eq!(bob_list[0]["visibility"], "public");
    assert_eq!(bob_list[0]["owner"], "alice");
    a.get(&format!("/api/disks/{private}"), BOB)
        .await
        .expect(404);
    a.vm("attach", &private, BOB, "n1", "9")
        .await
        .refused(404, "not found");

    let got = a.get(&format!("/api/disks/{private}"), ALICE).await;
    assert_eq!(got.limit.as_deref(), Some("2"));
    assert_eq!(got.remaining.as_deref(), Some("2"));
    assert_eq!(got.body["users"], "0");
    assert_eq!(got.body["tag"], "alice's disk");

    // Attach up to the limit (2) across both hosts; the first claim is the writer.
    let rw = a.vm("attach", &private, ALICE, "n1", "1").await.expect(200);
    assert_eq!(rw["mode"], "read-write");
    assert_eq!(rw["uuid"], json!([private]));
    let rw_path = rw["path"].as_str().expect("path").to_string();
    assert!(
        rw_path.starts_with(a.data.to_str().expect("utf-8")),
        "{rw_path}"
    );
    let ro = b.vm("attach", &private, ALICE, "n2", "2").await.expect(200);
    assert_eq!(ro["mode"], "read-only");
    let full = b.get(&format!("/api/disks/{private}"), ALICE).await;
    assert_eq!(full.remaining.as_deref(), Some("0"));
    assert_eq!(full.body["users"], "2");
    a.vm("attach", &private, ALICE, "n1", "3")
        .await
        .refused(409, "user limit of 2");

    // A VM writes into the attached local image: the start, and the volume's last MiB.
    let head = pseudo_random(61, 3 << 20);
    let tail = pseudo_random(62, 1 << 20);
    write_image(&rw_path, 0, &head);
    write_image(&rw_path, GIB - (1 << 20), &tail);

    // Snapshot asynchronously on the host holding the writer; poll the operation.
    let snap = a
        .post(
            &format!("/api/disks/{private}/snapshots"),
            ALICE,
            json!({"wait": false}),
        )
        .await
        .expect(202);
    let op = a
        .wait_op(snap["operation"].as_str().expect("operation id"), ALICE)
        .await;
    assert_eq!(op["state"], "done", "{op}");
    assert_eq!(
        (op["stage_index"].as_u64(), op["stage_count"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(op["percent"], 100);
    let first = op["result"]["snapshot"]
        .as_str()
        .expect("snapshot id")
        .to_string();
    assert!(
        op["result"]["backup"]["bytes_uploaded"]
            .as_u64()
            .expect("bytes")
            > 4 << 20
    );
    // Bob may not poll alice's operation; the other host cannot snapshot A's writer.
    b.get(
        &format!(
            "/api/operations/{}",
            snap["operation"].as_str().expect("id")
        ),
        BOB,
    )
    .await
    .expect(404);
    b.post(&format!("/api/disks/{private}/snapshots"), ALICE, json!({}))
        .await
        .refused(409, "host-a");

    // More writes after the snapshot, then detach on host A: the increment is uploaded.
    let later = pseudo_random(63, 64 << 10);
    write_image(&rw_path, 512 << 20, &later);
    b.post("/api/detach", ALICE, json!({"node": "n2", "vm_id": "2"}))
        .await
        .expect(200);
    let detached = a
        .post("/api/detach", ALICE, json!({"node": "n1", "vm_id": "1"}))
        .await
        .expect(200);
    assert_eq!(detached["uuid"], json!([private]));
    assert!(
        !std::path::Path::new(&rw_path).exists(),
        "local image dropped"
    );
    let op = a
        .wait_op(detached["operation"].as_str().expect("id"), ALICE)
        .await;
    assert_eq!(op["state"], "done");
    assert_eq!(op["stage_count"], 3);
    let snaps = b
        .get(&format!("/api/disks/{private}/snapshots"), ALICE)
        .await
        .expect(200);
    let snaps = snaps.as_array().expect("array");
    assert_eq!(snaps.len(), 2, "snapshot + detach");
    assert_eq!(snaps[0]["id"], first.as_str());
    assert!(
        snaps[1]["new_bytes"].as_u64().expect("new bytes") < 1 << 20,
        "detach uploaded an increment, not the volume: {}",
        snaps[1]
    );

    // Attach on host B: restored from the last snapshot, bit-exact.
    let again = b
        .vm("hotattach", &private, ALICE, "n2", "4")
        .await
        .expect(200);
    assert_eq!(again["mode"], "read-write");
    assert_eq!(again["from_snapshot"], snaps[1]["id"]);
    let path_b = again["path"].as_str().expect("path").to_string();
    assert!(path_b.starts_with(b.data.to_str().expect("utf-8")));
    assert!(
        read_image(&path_b, 0, head.len()) == head[..],
        "head differs"
    );
    assert!(
        read_image(&path_b, GIB - (1 << 20), tail.len()) == tail[..],
        "tail differs"
    );
    assert!(
        read_image(&path_b, 512 << 20, later.len()) == later[..],
        "increment differs"
    );
    assert!(read_image(&path_b, 256 << 20, 4096).iter().all(|&x| x == 0));

    // Delete rules: attached → refused; not the owner → refused; snapshots → needs force.
    a.delete(&format!("/api/disks/{private}"), ALICE)
        .await
        .refused(409, "attached");
    a.delete(&format!("/api/disks/{public}"), BOB)
        .await
        .refused(403, "only its owner");
    let hd = b
        .vm("hotdetach", &private, ALICE, "n2", "4")
        .await
        .expect(200);
    assert_eq!(hd["uuid"], json!([]));

    // A new volume from the first snapshot (not someone else's private one): its first
    // attach restores that snapshot, without the writes made after it.
    let from_first =
        json!({"tag": "copy", "visibility": "private", "source": private, "snapshot": first});
    a.post("/api/create", BOB, from_first.clone())
        .await
        .expect(404);
    let copy = a.create(ALICE, from_first).await;
    assert_eq!(
        a.get(&format!("/api/disks/{copy}"), ALICE)
            .await
            .expect(200)["size"],
        "1"
    );
    let att = a.vm("attach", &copy, ALICE, "n1", "5").await.expect(200);
    assert_eq!(att["from_snapshot"], first.as_str());
    let p = att["path"].as_str().expect("path").to_string();
    assert!(
        read_image(&p, 0, head.len()) == head[..],
        "copy head differs"
    );
    assert!(
        read_image(&p, GIB - (1 << 20), tail.len()) == tail[..],
        "copy tail differs"
    );
    assert!(read_image(&p, 512 << 20, later.len())
        .iter()
        .all(|&x| x == 0));
    a.post("/api/detach", ALICE, json!({"node": "n1", "vm_id": "5"}))
        .await
        .expect(200);
    let copy_snaps = a
        .get(&format!("/api/disks/{copy}/snapshots"), ALICE)
        .await
        .expect(200);
    assert_eq!(copy_snaps.as_array().expect("array").len(), 1);
    let only = format!(
        "/api/disks/{copy}/snapshots/{}",
        copy_snaps[0]["id"].as_str().expect("id")
    );
    a.delete(&only, BOB).await.expect(404);
    a.delete(&only, ALICE).await.expect(200);
    a.delete(&only, ALICE).await.expect(404);
    let none = a
        .get(&format!("/api/disks/{copy}/snapshots"), ALICE)
        .await
        .expect(200);
    assert_eq!(none, json!([]));
    // Without snapshots, a detached volume is deleted without force.
    a.delete(&format!("/api/disks/{copy}"), ALICE)
        .await
        .expect(200);
    a.delete(&format!("/api/disks/{private}"), ALICE)
        .await
        .refused(409, "has snapshots");
    let gone = a
        .delete(&format!("/api/disks/{private}?force=true"), ALICE)
        .await
        .expect(200);
    assert_eq!(gone["uuid"], private.as_str());
    assert_eq!(
        gone["snapshots_deleted"].as_array().expect("array").len(),
        3
    );
    b.get(&format!("/api/disks/{private}"), ALICE)
        .await
        .expect(404);
    let left = b.get("/api/disks", ALICE).await.expect(200);
    assert_eq!(left.as_array().expect("array").len(), 1);
    a.delete(&format!("/api/disks/{public}"), ALICE)
        .await
        .expect(200);
}

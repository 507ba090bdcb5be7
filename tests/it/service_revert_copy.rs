//! Revert and copy over real HTTP on loopback, two regions = two repositories:
//! - a hot attach registers the frontend's device name, listed on the disk and answered
//!   by the hot detach;
//! - revert is refused while attached read-write, commits a snapshot that uploads
//!   nothing, and the next attach materialises the old content bit-exact;
//! - copy to a repository outside the allow-list is refused; a copy runs as an operation
//!   with stage and percent; a second copy against a base already in the target uploads
//!   a fraction of the first;
//! - the cross-region restore: a server on the target repository lists the volume and
//!   creates a new volume from the copied snapshot, whose attach reads back what was
//!   written in the first region.
//!
//! Run on local directories, and with region A on a real S3 and region B on a real Swift.

use super::common::{pseudo_random, tempdir};
use super::objstore_common::{setting, unique_prefix};
use super::service_common::{read_image, write_image, Server, Site, ALICE, BOB};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

/// Attach (read-write) on `s`, run `write` on the image path, detach: one snapshot.
async fn session(s: &Server, uuid: &str, write: impl FnOnce(&str)) -> Value {
    let att = s.vm("attach", uuid, ALICE, "n1", "1").await.expect(200);
    assert_eq!(att["mode"], "read-write");
    write(att["path"].as_str().expect("path"));
    s.post("/api/detach", ALICE, json!({"node": "n1", "vm_id": "1"}))
        .await
        .expect(200);
    att
}

async fn snapshot_ids(s: &Server, uuid: &str) -> Vec<String> {
    let list = s
        .get(&format!("/api/disks/{uuid}/snapshots"), ALICE)
        .await
        .expect(200);
    list.as_array()
        .expect("array")
        .iter()
        .map(|x| x["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_then_copy_to_another_region_and_restore_there() {
    scenario(&Site::new(), &Site::new()).await;
}

/// The same with region A on a real S3 (Ceph radosgw) and region B on a real Swift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_then_copy_from_s3_to_swift() {
    let test = "service_revert_copy_s3_swift";
    let (Some(bucket), Some(container), Some(_), Some(_), Some(_)) = (
        setting(test, "ISLAND_TEST_S3_BUCKET"),
        setting(test, "ISLAND_TEST_SWIFT_CONTAINER"),
        setting(test, "AWS_ENDPOINT_URL"),
        setting(test, "AWS_ACCESS_KEY_ID"),
        setting(test, "ST_AUTH"),
    ) else {
        return;
    };
    let s3 = format!("s3://{bucket}/{}", unique_prefix(test));
    let swift = format!("swift://{container}/{}", unique_prefix(test));
    let region_a = Site::init(tempdir(), s3, vec!["--s3-path-style".into()]);
    let region_b = Site::init(tempdir(), swift, Vec::new());
    scenario(&region_a, &region_b).await;
}

async fn scenario(region_a: &Site, region_b: &Site) {
    let a = region_a.serve("host-a", &["--copy-target", &region_b.repo_url]);
    let uuid = a
        .create(
            ALICE,
            json!({"size": 1, "tag": "t", "visibility": "private"}),
        )
        .await;

    // Hot attach with the device the frontend reports; the disk lists it.
    let hot = a
        .post(
            &format!("/api/hotattach/{uuid}"),
            ALICE,
            json!({"node": "n1", "vm_id": "1", "target": "vdb"}),
        )
        .await
        .expect(200);
    assert_eq!(hot["target"], "vdb");
    let disk = a
        .get(&format!("/api/disks/{uuid}"), ALICE)
        .await
        .expect(200);
    assert_eq!(disk["attachments"][0]["target"], "vdb");
    assert_eq!(disk["status"], "optimized");
    let first = pseudo_random(71, 2 << 20);
    write_image(hot["path"].as_str().expect("path"), 0, &first);
    let unplugged = a.vm("hotdetach", &uuid, ALICE, "n1", "1").await.expect(200);
    assert_eq!(
        unplugged["target"], "vdb",
        "the device is answered on hot detach"
    );
    let s1 = snapshot_ids(&a, &uuid).await.pop().expect("s1");

    // Overwrite and detach: s2 holds the second content.
    let second = pseudo_random(72, 2 << 20);
    session(&a, &uuid, |p| write_image(p, 0, &second)).await;

    // Revert: bad inputs, then refused while attached read-write.
    let revert = format!("/api/revert/{uuid}");
    a.post(&revert, BOB, json!({"snapshot": s1}))
        .await
        .refused(404, "not found");
    a.post(&revert, ALICE, json!({}))
        .await
        .refused(422, "snapshot is required");
    a.post(&revert, ALICE, json!({"snapshot": "../x"}))
        .await
        .refused(422, "malformed");
    let unknown = "20200101T000000.000000Z-0000000000000000";
    a.post(&revert, ALICE, json!({"snapshot": unknown}))
        .await
        .refused(404, "not found");
    a.vm("attach", &uuid, ALICE, "n1", "1").await.expect(200);
    // Cinder's revert-to-snapshot also needs the volume detached: 409 naming the writer.
    a.post(&revert, ALICE, json!({"snapshot": s1}))
        .await
        .refused(
            409,
            "attached read-write to vm 1 on node n1 (server host-a); detach before reverting",
        );
    a.post("/api/detach", ALICE, json!({"node": "n1", "vm_id": "1"}))
        .await
        .expect(200);
    let before = snapshot_ids(&a, &uuid).await;
    let r = a
        .post(&revert, ALICE, json!({"snapshot": s1}))
        .await
        .expect(200);
    assert_eq!(r["reverted_to"], s1.as_str());
    let reverted = r["snapshot"].as_str().expect("new snapshot").to_string();
    let after = snapshot_ids(&a, &uuid).await;
    assert_eq!(after.len(), before.len() + 1, "every snapshot stays");
    assert_eq!(after.last(), Some(&reverted), "the revert is the newest");
    let listed = a
        .get(&format!("/api/disks/{uuid}/snapshots"), ALICE)
        .await
        .expect(200);
    let last = listed
        .as_array()
        .expect("array")
        .last()
        .expect("last")
        .clone();
    assert_eq!(last["new_bytes"], 0, "a revert copies no data: {last}");
    let disk = a
        .get(&format!("/api/disks/{uuid}"), ALICE)
        .await
        .expect(200);
    assert_eq!(disk["last_revert"]["to"], s1.as_str());

    // The next attach materialises the reverted content; add a MiB at 512 MiB.
    let extra = pseudo_random(73, MIB as usize);
    let att = session(&a, &uuid, |p| {
        assert!(
            read_image(p, 0, first.len()) == first[..],
            "reverted content"
        );
        write_image(p, 512 * MIB, &extra);
    })
    .await;
    assert_eq!(att["from_snapshot"], reverted.as_str());
    let newest = snapshot_ids(&a, &uuid).await.pop().expect("newest");

    // Copy: target outside the allow-list, bad ids, base missing in the target.
    let copy = format!("/api/copy/{uuid}");
    a.post(&copy, ALICE, json!({"target": "/etc"}))
        .await
        .refused(422, "not an allowed copy target");
    a.post(&copy, ALICE, json!({}))
        .await
        .refused(422, "target is required");
    a.post(
        &copy,
        ALICE,
        json!({"target": region_b.repo_url, "base": "x"}),
    )
    .await
    .refused(422, "not a snapshot id");
    a.post(&copy, BOB, json!({"target": region_b.repo_url}))
        .await
        .refused(404, "not found");
    a.post(
        &copy,
        ALICE,
        json!({"target": region_b.repo_url, "base": s1}),
    )
    .await
    .refused(409, "is not in");

    // The first copy (s1) runs as an operation.
    let started = a
        .post(
            &copy,
            ALICE,
            json!({"target": region_b.repo_url, "snapshot": s1, "wait": false}),
        )
        .await
        .expect(202);
    let op = a
        .wait_op(started["operation"].as_str().expect("id"), ALICE)
        .await;
    assert_eq!(op["state"], "done", "{op}");
    assert_eq!(
        (op["kind"].as_str(), op["stage_count"].as_u64()),
        (Some("copy"), Some(2))
    );
    assert_eq!(op["percent"], 100);
    let full = &op["result"]["copy"];
    assert_eq!(full["copied"], json!([s1]));
    assert_eq!(op["result"]["record_created"], true);
    let full_bytes = full["bytes_uploaded"].as_u64().expect("bytes");
    assert!(full_bytes > 2 * MIB, "{full}");

    // The newest against base s1: only the extra MiB (and tables) travel.
    let diff = a
        .post(
            &copy,
            ALICE,
            json!({"target": region_b.repo_url, "base": s1}),
        )
        .await
        .expect(200);
    assert_eq!(diff["snapshot"], newest.as_str());
    assert_eq!(diff["record_created"], false);
    let diff_bytes = diff["copy"]["bytes_uploaded"].as_u64().expect("bytes");
    eprintln!("copy of 2 MiB: {full_bytes} B uploaded; newest against base: {diff_bytes} B");
    assert!(
        diff_bytes < full_bytes * 3 / 4 && diff_bytes > MIB / 2,
        "diff {diff_bytes} vs full {full_bytes}: {}",
        diff["copy"]
    );

    // Region B: the volume is listed; a new volume from the copied snapshot reads back
    // what region A wrote.
    let b = region_b.serve("host-b", &[]);
    let listed = b.get("/api/disks", ALICE).await.expect(200);
    assert_eq!(listed[0]["uuid"], uuid.as_str());
    b.get(&format!("/api/disks/{uuid}"), BOB).await.expect(404);
    let restored = b
        .create(
            ALICE,
            json!({"tag": "dr", "visibility": "private", "source": uuid, "snapshot": newest}),
        )
        .await;
    session(&b, &restored, |p| {
        assert!(read_image(p, 0, first.len()) == first[..], "region B head");
        assert!(
            read_image(p, 512 * MIB, extra.len()) == extra[..],
            "region B extra"
        );
    })
    .await;
}

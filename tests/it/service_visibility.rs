//! A public volume over real HTTP: every user sees, reads and writes it (attach, write,
//! snapshot, detach, revert), only its owner deletes it or its snapshots; the owner reads
//! back bit-exact what another user wrote. A private one stays invisible to the others.

use super::common::pseudo_random;
use super::service_common::{read_image, write_image, Site, ALICE, BOB};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_volumes_are_shared_but_only_their_owner_deletes() {
    let site = Site::new();
    let s = site.serve("host-a", &[]);
    let public = s
        .create(
            ALICE,
            json!({"size": 1, "tag": "shared", "visibility": "public"}),
        )
        .await;
    let private = s
        .create(
            ALICE,
            json!({"size": 1, "tag": "mine", "visibility": "private"}),
        )
        .await;
    let bobs = s.get("/api/disks", BOB).await.expect(200);
    assert_eq!(bobs.as_array().expect("array").len(), 1, "{bobs}");
    assert_eq!(bobs[0]["uuid"], public.as_str());
    for path in [
        format!("/api/disks/{private}"),
        format!("/api/disks/{private}/snapshots"),
    ] {
        s.get(&path, BOB).await.refused(404, "not found");
    }
    s.post(&format!("/api/disks/{private}/snapshots"), BOB, json!({}))
        .await
        .refused(404, "not found");

    // Bob writes into alice's public volume and snapshots it.
    let att = s.vm("attach", &public, BOB, "n", "1").await.expect(200);
    assert_eq!(att["mode"], "read-write");
    let first = pseudo_random(111, 1 << 20);
    write_image(att["path"].as_str().expect("path"), 0, &first);
    let snap = s
        .post(&format!("/api/disks/{public}/snapshots"), BOB, json!({}))
        .await
        .expect(200);
    let s1 = snap["snapshot"].as_str().expect("id").to_string();
    let second = pseudo_random(112, 1 << 20);
    write_image(att["path"].as_str().expect("path"), 0, &second);
    s.post("/api/detach", BOB, json!({"node": "n", "vm_id": "1"}))
        .await
        .expect(200);

    // Only the owner deletes: the volume, or a snapshot of it.
    s.delete(&format!("/api/disks/{public}"), BOB)
        .await
        .refused(403, "only its owner deletes it");
    s.delete(&format!("/api/disks/{public}/snapshots/{s1}"), BOB)
        .await
        .refused(403, "only its owner deletes snapshots");

    // Alice reads what bob wrote last; bob may revert it to his first snapshot.
    let disk = s
        .get(&format!("/api/disks/{public}"), ALICE)
        .await
        .expect(200);
    let head = disk["head"].as_str().expect("head").to_string();
    assert_ne!(head, s1);
    let att = s.vm("attach", &public, ALICE, "m", "2").await.expect(200);
    assert_eq!(att["from_snapshot"], head.as_str());
    assert!(read_image(att["path"].as_str().expect("path"), 0, second.len()) == second[..]);
    s.post("/api/detach", ALICE, json!({"node": "m", "vm_id": "2"}))
        .await
        .expect(200);
    let r = s
        .post(
            &format!("/api/revert/{public}"),
            BOB,
            json!({"snapshot": s1}),
        )
        .await
        .expect(200);
    let att = s.vm("attach", &public, ALICE, "m", "3").await.expect(200);
    assert_eq!(att["from_snapshot"], r["snapshot"]);
    assert!(read_image(att["path"].as_str().expect("path"), 0, first.len()) == first[..]);
    s.post("/api/detach", ALICE, json!({"node": "m", "vm_id": "3"}))
        .await
        .expect(200);

    s.delete(&format!("/api/disks/{public}/snapshots/{s1}"), ALICE)
        .await
        .expect(200);
    s.delete(&format!("/api/disks/{public}?force=true"), ALICE)
        .await
        .expect(200);
    let left = s.get("/api/disks", BOB).await.expect(200);
    assert_eq!(left, json!([]));
}

//! Who may do what with a volume, over real HTTP. A private volume is invisible to other
//! users. A public one is seen and read by everyone, who may attach it read-only; only its
//! owner or an admin changes it (read-write attach, snapshot, revert, copy, detach of
//! another user's attachment, deletes). Here carol owns the public volume, bob is another
//! user and alice an admin: every change bob tries is refused with 403 and changes
//! nothing (the volume's record, its snapshots and carol's local image stay as they were);
//! alice and carol make the same changes.

use super::common::pseudo_random;
use super::service_common::{read_image, write_image, Server, Site, ALICE, BOB, CAROL};
use reqwest::Method;
use serde_json::{json, Value};

/// What a refused change must leave untouched: the volume's record and its snapshots.
async fn state(s: &Server, uuid: &str) -> (Value, Value) {
    let disk = s
        .get(&format!("/api/disks/{uuid}"), CAROL)
        .await
        .expect(200);
    let snaps = s
        .get(&format!("/api/disks/{uuid}/snapshots"), CAROL)
        .await
        .expect(200);
    (disk, snaps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_volume_is_invisible_to_others() {
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
    s.post(
        &format!("/api/revert/{private}"),
        BOB,
        json!({"snapshot": "20260101T000000.000000Z-0000000000000000"}),
    )
    .await
    .refused(404, "not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_or_an_admin_changes_a_public_volume() {
    let region_b = Site::new();
    let site = Site::new();
    let s = site.serve("host-a", &["--copy-target", &region_b.repo_url]);
    let public = s
        .create(
            CAROL,
            json!({"size": 1, "tag": "shared", "visibility": "public"}),
        )
        .await;
    let att = s
        .vm("hotattach", &public, CAROL, "n", "1")
        .await
        .expect(200);
    assert_eq!(att["mode"], "read-write");
    let image = att["path"].as_str().expect("path").to_string();
    let first = pseudo_random(111, 1 << 20);
    write_image(&image, 0, &first);
    let snap = format!("/api/disks/{public}/snapshots");
    let s1 = s.post(&snap, CAROL, json!({})).await.expect(200)["snapshot"]
        .as_str()
        .expect("id")
        .to_string();

    // Every change of carol's volume bob may try, with carol attached read-write.
    let vm = json!({"node": "n", "vm_id": "1"});
    let changes: Vec<(&str, Method, String, Value)> = vec![
        ("snapshot", Method::POST, snap.clone(), json!({})),
        (
            "revert",
            Method::POST,
            format!("/api/revert/{public}"),
            json!({"snapshot": s1}),
        ),
        (
            "copy",
            Method::POST,
            format!("/api/copy/{public}"),
            json!({"target": region_b.repo_url}),
        ),
        (
            "hot detach of carol's attachment",
            Method::POST,
            format!("/api/hotdetach/{public}"),
            vm.clone(),
        ),
        (
            "detach of carol's vm",
            Method::POST,
            "/api/detach".into(),
            vm.clone(),
        ),
        (
            "delete a snapshot",
            Method::DELETE,
            format!("/api/disks/{public}/snapshots/{s1}"),
            Value::Null,
        ),
        (
            "delete the volume",
            Method::DELETE,
            format!("/api/disks/{public}?force=true"),
            Value::Null,
        ),
    ];
    let before = state(&s, &public).await;
    for (what, method, path, body) in &changes {
        let body = match body {
            Value::Null => super::service_common::Body::None,
            b => super::service_common::Body::Json(b.clone()),
        };
        let r = s.call(method.clone(), path, Some(BOB), body).await;
        assert_eq!(r.status.as_u16(), 403, "bob's {what}: {}", r.body);
        let m = r.messages();
        assert!(m.contains("owner or an admin"), "bob's {what}: {m}");
        assert_eq!(state(&s, &public).await, before, "bob's {what} changed it");
        assert!(
            read_image(&image, 0, first.len()) == first[..],
            "bob's {what}: carol's image"
        );
    }
    let ops = s.get("/api/operations", BOB).await.expect(200);
    assert_eq!(ops, json!([]), "no operation was recorded for bob");

    // The admin makes the same changes: snapshot, copy, detach carol's attachment.
    let s2 = s.post(&snap, ALICE, json!({})).await.expect(200)["snapshot"]
        .as_str()
        .expect("id")
        .to_string();
    s.post(
        &format!("/api/copy/{public}"),
        ALICE,
        json!({"target": region_b.repo_url, "snapshot": s2}),
    )
    .await
    .expect(200);
    s.vm("hotdetach", &public, ALICE, "n", "1")
        .await
        .expect(200);

    // With no writer left, bob still attaches read-only only (a copy of the head), and
    // may detach that attachment of his own; carol, the owner, may detach his too.
    let ro = s.vm("attach", &public, BOB, "b", "9").await.expect(200);
    assert_eq!(ro["mode"], "read-only");
    // The head: the admin's snapshot, or the one the hot detach of carol's writer took.
    let from = ro["from_snapshot"].as_str().expect("from_snapshot");
    assert!(from >= s2.as_str(), "{ro}");
    s.post("/api/detach", BOB, json!({"node": "b", "vm_id": "9"}))
        .await
        .expect(200);
    s.vm("attach", &public, BOB, "b", "9").await.expect(200);
    s.post("/api/detach", CAROL, json!({"node": "b", "vm_id": "9"}))
        .await
        .expect(200);

    // Revert: refused to bob, done by the admin and by the owner.
    let revert = format!("/api/revert/{public}");
    let before = state(&s, &public).await;
    s.post(&revert, BOB, json!({"snapshot": s1}))
        .await
        .refused(403, "owner or an admin");
    assert_eq!(state(&s, &public).await, before, "bob's revert changed it");
    let r = s
        .post(&revert, ALICE, json!({"snapshot": s1}))
        .await
        .expect(200);
    s.post(&revert, CAROL, json!({"snapshot": s2}))
        .await
        .expect(200);
    let att = s.vm("attach", &public, CAROL, "n", "2").await.expect(200);
    assert_eq!(att["mode"], "read-write");
    assert_ne!(att["from_snapshot"], r["snapshot"]);
    s.post(&snap, CAROL, json!({})).await.expect(200);
    s.post("/api/detach", CAROL, json!({"node": "n", "vm_id": "2"}))
        .await
        .expect(200);

    // Deletes: the admin a snapshot, the owner the volume.
    s.delete(&format!("/api/disks/{public}/snapshots/{s1}"), ALICE)
        .await
        .expect(200);
    s.delete(&format!("/api/disks/{public}?force=true"), CAROL)
        .await
        .expect(200);
    assert_eq!(s.get("/api/disks", BOB).await.expect(200), json!([]));
}

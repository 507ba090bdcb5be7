//! Bad input on every `island serve` endpoint — missing, wrong-typed, out-of-range and
//! unknown fields, malformed bodies, hostile ids, missing or unknown tokens — must be a
//! 4xx with a `{"message": [...]}` body, never a 500 or a dropped connection; and the
//! server must still serve afterwards.

use super::service_common::{Body, Site, ALICE};
use reqwest::Method;
use serde_json::json;

/// One bad request: method, path, token, body, expected status, a word the messages name.
type Case<'a> = (Method, String, Option<&'a str>, Body<'a>, u16, &'a str);

const NIL: &str = "00000000-0000-4000-8000-000000000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_bad_input_with_4xx_messages() {
    let site = Site::new();
    let s = site.serve("host-a", &["--max-size-gib", "8"]);
    let uuid = s
        .post(
            "/api/create",
            ALICE,
            json!({"size": "1", "tag": "t", "visibility": "public"}),
        )
        .await
        .expect(201)["uuid"]
        .as_str()
        .expect("uuid")
        .to_string();
    let j = Body::Json;
    let form = Body::Form;
    let create = "/api/create";
    let attach = format!("/api/attach/{uuid}");
    let hot = format!("/api/hotdetach/{uuid}");
    let snaps = format!("/api/disks/{uuid}/snapshots");
    let del = format!("/api/disks/{uuid}?force=maybe");
    let revert = format!("/api/revert/{uuid}");
    let copy = format!("/api/copy/{uuid}");
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            "/api/disks".into(),
            None,
            Body::None,
            401,
            "Authorization",
        ),
        (
            Method::GET,
            "/api/disks".into(),
            Some("wrong-token-123"),
            Body::None,
            401,
            "unknown token",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!({})),
            422,
            "size is required",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!({"size": "big", "tag": "t", "visibility": "public"})),
            422,
            "integer",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!({"size": -1, "tag": "t", "visibility": "public"})),
            422,
            "integer",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!({"size": 1.5, "tag": "t", "visibility": "public"})),
            422,
            "integer",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!({"size": 0, "tag": "t", "visibility": "public"})),
            422,
            "outside 1..=8",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!({"size": 9, "tag": "t", "visibility": "public"})),
            422,
            "outside 1..=8",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!({"size": u64::MAX, "tag": "t", "visibility": "public"})),
            422,
            "outside",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!({"size": 1, "tag": ["t"], "visibility": "public"})),
            422,
            "tag must be a string",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!({"size": 1, "tag": "t", "visibility": "secret"})),
            422,
            "private or public",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!({"size": 1, "tag": "t", "visibility": "public", "colour": 1})),
            422,
            "unknown field",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!({"size": 1, "tag": "t", "visibility": "public", "user_limit": 0})),
            422,
            "user_limit",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!({"size": 1, "tag": "t\u{7}", "visibility": "public"})),
            422,
            "control",
        ),
        (
            Method::DELETE,
            format!("{snaps}/..%2F..%2Fconfig"),
            Some(ALICE),
            Body::None,
            404,
            "not found",
        ),
        (
            Method::DELETE,
            format!("{snaps}/20260101T000000.000000Z-0000000000000000"),
            Some(ALICE),
            Body::None,
            404,
            "not found",
        ),
        (
            Method::DELETE,
            format!("{snaps}/20260101T000000.000000Z-0000000000000000"),
            Some(super::service_common::BOB),
            Body::None,
            403,
            "owner",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!({"tag": "t", "visibility": "public", "source": uuid})),
            422,
            "go together",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!({"tag": "t", "visibility": "public", "source": uuid, "snapshot": "../x"})),
            422,
            "malformed",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!({"tag": "t", "visibility": "public", "source": NIL, "snapshot": "x"})),
            404,
            "not found",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(
                json!({"tag": "t", "visibility": "public", "source": uuid, "snapshot": "20260101T000000.000000Z-0000000000000000"}),
            ),
            404,
            "not found",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            j(json!([1, 2])),
            400,
            "object",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            Body::Raw("application/json", b"{\"size\":".to_vec()),
            400,
            "invalid JSON",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            Body::Raw("text/plain", b"size=1".to_vec()),
            400,
            "Content-Type",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            Body::Raw("application/x-www-form-urlencoded", vec![0xff, 0xfe]),
            400,
            "UTF-8",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            form("size=1&size=2"),
            400,
            "twice",
        ),
        (
            Method::POST,
            create.into(),
            Some(ALICE),
            form("size=1"),
            422,
            "tag is required",
        ),
        (
            Method::POST,
            attach.clone(),
            Some(ALICE),
            j(json!({})),
            422,
            "node is required",
        ),
        (
            Method::POST,
            attach.clone(),
            Some(ALICE),
            j(json!({"node": 5, "vm_id": "1"})),
            422,
            "node must be a string",
        ),
        (
            Method::POST,
            attach.clone(),
            Some(ALICE),
            j(json!({"node": "../../etc", "vm_id": "1"})),
            422,
            "node",
        ),
        (
            Method::POST,
            attach.clone(),
            Some(ALICE),
            form("node=n&vm_id=a/b"),
            422,
            "vm_id",
        ),
        (
            Method::POST,
            attach.clone(),
            Some(ALICE),
            j(json!({"node": "n", "vm_id": "1", "wait": "soon"})),
            422,
            "wait",
        ),
        (
            Method::POST,
            "/api/attach/..%2Fconfig".into(),
            Some(ALICE),
            j(json!({"node": "n", "vm_id": "1"})),
            404,
            "not found",
        ),
        (
            Method::POST,
            format!("/api/attach/{NIL}"),
            Some(ALICE),
            j(json!({"node": "n", "vm_id": "1"})),
            404,
            "not found",
        ),
        (
            Method::POST,
            format!("/api/hotattach/{}", uuid.to_uppercase()),
            Some(ALICE),
            j(json!({"node": "n", "vm_id": "1"})),
            404,
            "not found",
        ),
        (
            Method::POST,
            hot.clone(),
            Some(ALICE),
            j(json!({"node": "n"})),
            422,
            "vm_id is required",
        ),
        (
            Method::POST,
            hot.clone(),
            Some(ALICE),
            j(json!({"node": "n", "vm_id": "1"})),
            409,
            "not attached",
        ),
        (
            Method::POST,
            "/api/detach".into(),
            Some(ALICE),
            j(json!({"vm_id": true})),
            422,
            "vm_id must be a string",
        ),
        (
            Method::POST,
            "/api/detach".into(),
            Some(ALICE),
            Body::None,
            422,
            "node is required",
        ),
        (
            Method::POST,
            snaps.clone(),
            Some(ALICE),
            j(json!({"wait": 3})),
            422,
            "wait",
        ),
        (
            Method::POST,
            snaps.clone(),
            Some(ALICE),
            j(json!({})),
            409,
            "no read-write attachment",
        ),
        (
            Method::GET,
            format!("/api/disks/{NIL}/snapshots"),
            Some(ALICE),
            Body::None,
            404,
            "not found",
        ),
        (Method::DELETE, del, Some(ALICE), Body::None, 422, "force"),
        (
            Method::GET,
            "/api/disks/not-a-uuid".into(),
            Some(ALICE),
            Body::None,
            404,
            "not found",
        ),
        (
            Method::GET,
            "/api/operations/..%2F..%2Fetc%2Fpasswd".into(),
            Some(ALICE),
            Body::None,
            404,
            "not found",
        ),
        (
            Method::GET,
            format!("/api/operations/{NIL}"),
            Some(ALICE),
            Body::None,
            404,
            "not found",
        ),
        (
            Method::POST,
            revert.clone(),
            Some(ALICE),
            form("snapshot=1&snapshot=2"),
            400,
            "given twice",
        ),
        (
            Method::POST,
            revert.clone(),
            Some(ALICE),
            j(json!({"snapshot": 5})),
            422,
            "must be a string",
        ),
        (
            Method::POST,
            revert,
            Some(ALICE),
            j(json!({"snapshot": "x", "to": "y"})),
            422,
            "unknown field",
        ),
        (
            Method::POST,
            "/api/revert/not-a-uuid".into(),
            Some(ALICE),
            j(json!({"snapshot": "20200101T000000.000000Z-0000000000000000"})),
            404,
            "not found",
        ),
        (
            Method::POST,
            copy.clone(),
            Some(ALICE),
            j(json!({"target": ["x"]})),
            422,
            "must be a string",
        ),
        (
            Method::POST,
            copy.clone(),
            Some(ALICE),
            j(json!({"target": "s3://elsewhere/x", "wait": "perhaps"})),
            422,
            "wait must be true or false",
        ),
        (
            Method::POST,
            copy.clone(),
            Some(ALICE),
            j(json!({"target": "s3://elsewhere/x"})),
            422,
            "not an allowed copy target",
        ),
        (
            Method::POST,
            copy,
            Some(ALICE),
            Body::Raw("text/plain", b"target=x".to_vec()),
            400,
            "unsupported Content-Type",
        ),
        (
            Method::GET,
            "/api/check".into(),
            None,
            Body::None,
            401,
            "Authorization",
        ),
        (
            Method::POST,
            "/api/fix".into(),
            Some(ALICE),
            j(json!({"fixes": [1]})),
            422,
            "fixes must be a list",
        ),
        (
            Method::POST,
            "/api/fix".into(),
            Some(ALICE),
            form("fixes=clean:gc"),
            422,
            "not in the last check",
        ),
        (
            Method::POST,
            format!("/api/hotattach/{uuid}"),
            Some(ALICE),
            j(json!({"node": "n", "vm_id": "v", "target": "../sda"})),
            422,
            "device name",
        ),
        (
            Method::POST,
            attach.clone(),
            Some(ALICE),
            j(json!({"node": "n", "vm_id": "v", "target": "vda"})),
            422,
            "unknown field",
        ),
        (
            Method::GET,
            "/api/nothing".into(),
            Some(ALICE),
            Body::None,
            404,
            "no such endpoint",
        ),
    ];
    for (method, path, token, body, status, word) in cases {
        let what = format!("{method} {path}");
        let r = s.call(method, &path, token, body).await;
        assert_eq!(r.status.as_u16(), status, "{what}: {}", r.body);
        let m = r.messages();
        assert!(m.contains(word), "{what}: {m:?} lacks {word:?}");
    }
    // Every problem is reported at once.
    let r = s
        .post(
            create,
            ALICE,
            json!({"size": "x", "tag": 1, "visibility": "no"}),
        )
        .await;
    assert_eq!(
        r.body["message"].as_array().expect("array").len(),
        3,
        "{}",
        r.body
    );
    // An oversized body is refused before it is read whole.
    let big = format!("tag={}", "a".repeat(128 << 10));
    let r = s
        .call(Method::POST, create, Some(ALICE), Body::Form(&big))
        .await;
    assert_eq!(r.status.as_u16(), 413);
    // The server still works and nothing was created by the bad requests.
    let list = s.get("/api/disks", ALICE).await.expect(200);
    assert_eq!(list.as_array().expect("array").len(), 1);
}

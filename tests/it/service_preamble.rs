//! The order of the handlers' shared preamble (the `Authed`/`Admin` extractors): the token
//! is checked first (401), then admin rights where needed (403), then the input (400,
//! 413, 422); a GET without input never reads its body, and check reads only the query.

use super::service_common::{Body, Site, ALICE, BOB};
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_then_admin_then_input() {
    let site = Site::new();
    let s = site.serve("host-a", &[]);
    let bad_json = || Body::Raw("application/json", b"{\"fixes\":".to_vec());
    let big = format!("fixes={}", "a".repeat(128 << 10));

    // No token: 401 whatever the body.
    s.call(Method::POST, "/api/fix", None, bad_json())
        .await
        .refused(401, "Authorization");
    s.call(Method::POST, "/api/create", None, Body::Form(&big))
        .await
        .refused(401, "Authorization");
    // A user who is not an admin: 403 before the body is looked at.
    s.call(Method::POST, "/api/fix", Some(BOB), bad_json())
        .await
        .refused(403, "not an admin");
    s.call(Method::POST, "/api/fix", Some(BOB), Body::Form(&big))
        .await
        .refused(403, "not an admin");
    s.get("/api/check?read_data=maybe", BOB)
        .await
        .refused(403, "not an admin");
    // An admin: now the input.
    s.call(Method::POST, "/api/fix", Some(ALICE), bad_json())
        .await
        .refused(400, "invalid JSON");
    let r = s
        .call(Method::POST, "/api/fix", Some(ALICE), Body::Form(&big))
        .await;
    assert_eq!(r.status.as_u16(), 413, "{}", r.body);
    s.get("/api/check?read_data=maybe", ALICE)
        .await
        .refused(422, "read_data");
    // Inputs without a body ignore it: a listing and the check (query only).
    let r = s
        .call(Method::GET, "/api/disks", Some(ALICE), bad_json())
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let r = s
        .call(Method::GET, "/api/check", Some(ALICE), bad_json())
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["damaged"], serde_json::json!([]));
}

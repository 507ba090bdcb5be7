//! Operation records and the last check live in the repository's store: two `island serve`
//! processes ("hosts", separate data dirs) on one repository, over real HTTP on loopback.
//!
//! - A detach started on host A is polled on host B, progress included; A is killed
//!   (SIGKILL) mid-upload: B shows the operation `failed` ("owner server host-a gone
//!   since …") once A's heartbeat is older than the expiry, and `running` again, then
//!   `done`, once A restarts on its data dir and resumes it; every byte is then restored
//!   on B. Listing rules: a user lists their own operations (filtered by volume), an
//!   admin everyone's; another user's operation is "not found".
//! - A check run on A produces the fix list a fix on B applies; the fix operation B runs
//!   is visible on A; finished records are pruned after the retention.
//!
//! On a local directory repository, and on the real S3 (Ceph radosgw) when
//! `ISLAND_TEST_S3_*` is set.

use super::common::{pseudo_random, tempdir};
use super::objstore_common::{setting, unique_prefix};
use super::service_common::{read_image, write_image, Body, Server, Site, ALICE, BOB};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Fast heartbeats so the test sees a gone owner in seconds.
const TIMING: [&str; 4] = [
    "--operation-heartbeat-secs",
    "0.5",
    "--operation-expiry-secs",
    "3",
];

/// Poll operation `id` on `s` as `token` until `pred` holds (`secs` at most).
async fn poll(
    s: &Server,
    id: &str,
    token: &str,
    secs: u64,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let t0 = Instant::now();
    loop {
        let op = s
            .get(&format!("/api/operations/{id}"), token)
            .await
            .expect(200);
        if pred(&op) {
            return op;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "operation {id} on {}: condition not reached in {secs} s: {op}",
            s.base
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The S3 site of `test`, or `None` (skipped, reason printed) without a server.
fn s3_site(test: &str) -> Option<Site> {
    let (Some(bucket), Some(_), Some(_)) = (
        setting(test, "ISLAND_TEST_S3_BUCKET"),
        setting(test, "AWS_ENDPOINT_URL"),
        setting(test, "AWS_ACCESS_KEY_ID"),
    ) else {
        return None;
    };
    let url = format!("s3://{bucket}/{}", unique_prefix(test));
    Some(Site::init(tempdir(), url, vec!["--s3-path-style".into()]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_on_a_polled_on_b_through_a_kill_and_resume() {
    detach_through_kill(&Site::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_on_a_polled_on_b_through_a_kill_and_resume_on_s3() {
    if let Some(site) = s3_site("service_ops_shared_s3") {
        detach_through_kill(&site).await;
    }
}

async fn detach_through_kill(site: &Site) {
    let mut a_args = vec!["--limit-upload", "4M"];
    a_args.extend(TIMING);
    let a = site.serve("host-a", &a_args);
    let b = site.serve("host-b", &TIMING);
    let uuid = a
        .create(
            ALICE,
            json!({"size": 1, "tag": "t", "visibility": "private"}),
        )
        .await;
    let att = a.vm("attach", &uuid, ALICE, "n", "1").await.expect(200);
    let attach_op = att["operation"].as_str().expect("operation").to_string();
    let path = att["path"].as_str().expect("path").to_string();
    // 24 MiB at 4 MiB/s: the upload takes ~6 s.
    let data = pseudo_random(91, (24 * MIB) as usize);
    write_image(&path, 0, &data);

    // The attach ran on A; B answers for it, naming its owner.
    let seen = b
        .get(&format!("/api/operations/{attach_op}"), ALICE)
        .await
        .expect(200);
    assert_eq!(
        (seen["state"].as_str(), seen["server"].as_str()),
        (Some("done"), Some("host-a")),
        "{seen}"
    );
    assert!(seen["heartbeat"].is_string(), "{seen}");
    b.get(&format!("/api/operations/{attach_op}"), BOB)
        .await
        .refused(404, "not found");

    let op = a
        .post(
            "/api/detach",
            ALICE,
            json!({"node": "n", "vm_id": "1", "wait": false}),
        )
        .await
        .expect(202)["operation"]
        .as_str()
        .expect("operation id")
        .to_string();
    // B sees the upload progress (throttled writes of A's record).
    let running = poll(&b, &op, ALICE, 30, |o| {
        assert_ne!(o["state"], "done", "upload finished before the kill: {o}");
        o["stage"] == "upload" && o["done"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert_eq!(running["server"], "host-a", "{running}");
    drop(a); // SIGKILL

    // A is gone: once its heartbeat is older than the expiry, B shows the operation failed.
    let gone = poll(&b, &op, ALICE, 20, |o| o["state"] == "failed").await;
    let error = gone["error"].as_str().expect("error");
    assert!(error.contains("owner server host-a gone since"), "{error}");
    let mine = b.get("/api/operations", ALICE).await.expect(200);
    let ids: Vec<&str> = mine
        .as_array()
        .expect("array")
        .iter()
        .map(|o| o["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        [op.as_str(), attach_op.as_str()],
        "newest first: {mine}"
    );
    assert_eq!(mine[0]["state"], "failed", "{mine}");
    // `POST /api/detach` names a VM, not a volume: only the attach names the volume.
    let by_volume = b
        .get(&format!("/api/operations?volume={uuid}"), ALICE)
        .await
        .expect(200);
    assert_eq!(by_volume.as_array().expect("array").len(), 1, "{by_volume}");
    assert_eq!(by_volume[0]["id"], attach_op.as_str(), "{by_volume}");

    // A restarts on its data dir: it resumes the detach and B sees it through to done.
    let a = site.serve("host-a", &TIMING);
    let done = poll(&b, &op, ALICE, 60, |o| o["state"] == "done").await;
    assert_eq!(done["result"]["resumed"], true, "{done}");
    assert_eq!(done["result"]["uuid"], json!([uuid]), "{done}");
    assert_eq!(done["server"], "host-a", "{done}");
    assert!(!std::path::Path::new(&path).exists(), "local image dropped");
    assert!(
        !a.data.join(format!("operations/{op}.json")).exists(),
        "journal dropped once the end is in the store"
    );
    if let Some(repo) = site.local_repo() {
        let record =
            std::fs::read(repo.join(format!("service/operations/{op}"))).expect("shared record");
        assert_eq!(&record[..4], b"ISOP", "enveloped");
    }
    assert_eq!(
        a.get(&format!("/api/operations/{op}"), ALICE)
            .await
            .expect(200),
        done
    );

    // Listing: bob's own operation; bob sees only it, alice (an admin) sees all.
    let bobs = b
        .create(BOB, json!({"size": 1, "tag": "b", "visibility": "private"}))
        .await;
    let bob_op = b.vm("attach", &bobs, BOB, "m", "9").await.expect(200)["operation"]
        .as_str()
        .expect("operation")
        .to_string();
    let listed = a.get("/api/operations", BOB).await.expect(200);
    assert_eq!(listed.as_array().expect("array").len(), 1, "{listed}");
    assert_eq!(
        (listed[0]["id"].as_str(), listed[0]["server"].as_str()),
        (Some(bob_op.as_str()), Some("host-b"))
    );
    let all = a.get("/api/operations", ALICE).await.expect(200);
    assert_eq!(all.as_array().expect("array").len(), 3, "{all}");
    assert_eq!(all[0]["id"], bob_op.as_str(), "newest first: {all}");
    a.get(&format!("/api/operations/{op}"), BOB)
        .await
        .refused(404, "not found");
    a.get("/api/operations?volume=nope", ALICE)
        .await
        .refused(422, "volume");
    a.get("/api/operations?state=done", ALICE)
        .await
        .refused(422, "state");

    // Every byte the killed detach was uploading is restored on B.
    let again = b.vm("attach", &uuid, ALICE, "m", "2").await.expect(200);
    let p = again["path"].as_str().expect("path");
    assert!(
        read_image(p, 0, data.len()) == data[..],
        "data differs after the resumed detach"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_on_a_is_fixed_via_b_and_old_records_are_pruned() {
    let site = Site::new();
    let mut args = vec![
        "--catalog-grace-secs",
        "0",
        "--operation-retention-secs",
        "4",
    ];
    args.extend(TIMING);
    let a = site.serve("host-a", &args);
    let b = site.serve("host-b", &args);
    let uuid = a
        .create(
            ALICE,
            json!({"size": 1, "tag": "t", "visibility": "public"}),
        )
        .await;
    let att = a.vm("attach", &uuid, ALICE, "n", "1").await.expect(200);
    write_image(
        att["path"].as_str().expect("path"),
        0,
        &pseudo_random(92, MIB as usize),
    );
    a.post("/api/detach", ALICE, json!({"node": "n", "vm_id": "1"}))
        .await
        .expect(200);

    // No check yet anywhere: nothing to fix.
    b.post("/api/fix", ALICE, json!({"fixes": ["clean:gc"]}))
        .await
        .refused(422, "not in the last check");
    let found = a.get("/api/check", ALICE).await.expect(200);
    let ids: Vec<&str> = found["fixes"]
        .as_array()
        .expect("fixes")
        .iter()
        .map(|f| f["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["clean:gc", "clean:catalog"], "{found}");
    if let Some(repo) = site.local_repo() {
        let gens =
            super::service_common::files_under(&repo.join(format!("service/volumes/{uuid}")));
        assert!(
            gens.len() > 1,
            "superseded generations to compact: {gens:?}"
        );
    }

    // B applies the fixes A's check listed; the operation B runs is visible on A.
    let fixed = b
        .post(
            "/api/fix",
            ALICE,
            json!({"fixes": ["clean:catalog", "clean:gc"]}),
        )
        .await
        .expect(200);
    let fix_op = fixed["operation"].as_str().expect("operation").to_string();
    assert!(
        fixed["fixes"]["clean:catalog"]["generations"]
            .as_u64()
            .expect("compacted")
            > 0,
        "{fixed}"
    );
    let seen = a
        .get(&format!("/api/operations/{fix_op}"), ALICE)
        .await
        .expect(200);
    assert_eq!(
        (
            seen["state"].as_str(),
            seen["server"].as_str(),
            seen["kind"].as_str()
        ),
        (Some("done"), Some("host-b"), Some("fix")),
        "{seen}"
    );
    if let Some(repo) = site.local_repo() {
        let gens =
            super::service_common::files_under(&repo.join(format!("service/volumes/{uuid}")));
        assert_eq!(gens.len(), 1, "catalog compacted by B: {gens:?}");
    }
    // The status of the volume on B comes from A's check.
    let disk = b
        .get(&format!("/api/disks/{uuid}"), ALICE)
        .await
        .expect(200);
    assert_eq!(disk["status"], "optimized");

    // Finished records are pruned once older than the retention (4 s), on both hosts.
    let t0 = Instant::now();
    loop {
        let r = b.get(&format!("/api/operations/{fix_op}"), ALICE).await;
        if r.status.as_u16() == 404 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "never pruned: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.get(&format!("/api/operations/{fix_op}"), ALICE)
        .await
        .refused(404, "not found");
    if let Some(repo) = site.local_repo() {
        assert!(!repo.join(format!("service/operations/{fix_op}")).exists());
    }
    assert_eq!(a.get("/api/operations", ALICE).await.expect(200), json!([]));
    a.call(Method::GET, "/api/operations", None, Body::None)
        .await
        .refused(401, "Authorization");
}

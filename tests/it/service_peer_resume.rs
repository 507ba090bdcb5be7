//! Kill `island serve` (SIGKILL) in the middle of a create from a peer's snapshot (the
//! copy into this repository is under way), restart it on the same data dir: the
//! operation resumes under its id, creates the very volume it had planned (same uuid),
//! and that volume attaches and reads back every byte the other region wrote.

use super::common::pseudo_random;
use super::service_common::{read_image, session, write_image, Site, ALICE};
use serde_json::json;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_from_a_peer_killed_mid_copy_resumes_after_restart() {
    let (region_a, region_b) = (Site::new(), Site::new());
    let a = region_a.serve("host-a", &[]);
    let uuid = a
        .create(
            ALICE,
            json!({"size": 1, "tag": "t", "visibility": "private"}),
        )
        .await;
    let data = pseudo_random(96, (24 * MIB) as usize);
    let (s1, _) = session(&a, &uuid, "1", |p| write_image(p, 0, &data)).await;

    // Region B copies in at 4 MiB/s: 24 MiB take about 6 s.
    let b = region_b.serve(
        "host-b",
        &["--peer", &region_a.repo_url, "--limit-upload", "4M"],
    );
    let started = b
        .post(
            "/api/create",
            ALICE,
            json!({"tag": "dr", "visibility": "private", "source": uuid, "snapshot": s1,
                "source_repository": region_a.repo_url, "wait": false}),
        )
        .await
        .expect(202);
    let op = started["operation"].as_str().expect("id").to_string();
    let planned = started["uuid"].as_str().expect("uuid").to_string();
    let t0 = Instant::now();
    loop {
        let o = b
            .get(&format!("/api/operations/{op}"), ALICE)
            .await
            .expect(200);
        assert_ne!(o["state"], "done", "copy finished before the kill: {o}");
        if o["stage"] == "copy" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "copy never started: {o}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let record_path = b.data.join(format!("operations/{op}.json"));
    drop(b);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).expect("record")).expect("JSON");
    assert_eq!(
        (record["state"].as_str(), record["stage_index"].as_u64()),
        (Some("running"), Some(1)),
        "{record}"
    );

    // Restart: the operation resumes and creates the planned volume.
    let b = region_b.serve("host-b", &["--peer", &region_a.repo_url]);
    let done = b.wait_op(&op, ALICE).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["result"]["resumed"], true, "{done}");
    assert_eq!(done["result"]["uuid"], planned.as_str());
    assert_eq!(done["result"]["copy"]["copied"], json!([s1]), "{done}");
    let att = b.vm("attach", &planned, ALICE, "n", "2").await.expect(200);
    assert_eq!(att["from_snapshot"], s1.as_str());
    let p = att["path"].as_str().expect("path");
    assert!(
        read_image(p, 0, data.len()) == data[..],
        "every byte from region A"
    );
}

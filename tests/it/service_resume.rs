//! Kill `island serve` (SIGKILL) in the middle of a detach's upload, restart it on the
//! same data dir: the persisted operation resumes under its id and completes, the volume
//! is released, and attaching it on another host reads back every byte written.

use super::common::pseudo_random;
use super::service_common::{Site, ALICE};
use island::image::{Image, OpenMode};
use serde_json::json;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_killed_mid_upload_resumes_after_restart() {
    let site = Site::new();
    // Throttled uploads so the kill lands mid-upload: 24 MiB at 4 MiB/s.
    let a = site.serve("host-a", &["--limit-upload", "4M"]);
    let uuid = a
        .post(
            "/api/create",
            ALICE,
            json!({"size": 1, "tag": "t", "visibility": "private"}),
        )
        .await
        .expect(201)["uuid"]
        .as_str()
        .expect("uuid")
        .to_string();
    let att = a
        .post(
            &format!("/api/attach/{uuid}"),
            ALICE,
            json!({"node": "n", "vm_id": "1"}),
        )
        .await
        .expect(200);
    let path = att["path"].as_str().expect("path").to_string();
    let data = pseudo_random(71, (24 * MIB) as usize);
    let end = pseudo_random(72, MIB as usize);
    {
        let img = Image::open(&path, OpenMode::ReadWrite).expect("open");
        img.write_at(&data, 0).expect("write");
        img.write_at(&end, 1023 * MIB).expect("write");
        img.close().expect("close");
    }
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
    // Wait until the upload is under way, then kill the server.
    let started = Instant::now();
    loop {
        let o = a
            .get(&format!("/api/operations/{op}"), ALICE)
            .await
            .expect(200);
        assert_ne!(o["state"], "done", "upload finished before the kill: {o}");
        if o["stage"] == "upload" && o["done"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "upload never started: {o}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(a);
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            site.dir
                .path()
                .join(format!("data-host-a/operations/{op}.json")),
        )
        .expect("operation record on disk"),
    )
    .expect("JSON record");
    assert_eq!(record["state"], "running", "{record}");
    assert_eq!(record["stage_index"], 1, "{record}");
    assert!(
        std::path::Path::new(&path).exists(),
        "image kept while not uploaded"
    );

    // Restart on the same data dir: the operation resumes and completes.
    let a = site.serve("host-a", &[]);
    let done = a.wait_op(&op, ALICE).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["result"]["resumed"], true, "{done}");
    assert_eq!(done["result"]["uuid"], json!([uuid]));
    assert!(!std::path::Path::new(&path).exists(), "local image dropped");
    let v = a.get(&format!("/api/disks/{uuid}"), ALICE).await;
    assert_eq!(v.remaining.as_deref(), Some("2"));
    let snaps = a
        .get(&format!("/api/disks/{uuid}/snapshots"), ALICE)
        .await
        .expect(200);
    assert_eq!(snaps.as_array().expect("array").len(), 1, "{snaps}");

    // Another host restores every byte.
    let b = site.serve("host-b", &[]);
    let again = b
        .post(
            &format!("/api/attach/{uuid}"),
            ALICE,
            json!({"node": "m", "vm_id": "2"}),
        )
        .await
        .expect(200);
    let img = Image::open(again["path"].as_str().expect("path"), OpenMode::ReadOnly).expect("open");
    let mut buf = vec![0u8; data.len()];
    img.read_at(&mut buf, 0).expect("read");
    assert!(buf == data[..], "data differs after the resumed detach");
    let mut buf = vec![0u8; end.len()];
    img.read_at(&mut buf, 1023 * MIB).expect("read");
    assert!(buf == end[..], "end differs after the resumed detach");
}

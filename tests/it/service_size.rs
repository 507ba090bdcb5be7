//! Volume sizes: `--max-size-gib` is bounded by the library's maximum (16 TiB − 1 MiB,
//! so at most 16383 GiB); a size past the configured bound is a 422; and an attach whose
//! image the data dir's filesystem cannot hold is refused clearly (409 naming the size and
//! the data dir) before anything is materialised, with the claim released.
//!
//! The filesystem limit is the kernel's real file size limit of the server process
//! (`prlimit --fsize`, 4 GiB here; the wrapper ignores SIGXFSZ so the limit answers EFBIG
//! as a filesystem's own limit does) — a stand-in for ext4's 16 TiB that needs no mount.

use super::common::tempdir;
use super::service_common::{Site, ALICE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const LIMIT: u64 = 4 << 30;

/// `island serve` under a file size limit of [`LIMIT`] bytes.
struct Limited {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Limited {
    fn start(site: &Site, data: &std::path::Path) -> Limited {
        let island = env!("CARGO_BIN_EXE_island");
        let users = site.dir.path().join("users.toml");
        let script = format!(
            "trap '' XFSZ; exec prlimit --fsize={LIMIT} -- '{island}' serve --repo '{}' \
             --listen 127.0.0.1:0 --server-id host-a --users '{}' --data-dir '{}' \
             --max-size-gib 16383",
            site.repo_url,
            users.display(),
            data.display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .env_remove("ISLAND_REPO")
            .stdout(Stdio::piped())
            .spawn()
            .expect("island serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Limited {
            child,
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
        }
    }

    /// POST `path` with a JSON body; status and body, checked against the OpenAPI document.
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {ALICE}"))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        let status = r.status();
        let body: Value =
            serde_json::from_slice(&r.bytes().await.expect("body")).expect("JSON body");
        crate::service_openapi::check("POST", path, status.as_u16(), &body);
        (status, body)
    }

    async fn create(&self, gib: u64) -> String {
        let (status, body) = self
            .post(
                "/api/create",
                json!({"size": gib, "tag": "t", "visibility": "private"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["uuid"].as_str().expect("uuid").to_string()
    }

    async fn attach(&self, uuid: &str, vm: &str) -> (StatusCode, Value) {
        self.post(
            &format!("/api/attach/{uuid}"),
            json!({"node": "n", "vm_id": vm}),
        )
        .await
    }
}

#[test]
fn max_size_gib_is_bounded_by_the_library_maximum() {
    let site = Site::new();
    let out = Command::new(env!("CARGO_BIN_EXE_island"))
        .args(["serve", "--repo", &site.repo_url, "--listen", "127.0.0.1:0"])
        .arg("--users")
        .arg(site.dir.path().join("users.toml"))
        .arg("--data-dir")
        .arg(tempdir().path())
        .args(["--max-size-gib", "16384"])
        .env_remove("ISLAND_REPO")
        .output()
        .expect("island serve runs");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("outside 1..=16383"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_beyond_the_data_dir_file_size_limit_is_refused_before_materialising() {
    let site = Site::new();
    let data = site.dir.path().join("data-limited");
    let s = Limited::start(&site, &data);

    // 16383 GiB is the largest size the API takes; one more is a 422.
    let (status, body) = s
        .post(
            "/api/create",
            json!({"size": 16384, "tag": "t", "visibility": "private"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["message"][0]
        .as_str()
        .is_some_and(|m| m.contains("outside 1..=16383")));
    let huge = s.create(16383).await;
    let over = s.create(5).await;
    let fits = s.create(1).await;

    for (uuid, size) in [(&huge, 16383u64 << 30), (&over, 5 << 30)] {
        let (status, body) = s.attach(uuid, "1").await;
        assert_eq!(status, 409, "{body}");
        let m = body["message"][0].as_str().expect("message");
        assert!(
            m.contains("cannot hold") && m.contains(&format!("{size}-byte")),
            "{m}"
        );
        assert!(
            m.contains(&data.display().to_string()),
            "names the data dir: {m}"
        );
        // The claim was released: the full user limit is left.
        let r = s
            .http
            .get(format!("{}/api/disks/{uuid}", s.base))
            .header("Authorization", format!("Bearer {ALICE}"))
            .send()
            .await
            .expect("request");
        let remaining = r.headers()["x-diskuser-remaining"].to_str().expect("ascii");
        assert_eq!(remaining, "2");
    }
    let left: Vec<_> = std::fs::read_dir(data.join("volumes"))
        .expect("volumes dir")
        .collect();
    assert!(left.is_empty(), "nothing materialised: {left:?}");

    // Within the limit the same server attaches.
    let (status, body) = s.attach(&fits, "2").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mode"], "read-write");
}

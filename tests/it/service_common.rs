//! Shared by the `island serve` tests: spawn real server processes on loopback sharing one
//! local repository, and talk to them with a real HTTP client.

use super::common::tempdir;
use super::objstore_common::{setting, unique_prefix};
use island::image::{Image, OpenMode};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const ALICE: &str = "alice-token-0001";
pub const BOB: &str = "bob-token-000002";
/// A third user, not an admin (owns volumes others try to change).
pub const CAROL: &str = "carol-token-0003";

/// A repository (a local directory, or an `s3://` URL) and a users file, shared by the
/// servers of one test.
pub struct Site {
    pub dir: tempfile::TempDir,
    /// Repository location as given to `--repo`.
    pub repo_url: String,
    /// Global store flags for every `island` command (e.g. `--s3-path-style`).
    pub flags: Vec<String>,
}

impl Site {
    /// A fresh local directory repository.
    pub fn new() -> Site {
        let dir = crate::common::tempdir();
        let repo = dir.path().join("repo").display().to_string();
        Site::init(dir, repo, Vec::new())
    }

    /// A fresh repository at `repo_url` (initialised through the CLI), users alice (an
    /// admin), bob and carol.
    pub fn init(dir: tempfile::TempDir, repo_url: String, flags: Vec<String>) -> Site {
        let out = Command::new(env!("CARGO_BIN_EXE_island"))
            .args(&flags)
            .args(["init", &repo_url])
            .output()
            .expect("island init runs");
        assert!(out.status.success(), "init: {out:?}");
        std::fs::write(
            dir.path().join("users.toml"),
            format!(
                "admins = [\"alice\"]\n[tokens]\n\"{ALICE}\" = \"alice\"\n\"{BOB}\" = \"bob\"\n\"{CAROL}\" = \"carol\"\n"
            ),
        )
        .expect("users file");
        Site {
            dir,
            repo_url,
            flags,
        }
    }

    /// The local repository directory, if the repository is local.
    pub fn local_repo(&self) -> Option<PathBuf> {
        (!self.repo_url.contains("://")).then(|| PathBuf::from(&self.repo_url))
    }

    /// Start `island serve` as server `id` with its own data dir.
    pub fn serve(&self, id: &str, extra: &[&str]) -> Server {
        let data = self.dir.path().join(format!("data-{id}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_island"))
            .args(&self.flags)
            .args(["serve", "--repo", &self.repo_url])
            .args(["--listen", "127.0.0.1:0", "--server-id", id])
            .arg("--users")
            .arg(self.dir.path().join("users.toml"))
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .env_remove("ISLAND_REPO")
            .stdout(Stdio::piped())
            .spawn()
            .expect("island serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reads the listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server {
            child,
            base: format!("http://{addr}"),
            data,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("HTTP client"),
        }
    }
}

/// One running `island serve`; killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    pub data: PathBuf,
    http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, the X-DiskUser-* headers, and the JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub limit: Option<String>,
    pub remaining: Option<String>,
    pub body: Value,
}

impl Reply {
    /// The `{"message": [...]}` texts of an error reply, joined.
    pub fn messages(&self) -> String {
        let list = self.body["message"]
            .as_array()
            .unwrap_or_else(|| panic!("no message array in {}", self.body));
        assert!(!list.is_empty(), "empty message array");
        list.iter()
            .map(|m| m.as_str().expect("message is a string"))
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Assert `status` and return the body.
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        self.body
    }

    /// Assert an error reply with `status` whose messages mention `needle`.
    pub fn refused(self, status: u16, needle: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        let m = self.messages();
        assert!(m.contains(needle), "{needle:?} not in {m:?}");
    }
}

/// A request body: JSON, form, or raw with a content type.
pub enum Body<'a> {
    None,
    Json(Value),
    Form(&'a str),
    Raw(&'a str, Vec<u8>),
}

impl Server {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Body<'_>,
    ) -> Reply {
        let method_name = method.as_str().to_string();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req
                .header("Content-Type", "application/json")
                .body(v.to_string()),
            Body::Form(f) => req
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(f.to_string()),
            Body::Raw(ct, bytes) => req.header("Content-Type", ct).body(bytes),
        };
        let resp = req.send().await.expect("request reaches the server");
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().expect("ASCII header").to_string())
        };
        let (limit, remaining) = (header("x-diskuser-limit"), header("x-diskuser-remaining"));
        let bytes = resp.bytes().await.expect("response body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{status}: body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        crate::service_openapi::check(&method_name, path, status.as_u16(), &body);
        Reply {
            status,
            limit,
            remaining,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), Body::None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Body::Json(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.call(Method::DELETE, path, Some(token), Body::None)
            .await
    }

    /// `POST /api/create` with `body`, expecting 201; the new volume's uuid.
    pub async fn create(&self, token: &str, body: Value) -> String {
        let reply = self.post("/api/create", token, body).await.expect(201);
        reply["uuid"].as_str().expect("uuid").to_string()
    }

    /// `POST /api/{what}/{uuid}` (attach, hotattach, hotdetach) for vm `vm_id` on `node`.
    pub async fn vm(&self, what: &str, uuid: &str, token: &str, node: &str, vm_id: &str) -> Reply {
        let body = serde_json::json!({"node": node, "vm_id": vm_id});
        self.post(&format!("/api/{what}/{uuid}"), token, body).await
    }

    /// Poll operation `id` until it is done or failed (30 s at most).
    pub async fn wait_op(&self, id: &str, token: &str) -> Value {
        for _ in 0..600 {
            let op = self
                .get(&format!("/api/operations/{id}"), token)
                .await
                .expect(200);
            if op["state"] == "done" || op["state"] == "failed" {
                return op;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("operation {id} did not finish");
    }
}

/// Write `data` at `offset` into the local image at `path` (as a VM would).
pub fn write_image(path: &str, offset: u64, data: &[u8]) {
    let img = Image::open(path, OpenMode::ReadWrite).expect("open attached image");
    img.write_at(data, offset).expect("write");
    img.close().expect("close");
}

/// Read `len` bytes at `offset` of the local image at `path`.
pub fn read_image(path: &str, offset: u64, len: usize) -> Vec<u8> {
    let img = Image::open(path, OpenMode::ReadOnly).expect("open attached image");
    let mut buf = vec![0u8; len];
    img.read_at(&mut buf, offset).expect("read");
    buf
}

/// Files under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

impl Site {
    /// A site whose repository is a fresh prefix of the test bucket on the real S3 (path
    /// style), or `None` when ISLAND_TEST_S3_* is not set (skipped, reason printed).
    pub fn s3(test: &str) -> Option<Site> {
        setting(test, "AWS_ENDPOINT_URL")?;
        setting(test, "AWS_ACCESS_KEY_ID")?;
        let bucket = setting(test, "ISLAND_TEST_S3_BUCKET")?;
        let url = format!("s3://{bucket}/{}", unique_prefix(test));
        Some(Site::init(tempdir(), url, vec!["--s3-path-style".into()]))
    }
}

/// Attach read-write on `s` as vm `vm` of node n1, run `f` on the image path, detach; the
/// new snapshot's id and the attach reply.
pub async fn session(s: &Server, uuid: &str, vm: &str, f: impl FnOnce(&str)) -> (String, Value) {
    let att = s.vm("attach", uuid, ALICE, "n1", vm).await.expect(200);
    assert_eq!(att["mode"], "read-write");
    f(att["path"].as_str().expect("path"));
    s.post(
        "/api/detach",
        ALICE,
        serde_json::json!({"node": "n1", "vm_id": vm}),
    )
    .await
    .expect(200);
    let list = s
        .get(&format!("/api/disks/{uuid}/snapshots"), ALICE)
        .await
        .expect(200);
    let last = list.as_array().expect("array").last().expect("a snapshot");
    (last["id"].as_str().expect("id").to_string(), att)
}

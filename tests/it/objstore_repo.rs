//! The repository end to end on the real S3 (radosgw) and the real Swift, through the
//! `island` binary with `s3://` / `swift://` URLs and the users' environment settings
//! (`AWS_*`, `ST_*`, exported by `scripts/objstore/with-servers.sh`), and through the
//! library API: init, full and incremental backup (upload bounded by what changed),
//! bit-exact restore of every snapshot, delete, gc, `check --read-data`.
//!
//! `copy` between the two servers (fs → S3 → Swift → S3 and → fs) is tested in
//! `repo_copy::copy_fs_to_s3_to_swift_and_back`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use island::backup::{backup, BackupOptions, RawSource};
use island::repo::{CheckOptions, InitOptions, Repository};
use island::restore::{restore, RestoreTarget};
use island::store::{open_store, StoreOptions};
use rand::{RngCore, SeedableRng};
use serde_json::Value;

use crate::objstore_common::{setting, unique_prefix};

pub(crate) const MIB: u64 = 1 << 20;
const CLUSTER: u64 = 64 << 10;
/// Small enough for a quick test on a shared machine, large enough for several packs.
const VOLUME_SIZE: u64 = 32 * MIB;
/// Clusters the incremental step rewrites (16 of 512, half in the random half).
const CHANGED: [u64; 16] = [
    1, 30, 31, 77, 100, 150, 200, 255, 256, 300, 350, 400, 420, 470, 500, 511,
];
/// Settle time the Swift tests give `create_exclusive` (`--swift-create-settle`): ample for
/// loopback, where a small PUT takes milliseconds.
pub(crate) const SWIFT_TEST_SETTLE: &str = "2";

/// One remote repository location and the store flags every command against it gets.
pub(crate) struct Remote {
    pub url: String,
    pub flags: Vec<String>,
}

impl Remote {
    /// A fresh `s3://` repository in the test bucket, or `None` (skipped) without a server.
    pub(crate) fn s3(test: &str) -> Option<Remote> {
        let bucket = setting(test, "ISLAND_TEST_S3_BUCKET")?;
        setting(test, "AWS_ENDPOINT_URL")?;
        setting(test, "AWS_ACCESS_KEY_ID")?;
        Some(Remote {
            url: format!("s3://{bucket}/{}", unique_prefix(test)),
            flags: Vec::new(),
        })
    }

    /// A fresh `swift://` repository in the test container, or `None` (skipped).
    pub(crate) fn swift(test: &str) -> Option<Remote> {
        let container = setting(test, "ISLAND_TEST_SWIFT_CONTAINER")?;
        setting(test, "ST_AUTH")?;
        setting(test, "ST_KEY")?;
        Some(Remote {
            url: format!("swift://{container}/{}", unique_prefix(test)),
            flags: vec!["--swift-create-settle".into(), SWIFT_TEST_SETTLE.into()],
        })
    }

    /// `StoreOptions` equivalent to [`Remote::flags`], for the library path.
    pub(crate) fn options(&self) -> StoreOptions {
        StoreOptions {
            swift_create_settle: Some(Duration::from_secs(2)),
            ..StoreOptions::default()
        }
    }

    /// `island ARGS` plus this remote's flags, ready to run (callers may add settings).
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_island"));
        cmd.args(args)
            .args(&self.flags)
            .env_remove("ISLAND_REPO")
            .env("RUST_LOG", "warn");
        cmd
    }

    /// Runs `island ARGS` plus this remote's flags.
    pub(crate) fn island(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("the island binary runs")
    }

    /// Runs `island ARGS`, requires exit 0, returns stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.island(args);
        assert!(
            out.status.success(),
            "island {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("stdout is UTF-8")
    }
}

/// Runs `island ARGS --json` against `remote` and parses stdout.
pub(crate) fn island_ok_json(remote: &Remote, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    parse_json(args, &remote.ok(&all))
}

/// Parses the `--json` stdout of `island ARGS`.
pub(crate) fn parse_json(args: &[&str], text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("island {args:?}: bad JSON ({e}): {text}"))
}

pub(crate) fn u64_field(v: &Value, name: &str) -> u64 {
    v.get(name)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("field {name} missing or not an unsigned integer in {v}"))
}

fn str_field(v: &Value, name: &str) -> String {
    v.get(name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("field {name} missing or not a string in {v}"))
        .to_string()
}

/// A raw volume file, half random and half zeros, with its expected contents per step.
pub(crate) struct TestVolume {
    pub path: PathBuf,
    pub data: Vec<u8>,
}

impl TestVolume {
    pub(crate) fn new(dir: &Path, size: u64, seed: u64) -> TestVolume {
        let mut data = vec![0u8; size as usize];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data[..(size / 2) as usize]);
        let path = dir.join("volume.raw");
        std::fs::write(&path, &data).expect("write the volume");
        TestVolume { path, data }
    }

    /// Rewrites the [`CHANGED`] clusters inside the volume with fresh random data; returns
    /// the bytes changed.
    pub(crate) fn change(&mut self, seed: u64) -> u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut changed = 0;
        for c in CHANGED {
            let at = (c * CLUSTER) as usize;
            if let Some(cluster) = self.data.get_mut(at..at + CLUSTER as usize) {
                rng.fill_bytes(cluster);
                changed += CLUSTER;
            }
        }
        std::fs::write(&self.path, &self.data).expect("rewrite the volume");
        changed
    }

    pub(crate) fn path_str(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }
}

pub(crate) fn assert_same_file(path: &Path, expected: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(
        got.len(),
        expected.len(),
        "{}: size differs",
        path.display()
    );
    if let Some(at) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{}: first difference at byte {at}", path.display());
    }
}

/// Full, incremental, restore both, delete the first, gc, restore the second, check.
fn cli_end_to_end(remote: &Remote) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = remote.url.as_str();
    let mut vol = TestVolume::new(dir.path(), VOLUME_SIZE, 11);
    let first = vol.data.clone();

    remote.ok(&["init", url]);
    let again = remote.island(&["init", url]);
    assert_eq!(again.status.code(), Some(1), "second init must fail");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already"), "second init: {err}");

    let full = island_ok_json(
        remote,
        &["backup", "--repo", url, "--volume", "vm1", vol.path_str()],
    );
    let id1 = str_field(&full, "id");
    let up = u64_field(&full, "bytes_uploaded");
    assert!(
        (VOLUME_SIZE / 2..VOLUME_SIZE / 2 + MIB).contains(&up),
        "full backup uploaded {up} bytes for {} MiB of random data",
        VOLUME_SIZE / 2 / MIB
    );

    let changed = vol.change(12);
    let inc = island_ok_json(
        remote,
        &["backup", "--repo", url, "--volume", "vm1", vol.path_str()],
    );
    let id2 = str_field(&inc, "id");
    assert_eq!(str_field(&inc, "parent"), id1);
    let up = u64_field(&inc, "bytes_uploaded");
    // The changed chunks plus index, tables and the root: well under 3× the change.
    assert!(
        (changed..=3 * changed).contains(&up),
        "incremental uploaded {up} bytes for {changed} changed"
    );
    assert_eq!(u64_field(&inc, "chunks_new"), CHANGED.len() as u64);

    for (id, expected) in [(&id1, &first), (&id2, &vol.data)] {
        let out = dir.path().join(format!("restore-{id}.raw"));
        let rep = island_ok_json(
            remote,
            &[
                "restore",
                "--repo",
                url,
                "--volume",
                "vm1",
                "--snapshot",
                id,
                out.to_str().unwrap(),
            ],
        );
        assert_same_file(&out, expected);
        assert!(u64_field(&rep, "bytes_downloaded") >= VOLUME_SIZE / 2);
    }

    remote.ok(&[
        "delete",
        "--repo",
        url,
        "--volume",
        "vm1",
        "--snapshot",
        &id1,
    ]);
    let list = island_ok_json(remote, &["snapshots", "--repo", url]);
    let ids: Vec<String> = list
        .as_array()
        .expect("snapshots --json is a list")
        .iter()
        .map(|s| str_field(s, "id"))
        .collect();
    assert_eq!(ids, vec![id2.clone()]);
    remote.ok(&["gc", "--repo", url]);
    let out = dir.path().join("after-gc.raw");
    remote.ok(&[
        "restore",
        "--repo",
        url,
        "--volume",
        "vm1",
        "--snapshot",
        &id2,
        out.to_str().unwrap(),
    ]);
    assert_same_file(&out, &vol.data);
    let clean = remote.ok(&["check", "--repo", url, "--read-data"]);
    assert!(clean.contains("no problems"), "check: {clean}");
    let gone = remote.island(&[
        "restore",
        "--repo",
        url,
        "--volume",
        "vm1",
        "--snapshot",
        &id1,
        dir.path().join("gone.raw").to_str().unwrap(),
    ]);
    assert_eq!(
        gone.status.code(),
        Some(1),
        "restoring a deleted snapshot fails"
    );
}

#[test]
fn s3_repository_cli_end_to_end() {
    if let Some(remote) = Remote::s3("s3_repo_cli") {
        cli_end_to_end(&remote);
    }
}

#[test]
fn swift_repository_cli_end_to_end() {
    if let Some(remote) = Remote::swift("swift_repo_cli") {
        cli_end_to_end(&remote);
    }
}

/// The same life cycle through the library API (`open_store`, `Repository`, `backup`,
/// `restore`), as the service embedding Island uses it.
async fn library_end_to_end(remote: &Remote) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut vol = TestVolume::new(dir.path(), 8 * MIB, 21);
    let first = vol.data.clone();
    let store = open_store(&remote.url, &remote.options())
        .await
        .expect("open store");
    let repo = Repository::init(
        store,
        &InitOptions {
            chunk_size: CLUSTER as u32,
        },
    )
    .await
    .expect("init");
    let opts = BackupOptions {
        volume: "lib".into(),
        ..BackupOptions::default()
    };
    let path = vol.path.clone();
    let source = || Arc::new(RawSource::open(&path).expect("open volume"));
    let r1 = backup(&repo, source(), &opts).await.expect("full backup");
    let changed = vol.change(22);
    let r2 = backup(&repo, source(), &opts)
        .await
        .expect("incremental backup");
    assert_eq!(r2.parent.as_deref(), Some(r1.id.as_str()));
    assert!(
        (changed..=3 * changed).contains(&r2.bytes_uploaded),
        "incremental uploaded {} for {changed} changed",
        r2.bytes_uploaded
    );
    for (id, expected) in [(&r1.id, &first), (&r2.id, &vol.data)] {
        let out = dir.path().join(format!("lib-{id}.raw"));
        restore(&repo, "lib", id, &RestoreTarget::Raw(out.clone()), None)
            .await
            .expect("restore");
        assert_same_file(&out, expected);
    }
    repo.delete_snapshot("lib", &r1.id).await.expect("delete");
    repo.gc().await.expect("gc");
    let report = repo
        .check(&CheckOptions {
            read_data: true,
            sample_pct: None,
        })
        .await
        .expect("check");
    assert!(report.is_clean(), "check: {report:?}");
    let out = dir.path().join("lib-after-gc.raw");
    restore(&repo, "lib", &r2.id, &RestoreTarget::Raw(out.clone()), None)
        .await
        .expect("restore after gc");
    assert_same_file(&out, &vol.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_repository_library_end_to_end() {
    if let Some(remote) = Remote::s3("s3_repo_lib") {
        library_end_to_end(&remote).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swift_repository_library_end_to_end() {
    if let Some(remote) = Remote::swift("swift_repo_lib") {
        library_end_to_end(&remote).await;
    }
}

//! Faults against the real S3 (radosgw) and Swift through the `island` binary: wrong key,
//! missing bucket/container and unreachable endpoint give a clear error quickly; radosgw
//! stopped mid-backup and restarted (`scripts/objstore/rgw-outage.sh`); and the download
//! limit holds on a real server.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::objstore_common::setting;
use crate::objstore_repo::{assert_same_file, parse_json, u64_field, Remote, TestVolume, MIB};

/// Runs `island ARGS` against `remote` with `env` overriding the environment; returns the
/// output and how long it took.
fn timed(remote: &Remote, args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let mut cmd = remote.command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t = Instant::now();
    let out = cmd.output().expect("the island binary runs");
    (out, t.elapsed())
}

/// Requires a failure (exit 1) within `limit` whose message contains every one of
/// `needles` (case-insensitive); returns the message.
fn fails_clearly(what: &str, out: &Output, took: Duration, limit: Duration, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: exit code; stderr: {err}"
    );
    for n in needles {
        assert!(
            err.contains(&n.to_lowercase()),
            "{what}: message lacks {n:?}: {err}"
        );
    }
    assert!(took < limit, "{what}: took {took:?} (limit {limit:?})");
    eprintln!("{what}: failed in {took:?}: {}", err.trim());
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn s3_wrong_key_missing_bucket_unreachable_endpoint() {
    let Some(remote) = Remote::s3("s3_faults") else {
        return;
    };
    let fast = Duration::from_secs(5);
    let (out, took) = timed(
        &remote,
        &["init", &remote.url],
        &[("AWS_SECRET_ACCESS_KEY", "not-the-secret")],
    );
    fails_clearly("s3 wrong key", &out, took, fast, &["PermissionDenied"]);

    let bucket = format!("island-missing-{}", uuid::Uuid::new_v4().simple());
    let missing = Remote {
        url: format!("s3://{bucket}/x"),
        flags: Vec::new(),
    };
    let (out, took) = timed(&missing, &["snapshots", "--repo", &missing.url], &[]);
    fails_clearly(
        "s3 missing bucket",
        &out,
        took,
        fast,
        &["ConfigInvalid", &bucket],
    );

    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let (out, took) = timed(
        &remote,
        &["snapshots", "--repo", &remote.url],
        &[("AWS_ENDPOINT_URL", &endpoint)],
    );
    fails_clearly(
        "s3 unreachable endpoint",
        &out,
        took,
        Duration::from_secs(40),
        &["connect"],
    );
}

#[test]
fn swift_wrong_key_missing_container_unreachable_auth() {
    let Some(remote) = Remote::swift("swift_faults") else {
        return;
    };
    let fast = Duration::from_secs(5);
    let (out, took) = timed(
        &remote,
        &["init", &remote.url],
        &[("ST_KEY", "not-the-key")],
    );
    fails_clearly("swift wrong key", &out, took, fast, &["PermissionDenied"]);

    let container = format!("island-missing-{}", uuid::Uuid::new_v4().simple());
    let missing = Remote {
        url: format!("swift://{container}/x"),
        flags: remote.flags.clone(),
    };
    let (out, took) = timed(&missing, &["snapshots", "--repo", &missing.url], &[]);
    fails_clearly(
        "swift missing container",
        &out,
        took,
        fast,
        &["ConfigInvalid", &container],
    );

    let auth = format!("http://127.0.0.1:{}/auth/v1.0", closed_port());
    let (out, took) = timed(
        &remote,
        &["snapshots", "--repo", &remote.url],
        &[("ST_AUTH", &auth)],
    );
    fails_clearly(
        "swift unreachable auth",
        &out,
        took,
        Duration::from_secs(40),
        &["connect"],
    );
}

fn backup_args<'a>(url: &'a str, vol: &'a str) -> Vec<&'a str> {
    vec!["backup", "--repo", url, "--volume", "vm", vol, "--json"]
}

fn restore_all(remote: &Remote, dir: &Path, ids: &[(String, Vec<u8>)]) {
    for (id, data) in ids {
        let out = dir.join(format!("r-{id}.raw"));
        remote.ok(&[
            "restore",
            "--repo",
            &remote.url,
            "--volume",
            "vm",
            "--snapshot",
            id,
            out.to_str().expect("utf-8"),
        ]);
        assert_same_file(&out, data);
    }
}

/// radosgw is stopped while a backup uploads (throttled so the outage falls inside it) and
/// restarted: the backup either rides it out through the retry layer or fails cleanly
/// (exit 1 with a message); re-running uploads only what is missing (nothing after a
/// committed backup; everything after an uncommitted one, whose packs are not reused), and
/// every snapshot restores bit-exact and `check --read-data` is clean.
#[test]
fn s3_server_restart_mid_backup() {
    // Before any S3 setting is read: no other test may use the server during the outage.
    crate::objstore_common::hold_s3(true);
    let Some(remote) = Remote::s3("s3_outage") else {
        return;
    };
    let Some(dir_of_servers) = setting("s3_outage", "ISLAND_TEST_OBJSTORE_DIR") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let url = remote.url.clone();
    let mut vol = TestVolume::new(dir.path(), 64 * MIB, 31);
    remote.ok(&["init", &url]);
    let mut snapshots = Vec::new();

    // 32 MiB of random data at 6 MiB/s: about 5 s of upload, the outage starts at 1.5 s.
    let child = remote
        .command(&backup_args(&url, vol.path_str()))
        .args(["--limit-upload", "6M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start backup");
    std::thread::sleep(Duration::from_millis(1500));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/objstore/rgw-outage.sh"
    );
    let outage = Command::new(script)
        .args([dir_of_servers.as_str(), "1"])
        .output()
        .expect("run rgw-outage.sh");
    assert!(
        outage.status.success(),
        "rgw-outage.sh: {}",
        String::from_utf8_lossy(&outage.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&outage.stdout).trim());
    let out = child.wait_with_output().expect("backup finishes");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let rode_out = out.status.success();
    if rode_out {
        let rep = parse_json(&["backup"], &String::from_utf8_lossy(&out.stdout));
        let id = rep["id"].as_str().expect("id").to_string();
        eprintln!(
            "backup rode out the outage: {} bytes uploaded",
            u64_field(&rep, "bytes_uploaded")
        );
        snapshots.push((id, vol.data.clone()));
    } else {
        assert_eq!(
            out.status.code(),
            Some(1),
            "clean failure exit code: {stderr}"
        );
        assert!(
            stderr.to_lowercase().contains("error"),
            "failure says why: {stderr}"
        );
        eprintln!("backup failed cleanly during the outage: {}", stderr.trim());
    }

    // Re-run: only what the repository lacks is uploaded.
    let rep = parse_json(&["backup"], &remote.ok(&backup_args(&url, vol.path_str())));
    let up = u64_field(&rep, "bytes_uploaded");
    if rode_out {
        assert!(
            up < MIB,
            "nothing changed, yet the re-run uploaded {up} bytes"
        );
    } else {
        assert!(
            (32 * MIB..34 * MIB).contains(&up),
            "re-run after a failed backup uploaded {up} bytes"
        );
    }
    snapshots.push((
        rep["id"].as_str().expect("id").to_string(),
        vol.data.clone(),
    ));

    // And the repository keeps working normally after the restart.
    let changed = vol.change(32);
    let rep = parse_json(&["backup"], &remote.ok(&backup_args(&url, vol.path_str())));
    let up = u64_field(&rep, "bytes_uploaded");
    assert!(
        (changed..=3 * changed).contains(&up),
        "incremental uploaded {up}"
    );
    snapshots.push((
        rep["id"].as_str().expect("id").to_string(),
        vol.data.clone(),
    ));
    restore_all(&remote, dir.path(), &snapshots);
    let clean = remote.ok(&["check", "--repo", &url, "--read-data"]);
    assert!(clean.contains("no problems"), "check: {clean}");
}

/// `--limit-download L` on a real server: restoring N bytes takes at least 0.8·N/L (the
/// token bucket allows a one-second burst, so N ≥ 5·L keeps this a true lower bound).
#[test]
fn s3_download_limit_bounds_restore_time() {
    let Some(remote) = Remote::s3("s3_limit") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let url = remote.url.clone();
    let vol = TestVolume::new(dir.path(), 16 * MIB, 41);
    remote.ok(&["init", &url]);
    let rep = parse_json(&["backup"], &remote.ok(&backup_args(&url, vol.path_str())));
    let id = rep["id"].as_str().expect("id").to_string();
    let limit = MIB;
    for (name, flags) in [
        ("unlimited", vec![]),
        (
            "limited",
            vec!["--limit-download".to_string(), limit.to_string()],
        ),
    ] {
        let out = dir.path().join(format!("{name}.raw"));
        let mut args = vec![
            "restore",
            "--repo",
            &url,
            "--volume",
            "vm",
            "--snapshot",
            &id,
            out.to_str().expect("utf-8"),
            "--json",
        ];
        args.extend(flags.iter().map(String::as_str));
        let t = Instant::now();
        let rep = parse_json(&args, &remote.ok(&args));
        let took = t.elapsed();
        assert_same_file(&out, &vol.data);
        let n = u64_field(&rep, "bytes_downloaded");
        assert!(n >= 8 * MIB, "downloaded {n}");
        eprintln!("restore {name}: {n} bytes in {took:?}");
        if name == "limited" {
            let bound = Duration::from_secs_f64(0.8 * n as f64 / limit as f64);
            assert!(
                took >= bound,
                "{n} bytes at {limit} B/s took {took:?} < {bound:?}"
            );
        }
    }
}

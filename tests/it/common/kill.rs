//! Killing the real `island` binary with SIGKILL part way through a job and checking what
//! it left (issue 4's multi-process crash tests: `repo_kill`, `repo_kill_tail`,
//! `restore_resume`).

use super::cli::{island_cmd, ok_json};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Spawn `island ARGS` with its output discarded (it is killed, not read).
pub fn spawn(args: &[&str]) -> Child {
    island_cmd(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn island")
}

/// Wait until `ready()` holds (or the child exits), sleep `extra`, then SIGKILL the child.
/// Returns false when the child had finished on its own before the kill.
pub fn kill_after(
    child: &mut Child,
    ready: impl Fn() -> bool,
    extra: Duration,
    what: &str,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        if child.try_wait().expect("poll the child").is_some() {
            return false;
        }
        assert!(Instant::now() < deadline, "{what}: not ready within 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(extra);
    let finished = child.try_wait().expect("poll the child").is_some();
    child.kill().expect("SIGKILL");
    child.wait().expect("reap the child");
    !finished
}

#[track_caller]
pub fn assert_check_clean(repo: &str) {
    let c = ok_json(&["check", "--repo", repo, "--json"]);
    let issues = c.get("issues").and_then(Value::as_array).cloned();
    assert_eq!(issues, Some(vec![]), "check: {c}");
}

/// Set the mtime (the directory store's Last-Modified) of every file under `repo/sub` two
/// hours back: past `LEASE_TTL + SKEW` for leases, past gc's cutoff for tombstones.
pub fn age(repo: &Path, sub: &str) {
    let then = SystemTime::now() - Duration::from_secs(2 * 3600);
    for f in crate::repo_ops_util::files_under(repo, sub) {
        std::fs::File::options()
            .write(true)
            .open(&f)
            .and_then(|h| h.set_modified(then))
            .unwrap_or_else(|e| panic!("age {}: {e}", f.display()));
    }
}

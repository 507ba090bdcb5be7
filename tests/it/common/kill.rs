//! Killing the real `island` binary with SIGKILL part way through a job and checking what
//! it left (issue 4's multi-process crash tests: `repo_kill`, `repo_kill_tail`,
//! `restore_resume`).

use super::cli::{island_cmd, ok, ok_json};
use crate::repo_ops_util::{backup, s, str_field, write_volume};
use serde_json::Value;
use std::path::{Path, PathBuf};
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

/// Spawn `island ARGS` and SIGKILL it `extra` after `ready()` holds. Panics when it
/// finished first: the test's re-run would then prove nothing about resuming.
#[track_caller]
pub fn spawn_and_kill(args: &[&str], ready: impl Fn() -> bool, extra: Duration, what: &str) {
    let mut child = spawn(args);
    assert!(
        kill_after(&mut child, ready, extra, what),
        "the {what} finished before the kill"
    );
}

/// Borrowed arguments for `island`.
pub fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Directory repositories `dir/NAME`, each initialised (`island init`).
pub fn init_repos<const N: usize>(dir: &Path, names: [&str; N]) -> [PathBuf; N] {
    names.map(|n| {
        let repo = dir.join(n);
        ok(&["init", s(&repo)]);
        repo
    })
}

/// The repositories of a killed-copy test: source `a` with one backup (`id`) of a volume
/// of `size` random bytes (`data`), target `b` (killed into, then the re-run) and
/// `reference` (an uninterrupted copy, to compare uploads with).
pub struct CopyRepos {
    pub a: PathBuf,
    pub b: PathBuf,
    pub reference: PathBuf,
    pub id: String,
    pub data: Vec<u8>,
}

impl CopyRepos {
    pub fn new(dir: &Path, size: u64, seed: u64) -> CopyRepos {
        let [a, b, reference] = init_repos(dir, ["a", "b", "ref"]);
        let vol = dir.join("vol.raw");
        let data = write_volume(&vol, size, size, seed);
        let id = str_field(&backup(s(&a), "vm", &vol), "id").to_string();
        CopyRepos {
            a,
            b,
            reference,
            id,
            data,
        }
    }

    /// `copy --from a --to TO --volume vm --json EXTRA...`
    pub fn args(&self, to: &Path, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "copy",
            "--from",
            s(&self.a),
            "--to",
            s(to),
            "--volume",
            "vm",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.push("--json".into());
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    }
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

/// How far the tests move a killed writer's lease back before its re-run: past
/// `checkpoint::ADOPT_AFTER` (10 min, a holder that renewed more recently may still be
/// running and is not adopted) and within `LEASE_TTL` (30 min, the chain rule).
pub const ADOPTABLE_AGE: Duration = Duration::from_secs(15 * 60);

/// Move the mtime (the directory store's Last-Modified) of every file under `repo/sub`
/// back by `by`, keeping the gaps between them (a lease chain stays unbroken).
pub fn age_by(repo: &Path, sub: &str, by: Duration) {
    for f in crate::repo_ops_util::files_under(repo, sub) {
        std::fs::File::options()
            .write(true)
            .open(&f)
            .and_then(|h| {
                let then = h.metadata()?.modified()? - by;
                h.set_modified(then)
            })
            .unwrap_or_else(|e| panic!("age {}: {e}", f.display()));
    }
}

//! Wrappers around qemu-img and qemu-io, the oracle for everything qcow2.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

fn describe(cmd: &Command) -> String {
    let args: Vec<_> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" "))
}

/// Runs a command and returns its output without judging the exit status.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", describe(cmd)))
}

/// Runs a command that is expected to get its image lock. An image Island has just
/// closed can still be locked for a moment: a child that another test thread is spawning
/// shares the closed descriptor's open file description (and its OFD locks) until it
/// execs. A lock still held after two seconds is a real leak and fails the caller.
pub fn output_unlocked(cmd: &mut Command) -> Output {
    for _ in 0..20 {
        let out = output(cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !(err.contains("Failed to get") && err.contains("lock")) {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    output(cmd)
}

/// Runs a command that must succeed; the failure message carries its stderr.
#[track_caller]
pub fn run(cmd: &mut Command) -> Output {
    let out = output_unlocked(cmd);
    assert!(
        out.status.success(),
        "{} failed ({}):\nstdout: {}\nstderr: {}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn qemu_img<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new("qemu-img");
    c.args(args);
    c
}

/// `qemu-io -f qcow2 -c CMD... PATH`; each command is one qemu-io command line.
pub fn qemu_io(path: &Path, cmds: &[String]) -> Command {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(path);
    c
}

/// What `qemu-img check --output=json` found. Absent fields mean zero.
#[derive(Debug, PartialEq, Eq)]
pub struct Check {
    pub corruptions: u64,
    pub leaks: u64,
    pub check_errors: u64,
}

#[track_caller]
pub fn check(path: &Path) -> Check {
    let out = output_unlocked(qemu_img(["check", "--output=json", "-f", "qcow2"]).arg(path));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "qemu-img check {} gave no JSON ({e}): status {}, stdout {text}, stderr {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let field = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    Check {
        corruptions: field("corruptions"),
        leaks: field("leaks"),
        check_errors: field("check-errors"),
    }
}

/// qemu-img check's human-readable report, which names each bad cluster.
fn check_details(path: &Path) -> String {
    let out = output_unlocked(qemu_img(["check", "-f", "qcow2"]).arg(path));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// After a clean close: no corruption, no leak, no error.
#[track_caller]
pub fn assert_check_clean(path: &Path) {
    let c = check(path);
    assert!(
        c.corruptions == 0 && c.leaks == 0 && c.check_errors == 0,
        "qemu-img check {} not clean:\n{}",
        path.display(),
        check_details(path)
    );
}

/// After a crash: leaks are allowed, corruption is not.
#[track_caller]
pub fn assert_check_no_corruption(path: &Path) {
    let c = check(path);
    assert!(
        c.corruptions == 0 && c.check_errors == 0,
        "qemu-img check {} reports corruption:\n{}",
        path.display(),
        check_details(path)
    );
}

/// What a crash left behind, as qemu-img check classifies it.
///
/// qcow2 cannot change a cluster's sharing atomically: the refcount (in a refcount
/// block) and the COPIED flag (in the active L1/L2 entry) are separate writes, so a power
/// loss inside a snapshot create, delete or revert can leave them disagreeing, for QEMU as
/// for Island. qemu-img check counts every disagreement as a corruption. Two kinds are
/// harmless and are counted apart here:
/// - refcount 1 but the flag clear: the next write copies the cluster needlessly;
/// - flag set with a refcount above 1 whose surplus is a leak (check finds exactly one
///   reference): the extra count belongs to a snapshot that never became visible, so an
///   in-place write clobbers nothing.
///
/// The dangerous kind — the flag set on a cluster a live snapshot also references — and
/// every other error stay in `other`.
#[derive(Debug)]
pub struct CrashCheck {
    pub harmless_copied_flag: u64,
    pub other: Vec<String>,
    pub corruptions: u64,
    pub check_errors: u64,
}

/// Parses "... l1_entry=HEX refcount=N" / "... l2_entry=HEX refcount=N" into the host
/// cluster index and the refcount.
fn copied_line(line: &str, cluster_size: u64) -> Option<(u64, u64)> {
    let entry = line.split_whitespace().find_map(|w| {
        w.strip_prefix("l1_entry=")
            .or_else(|| w.strip_prefix("l2_entry="))
    })?;
    let entry = u64::from_str_radix(entry, 16).ok()?;
    let refcount = line.rsplit("refcount=").next()?.trim().parse().ok()?;
    Some(((entry & 0x00ff_ffff_ffff_fe00) / cluster_size, refcount))
}

pub fn crash_check(path: &Path, cluster_size: u64) -> CrashCheck {
    let c = check(path);
    let details = check_details(path);
    // "Leaked cluster N refcount=R reference=F": clusters whose real reference count is F.
    let references: std::collections::HashMap<u64, u64> = details
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Leaked cluster ")?;
            let cluster = rest.split_whitespace().next()?.parse().ok()?;
            let reference = rest.rsplit("reference=").next()?.trim().parse().ok()?;
            Some((cluster, reference))
        })
        .collect();
    let mut harmless_copied_flag = 0;
    let mut other = Vec::new();
    for line in details.lines().filter(|l| l.starts_with("ERROR")) {
        let harmless = line.contains("OFLAG_COPIED")
            && match copied_line(line, cluster_size) {
                Some((_, 1)) => true,
                Some((cluster, _)) => references.get(&cluster) == Some(&1),
                None => false,
            };
        if harmless {
            harmless_copied_flag += 1;
        } else {
            other.push(line.to_owned());
        }
    }
    if c.corruptions > harmless_copied_flag + other.len() as u64 {
        other.extend(
            details
                .lines()
                .filter(|l| !l.starts_with("Leaked"))
                .map(str::to_owned),
        );
    }
    CrashCheck {
        harmless_copied_flag,
        other,
        corruptions: c.corruptions,
        check_errors: c.check_errors,
    }
}

/// After a crash: leaks are allowed; corruption is not, except the harmless COPIED-flag
/// disagreements (see [`CrashCheck`]) when a snapshot operation was cut short.
#[track_caller]
pub fn assert_crash_consistent(
    path: &Path,
    cluster_size: u64,
    snapshot_op_in_flight: bool,
    ctx: &str,
) {
    let c = crash_check(path, cluster_size);
    let tolerated = if snapshot_op_in_flight {
        c.harmless_copied_flag
    } else {
        0
    };
    assert!(
        c.check_errors == 0 && c.other.is_empty() && c.corruptions == tolerated,
        "{ctx}: qemu-img check {} reports corruption (snapshot operation in flight: \
         {snapshot_op_in_flight}): {} harmless COPIED-flag disagreements, errors: {:#?}",
        path.display(),
        c.harmless_copied_flag,
        c.other
    );
}

/// `qemu-img info --output=json` (with `-U` when `force_share`).
pub fn info(path: &Path, force_share: bool) -> serde_json::Value {
    let mut c = qemu_img(["info", "--output=json"]);
    if force_share {
        c.arg("-U");
    }
    let out = run(c.arg(path));
    serde_json::from_slice(&out.stdout).expect("qemu-img info JSON")
}

/// Snapshot names as qemu sees them, in table order.
pub fn snapshot_names(path: &Path) -> Vec<String> {
    let v = info(path, false);
    v.get("snapshots")
        .and_then(|s| s.as_array())
        .map(|a| {
            a.iter()
                .map(|s| s["name"].as_str().expect("snapshot name").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The raw guest contents qemu reads: the active layer, or snapshot `snap`.
pub fn convert_to_raw(path: &Path, snap: Option<&str>, out: &Path) -> Vec<u8> {
    let mut c = qemu_img(["convert", "-f", "qcow2", "-O", "raw"]);
    if let Some(s) = snap {
        c.arg("-l").arg(format!("snapshot.name={s}"));
    }
    run(c.arg(path).arg(out));
    std::fs::read(out).expect("read converted raw")
}

/// How qemu maps each guest cluster of the active layer (`qemu-img map`):
/// `Some(true)` data, `Some(false)` zero flag, `None` unallocated.
pub fn map_clusters(path: &Path, cluster: u64) -> Vec<Option<bool>> {
    let out = run(qemu_img(["map", "--output=json", "-f", "qcow2"]).arg(path));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("qemu-img map JSON");
    let mut clusters = Vec::new();
    for e in v.as_array().expect("map is a list") {
        let len = e["length"].as_u64().unwrap();
        let kind = match (e["present"] == true, e["data"] == true) {
            (_, true) => Some(true),
            (true, false) => Some(false),
            (false, false) => None,
        };
        clusters.extend(std::iter::repeat_n(kind, len.div_ceil(cluster) as usize));
    }
    clusters
}

/// `qemu-img compare` of a qcow2 against a raw file: true when identical.
pub fn compare_with_raw(qcow2: &Path, raw: &Path) -> bool {
    let out = output_unlocked(
        qemu_img(["compare", "-f", "qcow2", "-F", "raw"])
            .arg(qcow2)
            .arg(raw),
    );
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "qemu-img compare failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A child process killed when the test ends, whatever the outcome.
pub struct Guard(pub Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An interactive qemu-io holding the image until dropped. It is ready once it has
/// answered a read: probing with another qemu process instead would race with its open.
pub fn qemu_io_holding(path: &Path, read_only: bool) -> Guard {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    if read_only {
        c.arg("-r");
    }
    let mut child = c
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"read 0 512\n")
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("read 512/512") {
        let mut line = String::new();
        let n = out.read_line(&mut line).unwrap();
        assert!(
            n > 0,
            "qemu-io exited before opening {}: {seen}",
            path.display()
        );
        seen.push_str(&line);
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Guard(child)
}

/// qemu-storage-daemon with QMP and NBD: a running VM for live-backup tests.
pub mod live;

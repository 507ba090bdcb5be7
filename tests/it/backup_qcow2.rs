//! qcow2 backup through the `island` binary, with qemu-img/qemu-io as the oracle: images
//! are made and written by qemu, Island backs them up into a local directory repository,
//! and every restore is compared with what qemu reads and with a raw model that received
//! the same writes.

mod fallback;
mod restore_qcow2;

pub(crate) use crate::common::cli::{island, ok, ok_json};
use crate::common::qemu::{self, convert_to_raw, snapshot_names};
use crate::common::{assert_same, pseudo_random};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const CLUSTER: u64 = 64 << 10;

/// Runs `island ARGS`, requires a failure exit code and returns stderr.
#[track_caller]
pub(crate) fn fails(args: &[&str]) -> String {
    let out = island(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "island {args:?}: expected exit 1\nstdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

#[track_caller]
pub(crate) fn u64_field(v: &Value, name: &str) -> u64 {
    v.get(name)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("field {name} missing or not an unsigned integer in {v}"))
}

#[track_caller]
pub(crate) fn str_field(v: &Value, name: &str) -> String {
    v.get(name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("field {name} missing or not a string in {v}"))
        .to_owned()
}

/// BLAKE3 of a whole file, to prove an image was not written.
pub(crate) fn file_hash(path: &Path) -> String {
    blake3::hash(&std::fs::read(path).expect("read file for hashing"))
        .to_hex()
        .to_string()
}

/// One test's world: a directory, a repository in it and a qcow2 image made by qemu-img,
/// plus the raw model of the image's guest contents.
pub(crate) struct World {
    pub dir: tempfile::TempDir,
    pub repo: String,
    pub img: PathBuf,
    pub model: Vec<u8>,
    writes: u64,
}

impl World {
    /// `qemu-img create -f qcow2 -o cluster_size=CS IMG SIZE` and `island init REPO`.
    pub fn new(size: u64, cluster_size: u64) -> World {
        let dir = crate::common::tempdir();
        let img = dir.path().join("disk.qcow2");
        qemu::run(qemu::qemu_img(["create", "-q", "-f", "qcow2", "-o"]).args([
            format!("cluster_size={cluster_size}"),
            img.display().to_string(),
            size.to_string(),
        ]));
        let repo = dir.path().join("repo").display().to_string();
        ok(&["init", &repo]);
        World {
            dir,
            repo,
            img,
            model: vec![0; size as usize],
            writes: 0,
        }
    }

    /// Guest writes of pseudo-random data with qemu-io (one run for all), mirrored in the
    /// model. Each write gets fresh data, so a misplaced or stale cluster shows up.
    pub fn write(&mut self, writes: &[(u64, u64)]) {
        self.write_to(&self.img.clone(), writes);
    }

    /// Like [`World::write`] on another image; the model follows `img`.
    pub fn write_to(&mut self, img: &Path, writes: &[(u64, u64)]) {
        let mut cmds = Vec::new();
        for &(off, len) in writes {
            self.writes += 1;
            let data = pseudo_random(self.writes * 7919 + off, len as usize);
            let src = self.dir.path().join(format!("w{}.bin", self.writes));
            std::fs::write(&src, &data).expect("write a data file");
            self.model[off as usize..(off + len) as usize].copy_from_slice(&data);
            cmds.push(format!("write -q -s {} {off} {len}", src.display()));
        }
        let out = qemu::run(&mut qemu::qemu_io(img, &cmds));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("failed"), "qemu-io: {text}");
    }

    /// `island backup --json` of `img` into `volume` (extra flags appended).
    pub fn backup_of(&self, img: &Path, volume: &str, extra: &[&str]) -> Value {
        let img = img.display().to_string();
        let mut args = vec![
            "backup", "--repo", &self.repo, "--volume", volume, &img, "--json",
        ];
        args.extend_from_slice(extra);
        ok_json(&args)
    }

    pub fn backup(&self, volume: &str) -> Value {
        self.backup_of(&self.img, volume, &[])
    }

    /// `island restore` to a new raw file; returns its bytes.
    pub fn restore_raw(&self, volume: &str, id: &str) -> Vec<u8> {
        let out = self.dir.path().join(format!("restore-{volume}-{id}.raw"));
        let out_s = out.display().to_string();
        ok(&[
            "restore",
            "--repo",
            &self.repo,
            "--volume",
            volume,
            "--snapshot",
            id,
            &out_s,
        ]);
        let bytes = std::fs::read(&out).expect("read restored file");
        std::fs::remove_file(&out).expect("remove restored file");
        bytes
    }

    /// Names of the image's `island-*` snapshots, as qemu lists them.
    pub fn island_snapshots(&self, img: &Path) -> Vec<String> {
        snapshot_names(img)
            .into_iter()
            .filter(|n| n.starts_with("island-"))
            .collect()
    }

    /// What qemu reads from the image's active layer.
    pub fn qemu_view(&self, img: &Path) -> Vec<u8> {
        convert_to_raw(img, None, &self.dir.path().join("qemu-view.raw"))
    }
}

/// Bytes of the image's active layer that qemu maps to data clusters.
pub(crate) fn allocated_bytes(img: &Path, cluster: u64) -> u64 {
    qemu::map_clusters(img, cluster)
        .iter()
        .filter(|c| **c == Some(true))
        .count() as u64
        * cluster
}

/// `count` distinct cluster-aligned offsets below `limit`, spread over the volume.
pub(crate) fn scattered(seed: u64, count: usize, limit: u64) -> Vec<u64> {
    use rand::seq::SliceRandom;
    let mut all: Vec<u64> = (0..limit / CLUSTER).map(|c| c * CLUSTER).collect();
    all.shuffle(&mut crate::common::rng(seed));
    all.truncate(count);
    all.sort_unstable();
    all
}

/// First backup: Island takes `island-<id>` (and only that), leaves the user's own
/// snapshots alone, reads only allocated clusters, and the restore equals what qemu
/// reads. A second backup replaces the `island-*` snapshot.
#[test]
fn first_backup_takes_island_snapshot_and_restores_what_qemu_reads() {
    let mut w = World::new(64 * MIB, CLUSTER);
    w.write(&[(0, 4 * MIB), (10 * MIB + 4096, 70_000), (63 * MIB, MIB)]);
    qemu::run(qemu::qemu_img(["snapshot", "-c", "user-before"]).arg(&w.img));
    let before_model = w.model.clone();
    let r1 = w.backup("vm");
    let id1 = str_field(&r1, "id");
    assert_eq!(w.island_snapshots(&w.img), vec![format!("island-{id1}")]);
    assert!(snapshot_names(&w.img).contains(&"user-before".to_string()));
    // Only the clusters qemu allocated were read: 4 MiB + 2 clusters + 1 MiB.
    assert_eq!(
        u64_field(&r1, "bytes_read"),
        allocated_bytes(&w.img, CLUSTER)
    );
    assert_eq!(u64_field(&r1, "bytes_read"), 4 * MIB + 2 * CLUSTER + MIB);
    let qemu_view = w.qemu_view(&w.img);
    assert_same("qemu's view vs model", &qemu_view, &w.model);
    assert_same(
        "restore of backup 1",
        &w.restore_raw("vm", &id1),
        &qemu_view,
    );

    w.write(&[(20 * MIB, CLUSTER)]);
    qemu::run(qemu::qemu_img(["snapshot", "-c", "user-after"]).arg(&w.img));
    let r2 = w.backup("vm");
    let id2 = str_field(&r2, "id");
    assert_ne!(id1, id2);
    assert_eq!(r2["incremental"], true, "{r2}");
    assert_eq!(w.island_snapshots(&w.img), vec![format!("island-{id2}")]);
    let names = snapshot_names(&w.img);
    assert!(
        names.contains(&"user-before".to_string()) && names.contains(&"user-after".to_string())
    );
    qemu::assert_check_clean(&w.img);
    assert_same("restore of backup 2", &w.restore_raw("vm", &id2), &w.model);
    assert_same(
        "restore of backup 1 again",
        &w.restore_raw("vm", &id1),
        &before_model,
    );
    // The user's snapshot still reads as it was.
    let user = convert_to_raw(&w.img, Some("user-before"), &w.dir.path().join("u.raw"));
    assert_same("user snapshot", &user, &before_model);
}

/// Issue 13 defect 4: a user's snapshot named `island-mine` was deleted by the next
/// backup because its name starts with Island's prefix. Island deletes only snapshots it
/// can prove it made (here the base its first backup recorded); `island-mine` stays, and
/// still reads as it was.
#[test]
fn user_snapshot_with_island_prefix_is_kept() {
    let mut w = World::new(16 * MIB, CLUSTER);
    w.write(&[(0, 2 * MIB)]);
    qemu::run(qemu::qemu_img(["snapshot", "-c", "island-mine"]).arg(&w.img));
    let mine = w.model.clone();
    let r1 = w.backup("vm");
    w.write(&[(MIB, CLUSTER)]);
    let r2 = w.backup("vm");
    let names = snapshot_names(&w.img);
    assert!(names.contains(&"island-mine".to_string()), "{names:?}");
    let base1 = format!("island-{}", str_field(&r1, "id"));
    assert!(
        !names.contains(&base1),
        "the replaced base stayed: {names:?}"
    );
    assert!(names.contains(&format!("island-{}", str_field(&r2, "id"))));
    let got = convert_to_raw(&w.img, Some("island-mine"), &w.dir.path().join("m.raw"));
    assert_same("island-mine", &got, &mine);
    qemu::assert_check_clean(&w.img);
}

/// After N scattered cluster writes, an incremental backup reads exactly those N
/// clusters and uploads about that much (fresh random data, so nothing compresses or
/// deduplicates); every snapshot, old and new, restores bit-exact.
#[test]
fn incremental_backup_costs_what_changed_and_every_snapshot_restores() {
    let size = 64 * MIB;
    let mut w = World::new(size, CLUSTER);
    w.write(&[(0, 32 * MIB)]);
    let r = w.backup("vm");
    let mut snaps = vec![(str_field(&r, "id"), w.model.clone())];
    assert_eq!(u64_field(&r, "bytes_read"), 32 * MIB);
    for (round, n) in [(1u64, 16usize), (2, 40), (3, 1)] {
        let offsets = scattered(round, n, size);
        let writes: Vec<(u64, u64)> = offsets.iter().map(|&o| (o, CLUSTER)).collect();
        w.write(&writes);
        let r = w.backup("vm");
        eprintln!("round {round}, {n} clusters written: {r}");
        let changed = n as u64 * CLUSTER;
        assert_eq!(r["incremental"], true, "round {round}: {r}");
        assert_eq!(
            u64_field(&r, "bytes_read"),
            changed,
            "round {round}: read exactly the {n} changed clusters: {r}"
        );
        assert_eq!(u64_field(&r, "chunks_new"), n as u64, "round {round}: {r}");
        let uploaded = u64_field(&r, "bytes_uploaded");
        // Data (incompressible) plus metadata: the one rewritten leaf table of this
        // 1024-chunk volume (32 KiB of ids), index and refs segments, manifest.
        assert!(
            uploaded >= changed && uploaded <= changed + 80 * 1024,
            "round {round}: uploaded {uploaded} for {changed} changed bytes: {r}"
        );
        snaps.push((str_field(&r, "id"), w.model.clone()));
        assert_eq!(w.island_snapshots(&w.img).len(), 1);
    }
    for (i, (id, model)) in snaps.iter().enumerate() {
        assert_same(
            &format!("snapshot {i} ({id})"),
            &w.restore_raw("vm", id),
            model,
        );
    }
    qemu::assert_check_clean(&w.img);
}

/// `--image-snapshot` reads an existing snapshot with a shared read-only open: the image
/// file is bit-for-bit unchanged, qemu-img check stays clean, and the restore equals the
/// snapshot as qemu reads it (not the active layer, which moved on).
#[test]
fn image_snapshot_backup_writes_nothing_to_the_image() {
    let mut w = World::new(32 * MIB, CLUSTER);
    w.write(&[(0, 2 * MIB), (17 * MIB, 3 * CLUSTER)]);
    qemu::run(qemu::qemu_img(["snapshot", "-c", "nightly"]).arg(&w.img));
    let at_snapshot = w.model.clone();
    w.write(&[(MIB, MIB)]);
    let hash = file_hash(&w.img);
    let r = w.backup_of(&w.img, "vm", &["--image-snapshot", "nightly"]);
    assert_eq!(file_hash(&w.img), hash, "the image file changed");
    qemu::assert_check_clean(&w.img);
    assert_eq!(snapshot_names(&w.img), vec!["nightly".to_string()]);
    let qemu_snap = convert_to_raw(&w.img, Some("nightly"), &w.dir.path().join("n.raw"));
    assert_same("qemu's snapshot vs model", &qemu_snap, &at_snapshot);
    let id = str_field(&r, "id");
    assert_same("restore", &w.restore_raw("vm", &id), &at_snapshot);

    let img_s = w.img.display().to_string();
    let err = fails(&[
        "backup",
        "--repo",
        &w.repo,
        "--volume",
        "vm",
        &img_s,
        "--image-snapshot",
        "nope",
    ]);
    assert!(err.contains("nope") && err.contains("snapshot"), "{err}");
    assert_eq!(file_hash(&w.img), hash, "a failed backup changed the image");
}

/// Bytes of non-zero 64 KiB chunks of `model` inside the image clusters (of `cluster`
/// bytes) that `writes` touched: what `bytes_read` counts for an increment (all-zero
/// chunks are detected and not counted, see the README).
fn nonzero_in_touched(model: &[u8], cluster: u64, writes: &[(u64, u64)]) -> u64 {
    let unit = cluster.max(CLUSTER);
    let mut chunks = std::collections::BTreeSet::new();
    for &(off, len) in writes {
        let (a, b) = (off / unit * unit, (off + len).div_ceil(unit) * unit);
        chunks.extend((a / CLUSTER)..(b / CLUSTER));
    }
    chunks
        .into_iter()
        .filter(|c| {
            let s = (c * CLUSTER) as usize;
            model[s..s + CLUSTER as usize].iter().any(|b| *b != 0)
        })
        .count() as u64
        * CLUSTER
}

/// Images whose cluster size differs from the repository's 64 KiB chunks still back up
/// incrementally and restore bit-exact. A small write costs one chunk with 4 KiB
/// clusters, and the whole (non-zero part of the) 2 MiB cluster around it with 2 MiB
/// clusters: changed blocks are known only at cluster granularity.
#[test]
fn other_cluster_sizes_back_up_and_restore_exactly() {
    for (cluster, expect) in [(4096u64, 2 * CLUSTER), (2 * MIB, 18 * CLUSTER)] {
        let mut w = World::new(48 * MIB, cluster);
        w.write(&[(0, 5 * MIB + 4096), (30 * MIB, 12_288)]);
        let r1 = w.backup("vm");
        let first = w.model.clone();
        let writes = [(40 * MIB + 8192, 4096), (4 * MIB, 4096)];
        w.write(&writes);
        let r2 = w.backup("vm");
        assert_eq!(r2["incremental"], true, "cluster {cluster}: {r2}");
        assert_eq!(nonzero_in_touched(&w.model, cluster, &writes), expect);
        assert_eq!(
            u64_field(&r2, "bytes_read"),
            expect,
            "cluster {cluster}: {r2}"
        );
        assert_eq!(u64_field(&r2, "chunks_new"), 2, "cluster {cluster}: {r2}");
        let (id1, id2) = (str_field(&r1, "id"), str_field(&r2, "id"));
        assert_same(
            &format!("cluster {cluster} backup 1"),
            &w.restore_raw("vm", &id1),
            &first,
        );
        assert_same(
            &format!("cluster {cluster} backup 2"),
            &w.restore_raw("vm", &id2),
            &w.model,
        );
        qemu::assert_check_clean(&w.img);
    }
}

//! When the image no longer holds, unchanged, the snapshot the repository's latest backup
//! of the volume was taken from, Island must not trust pointer-table differences: it
//! reads every allocated cluster (a full read), uploads only chunks the repository lacks,
//! and the restore is still exact. Each test checks all three, plus the one case that is
//! rightly incremental (a revert inside the image: the base is still there).

use super::{allocated_bytes, island, str_field, u64_field, World, CLUSTER, MIB};
use crate::common::assert_same;
use crate::common::qemu;

/// Full read of what is allocated, `new` chunks uploaded, restore equal to `model`,
/// `island_left` `island-*` snapshots left in the image.
#[track_caller]
fn assert_full_read(
    w: &World,
    img: &std::path::Path,
    r: &serde_json::Value,
    new: u64,
    model: &[u8],
    island_left: usize,
) {
    assert_eq!(r["incremental"], false, "expected a full read: {r}");
    assert_eq!(
        u64_field(r, "bytes_read"),
        allocated_bytes(img, CLUSTER),
        "{r}"
    );
    assert_eq!(
        u64_field(r, "chunks_new"),
        new,
        "only missing chunks are uploaded: {r}"
    );
    let id = str_field(r, "id");
    assert_same(
        &format!("restore of {id}"),
        &w.restore_raw("vm", &id),
        model,
    );
    assert_eq!(
        w.island_snapshots(img).len(),
        island_left,
        "island-* snapshots left: {:?}",
        w.island_snapshots(img)
    );
    qemu::assert_check_clean(img);
}

/// The user deletes the `island-*` snapshot the last backup left: no base, full read.
#[test]
fn deleted_island_snapshot_falls_back_to_full_read() {
    let mut w = World::new(32 * MIB, CLUSTER);
    w.write(&[(0, 6 * MIB)]);
    let r1 = w.backup("vm");
    let base = format!("island-{}", str_field(&r1, "id"));
    w.write(&[(MIB, CLUSTER), (20 * MIB, 2 * CLUSTER)]);
    qemu::run(qemu::qemu_img(["snapshot", "-d", &base]).arg(&w.img));
    let img = w.img.display().to_string();
    let out = island(&[
        "backup", "--repo", &w.repo, "--volume", "vm", &img, "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r2: serde_json::Value = serde_json::from_slice(&out.stdout).expect("backup JSON");
    assert_full_read(&w, &w.img.clone(), &r2, 3, &w.model, 1);
    // The progress a full read over a parent reports never passes its total.
    let status: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["type"] == "status")
        .collect();
    let last = status.last().expect("status lines on stderr");
    assert_eq!(last["done"], last["total"], "{last}");
    for s in &status {
        assert!(u64_field(s, "done") <= u64_field(s, "total"), "{s}");
    }
}

/// A copy of the image, taken before the original advanced, is backed up to the same
/// volume: the copy's `island-*` is the older base, not the repository's latest, so a
/// full read; all its chunks are already stored. Then the original is backed up again:
/// its base is not the copy's, so again a full read, uploading only its new clusters.
#[test]
fn copied_image_falls_back_to_full_read() {
    let mut w = World::new(32 * MIB, CLUSTER);
    w.write(&[(0, 4 * MIB), (16 * MIB, MIB)]);
    w.backup("vm");
    let copy = w.dir.path().join("copy.qcow2");
    std::fs::copy(&w.img, &copy).expect("copy the image");
    let copy_model = w.model.clone();
    w.write(&[(2 * MIB, 2 * CLUSTER), (30 * MIB, CLUSTER)]);
    let r2 = w.backup("vm");
    assert_eq!(r2["incremental"], true, "{r2}");

    let r3 = w.backup_of(&copy, "vm", &[]);
    assert_full_read(&w, &copy, &r3, 0, &copy_model, 1);

    w.write(&[(8 * MIB, CLUSTER)]);
    let r4 = w.backup("vm");
    assert_full_read(&w, &w.img.clone(), &r4, 1, &w.model, 1);
}

/// An unrelated image (same content converted by qemu-img, then changed) backed up
/// under the same volume name, carrying a snapshot that reuses the name of the
/// repository's base: names match, identity does not, so a full read that uploads only
/// the changed clusters. That snapshot is the user's (issue 13: Island deletes only
/// snapshots it can prove it made), so it stays.
#[test]
fn unrelated_image_with_reused_snapshot_name_falls_back() {
    let mut w = World::new(32 * MIB, CLUSTER);
    w.write(&[(0, 3 * MIB), (12 * MIB, MIB)]);
    let r1 = w.backup("vm");
    let raw = w.dir.path().join("model.raw");
    std::fs::write(&raw, &w.model).expect("write the raw model");
    let other = w.dir.path().join("other.qcow2");
    qemu::run(
        qemu::qemu_img(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&other),
    );
    let reused = format!("island-{}", str_field(&r1, "id"));
    qemu::run(qemu::qemu_img(["snapshot", "-c", &reused]).arg(&other));
    w.write_to(&other, &[(MIB, CLUSTER), (25 * MIB, 2 * CLUSTER)]);
    let r2 = w.backup_of(&other, "vm", &[]);
    assert_full_read(&w, &other, &r2, 3, &w.model, 2);
    assert!(qemu::snapshot_names(&other).contains(&reused));
}

/// `qemu-img snapshot -a` reverts the active layer to an older user snapshot while the
/// `island-*` base stays in the image, unchanged: the pointer-table difference between
/// that base and the new snapshot is exact (it is what the revert changed), so the
/// backup is rightly incremental. It reads only the clusters the revert changed back,
/// uploads no chunk (all were stored by the first backup) and restores the old state.
#[test]
fn revert_to_user_snapshot_is_an_exact_increment() {
    let mut w = World::new(32 * MIB, CLUSTER);
    w.write(&[(0, 4 * MIB)]);
    qemu::run(qemu::qemu_img(["snapshot", "-c", "golden"]).arg(&w.img));
    let golden = w.model.clone();
    let r1 = w.backup("vm");
    w.write(&[(MIB, 3 * CLUSTER), (10 * MIB, CLUSTER)]);
    let r2 = w.backup("vm");
    assert_eq!(u64_field(&r2, "bytes_read"), 4 * CLUSTER, "{r2}");
    qemu::run(qemu::qemu_img(["snapshot", "-a", "golden"]).arg(&w.img));
    w.model = golden;
    let r3 = w.backup("vm");
    assert_eq!(r3["incremental"], true, "{r3}");
    assert_eq!(
        u64_field(&r3, "bytes_read"),
        3 * CLUSTER,
        "the 10 MiB cluster became unallocated, the rest read: {r3}"
    );
    assert_eq!(u64_field(&r3, "chunks_new"), 0, "{r3}");
    let id3 = str_field(&r3, "id");
    assert_same("restore after revert", &w.restore_raw("vm", &id3), &w.model);
    assert_same(
        "first backup",
        &w.restore_raw("vm", &str_field(&r1, "id")),
        &w.model,
    );
    qemu::assert_check_clean(&w.img);
}

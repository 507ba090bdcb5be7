//! `island restore --format qcow2`: a new image that qemu-img checks clean and compares
//! equal to the model, published atomically: never over an existing file or through a
//! symlink, and no partial image (or temporary file) left when the restore fails.

use super::{fails, ok, str_field, World, CLUSTER, MIB};
use crate::common::qemu;
use std::path::Path;

/// Files in `dir` whose name marks them as an unfinished restore.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list the directory")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.contains("island-tmp"))
        .collect()
}

fn restore_args<'a>(w: &'a World, id: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "restore",
        "--repo",
        &w.repo,
        "--volume",
        "vm",
        "--snapshot",
        id,
        out,
        "--format",
        "qcow2",
    ]
}

#[test]
fn qcow2_restore_checks_clean_and_equals_the_model() {
    let mut w = World::new(24 * MIB, CLUSTER);
    w.write(&[
        (0, 3 * MIB),
        (9 * MIB + 512, 100_000),
        (24 * MIB - CLUSTER, CLUSTER),
    ]);
    let id = str_field(&w.backup("vm"), "id");
    let raw = w.dir.path().join("model.raw");
    std::fs::write(&raw, &w.model).expect("write the model");
    for cluster in ["65536", "4096", "2097152"] {
        let out = w.dir.path().join(format!("restored-{cluster}.qcow2"));
        let out_s = out.display().to_string();
        let mut args = restore_args(&w, &id, &out_s);
        args.extend(["--cluster-size", cluster]);
        ok(&args);
        qemu::assert_check_clean(&out);
        assert!(
            qemu::compare_with_raw(&out, &raw),
            "cluster {cluster}: qemu-img compare differs"
        );
        let info = qemu::info(&out, false);
        assert_eq!(
            info["cluster-size"].as_u64(),
            Some(cluster.parse().unwrap())
        );
    }
    assert!(
        temp_files(w.dir.path()).is_empty(),
        "{:?}",
        temp_files(w.dir.path())
    );
}

#[test]
fn qcow2_restore_refuses_existing_files_and_symlinks() {
    let mut w = World::new(8 * MIB, CLUSTER);
    w.write(&[(0, MIB)]);
    let id = str_field(&w.backup("vm"), "id");

    let existing = w.dir.path().join("existing.qcow2");
    std::fs::write(&existing, b"precious").expect("write a file");
    let existing_s = existing.display().to_string();
    let err = fails(&restore_args(&w, &id, &existing_s));
    assert!(err.contains("exists"), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious");

    let target = w.dir.path().join("elsewhere.qcow2");
    let link = w.dir.path().join("link.qcow2");
    std::os::unix::fs::symlink(&target, &link).expect("make a dangling symlink");
    let link_s = link.display().to_string();
    let err = fails(&restore_args(&w, &id, &link_s));
    assert!(err.contains("symlink") || err.contains("exists"), "{err}");
    assert!(!target.exists(), "the restore wrote through a symlink");
    assert!(temp_files(w.dir.path()).is_empty());
}

/// A repository missing its packs: the restore fails part way (after creating the
/// image) and leaves neither OUT nor a temporary file.
#[test]
fn failed_qcow2_restore_leaves_no_partial_file() {
    let mut w = World::new(8 * MIB, CLUSTER);
    w.write(&[(0, 2 * MIB)]);
    let id = str_field(&w.backup("vm"), "id");
    let packs = Path::new(&w.repo).join("packs");
    std::fs::remove_dir_all(&packs).expect("remove the packs");
    let out = w.dir.path().join("partial.qcow2");
    let out_s = out.display().to_string();
    let err = fails(&restore_args(&w, &id, &out_s));
    assert!(!err.is_empty());
    assert!(!out.exists(), "a failed restore left {}", out.display());
    assert!(
        temp_files(w.dir.path()).is_empty(),
        "{:?}",
        temp_files(w.dir.path())
    );
}

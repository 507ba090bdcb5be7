//! The `island image` command line, run as the built binary: outputs, JSON shapes, files
//! it produces (checked with qemu-img) and exit codes (1 = failure, 2 = usage).

use crate::common::qemu::{
    assert_check_clean, convert_to_raw, info, qemu_img, run, snapshot_names,
};
use crate::common::{random_bytes, rng, tempdir};
use std::process::{Command, Output};

fn island(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_island"));
    for a in args {
        c.arg(a);
    }
    c.output().expect("run island")
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "island failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[track_caller]
fn fails(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    assert!(
        err.contains(needle),
        "stderr should mention {needle:?}: {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn create_info_write_snapshot_changed_export() {
    let dir = tempdir();
    let d = dir.path();
    let img = d.join("cli.qcow2");
    ok(island(&[
        &"image",
        &"create",
        &img,
        &"16M",
        &"--cluster-size",
        &"4096",
    ]));
    let q = info(&img, false);
    assert_eq!(
        (q["virtual-size"].as_u64(), q["cluster-size"].as_u64()),
        (Some(16 << 20), Some(4096))
    );

    let i = json(&ok(island(&[&"image", &"info", &img, &"--json"])));
    assert_eq!(i["size"], 16 << 20);
    assert_eq!(i["cluster_size"], 4096);
    assert_eq!(i["version"], 3);
    assert_eq!(i["snapshots"], 0);
    let human = ok(island(&[&"image", &"info", &img]));
    assert!(
        human.contains("16777216") || human.contains("16 MiB"),
        "human info: {human}"
    );

    let mut r = rng(1);
    let a = random_bytes(&mut r, 10_000);
    let input = d.join("a.bin");
    std::fs::write(&input, &a).unwrap();
    ok(island(&[&"image", &"write", &img, &"12345", &input]));
    ok(island(&[&"image", &"snapshot", &"create", &img, &"s1"]));
    assert_eq!(snapshot_names(&img), vec!["s1"]);

    let b = random_bytes(&mut r, 5000);
    std::fs::write(&input, &b).unwrap();
    ok(island(&[&"image", &"write", &img, &"1048576", &input]));
    let list = json(&ok(island(&[
        &"image",
        &"snapshot",
        &"list",
        &img,
        &"--json",
    ])));
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["name"], "s1");
    assert!(ok(island(&[&"image", &"snapshot", &"list", &img])).contains("s1"));

    let changed = json(&ok(island(&[
        &"image", &"changed", &img, &"--since", &"s1", &"--json",
    ])));
    assert_eq!(
        changed,
        serde_json::json!([{"offset": 1048576, "length": 8192, "zero": false}])
    );

    let mut s1 = vec![0u8; 16 << 20];
    s1[12345..22345].copy_from_slice(&a);
    let mut active = s1.clone();
    active[1 << 20..(1 << 20) + 5000].copy_from_slice(&b);
    let out = d.join("s1.raw");
    ok(island(&[
        &"image",
        &"export",
        &img,
        &out,
        &"--snapshot",
        &"s1",
    ]));
    assert!(std::fs::read(&out).unwrap() == s1, "export of s1");
    let out2 = d.join("active.raw");
    ok(island(&[&"image", &"export", &img, &out2]));
    assert!(
        std::fs::read(&out2).unwrap() == active,
        "export of the active layer"
    );
    use std::os::unix::fs::MetadataExt;
    assert!(
        std::fs::metadata(&out2).unwrap().blocks() * 512 < 1 << 20,
        "export is sparse"
    );

    ok(island(&[&"image", &"snapshot", &"create", &img, &"s2"]));
    let between = json(&ok(island(&[
        &"image", &"changed", &img, &"--since", &"s1", &"--to", &"s2", &"--json",
    ])));
    assert_eq!(between, changed);
    ok(island(&[&"image", &"snapshot", &"revert", &img, &"s1"]));
    assert_eq!(convert_to_raw(&img, None, &d.join("r.raw")), s1);
    ok(island(&[&"image", &"snapshot", &"delete", &img, &"s1"]));
    assert_eq!(snapshot_names(&img), vec!["s2"]);
    assert_check_clean(&img);
}

#[test]
fn import_leaves_zeros_unallocated() {
    let dir = tempdir();
    let d = dir.path();
    let raw = d.join("in.raw");
    let mut data = vec![0u8; 8 << 20];
    let mut r = rng(2);
    let chunk = random_bytes(&mut r, 65536 * 3);
    data[65536..65536 * 4].copy_from_slice(&chunk);
    data[(5 << 20) + 7] = 1;
    std::fs::write(&raw, &data).unwrap();
    let img = d.join("imp.qcow2");
    ok(island(&[
        &"image",
        &"import",
        &raw,
        &img,
        &"--cluster-size",
        &"65536",
    ]));
    assert_check_clean(&img);
    let same = crate::common::qemu::compare_with_raw(&img, &raw);
    assert!(same, "import differs from its source");
    let map = run(qemu_img(["map", "--output=json", "-f", "qcow2"]).arg(&img));
    let extents = json(&String::from_utf8_lossy(&map.stdout));
    let data_bytes: u64 = extents
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(data_bytes, 4 * 65536);
}

#[test]
fn sizes_accept_binary_suffixes() {
    let dir = tempdir();
    for (arg, bytes) in [
        ("1G", 1u64 << 30),
        ("512K", 512 << 10),
        ("2T", 2 << 40),
        ("3145728", 3 << 20),
    ] {
        let img = dir.path().join(format!("{arg}.qcow2"));
        ok(island(&[&"image", &"create", &img, &arg]));
        assert_eq!(
            info(&img, false)["virtual-size"].as_u64(),
            Some(bytes),
            "{arg}"
        );
    }
}

#[test]
fn errors_have_exit_codes_and_messages() {
    let dir = tempdir();
    let d = dir.path();
    let missing = d.join("missing.qcow2");
    fails(&island(&[&"image", &"info", &missing]), 1, "missing.qcow2");
    fails(
        &island(&[&"image", &"create", &d.join("x.qcow2"), &"12Q"]),
        2,
        "12Q",
    );
    fails(&island(&[&"image", &"bogus"]), 2, "bogus");
    fails(&island(&[&"image", &"create"]), 2, "");

    let img = d.join("e.qcow2");
    ok(island(&[&"image", &"create", &img, &"1M"]));
    fails(
        &island(&[&"image", &"snapshot", &"delete", &img, &"nope"]),
        1,
        "nope",
    );
    fails(
        &island(&[&"image", &"changed", &img, &"--since", &"nope"]),
        1,
        "nope",
    );
    ok(island(&[&"image", &"snapshot", &"create", &img, &"a"]));
    fails(
        &island(&[&"image", &"snapshot", &"create", &img, &"a"]),
        1,
        "a",
    );
    let input = d.join("big.bin");
    std::fs::write(&input, vec![1u8; 4096]).unwrap();
    fails(
        &island(&[&"image", &"write", &img, &"1048000", &input]),
        1,
        "e.qcow2",
    );
    fails(
        &island(&[&"image", &"write", &img, &"0", &d.join("no-input")]),
        1,
        "no-input",
    );

    let garbage = d.join("garbage.qcow2");
    std::fs::write(&garbage, vec![0x5a; 1000]).unwrap();
    fails(&island(&[&"image", &"info", &garbage]), 1, "garbage.qcow2");
    assert_check_clean(&img);
}

#[test]
fn island_write_refuses_image_held_by_qemu() {
    let dir = tempdir();
    let img = dir.path().join("held.qcow2");
    run(qemu_img(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("1M"));
    let holder = crate::common::qemu::qemu_io_holding(&img, false);
    let input = dir.path().join("in.bin");
    std::fs::write(&input, [1u8; 10]).unwrap();
    let out = island(&[&"image", &"write", &img, &"0", &input]);
    drop(holder);
    fails(&out, 1, "held.qcow2");
}

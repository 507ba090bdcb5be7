//! The reverse direction: images, snapshots and contents made by qemu-img/qemu-io are read
//! back by Island exactly, Island writes into them cleanly, and every feature Island does
//! not implement is refused instead of misread.

use crate::common::qemu::{
    assert_check_clean, assert_check_no_corruption, output, qemu_img, qemu_io, run,
};
use crate::common::{assert_same, read_active, read_snapshot, rng, seeds, tempdir};
use crate::image_qemu::{run_random_ops, verify_with_qemu, Model};
use island::image::{Image, ImageError, OpenMode};
use rand::rngs::StdRng;
use rand::Rng;
use std::path::Path;

/// Builds a qemu image with `create_opts`, then runs batches of random qemu-io writes,
/// zero-writes and discards with a `qemu-img snapshot -c` after each batch but the last.
/// Returns the model of what qemu wrote.
fn qemu_made_image(
    path: &Path,
    size: u64,
    create_opts: &str,
    r: &mut StdRng,
    batches: usize,
) -> Model {
    // A 1-bit refcount cannot count a second reference: such images have no snapshots.
    let batches =
        if create_opts.contains("refcount_bits=1,") || create_opts.ends_with("refcount_bits=1") {
            1
        } else {
            batches
        };
    run(qemu_img(["create", "-q", "-f", "qcow2", "-o", create_opts])
        .arg(path)
        .arg(size.to_string()));
    let cluster = info_cluster(path);
    let mut active = vec![0u8; size as usize];
    let mut snaps = Vec::new();
    for b in 0..batches {
        let mut cmds = Vec::new();
        for _ in 0..r.random_range(5..25) {
            let (off, len) = crate::image_qemu::random_range(r, size, cluster);
            let range = off as usize..(off + len) as usize;
            match r.random_range(0..10) {
                0..=6 => {
                    let p: u8 = r.random_range(1..=255);
                    cmds.push(format!("write -q -P 0x{p:02x} {off} {len}"));
                    active[range].fill(p);
                }
                7 | 8 => {
                    cmds.push(format!("write -q -z {off} {len}"));
                    active[range].fill(0);
                }
                _ => {
                    // qcow2 only discards whole clusters; a partial one keeps its data.
                    let start = off.div_ceil(cluster) * cluster;
                    let end = ((off + len) / cluster * cluster).max(start);
                    if end > start {
                        cmds.push(format!("discard -q {start} {}", end - start));
                        active[start as usize..end as usize].fill(0);
                    }
                }
            }
        }
        run(&mut qemu_io(path, &cmds));
        if b + 1 < batches {
            let name = format!("q{b}");
            run(qemu_img(["snapshot", "-c", &name]).arg(path));
            snaps.push((name, active.clone()));
        }
    }
    Model::with(active, snaps)
}

fn one_bit_refcounts(create_opts: &str) -> bool {
    create_opts.split(',').any(|o| o == "refcount_bits=1")
}

fn info_cluster(path: &Path) -> u64 {
    crate::common::qemu::info(path, false)["cluster-size"]
        .as_u64()
        .expect("cluster-size")
}

/// Island's reads of the active layer and of every snapshot equal what qemu wrote, and
/// changed_ranges between consecutive views covers every cluster whose content differs.
fn assert_island_reads(path: &Path, model: &Model) {
    let img = Image::open(path, OpenMode::ReadOnly)
        .unwrap_or_else(|e| panic!("Island refused qemu's image {}: {e}", path.display()));
    assert_same("active layer", &read_active(&img), &model.active);
    let names: Vec<String> = img.snapshots().into_iter().map(|s| s.name).collect();
    let want: Vec<String> = model.snaps.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, want);
    let cluster = u64::from(img.cluster_size());
    for (i, (name, data)) in model.snaps.iter().enumerate() {
        assert_same(
            &format!("snapshot {name}"),
            &read_snapshot(&img, name, data.len() as u64),
            data,
        );
        let (to_name, to_data) = match model.snaps.get(i + 1) {
            Some((n, d)) => (Some(n.as_str()), d),
            None => (None, &model.active),
        };
        let changed = img.changed_ranges(name, to_name).expect("changed_ranges");
        crate::image_model::assert_covers_diff(&changed, data, to_data, cluster);
    }
    img.close().unwrap();
}

const VARIANTS: &[&str] = &[
    "cluster_size=65536",
    "cluster_size=4096,refcount_bits=1",
    "cluster_size=4096,refcount_bits=64",
    "cluster_size=16384,refcount_bits=8",
    "cluster_size=2M,refcount_bits=32",
    "cluster_size=65536,lazy_refcounts=on",
];

#[test]
fn qemu_images_read_back_exactly() {
    for (v, opts) in VARIANTS.iter().enumerate() {
        for seed in seeds(7 + v as u64 * 100, 2) {
            eprintln!("variant {opts}, seed {seed}");
            let dir = tempdir();
            let path = dir.path().join("q.qcow2");
            let size = if opts.contains("2M") {
                32 << 20
            } else {
                8 << 20
            };
            let model = qemu_made_image(&path, size, opts, &mut rng(seed), 4);
            assert_island_reads(&path, &model);
        }
    }
}

/// Island writes into qemu's images (with qemu's snapshots in them); qemu must still find
/// them clean and identical to the model. Images whose refcount width Island does not
/// write must be refused as Unsupported before anything is changed.
#[test]
fn island_writes_into_qemu_images() {
    for (v, opts) in VARIANTS.iter().enumerate() {
        let seed = seeds(31 + v as u64, 1)[0];
        eprintln!("variant {opts}, seed {seed}");
        let dir = tempdir();
        let path = dir.path().join("q.qcow2");
        let size = if opts.contains("2M") {
            32 << 20
        } else {
            8 << 20
        };
        let mut r = rng(seed);
        let mut model = qemu_made_image(&path, size, opts, &mut r, 3);
        let before = std::fs::read(&path).unwrap();
        let img = match Image::open(&path, OpenMode::ReadWrite) {
            Ok(img) => img,
            Err(ImageError::Unsupported { feature, .. }) if opts.contains("refcount_bits") => {
                assert!(
                    feature.contains("refcount"),
                    "{opts}: refused for {feature}"
                );
                assert!(
                    std::fs::read(&path).unwrap() == before,
                    "refused open changed the file"
                );
                continue;
            }
            Err(e) => panic!("{opts}: read-write open failed: {e}"),
        };
        model.snapshots_allowed = !one_bit_refcounts(opts);
        run_random_ops(&img, &mut model, &mut r, 150);
        img.close().unwrap();
        verify_with_qemu(dir.path(), &path, &model);
    }
}

#[test]
fn compressed_image_is_read_or_refused_clearly() {
    let dir = tempdir();
    let raw = dir.path().join("src.raw");
    let mut r = rng(5);
    let mut data = vec![0u8; 4 << 20];
    for chunk in data.chunks_mut(65536).step_by(3) {
        chunk.fill(r.random_range(1..=255)); // compressible clusters
    }
    std::fs::write(&raw, &data).unwrap();
    let path = dir.path().join("c.qcow2");
    run(
        qemu_img(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&path),
    );
    let result = Image::open(&path, OpenMode::ReadOnly).and_then(|img| {
        let mut buf = vec![0u8; data.len()];
        img.read_at(&mut buf, 0).map(|()| buf)
    });
    match result {
        Ok(buf) => assert_same("compressed image read", &buf, &data),
        Err(ImageError::Unsupported { feature, .. }) => {
            assert!(
                feature.to_lowercase().contains("compress"),
                "feature named: {feature}"
            )
        }
        Err(e) => panic!("compressed image: neither read nor refused as Unsupported: {e}"),
    }
}

fn assert_unsupported(path: &Path, what: &str, needle: &str) {
    let before = std::fs::read(path).unwrap();
    for mode in [
        OpenMode::ReadOnly,
        OpenMode::ReadOnlyShared,
        OpenMode::ReadWrite,
    ] {
        match Image::open(path, mode) {
            Err(ImageError::Unsupported { feature, .. }) => {
                assert!(
                    feature.to_lowercase().contains(needle),
                    "{what}: Unsupported names {feature:?}, expected it to mention {needle:?}"
                );
            }
            Err(e) => panic!("{what}: wrong error {e:?}"),
            Ok(_) => panic!("{what}: opened an image Island cannot read correctly"),
        }
    }
    let msg = Image::open(path, OpenMode::ReadOnly)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "{what}: message names the path: {msg}"
    );
    assert!(
        std::fs::read(path).unwrap() == before,
        "{what}: refusing changed the file"
    );
}

#[test]
fn unsupported_features_are_refused() {
    let dir = tempdir();
    let d = dir.path();
    let create = |name: &str, extra: &[&str]| {
        let p = d.join(name);
        run(qemu_img(["create", "-q", "-f", "qcow2"])
            .args(extra)
            .arg(&p)
            .arg("4M"));
        run(&mut qemu_io(&p, &["write -q -P 0x5a 0 64k".into()]));
        p
    };
    let luks = d.join("luks.qcow2");
    run(qemu_img([
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=sec0,data=hunter2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0",
    ])
    .arg(&luks)
    .arg("4M"));
    assert_unsupported(&luks, "LUKS encryption", "encrypt");

    let data_file = d.join("external.raw");
    let df = create(
        "datafile.qcow2",
        &["-o", &format!("data_file={}", data_file.display())],
    );
    assert_unsupported(&df, "external data file", "data");

    let el2 = create("el2.qcow2", &["-o", "extended_l2=on"]);
    assert_unsupported(&el2, "extended L2", "extended");

    let base = create("base.qcow2", &[]);
    let overlay = d.join("overlay.qcow2");
    run(
        qemu_img(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&overlay),
    );
    assert_unsupported(&overlay, "backing file", "backing");

    let v2 = create("v2.qcow2", &["-o", "compat=0.10"]);
    assert_unsupported(&v2, "qcow2 version 2", "version");

    let zstd = d.join("zstd.qcow2");
    let made = output(
        qemu_img(["create", "-q", "-f", "qcow2", "-o", "compression_type=zstd"])
            .arg(&zstd)
            .arg("4M"),
    );
    if made.status.success() {
        assert_unsupported(&zstd, "zstd compression type", "compression");
    }
}

/// Island does not maintain persistent dirty bitmaps, so a read-write open must clear the
/// bitmaps autoclear bit: qemu then ignores the stale bitmaps instead of trusting them.
#[test]
fn read_write_open_clears_bitmap_autoclear_bit() {
    let dir = tempdir();
    let path = dir.path().join("bm.qcow2");
    run(qemu_img(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg("8M"));
    run(qemu_img(["bitmap", "--add"]).arg(&path).arg("b0"));
    let autoclear = |p: &Path| {
        let b = std::fs::read(p).unwrap();
        u64::from_be_bytes(b[88..96].try_into().unwrap())
    };
    assert_eq!(autoclear(&path) & 1, 1, "qemu set the bitmaps bit");

    let ro = Image::open(&path, OpenMode::ReadOnly).unwrap();
    assert_eq!(
        ro.info().autoclear_features & 1,
        1,
        "a read-only open changes nothing"
    );
    ro.close().unwrap();
    assert_eq!(autoclear(&path) & 1, 1);

    let img = Image::open(&path, OpenMode::ReadWrite).unwrap();
    img.write_at(&[7u8; 4096], 0).unwrap();
    img.close().unwrap();
    assert_eq!(
        autoclear(&path),
        0,
        "autoclear bits Island does not maintain are cleared"
    );
    assert_check_no_corruption(&path);
    let out = run(qemu_io(&path, &["read -q -P 7 0 4096".into()]).arg("-r"));
    assert!(out.status.success());
}

#[test]
fn island_image_boots_into_qemu_io_and_back() {
    // A round trip through both engines: Island creates and snapshots, qemu writes and
    // snapshots, Island reads everything.
    let dir = tempdir();
    let (img, path) = crate::common::create_image(dir.path(), "rt.qcow2", 8 << 20, 65536);
    img.write_at(&[0x11; 200_000], 1000).unwrap();
    img.create_snapshot("island-1").unwrap();
    img.close().unwrap();
    run(&mut qemu_io(
        &path,
        &["write -q -P 0x22 100000 300000".into()],
    ));
    run(qemu_img(["snapshot", "-c", "qemu-1"]).arg(&path));
    run(&mut qemu_io(&path, &["write -q -z 0 65536".into()]));
    assert_check_clean(&path);

    let mut s1 = vec![0u8; 8 << 20];
    s1[1000..201_000].fill(0x11);
    let mut s2 = s1.clone();
    s2[100_000..400_000].fill(0x22);
    let mut active = s2.clone();
    active[..65536].fill(0);
    let model = Model::with(active, vec![("island-1".into(), s1), ("qemu-1".into(), s2)]);
    assert_island_reads(&path, &model);
}

/// With 1-bit refcounts a cluster cannot be shared, so a snapshot is impossible: the
/// engine must say so (not call the image corrupt) and leave it intact.
#[test]
fn one_bit_refcount_image_refuses_snapshots_cleanly() {
    let dir = tempdir();
    let path = dir.path().join("rc1.qcow2");
    let model = qemu_made_image(
        &path,
        8 << 20,
        "cluster_size=4096,refcount_bits=1",
        &mut rng(9),
        1,
    );
    let img = match Image::open(&path, OpenMode::ReadWrite) {
        Ok(img) => img,
        Err(ImageError::Unsupported { .. }) => return, // refusing the width up front is fine too
        Err(e) => panic!("read-write open: {e}"),
    };
    match img.create_snapshot("s") {
        Err(ImageError::Unsupported { .. } | ImageError::InvalidArgument { .. }) => {}
        Err(e) => panic!("snapshot on a 1-bit refcount image: wrong error {e:?}"),
        Ok(_) => panic!("snapshot created although 1-bit refcounts cannot count it"),
    }
    assert!(img.snapshots().is_empty());
    img.close().unwrap();
    verify_with_qemu(dir.path(), &path, &model);
}

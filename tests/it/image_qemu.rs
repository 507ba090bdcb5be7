//! qemu as the oracle for images Island writes: random write / zero / discard / snapshot
//! sequences mirrored on an in-memory model, then `qemu-img check`, `compare`, `snapshot -l`
//! and `convert -l snapshot.name=` must all agree with the model and with Island's reads.

use crate::common::qemu::{
    assert_check_clean, compare_with_raw, convert_to_raw, info, map_clusters, snapshot_names,
};
use crate::common::{
    assert_same, create_image, options, random_bytes, read_active, read_snapshot, rng, seeds,
    tempdir,
};
use island::image::{CacheMode, ExtentKind, Image, ImageError, OpenMode};
use rand::rngs::StdRng;
use rand::Rng;
use std::path::Path;

/// Guest contents of the active layer and of every snapshot, in snapshot-table order.
#[derive(Clone, Debug)]
pub(crate) struct Model {
    pub active: Vec<u8>,
    pub snaps: Vec<(String, Vec<u8>)>,
    next_snap: u32,
    /// False for images whose refcount width cannot count a second reference.
    pub snapshots_allowed: bool,
}

impl Model {
    pub(crate) fn new(size: u64) -> Model {
        Model {
            active: vec![0; size as usize],
            snaps: Vec::new(),
            next_snap: 0,
            snapshots_allowed: true,
        }
    }

    /// A model of an image whose active layer and snapshots are already known.
    pub(crate) fn with(active: Vec<u8>, snaps: Vec<(String, Vec<u8>)>) -> Model {
        Model {
            active,
            snaps,
            next_snap: 1000,
            snapshots_allowed: true,
        }
    }
}

/// A guest range: small unaligned pieces, whole clusters, and ranges that straddle a
/// cluster boundary, all clipped to the image.
pub(crate) fn random_range(rng: &mut StdRng, size: u64, cluster: u64) -> (u64, u64) {
    let clusters = size / cluster;
    let (off, len) = match rng.random_range(0..3) {
        0 => (rng.random_range(0..size), rng.random_range(1..=2 * cluster)),
        1 => {
            let c = rng.random_range(0..clusters);
            (c * cluster, cluster * rng.random_range(1..=4u64))
        }
        _ => {
            let c = rng.random_range(1..clusters);
            let before = rng.random_range(1..=cluster.min(4096));
            (
                c * cluster - before,
                before + rng.random_range(1..=cluster + 1),
            )
        }
    };
    (off, len.min(size - off))
}

/// Runs `ops` random operations on `img`, applying each to `model` too.
pub(crate) fn run_random_ops(img: &Image, model: &mut Model, rng: &mut StdRng, ops: usize) {
    let size = img.size();
    let cluster = u64::from(img.cluster_size());
    for _ in 0..ops {
        let roll = rng.random_range(0..100);
        match roll {
            0..=54 => {
                let (off, len) = random_range(rng, size, cluster);
                let data = random_bytes(rng, len as usize);
                img.write_at(&data, off)
                    .unwrap_or_else(|e| panic!("write {len} at {off}: {e}"));
                model.active[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            55..=64 => {
                let (off, len) = random_range(rng, size, cluster);
                img.write_zeroes(off, len)
                    .unwrap_or_else(|e| panic!("write_zeroes {len} at {off}: {e}"));
                model.active[off as usize..(off + len) as usize].fill(0);
            }
            65..=72 => {
                let (off, len) = random_range(rng, size, cluster);
                img.discard(off, len)
                    .unwrap_or_else(|e| panic!("discard {len} at {off}: {e}"));
                model.active[off as usize..(off + len) as usize].fill(0);
            }
            73..=80 if model.snapshots_allowed => {
                let name = format!("s{}", model.next_snap);
                model.next_snap += 1;
                let info = img
                    .create_snapshot(&name)
                    .unwrap_or_else(|e| panic!("create snapshot {name}: {e}"));
                assert_eq!(info.name, name);
                model.snaps.push((name, model.active.clone()));
            }
            81..=86 if !model.snaps.is_empty() => {
                let i = rng.random_range(0..model.snaps.len());
                let (name, _) = model.snaps.remove(i);
                img.delete_snapshot(&name)
                    .unwrap_or_else(|e| panic!("delete snapshot {name}: {e}"));
            }
            87..=91 if !model.snaps.is_empty() => {
                let i = rng.random_range(0..model.snaps.len());
                let (name, data) = &model.snaps[i];
                img.revert_snapshot(name)
                    .unwrap_or_else(|e| panic!("revert to {name}: {e}"));
                model.active = data.clone();
            }
            73..=80 | 87..=91 => img.flush().expect("flush"),
            _ => {
                let (off, len) = random_range(rng, size, cluster);
                let mut buf = vec![0u8; len as usize];
                img.read_at(&mut buf, off)
                    .unwrap_or_else(|e| panic!("read {len} at {off}: {e}"));
                assert_same(
                    &format!("read {len} at {off}"),
                    &buf,
                    &model.active[off as usize..(off + len) as usize],
                );
            }
        }
    }
}

/// Everything qemu and a fresh Island open can say about a closed image must match `model`.
pub(crate) fn verify_with_qemu(dir: &Path, path: &Path, model: &Model) {
    assert_check_clean(path);

    let raw = dir.join("model.raw");
    std::fs::write(&raw, &model.active).unwrap();
    assert!(
        compare_with_raw(path, &raw),
        "qemu-img compare: {} differs from the model",
        path.display()
    );

    let names: Vec<String> = model.snaps.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(snapshot_names(path), names, "qemu-img's snapshot list");

    let img = Image::open(path, OpenMode::ReadOnly).expect("reopen read-only");
    assert_same(
        "island active layer after reopen",
        &read_active(&img),
        &model.active,
    );
    assert_extents_match_qemu(&img, path);
    let ours: Vec<String> = img.snapshots().into_iter().map(|s| s.name).collect();
    assert_eq!(ours, names, "Island's snapshot list");
    let conv = dir.join("snap.raw");
    for (name, data) in &model.snaps {
        let qemu = convert_to_raw(path, Some(name), &conv);
        assert_same(&format!("qemu's read of snapshot {name}"), &qemu, data);
        let island = read_snapshot(&img, name, data.len() as u64);
        assert_same(&format!("Island's read of snapshot {name}"), &island, data);
    }
    img.close().expect("close");
}

/// Island's allocation map of the active layer equals qemu-img map's, cluster by cluster.
fn assert_extents_match_qemu(img: &Image, path: &Path) {
    let cluster = u64::from(img.cluster_size());
    let mut ours = Vec::new();
    for e in img.extents(None, 0, img.size()).expect("extents") {
        let kind = match e.kind {
            ExtentKind::Data => Some(true),
            ExtentKind::Zero => Some(false),
            ExtentKind::Unallocated => None,
        };
        ours.extend(std::iter::repeat_n(
            kind,
            e.length.div_ceil(cluster) as usize,
        ));
    }
    let qemu = map_clusters(path, cluster);
    assert_eq!(ours.len(), qemu.len(), "extent map sizes");
    if let Some(c) = ours.iter().zip(&qemu).position(|(a, b)| a != b) {
        panic!(
            "cluster {c}: Island maps {:?}, qemu-img map says {:?} (Some(true)=data, \
             Some(false)=zero flag, None=unallocated)",
            ours[c], qemu[c]
        );
    }
}

/// Random operation sequences on images created and written in `cache` mode, checked
/// against the model and qemu (image_direct.rs runs a few in O_DIRECT mode).
pub(crate) fn random_sequence_matches_qemu(
    cluster: u32,
    size: u64,
    ops: usize,
    seed_base: u64,
    count: u64,
    cache: CacheMode,
) {
    for seed in seeds(seed_base, count) {
        eprintln!("seed {seed} (ISLAND_SEED={seed} to replay), cluster {cluster}, {cache:?}");
        let dir = tempdir();
        let path = dir.path().join("island.qcow2");
        let img = Image::create_with(&path, &options(size, cluster), cache)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let mut model = Model::new(size);
        let mut r = rng(seed);
        run_random_ops(&img, &mut model, &mut r, ops);
        img.close().expect("close");
        verify_with_qemu(dir.path(), &path, &model);
    }
}

#[test]
fn random_ops_cluster_4k() {
    random_sequence_matches_qemu(4096, 8 << 20, 300, 4, 4, CacheMode::Writeback);
}

#[test]
fn random_ops_cluster_64k() {
    random_sequence_matches_qemu(65536, 32 << 20, 300, 64, 4, CacheMode::Writeback);
}

#[test]
fn random_ops_cluster_2m() {
    random_sequence_matches_qemu(2 << 20, 64 << 20, 120, 2048, 2, CacheMode::Writeback);
}

#[test]
fn created_image_header_matches_qemu_view() {
    let dir = tempdir();
    let (img, path) = create_image(dir.path(), "a.qcow2", 100 << 20, 4096);
    assert_eq!(img.size(), 100 << 20);
    assert_eq!(img.cluster_size(), 4096);
    let i = img.info();
    assert_eq!(
        (i.size, i.cluster_size, i.version, i.refcount_bits),
        (100 << 20, 4096, 3, 16)
    );
    assert_eq!(i.snapshots, 0);
    img.close().unwrap();
    assert_eq!(i.file_size, std::fs::metadata(&path).unwrap().len());
    assert_check_clean(&path);
    let q = info(&path, false);
    assert_eq!(q["virtual-size"], 100 << 20);
    assert_eq!(q["cluster-size"], 4096);
    assert_eq!(q["format-specific"]["data"]["compat"], "1.1");
    assert_eq!(q["format-specific"]["data"]["refcount-bits"], 16);
}

#[test]
fn default_cluster_size_is_64k() {
    let dir = tempdir();
    let path = dir.path().join("d.qcow2");
    let img = Image::create(
        &path,
        &island::image::CreateOptions {
            size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(img.cluster_size(), 65536);
    img.close().unwrap();
    assert_eq!(info(&path, false)["cluster-size"], 65536);
}

#[test]
fn grow_keeps_data_and_snapshots() {
    let dir = tempdir();
    let (img, path) = create_image(dir.path(), "g.qcow2", 4 << 20, 65536);
    let mut r = rng(77);
    let head = random_bytes(&mut r, 100_000);
    img.write_at(&head, 12_345).unwrap();
    img.create_snapshot("before-grow").unwrap();
    let old = read_active(&img);

    img.grow(64 << 20).unwrap();
    assert_eq!(img.size(), 64 << 20);
    let tail = random_bytes(&mut r, 70_000);
    img.write_at(&tail, (40 << 20) + 3).unwrap();

    // The tail is new since the snapshot: reported changed, the written part as data.
    let changed = img.changed_ranges("before-grow", None).unwrap();
    let covered = |off: u64| {
        changed
            .iter()
            .any(|c| c.offset <= off && off < c.offset + c.length)
    };
    assert!(
        covered((40 << 20) + 3) && covered((40 << 20) + 70_002),
        "{changed:?}"
    );
    assert!(
        covered(4 << 20) && covered((64 << 20) - 1),
        "grown tail not reported: {changed:?}"
    );
    assert!(!covered(0), "untouched head reported: {changed:?}");
    let last = changed.last().unwrap();
    assert_eq!(last.offset + last.length, 64 << 20);

    let mut model = old.clone();
    model.resize(64 << 20, 0);
    model[(40 << 20) + 3..(40 << 20) + 3 + tail.len()].copy_from_slice(&tail);
    img.close().unwrap();
    assert_check_clean(&path);
    let raw = dir.path().join("g.raw");
    std::fs::write(&raw, &model).unwrap();
    assert!(compare_with_raw(&path, &raw));
    let img = Image::open(&path, OpenMode::ReadOnly).unwrap();
    let snap = img.snapshots();
    assert_eq!(
        snap[0].disk_size,
        4 << 20,
        "snapshot keeps the size it was taken at"
    );
    assert_same(
        "snapshot before grow",
        &read_snapshot(&img, "before-grow", 4 << 20),
        &old,
    );
}

#[test]
fn snapshot_errors_are_precise() {
    let dir = tempdir();
    let (img, _path) = create_image(dir.path(), "e.qcow2", 1 << 20, 65536);
    img.create_snapshot("a").unwrap();
    assert!(matches!(
        img.create_snapshot("a"),
        Err(ImageError::SnapshotExists { .. })
    ));
    assert!(matches!(
        img.delete_snapshot("nope"),
        Err(ImageError::NoSuchSnapshot { .. })
    ));
    assert!(matches!(
        img.revert_snapshot("nope"),
        Err(ImageError::NoSuchSnapshot { .. })
    ));
    let mut b = [0u8; 10];
    assert!(matches!(
        img.read_snapshot_at("nope", &mut b, 0),
        Err(ImageError::NoSuchSnapshot { .. })
    ));
    assert!(matches!(
        img.changed_ranges("nope", None),
        Err(ImageError::NoSuchSnapshot { .. })
    ));
    // Snapshots are addressable by id as well as by name.
    let id = img.snapshots()[0].id.clone();
    img.read_snapshot_at(&id, &mut b, 0).unwrap();
    img.delete_snapshot(&id).unwrap();
    assert!(img.snapshots().is_empty());
}

#[test]
fn out_of_range_and_read_only_are_refused() {
    let dir = tempdir();
    let (img, path) = create_image(dir.path(), "r.qcow2", 1 << 20, 65536);
    let mut b = [0u8; 16];
    assert!(matches!(
        img.read_at(&mut b, (1 << 20) - 8),
        Err(ImageError::OutOfRange { .. })
    ));
    assert!(matches!(
        img.write_at(&b, 1 << 20),
        Err(ImageError::OutOfRange { .. })
    ));
    assert!(matches!(
        img.write_zeroes(u64::MAX - 2, 16),
        Err(ImageError::OutOfRange { .. })
    ));
    assert!(matches!(
        img.discard((1 << 20) - 1, 2),
        Err(ImageError::OutOfRange { .. })
    ));
    img.close().unwrap();
    let img = Image::open(&path, OpenMode::ReadOnly).unwrap();
    assert!(matches!(
        img.write_at(&b, 0),
        Err(ImageError::ReadOnly { .. })
    ));
    assert!(matches!(
        img.create_snapshot("x"),
        Err(ImageError::ReadOnly { .. })
    ));
    let e = img.write_at(&b, 0).unwrap_err().to_string();
    assert!(e.contains("r.qcow2"), "error names the path: {e}");
}

#[test]
fn concurrent_writers_on_disjoint_regions() {
    let dir = tempdir();
    let (img, path) = create_image(dir.path(), "c.qcow2", 16 << 20, 4096);
    let img = std::sync::Arc::new(img);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let img = img.clone();
            std::thread::spawn(move || {
                let mut r = rng(900 + t);
                let base = t * (4 << 20);
                let mut model = vec![0u8; 4 << 20];
                for _ in 0..300 {
                    let off = r.random_range(0..(4 << 20) - 20_000u64);
                    let len = r.random_range(1..20_000u64);
                    let data = random_bytes(&mut r, len as usize);
                    img.write_at(&data, base + off).unwrap();
                    model[off as usize..(off + len) as usize].copy_from_slice(&data);
                    let mut back = vec![0u8; len as usize];
                    img.read_at(&mut back, base + off).unwrap();
                    assert_same("read own write", &back, &data);
                }
                model
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().expect("writer thread"));
    }
    let img = std::sync::Arc::try_unwrap(img).ok().expect("threads done");
    img.close().unwrap();
    let model = Model::with(all, Vec::new());
    verify_with_qemu(dir.path(), &path, &model);
}

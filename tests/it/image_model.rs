//! proptest: random operation sequences against an in-memory model of the guest contents
//! (active layer and every snapshot). Checks reads, `changed_ranges` against the model
//! diff, the `zero` flags, and `extents` against the contents.
//!
//! The changed-range property, from the contract ("pointer-equal ⇒ not reported"):
//! - every cluster whose contents differ between the two views is covered (soundness);
//! - a cluster no operation touched between the two views is not reported (precision).
//!   The model tracks this with a generation per cluster: every write / zero / discard
//!   gives the clusters it touches a fresh generation, a snapshot copies the vector, a
//!   revert copies the snapshot's vector back. Equal generations ⇒ the engine's L2 entries
//!   point at the same place ⇒ the cluster must not be reported.

use crate::common::memfile::MemFile;
use crate::common::{assert_same, options, read_active, read_snapshot, tempdir};
use crate::image_direct::direct_supported;
use island::image::{ChangedRange, DirectFile, ExtentKind, Image};
use proptest::prelude::*;
use std::sync::Arc;

/// Soundness and shape of a changed-range list: sorted, non-overlapping, cluster aligned
/// (the last clipped to the size), adjacent ranges with equal `zero` merged, every differing
/// cluster covered, and `zero` ranges really zero in `to`.
#[track_caller]
pub(crate) fn assert_covers_diff(changed: &[ChangedRange], from: &[u8], to: &[u8], cluster: u64) {
    let size = to.len() as u64;
    let mut prev: Option<&ChangedRange> = None;
    for r in changed {
        assert!(r.length > 0, "empty range in {changed:?}");
        assert_eq!(r.offset % cluster, 0, "unaligned offset in {changed:?}");
        let end = r.offset + r.length;
        assert!(end <= size, "range past the end in {changed:?}");
        assert!(
            end % cluster == 0 || end == size,
            "unaligned end in {changed:?}"
        );
        if let Some(p) = prev {
            let pend = p.offset + p.length;
            assert!(pend <= r.offset, "unsorted or overlapping: {changed:?}");
            assert!(
                !(pend == r.offset && p.zero == r.zero),
                "adjacent ranges with equal zero flag not merged: {changed:?}"
            );
        }
        if r.zero {
            let span = &to[r.offset as usize..end as usize];
            assert!(
                span.iter().all(|&b| b == 0),
                "range {r:?} flagged zero but reads non-zero"
            );
        }
        prev = Some(r);
    }
    let covered = |off: u64| {
        changed
            .iter()
            .any(|r| r.offset <= off && off < r.offset + r.length)
    };
    let common = from.len().min(to.len());
    for c in (0..size).step_by(cluster as usize) {
        let end = (c + cluster).min(size) as usize;
        let differs = c as usize >= common
            || from[c as usize..end.min(common)] != to[c as usize..end.min(common)];
        if differs {
            assert!(
                covered(c),
                "cluster at {c} differs but is not reported: {changed:?}"
            );
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write { off: u64, len: u64, byte: u8 },
    Zero { off: u64, len: u64 },
    Discard { off: u64, len: u64 },
    Snapshot,
    Delete(usize),
    Revert(usize),
    Flush,
}

const SIZE: u64 = 4 << 20;

fn range(cluster: u64) -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        (0..SIZE, 1..3 * cluster),
        (0..SIZE / cluster, 1..4u64).prop_map(move |(c, n)| (c * cluster, n * cluster)),
    ]
    .prop_map(|(off, len)| (off, len.min(SIZE - off)))
}

fn op(cluster: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (range(cluster), any::<u8>()).prop_map(|((off, len), byte)| Op::Write { off, len, byte }),
        2 => range(cluster).prop_map(|(off, len)| Op::Zero { off, len }),
        2 => range(cluster).prop_map(|(off, len)| Op::Discard { off, len }),
        2 => Just(Op::Snapshot),
        1 => any::<usize>().prop_map(Op::Delete),
        1 => any::<usize>().prop_map(Op::Revert),
        1 => Just(Op::Flush),
    ]
}

struct View {
    name: Option<String>,
    data: Vec<u8>,
    gens: Vec<u64>,
}

struct Model {
    active: View,
    snaps: Vec<View>,
    next_gen: u64,
    next_name: u32,
    cluster: u64,
}

impl Model {
    fn touch(&mut self, off: u64, len: u64) {
        for c in off / self.cluster..(off + len).div_ceil(self.cluster) {
            self.active.gens[c as usize] = self.next_gen;
            self.next_gen += 1;
        }
    }
}

fn check_views(img: &Image, m: &Model) {
    assert_same("active layer", &read_active(img), &m.active.data);
    let names: Vec<String> = img.snapshots().into_iter().map(|s| s.name).collect();
    let want: Vec<String> = m.snaps.iter().map(|v| v.name.clone().unwrap()).collect();
    assert_eq!(names, want, "snapshot list");
    let views: Vec<&View> = m.snaps.iter().chain(std::iter::once(&m.active)).collect();
    for from in &m.snaps {
        let fname = from.name.as_deref().unwrap();
        assert_same(
            &format!("snapshot {fname}"),
            &read_snapshot(img, fname, SIZE),
            &from.data,
        );
        for to in &views {
            let changed = img
                .changed_ranges(fname, to.name.as_deref())
                .unwrap_or_else(|e| panic!("changed_ranges({fname}, {:?}): {e}", to.name));
            assert_covers_diff(&changed, &from.data, &to.data, m.cluster);
            for r in &changed {
                let first = r.offset / m.cluster;
                let last = (r.offset + r.length).div_ceil(m.cluster);
                for c in first..last {
                    assert_ne!(
                        from.gens[c as usize], to.gens[c as usize],
                        "changed_ranges({fname}, {:?}) reports cluster {c} that no operation touched: {changed:?}",
                        to.name
                    );
                }
            }
        }
    }
    for view in &views {
        let extents = img.extents(view.name.as_deref(), 0, SIZE).expect("extents");
        let mut pos = 0;
        for e in &extents {
            assert_eq!(e.offset, pos, "extents leave a gap or overlap: {extents:?}");
            pos += e.length;
            if !matches!(e.kind, ExtentKind::Data) {
                let span = &view.data[e.offset as usize..(e.offset + e.length) as usize];
                assert!(
                    span.iter().all(|&b| b == 0),
                    "{e:?} of {:?} is not zero",
                    view.name
                );
            }
        }
        assert_eq!(pos, SIZE, "extents cover the image: {extents:?}");
    }
}

/// Where the engine under test stores the image.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Storage {
    /// In memory: fast, and lets the test reopen from the bytes alone.
    Mem,
    /// A real file opened with O_DIRECT: every request is aligned by `DirectFile`.
    Direct,
}

fn run_ops(cluster: u32, ops: Vec<Op>, storage: Storage) {
    let dir = tempdir();
    let path = dir.path().join("model.qcow2");
    if storage == Storage::Direct && !direct_supported(dir.path()) {
        return;
    }
    let mem = Arc::new(MemFile::default());
    let file: Arc<dyn island::image::ImageFile> = match storage {
        Storage::Mem => mem.clone(),
        Storage::Direct => Arc::new(DirectFile::open(&path, true, true).expect("open O_DIRECT")),
    };
    let img = Image::create_on(file, "model.qcow2", &options(SIZE, cluster)).expect("create_on");
    let cl = u64::from(cluster);
    let clusters = (SIZE / cl) as usize;
    let mut m = Model {
        active: View {
            name: None,
            data: vec![0; SIZE as usize],
            gens: vec![0; clusters],
        },
        snaps: Vec::new(),
        next_gen: 1,
        next_name: 0,
        cluster: cl,
    };
    for op in ops {
        match op {
            Op::Write { off, len, byte } => {
                img.write_at(&vec![byte; len as usize], off).unwrap();
                m.active.data[off as usize..(off + len) as usize].fill(byte);
                m.touch(off, len);
            }
            Op::Zero { off, len } => {
                img.write_zeroes(off, len).unwrap();
                m.active.data[off as usize..(off + len) as usize].fill(0);
                m.touch(off, len);
            }
            Op::Discard { off, len } => {
                img.discard(off, len).unwrap();
                m.active.data[off as usize..(off + len) as usize].fill(0);
                m.touch(off, len);
            }
            Op::Snapshot => {
                let name = format!("p{}", m.next_name);
                m.next_name += 1;
                img.create_snapshot(&name).unwrap();
                m.snaps.push(View {
                    name: Some(name),
                    data: m.active.data.clone(),
                    gens: m.active.gens.clone(),
                });
            }
            Op::Delete(i) if !m.snaps.is_empty() => {
                let v = m.snaps.remove(i % m.snaps.len());
                img.delete_snapshot(v.name.as_deref().unwrap()).unwrap();
            }
            Op::Revert(i) if !m.snaps.is_empty() => {
                let v = &m.snaps[i % m.snaps.len()];
                img.revert_snapshot(v.name.as_deref().unwrap()).unwrap();
                m.active.data = v.data.clone();
                m.active.gens = v.gens.clone();
            }
            Op::Delete(_) | Op::Revert(_) | Op::Flush => img.flush().unwrap(),
        }
    }
    check_views(&img, &m);
    img.close().unwrap();
    // The same answers after reopening from the bytes alone.
    let bytes = match storage {
        Storage::Mem => mem.bytes(),
        Storage::Direct => std::fs::read(&path).expect("read the image file"),
    };
    let reopened =
        Image::open_on(Arc::new(MemFile::new(bytes)), "model.qcow2", false).expect("reopen");
    check_views(&reopened, &m);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn model_cluster_4k(ops in proptest::collection::vec(op(4096), 1..40)) {
        run_ops(4096, ops, Storage::Mem);
    }

    #[test]
    fn model_cluster_64k(ops in proptest::collection::vec(op(65536), 1..40)) {
        run_ops(65536, ops, Storage::Mem);
    }
}

proptest! {
    // O_DIRECT: fewer cases (each one does real, uncached disk I/O).
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn model_cluster_4k_direct(ops in proptest::collection::vec(op(4096), 1..40)) {
        run_ops(4096, ops, Storage::Direct);
    }

    #[test]
    fn model_cluster_64k_direct(ops in proptest::collection::vec(op(65536), 1..40)) {
        run_ops(65536, ops, Storage::Direct);
    }
}

/// Changed ranges from a snapshot to itself, and right after taking it, are empty; after
/// a revert the active layer equals the snapshot again at the pointer level.
#[test]
fn no_change_means_no_ranges() {
    let img = Image::create_on(
        Arc::new(MemFile::default()),
        "n.qcow2",
        &options(SIZE, 4096),
    )
    .unwrap();
    img.write_at(&[1; 10_000], 5).unwrap();
    img.create_snapshot("a").unwrap();
    assert_eq!(img.changed_ranges("a", None).unwrap(), vec![]);
    assert_eq!(img.changed_ranges("a", Some("a")).unwrap(), vec![]);
    img.write_at(&[2; 100], 50_000).unwrap();
    assert_eq!(
        img.changed_ranges("a", None).unwrap(),
        vec![ChangedRange {
            offset: 49_152,
            length: 4096,
            zero: false
        }]
    );
    img.discard(0, 3 * 4096).unwrap();
    assert_eq!(
        img.changed_ranges("a", None).unwrap(),
        vec![
            ChangedRange {
                offset: 0,
                length: 3 * 4096,
                zero: true
            },
            ChangedRange {
                offset: 49_152,
                length: 4096,
                zero: false
            },
        ]
    );
    img.revert_snapshot("a").unwrap();
    assert_eq!(img.changed_ranges("a", None).unwrap(), vec![]);
}

//! Corrupt and hostile inputs: every damaged header or table yields a clear error of the
//! right kind, naming the image, and never a panic or a silent misread.

use crate::common::memfile::MemFile;
use crate::common::qemu::{qemu_img, qemu_io, run};
use crate::common::{random_bytes, rng, seeds, tempdir};
use island::image::{Image, ImageError, OpenMode};
use rand::Rng;
use std::sync::Arc;

const NAME: &str = "victim.qcow2";

/// A qemu-made image: 4 MiB, 64 KiB clusters, data in the first two clusters, a snapshot.
fn base_image() -> Vec<u8> {
    let dir = tempdir();
    let p = dir.path().join("base.qcow2");
    run(qemu_img(["create", "-q", "-f", "qcow2"]).arg(&p).arg("4M"));
    run(&mut qemu_io(&p, &["write -q -P 0x41 0 128k".into()]));
    run(qemu_img(["snapshot", "-c", "snap"]).arg(&p));
    run(&mut qemu_io(&p, &["write -q -P 0x42 64k 64k".into()]));
    std::fs::read(&p).unwrap()
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().unwrap())
}
fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().unwrap())
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}

/// Opens `bytes` both through `open_on` and as a real file, then exercises every read
/// path. Returns the first error; `Ok` means the whole image read without complaint.
fn exercise(bytes: &[u8], writable: bool) -> Result<(), ImageError> {
    let img = Image::open_on(Arc::new(MemFile::new(bytes.to_vec())), NAME, writable)?;
    touch_everything(&img)?;
    let dir = tempdir();
    let path = dir.path().join(NAME);
    std::fs::write(&path, bytes).unwrap();
    let mode = if writable {
        OpenMode::ReadWrite
    } else {
        OpenMode::ReadOnly
    };
    let img = Image::open(&path, mode)?;
    touch_everything(&img)
}

fn touch_everything(img: &Image) -> Result<(), ImageError> {
    let _ = img.info();
    let size = img.size().min(64 << 20);
    let mut buf = vec![0u8; size as usize];
    img.read_at(&mut buf, 0)?;
    img.extents(None, 0, size)?;
    for s in img.snapshots() {
        img.read_snapshot_at(&s.id, &mut buf[..size.min(s.disk_size) as usize], 0)?;
        img.changed_ranges(&s.id, None)?;
        img.extents(Some(&s.id), 0, size.min(s.disk_size))?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Want {
    Corrupt,
    Unsupported,
    /// Either is a correct, clear refusal (e.g. a cluster size outside the spec's range).
    CorruptOrUnsupported,
}

/// Records (instead of stopping at) each damaged image that is not refused as wanted,
/// so one run lists every case the engine gets wrong.
fn expect_refused(fails: &mut Vec<String>, case: &str, bytes: &[u8], want: Want) {
    for writable in [false, true] {
        let err = match exercise(bytes, writable) {
            Ok(()) => {
                fails.push(format!("{case}: accepted (writable={writable})"));
                continue;
            }
            Err(e) => e,
        };
        let ok = match want {
            Want::Corrupt => matches!(err, ImageError::Corrupt { .. } | ImageError::Overlap { .. }),
            Want::Unsupported => matches!(err, ImageError::Unsupported { .. }),
            Want::CorruptOrUnsupported => {
                matches!(
                    err,
                    ImageError::Corrupt { .. }
                        | ImageError::Overlap { .. }
                        | ImageError::Unsupported { .. }
                )
            }
        };
        let msg = err.to_string();
        if !ok {
            fails.push(format!(
                "{case} (writable={writable}): wanted {want:?}, got {err:?}"
            ));
        } else if !msg.contains(NAME) {
            fails.push(format!("{case}: message does not name the image: {msg}"));
        }
    }
}

#[track_caller]
fn assert_all_refused(fails: Vec<String>) {
    assert!(
        fails.is_empty(),
        "damaged images not refused as expected:\n{}",
        fails.join("\n")
    );
}

#[test]
fn damaged_headers_are_refused() {
    let mut fails = Vec::new();
    let base = base_image();
    exercise(&base, false).expect("the undamaged image reads");
    exercise(&base, true).expect("the undamaged image opens read-write");

    expect_refused(&mut fails, "empty file", &[], Want::Corrupt);
    expect_refused(&mut fails, "truncated header", &base[..50], Want::Corrupt);
    expect_refused(
        &mut fails,
        "header cut at 100 bytes",
        &base[..100],
        Want::Corrupt,
    );

    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = base.clone();
        f(&mut b);
        b
    };
    expect_refused(
        &mut fails,
        "bad magic",
        &mutate(&|b| b[0] = b'X'),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "version 2",
        &mutate(&|b| put32(b, 4, 2)),
        Want::Unsupported,
    );
    expect_refused(
        &mut fails,
        "version 4",
        &mutate(&|b| put32(b, 4, 4)),
        Want::Unsupported,
    );
    expect_refused(
        &mut fails,
        "cluster_bits 8",
        &mutate(&|b| put32(b, 20, 8)),
        Want::CorruptOrUnsupported,
    );
    expect_refused(
        &mut fails,
        "cluster_bits 40",
        &mutate(&|b| put32(b, 20, 40)),
        Want::CorruptOrUnsupported,
    );
    expect_refused(
        &mut fails,
        "huge virtual size",
        &mutate(&|b| put64(b, 24, u64::MAX)),
        Want::CorruptOrUnsupported,
    );
    expect_refused(
        &mut fails,
        "crypt_method aes",
        &mutate(&|b| put32(b, 32, 1)),
        Want::Unsupported,
    );
    expect_refused(
        &mut fails,
        "huge l1_size",
        &mutate(&|b| put32(b, 36, 0x0fff_ffff)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "l1_size too small for the size",
        &mutate(&|b| put32(b, 36, 0)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "l1 table inside the header",
        &mutate(&|b| put64(b, 40, 0)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "l1 table unaligned",
        &mutate(&|b| put64(b, 40, 0x10008)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "l1 table past EOF",
        &mutate(&|b| put64(b, 40, 1 << 40)),
        Want::Corrupt,
    );
    let l1 = be64(&base, 40);
    expect_refused(
        &mut fails,
        "refcount table overlapping L1",
        &mutate(&|b| put64(b, 48, l1)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "refcount table past EOF",
        &mutate(&|b| put64(b, 48, 1 << 40)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "zero refcount table clusters",
        &mutate(&|b| put32(b, 56, 0)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "unknown incompatible feature bit",
        &mutate(&|b| {
            let v = be64(b, 72) | 1 << 20;
            put64(b, 72, v)
        }),
        Want::Unsupported,
    );
    expect_refused(
        &mut fails,
        "refcount_order 7",
        &mutate(&|b| put32(b, 96, 7)),
        Want::CorruptOrUnsupported,
    );
    expect_refused(
        &mut fails,
        "header_length too short",
        &mutate(&|b| put32(b, 100, 50)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "header_length past the cluster",
        &mutate(&|b| put32(b, 100, 1 << 20)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "backing file name past EOF",
        &mutate(&|b| {
            put64(b, 8, 1 << 30);
            put32(b, 16, 10);
        }),
        Want::CorruptOrUnsupported,
    );
    assert_all_refused(fails);
}

#[test]
fn damaged_tables_are_refused() {
    let mut fails = Vec::new();
    let base = base_image();
    let l1 = be64(&base, 40) as usize;
    let l2 = (be64(&base, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    assert!(l2 > 0, "the base image has an L2 table");
    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = base.clone();
        f(&mut b);
        b
    };
    let copied = 1u64 << 63;
    expect_refused(
        &mut fails,
        "L1 entry past EOF",
        &mutate(&|b| put64(b, l1, copied | 1 << 40)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "L1 entry unaligned",
        &mutate(&|b| put64(b, l1, copied | (l2 as u64 + 512))),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "L2 entry past EOF",
        &mutate(&|b| put64(b, l2, copied | 1 << 40)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "L2 entry unaligned",
        &mutate(&|b| put64(b, l2, copied | 0x30200)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "L2 entry with reserved bits",
        &mutate(&|b| {
            let v = be64(b, l2) | 0x1fe;
            put64(b, l2, v)
        }),
        Want::Corrupt,
    );
    assert_all_refused(fails);
}

#[test]
fn damaged_snapshot_table_is_refused() {
    let mut fails = Vec::new();
    let base = base_image();
    let snap_off = be64(&base, 64) as usize;
    assert_eq!(be32(&base, 60), 1);
    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = base.clone();
        f(&mut b);
        b
    };
    // Garbage table: a whole cluster of random bytes where the table was.
    let garbage = mutate(&|b| {
        let g = random_bytes(&mut rng(3), 4096);
        b[snap_off..snap_off + 4096].copy_from_slice(&g);
    });
    expect_refused(
        &mut fails,
        "snapshot table garbage",
        &garbage,
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "snapshot count past the table",
        &mutate(&|b| put32(b, 60, 70_000)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "snapshot table past EOF",
        &mutate(&|b| put64(b, 64, 1 << 40)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "snapshot table unaligned",
        &mutate(&|b| put64(b, 64, snap_off as u64 + 4)),
        Want::Corrupt,
    );
    // The first entry's fields: l1_table_offset (0), l1_size (8), id_str_size (12), name_size (14).
    expect_refused(
        &mut fails,
        "snapshot L1 past EOF",
        &mutate(&|b| put64(b, snap_off, 1 << 40)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "snapshot L1 unaligned",
        &mutate(&|b| put64(b, snap_off, 0x10010)),
        Want::Corrupt,
    );
    expect_refused(
        &mut fails,
        "snapshot huge l1_size",
        &mutate(&|b| put32(b, snap_off + 8, u32::MAX)),
        Want::Corrupt,
    );
    assert_all_refused(fails);
}

/// Random damage anywhere in the metadata: any outcome but a panic or a hang is fine here
/// (the targeted cases above pin the error kinds).
#[test]
fn random_metadata_damage_never_panics() {
    let base = base_image();
    let l1 = be64(&base, 40) as usize;
    let regions = [
        0..512usize,
        l1..l1 + 64,
        be64(&base, 48) as usize..be64(&base, 48) as usize + 64,
        be64(&base, 64) as usize..be64(&base, 64) as usize + 128,
    ];
    for seed in seeds(11, 300) {
        let mut r = rng(seed);
        let mut b = base.clone();
        for _ in 0..r.random_range(1..6) {
            let reg = &regions[r.random_range(0..regions.len())];
            let at = r.random_range(reg.clone());
            b[at] ^= 1 << r.random_range(0..8);
        }
        if r.random_bool(0.2) {
            b.truncate(r.random_range(0..b.len()));
        }
        let outcome = std::panic::catch_unwind(|| {
            let _ = exercise(&b, false);
            let _ = exercise(&b, true);
        });
        assert!(
            outcome.is_ok(),
            "panic on damaged image, seed {seed} (ISLAND_SEED={seed})"
        );
    }
}

/// The corrupt bit (incompatible bit 1) forbids writing: a read-write open is refused.
#[test]
fn corrupt_bit_refuses_writes() {
    let mut b = base_image();
    let v = be64(&b, 72) | 2;
    put64(&mut b, 72, v);
    match Image::open_on(Arc::new(MemFile::new(b)), NAME, true) {
        Err(ImageError::Corrupt { .. } | ImageError::Unsupported { .. }) => {}
        Err(e) => panic!("wrong error for the corrupt bit: {e:?}"),
        Ok(_) => panic!("opened an image marked corrupt for writing"),
    }
}

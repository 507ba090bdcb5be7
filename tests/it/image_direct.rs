//! The O_DIRECT cache mode (`CacheMode::Direct`): unaligned guest I/O, metadata updates
//! smaller than a block, concurrent read-modify-writes of one block, and the refusal on a
//! file that cannot do O_DIRECT. qemu-img is the oracle as in image_qemu.rs; the model
//! proptest runs in this mode too (image_model.rs).

use crate::common::cli::ok;
use crate::common::qemu::{assert_check_clean, compare_with_raw};
use crate::common::{assert_same, options, random_bytes, read_active, rng, tempdir};
use crate::image_qemu::{random_sequence_matches_qemu, verify_with_qemu, Model};
use island::image::{AlignedBuf, CacheMode, DirectFile, Image, ImageError, ImageFile, OpenMode};
use rand::seq::SliceRandom;
use std::path::Path;
use std::sync::Arc;

/// Whether files in `dir` can be opened with O_DIRECT; prints why a test is skipped if
/// not. (The tests' temp dirs live under the system temp dir, ext4 on the CI machine.)
pub(crate) fn direct_supported(dir: &Path) -> bool {
    let probe = dir.join(".direct-probe");
    let r = DirectFile::open(&probe, true, true).and_then(|f| {
        f.write_at(&AlignedBuf::zeroed(4096), 0)
            .map_err(|source| ImageError::Io {
                path: probe.clone(),
                op: "write",
                offset: 0,
                source,
            })
    });
    let _ = std::fs::remove_file(&probe);
    match r {
        Ok(()) => true,
        Err(e @ ImageError::DirectIo { .. }) => {
            eprintln!("skipped: {} does not support O_DIRECT: {e}", dir.display());
            false
        }
        Err(e) => panic!("O_DIRECT probe in {}: {e}", dir.display()),
    }
}

/// Write `data` at `off` through the image and the model, then read back a window around
/// it both into an aligned buffer and into a deliberately misaligned one.
fn write_and_check(img: &Image, model: &mut Model, data: &[u8], off: u64) {
    img.write_at(data, off)
        .unwrap_or_else(|e| panic!("write {} at {off}: {e}", data.len()));
    model.active[off as usize..off as usize + data.len()].copy_from_slice(data);
    let start = off.saturating_sub(700);
    let end = (off + data.len() as u64 + 900).min(img.size());
    let want = &model.active[start as usize..end as usize];
    let mut aligned = AlignedBuf::zeroed((end - start) as usize);
    img.read_at(&mut aligned, start).expect("aligned read");
    assert_same(
        &format!("aligned read after write at {off}"),
        &aligned,
        want,
    );
    let mut backing = vec![0u8; (end - start) as usize + 1];
    let skewed = &mut backing[1..];
    img.read_at(skewed, start).expect("misaligned read");
    assert_same(
        &format!("misaligned read after write at {off}"),
        skewed,
        want,
    );
}

#[test]
fn unaligned_io_matches_model_and_qemu() {
    for cluster in [4096u32, 65536] {
        let dir = tempdir();
        if !direct_supported(dir.path()) {
            return;
        }
        let size = 4u64 << 20;
        let path = dir.path().join("d.qcow2");
        let img = Image::create_with(&path, &options(size, cluster), CacheMode::Direct)
            .expect("create in direct mode");
        let c = u64::from(cluster);
        let mut model = Model::new(size);
        let mut r = rng(4095 + c);
        let mut step = |img: &Image, model: &mut Model, len: usize, off: u64| {
            let data = random_bytes(&mut r, len);
            write_and_check(img, model, &data, off);
        };
        step(&img, &mut model, 1, 4095);
        step(&img, &mut model, 3072, 5 * c - 1024); // spans a cluster boundary
        step(&img, &mut model, 1, 0);
        step(&img, &mut model, 513, 511);
        // More than one bounce buffer.
        step(&img, &mut model, 300_000, 12_345);
        // Aligned request from an aligned buffer (the no-copy path)...
        let mut block = AlignedBuf::zeroed(4096);
        block.fill(0x3c);
        write_and_check(&img, &mut model, &block, 8 * 4096);
        // ...and from a misaligned buffer (one copy).
        let mut skew = vec![0x7eu8; 4097];
        skew[0] = 0;
        write_and_check(&img, &mut model, &skew[1..], 20 * 4096);
        // Growing (before any snapshot: qemu reads snapshots at the current size)
        // rewrites L1 entries in place: a partial-block metadata write.
        let big = size + (2 << 20);
        img.grow(big).expect("grow");
        model.active.resize(big as usize, 0);
        step(&img, &mut model, 777, size + 4000);
        img.create_snapshot("a").expect("snapshot a");
        model.snaps.push(("a".into(), model.active.clone()));
        // Copy-on-write of shared clusters with partial writes.
        step(&img, &mut model, 100, 4090);
        step(&img, &mut model, 2 * c as usize + 7, c - 3);
        img.write_zeroes(3 * c + 1, c).expect("write_zeroes");
        model.active[(3 * c + 1) as usize..(4 * c + 1) as usize].fill(0);
        img.create_snapshot("b").expect("snapshot b");
        model.snaps.push(("b".into(), model.active.clone()));
        step(&img, &mut model, 5000, big - 5000);
        img.delete_snapshot("a").expect("delete a");
        model.snaps.remove(0);
        img.close().expect("close");

        // A direct read-only reopen sees the same, then qemu checks everything.
        let img = Image::open_with(&path, OpenMode::ReadOnly, CacheMode::Direct).expect("reopen");
        assert_same("direct reopen", &read_active(&img), &model.active);
        drop(img);
        verify_with_qemu(dir.path(), &path, &model);
    }
}

#[test]
fn random_ops_direct_cluster_4k() {
    if direct_supported(&std::env::temp_dir()) {
        random_sequence_matches_qemu(4096, 8 << 20, 200, 41, 1, CacheMode::Direct);
    }
}

#[test]
fn random_ops_direct_cluster_64k() {
    if direct_supported(&std::env::temp_dir()) {
        random_sequence_matches_qemu(65536, 32 << 20, 200, 641, 2, CacheMode::Direct);
    }
}

/// Threads write interleaved 64-byte strips of the same blocks of allocated clusters (the
/// shared-lock in-place path): every partial-block write is a read-modify-write, and
/// without the per-block lock one thread's strip would be overwritten by another's stale
/// copy of the block.
#[test]
fn concurrent_partial_block_writes_lose_nothing() {
    let dir = tempdir();
    if !direct_supported(dir.path()) {
        return;
    }
    let size = 256u64 << 10;
    let path = dir.path().join("c.qcow2");
    let img = Image::create_with(&path, &options(size, 4096), CacheMode::Direct).unwrap();
    img.write_at(&vec![0u8; size as usize], 0).unwrap();
    img.flush().unwrap();
    let img = Arc::new(img);
    const THREADS: u64 = 4;
    const STRIP: u64 = 64;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let img = img.clone();
            std::thread::spawn(move || {
                let mut r = rng(31 + t);
                let mut mine = Vec::new();
                for round in 0..3 {
                    let mut strips: Vec<u64> = (0..size / (STRIP * THREADS))
                        .map(|i| (i * THREADS + t) * STRIP)
                        .collect();
                    strips.shuffle(&mut r);
                    for off in strips {
                        let mut data = random_bytes(&mut r, STRIP as usize);
                        data[0] = round;
                        img.write_at(&data, off).unwrap();
                        mine.push((off, data));
                    }
                }
                mine
            })
        })
        .collect();
    let mut want = vec![0u8; size as usize];
    for t in threads {
        for (off, data) in t.join().expect("writer thread") {
            want[off as usize..(off + STRIP) as usize].copy_from_slice(&data);
        }
    }
    let img = Arc::try_unwrap(img).ok().expect("threads done");
    assert_same("interleaved strips", &read_active(&img), &want);
    img.close().unwrap();
    assert_check_clean(&path);
    let raw = dir.path().join("c.raw");
    std::fs::write(&raw, &want).unwrap();
    assert!(compare_with_raw(&path, &raw), "qemu-img compare");
}

/// A whole-block write racing a read-modify-write of the same block: the bytes only the
/// whole-block writer touches must read back as it wrote them right after its write. An
/// RMW that read the block before that write and wrote it back after would put older
/// bytes back; the shared/exclusive block lock forbids that interleaving.
#[test]
fn whole_block_write_racing_rmw_keeps_its_bytes() {
    let dir = tempdir();
    if !direct_supported(dir.path()) {
        return;
    }
    let path = dir.path().join("race.qcow2");
    let img = Image::create_with(&path, &options(1 << 20, 65536), CacheMode::Direct).unwrap();
    img.write_at(&vec![1u8; 65536], 0).unwrap();
    img.flush().unwrap();
    let img = Arc::new(img);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let patcher = {
        let (img, done) = (img.clone(), done.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                img.write_at(&[0xee; 100], 1000).unwrap();
                n += 1;
            }
            n
        })
    };
    let mut block = AlignedBuf::zeroed(4096);
    let mut back = AlignedBuf::zeroed(4096);
    let mut failure = None;
    for i in 0..400u32 {
        let v = (i % 200) as u8 + 2;
        block.fill(v);
        img.write_at(&block, 0).unwrap();
        img.read_at(&mut back, 0).unwrap();
        if let Some(at) = (0..4096).find(|&k| !(1000..1100).contains(&k) && back[k] != v) {
            failure = Some(format!(
                "round {i}: byte {at} is {:#x}, wrote {v:#x}",
                back[at]
            ));
            break;
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let patches = patcher.join().expect("patcher thread");
    assert!(
        failure.is_none(),
        "{} ({patches} patches)",
        failure.unwrap()
    );
    assert!(patches > 0, "the patcher never ran");
}

/// DirectFile's own contract, the one `ImageFile` states: exact reads fail with
/// UnexpectedEof past the end (aligned and bounced paths alike), an extending write reads
/// back with zeros before it.
#[test]
fn direct_file_edges() {
    let dir = tempdir();
    if !direct_supported(dir.path()) {
        return;
    }
    let path = dir.path().join("raw.bin");
    let f = DirectFile::open(&path, true, true).unwrap();
    let a = f.alignment();
    assert!(a.is_power_of_two() && a >= 512, "alignment {a}");
    eprintln!("O_DIRECT alignment in {}: {a}", dir.path().display());
    f.write_at(b"0123456789", 5000).unwrap();
    let len = f.len().unwrap();
    assert!(
        len >= 5010 && len <= 5010u64.next_multiple_of(a),
        "length {len} after writing up to 5010 (alignment {a})"
    );
    let mut back = vec![1u8; 5010];
    f.read_at(&mut back, 0).unwrap();
    assert!(back[..5000].iter().all(|&b| b == 0));
    assert_eq!(&back[5000..], b"0123456789");
    let mut past = [0u8; 2];
    let e = f.read_at(&mut past, len - 1).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    let mut aligned_past = AlignedBuf::zeroed(2 * a as usize);
    let e = f
        .read_at(&mut aligned_past, len.next_multiple_of(a) - a)
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    // Overwrite across the block boundary keeps the neighbours.
    f.write_at(b"ab", 4095).unwrap();
    let mut w = [0u8; 4];
    f.read_at(&mut w, 4094).unwrap();
    assert_eq!(&w, b"\0ab\0");
}

/// A file that refuses O_DIRECT (procfs here; tmpfs before Linux 6.6) is an error naming
/// the path, never a silent fall back to the page cache.
#[test]
fn refusal_names_the_path() {
    let p = Path::new("/proc/self/status");
    match Image::open_with(p, OpenMode::ReadOnly, CacheMode::Direct) {
        Err(e @ ImageError::DirectIo { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("/proc/self/status"), "{msg}");
            assert!(msg.contains("O_DIRECT"), "{msg}");
        }
        Err(e) => panic!("expected a DirectIo error, got {e}"),
        Ok(_) => panic!("procfs accepted O_DIRECT"),
    }
}

/// `island image --cache direct`: the flag works before or after the subcommand, and the
/// result is a clean image with the written bytes.
#[test]
fn cli_cache_direct() {
    let dir = tempdir();
    if !direct_supported(dir.path()) {
        return;
    }
    let img = dir.path().join("cli.qcow2");
    let input = dir.path().join("in.bin");
    let data = random_bytes(&mut rng(5), 10_000);
    std::fs::write(&input, &data).unwrap();
    let (i, n) = (img.to_str().unwrap(), input.to_str().unwrap());
    ok(&["image", "--cache", "direct", "create", i, "1M"]);
    ok(&["image", "write", i, "4095", n, "--cache", "direct"]);
    ok(&["image", "--cache", "direct", "snapshot", "create", i, "s1"]);
    let listed = ok(&["image", "--cache", "direct", "snapshot", "list", i]);
    assert!(listed.contains("s1"), "{listed}");
    assert_check_clean(&img);
    let mut want = vec![0u8; 1 << 20];
    want[4095..4095 + data.len()].copy_from_slice(&data);
    let raw = dir.path().join("cli.raw");
    std::fs::write(&raw, &want).unwrap();
    assert!(compare_with_raw(&img, &raw), "qemu-img compare");
}

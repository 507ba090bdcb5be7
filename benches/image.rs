//! Image engine throughput on a fully allocated image: sequential and random 4 KiB and
//! 64 KiB reads and writes, snapshot create+delete (O(allocated clusters) in refcount
//! updates), and changed-range enumeration after 1 % random writes.
//!
//! `ISLAND_BENCH_SIZE` sets the image size in MiB (default 256; the figure is
//! 1024). The image lives in a tempdir on the page cache like QEMU's `-t writeback`;
//! `ISLAND_BENCH_CACHE=direct` runs the same benchmarks with O_DIRECT (`-t none`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use island::image::{AlignedBuf, CacheMode, CreateOptions, Image};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;

fn image_size() -> u64 {
    let mib: u64 = std::env::var("ISLAND_BENCH_SIZE")
        .ok()
        .map(|s| s.parse().expect("ISLAND_BENCH_SIZE is a number of MiB"))
        .unwrap_or(256);
    mib << 20
}

fn cache_mode() -> CacheMode {
    match std::env::var("ISLAND_BENCH_CACHE").as_deref() {
        Ok("direct") => CacheMode::Direct,
        Ok("writeback") | Err(_) => CacheMode::Writeback,
        Ok(m) => panic!("ISLAND_BENCH_CACHE must be writeback or direct, not {m}"),
    }
}

/// A fully allocated image: every cluster written once with non-zero data.
fn allocated_image(dir: &std::path::Path, size: u64) -> Image {
    let img = Image::create_with(
        dir.join("bench.qcow2"),
        &CreateOptions {
            size,
            cluster_size: 65536,
        },
        cache_mode(),
    )
    .expect("create bench image");
    let mut rng = StdRng::seed_from_u64(1);
    let mut buf = vec![0u8; 1 << 20];
    rng.fill(&mut buf[..]);
    for off in (0..size).step_by(buf.len()) {
        let n = (size - off).min(buf.len() as u64) as usize;
        img.write_at(&buf[..n], off).expect("fill");
    }
    img.flush().expect("flush");
    img
}

fn io(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let size = image_size();
    let img = allocated_image(dir.path(), size);
    let mut rng = StdRng::seed_from_u64(2);
    let mut g = c.benchmark_group("image_io");
    for bs in [4096usize, 65536] {
        g.throughput(Throughput::Bytes(bs as u64));
        let blocks = size / bs as u64;
        // Page-aligned, as QEMU's buffers are: O_DIRECT then needs no bounce copy.
        let mut buf = AlignedBuf::zeroed(bs);
        buf.fill(0x5a);
        let mut next = 0u64;
        g.bench_function(BenchmarkId::new("seq_read", bs), |b| {
            b.iter(|| {
                img.read_at(&mut buf, next * bs as u64).unwrap();
                next = (next + 1) % blocks;
                black_box(&buf);
            })
        });
        g.bench_function(BenchmarkId::new("rand_read", bs), |b| {
            b.iter(|| {
                let at = rng.random_range(0..blocks) * bs as u64;
                img.read_at(&mut buf, at).unwrap();
                black_box(&buf);
            })
        });
        g.bench_function(BenchmarkId::new("seq_write", bs), |b| {
            b.iter(|| {
                img.write_at(&buf, next * bs as u64).unwrap();
                next = (next + 1) % blocks;
            })
        });
        g.bench_function(BenchmarkId::new("rand_write", bs), |b| {
            b.iter(|| {
                let at = rng.random_range(0..blocks) * bs as u64;
                img.write_at(&buf, at).unwrap();
            })
        });
    }
    g.finish();
    img.close().unwrap();
}

fn snapshots(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let size = image_size();
    let img = allocated_image(dir.path(), size);
    let mut g = c.benchmark_group("image_snapshot");
    g.sample_size(10);
    g.bench_function(
        BenchmarkId::new("create_delete", format!("{}MiB", size >> 20)),
        |b| {
            b.iter(|| {
                img.create_snapshot("bench").unwrap();
                img.delete_snapshot("bench").unwrap();
            })
        },
    );

    // 1 % of the clusters rewritten (4 KiB each) since snapshot "base".
    img.create_snapshot("base").unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let clusters = size / 65536;
    for _ in 0..clusters / 100 {
        let at = rng.random_range(0..clusters) * 65536;
        img.write_at(&[7u8; 4096], at).unwrap();
    }
    g.sample_size(50);
    g.bench_function(
        BenchmarkId::new("changed_ranges_1pct", format!("{}MiB", size >> 20)),
        |b| b.iter(|| black_box(img.changed_ranges("base", None).unwrap())),
    );
    g.finish();
    img.close().unwrap();
}

criterion_group!(benches, io, snapshots);
criterion_main!(benches);

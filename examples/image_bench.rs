//! Bench driver matching `qemu-img bench`: `DEPTH` threads issue `COUNT` requests of
//! `SIZE` bytes in total, request i at offset `(i * STEP) % image size`, like qemu-img
//! bench's `-S` step. With STEP an odd multiple of SIZE the pattern visits every block in a
//! scattered order (random-like I/O) on the same image qemu is measured on.
//!
//! Usage: image_bench PATH read|write DEPTH COUNT SIZE STEP [writeback|direct]
//!   → prints "iops N seconds S". The cache mode (default writeback) matches qemu-img
//!   bench's `-t`; buffers are page-aligned like QEMU's, so O_DIRECT needs no bounce copy.

use island::image::{AlignedBuf, CacheMode, Image, OpenMode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 7 || args.len() == 8,
        "usage: image_bench PATH read|write DEPTH COUNT SIZE STEP [writeback|direct]"
    );
    let cache = match args.get(7).map(String::as_str) {
        None | Some("writeback") => CacheMode::Writeback,
        Some("direct") => CacheMode::Direct,
        Some(m) => anyhow::bail!("cache mode must be writeback or direct, not {m}"),
    };
    let write = match args[2].as_str() {
        "read" => false,
        "write" => true,
        m => anyhow::bail!("mode must be read or write, not {m}"),
    };
    let depth: u64 = args[3].parse()?;
    let count: u64 = args[4].parse()?;
    let size: u64 = args[5].parse()?;
    let step: u64 = args[6].parse()?;
    let mode = if write {
        OpenMode::ReadWrite
    } else {
        OpenMode::ReadOnly
    };
    let img = Image::open_with(&args[1], mode, cache)?;
    let blocks = img.size() / size;
    anyhow::ensure!(blocks > 0, "image smaller than one request");
    let next = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..depth {
            s.spawn(|| -> anyhow::Result<()> {
                let mut buf = AlignedBuf::zeroed(size as usize);
                buf.fill(0xa5);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok(());
                    }
                    let at = (i * step) % (blocks * size);
                    if write {
                        img.write_at(&buf, at)?;
                    } else {
                        img.read_at(&mut buf, at)?;
                    }
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    img.close()?;
    println!("iops {:.0} seconds {:.3}", count as f64 / secs, secs);
    Ok(())
}

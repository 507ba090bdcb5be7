//! Helpers shared by the integration tests: seeded randomness, the qemu tools used as the
//! qcow2 oracle, and in-memory storages for the engine.

pub mod cli;
pub mod conformance;
pub mod kill;
pub mod memfile;
pub mod qemu;

use bytes::Bytes;
use island::image::{CreateOptions, Image};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;

/// One tempdir per test, so tests never see each other's files and parallel runs are safe.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("island-it-")
        .tempdir()
        .expect("create tempdir")
}

/// Seeds for a randomized test: `ISLAND_SEED=N` pins one (to replay a failure), otherwise
/// `count` fixed seeds derived from `base` so runs are reproducible.
pub fn seeds(base: u64, count: u64) -> Vec<u64> {
    match std::env::var("ISLAND_SEED") {
        Ok(s) => vec![s.parse().expect("ISLAND_SEED must be a u64")],
        Err(_) => (0..count)
            .map(|i| base.wrapping_mul(1_000_003) + i)
            .collect(),
    }
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Random bytes; every test write carries fresh data so a misplaced cluster shows up.
pub fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

pub fn options(size: u64, cluster_size: u32) -> CreateOptions {
    CreateOptions { size, cluster_size }
}

/// Creates an Island image in `dir` and returns it with its path.
pub fn create_image(
    dir: &Path,
    name: &str,
    size: u64,
    cluster_size: u32,
) -> (Image, std::path::PathBuf) {
    let path = dir.join(name);
    let img = Image::create(&path, &options(size, cluster_size))
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    (img, path)
}

/// The whole active layer.
pub fn read_active(img: &Image) -> Vec<u8> {
    let mut buf = vec![0u8; usize::try_from(img.size()).expect("size fits usize")];
    img.read_at(&mut buf, 0).expect("read active layer");
    buf
}

/// The whole guest view of snapshot `name`, `len` bytes long.
pub fn read_snapshot(img: &Image, name: &str, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; usize::try_from(len).expect("size fits usize")];
    img.read_snapshot_at(name, &mut buf, 0)
        .unwrap_or_else(|e| panic!("read snapshot {name}: {e}"));
    buf
}

/// Asserts two guest images are equal, naming the first differing offset instead of
/// dumping megabytes.
#[track_caller]
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let end = (i + 16).min(got.len());
        panic!(
            "{what}: first difference at byte {i} (0x{i:x}): got {:02x?}, want {:02x?}",
            &got[i..end],
            &want[i..end]
        );
    }
}

/// Deterministic pseudo-random bytes for `seed` (xorshift), so failures reproduce.
pub fn pseudo_random(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

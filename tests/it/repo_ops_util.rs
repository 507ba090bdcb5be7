//! Helpers for the copy / forget / repair tests: running the built `island` binary, seeded
//! volumes, and hand-written repository objects built from `format-spec/repository.md`
//! (envelopes and refs segments), which double as a check that the spec is exact.

pub use crate::common::cli::{island, island_cmd, ok, ok_json};
use rand::{RngCore, SeedableRng};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const CLUSTER: u64 = 64 << 10;

/// Runs `island ARGS --json`, requires exit `code`, returns the JSON on stdout.
#[track_caller]
pub fn json_with_code(args: &[&str], code: i32) -> Value {
    let out = island(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "island {args:?}: expected exit {code}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("island {args:?}: bad JSON ({e}): {stdout}"))
}

#[track_caller]
pub fn u64_field(v: &Value, name: &str) -> u64 {
    v.get(name)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("field {name} missing or not an unsigned integer in {v}"))
}

#[track_caller]
pub fn str_field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("field {name} missing or not a string in {v}"))
}

/// String items of a JSON list field.
pub fn str_list(v: &Value, name: &str) -> Vec<String> {
    v.get(name)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("field {name} missing or not a list in {v}"))
        .iter()
        .map(|x| x.as_str().expect("string item").to_string())
        .collect()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A volume of `size` bytes: the first `random` bytes random (seeded), the rest zeros.
pub fn write_volume(path: &Path, size: u64, random: u64, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; size as usize];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data[..random as usize]);
    std::fs::write(path, &data).expect("write the volume");
    data
}

/// Overwrite `clusters` 64 KiB clusters with fresh random data (seeded) and save.
pub fn change(path: &Path, data: &mut [u8], clusters: &[u64], seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for c in clusters {
        let at = (c * CLUSTER) as usize;
        let end = (at + CLUSTER as usize).min(data.len());
        rng.fill_bytes(&mut data[at..end]);
    }
    std::fs::write(path, &*data).expect("rewrite the volume");
}

/// Back up `vol` to `repo` as `volume`; returns the JSON report.
pub fn backup(repo: &str, volume: &str, vol: &Path) -> Value {
    ok_json(&[
        "backup",
        "--repo",
        repo,
        "--volume",
        volume,
        s(vol),
        "--json",
    ])
}

/// Restore `volume/id` from `repo` and compare with `want` byte for byte.
#[track_caller]
pub fn assert_restores(repo: &str, volume: &str, id: &str, want: &[u8], scratch: &Path) {
    let out = scratch.join(format!("restore-{id}.raw"));
    ok(&[
        "restore",
        "--repo",
        repo,
        "--volume",
        volume,
        "--snapshot",
        id,
        s(&out),
    ]);
    let got = std::fs::read(&out).expect("read the restored file");
    assert_eq!(got.len(), want.len(), "{repo} {volume}/{id}: size differs");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{repo} {volume}/{id}: first difference at byte {at}");
    }
    std::fs::remove_file(&out).expect("remove the restored file");
}

/// `snapshots --json` of one volume.
pub fn snapshots(repo: &str, volume: &str) -> Vec<Value> {
    ok_json(&["snapshots", "--repo", repo, "--volume", volume, "--json"])
        .as_array()
        .expect("snapshots --json is a list")
        .clone()
}

/// Every file under `dir/sub` (recursive), for looking at a directory repository.
pub fn files_under(dir: &Path, sub: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.join(sub)];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let e = e.expect("dir entry");
            if e.file_type().expect("file type").is_dir() {
                dirs.push(e.path());
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// An envelope (spec §3.5): magic ‖ version 1 ‖ 0 ‖ JSON length ‖ JSON ‖ crc32c.
pub fn envelope(magic: &[u8; 4], json: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(json).expect("encode JSON");
    let mut out = Vec::new();
    out.extend_from_slice(magic);
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The JSON inside an envelope file.
pub fn open_envelope(bytes: &[u8]) -> Value {
    let n = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    serde_json::from_slice(&bytes[12..12 + n]).expect("envelope JSON")
}

/// A refs segment (spec §3.3) committed by `commit` with records (id, delta, flags).
pub fn refs_segment(commit: &str, mut records: Vec<([u8; 32], i32, u32)>) -> Vec<u8> {
    records.sort_by_key(|r| r.0);
    let meta = serde_json::to_vec(&serde_json::json!({
        "commit": commit, "supersedes": [], "packs": [], "dead_packs": []
    }))
    .expect("meta JSON");
    let mut fanout = [0u32; 257];
    for r in &records {
        for f in fanout.iter_mut().skip(r.0[0] as usize + 1) {
            *f += 1;
        }
    }
    let rec = |r: &([u8; 32], i32, u32)| {
        let mut v = r.0.to_vec();
        v.extend_from_slice(&r.1.to_le_bytes());
        v.extend_from_slice(&r.2.to_le_bytes());
        v
    };
    let mut head = Vec::new();
    head.extend_from_slice(b"ISRF");
    head.extend_from_slice(&1u16.to_le_bytes());
    head.extend_from_slice(&0u16.to_le_bytes());
    head.extend_from_slice(&(records.len() as u32).to_le_bytes());
    head.extend_from_slice(&40u32.to_le_bytes());
    head.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    let mut rest = Vec::new();
    for f in fanout {
        rest.extend_from_slice(&f.to_le_bytes());
    }
    for b in 0..256usize {
        let mut crc = 0u32;
        for r in &records[fanout[b] as usize..fanout[b + 1] as usize] {
            crc = crc32c::crc32c_append(crc, &rec(r));
        }
        rest.extend_from_slice(&crc.to_le_bytes());
    }
    rest.extend_from_slice(&meta);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head), &rest);
    let mut out = head;
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&rest);
    for r in &records {
        out.extend_from_slice(&rec(r));
    }
    out
}

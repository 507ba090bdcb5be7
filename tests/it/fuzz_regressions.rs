//! Replays every input the fuzzers found (`fuzz/regressions/<decoder>/…`, minimized by
//! `fuzz/run-all.sh`) through the same pure decoder the fuzz target calls, so a fixed
//! parser bug stays fixed in ordinary CI, without nightly or cargo-fuzz. Each decoder
//! panics on a crash and on a failed round trip, so running it is the assertion.

use std::path::Path;

/// Decoder of each regression directory (named as the fuzz targets' decoders).
fn decoder(name: &str) -> Option<fn(&[u8])> {
    use island::{image::fuzzing as img, repo::fuzzing as repo, service::fuzzing as svc};
    Some(match name {
        "config" => repo::config,
        "root" => repo::root,
        "tombstone" => repo::tombstone,
        "lease" => repo::lease,
        "intent" => repo::intent,
        "gc_marker" => repo::gc_marker,
        "checkpoint" => repo::checkpoint,
        "frame" => repo::frame,
        "pack" => repo::pack,
        "index_segment" => repo::index_segment,
        "refs_segment" => repo::refs_segment,
        "merkle_table" => repo::merkle_table,
        "header" => img::header,
        "snapshot_table" => img::snapshot_table,
        "tables" => img::tables,
        "image_open" => img::open,
        "operation" => svc::operation,
        "volume" => svc::volume,
        "last_check" => svc::last_check,
        _ => return None,
    })
}

#[test]
fn fuzz_regressions_decode_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for dir in std::fs::read_dir(&root).expect("fuzz/regressions exists") {
        let dir = dir.expect("read fuzz/regressions").path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let decode = decoder(name).unwrap_or_else(|| panic!("no decoder for {}", dir.display()));
        for f in std::fs::read_dir(&dir).expect("read regression dir") {
            let f = f.expect("regression file").path();
            let bytes = std::fs::read(&f).expect("read regression file");
            eprintln!("replaying {}", f.display());
            decode(&bytes);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no regression files under {}", root.display());
}

//! Sorted segments (`index/<id>` "ISIX" and `refs/<id>` "ISRF"): head with a 256-bucket
//! fanout and per-bucket crcs, JSON meta, fixed-size records. The fuzz input replaces one
//! of the snapshot's segments whole; unless the mode byte's bit 0 is set, the head crc
//! (bytes 20..24: crc32c of bytes 0..20 ‖ fanout ‖ bucket crcs ‖ meta) and every bucket
//! crc the fanout makes computable are recomputed, per the spec's layout.
#![no_main]
use island_fuzz::e2e::{exercise, keys, replace, repo_with_snapshot, runtime};
use island_fuzz::fix_segment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    runtime().block_on(async {
        let (store, id) = repo_with_snapshot().await;
        let mut segs = keys(&store, "index/").await;
        segs.extend(keys(&store, "refs/").await);
        let Some(key) = segs.get(usize::from(mode >> 1) % segs.len().max(1)) else {
            return;
        };
        let mut seg = rest.to_vec();
        if mode & 1 == 0 {
            fix_segment(&mut seg);
        }
        replace(&store, key, seg).await;
        exercise(store, &id, true).await;
    });
});

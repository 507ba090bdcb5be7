//! Blob frames ("ISBF" header ‖ payload ‖ crc32c), the unit inside packs: the fuzz input
//! overwrites one frame in place (same offset and length, so the pack footer and index
//! still point at it), then the frame's trailing crc is recomputed unless the mode byte's
//! bit 0 is set. Restore and `check --read-data` then decode it: codec, lengths, lz4
//! payload, BLAKE3.
#![no_main]
use island_fuzz::e2e::{exercise, fix_trailing_crc, keys, replace, repo_with_snapshot, runtime};
use libfuzzer_sys::fuzz_target;

const TRAILER: usize = 24;
const ENTRY: usize = 48;

/// (offset, length) of every frame in `pack`, from its footer.
fn frames(pack: &[u8]) -> Vec<(usize, usize)> {
    let Some(t) = pack.len().checked_sub(TRAILER) else {
        return Vec::new();
    };
    let word = |at: usize| {
        u32::from_le_bytes([pack[at], pack[at + 1], pack[at + 2], pack[at + 3]]) as usize
    };
    let (count, footer) = (word(t + 8), word(t + 12));
    (0..count)
        .filter_map(|i| {
            let e = footer + i * ENTRY;
            (e + ENTRY <= t).then(|| (word(e + 36), word(e + 40)))
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    runtime().block_on(async {
        let (store, id) = repo_with_snapshot().await;
        let mut all = Vec::new();
        for key in keys(&store, "packs/").await {
            let pack = store.get(&key).await.expect("get pack").to_vec();
            for f in frames(&pack) {
                all.push((key.clone(), f));
            }
        }
        let Some((key, (offset, len))) =
            all.get(usize::from(mode >> 1) % all.len().max(1)).cloned()
        else {
            return;
        };
        let mut pack = store.get(&key).await.expect("get pack").to_vec();
        let Some(frame) = pack.get_mut(offset..offset + len) else {
            return;
        };
        let n = rest.len().min(frame.len());
        frame[..n].copy_from_slice(&rest[..n]);
        if mode & 1 == 0 {
            fix_trailing_crc(frame);
        }
        replace(&store, &key, pack).await;
        exercise(store, &id, true).await;
    });
});

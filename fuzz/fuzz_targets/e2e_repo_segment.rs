//! Sorted segments (`index/<id>` "ISIX" and `refs/<id>` "ISRF"): head with a 256-bucket
//! fanout and per-bucket crcs, JSON meta, fixed-size records. The fuzz input replaces one
//! of the snapshot's segments whole; unless the mode byte's bit 0 is set, the head crc
//! (bytes 20..24: crc32c of bytes 0..20 ‖ fanout ‖ bucket crcs ‖ meta) and every bucket
//! crc the fanout makes computable are recomputed, per the spec's layout.
#![no_main]
use island_fuzz::e2e::{exercise, keys, replace, repo_with_snapshot, runtime};
use libfuzzer_sys::fuzz_target;

const FANOUT_AT: usize = 24;
const BUCKET_CRCS_AT: usize = FANOUT_AT + 257 * 4;
const HEAD: usize = BUCKET_CRCS_AT + 256 * 4;

fn word(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

fn fix_segment(mut seg: Vec<u8>) -> Vec<u8> {
    if seg.len() < HEAD {
        return seg;
    }
    let record = word(&seg, 12);
    let meta_len = word(&seg, 16);
    let records_at = HEAD.saturating_add(meta_len);
    for b in 0..256 {
        let (first, end) = (
            word(&seg, FANOUT_AT + b * 4),
            word(&seg, FANOUT_AT + (b + 1) * 4),
        );
        let range = first.checked_mul(record).and_then(|s| {
            Some(records_at.checked_add(s)?..records_at.checked_add(end.checked_mul(record)?)?)
        });
        if let Some(r) = range.filter(|r| r.start <= r.end && r.end <= seg.len()) {
            let crc = crc32c::crc32c(&seg[r]);
            seg[BUCKET_CRCS_AT + b * 4..BUCKET_CRCS_AT + b * 4 + 4]
                .copy_from_slice(&crc.to_le_bytes());
        }
    }
    let meta_end = records_at.min(seg.len());
    let mut covered = seg[..20].to_vec();
    covered.extend_from_slice(&seg[FANOUT_AT..meta_end]);
    let crc = crc32c::crc32c(&covered);
    seg[20..24].copy_from_slice(&crc.to_le_bytes());
    seg
}

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
        let seg = if mode & 1 == 0 {
            fix_segment(rest.to_vec())
        } else {
            rest.to_vec()
        };
        replace(&store, key, seg).await;
        exercise(store, &id, true).await;
    });
});

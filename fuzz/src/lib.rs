//! Shared harness of the fuzz targets.
//!
//! Fast targets turn the input into one object (fixing up checksums and ids as a mode byte
//! or the structured input says, so mutations reach the parsing behind them) and hand it
//! to the pure decoder in `island::{repo,image,service}::fuzzing`; the decoder panics on a
//! finding, including a failed round trip. The slow end-to-end targets (`e2e_*`, helpers
//! in [`e2e`]) run whole repositories over an in-memory store instead.
//!
//! With `ISLAND_FUZZ_DUMP=DIR` in the environment, a target also writes the object it built
//! to `DIR/<decoder>` before decoding it: `run-all.sh` turns a crashing fuzz input into the
//! regression file `fuzz/regressions/<decoder>/…` that `tests/it/fuzz_regressions.rs`
//! replays through the same decoder.

pub mod e2e;
pub mod qcow2;
pub mod structured;

/// Hands `object` to `decode`, after writing it for `run-all.sh` when asked to.
pub fn run(decoder: &str, decode: fn(&[u8]), object: &[u8]) {
    if let Some(dir) = std::env::var_os("ISLAND_FUZZ_DUMP") {
        let _ = std::fs::write(std::path::Path::new(&dir).join(decoder), object);
    }
    decode(object);
}

/// Builds a checked envelope (magic ‖ version u16 ‖ reserved u16 ‖ length u32 ‖ body ‖
/// crc32c u32), the wrapper of every JSON object.
pub fn envelope(magic: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    out.extend_from_slice(magic);
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Turns fuzz input into an envelope object: first byte = mode.
/// bit 2 set: the rest is the JSON body of a well-formed envelope with `magic`;
/// otherwise the rest is the raw object, with its length field (bit 0) and trailing crc
/// (bit 1) recomputed.
pub fn envelope_object(magic: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let Some((&mode, rest)) = data.split_first() else {
        return Vec::new();
    };
    if mode & 4 != 0 {
        return envelope(magic, rest);
    }
    let mut obj = rest.to_vec();
    if obj.len() >= 16 {
        if mode & 1 != 0 {
            let len = (obj.len() - 16) as u32;
            obj[8..12].copy_from_slice(&len.to_le_bytes());
        }
        if mode & 2 != 0 {
            fix_trailing_crc(&mut obj);
        }
    }
    obj
}

/// Rewrites the last 4 bytes as the crc32c of everything before them.
pub fn fix_trailing_crc(obj: &mut [u8]) {
    if obj.len() >= 4 {
        let end = obj.len() - 4;
        let crc = crc32c::crc32c(&obj[..end]);
        obj[end..].copy_from_slice(&crc.to_le_bytes());
    }
}

fn word(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

/// Blob frame fix-ups (format-spec §3.1), by mode bits: 0 stored length from the frame
/// size, 1 the id as BLAKE3 of the payload's plain bytes (raw, or lz4 decompressed to the
/// plain length), 2 the trailing crc.
pub fn fix_frame(mode: u8, frame: &mut [u8]) {
    if frame.len() < 52 {
        return;
    }
    if mode & 1 != 0 {
        let n = (frame.len() - 52) as u32;
        frame[12..16].copy_from_slice(&n.to_le_bytes());
    }
    if mode & 2 != 0 {
        let payload = &frame[48..frame.len() - 4];
        let plain = match frame[5] {
            1 => lz4_flex::block::decompress(payload, word(frame, 8).min(4 << 20)).ok(),
            _ => Some(payload.to_vec()),
        };
        if let Some(plain) = plain {
            let id = blake3::hash(&plain);
            frame[16..48].copy_from_slice(id.as_bytes());
        }
    }
    if mode & 4 != 0 {
        fix_trailing_crc(frame);
    }
}

/// Pack trailer length (format-spec §3.2).
pub const PACK_TRAILER: usize = 24;

/// Pack fix-ups by mode bits: 0 the footer crc over the range the trailer names, 1 the
/// trailer's own crc.
pub fn fix_pack(mode: u8, pack: &mut [u8]) {
    let Some(t) = pack.len().checked_sub(PACK_TRAILER) else {
        return;
    };
    if mode & 1 != 0 {
        let footer_at = word(pack, t + 12);
        if footer_at <= t {
            let crc = crc32c::crc32c(&pack[footer_at..t]);
            pack[t + 16..t + 20].copy_from_slice(&crc.to_le_bytes());
        }
    }
    if mode & 2 != 0 {
        let crc = crc32c::crc32c(&pack[t..t + 20]);
        pack[t + 20..t + 24].copy_from_slice(&crc.to_le_bytes());
    }
}

const FANOUT_AT: usize = 24;
const BUCKET_CRCS_AT: usize = FANOUT_AT + 257 * 4;
/// Segment head length (format-spec §3.3).
pub const SEGMENT_HEAD: usize = BUCKET_CRCS_AT + 256 * 4;

/// Segment fix-ups (format-spec §3.3): every bucket crc the fanout makes computable, then
/// the head crc (bytes 0..20 ‖ fanout ‖ bucket crcs ‖ meta).
pub fn fix_segment(seg: &mut [u8]) {
    if seg.len() < SEGMENT_HEAD {
        return;
    }
    let record = word(seg, 12);
    let meta_len = word(seg, 16);
    let records_at = SEGMENT_HEAD.saturating_add(meta_len);
    for b in 0..256 {
        let (first, end) = (
            word(seg, FANOUT_AT + b * 4),
            word(seg, FANOUT_AT + (b + 1) * 4),
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
}

/// A fast target over an envelope decoder: first input byte = mode of [`envelope_object`].
#[macro_export]
macro_rules! envelope_target {
    ($magic:expr, $decoder:literal, $decode:path) => {
        libfuzzer_sys::fuzz_target!(|data: &[u8]| {
            let obj = $crate::envelope_object($magic, data);
            $crate::run($decoder, $decode, &obj);
        });
    };
}

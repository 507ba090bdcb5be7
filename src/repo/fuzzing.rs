//! The repository's decoders as pure functions of bytes, for the fuzz targets (`fuzz/`)
//! and the regression tests that replay what they found (`tests/fuzz_regressions.rs`).
//! Not an API: no store, no runtime, and each function panics only when the decoder did
//! (a finding) or when its round-trip property fails (also a finding).
//!
//! Round trip: whatever decodes is re-encoded with the writer's own encoder and must give
//! the same bytes, or, where the format allows several spellings of one value, the
//! canonical form documented at each function, which must decode to the same value.

use super::format::chunk::{decode_frame, Frame};
use super::format::config::{check_chunk_size, Config};
use super::format::envelope::{self, MAGIC_GC, MAGIC_INTENT, MAGIC_LEASE};
use super::format::manifest::{root_key, tombstone_key, SnapshotManifest, Tombstone};
use super::format::marker::GcMarker;
use super::format::pack::{parse_footer, parse_trailer, PackWriter, TRAILER_SIZE};
use super::format::segment::{self, INDEX_MAGIC, INDEX_RECORD, REFS_MAGIC, REFS_RECORD};
use super::format::table::{self, Geometry};
use super::protocol::checkpoint::Checkpoint;
use super::protocol::lease::LeaseBody;
use super::tree::TreeWriter;
use super::writer::Intent;
use super::RepoError;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

/// Checks an envelope decoder's round trip: the decoded value sealed again decodes to
/// itself, and gives the input bytes back when the input's JSON is the canonical one
/// (serde_json's compact output of the decoded value: field order, no whitespace, no
/// unknown fields; other spellings of the same value are accepted, not reproduced).
pub fn envelope_round_trip<T, E>(
    magic: &[u8; 4],
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, E>,
) where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let Ok(v) = decode(bytes) else { return };
    let sealed = envelope::seal(magic, &v);
    let Ok(again) = decode(&sealed) else {
        panic!("a decoded envelope, sealed again, does not decode");
    };
    assert_eq!(again, v, "envelope round trip changed the value");
    let canonical = serde_json::to_vec(&v).expect("serializes");
    if bytes.get(12..bytes.len() - 4) == Some(&canonical[..]) {
        assert!(
            sealed == bytes,
            "canonical envelope re-encodes to other bytes"
        );
    }
}

/// The JSON string field `field` of an envelope's body, if the body parses (used to derive
/// the key a keyed decoder expects, so the fuzzer reaches the checks behind the key check).
fn body_field(bytes: &[u8], field: &str) -> String {
    let body = bytes
        .get(12..bytes.len().saturating_sub(4))
        .unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get(field)?.as_str().map(String::from))
        .unwrap_or_default()
}

/// `config` ("ISCF").
pub fn config(bytes: &[u8]) {
    envelope_round_trip(envelope::MAGIC_CONFIG, bytes, Config::decode);
}

/// A root manifest ("ISRT"), stored under the key its body names.
pub fn root(bytes: &[u8]) {
    let key = root_key(&body_field(bytes, "volume"), &body_field(bytes, "id"));
    envelope_round_trip(envelope::MAGIC_ROOT, bytes, |b| {
        let m = SnapshotManifest::decode(&key, b)?;
        m.top_ids()?;
        Ok::<_, RepoError>(m)
    });
}

/// A tombstone ("ISTB"), stored under generation 0 of the snapshot its body names.
pub fn tombstone(bytes: &[u8]) {
    let key = tombstone_key(&body_field(bytes, "volume"), &body_field(bytes, "id"));
    envelope_round_trip(envelope::MAGIC_TOMBSTONE, bytes, |b| {
        Tombstone::decode(&key, b)
    });
}

/// A lease generation ("ISLS").
pub fn lease(bytes: &[u8]) {
    envelope_round_trip(MAGIC_LEASE, bytes, |b| {
        envelope::open::<LeaseBody>(MAGIC_LEASE, "leases/x/0000000000", b)
    });
}

/// A writer's intent ("ISIN").
pub fn intent(bytes: &[u8]) {
    envelope_round_trip(MAGIC_INTENT, bytes, |b| Intent::decode("intents/x", b));
}

/// A gc marker ("ISGC").
pub fn gc_marker(bytes: &[u8]) {
    envelope_round_trip(MAGIC_GC, bytes, |b| GcMarker::decode("gc/0000000000", b));
}

/// A backup checkpoint ("ISCP"); a valid one's tree state is also resumed against its own
/// job geometry, as a re-run of the same job does.
pub fn checkpoint(bytes: &[u8]) {
    envelope_round_trip(envelope::MAGIC_CHECKPOINT, bytes, |b| {
        let ck = Checkpoint::decode("checkpoints/x/000000", b)?;
        if check_chunk_size(ck.job.chunk_size).is_ok() {
            let geo = Geometry::new(ck.job.size, ck.job.chunk_size);
            let _ = TreeWriter::resume(geo, &ck.tree);
        }
        Ok::<_, RepoError>(ck)
    });
}

/// A blob frame ("ISBF"), fully verified (crc and BLAKE3). Canonical form: the frame
/// Island's encoder writes for the decoded blob (lz4 only when strictly smaller); a raw
/// frame the encoder would also store raw re-encodes to the same bytes, and every decoded
/// frame re-encodes to one that decodes to the same blob.
pub fn frame(bytes: &[u8]) {
    let Ok((id, kind, plain)) = decode_frame("frame", bytes, None) else {
        return;
    };
    let again = Frame::encode_with_id(kind, &plain, id);
    let back = decode_frame("frame", &again.bytes, Some(id)).expect("re-encoded frame decodes");
    assert_eq!((back.0, back.1, &back.2), (id, kind, &plain));
    if bytes[5] == 0 && again.bytes[5] == 0 {
        assert!(again.bytes == bytes, "raw frame re-encodes to other bytes");
    }
}

/// A whole pack: trailer, footer, and every frame the footer lists (decoded against the
/// id, kind and plain length the footer gives). Round trip: a pack that parses is rebuilt
/// byte for byte by the pack writer from its frames and footer entries.
pub fn pack(bytes: &[u8]) {
    let Some(t_at) = bytes.len().checked_sub(TRAILER_SIZE) else {
        return;
    };
    let Ok((count, off, crc)) = parse_trailer("pack", &bytes[t_at..]) else {
        return;
    };
    let Some(footer) = bytes.get(off as usize..t_at) else {
        return;
    };
    let Ok(entries) = parse_footer("pack", footer, count, off, crc) else {
        return;
    };
    let mut w = PackWriter::new();
    for e in &entries {
        let start = e.offset as usize;
        let f = &bytes[start..start + e.frame_len as usize];
        let _ = decode_frame("pack", f, Some(e.id));
        w.push(&Frame {
            id: e.id,
            kind: e.kind,
            plain_len: e.plain_len,
            bytes: f.to_vec(),
        });
    }
    let (again, again_entries) = w.finish();
    assert_eq!(again_entries, entries);
    assert!(again == bytes, "pack re-encodes to other bytes");
}

/// A whole segment (`magic` "ISIX" or "ISRF"): head, meta, every bucket checked against its
/// crc, every record decoded and found again by the bucket lookup readers use. Canonical
/// form: Island's encoder output for the decoded records and meta (compact meta JSON);
/// any segment that decodes re-encodes to one that decodes to the same records and meta.
fn segment(magic: &[u8; 4], record: usize, bytes: &[u8]) {
    let Some(head) = bytes.get(..segment::HEAD_SIZE) else {
        return;
    };
    let Ok((h, meta_len, crc)) = segment::parse_head(magic, "segment", head) else {
        return;
    };
    let Some(meta) = bytes.get(segment::HEAD_SIZE..segment::HEAD_SIZE + meta_len as usize) else {
        return;
    };
    let Ok(h) = segment::finish_head(h, head, meta, crc) else {
        return;
    };
    let mut records = Vec::new();
    for b in 0..=255u8 {
        let r = h.bucket_range(b);
        let Some(bucket) = bytes.get(r.start as usize..r.end as usize) else {
            return;
        };
        if h.check_bucket(b, bucket).is_err() {
            return;
        }
        for rec in bucket.chunks_exact(record) {
            let id = if magic == INDEX_MAGIC {
                segment::decode_index_record(&h, rec).map(|(id, _)| id)
            } else {
                segment::decode_refs_record(&h, rec).map(|(id, _, _)| id)
            };
            let Ok(id) = id else { return };
            let found = segment::find_in_bucket(bucket, record, &id).count();
            assert!(
                found > 0,
                "record {id} of bucket {b} is not found by lookup"
            );
            records.push(rec.to_vec());
        }
    }
    let again = segment::encode(magic, record, records.clone(), &h.meta);
    let records_end = h.records_at as usize + records.len() * record;
    if serde_json::to_vec(&h.meta).ok().as_deref() == Some(meta) && records_end == bytes.len() {
        assert!(
            again == bytes,
            "canonical segment re-encodes to other bytes"
        );
    }
    let (h2, m2, c2) = segment::parse_head(magic, "segment", &again[..segment::HEAD_SIZE])
        .expect("re-encoded head parses");
    let meta2 = &again[segment::HEAD_SIZE..segment::HEAD_SIZE + m2 as usize];
    let h2 = segment::finish_head(h2, &again[..segment::HEAD_SIZE], meta2, c2)
        .expect("re-encoded head checks");
    assert_eq!(h2.meta, h.meta);
}

/// An index segment ("ISIX").
pub fn index_segment(bytes: &[u8]) {
    segment(INDEX_MAGIC, INDEX_RECORD, bytes);
}

/// A refcount-delta segment ("ISRF").
pub fn refs_segment(bytes: &[u8]) {
    segment(REFS_MAGIC, REFS_RECORD, bytes);
}

/// A Merkle table's plain bytes ("ISTT"), decoded without a known position (as gc's
/// revival does); round trip: re-encodes to the same bytes. A table that decodes holds
/// 1..=1024 entries (format-spec §3.4).
pub fn merkle_table(bytes: &[u8]) {
    let Ok(ids) = table::decode_any("table", bytes) else {
        return;
    };
    assert!(
        (1..=table::FANOUT as usize).contains(&ids.len()),
        "a table of {} entries decoded",
        ids.len()
    );
    assert!(
        table::encode(bytes[6], &ids) == bytes,
        "table re-encodes to other bytes"
    );
}

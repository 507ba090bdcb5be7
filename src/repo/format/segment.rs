//! Sorted segments: immutable tables of fixed-size records keyed by blob id, shared by the
//! index (`index/…`: blob id → pack location) and the refcount deltas (`refs/…`).
//!
//! A 256-bucket fanout on the id's first byte lets a lookup fetch one bucket with one
//! ranged GET; every bucket has its own crc32c so a ranged read is still checked.
//!
//! ```text
//!  0    4  magic ("ISIX" index, "ISRF" refs)
//!  4    2  version (1)        6 2 reserved (0)
//!  8    4  record count      12 4 record size (52 index, 40 refs)
//! 16    4  meta length       20 4 crc32c(bytes 0..20 ‖ fanout ‖ bucket crcs ‖ meta)
//! 24 1028  fanout: 257 × u32, fanout[b] = index of the first record whose id[0] ≥ b
//! 1052 1024 bucket crcs: 256 × crc32c(records of bucket b)
//! 2076  m  meta (JSON: commit marker key, superseded segments, pack names)
//! 2076+m   records sorted by id (ties keep insertion order)
//! ```

use crate::repo::{BlobId, BlobKind, RepoError};
use crate::store::ObjectStore;
use crate::Result;
use serde::{Deserialize, Serialize};

pub(crate) const INDEX_MAGIC: &[u8; 4] = b"ISIX";
pub(crate) const REFS_MAGIC: &[u8; 4] = b"ISRF";
const SEGMENT_VERSION: u16 = 1;
pub(crate) const HEAD_SIZE: usize = 24 + 257 * 4 + 256 * 4;
pub(crate) const INDEX_RECORD: usize = 52;
pub(crate) const REFS_RECORD: usize = 40;
const MAX_META: u32 = 64 << 20;

/// Segment metadata kept in JSON (small, human-inspectable).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SegmentMeta {
    /// Key whose existence commits this segment (a root, a tombstone or a gc marker).
    pub commit: String,
    /// Segments this one replaces (compaction); readers ignore them once this commits.
    #[serde(default)]
    pub supersedes: Vec<String>,
    /// Pack names referenced by index records (records hold an index into this list).
    #[serde(default)]
    pub packs: Vec<String>,
    /// (gc segments) packs this gc deleted or emptied by repacking.
    #[serde(default)]
    pub dead_packs: Vec<String>,
    /// Packs adopted from a checkpoint that the committing writer did not use (or, in a
    /// compacted gc segment, such packs carried over): gc deletes them once this segment's
    /// commit marker is older than `LEASE_TTL + SKEW` and no counted index segment names
    /// them (format-spec §12.2, "Unused adopted packs").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<String>,
}

/// Where a blob is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub pack: String,
    pub offset: u32,
    pub frame_len: u32,
    pub plain_len: u32,
    pub kind: BlobKind,
}

/// Parsed head of a segment: enough to fetch and check any bucket.
#[derive(Clone, Debug)]
pub(crate) struct SegmentHead {
    pub key: String,
    pub record_size: usize,
    /// Cumulative record counts: bucket `b` holds records `fanout[b]..fanout[b + 1]`
    /// (`fanout[256]` is the record count).
    pub fanout: Vec<u32>,
    pub bucket_crc: Vec<u32>,
    pub meta: SegmentMeta,
    pub records_at: u64,
}

impl SegmentHead {
    /// Byte range of bucket `b` within the object.
    pub(crate) fn bucket_range(&self, b: u8) -> std::ops::Range<u64> {
        let lo = self.fanout[b as usize] as u64 * self.record_size as u64;
        let hi = self.fanout[b as usize + 1] as u64 * self.record_size as u64;
        self.records_at + lo..self.records_at + hi
    }

    /// Check a fetched bucket against its crc, and that its records belong to it (id's
    /// first byte is `b`) in id order: lookups binary-search the bucket, so a misplaced
    /// record would be silently missed, and a missed refs record is a wrong count.
    pub(crate) fn check_bucket(&self, b: u8, bytes: &[u8]) -> Result<(), RepoError> {
        if crc32c::crc32c(bytes) != self.bucket_crc[b as usize] {
            return Err(RepoError::corrupt(
                &self.key,
                format!("bucket {b} crc32c mismatch"),
            ));
        }
        let mut prev: Option<&[u8]> = None;
        for r in bytes.chunks(self.record_size) {
            if r.len() != self.record_size || r[0] != b || prev.is_some_and(|p| p > &r[..32]) {
                return Err(RepoError::corrupt(
                    &self.key,
                    format!("bucket {b} holds records out of place or out of order"),
                ));
            }
            prev = Some(&r[..32]);
        }
        Ok(())
    }
}

/// Encode a segment from records (each `record_size` bytes, starting with the id).
pub(crate) fn encode(
    magic: &[u8; 4],
    record_size: usize,
    mut records: Vec<Vec<u8>>,
    meta: &SegmentMeta,
) -> Vec<u8> {
    records.sort_by(|a, b| a[..32].cmp(&b[..32]));
    let meta_json = serde_json::to_vec(meta).unwrap_or_default();
    let mut fanout = vec![0u32; 257];
    for r in &records {
        fanout[r[0] as usize + 1] += 1;
    }
    for b in 1..257 {
        fanout[b] += fanout[b - 1];
    }
    let mut bucket_crc = vec![0u32; 256];
    for (b, crc) in bucket_crc.iter_mut().enumerate() {
        let mut h = 0u32;
        for r in &records[fanout[b] as usize..fanout[b + 1] as usize] {
            h = crc32c::crc32c_append(h, r);
        }
        *crc = h;
    }
    let mut out = Vec::with_capacity(HEAD_SIZE + meta_json.len() + records.len() * record_size);
    out.extend_from_slice(magic);
    out.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&(record_size as u32).to_le_bytes());
    out.extend_from_slice(&(meta_json.len() as u32).to_le_bytes());
    let mut rest = Vec::with_capacity(2052 + meta_json.len());
    for f in &fanout {
        rest.extend_from_slice(&f.to_le_bytes());
    }
    for c in &bucket_crc {
        rest.extend_from_slice(&c.to_le_bytes());
    }
    rest.extend_from_slice(&meta_json);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out), &rest);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&rest);
    for r in &records {
        out.extend_from_slice(r);
    }
    out
}

/// Parse the fixed head (first [`HEAD_SIZE`] bytes); returns the head without meta and the
/// meta length still to be read.
pub(crate) fn parse_head(
    magic: &[u8; 4],
    key: &str,
    head: &[u8],
) -> Result<(SegmentHead, u32, u32), RepoError> {
    let bad = |r: String| RepoError::corrupt(key, r);
    if head.len() < HEAD_SIZE {
        return Err(bad(format!(
            "segment head of {} bytes is too short",
            head.len()
        )));
    }
    if &head[0..4] != magic {
        return Err(bad("segment magic mismatch".into()));
    }
    let rd = |o: usize| u32::from_le_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]);
    let version = u16::from_le_bytes([head[4], head[5]]);
    if version != SEGMENT_VERSION {
        return Err(RepoError::Unsupported {
            key: key.into(),
            reason: format!("segment version {version}"),
        });
    }
    if head[6] != 0 || head[7] != 0 {
        return Err(bad("segment reserved bytes are not zero".into()));
    }
    let (count, record_size, meta_len, crc) = (rd(8), rd(12) as usize, rd(16), rd(20));
    let expect_size = if magic == INDEX_MAGIC {
        INDEX_RECORD
    } else {
        REFS_RECORD
    };
    if record_size != expect_size {
        return Err(bad(format!(
            "record size {record_size}, expected {expect_size}"
        )));
    }
    if meta_len > MAX_META {
        return Err(bad(format!("meta length {meta_len} too large")));
    }
    let fanout: Vec<u32> = (0..257).map(|i| rd(24 + 4 * i)).collect();
    let bucket_crc: Vec<u32> = (0..256).map(|i| rd(1052 + 4 * i)).collect();
    if fanout[0] != 0 || fanout[256] != count || fanout.windows(2).any(|w| w[0] > w[1]) {
        return Err(bad(
            "fanout is not monotonic or does not end at the record count".into(),
        ));
    }
    let h = SegmentHead {
        key: key.to_string(),
        record_size,
        fanout,
        bucket_crc,
        meta: SegmentMeta::default(),
        records_at: HEAD_SIZE as u64 + meta_len as u64,
    };
    Ok((h, meta_len, crc))
}

/// Finish parsing with the meta bytes; checks the head crc.
pub(crate) fn finish_head(
    mut h: SegmentHead,
    head: &[u8],
    meta: &[u8],
    crc: u32,
) -> Result<SegmentHead, RepoError> {
    let got = crc32c::crc32c_append(
        crc32c::crc32c_append(crc32c::crc32c(&head[..20]), &head[24..HEAD_SIZE]),
        meta,
    );
    if got != crc {
        return Err(RepoError::corrupt(&h.key, "segment head crc32c mismatch"));
    }
    h.meta = serde_json::from_slice(meta)
        .map_err(|e| RepoError::corrupt(&h.key, format!("meta JSON: {e}")))?;
    Ok(h)
}

/// Encode an index record; `pack_idx` indexes `SegmentMeta::packs`.
pub(crate) fn index_record(id: &BlobId, pack_idx: u32, loc: &Location) -> Vec<u8> {
    let mut r = Vec::with_capacity(INDEX_RECORD);
    r.extend_from_slice(&id.0);
    r.extend_from_slice(&pack_idx.to_le_bytes());
    r.extend_from_slice(&loc.offset.to_le_bytes());
    r.extend_from_slice(&loc.frame_len.to_le_bytes());
    r.extend_from_slice(&loc.plain_len.to_le_bytes());
    r.push(loc.kind.code());
    r.extend_from_slice(&[0, 0, 0]);
    r
}

/// Decode an index record of segment `head`.
pub(crate) fn decode_index_record(
    head: &SegmentHead,
    r: &[u8],
) -> Result<(BlobId, Location), RepoError> {
    let bad = |s: &str| RepoError::corrupt(&head.key, s.to_string());
    if r.len() != INDEX_RECORD {
        return Err(bad("index record size"));
    }
    let rd = |o: usize| u32::from_le_bytes([r[o], r[o + 1], r[o + 2], r[o + 3]]);
    let id = BlobId::from_slice(&r[..32]).ok_or_else(|| bad("id"))?;
    let pack = head
        .meta
        .packs
        .get(rd(32) as usize)
        .ok_or_else(|| bad("pack index out of range"))?;
    let kind = BlobKind::from_code(r[48]).ok_or_else(|| bad("blob kind"))?;
    if r[49..52] != [0, 0, 0] {
        return Err(bad("index record reserved bytes are not zero"));
    }
    Ok((
        id,
        Location {
            pack: pack.clone(),
            offset: rd(36),
            frame_len: rd(40),
            plain_len: rd(44),
            kind,
        },
    ))
}

/// Refs flag: a delete brought the blob to zero (and decremented a table's children).
pub(crate) const FREED: u32 = 1;
/// Refs flag: the writer stored this table and incremented its children.
pub(crate) const STORED: u32 = 2;
/// Refs flag: gc re-incremented the children of a freed table that a concurrent backup
/// had reused (see format-spec "Revival").
pub(crate) const REVIVED: u32 = 4;

/// Refs flags bits 16..31: a signed 16-bit adjustment added to the record's children
/// contribution, so a record can carry any contribution exactly (a table stored by two
/// writers at once has 2, and its delete must take away 2; compaction sums several).
/// Bits 3..15 are reserved (refused).
pub(crate) const ADJUST_SHIFT: u32 = 16;
/// The flag bits with a meaning of their own.
pub(crate) const FLAG_BITS: u32 = FREED | STORED | REVIVED;

/// The signed adjustment of a refs record's flags (bits 16..31).
pub(crate) fn flags_adjustment(flags: u32) -> i64 {
    i64::from((flags >> ADJUST_SHIFT) as u16 as i16)
}

/// Flags with the meaning bits of `flags` whose children contribution is exactly
/// `contribution`; `None` when the adjustment does not fit in 16 bits.
pub(crate) fn flags_with_contribution(flags: u32, contribution: i64) -> Option<u32> {
    let bits = flags & FLAG_BITS;
    let plain = i64::from(bits & STORED != 0) + i64::from(bits & REVIVED != 0)
        - i64::from(bits & FREED != 0);
    let adjust = i16::try_from(contribution - plain).ok()?;
    Some(bits | (u32::from(adjust as u16) << ADJUST_SHIFT))
}

/// A record's children contribution: +1 for STORED or REVIVED, −1 for FREED, plus the
/// signed adjustment in bits 16..31 (`segment::ADJUST_SHIFT`).
pub(crate) fn flag_contribution(flags: u32) -> i64 {
    i64::from(flags & STORED != 0) + i64::from(flags & REVIVED != 0) - i64::from(flags & FREED != 0)
        + flags_adjustment(flags)
}

/// Encode a refcount-delta record.
pub(crate) fn refs_record(id: &BlobId, delta: i32, flags: u32) -> Vec<u8> {
    let mut r = Vec::with_capacity(REFS_RECORD);
    r.extend_from_slice(&id.0);
    r.extend_from_slice(&delta.to_le_bytes());
    r.extend_from_slice(&flags.to_le_bytes());
    r
}

/// Decode a refs record: (id, delta, flags).
pub(crate) fn decode_refs_record(
    head: &SegmentHead,
    r: &[u8],
) -> Result<(BlobId, i32, u32), RepoError> {
    if r.len() != REFS_RECORD {
        return Err(RepoError::corrupt(&head.key, "refs record size"));
    }
    let id = BlobId::from_slice(&r[..32]).ok_or_else(|| RepoError::corrupt(&head.key, "id"))?;
    let delta = i32::from_le_bytes([r[32], r[33], r[34], r[35]]);
    let flags = u32::from_le_bytes([r[36], r[37], r[38], r[39]]);
    if flags & !FLAG_BITS & ((1 << ADJUST_SHIFT) - 1) != 0 {
        return Err(RepoError::Unsupported {
            key: head.key.clone(),
            reason: format!("refs flags {flags:#x}"),
        });
    }
    Ok((id, delta, flags))
}

/// Records of one bucket whose id equals `id` (binary search over fixed-size records).
pub(crate) fn find_in_bucket<'a>(
    bucket: &'a [u8],
    record_size: usize,
    id: &BlobId,
) -> impl Iterator<Item = &'a [u8]> {
    let n = bucket.len() / record_size;
    let rec = move |i: usize| &bucket[i * record_size..(i + 1) * record_size];
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if rec(mid)[..32] < id.0[..] {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let id = *id;
    (lo..n).map(rec).take_while(move |r| r[..32] == id.0[..])
}

/// All records of segment `h` (one GET of its record area).
pub(crate) async fn segment_records(store: &dyn ObjectStore, h: &SegmentHead) -> Result<Vec<u8>> {
    bucket_records(store, h, 0, 255).await
}

/// The records of buckets `lo..=hi` of segment `h`, in one ranged GET, each bucket checked
/// against its crc.
pub(crate) async fn bucket_records(
    store: &dyn ObjectStore,
    h: &SegmentHead,
    lo: u8,
    hi: u8,
) -> Result<Vec<u8>> {
    let (start, end) = (h.bucket_range(lo).start, h.bucket_range(hi).end);
    if end <= start {
        return Ok(Vec::new());
    }
    let bytes = store.get_range(&h.key, start..end).await?;
    for b in lo..=hi {
        let r = h.bucket_range(b);
        let piece = bytes
            .get((r.start - start) as usize..(r.end - start) as usize)
            .ok_or_else(|| RepoError::corrupt(&h.key, "records truncated"))?;
        h.check_bucket(b, piece)?;
    }
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden bytes of refs records (format-spec §3.3): a contribution beyond what the
    /// flags say is carried in bits 16..31 as a signed 16-bit adjustment.
    #[test]
    fn refs_record_golden_bytes_and_contribution_adjustment() {
        let id = BlobId([0xab; 32]);
        let freed_twice = flags_with_contribution(FREED, -2).unwrap();
        assert_eq!(freed_twice, 0xffff_0001);
        let r = refs_record(&id, -1, freed_twice);
        assert_eq!(&r[..32], &[0xab; 32]);
        assert_eq!(&r[32..], &[0xff, 0xff, 0xff, 0xff, 0x01, 0x00, 0xff, 0xff]);
        let stored_thrice = flags_with_contribution(STORED, 3).unwrap();
        assert_eq!(stored_thrice.to_le_bytes(), [0x02, 0x00, 0x02, 0x00]);
        assert_eq!(flags_with_contribution(STORED, 1), Some(STORED));
        assert_eq!(
            flags_with_contribution(REVIVED | FREED, 0),
            Some(REVIVED | FREED)
        );
        assert_eq!(flags_with_contribution(0, 40_000), None);
        let h = SegmentHead {
            key: "refs/x".into(),
            record_size: REFS_RECORD,
            fanout: vec![0; 257],
            bucket_crc: vec![0; 256],
            meta: SegmentMeta::default(),
            records_at: 0,
        };
        let (_, delta, flags) = decode_refs_record(&h, &r).unwrap();
        assert_eq!((delta, flags_adjustment(flags)), (-1, -1));
        assert_eq!(flag_contribution(flags), -2);
        // Bits 3..15 are reserved.
        let reserved = refs_record(&id, 0, STORED | 0x100);
        assert!(decode_refs_record(&h, &reserved).is_err());
    }

    #[test]
    fn segment_roundtrip_and_lookup() {
        let ids: Vec<BlobId> = (0..500u32).map(|i| BlobId::of(&i.to_le_bytes())).collect();
        let recs = ids
            .iter()
            .enumerate()
            .map(|(i, id)| refs_record(id, i as i32 - 10, (i % 7 == 0) as u32))
            .collect();
        let meta = SegmentMeta {
            commit: "tombstones/v/x".into(),
            ..Default::default()
        };
        let bytes = encode(REFS_MAGIC, REFS_RECORD, recs, &meta);
        assert_eq!(&bytes[0..8], b"ISRF\x01\x00\x00\x00");
        let (h, mlen, crc) = parse_head(REFS_MAGIC, "refs/x", &bytes[..HEAD_SIZE]).unwrap();
        let meta_bytes = &bytes[HEAD_SIZE..HEAD_SIZE + mlen as usize];
        let h = finish_head(h, &bytes[..HEAD_SIZE], meta_bytes, crc).unwrap();
        assert_eq!(h.meta, meta);
        for (i, id) in ids.iter().enumerate() {
            let r = h.bucket_range(id.0[0]);
            let bucket = &bytes[r.start as usize..r.end as usize];
            h.check_bucket(id.0[0], bucket).unwrap();
            let found: Vec<_> = find_in_bucket(bucket, REFS_RECORD, id).collect();
            assert_eq!(found.len(), 1);
            assert_eq!(
                decode_refs_record(&h, found[0]).unwrap(),
                (*id, i as i32 - 10, (i % 7 == 0) as u32)
            );
        }
        assert_eq!(
            find_in_bucket(
                &bytes[h.records_at as usize..],
                REFS_RECORD,
                &BlobId::of(b"none")
            )
            .count(),
            0
        );
        // A damaged fanout is refused by shape; a damaged bucket crc by the head crc.
        let mut bad = bytes.clone();
        bad[30] ^= 1;
        assert!(parse_head(REFS_MAGIC, "k", &bad[..HEAD_SIZE]).is_err());
        let mut bad = bytes.clone();
        bad[1060] ^= 1;
        let (h2, _, crc2) = parse_head(REFS_MAGIC, "k", &bad[..HEAD_SIZE]).unwrap();
        assert!(finish_head(h2, &bad[..HEAD_SIZE], meta_bytes, crc2).is_err());
    }

    /// Found by the `index_segment`/`refs_segment` fuzz targets' round trip
    /// (fuzz/regressions/{index,refs}_segment/): crc-valid segments whose reserved bytes
    /// are not zero, or whose bucket holds a record of another bucket or records out of
    /// order (which lookups would silently miss), were accepted.
    #[test]
    fn reserved_bytes_and_misplaced_records_are_refused() {
        let id = |b: u8| BlobId([b; 32]);
        let recs = vec![refs_record(&id(1), 1, 0), refs_record(&id(2), 1, 0)];
        let bytes = encode(REFS_MAGIC, REFS_RECORD, recs, &SegmentMeta::default());
        let mut bad = bytes.clone();
        bad[6] = 1;
        assert!(parse_head(REFS_MAGIC, "k", &bad[..HEAD_SIZE]).is_err());
        let (h, mlen, crc) = parse_head(REFS_MAGIC, "k", &bytes[..HEAD_SIZE]).unwrap();
        let meta = &bytes[HEAD_SIZE..HEAD_SIZE + mlen as usize];
        let mut h = finish_head(h, &bytes[..HEAD_SIZE], meta, crc).unwrap();
        let r = h.bucket_range(1);
        let bucket = &bytes[r.start as usize..r.end as usize];
        h.check_bucket(1, bucket).unwrap();
        // The same record claimed by bucket 2 (its crc made to match): refused.
        h.bucket_crc[2] = crc32c::crc32c(bucket);
        assert!(h.check_bucket(2, bucket).is_err());
        // Two records of bucket 1 out of order: refused.
        let (a, b) = (
            refs_record(&BlobId([1; 32]), 1, 0),
            refs_record(&id(1), 1, 0),
        );
        let mut b2 = b.clone();
        b2[31] = 0;
        let swapped = [a.clone(), b2].concat();
        h.bucket_crc[1] = crc32c::crc32c(&swapped);
        assert!(h.check_bucket(1, &swapped).is_err());
        let ordered = [b.clone(), a].concat();
        h.bucket_crc[1] = crc32c::crc32c(&ordered);
        h.check_bucket(1, &ordered).unwrap();
        let mut rec = index_record(
            &id(1),
            0,
            &Location {
                pack: "p".into(),
                offset: 0,
                frame_len: 60,
                plain_len: 8,
                kind: BlobKind::Chunk,
            },
        );
        h.meta.packs = vec!["p".into()];
        let ih = SegmentHead {
            record_size: INDEX_RECORD,
            ..h.clone()
        };
        decode_index_record(&ih, &rec).unwrap();
        rec[50] = 1;
        assert!(decode_index_record(&ih, &rec).is_err());
    }
}

//! Structure-aware inputs (`arbitrary`): the fuzzer chooses fields, not bytes. Each input
//! is laid out per `format-spec/` by the builders here (independently of Island's
//! encoders), then byte edits are applied and, as the input's `fix` flags say, the
//! crc32c and BLAKE3 id recomputed after them: mutations get past the checksums and reach
//! the logic behind them, and a spec/encoder disagreement shows up as a round-trip failure.

use arbitrary::Arbitrary;

/// Byte edits applied after layout: (position modulo the object length, xor value).
#[derive(Arbitrary, Debug)]
pub struct Edits(Vec<(u32, u8)>);

impl Edits {
    pub fn apply(&self, obj: &mut [u8]) {
        if obj.is_empty() {
            return;
        }
        for &(at, x) in self.0.iter().take(8) {
            let i = at as usize % obj.len();
            obj[i] ^= x;
        }
    }
}

/// A blob frame: kind, payload choice, edits, and which checksums to recompute.
#[derive(Arbitrary, Debug)]
pub struct FrameInput {
    pub table: bool,
    pub lz4: bool,
    pub plain: Vec<u8>,
    pub edits: Edits,
    /// Bits as [`crate::fix_frame`]'s mode: 1 length, 2 id, 4 crc.
    pub fix: u8,
}

impl FrameInput {
    /// The frame bytes (format-spec §3.1).
    pub fn build(&self) -> Vec<u8> {
        let payload = if self.lz4 {
            lz4_flex::block::compress(&self.plain)
        } else {
            self.plain.clone()
        };
        let mut f = Vec::with_capacity(payload.len() + 52);
        f.extend_from_slice(b"ISBF\x01");
        f.push(u8::from(self.lz4));
        f.push(u8::from(self.table));
        f.push(0);
        f.extend_from_slice(&(self.plain.len() as u32).to_le_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        f.extend_from_slice(blake3::hash(&self.plain).as_bytes());
        f.extend_from_slice(&payload);
        f.extend_from_slice(&[0; 4]);
        crate::fix_trailing_crc(&mut f);
        self.edits.apply(&mut f);
        crate::fix_frame(self.fix, &mut f);
        f
    }
}

/// A pack of frames with its footer and trailer.
#[derive(Arbitrary, Debug)]
pub struct PackInput {
    pub frames: Vec<FrameInput>,
    pub edits: Edits,
    /// Bits as [`crate::fix_pack`]'s mode: 1 footer crc, 2 trailer crc.
    pub fix: u8,
}

impl PackInput {
    /// The pack bytes (format-spec §3.2), entries taken from each built frame's header.
    pub fn build(&self) -> Vec<u8> {
        let mut data = Vec::new();
        let mut footer = Vec::new();
        let frames = self.frames.iter().take(8).map(FrameInput::build);
        for f in frames {
            let hdr = |at: usize| {
                f.get(at..at + 4)
                    .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            };
            footer.extend_from_slice(f.get(16..48).unwrap_or(&[0; 32]));
            footer.extend_from_slice(&[f.get(6).copied().unwrap_or(0), 0, 0, 0]);
            footer.extend_from_slice(&(data.len() as u32).to_le_bytes());
            footer.extend_from_slice(&(f.len() as u32).to_le_bytes());
            footer.extend_from_slice(&hdr(8).to_le_bytes());
            data.extend_from_slice(&f);
        }
        let entries = (footer.len() / 48) as u32;
        let footer_at = data.len() as u32;
        data.extend_from_slice(&footer);
        data.extend_from_slice(b"ISPK\x01\x00\x00\x00");
        data.extend_from_slice(&entries.to_le_bytes());
        data.extend_from_slice(&footer_at.to_le_bytes());
        data.extend_from_slice(&[0; 8]);
        crate::fix_pack(3, &mut data);
        self.edits.apply(&mut data);
        crate::fix_pack(self.fix, &mut data);
        data
    }
}

/// One segment record: the id's first byte chosen freely (the bucket), the rest from a
/// small alphabet so ids collide and lookups see ties.
#[derive(Arbitrary, Debug)]
pub struct Record {
    pub bucket: u8,
    pub tail: u8,
    /// Index: pack index, offset, frame length, plain length; refs: delta, flags.
    pub fields: [u32; 4],
    pub kind: u8,
}

/// An index or refs segment.
#[derive(Arbitrary, Debug)]
pub struct SegmentInput {
    pub refs: bool,
    pub records: Vec<Record>,
    pub commit: String,
    pub packs: Vec<String>,
    pub supersedes: Vec<String>,
    pub edits: Edits,
    /// Recompute bucket and head crcs after the edits.
    pub fix: bool,
}

impl SegmentInput {
    /// The decoder this segment is for.
    pub fn decoder(&self) -> (&'static str, fn(&[u8])) {
        if self.refs {
            ("refs_segment", island::repo::fuzzing::refs_segment)
        } else {
            ("index_segment", island::repo::fuzzing::index_segment)
        }
    }

    /// The segment bytes (format-spec §3.3): records sorted by id, fanout, bucket crcs.
    pub fn build(&self) -> Vec<u8> {
        let mut recs: Vec<Vec<u8>> = self
            .records
            .iter()
            .take(64)
            .map(|r| {
                let mut b = vec![r.tail; 32];
                b[0] = r.bucket;
                if self.refs {
                    b.extend_from_slice(&r.fields[0].to_le_bytes());
                    b.extend_from_slice(&(r.fields[1] & 0xffff_0007).to_le_bytes());
                } else {
                    for f in r.fields {
                        b.extend_from_slice(&f.to_le_bytes());
                    }
                    b.extend_from_slice(&[r.kind & 1, 0, 0, 0]);
                }
                b
            })
            .collect();
        recs.sort_by(|a, b| a[..32].cmp(&b[..32]));
        let meta = format!(
            r#"{{"commit":{},"supersedes":{},"packs":{},"dead_packs":[]}}"#,
            json(&self.commit),
            json(&self.supersedes),
            json(&self.packs)
        )
        .into_bytes();
        let mut fanout = [0u32; 257];
        for r in &recs {
            fanout[r[0] as usize + 1] += 1;
        }
        for b in 1..257 {
            fanout[b] += fanout[b - 1];
        }
        let mut s = Vec::new();
        s.extend_from_slice(if self.refs { b"ISRF" } else { b"ISIX" });
        s.extend_from_slice(&[1, 0, 0, 0]);
        s.extend_from_slice(&(recs.len() as u32).to_le_bytes());
        s.extend_from_slice(&(if self.refs { 40u32 } else { 52 }).to_le_bytes());
        s.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        s.extend_from_slice(&[0; 4]);
        for f in fanout {
            s.extend_from_slice(&f.to_le_bytes());
        }
        s.resize(crate::SEGMENT_HEAD, 0);
        s.extend_from_slice(&meta);
        for r in &recs {
            s.extend_from_slice(r);
        }
        crate::fix_segment(&mut s);
        self.edits.apply(&mut s);
        if self.fix {
            crate::fix_segment(&mut s);
        }
        s
    }
}

/// Compact JSON of a meta field.
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

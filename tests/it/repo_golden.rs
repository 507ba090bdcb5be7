//! Golden bytes of the repository format: a fixed volume backed up into a fresh
//! repository must produce exactly the chunk frames, table and manifest envelope checked
//! in under `tests/golden/` (hex). Independently of the golden files, every object is also
//! decoded here by a second reading of `format-spec/repository.md` (magics, versions,
//! lengths, crc32c, BLAKE3, lz4), so a golden file cannot silently bless a wrong layout.
//!
//! To regenerate after an intended format change: `ISLAND_BLESS_GOLDEN=1 cargo test
//! --test it repo_golden`, then review the diff of `tests/golden/`.

use island::backup::{backup, BackupOptions, RawSource};
use island::repo::{InitOptions, Repository};
use island::store::{MemoryStore, ObjectStore};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

const CHUNK: usize = 4096;

/// The fixed volume: chunk 0 compressible, 1 compressible (different), 2 zeros, 3
/// incompressible, 4 compressible, 5 a copy of chunk 0.
fn volume() -> Vec<u8> {
    let mut data = vec![0u8; CHUNK * 6];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for (i, b) in data.iter_mut().enumerate() {
        let (chunk, at) = (i / CHUNK, i % CHUNK);
        *b = match chunk {
            2 => 0,
            3 => {
                // xorshift64: fixed, incompressible bytes
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            }
            5 => (at * 7 % 251) as u8,
            c => (at * 7 % 251) as u8 ^ c as u8,
        };
    }
    data
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for line in bytes.chunks(32) {
        for b in line {
            out.push_str(&format!("{b:02x}"));
        }
        out.push('\n');
    }
    out
}

/// Compares `actual` with the golden file `name` (or writes it when blessing).
fn golden(name: &str, actual: &[u8]) {
    let path = golden_path(name);
    let hex = to_hex(actual);
    if std::env::var_os("ISLAND_BLESS_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, hex).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (bless with ISLAND_BLESS_GOLDEN=1)", path.display()));
    assert!(
        expected == hex,
        "{name}: bytes differ from the golden file {}\nexpected:\n{expected}\nactual:\n{hex}",
        path.display()
    );
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// One pack footer entry, as the spec lays it out.
#[derive(Debug, Clone)]
struct Entry {
    id: [u8; 32],
    kind: u8,
    offset: usize,
    frame_len: usize,
    plain_len: usize,
}

/// Parses a pack per the spec: frames ‖ footer (48-byte entries) ‖ 24-byte trailer
/// ("ISPK" ‖ version u16 ‖ 0 u16 ‖ entries u32 ‖ footer offset u32 ‖ crc32c(footer) ‖
/// crc32c(trailer[0..20])).
fn parse_pack(key: &str, pack: &[u8]) -> Vec<Entry> {
    let t = pack.len() - 24;
    let trailer = &pack[t..];
    assert_eq!(&trailer[0..4], b"ISPK", "{key}: trailer magic");
    assert_eq!(u16_at(trailer, 4), 1, "{key}: pack version");
    assert_eq!(u16_at(trailer, 6), 0, "{key}: reserved");
    let count = u32_at(trailer, 8) as usize;
    let footer_at = u32_at(trailer, 12) as usize;
    assert_eq!(
        footer_at + 48 * count,
        t,
        "{key}: footer fills the space before the trailer"
    );
    assert_eq!(
        u32_at(trailer, 16),
        crc32c::crc32c(&pack[footer_at..t]),
        "{key}: footer crc"
    );
    assert_eq!(
        u32_at(trailer, 20),
        crc32c::crc32c(&trailer[..20]),
        "{key}: trailer crc"
    );
    let mut next = 0;
    (0..count)
        .map(|i| {
            let e = &pack[footer_at + 48 * i..footer_at + 48 * (i + 1)];
            assert_eq!(&e[33..36], &[0, 0, 0], "{key}: entry {i} padding");
            let entry = Entry {
                id: e[..32].try_into().unwrap(),
                kind: e[32],
                offset: u32_at(e, 36) as usize,
                frame_len: u32_at(e, 40) as usize,
                plain_len: u32_at(e, 44) as usize,
            };
            assert_eq!(entry.offset, next, "{key}: frames are back to back");
            next += entry.frame_len;
            entry
        })
        .collect()
}

/// Decodes a blob frame per the spec and returns (codec, plain): "ISBF" ‖ version 1 ‖
/// codec ‖ kind ‖ flags 0 ‖ plain len u32 ‖ stored len u32 ‖ id[32] ‖ payload ‖ crc32c.
fn decode_frame(frame: &[u8], e: &Entry) -> (u8, Vec<u8>) {
    assert_eq!(&frame[0..4], b"ISBF");
    assert_eq!(frame[4], 1, "frame version");
    let codec = frame[5];
    assert_eq!(frame[6], e.kind, "frame kind matches the footer");
    assert_eq!(frame[7], 0, "flags");
    let plain_len = u32_at(frame, 8) as usize;
    let stored_len = u32_at(frame, 12) as usize;
    assert_eq!(plain_len, e.plain_len);
    assert_eq!(frame.len(), 48 + stored_len + 4, "frame length");
    assert_eq!(&frame[16..48], &e.id, "frame id matches the footer");
    let payload = &frame[48..48 + stored_len];
    assert_eq!(
        u32_at(frame, 48 + stored_len),
        crc32c::crc32c(&frame[..48 + stored_len]),
        "frame crc"
    );
    let plain = match codec {
        0 => payload.to_vec(),
        1 => {
            assert!(stored_len < plain_len, "lz4 is used only when smaller");
            lz4_flex::block::decompress(payload, plain_len).expect("lz4 payload")
        }
        c => panic!("unknown codec {c}"),
    };
    assert_eq!(
        *blake3::hash(&plain).as_bytes(),
        e.id,
        "BLAKE3 of the plain bytes is the id"
    );
    (codec, plain)
}

/// The leaf table the spec prescribes for `ids`: "ISTT" ‖ version u16 ‖ level u8 ‖ 0 ‖
/// count u32 ‖ ids.
fn leaf_table(ids: &[[u8; 32]]) -> Vec<u8> {
    let mut t = b"ISTT".to_vec();
    t.extend_from_slice(&1u16.to_le_bytes());
    t.push(0);
    t.push(0);
    t.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        t.extend_from_slice(id);
    }
    t
}

#[tokio::test]
async fn chunk_frames_table_and_manifest_match_golden_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let vol_path = dir.path().join("volume.raw");
    let data = volume();
    std::fs::write(&vol_path, &data).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new_unique().unwrap());
    let repo = Repository::init(
        store.clone(),
        &InitOptions {
            chunk_size: CHUNK as u32,
        },
    )
    .await
    .unwrap();
    let source = Arc::new(RawSource::open(&vol_path).unwrap());
    let opts = BackupOptions {
        volume: "golden".to_string(),
        ..BackupOptions::default()
    };
    let report = backup(&repo, source, &opts).await.unwrap();

    let chunk_ids: Vec<[u8; 32]> = data
        .chunks(CHUNK)
        .map(|c| {
            if c.iter().all(|&b| b == 0) {
                [0u8; 32]
            } else {
                *blake3::hash(c).as_bytes()
            }
        })
        .collect();

    // Every blob of every pack, decoded by the spec.
    let mut blobs: Vec<(Entry, u8, Vec<u8>, Vec<u8>)> = Vec::new();
    for meta in store.list("packs/", None, 1000).await.unwrap() {
        let pack = store.get(&meta.key).await.unwrap();
        let name = meta.key.rsplit('/').next().unwrap();
        let shard = blake3::hash(name.as_bytes()).as_bytes()[0];
        assert_eq!(
            meta.key,
            format!("packs/{shard:02x}/{name}"),
            "pack key shard"
        );
        for e in parse_pack(&meta.key, &pack) {
            let frame = pack[e.offset..e.offset + e.frame_len].to_vec();
            let (codec, plain) = decode_frame(&frame, &e);
            blobs.push((e, codec, plain, frame));
        }
    }
    let chunks: Vec<_> = blobs.iter().filter(|b| b.0.kind == 0).collect();
    let tables: Vec<_> = blobs.iter().filter(|b| b.0.kind == 1).collect();
    // Four distinct non-zero chunks (the zero chunk is never stored, the copy deduplicated).
    assert_eq!(chunks.len(), 4, "stored chunks");
    for (i, c) in data.chunks(CHUNK).enumerate() {
        if i == 2 {
            continue;
        }
        assert!(chunks.iter().any(|b| b.2 == c), "chunk {i} is stored");
    }
    let frame_of = |id: &[u8; 32]| {
        &chunks
            .iter()
            .find(|b| &b.0.id == id)
            .expect("chunk stored")
            .3
    };
    let codec_of = |id: &[u8; 32]| {
        chunks
            .iter()
            .find(|b| &b.0.id == id)
            .expect("chunk stored")
            .1
    };
    assert_eq!(
        codec_of(&chunk_ids[0]),
        1,
        "a repetitive chunk is stored lz4"
    );
    assert_eq!(
        codec_of(&chunk_ids[3]),
        0,
        "an incompressible chunk is stored raw"
    );
    golden("repo_chunk_frame_lz4.hex", frame_of(&chunk_ids[0]));
    golden("repo_chunk_frame_raw.hex", frame_of(&chunk_ids[3]));

    // One leaf table: the six chunk ids, the zero chunk as the all-zero id.
    assert_eq!(tables.len(), 1, "one table for a six-chunk volume");
    let table = tables[0];
    assert_eq!(
        table.2,
        leaf_table(&chunk_ids),
        "table plain bytes follow the spec"
    );
    golden("repo_table_frame.hex", &table.3);

    // The root manifest: a checked envelope around JSON.
    let key = format!("snapshots/golden/{}", report.id);
    let root = store.get(&key).await.unwrap();
    assert_eq!(&root[0..4], b"ISRT", "root magic");
    assert_eq!(u16_at(&root, 4), 1, "envelope version");
    assert_eq!(u16_at(&root, 6), 0, "reserved");
    let json_len = u32_at(&root, 8) as usize;
    assert_eq!(root.len(), 12 + json_len + 4, "envelope length");
    assert_eq!(
        u32_at(&root, 12 + json_len),
        crc32c::crc32c(&root[..12 + json_len]),
        "envelope crc"
    );
    let json: Value = serde_json::from_slice(&root[12..12 + json_len]).expect("manifest JSON");
    assert_eq!(json["id"], report.id.as_str());
    assert_eq!(json["volume"], "golden");
    assert_eq!(json["size"], (6 * CHUNK) as u64);
    assert_eq!(json["chunk_size"], CHUNK as u64);
    let table_id: String = table.0.id.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        json["top"],
        serde_json::json!([table_id]),
        "the root lists the leaf table"
    );

    // Exact bytes: the golden manifest is the JSON with the fields that differ per run
    // (id, creation time, writer, lease time) as placeholders; substituting this run's
    // values back must reproduce the stored envelope byte for byte.
    let template = if std::env::var_os("ISLAND_BLESS_GOLDEN").is_some() {
        let text = String::from_utf8(root[12..12 + json_len].to_vec()).unwrap();
        let lease = json["lease_time_ms"].to_string();
        let text = text
            .replace(&report.id, "{ID}")
            .replace(json["created"].as_str().unwrap(), "{CREATED}")
            .replace(&format!(":{lease}"), ":{LEASE_TIME_MS}");
        std::fs::write(golden_path("repo_manifest.json"), &text).unwrap();
        text
    } else {
        std::fs::read_to_string(golden_path("repo_manifest.json"))
            .expect("tests/golden/repo_manifest.json")
    };
    let body = template
        .replace("{ID}", &report.id)
        .replace("{CREATED}", json["created"].as_str().unwrap())
        .replace("{LEASE_TIME_MS}", &json["lease_time_ms"].to_string());
    let mut expected = b"ISRT".to_vec();
    expected.extend_from_slice(&1u16.to_le_bytes());
    expected.extend_from_slice(&0u16.to_le_bytes());
    expected.extend_from_slice(&(body.len() as u32).to_le_bytes());
    expected.extend_from_slice(body.as_bytes());
    let crc = crc32c::crc32c(&expected);
    expected.extend_from_slice(&crc.to_le_bytes());
    assert!(
        expected == root.as_ref(),
        "manifest envelope differs from tests/golden/repo_manifest.json:\nexpected: {}\nactual:   {}",
        String::from_utf8_lossy(&expected[12..]),
        String::from_utf8_lossy(&root[12..])
    );
}

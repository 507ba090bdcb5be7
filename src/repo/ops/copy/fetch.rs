//! Batched, verified reads of blob frames from a source repository: locations are sorted
//! by pack and offset and neighbouring frames share one ranged GET (as restore does), so
//! copying a snapshot costs about one request per run of frames, not one per chunk.

use crate::repo::format::pack::pack_key;
use crate::repo::protocol::follow::verify_frame;
use crate::repo::repository::SegmentSet;
use crate::repo::{BlobId, Frame, Location, RepoError, Repository};
use crate::Result;
use futures::StreamExt;

/// Frames closer than this are fetched in one GET (the gap is downloaded and discarded).
const COALESCE_GAP: u64 = 256 << 10;
/// Largest single ranged GET.
const MAX_GET: u64 = 8 << 20;
/// GETs in flight.
const PARALLEL_GETS: usize = 8;

/// One verified blob: its frame as stored (copied verbatim, no recompression) and its
/// plain bytes.
pub(crate) struct Fetched {
    pub frame: Frame,
    pub plain: Vec<u8>,
}

struct Run {
    pack: String,
    start: u64,
    end: u64,
    blobs: Vec<(BlobId, Location)>,
}

/// Fetch and verify (crc, BLAKE3 = id, kind) every blob in `wanted`, located through
/// `set` (a pack a gc removed since is followed, `follow.rs`). Output order is by pack and
/// offset, not input order.
pub(crate) async fn fetch(
    repo: &Repository,
    set: &SegmentSet,
    mut wanted: Vec<(BlobId, Location)>,
) -> Result<Vec<Fetched>> {
    wanted.sort_by(|a, b| (&a.1.pack, a.1.offset).cmp(&(&b.1.pack, b.1.offset)));
    let mut runs: Vec<Run> = Vec::new();
    for (id, loc) in wanted {
        let (s, e) = (loc.offset as u64, loc.offset as u64 + loc.frame_len as u64);
        match runs.last_mut() {
            Some(r)
                if r.pack == loc.pack
                    && s >= r.end
                    && s - r.end < COALESCE_GAP
                    && e - r.start <= MAX_GET =>
            {
                r.end = e;
                r.blobs.push((id, loc));
            }
            Some(r) if r.pack == loc.pack && s < r.end => {
                // The same frame listed twice (one blob id located once per request).
                r.blobs.push((id, loc));
            }
            _ => runs.push(Run {
                pack: loc.pack.clone(),
                start: s,
                end: e,
                blobs: vec![(id, loc)],
            }),
        }
    }
    let mut out = Vec::new();
    let mut results = futures::stream::iter(runs.into_iter().map(|r| fetch_run(repo, set, r)))
        .buffered(PARALLEL_GETS);
    while let Some(r) = results.next().await {
        out.extend(r?);
    }
    Ok(out)
}

async fn fetch_run(repo: &Repository, set: &SegmentSet, run: Run) -> Result<Vec<Fetched>> {
    let key = pack_key(&run.pack);
    let mut out = Vec::with_capacity(run.blobs.len());
    let bytes = match repo.store().get_range(&key, run.start..run.end).await {
        Ok(b) => b,
        // A gc may have repacked it since the view: each blob follows it.
        Err(e) if e.is_not_found() => {
            for (id, loc) in run.blobs {
                let (loc, frame, plain) = repo.read_following(set, &id, loc).await?;
                out.push(fetched(id, &loc, &frame, plain));
            }
            return Ok(out);
        }
        Err(e) => return Err(e.into()),
    };
    for (id, loc) in run.blobs {
        let lo = (loc.offset as u64 - run.start) as usize;
        let hi = lo + loc.frame_len as usize;
        let raw = bytes.get(lo..hi).ok_or_else(|| {
            RepoError::corrupt(
                &key,
                format!("frame of {id} at {} past the end of the GET", loc.offset),
            )
        })?;
        let plain = verify_frame(&key, &loc, &id, raw)?;
        out.push(fetched(id, &loc, raw, plain));
    }
    Ok(out)
}

fn fetched(id: BlobId, loc: &Location, raw: &[u8], plain: Vec<u8>) -> Fetched {
    Fetched {
        frame: Frame {
            id,
            kind: loc.kind,
            plain_len: plain.len() as u32,
            bytes: raw.to_vec(),
        },
        plain,
    }
}

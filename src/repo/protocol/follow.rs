//! Readers that lose a race with gc (format-spec §6, "Readers and gc").
//!
//! A view ([`SegmentSet`]) names the index and refs segments that counted when it was
//! loaded, and its locations name packs. A gc that commits later may delete both: the
//! segments its compaction superseded and the packs it emptied or repacked (their live
//! frames copied to a new pack named by its own counted index segment). A reader holding
//! the older view then gets NotFound for an object nothing is wrong with.
//!
//! Such a NotFound is followed, never guessed at: it counts as a lost race only if a
//! `gc/<seq>` newer than the view now exists, and then the view is loaded again. A segment
//! read is retried only if the new view no longer counts that segment; a blob read only if
//! the new view locates the blob somewhere else. Anything else (no newer gc, the segment
//! still counted, the blob still located in the missing pack, or not located at all) is
//! the original error: damage stays reported as damage. Attempts are bounded.
//!
//! Every blob is content-addressed, so a blob read through the newer view has the same
//! bytes; counts read through it are committed counts after the reader's lease began, which
//! is what the reuse rule (§4) needs. Operations that compare counts across a whole walk
//! (delete, check) use [`SegmentSet::followed`] to start over on one fresh view instead.

use crate::repo::format::pack::pack_key;
use crate::repo::repository::SegmentSet;
use crate::repo::{BlobId, Location, Repository};
use crate::store::StoreErrorKind;
use crate::Result;
use bytes::Bytes;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

/// Reloads one read may do before its NotFound is reported as it is.
const FOLLOW_ATTEMPTS: usize = 4;

/// The newer view a [`SegmentSet`] was followed to, if any.
#[derive(Default, Debug)]
pub(crate) struct Successor {
    newest: Mutex<Option<Arc<SegmentSet>>>,
    /// One reload at a time: concurrent readers that lose the same race share it.
    reload: tokio::sync::Mutex<()>,
}

/// The view a read uses: the loaded one or the newest it was followed to.
pub(crate) enum View<'a> {
    Loaded(&'a SegmentSet),
    Newer(Arc<SegmentSet>),
}

impl Deref for View<'_> {
    type Target = SegmentSet;
    fn deref(&self) -> &SegmentSet {
        match self {
            View::Loaded(s) => s,
            View::Newer(s) => s,
        }
    }
}

impl SegmentSet {
    /// The newest view this one was followed to (itself if none).
    pub(crate) fn current(&self) -> View<'_> {
        match self.successor.newest.lock().ok().and_then(|n| n.clone()) {
            Some(s) => View::Newer(s),
            None => View::Loaded(self),
        }
    }

    /// Did a read through this view lose a race with gc and use a newer view?
    pub(crate) fn followed(&self) -> bool {
        matches!(self.current(), View::Newer(_))
    }
}

/// The key of a store NotFound on a segment or pack (the objects gc deletes).
fn lost_key(e: &crate::Error) -> Option<&str> {
    match e {
        crate::Error::Store(s)
            if s.kind() == StoreErrorKind::NotFound
                && ["index/", "refs/", "packs/"]
                    .iter()
                    .any(|p| s.key().starts_with(p)) =>
        {
            Some(s.key())
        }
        _ => None,
    }
}

impl Repository {
    /// After a read through `used` (the view `set` currently follows) failed with `e`:
    /// is it a race lost to a gc committed after `used`? If so `set` now follows a newer
    /// view and the read may be tried again. `attempt` bounds the reloads of one read.
    pub(crate) async fn follow_gc(
        &self,
        set: &SegmentSet,
        used: &SegmentSet,
        e: &crate::Error,
        attempt: &mut usize,
    ) -> Result<bool> {
        let Some(key) = lost_key(e) else {
            return Ok(false);
        };
        *attempt += 1;
        if *attempt > FOLLOW_ATTEMPTS {
            return Ok(false);
        }
        let _one = set.successor.reload.lock().await;
        let now = set.current();
        if now.markers.gc_seq_max <= used.markers.gc_seq_max {
            if self.newest_gc_seq().await? <= used.markers.gc_seq_max {
                // No gc committed since the view: nothing explains the NotFound.
                return Ok(false);
            }
            let newer = Arc::new(self.load_segments().await?);
            *set.successor
                .newest
                .lock()
                .map_err(crate::repo::repository::poisoned)? = Some(newer);
        }
        let now = set.current();
        let counted = |h: &Arc<crate::repo::format::segment::SegmentHead>| h.key == key;
        // A segment the newer view still counts is missing, not superseded.
        Ok(!(now.index.iter().any(counted) || now.refs.iter().any(counted)))
    }

    /// Read blob `id`, located at `loc` by `set`, following gc (module doc): where it was
    /// read from, its frame as stored, and its verified plain bytes.
    pub(crate) async fn read_following(
        &self,
        set: &SegmentSet,
        id: &BlobId,
        loc: Location,
    ) -> Result<(Location, Bytes, Vec<u8>)> {
        let mut loc = loc;
        let (mut attempt, mut moved) = (0, 0);
        loop {
            let used = set.current();
            let e = match self.read_frame(&loc, id).await {
                Ok((frame, plain)) => return Ok((loc, frame, plain)),
                Err(e) => e,
            };
            // `loc` may come from an older view than the one `set` follows now (located
            // before another read followed a gc): where does the current view put it?
            if lost_key(&e).is_some() && moved < FOLLOW_ATTEMPTS {
                moved += 1;
                match self.locate(set, id).await? {
                    Some(now) if now.pack != loc.pack || now.offset != loc.offset => {
                        loc = now;
                        continue;
                    }
                    _ => {}
                }
            }
            if !self.follow_gc(set, &used, &e, &mut attempt).await? {
                return Err(e);
            }
            match self.locate(set, id).await? {
                // Repacked: its frame now lives in a newer pack.
                Some(newer) if newer.pack != loc.pack || newer.offset != loc.offset => {
                    loc = newer;
                }
                // Still located there (the pack is missing), or no longer located at all
                // (collected: not a blob of a live snapshot): damage, reported as it is.
                _ => return Err(e),
            }
        }
    }

    /// Fetch one frame and verify it is blob `id` of the kind the index says.
    async fn read_frame(&self, loc: &Location, id: &BlobId) -> Result<(Bytes, Vec<u8>)> {
        let key = pack_key(&loc.pack);
        let range = loc.offset as u64..loc.offset as u64 + loc.frame_len as u64;
        let frame = self.store().get_range(&key, range).await?;
        let plain = verify_frame(&key, loc, id, &frame)?;
        Ok((frame, plain))
    }
}

/// Decode `frame` (read from `key` at `loc`) and verify it is blob `id` of the kind the
/// index says: its plain bytes.
pub(crate) fn verify_frame(
    key: &str,
    loc: &Location,
    id: &BlobId,
    frame: &[u8],
) -> Result<Vec<u8>> {
    let (_, kind, plain) = crate::repo::format::chunk::decode_frame(key, frame, Some(*id))?;
    if kind != loc.kind {
        return Err(crate::repo::RepoError::corrupt(
            key,
            format!("blob {id} has kind {kind:?}, index says {:?}", loc.kind),
        )
        .into());
    }
    Ok(plain)
}

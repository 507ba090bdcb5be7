//! The operations both opendal-backed remote drivers (S3, Swift) run the same way through
//! an opendal [`Operator`]: key checks, listing, metadata and ranged reads with the trait's
//! semantics, so the two drivers cannot drift apart on what a listing page or a range past
//! the end means.

use std::ops::Range;
use std::time::SystemTime;

use bytes::Bytes;
use futures::TryStreamExt;
use opendal::Operator;

use super::opendal_errors::map_error;
use super::{ObjectMeta, StoreError, StoreErrorKind};

/// Refuses keys no Island store accepts ([`super::validate_key`]), before any request.
pub(super) fn check_key(op: &'static str, location: &str, key: &str) -> Result<(), StoreError> {
    super::validate_key(key)
        .map_err(|m| StoreError::new(StoreErrorKind::InvalidKey, op, location, key, m))
}

/// Same for a listing prefix ([`super::validate_prefix`]).
pub(super) fn check_prefix(location: &str, prefix: &str) -> Result<(), StoreError> {
    super::validate_prefix(prefix)
        .map_err(|m| StoreError::new(StoreErrorKind::InvalidKey, "list", location, prefix, m))
}

/// Lists through an opendal operator with the trait's semantics: keys under `prefix`
/// sorting after `start_after`, ascending, at most `limit`, objects only.
pub(super) async fn list_operator(
    op: &Operator,
    location: &str,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
) -> Result<Vec<ObjectMeta>, StoreError> {
    check_prefix(location, prefix)?;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let err = |e| map_error(e, "list", location, prefix);
    let mut fut = op.lister_with(prefix).recursive(true);
    if let Some(sa) = start_after {
        fut = fut.start_after(sa);
    }
    let mut lister = fut.await.map_err(err)?;
    let mut out = Vec::with_capacity(limit.min(1000));
    while let Some(entry) = lister.try_next().await.map_err(err)? {
        let key = entry.path();
        // opendal reports "directories" for keys ending in `/`; Island never writes such
        // keys, and the lister may echo the prefix itself.
        if entry.metadata().is_dir() || key.ends_with('/') || !key.starts_with(prefix) {
            continue;
        }
        if start_after.is_some_and(|sa| key <= sa) {
            continue;
        }
        let meta = entry.metadata();
        out.push(ObjectMeta {
            key: key.to_string(),
            size: meta.content_length(),
            last_modified: meta.last_modified().map(SystemTime::from),
        });
        if out.len() == limit {
            break;
        }
    }
    Ok(out)
}

/// Reads `range` of `key`, refusing a range that ends past the object (servers return a
/// short body for a partially overlapping range instead of an error).
pub(super) async fn read_range(
    op: &Operator,
    location: &str,
    key: &str,
    range: Range<u64>,
) -> Result<Bytes, StoreError> {
    check_key("get_range", location, key)?;
    let past_end = || {
        StoreError::new(
            StoreErrorKind::InvalidRange,
            "get_range",
            location,
            key,
            format!(
                "range {}..{} lies past the end of the object",
                range.start, range.end
            ),
        )
    };
    if range.start > range.end {
        return Err(StoreError::new(
            StoreErrorKind::InvalidRange,
            "get_range",
            location,
            key,
            format!("inverted range {}..{}", range.start, range.end),
        ));
    }
    if range.start == range.end {
        let meta = op
            .stat(key)
            .await
            .map_err(|e| map_error(e, "get_range", location, key))?;
        return if range.end <= meta.content_length() {
            Ok(Bytes::new())
        } else {
            Err(past_end())
        };
    }
    let buf = match op.read_with(key).range(range.clone()).await {
        Ok(buf) => buf,
        Err(e) => {
            let err = map_error(e, "get_range", location, key);
            if err.kind() != StoreErrorKind::Unexpected || err.is_temporary() {
                return Err(err);
            }
            // A range overlapping the end gets a short body, which opendal reports as an
            // unexpected error; only on that failure path ask for the size to say which.
            // A failing HEAD reports its own error (the object was deleted meanwhile, a
            // token expired): its kind tells the caller more than the read's `Unexpected`.
            return match op.stat(key).await {
                Ok(meta) if range.end > meta.content_length() => Err(past_end()),
                Ok(_) => Err(err),
                Err(e) => Err(map_error(e, "get_range", location, key)),
            };
        }
    };
    let want = range.end - range.start;
    if buf.len() as u64 != want {
        return Err(past_end());
    }
    Ok(buf.to_bytes())
}

/// Metadata of one object through an opendal operator.
pub(super) async fn head_operator(
    op: &Operator,
    location: &str,
    key: &str,
) -> Result<ObjectMeta, StoreError> {
    check_key("head", location, key)?;
    let meta = op
        .stat(key)
        .await
        .map_err(|e| map_error(e, "head", location, key))?;
    Ok(ObjectMeta {
        key: key.to_string(),
        size: meta.content_length(),
        last_modified: meta.last_modified().map(SystemTime::from),
    })
}

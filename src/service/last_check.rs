//! The last check's result in the repository's store, `service/check/last` (checked
//! envelope, magic `ISCK`), so `POST /api/fix` and the image status on any server sharing
//! the repository use the fix list a check on any of them produced.
//!
//! Overwritten by every check, by whichever server runs it: "last" is the last write,
//! and every check's list is a valid one (fix ids name repository state, not the server
//! that found them: a fix applied after a newer check on another server re-validates
//! against that newer list, and every fix is safe to repeat).

use super::check::CheckResult;
use super::error::ServiceError;
use crate::repo::format::envelope;
use crate::store::{ObjectStore, StoreErrorKind};
use bytes::Bytes;
use std::sync::Arc;

/// Envelope magic of the last check's result.
pub(crate) const MAGIC_CHECK: &[u8; 4] = b"ISCK";
/// Where the last check's result lives.
pub const LAST_CHECK: &str = "service/check/last";

/// Replace the shared last check with `result`.
pub(crate) async fn put(
    store: &Arc<dyn ObjectStore>,
    result: &CheckResult,
) -> Result<(), ServiceError> {
    let data = Bytes::from(envelope::seal(MAGIC_CHECK, result));
    Ok(store.put(LAST_CHECK, data).await?)
}

/// The shared last check, if any server ever ran one.
pub async fn get(store: &Arc<dyn ObjectStore>) -> Result<Option<CheckResult>, ServiceError> {
    match store.get(LAST_CHECK).await {
        Ok(bytes) => Ok(Some(envelope::open(MAGIC_CHECK, LAST_CHECK, &bytes)?)),
        Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

//! The one place opendal errors become [`StoreError`]s, so every opendal-backed driver
//! classifies failures (and their retryability) the same way.

use super::{StoreError, StoreErrorKind};

/// Maps an opendal error to the store taxonomy, keeping opendal's own judgement of
/// whether a retry may help (`is_temporary`).
pub(crate) fn map_opendal_error(
    err: opendal::Error,
    op: &'static str,
    location: &str,
    key: &str,
) -> StoreError {
    use opendal::ErrorKind as K;
    let kind = match err.kind() {
        K::NotFound => StoreErrorKind::NotFound,
        K::PermissionDenied => StoreErrorKind::PermissionDenied,
        K::ConfigInvalid => StoreErrorKind::ConfigInvalid,
        K::Unsupported => StoreErrorKind::Unsupported,
        K::RateLimited => StoreErrorKind::RateLimited,
        K::AlreadyExists | K::ConditionNotMatch => StoreErrorKind::AlreadyExists,
        K::RangeNotSatisfied => StoreErrorKind::InvalidRange,
        _ => StoreErrorKind::Unexpected,
    };
    let temporary = err.is_temporary();
    StoreError::new(kind, op, location, key, err.to_string())
        .with_temporary(temporary)
        .with_source(err)
}

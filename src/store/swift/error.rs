//! Errors of the requests Island sends to Swift itself (login aside, see `auth.rs`):
//! conditional create, ranged reads, bulk deletes and the container check. Requests made
//! through opendal are classified by `store/opendal_errors.rs`; both agree on every status
//! they share.

use super::SwiftStore;
use crate::store::http::classify_transport;
use crate::store::{StoreError, StoreErrorKind};

/// Kind, retryability and wording of an HTTP status Island's own Swift requests did not
/// expect. A 404 names the container: object-level 404s are handled by each request.
fn classify_status(status: u16) -> (StoreErrorKind, bool, &'static str) {
    match status {
        401 => (StoreErrorKind::PermissionDenied, false, "token refused"),
        403 => (StoreErrorKind::PermissionDenied, false, "access denied"),
        404 => (StoreErrorKind::ConfigInvalid, false, "container missing"),
        408 => (StoreErrorKind::Timeout, true, "server timed out"),
        429 | 498 => (StoreErrorKind::RateLimited, true, "rate limited"),
        s if s >= 500 => (StoreErrorKind::Unexpected, true, "server error"),
        _ => (StoreErrorKind::Unexpected, false, "unexpected answer"),
    }
}

impl SwiftStore {
    /// Error for a status Island's own Swift requests did not expect.
    pub(super) fn status_error(
        &self,
        op: &'static str,
        key: &str,
        status: reqwest::StatusCode,
    ) -> StoreError {
        let (kind, temporary, what) = classify_status(status.as_u16());
        StoreError::new(kind, op, &self.location, key, format!("{what} ({status})"))
            .with_temporary(temporary)
    }

    /// Error for a request that got no HTTP answer: always temporary.
    pub(super) fn transport_error(
        &self,
        op: &'static str,
        key: &str,
        e: reqwest::Error,
    ) -> StoreError {
        let (kind, msg) = classify_transport(&e)
            .unwrap_or((StoreErrorKind::Unexpected, format!("request failed: {e}")));
        StoreError::new(kind, op, &self.location, key, msg)
            .with_temporary(true)
            .with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::classify_status;
    use crate::store::StoreErrorKind as K;

    #[test]
    fn refusals_are_permanent_permission_errors() {
        assert_eq!(
            classify_status(401),
            (K::PermissionDenied, false, "token refused")
        );
        assert_eq!(
            classify_status(403),
            (K::PermissionDenied, false, "access denied")
        );
    }

    #[test]
    fn missing_container_is_a_permanent_config_error() {
        assert_eq!(
            classify_status(404),
            (K::ConfigInvalid, false, "container missing")
        );
    }

    #[test]
    fn server_timeout_and_rate_limits_are_temporary() {
        assert_eq!(classify_status(408), (K::Timeout, true, "server timed out"));
        assert_eq!(classify_status(429), (K::RateLimited, true, "rate limited"));
        assert_eq!(classify_status(498), (K::RateLimited, true, "rate limited"));
    }

    #[test]
    fn server_errors_are_temporary() {
        for s in [500, 502, 503, 504, 599] {
            assert_eq!(
                classify_status(s),
                (K::Unexpected, true, "server error"),
                "{s}"
            );
        }
    }

    #[test]
    fn other_statuses_are_permanent() {
        for s in [400, 409, 411, 413, 422, 499] {
            assert_eq!(
                classify_status(s),
                (K::Unexpected, false, "unexpected answer"),
                "{s}"
            );
        }
    }
}

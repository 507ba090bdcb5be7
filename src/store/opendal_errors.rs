//! The one place opendal errors become [`StoreError`]s, so every opendal-backed driver
//! (S3, Swift, memory) classifies failures, and whether a retry may help, the same way.
//!
//! | opendal error | kind | temporary |
//! |---|---|---|
//! | reqwest timeout in the source chain | `Timeout` | yes |
//! | reqwest connect failure in the source chain | `Unexpected` | yes |
//! | `NotFound` | `NotFound` | no |
//! | `PermissionDenied` (S3 403, Swift 401/403) | `PermissionDenied` | no |
//! | `ConfigInvalid` (missing bucket/container) | `ConfigInvalid` | no |
//! | `AlreadyExists`, `ConditionNotMatch` (412 to `If-None-Match: *`) | `AlreadyExists` | no |
//! | `RateLimited` (429, S3 `SlowDown`) | `RateLimited` | yes |
//! | `Unsupported` | `Unsupported` | no |
//! | `Conflict` (S3 409 `ConditionalRequestConflict`/`OperationAborted`) | `Unexpected` | yes |
//! | `RangeNotSatisfied` (416) | `InvalidRange` | no |
//! | anything else (5xx, 499, short bodies ...) | `Unexpected` | as opendal says |
//!
//! The kinds whose meaning the protocol branches on (`NotFound`, `AlreadyExists`,
//! `InvalidRange`) are never temporary, whatever opendal says: retrying them cannot change
//! the answer, and a retried `AlreadyExists` must be decided by reading back (the retry
//! layer), not by asking again. A `Conflict` is temporary even where opendal marks it
//! permanent: another conditional write is in flight and may still fail, so
//! "already exists" would be a lie; asking again is the only honest answer.

use super::http::{classify_transport, find_reqwest_error};
use super::{StoreError, StoreErrorKind};
use opendal::ErrorKind as OdKind;

/// Maps an opendal error to a [`StoreError`] that names the operation and key, as the
/// module's table says.
pub(super) fn map_error(
    err: opendal::Error,
    op: &'static str,
    location: &str,
    key: &str,
) -> StoreError {
    let transport = find_reqwest_error(&err).and_then(classify_transport);
    let (kind, temporary, message) = match (transport, err.kind()) {
        (Some((kind, msg)), _) => (kind, true, msg),
        (None, OdKind::NotFound) => (StoreErrorKind::NotFound, false, "object not found".into()),
        (None, OdKind::PermissionDenied) => (
            StoreErrorKind::PermissionDenied,
            false,
            format!("access denied (check the credentials): {}", err.message()),
        ),
        (None, OdKind::ConfigInvalid) => (
            StoreErrorKind::ConfigInvalid,
            false,
            format!(
                "bucket/container missing or misconfigured: {}",
                err.message()
            ),
        ),
        (None, OdKind::ConditionNotMatch | OdKind::AlreadyExists) => (
            StoreErrorKind::AlreadyExists,
            false,
            "object already exists".into(),
        ),
        (None, OdKind::RateLimited) => (
            StoreErrorKind::RateLimited,
            true,
            format!("rate limited: {}", err.message()),
        ),
        (None, OdKind::Unsupported) => (
            StoreErrorKind::Unsupported,
            false,
            format!("not supported by this store: {}", err.message()),
        ),
        (None, OdKind::Conflict) => (
            StoreErrorKind::Unexpected,
            true,
            format!("conflicting concurrent request: {}", err.message()),
        ),
        (None, OdKind::RangeNotSatisfied) => (
            StoreErrorKind::InvalidRange,
            false,
            "requested range lies past the end of the object".into(),
        ),
        (None, _) => (
            StoreErrorKind::Unexpected,
            err.is_temporary(),
            err.message().to_string(),
        ),
    };
    StoreError::new(kind, op, location, key, message)
        .with_temporary(temporary)
        .with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn map(err: opendal::Error) -> (StoreErrorKind, bool) {
        let e = map_error(err, "get", "memory://t", "k");
        assert_eq!(
            (e.operation(), e.key(), e.location()),
            ("get", "k", "memory://t")
        );
        (e.kind(), e.is_temporary())
    }

    /// `kind` as opendal reports it, once marked temporary and once permanent.
    fn both(kind: OdKind) -> [(StoreErrorKind, bool); 2] {
        [
            map(opendal::Error::new(kind, "x").set_temporary()),
            map(opendal::Error::new(kind, "x")),
        ]
    }

    #[test]
    fn not_found_is_permanent() {
        assert_eq!(
            both(OdKind::NotFound),
            [(StoreErrorKind::NotFound, false); 2]
        );
    }

    #[test]
    fn permission_denied_is_permanent() {
        assert_eq!(
            both(OdKind::PermissionDenied),
            [(StoreErrorKind::PermissionDenied, false); 2]
        );
    }

    #[test]
    fn config_invalid_is_permanent() {
        assert_eq!(
            both(OdKind::ConfigInvalid),
            [(StoreErrorKind::ConfigInvalid, false); 2]
        );
    }

    #[test]
    fn lost_create_is_already_exists_and_permanent() {
        for kind in [OdKind::AlreadyExists, OdKind::ConditionNotMatch] {
            assert_eq!(both(kind), [(StoreErrorKind::AlreadyExists, false); 2]);
        }
    }

    #[test]
    fn rate_limited_is_always_temporary() {
        assert_eq!(
            both(OdKind::RateLimited),
            [(StoreErrorKind::RateLimited, true); 2]
        );
    }

    #[test]
    fn unsupported_is_permanent() {
        assert_eq!(
            both(OdKind::Unsupported),
            [(StoreErrorKind::Unsupported, false); 2]
        );
    }

    #[test]
    fn conflict_is_always_temporary() {
        assert_eq!(
            both(OdKind::Conflict),
            [(StoreErrorKind::Unexpected, true); 2]
        );
    }

    #[test]
    fn range_not_satisfied_is_permanent() {
        assert_eq!(
            both(OdKind::RangeNotSatisfied),
            [(StoreErrorKind::InvalidRange, false); 2]
        );
    }

    #[test]
    fn other_kinds_keep_opendals_judgement() {
        for kind in [
            OdKind::Unexpected,
            OdKind::IsADirectory,
            OdKind::NotADirectory,
            OdKind::IsSameFile,
        ] {
            assert_eq!(
                both(kind),
                [
                    (StoreErrorKind::Unexpected, true),
                    (StoreErrorKind::Unexpected, false)
                ],
                "{kind:?}"
            );
        }
    }

    /// opendal wraps a failed HTTP send as `Unexpected` with the reqwest error as source.
    fn sent(e: reqwest::Error) -> opendal::Error {
        opendal::Error::new(OdKind::Unexpected, "send http request").set_source(e)
    }

    #[tokio::test]
    async fn connect_failure_is_temporary_whatever_opendal_says() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let e = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .expect_err("nothing listens");
        assert!(e.is_connect(), "{e}");
        let mapped = map_error(sent(e), "get", "s3://b/", "k");
        assert_eq!(mapped.kind(), StoreErrorKind::Unexpected);
        assert!(mapped.is_temporary());
        assert!(mapped.message().contains("cannot connect"), "{mapped}");
    }

    #[tokio::test]
    async fn transport_timeout_is_a_temporary_timeout() {
        // Accepted by the kernel (backlog) but never answered.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = silent.local_addr().expect("addr");
        let e = reqwest::Client::builder()
            .timeout(Duration::from_millis(50))
            .build()
            .expect("client")
            .get(format!("http://{addr}/"))
            .send()
            .await
            .expect_err("no answer");
        assert!(e.is_timeout(), "{e}");
        let mapped = map_error(sent(e), "get", "s3://b/", "k");
        assert_eq!(mapped.kind(), StoreErrorKind::Timeout);
        assert!(mapped.is_temporary());
    }

    /// A reqwest failure deeper in the chain wins over opendal's kind: a permission error
    /// whose cause is a timeout is a timeout.
    #[tokio::test]
    async fn transport_cause_wins_over_the_kind() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = silent.local_addr().expect("addr");
        let e = reqwest::Client::builder()
            .timeout(Duration::from_millis(50))
            .build()
            .expect("client")
            .get(format!("http://{addr}/"))
            .send()
            .await
            .expect_err("no answer");
        let err = opendal::Error::new(OdKind::PermissionDenied, "x").set_source(e);
        assert_eq!(map(err), (StoreErrorKind::Timeout, true));
    }
}

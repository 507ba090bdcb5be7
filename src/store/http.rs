//! The HTTP pieces both remote drivers share: Island's own reqwest client (bounded
//! timeouts) handed to opendal, classification of transport failures, and the
//! whole-request budget of an upload. The S3 and Swift drivers are opendal services behind
//! the same trait and must fail the same way; Swift also sends its own requests (login,
//! conditional create, ranged reads, bulk deletes) through the same client.

use std::future::Future;
use std::time::Duration;

use opendal::Operator;

use super::{StoreError, StoreErrorKind};

/// Bounded network timeouts, so an unreachable or stalled server is an error, never a hang.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// Time allowed to open a TCP (and TLS) connection.
    pub connect: Duration,
    /// Time allowed without any progress on a response, and the base budget of a whole
    /// request; uploads add one second per MiB on top (a 1 MiB/s floor).
    pub request: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(60),
        }
    }
}

impl HttpTimeouts {
    /// Whole-request budget for an upload of `len` bytes.
    pub(super) fn upload_budget(&self, len: usize) -> Duration {
        let per_mib = Duration::from_secs(1);
        let mibs = u32::try_from(len / (1024 * 1024)).unwrap_or(u32::MAX);
        self.request.saturating_add(per_mib.saturating_mul(mibs))
    }
}

/// Builds the reqwest client every Island HTTP request uses: bounded connect and read
/// timeouts, so no request can hang on a dead or black-holed server.
pub(super) fn http_client(
    timeouts: &HttpTimeouts,
    location: &str,
) -> Result<reqwest::Client, StoreError> {
    reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .read_timeout(timeouts.request)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| {
            StoreError::new(
                StoreErrorKind::ConfigInvalid,
                "open",
                location,
                "",
                format!("cannot build HTTP client: {e}"),
            )
            .with_source(e)
        })
}

/// Gives `op` Island's HTTP client instead of opendal's process-wide default.
pub(super) fn with_client(op: Operator, client: reqwest::Client) -> Operator {
    let transport = opendal::HttpTransporter::new(
        opendal_http_transport_reqwest::ReqwestTransport::new(client),
    );
    let ctx = op.context().with_http_transport(transport);
    op.with_context(ctx)
}

/// Finds a reqwest error in `err`'s source chain (connect failure, timeout).
pub(super) fn find_reqwest_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a reqwest::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<reqwest::Error>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// Maps a transport-level reqwest failure to a store error kind and message.
pub(super) fn classify_transport(r: &reqwest::Error) -> Option<(StoreErrorKind, String)> {
    if r.is_timeout() {
        Some((StoreErrorKind::Timeout, format!("request timed out: {r}")))
    } else if r.is_connect() {
        Some((
            StoreErrorKind::Unexpected,
            format!("cannot connect to the endpoint: {r}"),
        ))
    } else {
        None
    }
}

/// A store error for a whole-request timeout enforced by Island itself.
pub(super) fn timeout_error(
    op: &'static str,
    location: &str,
    key: &str,
    budget: Duration,
) -> StoreError {
    StoreError::new(
        StoreErrorKind::Timeout,
        op,
        location,
        key,
        format!("no answer within {} s", budget.as_secs()),
    )
    .with_temporary(true)
}

/// Runs an upload future under its whole-request budget.
pub(super) async fn bounded<T>(
    budget: Duration,
    op: &'static str,
    location: &str,
    key: &str,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(budget, fut)
        .await
        .unwrap_or_else(|_| Err(timeout_error(op, location, key, budget)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_budget_grows_with_size_and_saturates() {
        let t = HttpTimeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_secs(10),
        };
        assert_eq!(t.upload_budget(0), Duration::from_secs(10));
        assert_eq!(t.upload_budget(16 << 20), Duration::from_secs(26));
        assert!(t.upload_budget(usize::MAX) >= Duration::from_secs(u64::from(u32::MAX)));
    }
}

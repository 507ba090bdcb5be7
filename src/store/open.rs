//! Repository URLs → a ready store: the driver wrapped in the standard layers.

use super::s3::{open_s3, HttpTimeouts, S3Config};
use super::swift::{open_swift, SwiftConfig, SwiftCredentials};
use super::{
    CountingStore, FsStore, LimitStore, MemoryStore, ObjectStore, RetryStore, StoreError,
    StoreErrorKind, ThrottleStore, TimeoutStore,
};
use std::sync::Arc;
use std::time::Duration;

/// Retry policy for temporary errors: jittered exponential backoff, bounded both in
/// attempts and in total time so a dead endpoint fails a job instead of hanging it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOptions {
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles per attempt.
    pub initial_backoff: Duration,
    /// Ceiling of one backoff.
    pub max_backoff: Duration,
    /// No retry starts once this much time has passed since the first attempt.
    pub max_elapsed: Duration,
}

/// The default rides out a gateway restart: 9 backoffs of 0.1 s doubling to the 10 s
/// ceiling wait 16–33 s in all (equal jitter), while a radosgw restart on loopback takes
/// about 3 s from stop to answering (measured with `scripts/objstore/rgw-outage.sh`).
impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(120),
        }
    }
}

/// Everything that configures how a store is reached, independent of the driver. A plain
/// struct with `Default` so the CLI and tests fill in only what they set; drivers read the
/// fields that concern them (and environment variables for what is unset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// S3 endpoint URL (overrides `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// S3 region (overrides `AWS_REGION` / `AWS_DEFAULT_REGION`).
    pub region: Option<String>,
    /// S3 path-style addressing instead of virtual-hosted buckets.
    pub path_style: Option<bool>,
    /// Requests in flight at once through this store.
    pub concurrency: usize,
    /// Bound on one request attempt; an attempt that takes longer fails as a temporary
    /// `Timeout` and is retried.
    pub request_timeout: Duration,
    /// Bound on establishing a connection (remote drivers).
    pub connect_timeout: Duration,
    /// Upload bandwidth cap in bytes per second (`--limit-upload`).
    pub limit_upload: Option<u64>,
    /// Download bandwidth cap in bytes per second (`--limit-download`).
    pub limit_download: Option<u64>,
    /// Retry policy for temporary errors.
    pub retry: RetryOptions,
    /// Swift v1 (tempauth) auth URL; with `swift_user` and `swift_key` it replaces the
    /// `ST_*` / `OS_*` environment credentials.
    pub swift_auth_url: Option<String>,
    /// Swift v1 user (`account:user`).
    pub swift_user: Option<String>,
    /// Swift v1 key.
    pub swift_key: Option<String>,
    /// Settle time of create-if-absent on Swift (`--swift-create-settle`); `None` is
    /// [`super::swift::DEFAULT_CREATE_SETTLE`].
    pub swift_create_settle: Option<Duration>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            endpoint: None,
            region: None,
            path_style: None,
            concurrency: 32,
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            limit_upload: None,
            limit_download: None,
            retry: RetryOptions::default(),
            swift_auth_url: None,
            swift_user: None,
            swift_key: None,
            swift_create_settle: None,
        }
    }
}

/// Opens the store a repository URL names, wrapped by [`wrap_store`]:
/// `file:///path` or a plain path (local directory), `memory://NAME` (process-wide: the
/// same NAME is the same store), `s3://bucket/prefix`, `swift://container/prefix`.
pub async fn open_store(
    url: &str,
    opts: &StoreOptions,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let invalid =
        |msg: String| StoreError::new(StoreErrorKind::ConfigInvalid, "open", url, "", msg);
    let driver: Arc<dyn ObjectStore> = if let Some(name) = url.strip_prefix("memory://") {
        let name = if name.is_empty() { "default" } else { name };
        Arc::new(MemoryStore::named(name)?)
    } else if url.starts_with("file:") {
        let parsed = url::Url::parse(url).map_err(|e| invalid(format!("bad file URL: {e}")))?;
        let path = parsed
            .to_file_path()
            .map_err(|()| invalid("file URL is not an absolute local path".into()))?;
        Arc::new(FsStore::new(path)?)
    } else if url.starts_with("s3://") || url.starts_with("swift://") {
        let parsed = url::Url::parse(url).map_err(|e| invalid(format!("bad URL: {e}")))?;
        let host = parsed.host_str().unwrap_or_default().to_string();
        let prefix = parsed.path().trim_matches('/').to_string();
        let timeouts = HttpTimeouts {
            connect: opts.connect_timeout,
            request: opts.request_timeout,
        };
        if parsed.scheme() == "s3" {
            let config = S3Config {
                bucket: host,
                prefix,
                endpoint: opts.endpoint.clone(),
                region: opts.region.clone(),
                path_style: opts.path_style,
                timeouts,
                ..S3Config::default()
            };
            Arc::new(open_s3(&config).await?)
        } else {
            let credentials = match (&opts.swift_auth_url, &opts.swift_user, &opts.swift_key) {
                (Some(auth_url), Some(user), Some(key)) => Some(SwiftCredentials::V1 {
                    auth_url: auth_url.clone(),
                    user: user.clone(),
                    key: key.clone(),
                }),
                _ => None,
            };
            let config = SwiftConfig {
                container: host,
                prefix,
                credentials,
                timeouts,
                create_settle: opts
                    .swift_create_settle
                    .unwrap_or(super::swift::DEFAULT_CREATE_SETTLE),
            };
            Arc::new(open_swift(&config).await?)
        }
    } else if let Some((scheme, _)) = url.split_once("://") {
        return Err(invalid(format!(
            "unknown store scheme {scheme:?} (expected file, memory, s3 or swift)"
        )));
    } else if url.is_empty() {
        return Err(invalid("empty repository location".into()));
    } else {
        Arc::new(FsStore::new(url)?)
    };
    Ok(wrap_store(driver, opts))
}

/// Wraps a driver in the standard layers, innermost first:
/// timeout (each attempt is bounded) → retry (a timed-out or otherwise temporary attempt
/// is retried with backoff) → limit (at most `concurrency` operations in flight, retries
/// included, so backoff never multiplies the load) → throttle (bandwidth is charged once
/// per logical transfer, before it takes a concurrency slot) → counting (outermost:
/// counts what the repository asked for, one per logical request, and the bytes).
/// These are Island's own layers, not opendal's, because they must wrap every driver the
/// same way; each layer's module says what the opendal layer would change.
pub fn wrap_store(driver: Arc<dyn ObjectStore>, opts: &StoreOptions) -> Arc<dyn ObjectStore> {
    let s: Arc<dyn ObjectStore> = Arc::new(TimeoutStore::new(driver, opts.request_timeout));
    let s: Arc<dyn ObjectStore> = Arc::new(RetryStore::new(s, opts.retry.clone()));
    let s: Arc<dyn ObjectStore> = Arc::new(LimitStore::new(s, opts.concurrency));
    let s: Arc<dyn ObjectStore> = Arc::new(ThrottleStore::new(
        s,
        opts.limit_upload,
        opts.limit_download,
    ));
    Arc::new(CountingStore::new(s))
}

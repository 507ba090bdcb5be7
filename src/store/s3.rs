//! S3 driver (AWS S3, Ceph radosgw and other S3-compatible servers) on opendal's S3 service.
//!
//! Settings follow what users already have for the AWS tools (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
//! `AWS_ENDPOINT_URL`); explicit [`S3Config`] fields override them. opendal's own loading of
//! profiles and the EC2 metadata service is switched off so that a misconfigured host fails
//! fast with a clear error instead of probing the network.
//!
//! Create-if-absent is a `PutObject` with `If-None-Match: *`; radosgw and AWS answer `412`
//! to the loser. See `format-spec/object-stores.md` for what this guarantees.
//!
//! This module also holds the pieces the Swift driver shares with it (HTTP client with
//! bounded timeouts, opendal error mapping, listing): both drivers are opendal services
//! behind the same trait and must fail the same way.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use opendal::{ErrorKind as OdKind, Operator};

use super::{Capabilities, ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind};

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

/// Where and how to reach an S3 bucket. `None` fields fall back to the AWS environment
/// variables named on each field.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name (the host part of `s3://BUCKET/PREFIX`).
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Endpoint URL, e.g. `http://127.0.0.1:7480`; else `AWS_ENDPOINT_URL`; else AWS.
    pub endpoint: Option<String>,
    /// Region; else `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Access key; else `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Secret key; else `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials; else `AWS_SESSION_TOKEN`.
    pub session_token: Option<String>,
    /// Address the bucket as `ENDPOINT/BUCKET` (path style) instead of `BUCKET.ENDPOINT`.
    /// Default: path style when an endpoint is set (self-hosted servers rarely have
    /// wildcard DNS), virtual-host style on AWS.
    pub path_style: Option<bool>,
    /// Network timeouts.
    pub timeouts: HttpTimeouts,
}

impl std::fmt::Debug for S3Config {
    /// Never prints the secret key or session token (configs end up in logs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("path_style", &self.path_style)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

/// Most keys one S3 `DeleteObjects` request may carry.
const S3_MAX_BATCH_DELETE: usize = 1000;

/// An [`ObjectStore`] on one S3 bucket and prefix.
#[derive(Debug)]
pub struct S3Store {
    op: Operator,
    location: String,
    timeouts: HttpTimeouts,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Opens an S3 bucket and checks that it is reachable with the given credentials (one
/// listing request), so a wrong key, a missing bucket or an unreachable endpoint is
/// reported here, by kind: `PermissionDenied`, `ConfigInvalid`, or a temporary
/// `Unexpected`/`Timeout`.
pub async fn open_s3(config: &S3Config) -> Result<S3Store, StoreError> {
    let endpoint = config
        .endpoint
        .clone()
        .or_else(|| env_nonempty("AWS_ENDPOINT_URL"));
    let region = config
        .region
        .clone()
        .or_else(|| env_nonempty("AWS_REGION"))
        .or_else(|| env_nonempty("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".to_string());
    let location = match &endpoint {
        Some(e) => format!("s3://{}/{} at {}", config.bucket, config.prefix, e),
        None => format!("s3://{}/{}", config.bucket, config.prefix),
    };
    let invalid =
        |msg: String| StoreError::new(StoreErrorKind::ConfigInvalid, "open", &location, "", msg);
    if config.bucket.is_empty() {
        return Err(invalid("no bucket name in the repository URL".into()));
    }
    let access_key = config
        .access_key_id
        .clone()
        .or_else(|| env_nonempty("AWS_ACCESS_KEY_ID"));
    let secret_key = config
        .secret_access_key
        .clone()
        .or_else(|| env_nonempty("AWS_SECRET_ACCESS_KEY"));
    let session_token = config
        .session_token
        .clone()
        .or_else(|| env_nonempty("AWS_SESSION_TOKEN"));
    let (Some(access_key), Some(secret_key)) = (access_key, secret_key) else {
        return Err(invalid(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the flags)"
                .into(),
        ));
    };
    let path_style = config.path_style.unwrap_or(endpoint.is_some());

    let mut builder = opendal::services::S3::default()
        .bucket(&config.bucket)
        .root(&format!("/{}", config.prefix.trim_matches('/')))
        .region(&region)
        .access_key_id(&access_key)
        .secret_access_key(&secret_key)
        .disable_config_load()
        .disable_ec2_metadata();
    if let Some(e) = &endpoint {
        builder = builder.endpoint(e);
    }
    if let Some(t) = &session_token {
        builder = builder.session_token(t);
    }
    if !path_style {
        builder = builder.enable_virtual_host_style();
    }
    let op = Operator::new(builder).map_err(|e| map_error(e, "open", &location, ""))?;
    let op = with_client(op, http_client(&config.timeouts, &location)?);
    let store = S3Store {
        op,
        location,
        timeouts: config.timeouts,
    };
    store
        .list("", None, 1)
        .await
        .map_err(|e| e.with_operation("open", ""))?;
    Ok(store)
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

/// Maps an opendal error to a [`StoreError`] that names the operation and key.
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

/// Runs an upload future under its whole-request budget.
async fn bounded<T>(
    budget: Duration,
    op: &'static str,
    location: &str,
    key: &str,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(budget, fut)
        .await
        .unwrap_or_else(|_| Err(timeout_error(op, location, key, budget)))
}

#[async_trait]
impl ObjectStore for S3Store {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_create: true,
            max_batch_delete: S3_MAX_BATCH_DELETE,
            create_settle: std::time::Duration::ZERO,
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        check_key("put", &self.location, key)?;
        let budget = self.timeouts.upload_budget(data.len());
        bounded(budget, "put", &self.location, key, async {
            self.op
                .write(key, data)
                .await
                .map(|_| ())
                .map_err(|e| map_error(e, "put", &self.location, key))
        })
        .await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        check_key("put_if_absent", &self.location, key)?;
        let budget = self.timeouts.upload_budget(data.len());
        bounded(budget, "put_if_absent", &self.location, key, async {
            match self.op.write_with(key, data).if_not_exists(true).await {
                Ok(_) => Ok(PutOutcome::Created),
                Err(e) => {
                    let e = map_error(e, "put_if_absent", &self.location, key);
                    if e.kind() == StoreErrorKind::AlreadyExists {
                        Ok(PutOutcome::AlreadyExists)
                    } else {
                        // A 409 ConditionalRequestConflict (another conditional write in
                        // flight) stays a temporary error: the other write may still fail,
                        // so "exists" would be a lie. The retry layer asks again.
                        Err(e)
                    }
                }
            }
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        check_key("get", &self.location, key)?;
        self.op
            .read(key)
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| map_error(e, "get", &self.location, key))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        read_range(&self.op, &self.location, key, range).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        head_operator(&self.op, &self.location, key).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        list_operator(&self.op, &self.location, prefix, start_after, limit).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key("delete", &self.location, key)?;
        self.op
            .delete(key)
            .await
            .map_err(|e| map_error(e, "delete", &self.location, key))
    }

    async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError> {
        let Some(first) = keys.first() else {
            return Ok(());
        };
        for k in keys {
            check_key("delete_batch", &self.location, k)?;
        }
        // opendal's batch deleter sends DeleteObjects requests of at most 1000 keys.
        self.op
            .delete_iter(keys.iter().map(String::as_str))
            .await
            .map_err(|e| map_error(e, "delete_batch", &self.location, first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let c = S3Config {
            bucket: "b".into(),
            secret_access_key: Some("verysecret".into()),
            session_token: Some("sessiontok".into()),
            ..S3Config::default()
        };
        let d = format!("{c:?}");
        assert!(d.contains("\"b\""), "{d}");
        assert!(
            !d.contains("verysecret") && !d.contains("sessiontok"),
            "{d}"
        );
    }

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

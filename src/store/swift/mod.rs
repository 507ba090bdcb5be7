//! OpenStack Swift driver: opendal's Swift service for reads, writes, listings and bulk
//! deletes, with Island's own login (tempauth v1 / Keystone v3, `swift/auth.rs`) and its own
//! HTTP request for create-if-absent, which opendal does not offer on Swift.
//!
//! Tokens expire during long jobs. Every operation runs against the current session
//! (token + storage URL + operator built from them); when the server refuses it (401, which
//! opendal reports as permission denied) the driver logs in again once — a single login
//! shared by all requests that failed with the same session — rebuilds the operator and
//! retries the operation once.
//!
//! Create-if-absent sends `PUT` with `If-None-Match: *`: Swift answers 201 or 412. The
//! check is made by each object server when the request *arrives*, so it never overwrites
//! an object that is already complete, but two creators racing for the same new key can
//! both get 201 (measured on Swift 2.30, one replica: several winners of 16). The driver
//! therefore reports `atomic_create: false`; `format-spec/object-stores.md` says what Island
//! requires from a Swift deployment because of that.

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use opendal::Operator;

pub use crate::store::http::HttpTimeouts;
use crate::store::http::{bounded, classify_transport, http_client, with_client};
use crate::store::opendal_errors::map_error;
use crate::store::operator::{check_key, head_operator, list_operator, read_range};
use crate::store::{Capabilities, ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind};
pub use auth::SwiftCredentials;
use auth::{login, SwiftToken};

mod auth;
mod range;

/// Where and how to reach a Swift container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwiftConfig {
    /// Container name (the host part of `swift://CONTAINER/PREFIX`).
    pub container: String,
    /// Object name prefix inside the container, without leading or trailing `/`.
    pub prefix: String,
    /// Login; `None` reads `ST_AUTH`/`ST_USER`/`ST_KEY` or the `OS_*` variables.
    pub credentials: Option<SwiftCredentials>,
    /// Network timeouts.
    pub timeouts: HttpTimeouts,
    /// Settle time of a create-if-absent, reported as `Capabilities::create_settle`
    /// (Swift's `If-None-Match` is not atomic; see [`DEFAULT_CREATE_SETTLE`]).
    pub create_settle: Duration,
}

/// Default [`SwiftConfig::create_settle`]: far longer than a small object's PUT takes on
/// any healthy link (milliseconds), so every racing create has landed before the winner is
/// read back, yet short next to a backup job.
pub const DEFAULT_CREATE_SETTLE: Duration = Duration::from_secs(10);

/// Names per `?bulk-delete` request. Swift accepts 10 000 by default, but the proxy deletes
/// them one by one and checks the token for each; 1000 keeps one request short enough to
/// finish within a token's life and a request timeout, for 1/1000 of the request count.
const SWIFT_MAX_BATCH_DELETE: usize = 1000;

/// One login: token, storage URL and the opendal operator bound to them.
#[derive(Debug)]
struct Session {
    token: SwiftToken,
    op: Operator,
    /// Increases with every login, so concurrent failures trigger a single re-login.
    generation: u64,
}

/// What every session's operator is built from.
#[derive(Debug)]
struct Target {
    container: String,
    /// Normalized: empty, or ending in `/`.
    prefix: String,
    location: String,
    client: reqwest::Client,
}

impl Target {
    fn session(&self, token: SwiftToken, generation: u64) -> Result<Session, StoreError> {
        let builder = opendal::services::Swift::default()
            .endpoint(&token.storage_url)
            .container(&self.container)
            .root(&format!("/{}", self.prefix))
            .token(&token.token);
        let op = Operator::new(builder).map_err(|e| map_error(e, "open", &self.location, ""))?;
        let op = with_client(op, self.client.clone());
        Ok(Session {
            token,
            op,
            generation,
        })
    }
}

/// An [`ObjectStore`] on one Swift container and prefix.
#[derive(Debug)]
pub struct SwiftStore {
    target: Target,
    location: String,
    timeouts: HttpTimeouts,
    create_settle: Duration,
    client: reqwest::Client,
    credentials: SwiftCredentials,
    session: RwLock<Arc<Session>>,
    relogin: tokio::sync::Mutex<()>,
    logins: AtomicU64,
}

/// Logs in, checks that the container exists, and returns the store. Wrong credentials
/// give `PermissionDenied`, a missing container `ConfigInvalid`, an unreachable auth or
/// storage endpoint a temporary `Unexpected`/`Timeout` error — all within the timeouts.
pub async fn open_swift(config: &SwiftConfig) -> Result<SwiftStore, StoreError> {
    let prefix = config.prefix.trim_matches('/');
    let location = format!("swift://{}/{}", config.container, prefix);
    let invalid =
        |m: &str| StoreError::new(StoreErrorKind::ConfigInvalid, "open", &location, "", m);
    if config.container.is_empty() || config.container.contains('/') {
        return Err(invalid("container name missing or containing '/'"));
    }
    let credentials = match &config.credentials {
        Some(c) => c.clone(),
        None => SwiftCredentials::from_env().ok_or_else(|| {
            invalid(
                "no Swift credentials: set ST_AUTH/ST_USER/ST_KEY or OS_AUTH_URL/OS_USERNAME/\
                 OS_PASSWORD/OS_PROJECT_NAME (or the flags)",
            )
        })?,
    };
    let client = http_client(&config.timeouts, &location)?;
    let token = login(&client, &credentials, &location).await?;
    let target = Target {
        container: config.container.clone(),
        prefix: if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        },
        location: location.clone(),
        client: client.clone(),
    };
    let first = target.session(token, 1)?;
    let store = SwiftStore {
        target,
        location,
        timeouts: config.timeouts,
        create_settle: config.create_settle,
        client,
        credentials,
        session: RwLock::new(Arc::new(first)),
        relogin: tokio::sync::Mutex::new(()),
        logins: AtomicU64::new(1),
    };
    store.run("open", "", |s| store.head_container(s)).await?;
    Ok(store)
}

/// Percent-encodes an object path for a URL, keeping `/` separators.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl SwiftStore {
    /// How many times this store has logged in (1 after opening). Re-logins happen when a
    /// token expires; operators and tests read this to see that it happened.
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    fn current(&self) -> Arc<Session> {
        self.session
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Logs in again unless another task already replaced the failed session.
    async fn relogin(&self, failed: u64) -> Result<Arc<Session>, StoreError> {
        let _one_at_a_time = self.relogin.lock().await;
        let cur = self.current();
        if cur.generation != failed {
            return Ok(cur);
        }
        tracing::info!(location = %self.location, "Swift token refused; logging in again");
        let token = login(&self.client, &self.credentials, &self.location).await?;
        self.logins.fetch_add(1, Ordering::Relaxed);
        let fresh = Arc::new(self.target.session(token, failed.saturating_add(1))?);
        *self.session.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        Ok(fresh)
    }

    /// Runs `f` with the current session; on a refusal logs in again and runs it once more.
    async fn run<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T, StoreError>
    where
        F: Fn(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.run_with_relogins(op, key, 2, f).await
    }

    /// [`Self::run`] with up to `relogins` fresh logins. More than one can be needed:
    /// tempauth hands out the user's current token again until it expires, so a fresh
    /// login may return a token with only seconds left.
    async fn run_with_relogins<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        relogins: u32,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut s = self.current();
        let mut left = relogins;
        loop {
            match f(s.clone()).await {
                Err(e) if e.kind() == StoreErrorKind::PermissionDenied && left > 0 => {
                    left -= 1;
                    s = self
                        .relogin(s.generation)
                        .await
                        .map_err(|le| le.with_operation(op, key))?;
                }
                r => return r,
            }
        }
    }

    fn object_url(&self, s: &Session, key: &str) -> String {
        format!(
            "{}/{}/{}",
            s.token.storage_url.trim_end_matches('/'),
            encode_path(&self.target.container),
            encode_path(&format!("{}{}", self.target.prefix, key))
        )
    }

    /// Error for a status Island's own Swift requests did not expect.
    fn status_error(&self, op: &'static str, key: &str, status: reqwest::StatusCode) -> StoreError {
        let (kind, temporary, what) = match status.as_u16() {
            401 => (StoreErrorKind::PermissionDenied, false, "token refused"),
            403 => (StoreErrorKind::PermissionDenied, false, "access denied"),
            404 => (StoreErrorKind::ConfigInvalid, false, "container missing"),
            408 => (StoreErrorKind::Timeout, true, "server timed out"),
            429 | 498 => (StoreErrorKind::RateLimited, true, "rate limited"),
            s if s >= 500 => (StoreErrorKind::Unexpected, true, "server error"),
            _ => (StoreErrorKind::Unexpected, false, "unexpected answer"),
        };
        StoreError::new(kind, op, &self.location, key, format!("{what} ({status})"))
            .with_temporary(temporary)
    }

    fn transport_error(&self, op: &'static str, key: &str, e: reqwest::Error) -> StoreError {
        let (kind, msg) = classify_transport(&e)
            .unwrap_or((StoreErrorKind::Unexpected, format!("request failed: {e}")));
        StoreError::new(kind, op, &self.location, key, msg)
            .with_temporary(true)
            .with_source(e)
    }

    async fn head_container(&self, s: Arc<Session>) -> Result<(), StoreError> {
        let url = format!(
            "{}/{}",
            s.token.storage_url.trim_end_matches('/'),
            encode_path(&self.target.container)
        );
        let resp = self
            .client
            .head(&url)
            .header("X-Auth-Token", &s.token.token)
            .send()
            .await
            .map_err(|e| self.transport_error("open", "", e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.status_error("open", "", resp.status()))
        }
    }

    async fn put_conditional(
        &self,
        s: Arc<Session>,
        key: &str,
        data: Bytes,
    ) -> Result<PutOutcome, StoreError> {
        let resp = self
            .client
            .put(self.object_url(&s, key))
            .header("X-Auth-Token", &s.token.token)
            .header("If-None-Match", "*")
            .body(data)
            .send()
            .await
            .map_err(|e| self.transport_error("put_if_absent", key, e))?;
        match resp.status().as_u16() {
            201 => Ok(PutOutcome::Created),
            412 => Ok(PutOutcome::AlreadyExists),
            _ => Err(self.status_error("put_if_absent", key, resp.status())),
        }
    }
}

#[async_trait]
impl ObjectStore for SwiftStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_create: false,
            max_batch_delete: SWIFT_MAX_BATCH_DELETE,
            create_settle: self.create_settle,
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        check_key("put", &self.location, key)?;
        let budget = self.timeouts.upload_budget(data.len());
        let fut = self.run("put", key, |s| {
            let data = data.clone();
            async move {
                s.op.write(key, data)
                    .await
                    .map(|_| ())
                    .map_err(|e| map_error(e, "put", &self.location, key))
            }
        });
        bounded(budget, "put", &self.location, key, fut).await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        check_key("put_if_absent", &self.location, key)?;
        let budget = self.timeouts.upload_budget(data.len());
        let fut = self.run("put_if_absent", key, |s| {
            self.put_conditional(s, key, data.clone())
        });
        bounded(budget, "put_if_absent", &self.location, key, fut).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        check_key("get", &self.location, key)?;
        self.run("get", key, |s| async move {
            s.op.read(key)
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| map_error(e, "get", &self.location, key))
        })
        .await
    }

    /// Empty and inverted ranges take the shared path (a `HEAD` decides an empty range);
    /// every other range is one request of Island's own (`swift/range.rs`), whose answer
    /// alone tells a range past the end from a failure.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        check_key("get_range", &self.location, key)?;
        if range.start >= range.end {
            return self
                .run("get_range", key, |s| {
                    let range = range.clone();
                    async move { read_range(&s.op, &self.location, key, range).await }
                })
                .await;
        }
        self.run("get_range", key, |s| {
            self.get_range_once(s, key, range.clone())
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.run("head", key, |s| async move {
            head_operator(&s.op, &self.location, key).await
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        self.run("list", prefix, |s| async move {
            list_operator(&s.op, &self.location, prefix, start_after, limit).await
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key("delete", &self.location, key)?;
        self.run("delete", key, |s| async move {
            s.op.delete(key)
                .await
                .map_err(|e| map_error(e, "delete", &self.location, key))
        })
        .await
    }

    async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError> {
        for k in keys {
            check_key("delete_batch", &self.location, k)?;
        }
        for chunk in keys.chunks(SWIFT_MAX_BATCH_DELETE) {
            self.bulk_delete_chunk(chunk).await?;
        }
        Ok(())
    }
}

/// Most logins one bulk delete may use: the token is checked for every name, so a slow
/// server and short-lived tokens can need several, but each must make progress.
const BULK_DELETE_MAX_LOGINS: u32 = 20;

/// What one `?bulk-delete` answer says (Swift answers 200 and reports per-name results in
/// a JSON body, including refusals of an expired token).
#[derive(Debug, PartialEq, Eq)]
enum BulkOutcome {
    /// Every name was deleted or already absent.
    Done,
    /// The token was refused for these names (all of them when the list is empty); the
    /// names before them were processed.
    Unauthorized(Vec<String>),
    /// Other per-name failures: `(name, status)` pairs.
    Failed(Vec<(String, String)>),
}

/// Parses a `?bulk-delete` JSON answer without trusting its shape.
fn parse_bulk_delete(body: &[u8]) -> Result<BulkOutcome, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("bulk-delete answer is not JSON: {e}"))?;
    let status = v
        .get("Response Status")
        .and_then(serde_json::Value::as_str)
        .ok_or("bulk-delete answer has no \"Response Status\"")?;
    let mut refused = Vec::new();
    let mut failed = Vec::new();
    if let Some(errors) = v.get("Errors").and_then(serde_json::Value::as_array) {
        for e in errors {
            let pair = e.as_array().map(Vec::as_slice).unwrap_or_default();
            let name = pair
                .first()
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?");
            let st = pair
                .get(1)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?");
            if st.starts_with("401") {
                refused.push(name.to_string());
            } else {
                failed.push((name.to_string(), st.to_string()));
            }
        }
    }
    if !failed.is_empty() {
        return Ok(BulkOutcome::Failed(failed));
    }
    if !refused.is_empty() || status.starts_with("401") {
        return Ok(BulkOutcome::Unauthorized(refused));
    }
    if status.starts_with('2') {
        Ok(BulkOutcome::Done)
    } else {
        Ok(BulkOutcome::Failed(vec![(
            String::new(),
            status.to_string(),
        )]))
    }
}

impl SwiftStore {
    /// The `?bulk-delete` line for `key`: `/container/object`, URL-encoded.
    fn bulk_line(&self, key: &str) -> String {
        format!(
            "/{}/{}",
            encode_path(&self.target.container),
            encode_path(&format!("{}{}", self.target.prefix, key))
        )
    }

    /// Deletes at most [`SWIFT_MAX_BATCH_DELETE`] keys, logging in again and resending
    /// only the refused names while each attempt makes progress.
    async fn bulk_delete_chunk(&self, chunk: &[String]) -> Result<(), StoreError> {
        let mut pending: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let mut logins = 0;
        while let Some(first) = pending.first().copied() {
            let s = self.current();
            let refused = self.bulk_delete(&s, &pending).await?;
            if refused.is_empty() {
                return Ok(());
            }
            let progress = refused.len() < pending.len();
            if logins >= BULK_DELETE_MAX_LOGINS || (!progress && logins > 0) {
                return Err(StoreError::new(
                    StoreErrorKind::PermissionDenied,
                    "delete_batch",
                    &self.location,
                    first,
                    format!(
                        "token refused for {} names after {logins} logins",
                        refused.len()
                    ),
                ));
            }
            logins += 1;
            self.relogin(s.generation).await?;
            pending = refused;
        }
        Ok(())
    }

    /// One `POST ?bulk-delete`; returns the keys whose deletion the token did not cover.
    async fn bulk_delete<'k>(
        &self,
        s: &Session,
        keys: &[&'k str],
    ) -> Result<Vec<&'k str>, StoreError> {
        let first = keys.first().copied().unwrap_or("");
        let lines: Vec<String> = keys.iter().map(|k| self.bulk_line(k)).collect();
        let mut body = lines.join("\n");
        body.push('\n');
        let url = format!("{}?bulk-delete", s.token.storage_url.trim_end_matches('/'));
        let resp = self
            .client
            .post(&url)
            .header("X-Auth-Token", &s.token.token)
            .header("Accept", "application/json")
            .header("Content-Type", "text/plain")
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error("delete_batch", first, e))?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Ok(keys.to_vec());
        }
        if !resp.status().is_success() {
            return Err(self.status_error("delete_batch", first, resp.status()));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error("delete_batch", first, e))?;
        let fail = |m: String| {
            StoreError::new(
                StoreErrorKind::Unexpected,
                "delete_batch",
                &self.location,
                first,
                m,
            )
        };
        match parse_bulk_delete(&bytes).map_err(fail)? {
            BulkOutcome::Done => Ok(Vec::new()),
            BulkOutcome::Unauthorized(names) => {
                // Swift echoes the names as sent or decoded; unknown names mean "all".
                let refused: Vec<&str> = keys
                    .iter()
                    .zip(&lines)
                    .filter(|(k, line)| {
                        names
                            .iter()
                            .any(|n| n == *line || n.ends_with(&format!("/{}", k)))
                    })
                    .map(|(k, _)| *k)
                    .collect();
                Ok(if refused.is_empty() {
                    keys.to_vec()
                } else {
                    refused
                })
            }
            BulkOutcome::Failed(list) => {
                let shown: Vec<String> = list
                    .iter()
                    .take(5)
                    .map(|(n, st)| format!("{n}: {st}"))
                    .collect();
                let temporary = list.iter().any(|(_, st)| st.starts_with('5'));
                Err(fail(format!(
                    "bulk delete failed for {} names ({})",
                    list.len(),
                    shown.join(", ")
                ))
                .with_temporary(temporary))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{encode_path, parse_bulk_delete, BulkOutcome};

    /// Answers captured from Swift 2.30's bulk middleware.
    #[test]
    fn bulk_delete_answers() {
        let ok = br#"{"Response Status": "200 OK", "Response Body": "", "Number Deleted": 1, "Number Not Found": 2, "Errors": []}"#;
        assert_eq!(parse_bulk_delete(ok), Ok(BulkOutcome::Done));
        let expired = br#"{"Response Status": "400 Bad Request", "Response Body": "", "Number Deleted": 0, "Number Not Found": 0, "Errors": [["/island-test/bd/1", "401 Unauthorized"]]}"#;
        assert_eq!(
            parse_bulk_delete(expired),
            Ok(BulkOutcome::Unauthorized(vec!["/island-test/bd/1".into()]))
        );
        let conflict = br#"{"Response Status": "400 Bad Request", "Response Body": "", "Number Deleted": 0, "Number Not Found": 1, "Errors": [["/island-test", "409 Conflict"]]}"#;
        assert_eq!(
            parse_bulk_delete(conflict),
            Ok(BulkOutcome::Failed(vec![(
                "/island-test".into(),
                "409 Conflict".into()
            )]))
        );
        let bad = br#"{"Response Status": "502 Bad Gateway", "Errors": []}"#;
        assert!(matches!(parse_bulk_delete(bad), Ok(BulkOutcome::Failed(_))));
        assert!(parse_bulk_delete(b"<html>").is_err());
        assert!(parse_bulk_delete(br#"{"Errors": [[1, 2], 3]}"#).is_err());
        let odd = br#"{"Response Status": "400 Bad Request", "Errors": [[1, 2], 3]}"#;
        assert!(matches!(parse_bulk_delete(odd), Ok(BulkOutcome::Failed(v)) if v.len() == 2));
    }

    #[test]
    fn encodes_everything_but_unreserved_and_slash() {
        assert_eq!(encode_path("packs/ab/x-1_2.~"), "packs/ab/x-1_2.~");
        assert_eq!(encode_path("a b?c#d%e"), "a%20b%3Fc%23d%25e");
        assert_eq!(encode_path("é"), "%C3%A9");
    }
}

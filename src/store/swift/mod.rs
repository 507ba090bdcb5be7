//! OpenStack Swift driver: opendal's Swift service for whole reads, writes, listings, heads
//! and single deletes, and Island's own requests where opendal's service lacks what the
//! protocol needs: login (tempauth v1 / Keystone v3, `auth.rs`), create-if-absent (here),
//! ranged reads decided by one answer (`range.rs`) and bulk deletes (`delete.rs`). The
//! statuses of those requests are classified in `error.rs`, opendal's errors in
//! `store/opendal_errors.rs`.
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
use crate::store::http::{bounded, http_client, with_client};
use crate::store::opendal_errors::map_error;
use crate::store::operator::{check_key, head_operator, list_operator, read_range};
use crate::store::{Capabilities, ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind};
pub use auth::SwiftCredentials;
use auth::{login, SwiftToken};

mod auth;
mod config;
mod delete;
mod error;
mod range;

pub use config::{SwiftConfig, DEFAULT_CREATE_SETTLE};

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

#[cfg(test)]
mod tests {
    use super::encode_path;

    #[test]
    fn encodes_everything_but_unreserved_and_slash() {
        assert_eq!(encode_path("packs/ab/x-1_2.~"), "packs/ab/x-1_2.~");
        assert_eq!(encode_path("a b?c#d%e"), "a%20b%3Fc%23d%25e");
        assert_eq!(encode_path("é"), "%C3%A9");
    }
}

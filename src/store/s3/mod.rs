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

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use opendal::Operator;

pub use crate::store::http::HttpTimeouts;
use crate::store::http::{bounded, http_client, with_client};
use crate::store::opendal_errors::map_error;
use crate::store::operator::{check_key, head_operator, list_operator, read_range};
mod config;

use crate::store::{Capabilities, ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind};
pub use config::S3Config;

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
}

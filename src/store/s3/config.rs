//! What an S3 store is opened from.

use super::HttpTimeouts;

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

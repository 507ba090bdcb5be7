use thiserror::Error;

/// Errors from the repository format and protocol, naming the object or snapshot involved.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum RepoError {
    /// An object failed its magic, version or checksum check.
    #[error("{key}: corrupt object: {reason}")]
    Corrupt { key: String, reason: String },
}

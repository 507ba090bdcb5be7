//! The service's error type: a caller (the HTTP layer, a CLI) must tell "your request is
//! wrong" (invalid, not found, forbidden, conflicting with the volume's state) from "the
//! engine failed", so each has its own variant; engine failures keep their path/object
//! context from the crate's [`Error`](crate::Error).

use thiserror::Error;

/// Every error the volume service returns.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The request's arguments are invalid; one message per problem.
    #[error("invalid request: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// No such volume (or operation), or the caller may not see it.
    #[error("{0} not found")]
    NotFound(String),
    /// The caller may see the volume but not do this to it.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The volume's state refuses the request (attached, has snapshots, user limit
    /// reached, attached on another server, lost a race with another server...).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A catalog object could not be read, written or understood.
    #[error(transparent)]
    Engine(crate::Error),
    /// A local file of the service (data dir, operation record) failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The local file or directory.
        path: String,
        /// What was being done to it ("create", "rename"...), for the message.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::store::StoreError> for ServiceError {
    fn from(e: crate::store::StoreError) -> Self {
        ServiceError::Engine(e.into())
    }
}

impl From<crate::repo::RepoError> for ServiceError {
    fn from(e: crate::repo::RepoError) -> Self {
        crate::Error::from(e).into()
    }
}

impl From<crate::Error> for ServiceError {
    /// A temporary repository error (a delete that kept losing races to other writers) is
    /// a conflict the client may retry, not an engine failure.
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Repo(r) if r.is_temporary() => ServiceError::Conflict(r.to_string()),
            e => ServiceError::Engine(e),
        }
    }
}

impl From<crate::image::ImageError> for ServiceError {
    fn from(e: crate::image::ImageError) -> Self {
        ServiceError::Engine(e.into())
    }
}

/// A closure mapping an I/O error on `path` to [`ServiceError::Io`].
pub(crate) fn io_err(
    path: &std::path::Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> ServiceError {
    let path = path.display().to_string();
    move |source| ServiceError::Io { path, op, source }
}

#[cfg(test)]
mod tests {
    use super::ServiceError;
    use crate::repo::RepoError;

    #[test]
    fn a_contended_delete_is_a_retryable_conflict_and_corruption_stays_an_engine_error() {
        let contended = RepoError::DeleteContended {
            volume: "v".into(),
            id: "s".into(),
            attempts: 5,
        };
        match ServiceError::from(crate::Error::from(contended)) {
            ServiceError::Conflict(m) => assert!(m.contains("v/s") && m.contains("retry"), "{m}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        let corrupt = RepoError::corrupt("index/x", "bad crc");
        assert!(matches!(
            ServiceError::from(corrupt),
            ServiceError::Engine(_)
        ));
    }
}

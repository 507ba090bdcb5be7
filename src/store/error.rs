//! The one error type every store driver and wrapper returns.
//!
//! Like opendal's `Error`, its parts are private behind accessors: callers branch on
//! [`StoreError::kind`] and [`StoreError::is_temporary`], never on the message, so a
//! driver can reword a message without breaking a caller.

use thiserror::Error;

/// What went wrong, independent of the driver, so callers and the retry layer can act on it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// No object at this key (a missing object, never a missing bucket).
    NotFound,
    /// Create-if-absent lost: an object with this key already exists.
    AlreadyExists,
    /// The credentials were refused or do not cover the operation.
    PermissionDenied,
    /// Bucket/container/directory missing or endpoint misconfigured.
    ConfigInvalid,
    /// The driver cannot perform this operation safely (e.g. no atomic create).
    Unsupported,
    /// The server asked the client to slow down (HTTP 429/503 SlowDown, Swift 498).
    RateLimited,
    /// No answer within the allowed time (client or server side).
    Timeout,
    /// A ranged read asked for bytes past the end of the object (or an inverted range).
    InvalidRange,
    /// The key is not one Island's stores accept (empty segment, `..`, leading `/` ...).
    InvalidKey,
    /// Anything else; whether a retry may help is told by [`StoreError::is_temporary`].
    Unexpected,
}

/// An object-store failure with its operation, key and whether retrying may help.
#[derive(Debug, Error)]
#[error("{location}: {operation} {key:?}: {kind:?}{}: {message}", if *.temporary { " (temporary)" } else { "" })]
pub struct StoreError {
    kind: StoreErrorKind,
    temporary: bool,
    operation: &'static str,
    key: String,
    location: String,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A permanent error without an underlying cause.
    pub fn new(
        kind: StoreErrorKind,
        operation: &'static str,
        location: &str,
        key: &str,
        message: impl Into<String>,
    ) -> Self {
        StoreError {
            kind,
            temporary: false,
            operation,
            key: key.to_string(),
            location: location.to_string(),
            message: message.into(),
            source: None,
        }
    }

    /// Marks the error as one a retry may cure (throttling, timeouts, transient I/O).
    pub fn with_temporary(mut self, temporary: bool) -> Self {
        self.temporary = temporary;
        self
    }

    /// Attaches the underlying cause, kept for `Error::source` chains.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Reports the error as a failure of `operation` on `key`: a step done on behalf of a
    /// larger one (the listing that checks a bucket while opening it, the login a Swift
    /// request needed) is reported as the operation the caller asked for.
    pub fn with_operation(mut self, operation: &'static str, key: &str) -> Self {
        self.operation = operation;
        self.key = key.to_string();
        self
    }

    /// What went wrong, independent of the driver.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Whether a retry may succeed: the retry layer retries exactly these errors.
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// The store operation that failed (`put`, `get_range`, `list`, `open`, `login` ...).
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The object key (the prefix for `list`, the first key for `delete_batch`, empty when
    /// the operation concerns the whole store).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The store's location as [`super::ObjectStore::location`] gives it.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The driver's description of the failure, for people (callers branch on the kind).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether this is a "no such object" error, the one callers most often branch on.
    pub fn is_not_found(&self) -> bool {
        self.kind == StoreErrorKind::NotFound
    }
}

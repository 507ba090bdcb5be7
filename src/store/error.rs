use thiserror::Error;

/// What went wrong, independent of the driver, so callers and the retry layer can act on it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    NotFound,
    AlreadyExists,
    PermissionDenied,
    /// Bucket/container/directory missing or endpoint misconfigured.
    ConfigInvalid,
    /// The driver cannot perform this operation safely (e.g. no atomic create).
    Unsupported,
    RateLimited,
    Timeout,
    /// A ranged read asked for bytes past the end of the object (or an inverted range).
    InvalidRange,
    /// The key is not one Island's stores accept (empty segment, `..`, leading `/` ...).
    InvalidKey,
    Unexpected,
}

/// An object-store failure with its operation, key and whether retrying may help.
#[derive(Debug, Error)]
#[error("{location}: {op} {key:?}: {kind:?}{}: {message}", if *.temporary { " (temporary)" } else { "" })]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub temporary: bool,
    pub op: &'static str,
    pub key: String,
    pub location: String,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A permanent error without an underlying cause.
    pub fn new(
        kind: StoreErrorKind,
        op: &'static str,
        location: &str,
        key: &str,
        message: impl Into<String>,
    ) -> Self {
        StoreError {
            kind,
            temporary: false,
            op,
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

    /// Whether this is a "no such object" error, the one callers most often branch on.
    pub fn is_not_found(&self) -> bool {
        self.kind == StoreErrorKind::NotFound
    }
}

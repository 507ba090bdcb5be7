use std::path::PathBuf;
use thiserror::Error;

/// Errors from the qcow2 image engine; each names the image path and, where it applies,
/// the offset or structure that failed.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum ImageError {
    /// An I/O call on the image file failed.
    #[error("{path}: {op} at offset {offset}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
}

//! The crate's one public error type, built from the per-module errors so a caller can
//! match on the room that failed while every message still names the path, object key or
//! offset involved.

use thiserror::Error;

/// Every error Island's library returns.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum Error {
    /// A local qcow2 image could not be created, opened, read or written.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// An object store request failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The repository format or protocol refused an operation.
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
}

/// Shorthand used across the crate's public API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! Island: incremental block snapshots of qcow2 volumes, backed up to object storage.
//!
//! Data flows one way: guest writes land in a local image ([`image`]); a backup reads the
//! image's changed clusters and turns them into repository objects ([`repo`]) kept in an
//! object store ([`store`]); a restore turns objects back into an image. `image` knows
//! nothing of repositories and `store` knows nothing of clusters; only the pipelines touch
//! both sides.

pub mod api;
pub mod backup;
pub mod error;
pub mod image;
pub mod repo;
pub mod restore;
pub mod service;
pub mod store;

pub use error::{Error, Result};

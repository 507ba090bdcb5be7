//! Island: incremental block snapshots of qcow2 volumes, backed up to object storage.
//!
//! Data flows one way: guest writes land in a local image ([`image`]); a backup reads the
//! image's changed clusters and turns them into repository objects ([`repo`]) kept in an
//! object store ([`store`]); a restore turns objects back into an image. `image` knows
//! nothing of repositories and `store` knows nothing of clusters; only the pipelines touch
//! both sides. The volume service ([`service`]) keeps volumes, attachments and operations
//! on top of all of them; its HTTP API ([`api`], feature `server`) and the `island` binary
//! (feature `cli`) are the outermost layer, and a library user who needs neither builds
//! with `default-features = false` (README.md, "Building").
//!
//! The items below are the API: open a store, open or create a [`Repository`] in it,
//! [`backup()`] an [`Image`] (or any [`BlockSource`]) and [`restore()`] a snapshot, or run a
//! [`VolumeService`]. The modules stay public for the options, reports and records these
//! items take and return.
//!
//! ```no_run
//! # async fn demo() -> island::Result<()> {
//! let store = island::open_store("/srv/repo", &Default::default()).await?;
//! let repo = island::Repository::open(store).await?;
//! for snapshot in repo.snapshots(None).await? {
//!     println!("{} {}", snapshot.id, snapshot.created);
//! }
//! # Ok(()) }
//! ```

#[cfg(feature = "server")]
pub mod api;
pub mod backup;
pub mod error;
pub mod image;
pub mod repo;
pub mod restore;
pub mod service;
pub mod store;

pub use backup::{backup, BackupOptions, BackupReport, BlockSource, RawSource};
pub use error::{Error, Result};
pub use image::{CreateOptions, Image, ImageError, OpenMode};
pub use repo::{InitOptions, RepoError, Repository, SnapshotManifest, SnapshotSummary};
pub use restore::{restore, RestoreOptions, RestoreReport, RestoreTarget};
pub use service::{Service as VolumeService, ServiceConfig, ServiceError};
pub use store::{open_store, ObjectStore, StoreError, StoreErrorKind, StoreOptions};

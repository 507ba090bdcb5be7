//! The repository's on-disk objects (format-spec/repository.md §2–§3): how each is encoded,
//! parsed and checked, and the readers of segment records and pack footers. These files
//! import only each other, [`RepoError`](super::RepoError) and the store trait: nothing of
//! leases, views or operations.

pub(crate) mod chunk;
pub(crate) mod config;
pub(crate) mod envelope;
pub(crate) mod ids;
pub(crate) mod manifest;
pub(crate) mod marker;
pub(crate) mod pack;
pub(crate) mod segment;
pub(crate) mod table;

//! Object-store trait and drivers (see `format-spec/repository.md`).
//!
//! The repository protocol needs very little from a store: whole-object put/get, ranged
//! get, listing in key order, deletes, and exactly one conditional operation —
//! create-if-absent ([`ObjectStore::put_if_absent`]). Nothing here knows about images,
//! chunks or snapshots.

mod error;
pub use error::{StoreError, StoreErrorKind};

use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::time::SystemTime;

/// What a store reports about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the store's root/prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last-Modified as stamped by the *store's* clock (leases are judged by it, not by
    /// the host clock). `None` where the store cannot tell.
    pub last_modified: Option<SystemTime>,
}

/// Outcome of a create-if-absent put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// This call created the object.
    Created,
    /// An object with that key already existed; nothing was written.
    AlreadyExists,
}

/// What a driver can do, so the protocol can refuse operations a store cannot make safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `put_if_absent` is atomic against concurrent writers (exactly one wins).
    pub atomic_create: bool,
    /// Largest number of keys one `delete_batch` request may carry on the wire.
    pub max_batch_delete: usize,
}

/// The one storage trait every driver and wrapper implements.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Human-readable location (URL without credentials) for messages.
    fn location(&self) -> String;
    /// Driver capabilities.
    fn capabilities(&self) -> Capabilities;
    /// Create or overwrite `key`.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;
    /// Create `key` only if it does not exist yet.
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError>;
    /// Read a whole object.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    /// Read bytes `range` of an object; a range past the end is an error.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError>;
    /// Metadata of one object.
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError>;
    /// Up to `limit` objects whose key starts with `prefix` and sorts strictly after
    /// `start_after`, in ascending byte order of key. Fewer than `limit` means the end.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError>;
    /// Delete one object; deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Delete many objects (missing ones succeed), in as few requests as the store allows.
    async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError>;
}

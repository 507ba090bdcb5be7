//! Object-store trait and drivers (see `format-spec/repository.md`).
//!
//! The repository protocol needs very little from a store: whole-object put/get, ranged
//! get, listing in key order, deletes, and exactly one conditional operation —
//! create-if-absent ([`ObjectStore::put_if_absent`]). Nothing here knows about images,
//! chunks or snapshots.
//!
//! Layout: Island's own drivers `fs.rs` and `memory.rs`; one folder per remote opendal
//! service with the same file set (`mod.rs`: the store and its trait impl, `config.rs`;
//! Swift adds `auth.rs`, `range.rs`, `delete.rs` and `error.rs` for the requests opendal's
//! Swift service lacks), sharing `http.rs` (client, timeouts), `operator.rs` (listing,
//! ranged reads through an opendal operator) and `opendal_errors.rs` (the one error
//! mapping); the layers `timeout.rs`, `retry.rs`, `limit.rs`, `throttle.rs` and
//! `counting.rs`, composed by `open.rs`; `faults.rs` injects failures for tests.

mod counting;
mod error;
pub mod faults;
mod fs;
mod http;
mod limit;
mod memory;
mod open;
mod opendal_errors;
mod operator;
mod retry;
pub mod s3;
pub mod swift;
mod throttle;
mod timeout;

/// The descriptive methods a wrapper layer passes straight through to the store it wraps
/// (its `inner` field): a layer writes only the I/O methods whose behaviour it changes.
macro_rules! forward_descriptive_methods {
    () => {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn capabilities(&self) -> $crate::store::Capabilities {
            self.inner.capabilities()
        }
        fn request_counts(&self) -> Option<$crate::store::RequestCounts> {
            self.inner.request_counts()
        }
    };
}
pub(crate) use forward_descriptive_methods;

/// The I/O methods a wrapper layer passes straight through to its `inner` store, named
/// one by one (`forward_io_methods!(head, list, delete, delete_batch)`): the layer writes
/// only the methods whose behaviour it changes. The methods are written in the form
/// `#[async_trait]` gives trait methods (a boxed future borrowing the arguments), since the
/// attribute does not see into macro calls; the inner store's future is that form already.
macro_rules! forward_io_methods {
    ($($method:ident),* $(,)?) => {
        $( $crate::store::forward_io_methods!(@one $method); )*
    };
    (@one put) => {
        $crate::store::forward_io_methods!(@fn put(key: &'k str, data: ::bytes::Bytes) -> ());
    };
    (@one put_if_absent) => {
        $crate::store::forward_io_methods!(
            @fn put_if_absent(key: &'k str, data: ::bytes::Bytes) -> $crate::store::PutOutcome
        );
    };
    (@one get) => {
        $crate::store::forward_io_methods!(@fn get(key: &'k str) -> ::bytes::Bytes);
    };
    (@one get_range) => {
        $crate::store::forward_io_methods!(
            @fn get_range(key: &'k str, range: ::std::ops::Range<u64>) -> ::bytes::Bytes
        );
    };
    (@one head) => {
        $crate::store::forward_io_methods!(@fn head(key: &'k str) -> $crate::store::ObjectMeta);
    };
    (@one delete) => {
        $crate::store::forward_io_methods!(@fn delete(key: &'k str) -> ());
    };
    (@one delete_batch) => {
        $crate::store::forward_io_methods!(@fn delete_batch(keys: &'k [String]) -> ());
    };
    (@one list) => {
        fn list<'s, 'p, 'a, 'async_trait>(
            &'s self,
            prefix: &'p str,
            start_after: Option<&'a str>,
            limit: usize,
        ) -> ::std::pin::Pin<Box<dyn ::std::future::Future<
            Output = Result<Vec<$crate::store::ObjectMeta>, $crate::store::StoreError>,
        > + Send + 'async_trait>>
        where
            's: 'async_trait,
            'p: 'async_trait,
            'a: 'async_trait,
            Self: 'async_trait,
        {
            self.inner.list(prefix, start_after, limit)
        }
    };
    (@fn $name:ident($key:ident: $kt:ty $(, $arg:ident: $at:ty)?) -> $out:ty) => {
        fn $name<'s, 'k, 'async_trait>(
            &'s self,
            $key: $kt,
            $($arg: $at,)?
        ) -> ::std::pin::Pin<Box<dyn ::std::future::Future<
            Output = Result<$out, $crate::store::StoreError>,
        > + Send + 'async_trait>>
        where
            's: 'async_trait,
            'k: 'async_trait,
            Self: 'async_trait,
        {
            self.inner.$name($key $(, $arg)?)
        }
    };
}
pub(crate) use forward_io_methods;

pub use counting::{CountingStore, RequestCounts};
pub use error::{StoreError, StoreErrorKind};
pub use fs::FsStore;
pub use limit::LimitStore;
pub use memory::MemoryStore;
pub use open::{open_store, wrap_store, RetryOptions, StoreOptions};
pub use retry::RetryStore;
pub use throttle::{ThrottleStore, TokenBucket};
pub use timeout::TimeoutStore;

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
    /// Where `atomic_create` is false: how long a create must be left to settle before
    /// reading it back decides the one winner (`repo::create_exclusive`). Zero on atomic
    /// stores, and zero on a non-atomic store means "trust `put_if_absent`" (one writer at
    /// a time, see `format-spec/object-stores.md`).
    pub create_settle: std::time::Duration,
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
    /// Request and byte counters, if a [`CountingStore`] sits in this stack. Wrappers
    /// forward it so the repository can report `requests` / `bytes_uploaded` whatever
    /// wraps the counting layer.
    fn request_counts(&self) -> Option<RequestCounts> {
        None
    }
}

/// Checks that `key` is a relative, normalised object key: non-empty `/`-separated
/// segments, none empty, `.` or `..`, none starting with `.` (the fs driver keeps its
/// temporary files under such names), no NUL or backslash. Every driver applies the same
/// rule so a repository valid on one store is valid on all of them.
pub fn validate_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty key");
    }
    if key.len() > 1024 {
        return Err("key longer than 1024 bytes");
    }
    if key.contains('\0') || key.contains('\\') {
        return Err("key contains NUL or backslash");
    }
    for seg in key.split('/') {
        if seg.is_empty() {
            return Err("key has an empty segment (leading, trailing or double '/')");
        }
        if seg.starts_with('.') {
            return Err("key segment starts with '.'");
        }
    }
    Ok(())
}

/// Same as [`validate_key`] for a listing prefix, which may be empty or end in `/`.
pub fn validate_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate_key(prefix.strip_suffix('/').unwrap_or(prefix))
}

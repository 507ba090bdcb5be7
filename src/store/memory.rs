//! In-memory driver on opendal's memory service, for tests and the `memory://NAME` URL.
//!
//! opendal's memory service creates conditionally under its map lock (exactly one racing
//! `if_not_exists` write wins), so it is used as is. It records no modification time,
//! which leases are judged by; so each value is stored as an 8-byte little-endian
//! timestamp (nanoseconds since the Unix epoch, taken when the put is issued) followed by
//! the object's bytes, written in the same single opendal write. The stamp never leaves
//! this process, so it carries no magic or checksum. Listing lists the prefix's parent
//! recursively, then filters, sorts and pages here: O(objects under the parent) per page,
//! fine for tests.

use super::fs::check_range;
use super::opendal_errors::map_error;
use super::{
    validate_key, validate_prefix, Capabilities, ObjectMeta, ObjectStore, PutOutcome, StoreError,
    StoreErrorKind,
};
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use opendal::Operator;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const STAMP_LEN: u64 = 8;
const MEMORY_BATCH_DELETE: usize = 1000;

/// A named in-memory store; opening the same name again in one process gives the same
/// objects, so tests can "reopen" a repository.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    name: String,
    op: Operator,
}

fn registry() -> &'static Mutex<HashMap<String, Operator>> {
    static REG: OnceLock<Mutex<HashMap<String, Operator>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
}

impl MemoryStore {
    /// The store called `name`, created empty on first use in this process.
    pub fn named(name: &str) -> Result<MemoryStore, StoreError> {
        let location = format!("memory://{name}");
        let mut reg = registry().lock().map_err(|_| {
            StoreError::new(
                StoreErrorKind::Unexpected,
                "open",
                &location,
                "",
                "memory store registry poisoned",
            )
        })?;
        let op = match reg.get(name) {
            Some(op) => op.clone(),
            None => {
                let op = Operator::new(opendal::services::Memory::default())
                    .map_err(|e| map_error(e, "open", &location, ""))?;
                reg.insert(name.to_string(), op.clone());
                op
            }
        };
        Ok(MemoryStore {
            name: name.to_string(),
            op,
        })
    }

    /// A fresh store no other handle shares (a unique name).
    pub fn new_unique() -> Result<MemoryStore, StoreError> {
        MemoryStore::named(&format!("anon-{}", uuid::Uuid::new_v4().simple()))
    }

    fn check_key(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        validate_key(key)
            .map_err(|m| StoreError::new(StoreErrorKind::InvalidKey, op, &self.location(), key, m))
    }

    fn err(&self, e: opendal::Error, op: &'static str, key: &str) -> StoreError {
        map_error(e, op, &self.location(), key)
    }

    fn stamped(data: &[u8]) -> Bytes {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let mut b = BytesMut::with_capacity(data.len() + STAMP_LEN as usize);
        b.put_u64_le(nanos);
        b.put_slice(data);
        b.freeze()
    }

    fn corrupt(&self, op: &'static str, key: &str) -> StoreError {
        StoreError::new(
            StoreErrorKind::Unexpected,
            op,
            &self.location(),
            key,
            "stored value shorter than its timestamp",
        )
    }

    async fn meta(&self, op: &'static str, key: &str) -> Result<ObjectMeta, StoreError> {
        let stored = self.op.stat(key).await.map_err(|e| self.err(e, op, key))?;
        let size = stored
            .content_length()
            .checked_sub(STAMP_LEN)
            .ok_or_else(|| self.corrupt(op, key))?;
        let stamp = self
            .op
            .read_with(key)
            .range(0..STAMP_LEN)
            .await
            .map_err(|e| self.err(e, op, key))?
            .to_bytes();
        let nanos: [u8; 8] = stamp
            .as_ref()
            .try_into()
            .map_err(|_| self.corrupt(op, key))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size,
            last_modified: Some(UNIX_EPOCH + Duration::from_nanos(u64::from_le_bytes(nanos))),
        })
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    fn location(&self) -> String {
        format!("memory://{}", self.name)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_create: true,
            max_batch_delete: MEMORY_BATCH_DELETE,
            create_settle: std::time::Duration::ZERO,
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.check_key("put", key)?;
        self.op
            .write(key, Self::stamped(&data))
            .await
            .map(|_| ())
            .map_err(|e| self.err(e, "put", key))
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        let op = "put_if_absent";
        self.check_key(op, key)?;
        match self
            .op
            .write_with(key, Self::stamped(&data))
            .if_not_exists(true)
            .await
        {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) => {
                let e = self.err(e, op, key);
                if e.kind() == StoreErrorKind::AlreadyExists {
                    Ok(PutOutcome::AlreadyExists)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.check_key("get", key)?;
        let all = self
            .op
            .read(key)
            .await
            .map_err(|e| self.err(e, "get", key))?
            .to_bytes();
        if (all.len() as u64) < STAMP_LEN {
            return Err(self.corrupt("get", key));
        }
        Ok(all.slice(STAMP_LEN as usize..))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let op = "get_range";
        self.check_key(op, key)?;
        let meta = self.meta(op, key).await?;
        check_range(&range, meta.size).map_err(|m| {
            StoreError::new(StoreErrorKind::InvalidRange, op, &self.location(), key, m)
        })?;
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        // Cannot overflow: range.end <= size = stored length - STAMP_LEN.
        let stored = range.start + STAMP_LEN..range.end + STAMP_LEN;
        Ok(self
            .op
            .read_with(key)
            .range(stored)
            .await
            .map_err(|e| self.err(e, op, key))?
            .to_bytes())
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.check_key("head", key)?;
        self.meta("head", key).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let op = "list";
        validate_prefix(prefix).map_err(|m| {
            StoreError::new(StoreErrorKind::InvalidKey, op, &self.location(), prefix, m)
        })?;
        let parent = match prefix.rfind('/') {
            Some(i) => &prefix[..=i],
            None => "",
        };
        let entries = self
            .op
            .list_with(parent)
            .recursive(true)
            .await
            .map_err(|e| self.err(e, op, prefix))?;
        let mut keys: Vec<String> = entries
            .into_iter()
            .map(|e| e.path().trim_start_matches('/').to_string())
            .filter(|k| !k.ends_with('/') && k.starts_with(prefix))
            .filter(|k| start_after.is_none_or(|sa| k.as_str() > sa))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut out = Vec::with_capacity(keys.len().min(limit));
        for k in keys {
            if out.len() >= limit {
                break;
            }
            match self.meta(op, &k).await {
                Ok(m) => out.push(m),
                Err(e) if e.kind() == StoreErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check_key("delete", key)?;
        self.op
            .delete(key)
            .await
            .map_err(|e| self.err(e, "delete", key))
    }

    async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError> {
        for k in keys {
            self.delete(k).await?;
        }
        Ok(())
    }
}

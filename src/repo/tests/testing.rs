//! A minimal in-memory store for the repository's unit tests (the real drivers live in
//! `store`; this one only has to honour the trait's contract, including create-if-absent
//! and Last-Modified, which lease tests can move forward).

use crate::backup::{backup, BackupOptions, BaseIdentity, BlockSource, RawSource};
use crate::repo::{InitOptions, Repository};
use crate::store::{Capabilities, ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[derive(Debug, Default)]
pub(crate) struct MemStore {
    pub objects: Mutex<BTreeMap<String, (Bytes, SystemTime)>>,
    /// Added to the store clock (simulates time passing for lease expiry).
    pub clock_offset: Mutex<Duration>,
    /// Runs before each create-if-absent, with the key: a concurrent writer that gets
    /// there first (it may insert into `objects`).
    pub before_create: Mutex<CreateHook>,
    /// Runs before each GET and ranged GET, with the key and range (`None`: whole
    /// object): a concurrent writer (e.g. a gc) that acts between a reader's view and
    /// its read.
    pub before_read: Mutex<ReadHook>,
}

/// A test's action before a read of `key` (and range) on the store.
pub(crate) type ReadFn = dyn Fn(&MemStore, &str, Option<&Range<u64>>) + Send + Sync;

/// See [`MemStore::before_read`].
#[derive(Clone, Default)]
pub(crate) struct ReadHook(pub Option<Arc<ReadFn>>);

impl std::fmt::Debug for ReadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "hook" } else { "none" })
    }
}

/// A test's action before a create-if-absent of `key` on the store.
pub(crate) type CreateFn = dyn Fn(&MemStore, &str) + Send + Sync;

/// See [`MemStore::before_create`].
#[derive(Clone, Default)]
pub(crate) struct CreateHook(pub Option<Arc<CreateFn>>);

impl std::fmt::Debug for CreateHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "hook" } else { "none" })
    }
}

impl MemStore {
    fn now(&self) -> SystemTime {
        SystemTime::now() + *self.clock_offset.lock().unwrap()
    }
    fn err(kind: StoreErrorKind, op: &'static str, key: &str) -> StoreError {
        StoreError::new(kind, op, "test-mem://", key, format!("{kind:?}"))
    }
    pub(crate) fn keys(&self, prefix: &str) -> Vec<String> {
        self.objects
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }
    pub(crate) fn advance(&self, d: Duration) {
        *self.clock_offset.lock().unwrap() += d;
    }
    fn read(&self, key: &str, range: Option<&Range<u64>>) -> Result<Bytes, StoreError> {
        let hook = self.before_read.lock().unwrap().clone();
        if let Some(h) = hook.0 {
            h(self, key, range);
        }
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .map(|e| e.0.clone())
            .ok_or_else(|| Self::err(StoreErrorKind::NotFound, "get", key))
    }

    /// A copy of this store as `cp -r`, `aws s3 sync` or replication makes it: the same
    /// keys and bytes, every object stamped with the copy's time (this store's clock now),
    /// and the same clock.
    pub(crate) fn copy_with_reset_times(&self) -> MemStore {
        let now = self.now();
        let objects = (self.objects.lock().unwrap().iter())
            .map(|(k, (b, _))| (k.clone(), (b.clone(), now)))
            .collect();
        MemStore {
            objects: Mutex::new(objects),
            clock_offset: Mutex::new(*self.clock_offset.lock().unwrap()),
            before_create: Mutex::new(CreateHook::default()),
            before_read: Mutex::new(ReadHook::default()),
        }
    }
}

#[async_trait]
impl ObjectStore for MemStore {
    fn location(&self) -> String {
        "test-mem://".into()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_create: true,
            max_batch_delete: 1000,
            create_settle: std::time::Duration::ZERO,
        }
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let now = self.now();
        self.objects.lock().unwrap().insert(key.into(), (data, now));
        Ok(())
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        let hook = self.before_create.lock().unwrap().clone();
        if let Some(h) = hook.0 {
            h(self, key);
        }
        let now = self.now();
        let mut m = self.objects.lock().unwrap();
        if m.contains_key(key) {
            return Ok(PutOutcome::AlreadyExists);
        }
        m.insert(key.into(), (data, now));
        Ok(PutOutcome::Created)
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.read(key, None)
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let b = self.read(key, Some(&range))?;
        if range.end > b.len() as u64 || range.start > range.end {
            return Err(Self::err(StoreErrorKind::InvalidRange, "get_range", key));
        }
        Ok(b.slice(range.start as usize..range.end as usize))
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let m = self.objects.lock().unwrap();
        let e = m
            .get(key)
            .ok_or_else(|| Self::err(StoreErrorKind::NotFound, "head", key))?;
        Ok(ObjectMeta {
            key: key.into(),
            size: e.0.len() as u64,
            last_modified: Some(e.1),
        })
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let m = self.objects.lock().unwrap();
        Ok(m.range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| start_after.is_none_or(|s| k.as_str() > s))
            .take(limit)
            .map(|(k, e)| ObjectMeta {
                key: k.clone(),
                size: e.0.len() as u64,
                last_modified: Some(e.1),
            })
            .collect())
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }
    async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError> {
        let mut m = self.objects.lock().unwrap();
        for k in keys {
            m.remove(k);
        }
        Ok(())
    }
}

/// A fresh repository of `chunk_size` on a new [`MemStore`].
pub(crate) async fn mem_repo(chunk_size: u32) -> (Arc<MemStore>, Repository) {
    let mem = Arc::new(MemStore::default());
    let r = Repository::init(mem.clone(), &InitOptions { chunk_size })
        .await
        .unwrap();
    (mem, r)
}

/// Back up `len` bytes of [`pattern`] `seed` as `volume`; the snapshot id.
pub(crate) async fn back_up_pattern(
    repo: &Repository,
    volume: &str,
    seed: u32,
    len: usize,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol.raw");
    std::fs::write(&path, pattern(seed, len)).unwrap();
    let src = Arc::new(RawSource::open(&path).unwrap());
    let opts = BackupOptions {
        volume: volume.into(),
        ..Default::default()
    };
    backup(repo, src, &opts).await.unwrap().id
}

/// A volume held in memory (no file, no base identity).
pub(crate) struct VecSource(pub Vec<u8>);

impl BlockSource for VecSource {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        buf.copy_from_slice(&self.0[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn identity(&self) -> Option<BaseIdentity> {
        None
    }
}

/// Back up `data` as `volume` from memory; the snapshot id.
pub(crate) async fn back_up_bytes(repo: &Repository, volume: &str, data: &[u8]) -> String {
    let opts = BackupOptions {
        volume: volume.into(),
        ..Default::default()
    };
    backup(repo, Arc::new(VecSource(data.to_vec())), &opts)
        .await
        .unwrap()
        .id
}

/// `len` bytes of a seeded `StdRng` stream.
pub(crate) fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// `len` bytes of an xorshift stream: no two chunks alike.
pub(crate) fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// `check --read-data` over the whole repository (every test that asserts a clean check).
pub(crate) async fn read_data_check(repo: &Repository) -> crate::repo::CheckReport {
    let full = crate::repo::CheckOptions {
        read_data: true,
        sample_pct: None,
    };
    repo.check(&full).await.unwrap()
}

//! Local-directory driver: the embedded default store.
//!
//! Written with `std::fs` (run on tokio's blocking pool) rather than opendal's fs service,
//! because opendal 0.59's fs service cannot give the two guarantees the repository commits
//! on: its `if_not_exists` write either opens the final path with `O_EXCL` and writes into
//! it (a concurrent reader or a crash exposes a partial object) or, with an atomic-write
//! directory, checks existence and then `rename()`s over the target (two racing writers
//! can both "create", the second silently replacing the first); and it never fsyncs the
//! directory, so an acknowledged create can vanish in a power loss. Its listing is also
//! unordered and has no start-after.
//!
//! Crash ordering of every write (also in `format-spec/repository.md`):
//! 1. the bytes go to a fresh hidden temporary file `.tmp-<uuid>` in the object's own
//!    directory (same filesystem), which is `fsync`ed;
//! 2. `put` `rename()`s it over the key; `put_if_absent` `link()`s it to the key, which
//!    fails with `EEXIST` atomically if the key exists (the `O_EXCL` of whole objects),
//!    then unlinks the temporary name;
//! 3. the directory is `fsync`ed (and so is every directory created on the way), and only
//!    then is the put acknowledged.
//!
//! A crash therefore leaves either no object or the complete object under the key, never a
//! partial one; at worst a `.tmp-*` file remains, which listings skip (keys never start a
//! segment with `.`). Empty directories left by deletes are kept: removing them would race
//! with a concurrent writer creating a key below them.

use super::{
    validate_key, validate_prefix, Capabilities, ObjectMeta, ObjectStore, PutOutcome, StoreError,
    StoreErrorKind,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Keys one `delete_batch` call removes between progress points; the filesystem has no
/// batch request, this only bounds the work of one blocking task.
const FS_BATCH_DELETE: usize = 1000;

/// An object store in a local directory: key `a/b/c` is the file `<root>/a/b/c`.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: Arc<PathBuf>,
}

impl FsStore {
    /// Opens the store rooted at `root`. The directory is created on the first write if
    /// missing; a root that exists but is not a directory is refused.
    pub fn new(root: impl Into<PathBuf>) -> Result<FsStore, StoreError> {
        let root = root.into();
        let location = format!("file://{}", root.display());
        match fs::metadata(&root) {
            Ok(m) if !m.is_dir() => {
                return Err(StoreError::new(
                    StoreErrorKind::ConfigInvalid,
                    "open",
                    &location,
                    "",
                    "store root exists and is not a directory",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(e, "open", &location, "")),
        }
        Ok(FsStore {
            root: Arc::new(root),
        })
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, op: &'static str, key: &str) -> Result<PathBuf, StoreError> {
        validate_key(key).map_err(|m| {
            StoreError::new(StoreErrorKind::InvalidKey, op, &self.location(), key, m)
        })?;
        Ok(self.root.join(key))
    }

    /// Runs blocking filesystem work off the async executor.
    async fn blocking<T, F>(&self, op: &'static str, key: &str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&FsStore) -> Result<T, StoreError> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Unexpected,
                    op,
                    &self.location(),
                    key,
                    format!("blocking task failed: {e}"),
                )
            })?
    }

    /// Creates `dir` and any missing parents below the root, fsyncing the parent of each
    /// directory created so the new entries are durable before objects are linked in.
    fn ensure_dir(&self, op: &'static str, key: &str, dir: &Path) -> Result<(), StoreError> {
        let mut missing = Vec::new();
        let mut cur = dir;
        loop {
            match fs::metadata(cur) {
                Ok(m) if m.is_dir() => break,
                Ok(_) => {
                    return Err(StoreError::new(
                        StoreErrorKind::ConfigInvalid,
                        op,
                        &self.location(),
                        key,
                        format!("{} is not a directory", cur.display()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    missing.push(cur.to_path_buf());
                    match cur.parent() {
                        Some(p) => cur = p,
                        None => break,
                    }
                }
                Err(e) => return Err(io_error(e, op, &self.location(), key)),
            }
        }
        for d in missing.iter().rev() {
            match fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error(e, op, &self.location(), key)),
            }
            if let Some(parent) = d.parent() {
                sync_dir(parent).map_err(|e| io_error(e, op, &self.location(), key))?;
            }
        }
        Ok(())
    }

    /// Writes `data` to a fresh fsynced temporary file next to `target`; returns its path.
    fn write_temp(
        &self,
        op: &'static str,
        key: &str,
        target: &Path,
        data: &[u8],
    ) -> Result<PathBuf, StoreError> {
        let dir = target.parent().unwrap_or(&self.root);
        self.ensure_dir(op, key, dir)?;
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(io_error(e, op, &self.location(), key));
        }
        Ok(tmp)
    }

    fn put_blocking(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        let op = "put";
        let target = self.path_of(op, key)?;
        let tmp = self.write_temp(op, key, &target, data)?;
        if let Err(e) = fs::rename(&tmp, &target) {
            let _ = fs::remove_file(&tmp);
            return Err(io_error(e, op, &self.location(), key));
        }
        self.sync_parent(op, key, &target)
    }

    fn put_if_absent_blocking(&self, key: &str, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let op = "put_if_absent";
        let target = self.path_of(op, key)?;
        if target.symlink_metadata().is_ok() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let tmp = self.write_temp(op, key, &target, data)?;
        let linked = fs::hard_link(&tmp, &target);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                self.sync_parent(op, key, &target)?;
                Ok(PutOutcome::Created)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(io_error(e, op, &self.location(), key)),
        }
    }

    fn sync_parent(&self, op: &'static str, key: &str, target: &Path) -> Result<(), StoreError> {
        let dir = target.parent().unwrap_or(&self.root);
        sync_dir(dir).map_err(|e| io_error(e, op, &self.location(), key))
    }

    fn get_range_blocking(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let op = "get_range";
        let path = self.path_of(op, key)?;
        let mut f = File::open(&path).map_err(|e| io_error(e, op, &self.location(), key))?;
        let size = f
            .metadata()
            .map_err(|e| io_error(e, op, &self.location(), key))?
            .len();
        check_range(&range, size).map_err(|m| {
            StoreError::new(StoreErrorKind::InvalidRange, op, &self.location(), key, m)
        })?;
        let len = usize::try_from(range.end - range.start).map_err(|_| {
            StoreError::new(
                StoreErrorKind::InvalidRange,
                op,
                &self.location(),
                key,
                "range larger than memory",
            )
        })?;
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(range.start))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| io_error(e, op, &self.location(), key))?;
        Ok(Bytes::from(buf))
    }

    fn head_blocking(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let op = "head";
        let path = self.path_of(op, key)?;
        let m = fs::metadata(&path).map_err(|e| io_error(e, op, &self.location(), key))?;
        if !m.is_file() {
            return Err(StoreError::new(
                StoreErrorKind::NotFound,
                op,
                &self.location(),
                key,
                "not a regular file",
            ));
        }
        Ok(ObjectMeta {
            key: key.to_string(),
            size: m.len(),
            last_modified: m.modified().ok(),
        })
    }

    fn delete_blocking(&self, key: &str) -> Result<(), StoreError> {
        let op = "delete";
        let path = self.path_of(op, key)?;
        match fs::remove_file(&path) {
            Ok(()) => self.sync_parent(op, key, &path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(e, op, &self.location(), key)),
        }
    }

    fn list_blocking(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let op = "list";
        validate_prefix(prefix).map_err(|m| {
            StoreError::new(StoreErrorKind::InvalidKey, op, &self.location(), prefix, m)
        })?;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let walk = ListWalk {
            store: self,
            prefix,
            start_after,
            limit,
        };
        walk.dir("", &mut out)?;
        Ok(out)
    }
}

/// One listing: a depth-first walk that visits directory entries in the byte order of the
/// keys below them and prunes subtrees outside `prefix` or entirely before `start_after`.
struct ListWalk<'a> {
    store: &'a FsStore,
    prefix: &'a str,
    start_after: Option<&'a str>,
    limit: usize,
}

impl ListWalk<'_> {
    /// Lists directory `rel` (empty or ending in `/`) into `out`; stops at `limit`.
    fn dir(&self, rel: &str, out: &mut Vec<ObjectMeta>) -> Result<(), StoreError> {
        let op = "list";
        let loc = self.store.location();
        let path = self.store.root.join(rel);
        let rd = match fs::read_dir(&path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(e, op, &loc, rel)),
        };
        // A directory `d` sorts as "d/": every key below it starts with that, and no file
        // name contains '/', so this order is exactly the byte order of the full keys.
        let mut entries: Vec<(String, bool)> = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| io_error(e, op, &loc, rel))?;
            let Ok(name) = ent.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let ft = ent.file_type().map_err(|e| io_error(e, op, &loc, rel))?;
            if ft.is_dir() {
                entries.push((format!("{rel}{name}/"), true));
            } else if ft.is_file() {
                entries.push((format!("{rel}{name}"), false));
            }
        }
        entries.sort_unstable();
        for (full, is_dir) in entries {
            if out.len() >= self.limit {
                break;
            }
            if is_dir {
                let related = full.starts_with(self.prefix) || self.prefix.starts_with(&full);
                let all_before = self
                    .start_after
                    .is_some_and(|sa| full.as_str() < sa && !sa.starts_with(full.as_str()));
                if related && !all_before {
                    self.dir(&full, out)?;
                }
            } else if full.starts_with(self.prefix)
                && self.start_after.is_none_or(|sa| full.as_str() > sa)
            {
                match self.store.head_blocking(&full) {
                    Ok(meta) => out.push(meta),
                    // Deleted between readdir and stat: it is simply not listed.
                    Err(e) if e.kind == StoreErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FsStore {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_create: true,
            max_batch_delete: FS_BATCH_DELETE,
            create_settle: std::time::Duration::ZERO,
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let k = key.to_string();
        self.blocking("put", key, move |s| s.put_blocking(&k, &data))
            .await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        let k = key.to_string();
        self.blocking("put_if_absent", key, move |s| {
            s.put_if_absent_blocking(&k, &data)
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let k = key.to_string();
        self.blocking("get", key, move |s| {
            let path = s.path_of("get", &k)?;
            fs::read(&path)
                .map(Bytes::from)
                .map_err(|e| io_error(e, "get", &s.location(), &k))
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let k = key.to_string();
        self.blocking("get_range", key, move |s| s.get_range_blocking(&k, range))
            .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let k = key.to_string();
        self.blocking("head", key, move |s| s.head_blocking(&k))
            .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let p = prefix.to_string();
        let sa = start_after.map(str::to_string);
        self.blocking("list", prefix, move |s| {
            s.list_blocking(&p, sa.as_deref(), limit)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let k = key.to_string();
        self.blocking("delete", key, move |s| s.delete_blocking(&k))
            .await
    }

    async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError> {
        for chunk in keys.chunks(FS_BATCH_DELETE) {
            let chunk = chunk.to_vec();
            let first = chunk.first().cloned().unwrap_or_default();
            self.blocking("delete_batch", &first, move |s| {
                chunk.iter().try_for_each(|k| s.delete_blocking(k))
            })
            .await?;
        }
        Ok(())
    }
}

/// Checks a requested byte range against an object's size.
pub(crate) fn check_range(range: &Range<u64>, size: u64) -> Result<(), String> {
    if range.start > range.end {
        return Err(format!(
            "inverted range {}..{} (object size {size})",
            range.start, range.end
        ));
    }
    if range.end > size {
        return Err(format!(
            "range {}..{} past the end of a {size}-byte object",
            range.start, range.end
        ));
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Maps an I/O error to the store taxonomy; interrupted/timed-out I/O is temporary.
fn io_error(e: io::Error, op: &'static str, location: &str, key: &str) -> StoreError {
    use io::ErrorKind as K;
    let (kind, temporary) = match e.kind() {
        K::NotFound => (StoreErrorKind::NotFound, false),
        K::PermissionDenied => (StoreErrorKind::PermissionDenied, false),
        K::AlreadyExists => (StoreErrorKind::AlreadyExists, false),
        K::TimedOut => (StoreErrorKind::Timeout, true),
        K::Interrupted | K::WouldBlock => (StoreErrorKind::Unexpected, true),
        K::NotADirectory | K::IsADirectory => (StoreErrorKind::NotFound, false),
        _ => (StoreErrorKind::Unexpected, false),
    };
    StoreError::new(kind, op, location, key, e.to_string())
        .with_temporary(temporary)
        .with_source(e)
}

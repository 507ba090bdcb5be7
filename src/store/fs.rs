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
//! Crash ordering of every write (also in `format-spec/local-store.md`):
//! 1. the bytes go to a fresh hidden temporary file `.tmp-<uuid>` in the object's own
//!    directory (same filesystem); its mtime is set to the *unsettled* mark (the epoch)
//!    and the file is `fsync`ed;
//! 2. `put` `rename()`s it over the key; `put_if_absent` `link()`s it to the key, which
//!    fails with `EEXIST` atomically if the key exists (the `O_EXCL` of whole objects);
//! 3. the object is *settled*: its mtime is set to the ctime the link (or rename) stamped,
//!    read back with `fstat` on the still-open file, and the file is `fsync`ed;
//! 4. `put_if_absent` unlinks the temporary name; the directory is `fsync`ed (and so is
//!    every directory created on the way), and only then is the put acknowledged.
//!
//! **Last-Modified is the moment the key became visible** (`format-spec/local-store.md`,
//! "Store requirements"): an object's time is its mtime, except while the mtime is the
//! unsettled mark, when it is its ctime. POSIX requires `link()` to stamp the file's ctime
//! in the same call that makes the key visible, so a reader sees the link's time whichever
//! instruction the writer is paused at: before step 3 as the ctime, after it as the mtime
//! (the same value; step 3's own ctime change and step 4's unlink no longer matter).
//! Taking the temp file's write time instead — as this driver did — let a writer paused
//! between write and link publish a commit marker dated before gc judged the writer dead
//! (issue 20, finding 2); re-stamping after the link leaves a window in which the old time
//! is visible, and creating in place with `O_EXCL` exposes partial objects.
//!
//! A crash therefore leaves either no object or the complete object under the key, never a
//! partial one; at worst a `.tmp-*` file remains, which listings skip (keys never start a
//! segment with `.`) and remove once stale ([`STALE_TEMP_AGE`]). Empty directories left by
//! deletes are kept: removing them would race with a concurrent writer creating a key
//! below them.

use super::{
    validate_key, validate_prefix, Capabilities, ObjectMeta, ObjectStore, PutOutcome, StoreError,
    StoreErrorKind,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Keys one `delete_batch` call removes between progress points; the filesystem has no
/// batch request, this only bounds the work of one blocking task.
const FS_BATCH_DELETE: usize = 1000;

/// The mtime of an object whose visibility time is not yet copied from its ctime (step 1
/// of the write order): no real object is dated 1970-01-01T00:00:00Z.
const UNSETTLED: SystemTime = UNIX_EPOCH;

/// A `.tmp-*` file whose ctime (its last write, or its unsettled mark) is this old is
/// removed by the listing that passes it. Removing a temp file is always safe: a put still
/// using it fails (its link or rename finds no source) and nothing else names it; the age
/// only keeps a slow but live put from failing. One hour is far beyond any put (16 MiB packs,
/// 5-minute request timeout) and far below the cost of keeping a killed writer's pack.
pub(crate) const STALE_TEMP_AGE: Duration = Duration::from_secs(60 * 60);

/// How far a file's ctime may trail the host clock read just before the call that stamps
/// it (the kernel stamps with a coarse clock; some filesystems keep whole seconds) before
/// the driver concludes the filesystem did not stamp it and dates the object by the host
/// clock after the call instead.
const STAMP_SLACK: Duration = Duration::from_secs(2);

/// Test hook run between writing the temporary file and linking/renaming it into place:
/// the window in which a paused writer used to publish an object dated too early.
#[derive(Clone, Default)]
struct BeforeVisibleHook(Option<HookFn>);

/// A hook called with the key being put.
type HookFn = Arc<dyn Fn(&str) + Send + Sync>;

impl std::fmt::Debug for BeforeVisibleHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "hook" } else { "none" })
    }
}

/// An object store in a local directory: key `a/b/c` is the file `<root>/a/b/c`.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: Arc<PathBuf>,
    before_visible: BeforeVisibleHook,
    stale_temp_age: Duration,
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
            before_visible: BeforeVisibleHook::default(),
            stale_temp_age: STALE_TEMP_AGE,
        })
    }

    /// The same store removing temporary files older than `age` instead of
    /// the default hour, `STALE_TEMP_AGE` (tests cannot backdate a ctime).
    pub fn with_stale_temp_age(mut self, age: Duration) -> FsStore {
        self.stale_temp_age = age;
        self
    }

    /// The same store with `hook` run (with the key) inside every put, after the temporary
    /// file is durable and before the key becomes visible. For tests that pause a writer
    /// there.
    pub fn with_before_visible(mut self, hook: HookFn) -> FsStore {
        self.before_visible = BeforeVisibleHook(Some(hook));
        self
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

    /// Writes `data` to a fresh temporary file next to `target`, marks it unsettled and
    /// fsyncs it; returns its path and the open file (settled through it later).
    fn write_temp(
        &self,
        op: &'static str,
        key: &str,
        target: &Path,
        data: &[u8],
    ) -> Result<(PathBuf, File), StoreError> {
        let dir = target.parent().unwrap_or(&self.root);
        self.ensure_dir(op, key, dir)?;
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.set_modified(UNSETTLED)?;
            f.sync_all()?;
            Ok(f)
        })();
        match result {
            Ok(f) => {
                if let Some(hook) = &self.before_visible.0 {
                    hook(key);
                }
                Ok((tmp, f))
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(io_error(e, op, &self.location(), key))
            }
        }
    }

    /// Step 3 of the write order: copies the visibility time (the ctime stamped by the
    /// link or rename, or — on a filesystem that did not stamp it — the host clock now,
    /// which is after visibility) into the mtime, and makes that durable.
    fn settle(
        &self,
        op: &'static str,
        key: &str,
        file: &File,
        before: SystemTime,
    ) -> Result<(), StoreError> {
        let result = (|| {
            let stamped = ctime(&file.metadata()?);
            let visible = match stamped {
                Some(t) if t + STAMP_SLACK >= before => t,
                _ => SystemTime::now(),
            };
            file.set_modified(visible)?;
            file.sync_all()
        })();
        result.map_err(|e| io_error(e, op, &self.location(), key))
    }

    fn put_blocking(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        let op = "put";
        let target = self.path_of(op, key)?;
        let (tmp, file) = self.write_temp(op, key, &target, data)?;
        let before = SystemTime::now();
        if let Err(e) = fs::rename(&tmp, &target) {
            let _ = fs::remove_file(&tmp);
            return Err(io_error(e, op, &self.location(), key));
        }
        self.settle(op, key, &file, before)?;
        self.sync_parent(op, key, &target)
    }

    fn put_if_absent_blocking(&self, key: &str, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let op = "put_if_absent";
        let target = self.path_of(op, key)?;
        if target.symlink_metadata().is_ok() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let (tmp, file) = self.write_temp(op, key, &target, data)?;
        let before = SystemTime::now();
        let linked = fs::hard_link(&tmp, &target);
        // Settled before the temporary name goes: its unlink changes the ctime again.
        let settled = match &linked {
            Ok(()) => self.settle(op, key, &file, before),
            Err(_) => Ok(()),
        };
        let _ = fs::remove_file(&tmp);
        settled?;
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
            last_modified: visible_time(&m),
        })
    }

    /// Removes the stale temporary file `path` (see [`STALE_TEMP_AGE`]); errors (a
    /// read-only user, a concurrent removal) leave it for a later listing. A temporary name
    /// that is also linked as an object (a writer died between its link and its unlink) is
    /// settled first, so the unlink's ctime change cannot move the object's time.
    fn remove_stale_temp(&self, path: &Path) {
        let Ok(m) = fs::symlink_metadata(path) else {
            return;
        };
        let old = ctime(&m).is_some_and(|t| {
            SystemTime::now()
                .duration_since(t)
                .is_ok_and(|age| age >= self.stale_temp_age)
        });
        if !m.is_file() || !old {
            return;
        }
        if m.nlink() > 1 && m.modified().ok() == Some(UNSETTLED) {
            let settled = OpenOptions::new().write(true).open(path).and_then(|f| {
                f.set_modified(ctime(&m).unwrap_or_else(SystemTime::now))?;
                f.sync_all()
            });
            if settled.is_err() {
                return;
            }
        }
        if fs::remove_file(path).is_ok() {
            let _ = sync_dir(path.parent().unwrap_or(&self.root));
        }
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
                if name.starts_with(".tmp-") {
                    self.store.remove_stale_temp(&ent.path());
                }
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
                    Err(e) if e.kind() == StoreErrorKind::NotFound => {}
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

/// An object's visibility time: its mtime once settled, its ctime (stamped by the link or
/// rename that made it visible) before.
fn visible_time(m: &fs::Metadata) -> Option<SystemTime> {
    match m.modified().ok() {
        Some(t) if t != UNSETTLED => Some(t),
        _ => ctime(m),
    }
}

/// The inode change time (`st_ctime`), which no user call can set to a chosen value.
fn ctime(m: &fs::Metadata) -> Option<SystemTime> {
    let secs = u64::try_from(m.ctime()).ok()?;
    let nanos = u32::try_from(m.ctime_nsec()).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn store(dir: &Path) -> FsStore {
        FsStore::new(dir).expect("fs store")
    }

    /// Finding 2 of issue 20: a create paused between writing its temporary file and
    /// linking it must be dated when the key appeared, not when its bytes were written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_paused_before_its_link_is_dated_when_it_became_visible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pause = Duration::from_millis(1500);
        let seen_during_pause = Arc::new(Mutex::new(None));
        let seen = seen_during_pause.clone();
        let reader = store(dir.path());
        let hook = Arc::new(move |key: &str| {
            *seen.lock().unwrap() = Some(reader.head_blocking(key).is_ok());
            std::thread::sleep(pause);
        });
        let s = store(dir.path()).with_before_visible(hook);
        let started = SystemTime::now();
        let out = s
            .put_if_absent("snapshots/v/m", Bytes::from_static(b"root"))
            .await
            .expect("create");
        assert_eq!(out, PutOutcome::Created);
        assert_eq!(*seen_during_pause.lock().unwrap(), Some(false));
        let lm = s
            .head("snapshots/v/m")
            .await
            .unwrap()
            .last_modified
            .unwrap();
        assert!(
            lm >= started + pause - Duration::from_millis(200),
            "Last-Modified {lm:?} predates the moment the key appeared ({started:?} + {pause:?})"
        );
        let listed = s.list("snapshots/", None, 10).await.unwrap();
        assert_eq!(listed[0].last_modified, Some(lm), "listing and HEAD agree");
        // The same for a plain put (rename).
        let started = SystemTime::now();
        s.put("sweeps/orphans", Bytes::from_static(b"x"))
            .await
            .unwrap();
        let lm = s
            .head("sweeps/orphans")
            .await
            .unwrap()
            .last_modified
            .unwrap();
        assert!(lm >= started + pause - Duration::from_millis(200));
        // Nothing of the temporary files is left.
        let names: Vec<_> = fs::read_dir(dir.path().join("snapshots/v"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("m")]);
    }

    /// A writer that died between its link and its settle leaves an object whose mtime is
    /// the unsettled mark: it is dated by its ctime, the link's stamp.
    #[tokio::test]
    async fn an_unsettled_object_is_dated_by_the_link_stamp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.put_if_absent("a/k", Bytes::from_static(b"v"))
            .await
            .unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join("a/k"))
            .unwrap();
        f.set_modified(UNSETTLED).unwrap();
        let changed = ctime(&f.metadata().unwrap()).unwrap();
        let lm = s.head("a/k").await.unwrap().last_modified.unwrap();
        assert_eq!(lm, changed);
        assert!(lm > UNIX_EPOCH + Duration::from_secs(1_000_000_000));
    }

    /// Finding 5: `.tmp-*` files of killed writes are removed by a listing once stale; a
    /// stale temporary name that is also a linked, unsettled object is settled first, so
    /// the object's time does not move.
    #[tokio::test]
    async fn listings_remove_stale_temporary_files_and_keep_young_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let young = store(dir.path());
        young.put("p/obj", Bytes::from_static(b"v")).await.unwrap();
        let killed = dir.path().join("p/.tmp-killed");
        fs::write(&killed, vec![7u8; 4096]).unwrap();
        // A writer killed between its link and its unlink: the object is unsettled.
        let linked_tmp = dir.path().join("p/.tmp-linked");
        fs::write(&linked_tmp, b"marker").unwrap();
        OpenOptions::new()
            .write(true)
            .open(&linked_tmp)
            .unwrap()
            .set_modified(UNSETTLED)
            .unwrap();
        fs::hard_link(&linked_tmp, dir.path().join("p/marker")).unwrap();
        let before = young.head("p/marker").await.unwrap().last_modified.unwrap();

        assert_eq!(young.list("p/", None, 10).await.unwrap().len(), 2);
        assert!(
            killed.exists() && linked_tmp.exists(),
            "young temporary files are kept"
        );

        std::thread::sleep(Duration::from_millis(20));
        let sweeping = store(dir.path()).with_stale_temp_age(Duration::from_millis(10));
        let listed = sweeping.list("p/", None, 10).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(!killed.exists(), "a stale temporary file is removed");
        assert!(
            !linked_tmp.exists(),
            "a stale linked temporary name is removed"
        );
        let after = sweeping
            .head("p/marker")
            .await
            .unwrap()
            .last_modified
            .unwrap();
        assert_eq!(
            before, after,
            "removing the temporary name did not move the time"
        );
        assert_eq!(
            sweeping.get("p/marker").await.unwrap(),
            Bytes::from_static(b"marker")
        );
    }
}

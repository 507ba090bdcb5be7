//! Restore a snapshot to a raw file: walk the tables, group chunk locations per pack,
//! coalesce neighbouring frames into one ranged GET, verify every chunk's BLAKE3 and write
//! at its offset. Zero chunks are never written (the target stays sparse).
//!
//! `Qcow2` creates a new qcow2 image and writes through the image engine, so the result
//! is a bootable, sparse image (zero chunks stay unallocated clusters).
//!
//! `Into { base }` writes into a file that already holds snapshot `base`: the two trees
//! are walked together, equal subtrees are skipped, and only differing chunks are written
//! (chunks that became zero are punched out).
//!
//! Resume (format-spec §12): a restore that dies is continued by a re-run with the same
//! target. A raw target carries a sidecar `.NAME.island-restore` (volume, id, size) from
//! the moment it is created zero-filled until its final fsync; a `Qcow2` restore writes a
//! temporary image named after OUT and the snapshot id. A re-run that finds either reads
//! every non-zero chunk back, keeps those whose BLAKE3 equals the table's id and downloads
//! only the rest (reading local data is far cheaper than fetching it).

mod open;
mod stale;
mod state;

use crate::image::Image;
use crate::repo::repository::SegmentSet;
use crate::repo::tree::{LeafPair, PairWalk};
use crate::repo::{BlobId, Location, Progress, RepoError, Repository, SnapshotManifest};
use crate::store::StoreErrorKind;
use crate::Result;
use futures::StreamExt;
use open::open_target;
use serde::Serialize;
use state::Resume;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Neighbouring frames closer than this are fetched in one GET (the gap is discarded).
const COALESCE_GAP: u64 = 256 << 10;
/// Largest single ranged GET.
const MAX_GET: u64 = 8 << 20;
/// GETs in flight.
const PARALLEL_GETS: usize = 8;
/// Chunks located before their GETs are planned (a location is ~100 bytes of memory).
const WINDOW_CHUNKS: usize = 16384;
/// A qcow2 target is flushed after this many bytes written (what a killed run can keep).
const IMAGE_FLUSH_BYTES: u64 = 16 << 20;
/// A raw restore records its progress (after an fsync) at least every this many bytes of
/// the snapshot walked.
const PROGRESS_BYTES: u64 = 1 << 30;
/// ... and about this often: a window closes once it holds what the last one fetched in
/// this time (or this time has passed), so a killed restore of any size or speed loses
/// at most this much work to re-verification.
const SAVE_INTERVAL: Duration = Duration::from_secs(5);
/// Frame bytes of the first window, before a fetch rate is known; no window is sized
/// below it (a tiny window's rate is noise, and its GETs coalesce poorly).
const MIN_WINDOW_BYTES: u64 = 16 << 20;
/// Chunk entries of a leaf taken at a time: where a window may close inside a leaf.
const SLICE_CHUNKS: usize = 256;

/// Where to restore.
#[derive(Clone, Debug)]
pub enum RestoreTarget {
    /// A new raw file (created or truncated), sparse.
    Raw(PathBuf),
    /// An existing raw file that holds snapshot `base` of the same volume.
    Into {
        /// The file (or block device) to bring from `base` to the snapshot.
        path: PathBuf,
        /// Snapshot id OUT holds now; only chunks that differ from it are written.
        base: String,
    },
    /// A new qcow2 image (refused if `path` exists, so an image is never overwritten).
    Qcow2 {
        /// Where the image appears once complete.
        path: PathBuf,
        /// Cluster size of the new image, in bytes.
        cluster_size: u32,
    },
}

/// Where restored bytes go: a raw file, or a qcow2 image through the engine.
enum Sink {
    File(File),
    Image(Box<Image>),
}

impl Sink {
    fn write_at(&self, path: &Path, buf: &[u8], off: u64) -> Result<()> {
        match self {
            Sink::File(f) => f
                .write_all_at(buf, off)
                .map_err(io_err(path, "write", off))
                .map_err(Into::into),
            Sink::Image(img) => img.write_at(buf, off).map_err(Into::into),
        }
    }

    fn read_at(&self, path: &Path, buf: &mut [u8], off: u64) -> Result<()> {
        match self {
            Sink::File(f) => f
                .read_exact_at(buf, off)
                .map_err(io_err(path, "read", off))
                .map_err(Into::into),
            Sink::Image(img) => img.read_at(buf, off).map_err(Into::into),
        }
    }

    fn punch(&self, path: &Path, off: u64, len: u64) -> Result<()> {
        match self {
            Sink::File(f) => punch(f, path, off, len),
            Sink::Image(img) => img.write_zeroes(off, len).map_err(Into::into),
        }
    }

    fn sync(&self, path: &Path) -> Result<()> {
        match self {
            Sink::File(f) => f
                .sync_all()
                .map_err(io_err(path, "fsync", 0))
                .map_err(Into::into),
            Sink::Image(img) => img.flush().map_err(Into::into),
        }
    }
}

/// What a restore did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RestoreReport {
    /// Bytes of chunks written to OUT by this run.
    pub bytes_written: u64,
    /// Bytes fetched from the store (frames and metadata).
    pub bytes_downloaded: u64,
    /// Store requests of every kind.
    pub requests: u64,
    /// Chunks fetched whose BLAKE3 matched their id before being written.
    pub chunks_verified: u64,
    /// Chunks that are zero in the snapshot where OUT may hold data: punched out or
    /// written as zeros.
    pub chunks_zeroed: u64,
    /// True when this run continued a killed restore into the same target.
    pub resumed: bool,
    /// Chunks a resumed run found already restored (checked by hash, not downloaded).
    pub chunks_kept: u64,
    /// Bytes of those chunks.
    pub bytes_kept: u64,
    /// Bytes below the killed run's recorded progress: neither read back nor downloaded.
    pub bytes_done_before: u64,
    /// Temporary images of other snapshots' killed qcow2 restores to the same OUT, removed.
    pub stale_temps_removed: u64,
}

/// How to restore, beyond what and where.
#[derive(Clone, Default)]
pub struct RestoreOptions {
    /// Receives stage `restore`, counted in bytes of the snapshot walked and written.
    pub progress: Option<Arc<dyn Progress>>,
    /// Directory for the resume marker of a raw or `--into` restore (format-spec §12.3).
    /// Default: next to a regular OUT; a block device has no marker (and is not
    /// resumable) without one.
    pub state_dir: Option<PathBuf>,
}

fn io_err(path: &Path, op: &'static str, offset: u64) -> impl FnOnce(std::io::Error) -> RepoError {
    let path = path.display().to_string();
    move |source| RepoError::Io {
        path,
        op,
        offset,
        source,
    }
}

/// Restore snapshot `id` of `volume`.
pub async fn restore(
    repo: &Repository,
    volume: &str,
    id: &str,
    target: &RestoreTarget,
    progress: Option<Arc<dyn Progress>>,
) -> Result<RestoreReport> {
    let opts = RestoreOptions {
        progress,
        state_dir: None,
    };
    restore_with(repo, volume, id, target, &opts).await
}

/// [`restore`] with options.
pub async fn restore_with(
    repo: &Repository,
    volume: &str,
    id: &str,
    target: &RestoreTarget,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    match target {
        RestoreTarget::Qcow2 { path, cluster_size } => {
            restore_qcow2(repo, volume, id, path, *cluster_size, opts).await
        }
        _ => restore_to(repo, volume, id, target, opts).await,
    }
}

/// A qcow2 restore appears whole or not at all: the image is written under a temporary
/// name in the target's directory (derived from OUT and the snapshot id, so a re-run after a
/// kill finds and continues it; the image lock keeps two runs apart), made durable, then
/// hard-linked to `path` (which fails, never overwrites, if `path` appeared meanwhile) and
/// the directory synced. A failure removes the temporary file unless it is a temporary
/// store error (network loss), after which a re-run resumes.
async fn restore_qcow2(
    repo: &Repository,
    volume: &str,
    id: &str,
    path: &Path,
    cluster_size: u32,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(RepoError::InvalidArgument(format!(
            "{}: already exists (or is a symlink); a qcow2 restore never overwrites",
            path.display()
        ))
        .into());
    }
    let tmp = sidecar(path, &format!("{id}.island-tmp"))?;
    let stale = stale::remove_other_temps(path, id)?;
    let target = RestoreTarget::Qcow2 {
        path: tmp.clone(),
        cluster_size,
    };
    let result = match restore_to(repo, volume, id, &target, opts).await {
        Ok(report) => publish(&tmp, path).map(|()| RestoreReport {
            stale_temps_removed: stale,
            ..report
        }),
        Err(e) => Err(e),
    };
    let keep = match &result {
        Err(crate::Error::Store(e)) => e.is_temporary() || e.kind() == StoreErrorKind::Timeout,
        Err(crate::Error::Image(crate::image::ImageError::Locked { .. })) => true,
        _ => false,
    };
    if keep {
        tracing::warn!("kept {} for a re-run to resume", tmp.display());
    } else if let Err(e) = std::fs::remove_file(&tmp) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("could not remove {}: {e}", tmp.display());
        }
    }
    result
}

/// The directory holding `path` ("." for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `.NAME.<suffix>` next to `path`.
fn sidecar(path: &Path, suffix: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| RepoError::InvalidArgument(format!("{}: not a file name", path.display())))?
        .to_string_lossy()
        .into_owned();
    Ok(parent_dir(path).join(format!(".{name}.{suffix}")))
}

/// Create (or truncate) a regular OUT as `size` zero bytes, durably: a fresh raw restore
/// writes only the non-zero chunks into it.
fn create_zeroed(path: &Path, size: u64) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path, "create", 0))?;
    f.set_len(size).map_err(io_err(path, "set_len", size))?;
    f.sync_all().map_err(io_err(path, "fsync", 0))?;
    Ok(f)
}

/// Which of `chunks` (offset, length, id) the target already holds (resume).
fn already_there(sink: &Sink, path: &Path, chunks: &[(u64, u64, BlobId)]) -> Result<Vec<bool>> {
    let mut buf = Vec::new();
    chunks
        .iter()
        .map(|&(off, len, id)| {
            buf.resize(len as usize, 0);
            sink.read_at(path, &mut buf, off)?;
            Ok(BlobId::of(&buf) == id)
        })
        .collect()
}

/// Make the finished temporary image durable and give it its final name without ever
/// replacing an existing file, then make the new name durable.
fn publish(tmp: &Path, path: &Path) -> Result<()> {
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err(tmp, "fsync", 0))?;
    std::fs::hard_link(tmp, path).map_err(io_err(path, "link", 0))?;
    std::fs::remove_file(tmp).map_err(io_err(tmp, "remove", 0))?;
    let dir = parent_dir(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&dir, "fsync directory", 0))?;
    Ok(())
}

/// Restore into `target`; a `Qcow2` target here is an empty file the caller created.
/// Stages: open the target (resuming a killed run), then stage "restore" walks the tree
/// and fetches in windows, then the target is made durable.
async fn restore_to(
    repo: &Repository,
    volume: &str,
    id: &str,
    target: &RestoreTarget,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let before = repo.counts();
    let m = repo.snapshot(volume, id).await?;
    let set = repo.load_view().await?;
    let opened = open_target(repo, &m, target, opts.state_dir.as_deref()).await?;
    let sink = Arc::new(opened.sink);
    if let Some(p) = &opts.progress {
        p.stage("restore", m.size);
    }
    let mut report = RestoreReport {
        resumed: opened.resumed,
        ..Default::default()
    };
    let mut walker = Walker {
        repo,
        set: &set,
        m: &m,
        sink,
        path: opened.path,
        zero_unknown: opened.zero_unknown,
        resumed: opened.resumed,
        done_below: opened.resume.as_ref().map_or(0, Resume::done_below),
        window: Window {
            wanted: Vec::new(),
            bytes: 0,
            walked: 0,
            target: MIN_WINDOW_BYTES,
            opened: Instant::now(),
            size: m.size,
            progress: opts.progress.clone(),
            resume: opened.resume,
        },
    };
    walker.run(opened.walk, &mut report).await?;
    walker.finish().await?;
    let used = repo.counts().since(&before);
    report.bytes_downloaded = used.bytes_downloaded;
    report.requests = used.total();
    Ok(report)
}

/// Stage "restore": the tree walk feeding the fetch window.
struct Walker<'a> {
    repo: &'a Repository,
    set: &'a SegmentSet,
    m: &'a SnapshotManifest,
    sink: Arc<Sink>,
    path: PathBuf,
    zero_unknown: bool,
    resumed: bool,
    /// Every byte below this was written by a killed run (its recorded resume point).
    done_below: u64,
    window: Window,
}

impl Walker<'_> {
    /// Walk every leaf; a leaf is taken in slices so the window can close (and the resume
    /// point be recorded) inside a leaf that covers more than one window's worth.
    async fn run(&mut self, mut walk: PairWalk, report: &mut RestoreReport) -> Result<()> {
        let cs = self.m.chunk_size as u64;
        while let Some(leaf) = walk.next(self.repo, self.set).await? {
            for start in (0..leaf.b.len()).step_by(SLICE_CHUNKS) {
                if self.window.full() {
                    let done = (leaf.first_chunk + start as u64) * cs;
                    self.flush(report, done).await?;
                }
                let end = (start + SLICE_CHUNKS).min(leaf.b.len());
                self.window.walked += (end - start) as u64 * cs;
                self.slice(&leaf, start..end, report).await?;
            }
        }
        self.flush(report, self.m.size).await
    }

    async fn flush(&mut self, report: &mut RestoreReport, done: u64) -> Result<()> {
        self.window
            .flush(self.repo, self.set, &self.sink, &self.path, report, done)
            .await
    }

    /// Entries `range` of `leaf`: punch what became zero, keep what a killed run already
    /// wrote, locate the rest into the window.
    async fn slice(
        &mut self,
        leaf: &LeafPair,
        range: std::ops::Range<usize>,
        report: &mut RestoreReport,
    ) -> Result<()> {
        let (cs, size) = (self.m.chunk_size as u64, self.m.size);
        let mut local: Vec<(u64, u64, BlobId)> = Vec::new();
        let mut zeros: Vec<(u64, u64)> = Vec::new();
        for j in range {
            let (old, new) = (&leaf.a[j], &leaf.b[j]);
            if old == new && !(self.zero_unknown && new.is_zero()) {
                continue;
            }
            let off = (leaf.first_chunk + j as u64) * cs;
            let len = cs.min(size - off);
            if off + len <= self.done_below {
                report.bytes_done_before += len;
                continue;
            }
            if new.is_zero() {
                match zeros.last_mut() {
                    Some(z) if z.0 + z.1 == off => z.1 += len,
                    _ => zeros.push((off, len)),
                }
                report.chunks_zeroed += 1;
                continue;
            }
            local.push((off, len, *new));
        }
        if !zeros.is_empty() {
            let (sk, p) = (self.sink.clone(), self.path.clone());
            tokio::task::spawn_blocking(move || {
                zeros
                    .into_iter()
                    .try_for_each(|(off, len)| sk.punch(&p, off, len))
            })
            .await
            .map_err(|e| RepoError::Task(format!("punch: {e}")))??;
        }
        if self.resumed && !local.is_empty() {
            local = self.not_there(local, report).await?;
        }
        for (off, _, new) in local {
            let loc =
                self.repo
                    .locate(self.set, &new)
                    .await?
                    .ok_or_else(|| RepoError::MissingBlob {
                        id: new.to_hex(),
                        context: format!("{}/{} chunk {}", self.m.volume, self.m.id, off / cs),
                    })?;
            self.window.push(off, new, loc);
        }
        Ok(())
    }

    /// Of `chunks`, those OUT does not already hold (a resumed run reads them back).
    async fn not_there(
        &self,
        chunks: Vec<(u64, u64, BlobId)>,
        report: &mut RestoreReport,
    ) -> Result<Vec<(u64, u64, BlobId)>> {
        let (sk, p) = (self.sink.clone(), self.path.clone());
        let (there, chunks) = tokio::task::spawn_blocking(move || {
            already_there(&sk, &p, &chunks).map(|t| (t, chunks))
        })
        .await
        .map_err(|e| RepoError::Task(format!("verify: {e}")))??;
        let mut local = Vec::with_capacity(chunks.len());
        for (c, kept) in chunks.into_iter().zip(there) {
            if kept {
                report.chunks_kept += 1;
                report.bytes_kept += c.1;
            } else {
                local.push(c);
            }
        }
        Ok(local)
    }

    /// Stage "finish": make OUT durable, close an image, then drop the resume record.
    async fn finish(self) -> Result<()> {
        let (sk, p) = (self.sink.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || sk.sync(&p))
            .await
            .map_err(|e| RepoError::Task(format!("sync: {e}")))??;
        if let Ok(Sink::Image(img)) = Arc::try_unwrap(self.sink) {
            img.close()?;
        }
        if let Some(r) = &self.window.resume {
            r.finish()?;
        }
        Ok(())
    }
}

/// Chunks located and waiting for their GETs. Closing it fetches and writes them, then
/// records the resume point: every chunk below it is written.
struct Window {
    wanted: Vec<(u64, BlobId, Location)>,
    /// Frame bytes of `wanted`.
    bytes: u64,
    /// Volume bytes walked into this window (progress advances when they are written).
    walked: u64,
    /// Frame bytes at which the window closes: what the last one fetched in SAVE_INTERVAL.
    target: u64,
    opened: Instant,
    size: u64,
    progress: Option<Arc<dyn Progress>>,
    resume: Option<Resume>,
}

impl Window {
    fn full(&self) -> bool {
        self.wanted.len() >= WINDOW_CHUNKS
            || self.walked >= PROGRESS_BYTES
            || self.bytes >= self.target
            || self.opened.elapsed() >= SAVE_INTERVAL
    }

    fn push(&mut self, off: u64, id: BlobId, loc: Location) {
        self.bytes += u64::from(loc.frame_len);
        self.wanted.push((off, id, loc));
    }

    /// Fetch and write the window, then record that everything below `done` is written.
    async fn flush(
        &mut self,
        repo: &Repository,
        set: &SegmentSet,
        sink: &Arc<Sink>,
        path: &Path,
        report: &mut RestoreReport,
        done: u64,
    ) -> Result<()> {
        let started = Instant::now();
        let fetched = std::mem::take(&mut self.bytes);
        let batch = std::mem::take(&mut self.wanted);
        let (written, verified) = fetch_and_write(repo, set, sink, path, batch, self.size).await?;
        report.bytes_written += written;
        report.chunks_verified += verified;
        let walked = std::mem::take(&mut self.walked);
        if let Some(p) = &self.progress {
            p.advance(walked);
        }
        let secs = started.elapsed().as_secs_f64();
        if fetched >= MIN_WINDOW_BYTES && secs > 0.0 {
            let rate = fetched as f64 / secs;
            self.target = ((rate * SAVE_INTERVAL.as_secs_f64()) as u64).max(MIN_WINDOW_BYTES);
        }
        self.opened = Instant::now();
        if let (Some(r), Sink::File(f)) = (self.resume.as_mut(), &**sink) {
            r.progress(f, path, done)?;
        }
        Ok(())
    }
}

/// One coalesced GET: a pack byte range and the chunks inside it.
struct Run {
    pack: String,
    start: u64,
    end: u64,
    chunks: Vec<(u64, BlobId, Location)>,
}

async fn fetch_and_write(
    repo: &Repository,
    set: &SegmentSet,
    sink: &Arc<Sink>,
    path: &Path,
    mut wanted: Vec<(u64, BlobId, Location)>,
    size: u64,
) -> Result<(u64, u64)> {
    wanted.sort_by(|a, b| (&a.2.pack, a.2.offset).cmp(&(&b.2.pack, b.2.offset)));
    let mut runs: Vec<Run> = Vec::new();
    for (off, id, loc) in wanted {
        let (s, e) = (loc.offset as u64, loc.offset as u64 + loc.frame_len as u64);
        match runs.last_mut() {
            Some(r)
                if r.pack == loc.pack
                    && s <= r.end + COALESCE_GAP
                    && e.max(r.end) - r.start <= MAX_GET =>
            {
                r.end = r.end.max(e);
                r.chunks.push((off, id, loc));
            }
            _ => runs.push(Run {
                pack: loc.pack.clone(),
                start: s,
                end: e,
                chunks: vec![(off, id, loc)],
            }),
        }
    }
    let mut results = futures::stream::iter(runs.into_iter().map(|run| {
        let repo = repo.clone();
        let sink = sink.clone();
        let path = path.to_path_buf();
        async move {
            let key = crate::repo::pack_key_of(&run.pack);
            let bytes = match repo.store().get_range(&key, run.start..run.end).await {
                Ok(b) => Some(b),
                // A gc may have repacked it since the view: each chunk follows it.
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            };
            let (mut written, mut verified) = (0u64, 0u64);
            for (off, id, loc) in run.chunks {
                let plain = match &bytes {
                    Some(bytes) => {
                        let lo = (loc.offset as u64 - run.start) as usize;
                        let hi = lo + loc.frame_len as usize;
                        let frame = bytes
                            .get(lo..hi)
                            .ok_or_else(|| RepoError::corrupt(&key, "short ranged read"))?;
                        crate::repo::decode_blob(&key, frame, id)?.2
                    }
                    None => repo.read_following(set, &id, loc).await?.2,
                };
                let len = (plain.len() as u64).min(size - off) as usize;
                let (sk, p) = (sink.clone(), path.clone());
                tokio::task::spawn_blocking(move || sk.write_at(&p, &plain[..len], off))
                    .await
                    .map_err(|e| RepoError::Task(format!("write: {e}")))??;
                written += len as u64;
                verified += 1;
            }
            Ok::<_, crate::Error>((written, verified))
        }
    }))
    .buffer_unordered(PARALLEL_GETS);
    let (mut w, mut v, mut unflushed) = (0, 0, 0);
    while let Some(r) = results.next().await {
        let (a, b) = r?;
        w += a;
        v += b;
        unflushed += a;
        // The image engine keeps new mappings in memory until a flush: flush now and then
        // so a re-run after a kill finds most of the work in the temporary image.
        if unflushed >= IMAGE_FLUSH_BYTES && matches!(**sink, Sink::Image(_)) {
            unflushed = 0;
            let (sk, p) = (sink.clone(), path.to_path_buf());
            tokio::task::spawn_blocking(move || sk.sync(&p))
                .await
                .map_err(|e| RepoError::Task(format!("flush: {e}")))??;
        }
    }
    Ok((w, v))
}

/// Make `len` bytes at `off` read as zeros without writing data (hole punch; falls back
/// to writing zeros where the filesystem cannot punch).
fn punch(file: &File, path: &Path, off: u64, len: u64) -> Result<()> {
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as i64,
            len as i64,
        )
    };
    if r != 0 {
        file.write_all_at(&vec![0u8; len as usize], off)
            .map_err(io_err(path, "write zeros", off))?;
    }
    Ok(())
}

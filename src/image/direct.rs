//! O_DIRECT storage for the engine ([`CacheMode::Direct`](super::CacheMode), QEMU's
//! `cache=none` / `qemu-img bench -t none`).
//!
//! With O_DIRECT the kernel moves data between the device and the caller's buffer without
//! the page cache, and refuses (EINVAL) any request whose file offset, length or buffer
//! address is not aligned. The engine issues arbitrary byte ranges (guest I/O at any
//! offset, one 8-byte L1 entry, a 104-byte header), so [`DirectFile`] makes every request
//! legal:
//! - aligned offset, length and buffer: passed straight to `pread`/`pwrite`, no copy
//!   (4 KiB guest I/O at 4 KiB offsets from an [`AlignedBuf`]);
//! - anything else goes through page-aligned bounce buffers from a small pool (one copy);
//!   a write that covers a block only partly reads that block first and writes it back
//!   whole (read-modify-write). The bytes outside the request are rewritten with the
//!   values they already hold, so a torn block write can only leave the requested bytes
//!   old or new, exactly as the page cache's writeback of a whole page would.
//!
//! Two RMWs of the same block by different threads would lose one update, and an RMW
//! racing a whole-block write could put back bytes only the other write changed, so a
//! partial block is read and written under an exclusive lock striped by block index,
//! and whole blocks are written under the shared side of the same lock. Guest writes
//! that race on the same bytes stay unordered, as on a real disk.
//!
//! O_DIRECT bypasses the page cache, not the device's volatile write cache: [`ImageFile::
//! sync`] is still `fdatasync`, and the engine's flush barriers are unchanged.

use super::error::ImageError;
use super::file::ImageFile;
use std::alloc::Layout;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Alignment assumed when the kernel does not report one (statx without
/// STATX_DIOALIGN, before Linux 6.1): 4096 is a multiple of every common logical block
/// size (512 and 4096), so it is always legal, only coarser than needed on 512-byte devices.
const FALLBACK_ALIGN: u32 = 4096;
/// Alignment of bounce buffers: a page, which satisfies every memory alignment the
/// kernel asks for on block devices and local filesystems.
const BUF_ALIGN: usize = 4096;
/// Bytes per bounce buffer; larger unaligned requests are done in chunks of this size.
const BOUNCE_BYTES: usize = 256 << 10;
/// Bounce buffers kept for reuse (more are allocated under load and then freed).
const POOL_KEEP: usize = 8;
/// Stripes of the read-modify-write lock.
const RMW_STRIPES: usize = 64;

/// A zero-initialised heap buffer aligned to a page: what O_DIRECT needs of a buffer.
/// Callers that keep their I/O buffers in one avoid the bounce copy.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zero bytes at a page-aligned address.
    pub fn zeroed(len: usize) -> AlignedBuf {
        let size = len.max(1).next_multiple_of(BUF_ALIGN);
        let layout = match Layout::from_size_align(size, BUF_ALIGN) {
            Ok(l) => l,
            Err(_) => std::alloc::handle_alloc_error(Layout::new::<u8>()),
        };
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len, layout }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() >= len initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Open `path` with O_DIRECT (read-only, read-write, or created). A filesystem that
/// refuses O_DIRECT is reported as [`ImageError::DirectIo`] naming the path: Island never
/// falls back to the page cache silently, since the caller asked for cache=none semantics.
pub(super) fn open_direct(path: &Path, write: bool, create: bool) -> Result<File, ImageError> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .create(create)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::EINVAL) => refused(path, format!("open with O_DIRECT failed: {source}")),
            _ => ImageError::Io {
                path: path.to_path_buf(),
                op: if create { "create" } else { "open" },
                offset: 0,
                source,
            },
        })?;
    Ok(file)
}

fn refused(path: &Path, reason: String) -> ImageError {
    ImageError::DirectIo {
        path: path.to_path_buf(),
        reason,
    }
}

/// (memory alignment, offset/length alignment) the kernel requires for O_DIRECT on this
/// file, from statx(STATX_DIOALIGN) (Linux 6.1+); None when it is not reported. Some((0,
/// 0)) means the file does not support O_DIRECT.
fn dio_alignment(file: &File) -> Option<(u32, u32)> {
    // SAFETY: statx is a plain C struct; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, a NUL-terminated empty path with AT_EMPTY_PATH, and a pointer to
    // a statx the call fills.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}

/// Image storage opened with O_DIRECT; see the module comment.
pub struct DirectFile {
    file: File,
    /// Offset and length alignment (a power of two, at least 512).
    align: u64,
    /// Buffer address alignment the kernel needs for a caller's buffer to go directly.
    mem_align: usize,
    pool: Mutex<Vec<AlignedBuf>>,
    rmw: [RwLock<()>; RMW_STRIPES],
}

impl DirectFile {
    /// Wrap a file opened with `O_DIRECT` (the engine opens it with `open_direct`);
    /// `path` names it in errors.
    pub fn new(file: File, path: &Path) -> Result<DirectFile, ImageError> {
        let (mem, off) = dio_alignment(&file).unwrap_or((FALLBACK_ALIGN, FALLBACK_ALIGN));
        if off == 0 {
            return Err(refused(
                path,
                "the filesystem reports no O_DIRECT support for this file".into(),
            ));
        }
        if !off.is_power_of_two() || off as usize > BOUNCE_BYTES || mem as usize > BUF_ALIGN {
            return Err(refused(
                path,
                format!("unsupported O_DIRECT alignment: offset {off}, memory {mem}"),
            ));
        }
        Ok(DirectFile {
            file,
            align: u64::from(off.max(512)),
            mem_align: (mem as usize).max(1),
            pool: Mutex::new(Vec::new()),
            rmw: std::array::from_fn(|_| RwLock::new(())),
        })
    }

    /// Open `path` with O_DIRECT, without image locking (for [`super::Image::create_on`]
    /// and [`super::Image::open_on`]).
    pub fn open(path: impl AsRef<Path>, write: bool, create: bool) -> Result<Self, ImageError> {
        let path = path.as_ref();
        DirectFile::new(open_direct(path, write, create)?, path)
    }

    /// The offset and length alignment in use.
    pub fn alignment(&self) -> u64 {
        self.align
    }

    fn aligned(&self, ptr: *const u8, len: usize, offset: u64) -> bool {
        offset % self.align == 0
            && len as u64 % self.align == 0
            && (ptr as usize) % self.mem_align == 0
    }

    fn take_buf(&self) -> AlignedBuf {
        lock(&self.pool)
            .pop()
            .unwrap_or_else(|| AlignedBuf::zeroed(BOUNCE_BYTES))
    }

    fn give_buf(&self, b: AlignedBuf) {
        let mut pool = lock(&self.pool);
        if pool.len() < POOL_KEEP {
            pool.push(b);
        }
    }

    /// Read up to `buf.len()` bytes at aligned `offset` into an aligned `buf`, stopping at
    /// the end of the file; returns the bytes read.
    fn read_upto(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match FileExt::read_at(&self.file, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    // A count that is not a whole number of blocks stops at the end of
                    // the file; the next offset would not even be aligned.
                    if n as u64 % self.align != 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Write all of an aligned `buf` at aligned `offset`.
    fn write_all_aligned(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match FileExt::write_at(&self.file, &buf[done..], offset + done as u64) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) if n as u64 % self.align != 0 && done + n < buf.len() => {
                    return Err(io::Error::other(format!(
                        "O_DIRECT write at {offset} stopped after {} bytes, not a whole block",
                        done + n
                    )))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn read_bounced(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let a = self.align;
        let end = offset + buf.len() as u64;
        let mut bounce = self.take_buf();
        let mut pos = offset;
        let r = (|| {
            while pos < end {
                let start = pos - pos % a;
                let stop = end.next_multiple_of(a).min(start + BOUNCE_BYTES as u64);
                let got = self.read_upto(&mut bounce[..(stop - start) as usize], start)?;
                let upto = end.min(stop);
                if start + (got as u64) < upto {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "read of {} bytes at {offset} past the end of the file",
                            end - offset
                        ),
                    ));
                }
                buf[(pos - offset) as usize..(upto - offset) as usize]
                    .copy_from_slice(&bounce[(pos - start) as usize..(upto - start) as usize]);
                pos = upto;
            }
            Ok(())
        })();
        self.give_buf(bounce);
        r
    }

    /// Lock the blocks a write touches: exclusively the stripes of partly covered blocks
    /// (read-modify-written), shared the stripes of blocks written whole, all in stripe
    /// order so two writers never wait on each other crosswise. An RMW then never
    /// interleaves with another write to its block: bytes only one writer touched always
    /// end up with that writer's value, as on a disk.
    fn lock_blocks(&self, offset: u64, end: u64) -> BlockLocks<'_> {
        let a = self.align;
        // 0 = untouched, 1 = shared, 2 = exclusive, per stripe.
        let mut want = [0u8; RMW_STRIPES];
        let first = offset / a;
        let last = (end - 1) / a;
        let stripe = |b: u64| (b % RMW_STRIPES as u64) as usize;
        for b in first..=last.min(first + RMW_STRIPES as u64 - 1) {
            want[stripe(b)] = 1;
        }
        if offset % a != 0 || end < (first + 1) * a {
            want[stripe(first)] = 2;
        }
        if end % a != 0 {
            want[stripe(last)] = 2;
        }
        let mut shared = Vec::new();
        let mut exclusive = Vec::new();
        for (i, &w) in want.iter().enumerate() {
            match w {
                1 => shared.push(read(&self.rmw[i])),
                2 => exclusive.push(write(&self.rmw[i])),
                _ => {}
            }
        }
        BlockLocks {
            _shared: shared,
            _exclusive: exclusive,
        }
    }

    /// Fill `block` (one aligned block of a bounce buffer) with the file's block at
    /// `offset`, zeros past the end of the file.
    fn read_block(&self, block: &mut [u8], offset: u64) -> io::Result<()> {
        let got = self.read_upto(block, offset)?;
        block[got..].fill(0);
        Ok(())
    }

    fn write_bounced(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let a = self.align;
        let end = offset + buf.len() as u64;
        let _guards = self.lock_blocks(offset, end);
        let mut bounce = self.take_buf();
        let mut pos = offset;
        let r = (|| {
            while pos < end {
                let start = pos - pos % a;
                let stop = end.next_multiple_of(a).min(start + BOUNCE_BYTES as u64);
                let chunk = &mut bounce[..(stop - start) as usize];
                let au = a as usize;
                if start < pos || end < start + a {
                    self.read_block(&mut chunk[..au], start)?;
                }
                if end < stop && stop - a > start {
                    let n = chunk.len();
                    self.read_block(&mut chunk[n - au..], stop - a)?;
                }
                let upto = end.min(stop);
                chunk[(pos - start) as usize..(upto - start) as usize]
                    .copy_from_slice(&buf[(pos - offset) as usize..(upto - offset) as usize]);
                self.write_all_aligned(chunk, start)?;
                pos = upto;
            }
            Ok(())
        })();
        self.give_buf(bounce);
        r
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read(l: &RwLock<()>) -> RwLockReadGuard<'_, ()> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write(l: &RwLock<()>) -> RwLockWriteGuard<'_, ()> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// Stripes of the write lock held by one write, released on drop.
struct BlockLocks<'a> {
    _shared: Vec<RwLockReadGuard<'a, ()>>,
    _exclusive: Vec<RwLockWriteGuard<'a, ()>>,
}

impl ImageFile for DirectFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.aligned(buf.as_ptr(), buf.len(), offset) {
            let got = self.read_upto(buf, offset)?;
            if got < buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {} bytes at {offset} past the end of the file",
                        buf.len()
                    ),
                ));
            }
            return Ok(());
        }
        self.read_bounced(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.aligned(buf.as_ptr(), buf.len(), offset) {
            let _guards = self.lock_blocks(offset, offset + buf.len() as u64);
            return self.write_all_aligned(buf, offset);
        }
        self.write_bounced(buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        // O_DIRECT skips the page cache, not the device's write cache.
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

//! QEMU-compatible image locking (QEMU `block/file-posix.c`, raw_apply_lock_bytes and
//! raw_check_lock_bytes): open-file-description byte locks at offset 100+bit for every
//! permission held and 200+bit for every permission *not shared*, all F_RDLCK; a
//! conflict is detected by testing a write lock on the other side's byte. Using QEMU's
//! exact scheme is what makes QEMU refuse an image Island writes, and vice versa.

use super::error::ImageError;
use super::OpenMode;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;
const CONSISTENT_READ: u32 = 0x1;
const WRITE: u32 = 0x2;
const WRITE_UNCHANGED: u32 = 0x4;
const RESIZE: u32 = 0x8;
const ALL: u32 = CONSISTENT_READ | WRITE | WRITE_UNCHANGED | RESIZE;
const NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];

fn flock(kind: libc::c_short, start: i64) -> libc::flock {
    // SAFETY: flock is a plain C struct; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = 1;
    fl
}

fn set_read_lock(file: &File, byte: i64) -> std::io::Result<()> {
    let fl = flock(libc::F_RDLCK as libc::c_short, byte);
    // SAFETY: valid fd and a pointer to an initialized flock for the call's duration.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether another open file description holds a lock on `byte`.
fn held_by_other(file: &File, byte: i64) -> std::io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, byte);
    // SAFETY: as above; F_OFD_GETLK writes into fl.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// (permissions held, permissions shared) for a mode, as QEMU's qcow2 on a file would.
fn perms(mode: OpenMode) -> (u32, u32) {
    match mode {
        OpenMode::ReadWrite => (
            CONSISTENT_READ | WRITE | RESIZE,
            CONSISTENT_READ | WRITE_UNCHANGED,
        ),
        OpenMode::ReadOnly => (CONSISTENT_READ, ALL & !(WRITE | RESIZE)),
        OpenMode::ReadOnlyShared => (0, ALL),
    }
}

/// The lock bytes of one open file description, released explicitly ([`unlock`]) when
/// dropped: by a closed image, and just as much by an open or create that fails after
/// taking them, since a child forked meanwhile by another thread keeps the description
/// (and so the locks) alive until its exec.
pub(super) struct Held {
    /// A second descriptor of the locked description.
    file: File,
    path: PathBuf,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Err(e) = unlock(&self.file) {
            tracing::error!(
                "{}: releasing the image locks failed: {e}",
                self.path.display()
            );
        }
    }
}

/// Take the lock bytes for `mode` on `file`, then verify nobody conflicts. The locks live
/// as long as the open file description, which is not the same as our descriptor: a
/// child forked by another thread shares it until its exec closes the (CLOEXEC) copy, so
/// they are released explicitly when the returned [`Held`] is dropped — also when this
/// fails after taking some of them.
pub(super) fn lock(file: &File, path: &Path, mode: OpenMode) -> Result<Held, ImageError> {
    let (held, shared) = perms(mode);
    let io = |source: std::io::Error, offset: u64| ImageError::Io {
        path: path.to_path_buf(),
        op: "lock",
        offset,
        source,
    };
    let guard = Held {
        file: file.try_clone().map_err(|e| ImageError::Io {
            path: path.to_path_buf(),
            op: "dup",
            offset: 0,
            source: e,
        })?,
        path: path.to_path_buf(),
    };
    for bit in 0..4 {
        let mask = 1u32 << bit;
        if held & mask != 0 {
            set_read_lock(file, PERM_BASE + bit).map_err(|e| io(e, (PERM_BASE + bit) as u64))?;
        }
        if shared & mask == 0 {
            set_read_lock(file, SHARED_BASE + bit)
                .map_err(|e| io(e, (SHARED_BASE + bit) as u64))?;
        }
    }
    for bit in 0..4 {
        let mask = 1u32 << bit;
        if held & mask != 0
            && held_by_other(file, SHARED_BASE + bit)
                .map_err(|e| io(e, (SHARED_BASE + bit) as u64))?
        {
            return Err(ImageError::Locked {
                path: path.to_path_buf(),
                reason: format!("another process does not share the \"{}\" permission (is a VM or qemu-img using it?)", NAMES[bit as usize]),
            });
        }
        if shared & mask == 0
            && held_by_other(file, PERM_BASE + bit).map_err(|e| io(e, (PERM_BASE + bit) as u64))?
        {
            return Err(ImageError::Locked {
                path: path.to_path_buf(),
                reason: format!(
                    "another process holds the \"{}\" permission (is a VM or qemu-img using it?)",
                    NAMES[bit as usize]
                ),
            });
        }
    }
    Ok(guard)
}

/// Release every lock byte held through `file`'s open file description. Unlike closing
/// the descriptor, this takes effect even while a concurrently forked child (between
/// fork and exec) still shares the description, so the image is unlocked the moment
/// [`super::Image`] is closed.
pub(super) fn unlock(file: &File) -> std::io::Result<()> {
    let mut fl = flock(libc::F_UNLCK as libc::c_short, 0);
    fl.l_len = 0;
    // SAFETY: valid fd and a pointer to an initialized flock for the call's duration.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

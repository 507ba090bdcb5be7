//! Regression tests: closing an image, and an open or create that fails after taking the
//! locks, must release the QEMU-compatible locks even while a concurrently forked child
//! (another thread's `Command::spawn`, between fork and exec) still holds a copy of the
//! image's file descriptor.
//!
//! The locks are open-file-description (OFD) locks; a forked child shares the open file
//! description until its exec closes the CLOEXEC descriptor, so merely closing our
//! descriptor left the image locked for that window. Under heavy load the window grew
//! long enough for the `qemu-img check` right after `close()` in `random_ops` to fail
//! with "Failed to get shared \"write\" lock" — a valid image reported as an error.

use super::tests::{qemu_check, small_image};
use super::*;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Run `f` while a child forked by another thread holds a copy of every open descriptor
/// (it waits between fork and exec until `f` returns), and return what `f` returned.
/// `f` must not panic: the child would never be released.
fn while_forked<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    // `forked`: the child tells us it exists; `release`: we tell it to go on to exec.
    let (mut forked_r, forked_w) = std::io::pipe().unwrap();
    let (release_r, mut release_w) = std::io::pipe().unwrap();
    let (fw, rr) = (forked_w.as_raw_fd(), release_r.as_raw_fd());
    let mut cmd = Command::new("true");
    // SAFETY: the closure runs in the forked child and calls only async-signal-safe
    // write(2) and read(2) on descriptors that stay open until exec.
    unsafe {
        cmd.pre_exec(move || {
            let b = [1u8];
            libc::write(fw, b.as_ptr().cast(), 1);
            let mut r = [0u8];
            libc::read(rr, r.as_mut_ptr().cast(), 1);
            Ok(())
        });
    }
    std::thread::scope(|s| {
        let child = s.spawn(move || cmd.status());
        let mut b = [0u8];
        let forked = forked_r.read_exact(&mut b);
        let out = f();
        release_w.write_all(&[1]).unwrap();
        assert!(child.join().unwrap().unwrap().success());
        forked.unwrap();
        out
    })
}

/// Can a new read-write open of `path` take the locks (nobody else holds them)?
fn lockable(path: &Path) -> Result<(), ImageError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    lock::lock(&file, path, OpenMode::ReadWrite).map(drop)
}

#[test]
fn close_releases_locks_while_a_forked_child_holds_the_fd() {
    let dir = tempfile::tempdir().unwrap();
    let (path, img) = small_image(dir.path(), "fork.qcow2");
    img.write_at(&[7u8; 4096], 0).unwrap();
    let (closed, reopened, locked) = while_forked(|| {
        let closed = img.close();
        let reopened = Image::open(&path, OpenMode::ReadWrite).map(drop);
        (closed, reopened, lockable(&path))
    });
    closed.unwrap();
    assert!(
        reopened.is_ok(),
        "image still locked after close: {reopened:?}"
    );
    assert!(locked.is_ok(), "{locked:?}");
    qemu_check(&path);
}

/// An open that fails after locking (not a qcow2 image) and a create that fails after
/// locking (bad cluster size) release the locks at once. Their files are opened before the
/// fork, so the child shares the descriptions the failed calls lock.
#[test]
fn a_failed_open_or_create_releases_its_locks_while_a_forked_child_holds_the_fd() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.qcow2");
    std::fs::write(&garbage, vec![0x5au8; 65536]).unwrap();
    let bad = dir.path().join("bad.qcow2");
    let rw = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
            .unwrap()
    };
    let (garbage_file, bad_file) = (rw(&garbage), rw(&bad));
    let bad_opts = CreateOptions {
        size: 1 << 20,
        cluster_size: 1000,
    };
    let wb = CacheMode::Writeback;
    let (opened, locked_open, created, locked_create) = while_forked(|| {
        let opened = Image::open_locked(garbage_file, &garbage, OpenMode::ReadWrite, wb);
        let locked_open = lockable(&garbage);
        let created = Image::create_locked(bad_file, &bad, &bad_opts, wb);
        let locked_create = lockable(&bad);
        (
            opened.map(drop),
            locked_open,
            created.map(drop),
            locked_create,
        )
    });
    assert!(opened.is_err(), "garbage opened as qcow2");
    assert!(created.is_err(), "cluster size 1000 accepted");
    assert!(
        locked_open.is_ok(),
        "a failed open left its locks: {locked_open:?}"
    );
    assert!(
        locked_create.is_ok(),
        "a failed create left its locks: {locked_create:?}"
    );
}

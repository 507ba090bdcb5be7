//! Regression test: closing an image must release its QEMU-compatible locks even while
//! a concurrently forked child (another thread's `Command::spawn`, between fork and
//! exec) still holds a copy of the image's file descriptor.
//!
//! The locks are open-file-description (OFD) locks; a forked child shares the open file
//! description until its exec closes the CLOEXEC descriptor, so merely closing our
//! descriptor left the image locked for that window. Under heavy load the window grew
//! long enough for the `qemu-img check` right after `close()` in `random_ops` to fail
//! with "Failed to get shared \"write\" lock" — a valid image reported as an error.

use super::*;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

#[test]
fn close_releases_locks_while_a_forked_child_holds_the_fd() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fork.qcow2");
    let img = Image::create(
        &path,
        &CreateOptions {
            size: 1 << 20,
            cluster_size: 65536,
        },
    )
    .unwrap();
    img.write_at(&[7u8; 4096], 0).unwrap();
    // `forked`: the child tells us it exists (and so holds the image's descriptor);
    // `release`: we tell it to go on to exec once the checks are done.
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
        // Nothing below may panic before the child is released, or the scope would wait
        // for it forever.
        let closed = img.close();
        let reopened = Image::open(&path, OpenMode::ReadWrite).map(drop);
        let check = Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(&path)
            .output();
        release_w.write_all(&[1]).unwrap();
        assert!(child.join().unwrap().unwrap().success());
        forked.unwrap();
        closed.unwrap();
        assert!(
            reopened.is_ok(),
            "image still locked after close: {reopened:?}"
        );
        let check = check.expect("qemu-img must be installed for these tests");
        let text = String::from_utf8_lossy(&check.stdout).to_string()
            + &String::from_utf8_lossy(&check.stderr);
        assert!(
            check.status.success() && text.contains("No errors were found"),
            "qemu-img check after close:\n{text}"
        );
    });
}

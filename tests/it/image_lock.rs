//! Locking against real QEMU processes: Island never writes an image QEMU has open, QEMU
//! refuses an image Island writes, and a force-share read-only open reads stable snapshots
//! of an image qemu-storage-daemon is writing (a snapshot taken live over QMP).

use crate::common::qemu::{
    output, output_unlocked, qemu_img, qemu_io, qemu_io_holding, run, Guard,
};
use crate::common::{create_image, read_snapshot, tempdir};
use island::image::{Image, ImageError, OpenMode};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `qemu-img info` without -U succeeds only when no one holds the write permission.
fn qemu_can_read_consistently(path: &Path) -> bool {
    output_unlocked(qemu_img(["info"]).arg(path))
        .status
        .success()
}

fn qemu_can_write(path: &Path) -> bool {
    output_unlocked(&mut qemu_io(path, &["write -q -P 0x33 1M 4k".into()]))
        .status
        .success()
}

fn assert_locked(r: Result<Image, ImageError>, what: &str) {
    match r {
        Err(ImageError::Locked { .. }) => {}
        Err(e) => panic!("{what}: wanted Locked, got {e:?}"),
        Ok(_) => panic!("{what}: opened despite the lock"),
    }
}

#[test]
fn qemu_writer_blocks_island() {
    let dir = tempdir();
    let (img, path) = create_image(dir.path(), "l.qcow2", 4 << 20, 65536);
    img.write_at(&[9; 4096], 0).unwrap();
    img.close().unwrap();
    {
        let _q = qemu_io_holding(&path, false);
        assert_locked(
            Image::open(&path, OpenMode::ReadWrite),
            "RW while qemu-io writes",
        );
        assert_locked(
            Image::open(&path, OpenMode::ReadOnly),
            "RO while qemu-io writes",
        );
        let shared = Image::open(&path, OpenMode::ReadOnlyShared).expect("force-share open");
        let mut b = [0u8; 4096];
        shared.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [9; 4096]);
    }
    // Released with the process: Island may write again.
    Image::open(&path, OpenMode::ReadWrite)
        .expect("open after qemu-io exited")
        .close()
        .unwrap();
}

#[test]
fn qemu_reader_blocks_island_writer_only() {
    let dir = tempdir();
    let (img, path) = create_image(dir.path(), "r.qcow2", 4 << 20, 65536);
    img.close().unwrap();
    let _q = qemu_io_holding(&path, true);
    assert_locked(
        Image::open(&path, OpenMode::ReadWrite),
        "RW while qemu-io -r reads",
    );
    Image::open(&path, OpenMode::ReadOnly)
        .expect("readers share")
        .close()
        .unwrap();
}

#[test]
fn island_writer_blocks_qemu() {
    let dir = tempdir();
    let (img, path) = create_image(dir.path(), "w.qcow2", 4 << 20, 65536);
    assert!(
        !qemu_can_read_consistently(&path),
        "qemu-img info (no -U) must fail while Island writes"
    );
    let out = output(qemu_img(["info"]).arg(&path));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lock"),
        "qemu names the lock"
    );
    assert!(
        !qemu_can_write(&path),
        "qemu-io must not write while Island writes"
    );
    run(qemu_img(["info", "-U"]).arg(&path));
    assert_locked(
        Image::open(&path, OpenMode::ReadWrite),
        "second Island writer",
    );
    assert_locked(
        Image::open(&path, OpenMode::ReadOnly),
        "Island reader vs Island writer",
    );
    Image::open(&path, OpenMode::ReadOnlyShared).expect("force-share alongside a writer");
    img.close().unwrap();
    assert!(qemu_can_read_consistently(&path), "lock released on close");
    assert!(qemu_can_write(&path));
}

#[test]
fn island_reader_blocks_qemu_writer() {
    let dir = tempdir();
    let (img, path) = create_image(dir.path(), "ro.qcow2", 4 << 20, 65536);
    img.close().unwrap();
    let ro = Image::open(&path, OpenMode::ReadOnly).unwrap();
    assert!(
        !qemu_can_write(&path),
        "qemu-io wrote under an Island consistent reader"
    );
    assert!(qemu_can_read_consistently(&path), "readers share");
    let second = Image::open(&path, OpenMode::ReadOnly).expect("two Island readers");
    drop(second);
    drop(ro);
    assert!(qemu_can_write(&path), "locks released on drop");

    let shared = Image::open(&path, OpenMode::ReadOnlyShared).unwrap();
    assert!(
        qemu_can_write(&path),
        "a force-share reader does not block writers"
    );
    drop(shared);
}

/// A minimal QMP client over the daemon's unix socket.
struct Qmp(BufReader<UnixStream>);

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let mut stream = None;
        wait_until("the QMP socket", || {
            stream = UnixStream::connect(path).ok();
            stream.is_some()
        });
        let mut q = Qmp(BufReader::new(stream.unwrap()));
        q.line(); // greeting
        q.execute(r#"{"execute":"qmp_capabilities"}"#);
        q
    }

    fn line(&mut self) -> serde_json::Value {
        let mut s = String::new();
        self.0.read_line(&mut s).expect("read QMP");
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("QMP sent {s:?}: {e}"))
    }

    fn execute(&mut self, cmd: &str) -> serde_json::Value {
        self.0.get_mut().write_all(cmd.as_bytes()).unwrap();
        self.0.get_mut().write_all(b"\n").unwrap();
        loop {
            let v = self.line();
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            assert!(v.get("error").is_none(), "QMP {cmd} failed: {v}");
        }
    }
}

fn nbd_write(sock: &Path, pattern: u8, off: u64, len: u64) {
    let url = format!("nbd+unix:///disk0?socket={}", sock.display());
    run(Command::new("qemu-io").args([
        "-f",
        "raw",
        &url,
        "-c",
        &format!("write -q -P 0x{pattern:02x} {off} {len}"),
    ]));
}

#[test]
fn live_snapshot_reads_back_while_daemon_writes() {
    let dir = tempdir();
    let (img, path) = create_image(dir.path(), "live.qcow2", 16 << 20, 65536);
    img.close().unwrap();
    let nbd: PathBuf = dir.path().join("nbd.sock");
    let qmp: PathBuf = dir.path().join("qmp.sock");
    let daemon = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={}",
            path.display()
        ))
        .args(["--blockdev", "driver=qcow2,node-name=disk0,file=file0"])
        .arg("--nbd-server")
        .arg(format!("addr.type=unix,addr.path={}", nbd.display()))
        .args([
            "--export",
            "type=nbd,id=exp0,node-name=disk0,name=disk0,writable=on",
        ])
        .arg("--chardev")
        .arg(format!(
            "socket,path={},server=on,wait=off,id=qmp0",
            qmp.display()
        ))
        .args(["--monitor", "chardev=qmp0"])
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-storage-daemon");
    let _daemon = Guard(daemon);
    let mut q = Qmp::connect(&qmp);

    nbd_write(&nbd, 0x11, 0, 3 << 20);
    q.execute(r#"{"execute":"blockdev-snapshot-internal-sync","arguments":{"device":"disk0","name":"live1"}}"#);
    nbd_write(&nbd, 0x22, 1 << 20, 4 << 20);

    assert_locked(
        Image::open(&path, OpenMode::ReadWrite),
        "RW while the daemon writes",
    );
    assert_locked(
        Image::open(&path, OpenMode::ReadOnly),
        "RO while the daemon writes",
    );
    let img = Image::open(&path, OpenMode::ReadOnlyShared).expect("force-share open");
    let names: Vec<String> = img.snapshots().into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["live1".to_string()]);
    let mut want = vec![0u8; 16 << 20];
    want[..3 << 20].fill(0x11);
    crate::common::assert_same(
        "live snapshot",
        &read_snapshot(&img, "live1", 16 << 20),
        &want,
    );

    // More writes after our open do not disturb the snapshot.
    nbd_write(&nbd, 0x44, 0, 8 << 20);
    crate::common::assert_same(
        "live snapshot after more writes",
        &read_snapshot(&img, "live1", 16 << 20),
        &want,
    );
}

//! Writes through damaged qcow2 metadata (issue 13, defects 3, 6, 10, 12): a truncated
//! image, an L2 entry onto the L1 table, a referenced cluster with refcount 0, a zeroed
//! refcount block, ENOSPC during snapshot creation, and non-volume backup sources. Each
//! must be refused without changing the image (beyond the corrupt bit a refused write
//! sets, as QEMU does), and `qemu-img check` must see no new damage.

use crate::common::cli::island;
use crate::common::qemu::{self, qemu_img, qemu_io, run};
use crate::common::tempdir;
use island::image::{Image, ImageError, ImageFile, OpenMode};
use std::io;
use std::path::Path;
use std::sync::Arc;

fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().unwrap())
}
fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}
const MASK: u64 = 0x00ff_ffff_ffff_fe00;
const CS: usize = 65536;

/// qemu-made 8 MiB image, 64 KiB clusters: 7 MiB of data, a snapshot, more writes.
fn make(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("good.qcow2");
    run(qemu_img(["create", "-q", "-f", "qcow2"]).arg(&p).arg("8M"));
    run(&mut qemu_io(&p, &["write -q -P 0x41 0 7M".into()]));
    run(qemu_img(["snapshot", "-c", "user"]).arg(&p));
    run(&mut qemu_io(&p, &["write -q -P 0x42 64k 64k".into()]));
    p
}

/// Host offset of the L2 table behind active L1 entry 0, and of guest cluster `g`'s data.
fn l2_and_data(b: &[u8], g: usize) -> (usize, usize) {
    let l1 = be64(b, 40) as usize;
    let l2 = (be64(b, l1) & MASK) as usize;
    (l2, (be64(b, l2 + 8 * g) & MASK) as usize)
}

/// The image bytes with the header's incompatible-feature field masked out.
fn without_features(b: &[u8]) -> Vec<u8> {
    let mut b = b.to_vec();
    b[72..80].fill(0);
    b
}

fn init_repo(dir: &Path) -> String {
    let repo = dir.join("repo").display().to_string();
    let out = island(&["init", &repo]);
    assert!(out.status.success(), "{out:?}");
    repo
}

/// Issue 13 defect 3: `head -c 1000000 good.qcow2 > tr.qcow2`; backup exited 0 uploading
/// zeros and grew the image (hiding the damage from qemu-img check). It must refuse and
/// leave the file as it was; export and changed refuse the same way.
#[test]
fn truncated_image_is_refused_and_left_alone() {
    let dir = tempdir();
    let good = dir.path().join("good.qcow2");
    run(qemu_img(["create", "-q", "-f", "qcow2"])
        .arg(&good)
        .arg("8M"));
    run(&mut qemu_io(&good, &["write -q -P 0x41 0 7M".into()]));
    let tr = dir.path().join("tr.qcow2");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&tr, &bytes[..1_000_000]).unwrap();
    let repo = init_repo(dir.path());
    let t = tr.display().to_string();
    let out = island(&["backup", "--repo", &repo, "--volume", "tr", &t, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "backup of a truncated image: {out:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("truncated"), "{err}");
    assert_eq!(
        std::fs::read(&tr).unwrap(),
        &bytes[..1_000_000],
        "image changed"
    );
    let raw = dir.path().join("out.raw").display().to_string();
    let out = island(&["image", "export", &t, &raw]);
    assert_eq!(out.status.code(), Some(1), "export: {out:?}");
    let img = Image::open(&tr, OpenMode::ReadWrite).unwrap();
    assert!(
        img.create_snapshot("x").is_err(),
        "snapshot of a truncated image"
    );
    let mut buf = vec![0u8; CS];
    assert!(
        img.read_at(&mut buf, 2 << 20).is_err(),
        "read past the end as zeros"
    );
    drop(img);
    assert_eq!(
        std::fs::read(&tr).unwrap(),
        &bytes[..1_000_000],
        "image changed"
    );
}

/// Issue 13 defect 6: an L2 entry pointing at the L1 table. `island image write` exited 0
/// and overwrote L1; it must refuse, leave L1 intact and set the corrupt bit (QEMU's
/// "Preventing invalid write on metadata").
#[test]
fn write_through_l2_entry_onto_l1_is_refused_and_marks_corrupt() {
    let dir = tempdir();
    let p = make(dir.path());
    let mut b = std::fs::read(&p).unwrap();
    let l1 = be64(&b, 40);
    let (l2, _) = l2_and_data(&b, 0);
    put64(&mut b, l2, l1 | 1 << 63);
    std::fs::write(&p, &b).unwrap();
    let input = dir.path().join("in.bin");
    std::fs::write(&input, vec![0x5au8; 4096]).unwrap();
    let out = island(&[
        "image",
        "write",
        &p.display().to_string(),
        "0",
        &input.display().to_string(),
    ]);
    assert!(!out.status.success(), "write through L2 onto L1 exited 0");
    let after = std::fs::read(&p).unwrap();
    assert_eq!(
        without_features(&after),
        without_features(&b),
        "metadata was overwritten"
    );
    assert_eq!(be64(&after, 72) & 2, 2, "corrupt bit not set");
    match Image::open(&p, OpenMode::ReadWrite) {
        Err(ImageError::Unsupported { .. }) => {}
        other => panic!(
            "a corrupt-marked image opened for writing: {:?}",
            other.err()
        ),
    }
    // Reading through it is refused too (it would return L1 bytes as guest data).
    let img = Image::open(&p, OpenMode::ReadOnly).unwrap();
    let mut buf = vec![0u8; CS];
    assert!(img.read_at(&mut buf, 0).is_err());
}

/// Issue 13 defect 6: guest cluster 0's data cluster with refcount 0. Backup allocated
/// its snapshot's L1 copy there (over the guest data) and uploaded that. It must refuse
/// before allocating, leaving the image as it was.
#[test]
fn referenced_cluster_with_refcount_zero_refuses_backup() {
    let dir = tempdir();
    let p = make(dir.path());
    let mut b = std::fs::read(&p).unwrap();
    let (_, data) = l2_and_data(&b, 0);
    // Guest cluster 0 is shared with the snapshot (refcount 2): zero it (16-bit
    // refcounts). It is the lowest cluster the allocator then sees as free.
    let rt = be64(&b, 48) as usize;
    let rb = (be64(&b, rt) & MASK) as usize;
    let at = rb + 2 * (data / CS);
    b[at..at + 2].fill(0);
    std::fs::write(&p, &b).unwrap();
    let before_read = qemu::convert_to_raw(&p, None, &dir.path().join("before.raw"));
    let repo = init_repo(dir.path());
    let out = island(&[
        "backup",
        "--repo",
        &repo,
        "--volume",
        "v",
        &p.display().to_string(),
    ]);
    assert!(
        !out.status.success(),
        "backup over a refcount-0 cluster exited 0"
    );
    let after = std::fs::read(&p).unwrap();
    assert_eq!(
        without_features(&after),
        without_features(&b),
        "image changed"
    );
    let after_read = qemu::convert_to_raw(&p, None, &dir.path().join("after.raw"));
    assert!(after_read == before_read, "guest data changed");
    let snaps = island(&["snapshots", "--repo", &repo, "--json"]);
    assert!(
        !String::from_utf8_lossy(&snaps.stdout).contains("\"v\""),
        "a snapshot was committed: {snaps:?}"
    );
}

/// Issue 13 defect 6: a zeroed refcount block. The snapshot table was written over it;
/// now a write needing a cluster is refused (the allocator finds metadata where the
/// refcounts say "free") and marks the image corrupt; a snapshot is refused untouched.
#[test]
fn zeroed_refcount_block_is_never_allocated_over() {
    let dir = tempdir();
    let p = make(dir.path());
    let mut b = std::fs::read(&p).unwrap();
    let rt = be64(&b, 48) as usize;
    let rb = (be64(&b, rt) & MASK) as usize;
    b[rb..rb + CS].fill(0);
    std::fs::write(&p, &b).unwrap();
    let img = Image::open(&p, OpenMode::ReadWrite).unwrap();
    assert!(
        img.create_snapshot("s").is_err(),
        "snapshot over zeroed refcounts"
    );
    drop(img);
    assert_eq!(
        std::fs::read(&p).unwrap(),
        b,
        "a refused snapshot changed the image"
    );
    let img = Image::open(&p, OpenMode::ReadWrite).unwrap();
    // Guest offset 7.5 MiB is unallocated: the write needs a new cluster.
    let err = img.write_at(&[7u8; 512], 15 << 19).unwrap_err();
    assert!(matches!(err, ImageError::Overlap { .. }), "{err:?}");
    drop(img);
    let after = std::fs::read(&p).unwrap();
    assert_eq!(
        without_features(&after),
        without_features(&b),
        "metadata overwritten"
    );
    assert_eq!(be64(&after, 72) & 2, 2, "corrupt bit not set");
}

/// A real file whose growth fails with ENOSPC past `limit` bytes (writes inside the file
/// still succeed, as on a full filesystem).
struct FullDisk {
    file: std::fs::File,
    limit: u64,
}

impl ImageFile for FullDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        ImageFile::read_at(&self.file, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > self.limit.max(ImageFile::len(&self.file)?) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        ImageFile::write_at(&self.file, buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        ImageFile::sync(&self.file)
    }
    fn len(&self) -> io::Result<u64> {
        ImageFile::len(&self.file)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > self.limit {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        ImageFile::set_len(&self.file, len)
    }
}

/// Issue 13 defect 10: ENOSPC while creating a snapshot leaked every cluster of the
/// active tree (their refcounts went up, no snapshot was written). For each amount of
/// room left, a failed creation leaves `qemu-img check` clean, a successful one too.
#[test]
fn enospc_during_snapshot_creation_leaks_nothing() {
    let dir = tempdir();
    let good = make(dir.path());
    let len = std::fs::metadata(&good).unwrap().len();
    let mut failed = 0;
    for room in 0..6u64 {
        let p = dir.path().join(format!("full{room}.qcow2"));
        std::fs::copy(&good, &p).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let disk = Arc::new(FullDisk {
            file,
            limit: len.next_multiple_of(CS as u64) + room * CS as u64,
        });
        let img = Image::open_on(disk, &p.display().to_string(), true).unwrap();
        let r = img.create_snapshot("s");
        failed += u32::from(r.is_err());
        drop(img);
        let c = qemu::check(&p);
        assert!(
            c.corruptions == 0 && c.leaks == 0 && c.check_errors == 0,
            "room {room} clusters ({}): qemu-img check {c:?}",
            if r.is_err() { "failed" } else { "succeeded" }
        );
        let names = qemu::snapshot_names(&p);
        assert_eq!(names.contains(&"s".to_string()), r.is_ok(), "room {room}");
    }
    assert!(failed >= 1, "no case ran out of space");
}

/// Issue 13 defect 12: a character device backed up as a 0-byte snapshot with exit 0, a
/// `/proc` file likewise, and a FIFO blocked the backup forever. All are refused at once.
#[test]
fn non_volume_sources_are_refused() {
    let dir = tempdir();
    let repo = init_repo(dir.path());
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for src in [
        "/dev/null",
        "/proc/self/status",
        &fifo.display().to_string(),
    ] {
        let mut cmd =
            crate::common::cli::island_cmd(&["backup", "--repo", &repo, "--volume", "x", src]);
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > std::time::Duration::from_secs(30) {
                child.kill().unwrap();
                panic!("backup of {src} hangs");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        assert_eq!(status.code(), Some(1), "backup of {src}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("FIFO")
                || err.contains("character device")
                || err.contains("pseudo filesystem"),
            "{src}: {err}"
        );
    }
}

/// The refcount of the cluster at host offset `host` (16-bit refcounts, first block).
fn refcount_at(b: &[u8], host: usize) -> usize {
    let rb = (be64(b, be64(b, 48) as usize) & MASK) as usize;
    rb + 2 * (host / CS)
}

/// Writes 4 KiB of `Z` at guest 0 with `island image write` and checks qemu's view: the
/// active layer has the write, snapshot "one" still reads `0x41`, and `qemu-img check`
/// counts no more corruptions than before.
fn write_keeps_snapshot(dir: &Path, p: &Path) {
    let before = qemu::check(p).corruptions;
    let input = dir.join("in.bin");
    std::fs::write(&input, vec![b'Z'; 4096]).unwrap();
    let out = island(&[
        "image",
        "write",
        &p.display().to_string(),
        "0",
        &input.display().to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let snap = qemu::convert_to_raw(p, Some("one"), &dir.join("snap.raw"));
    assert!(
        snap[..CS].iter().all(|&x| x == 0x41),
        "snapshot one changed by a write to the active layer"
    );
    let active = qemu::convert_to_raw(p, None, &dir.join("active.raw"));
    assert!(active[..4096].iter().all(|&x| x == b'Z'), "write lost");
    assert!(
        active[4096..CS].iter().all(|&x| x == 0x41),
        "rest of cluster lost"
    );
    let after = qemu::check(p).corruptions;
    assert!(after <= before, "corruptions {before} -> {after}");
}

/// Issue 13, oracle finding snaps-m8: the L2 table shared with a snapshot (L1 entry
/// COPIED clear) whose refcount reads 1 instead of 2. Island took the refcount's word,
/// wrote the shared table in place and so changed the snapshot; QEMU (and now Island)
/// treats a clear COPIED as "shared" and copies the table.
#[test]
fn copied_clear_l2_table_with_refcount_one_is_copied() {
    let dir = tempdir();
    let p = dir.path().join("img.qcow2");
    run(qemu_img(["create", "-q", "-f", "qcow2"]).arg(&p).arg("1M"));
    run(&mut qemu_io(&p, &["write -q -P 0x41 0 64k".into()]));
    run(qemu_img(["snapshot", "-c", "one"]).arg(&p));
    let mut b = std::fs::read(&p).unwrap();
    let (l2, _) = l2_and_data(&b, 0);
    assert_eq!(
        be64(&b, be64(&b, 40) as usize) >> 63,
        0,
        "L1 entry has COPIED"
    );
    let at = refcount_at(&b, l2);
    assert_eq!(&b[at..at + 2], &[0, 2]);
    b[at + 1] = 1;
    std::fs::write(&p, &b).unwrap();
    write_keeps_snapshot(dir.path(), &p);
}

/// The same for a data cluster: the active L2 table is the layer's own (COPIED), the
/// entry of guest cluster 0 is shared with the snapshot (COPIED clear) but its refcount
/// reads 1. Island wrote it in place; it must copy it.
#[test]
fn copied_clear_data_cluster_with_refcount_one_is_copied() {
    let dir = tempdir();
    let p = dir.path().join("img.qcow2");
    run(qemu_img(["create", "-q", "-f", "qcow2"]).arg(&p).arg("1M"));
    run(&mut qemu_io(&p, &["write -q -P 0x41 0 64k".into()]));
    run(qemu_img(["snapshot", "-c", "one"]).arg(&p));
    run(&mut qemu_io(&p, &["write -q -P 0x42 64k 64k".into()]));
    let mut b = std::fs::read(&p).unwrap();
    let (l2, data) = l2_and_data(&b, 0);
    assert_eq!(be64(&b, l2) >> 63, 0, "L2 entry has COPIED");
    assert_eq!(
        be64(&b, be64(&b, 40) as usize) >> 63,
        1,
        "L1 entry lacks COPIED"
    );
    let at = refcount_at(&b, data);
    assert_eq!(&b[at..at + 2], &[0, 2]);
    b[at + 1] = 1;
    std::fs::write(&p, &b).unwrap();
    write_keeps_snapshot(dir.path(), &p);
}

/// Oracle finding snaps-m8: in the L2 table shared with a snapshot, a damaged entry
/// points at the L1 table with COPIED set (the L1 table's refcount reads 1). Copying the
/// table before a write cleared that COPIED bit, so `qemu-img check` counted one more
/// corruption (COPIED clear, refcount 1) than before the write. QEMU copies the table as
/// it is; Island keeps a copied entry's COPIED where the refcount reads 1.
#[test]
fn copying_a_shared_l2_table_keeps_copied_exact() {
    let dir = tempdir();
    let p = dir.path().join("img.qcow2");
    run(qemu_img(["create", "-q", "-f", "qcow2"]).arg(&p).arg("1M"));
    run(&mut qemu_io(&p, &["write -q -P 0x41 0 64k".into()]));
    run(qemu_img(["snapshot", "-c", "one"]).arg(&p));
    let mut b = std::fs::read(&p).unwrap();
    let (l2, _) = l2_and_data(&b, 0);
    let l1 = be64(&b, 40);
    put64(&mut b, l2 + 8 * 10, l1 | 1 << 63);
    std::fs::write(&p, &b).unwrap();
    write_keeps_snapshot(dir.path(), &p);
}

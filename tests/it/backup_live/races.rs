//! Races with a running QEMU: a snapshot deleted (and its clusters reused) while Island
//! reads it, and shared opens while QEMU rewrites the active metadata.

use super::Vm;
use crate::backup_qcow2::{CLUSTER, MIB};
use crate::common::qemu::live::{Qmp, StorageDaemon};
use island::backup::{
    backup, BackupOptions, BaseIdentity, BlockSource, ImageSnapshotSource, SourceRange,
};
use island::image::{Image, OpenMode};
use island::repo::Repository;
use island::store::FsStore;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Reads snapshot S1 through Island, but before the first read has QEMU delete S1 and
/// write new data that reuses the clusters S1 owned alone: every read after that may
/// return another snapshot's bytes. Counts reads that differ from S1's real contents.
struct DeletedMidRead {
    inner: ImageSnapshotSource,
    qmp: Mutex<Qmp>,
    daemon_writes: Box<dyn Fn() + Send + Sync>,
    fired: AtomicBool,
    s1: Vec<u8>,
    wrong_reads: AtomicU64,
}

impl BlockSource for DeletedMidRead {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if !self.fired.swap(true, Ordering::SeqCst) {
            let mut qmp = self.qmp.lock().expect("qmp lock");
            qmp.delete_snapshot("S1").expect("QMP deletes S1");
            (self.daemon_writes)();
        }
        self.inner.read_at(buf, offset)?;
        let want = &self.s1[offset as usize..offset as usize + buf.len()];
        if buf != want {
            self.wrong_reads.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn changed_since(&self, base: &BaseIdentity) -> Option<Vec<SourceRange>> {
        self.inner.changed_since(base)
    }

    fn identity(&self) -> Option<BaseIdentity> {
        self.inner.identity()
    }

    fn allocated(&self) -> Option<Vec<SourceRange>> {
        self.inner.allocated()
    }

    fn verify_unchanged(&self) -> island::Result<()> {
        self.inner.verify_unchanged()
    }
}

/// The snapshot is deleted over QMP after Island opened it and before it read it, and
/// QEMU reuses its clusters: Island really reads wrong data (counted), and the backup
/// must fail with the re-verification error and commit nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_deleted_during_the_read_is_not_committed() {
    let mut vm = Vm::new(64 * MIB, CLUSTER);
    let mut d = StorageDaemon::start(&vm.img, vm.dir.path());
    vm.write(&d, &[(0x11, 0, 8 * MIB)]);
    let mut qmp = d.take_qmp();
    qmp.snapshot("S1");
    let s1 = vm.model.clone();
    // Copy-on-write: the active layer gets new clusters, S1 alone owns the old ones.
    vm.write(&d, &[(0x22, 0, 8 * MIB)]);

    let image = Arc::new(Image::open(&vm.img, OpenMode::ReadOnlyShared).expect("shared open"));
    let inner = ImageSnapshotSource::new(image, "S1").expect("S1 exists");
    let uri = d.uri();
    let source = Arc::new(DeletedMidRead {
        inner,
        qmp: Mutex::new(qmp),
        daemon_writes: Box::new(move || {
            let out = crate::common::qemu::run(
                std::process::Command::new("qemu-io")
                    .args(["-f", "raw", "-c", "write -P 0x33 32M 8M"])
                    .arg(&uri),
            );
            assert!(!String::from_utf8_lossy(&out.stdout).contains("failed"));
        }),
        fired: AtomicBool::new(false),
        s1,
        wrong_reads: AtomicU64::new(0),
    });
    let store = Arc::new(FsStore::new(&vm.repo).expect("open the repository store"));
    let repo = Repository::open(store).await.expect("open the repository");
    let opts = BackupOptions {
        volume: "vm".into(),
        ..BackupOptions::default()
    };
    let err = backup(&repo, source.clone(), &opts)
        .await
        .expect_err("a backup of a snapshot deleted mid-read must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("\"S1\"")
            && msg.contains("deleted or replaced")
            && msg.contains("nothing was committed"),
        "{msg}"
    );
    assert!(
        source.wrong_reads.load(Ordering::SeqCst) > 0,
        "the race did not happen: every read still returned S1's data"
    );
    assert!(repo.snapshots(Some("vm")).await.expect("list").is_empty());
    drop(source);
    d.stop();
    crate::common::qemu::assert_check_clean(&vm.img);
}

/// The engine bug: a shared open of an image QEMU is allocating L2 tables in could fail
/// with "corrupt L1 entry … invalid L2 table pointer" (an L1 entry written after the
/// file length was taken). With 4 KiB clusters every 2 MiB stride allocates a new L2
/// table and L1 entry; opens in a loop meanwhile must all succeed and read the snapshot
/// exactly, every time.
#[test]
fn shared_opens_survive_qemu_allocating_metadata() {
    let cluster = 4096u64;
    let size = 2048 * MIB;
    let mut vm = Vm::new(size, cluster);
    let mut d = StorageDaemon::start(&vm.img, vm.dir.path());
    vm.write(&d, &[(0x61, 0, 256 << 10)]);
    d.qmp().snapshot("S0");
    let want = vm.model[..256 << 10].to_vec();
    let mut writer = d.writer();
    for k in 1..1024u64 {
        writer.write(0x70, k * 2 * MIB + 8192, 4096);
    }
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let finisher = std::thread::spawn(move || {
        writer.finish();
        flag.store(true, Ordering::SeqCst);
    });
    let (mut opens, mut failures) = (0u64, Vec::new());
    while !done.load(Ordering::SeqCst) || opens < 50 {
        match Image::open(&vm.img, OpenMode::ReadOnlyShared) {
            Ok(img) => {
                let mut buf = vec![0u8; want.len()];
                img.read_snapshot_at("S0", &mut buf, 0)
                    .unwrap_or_else(|e| panic!("open {opens}: reading S0 failed: {e}"));
                assert!(buf == want, "open {opens}: S0 read back wrong data");
            }
            Err(e) => failures.push(e.to_string()),
        }
        opens += 1;
    }
    finisher.join().expect("writer thread");
    eprintln!("{opens} shared opens while qemu allocated 1023 L2 tables");
    assert!(
        failures.is_empty(),
        "{} of {opens} shared opens failed, first: {}",
        failures.len(),
        failures[0]
    );
    d.stop();
    crate::common::qemu::assert_check_clean(&vm.img);
}

/// The image file, with a writer that runs once right after the open's first `stat`:
/// QEMU acting between the moment Island takes the file length and the moment it reads
/// the L1 table, deterministically.
struct WriterAfterStat {
    file: std::fs::File,
    hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl island::image::ImageFile for WriterAfterStat {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
    fn write_at(&self, _buf: &[u8], offset: u64) -> std::io::Result<()> {
        Err(std::io::Error::other(format!(
            "unexpected write at {offset}"
        )))
    }
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn len(&self) -> std::io::Result<u64> {
        let len = self.file.metadata()?.len();
        if let Some(hook) = self.hook.lock().expect("hook lock").take() {
            hook();
        }
        Ok(len)
    }
    fn set_len(&self, _len: u64) -> std::io::Result<()> {
        Err(std::io::Error::other("unexpected truncate"))
    }
}

/// The reported failure, reproduced deterministically: after the open took the file
/// length, qemu-io allocates a new L2 table (a write 1 GiB in: new L1 entry pointing past
/// that length). A shared open used to fail with "corrupt L1 entry … invalid L2 table
/// pointer"; it must succeed, read the snapshot exactly, and read the new data too.
#[test]
fn shared_open_tolerates_an_l1_entry_written_after_the_stat() {
    let mut vm = Vm::new(4096 * MIB, CLUSTER);
    let img = vm.img.clone();
    crate::common::qemu::run(&mut crate::common::qemu::qemu_io(
        &img,
        &["write -q -P 0x51 0 1M".to_string()],
    ));
    vm.model[..MIB as usize].fill(0x51);
    crate::common::qemu::run(crate::common::qemu::qemu_img(["snapshot", "-c", "S0"]).arg(&img));
    let hook_img = img.clone();
    let file = WriterAfterStat {
        file: std::fs::File::open(&img).expect("open the image"),
        hook: Mutex::new(Some(Box::new(move || {
            crate::common::qemu::run(&mut crate::common::qemu::qemu_io(
                &hook_img,
                &["write -q -P 0x52 1G 64k".to_string()],
            ));
        }))),
    };
    let image = Image::open_shared_on(Arc::new(file), "vm.qcow2")
        .expect("a shared open while qemu allocated an L2 table");
    let mut buf = vec![0u8; MIB as usize];
    image.read_snapshot_at("S0", &mut buf, 0).expect("read S0");
    assert!(buf == vm.model[..MIB as usize], "S0 read back wrong data");
    let mut new = vec![0u8; CLUSTER as usize];
    image
        .read_at(&mut new, 1 << 30)
        .expect("read the new cluster");
    assert!(
        new.iter().all(|b| *b == 0x52),
        "the new data is not visible"
    );
}

/// Through the CLI, timing-based: QEMU deletes the snapshot at some point during
/// `island backup --image-snapshot` and reuses its clusters. Whatever the timing, a
/// backup that succeeds restores exactly the snapshot's contents, and one that fails
/// commits nothing.
#[test]
fn cli_backup_racing_a_qmp_delete_never_commits_wrong_data() {
    let mut vm = Vm::new(256 * MIB, CLUSTER);
    let mut d = StorageDaemon::start(&vm.img, vm.dir.path());
    let img_s = vm.img.display().to_string();
    let (mut committed, mut refused) = (0, 0);
    for (round, delay_ms) in [0u64, 150, 400, 900].into_iter().enumerate() {
        let p = 0x40 + round as u8;
        vm.write(&d, &[(p, 0, 96 * MIB)]);
        let snap = format!("R{round}");
        d.qmp().snapshot(&snap);
        let at_snap = vm.model.clone();
        // Copy-on-write so the snapshot alone owns its clusters, then back it up.
        vm.write(&d, &[(p + 0x10, 0, 96 * MIB)]);
        let before = vm.snapshot_count();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_island"))
            .args(["backup", "--repo", &vm.repo, "--volume", "vm", &img_s])
            .args(["--image-snapshot", &snap, "--json"])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn island backup");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        d.qmp().delete_snapshot(&snap).expect("QMP delete");
        vm.write(&d, &[(p + 0x20, 128 * MIB, 96 * MIB)]);
        let out = child.wait_with_output().expect("wait for island backup");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            committed += 1;
            let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("backup JSON");
            let id = crate::backup_qcow2::str_field(&r, "id");
            crate::common::assert_same(&format!("round {round}"), &vm.restore(&id), &at_snap);
            assert_eq!(vm.snapshot_count(), before + 1);
        } else {
            refused += 1;
            let last = stderr.lines().last().unwrap_or_default();
            eprintln!("round {round} ({delay_ms} ms): refused: {last}");
            assert_eq!(out.status.code(), Some(1), "round {round}: {stderr}");
            assert!(
                stderr.contains("deleted or replaced") || stderr.contains(&format!("{snap:?}")),
                "round {round}: unexpected failure: {stderr}"
            );
            assert_eq!(vm.snapshot_count(), before, "round {round}: {stderr}");
        }
    }
    eprintln!("{committed} backups finished before the delete, {refused} refused");
    assert!(refused > 0, "no round raced the delete");
    d.stop();
    crate::common::qemu::assert_check_clean(&vm.img);
}

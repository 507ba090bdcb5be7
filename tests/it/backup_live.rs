//! Live backup: a qcow2 image held read-write by `qemu-storage-daemon` (standing in for
//! a running VM: guest writes over NBD, snapshots over QMP), backed up by Island from
//! snapshots QEMU takes, while QEMU keeps writing.

mod races;

use crate::backup_qcow2::{
    fails, file_hash, ok, ok_json, str_field, u64_field, World, CLUSTER, MIB,
};
use crate::common::assert_same;
use crate::common::qemu::live::StorageDaemon;
use crate::common::qemu::{self, convert_to_raw, snapshot_names};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A qemu-img-created image, a repository and a raw model of the guest's contents.
pub(crate) struct Vm {
    pub dir: tempfile::TempDir,
    pub img: PathBuf,
    pub repo: String,
    pub model: Vec<u8>,
}

impl Vm {
    /// The same start as the offline tests' [`World`]: a qemu-img image and a repository.
    pub fn new(size: u64, cluster: u64) -> Vm {
        let World {
            dir,
            img,
            repo,
            model,
            ..
        } = World::new(size, cluster);
        Vm {
            dir,
            img,
            repo,
            model,
        }
    }

    /// Guest writes through the daemon, mirrored in the model.
    pub fn write(&mut self, d: &StorageDaemon, writes: &[(u8, u64, u64)]) {
        d.write(writes);
        for &(p, off, len) in writes {
            self.model[off as usize..(off + len) as usize].fill(p);
        }
    }

    fn backup_snapshot(&self, snapshot: &str) -> serde_json::Value {
        let img = self.img.display().to_string();
        ok_json(&[
            "backup",
            "--repo",
            &self.repo,
            "--volume",
            "vm",
            &img,
            "--image-snapshot",
            snapshot,
            "--json",
        ])
    }

    fn restore(&self, id: &str) -> Vec<u8> {
        let out = self.dir.path().join(format!("{id}.raw"));
        let out_s = out.display().to_string();
        ok(&[
            "restore",
            "--repo",
            &self.repo,
            "--volume",
            "vm",
            "--snapshot",
            id,
            &out_s,
        ]);
        std::fs::read(&out).expect("read the restored file")
    }

    fn snapshot_count(&self) -> usize {
        let list = ok_json(&[
            "snapshots",
            "--repo",
            &self.repo,
            "--volume",
            "vm",
            "--json",
        ]);
        list.as_array().expect("snapshots is a list").len()
    }
}

/// Keeps a qemu-io writing through NBD over `region` (cycling patterns, one cluster per
/// write) until dropped or finished; the writes target clusters the test's snapshot
/// does not depend on, so they change what QEMU's metadata looks like while Island reads.
struct BackgroundWriter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl BackgroundWriter {
    fn start(d: &StorageDaemon, region: (u64, u64)) -> BackgroundWriter {
        let mut writer = d.writer();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            let clusters = (region.1 - region.0) / CLUSTER;
            while !flag.load(Ordering::Relaxed) {
                let off = region.0 + (n % clusters) * CLUSTER;
                writer.write((n % 250) as u8 + 1, off, CLUSTER);
                n += 1;
                if n % 64 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
            writer.finish();
            n
        });
        BackgroundWriter {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop and wait until every queued write is done; returns how many were sent.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("writer thread")
            .join()
            .expect("writer thread panicked")
    }
}

impl Drop for BackgroundWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Two backup cycles of a running VM: QMP snapshot, `--image-snapshot` backup while a
/// writer keeps going, exact restore of the snapshot-time contents; the second cycle is
/// an increment that reads exactly what changed; the old snapshot is then deleted over
/// QMP. Island writes nothing to the image: after the daemon quits, qemu-img check is
/// clean and only QEMU's snapshot remains.
#[test]
fn live_cycle_backs_up_qemu_snapshots_while_the_guest_writes() {
    let size = 64 * MIB;
    let mut vm = Vm::new(size, CLUSTER);
    let mut d = StorageDaemon::start(&vm.img, vm.dir.path());
    vm.write(
        &d,
        &[
            (0x11, 0, 6 * MIB),
            (0x12, 20 * MIB, 5 * CLUSTER),
            (0x13, 63 * MIB, MIB),
        ],
    );
    d.qmp().snapshot("S1");
    let at_s1 = vm.model.clone();

    let busy = (40 * MIB, 42 * MIB);
    let writer = BackgroundWriter::start(&d, busy);
    let r1 = vm.backup_snapshot("S1");
    let sent = writer.finish();
    assert!(sent > 0, "the background writer never ran");
    eprintln!("cycle 1: {r1} ({sent} writes in flight)");
    assert_eq!(u64_field(&r1, "bytes_read"), 6 * MIB + 5 * CLUSTER + MIB);
    let id1 = str_field(&r1, "id");
    assert_same("restore of S1", &vm.restore(&id1), &at_s1);

    // The busy region ends in one known state; plus scattered guest writes.
    vm.write(&d, &[(0x5a, busy.0, busy.1 - busy.0)]);
    let scattered: Vec<(u8, u64, u64)> = [3u64, 90, 150, 333, 500, 777, 1000]
        .iter()
        .enumerate()
        .map(|(i, c)| (0x20 + i as u8, c * CLUSTER, CLUSTER))
        .collect();
    vm.write(&d, &scattered);
    d.qmp().snapshot("S2");
    let writer = BackgroundWriter::start(&d, (44 * MIB, 46 * MIB));
    let r2 = vm.backup_snapshot("S2");
    writer.finish();
    eprintln!("cycle 2: {r2}");
    assert_eq!(r2["incremental"], true, "{r2}");
    let changed = (busy.1 - busy.0) + scattered.len() as u64 * CLUSTER;
    assert_eq!(u64_field(&r2, "bytes_read"), changed, "{r2}");
    d.qmp()
        .delete_snapshot("S1")
        .expect("QMP deletes the old snapshot");
    assert_same(
        "restore of S2",
        &vm.restore(&str_field(&r2, "id")),
        &vm.model,
    );
    assert_same("restore of S1 again", &vm.restore(&id1), &at_s1);
    d.stop();
    qemu::assert_check_clean(&vm.img);
    assert_eq!(snapshot_names(&vm.img), vec!["S2".to_string()]);
    let s2 = convert_to_raw(&vm.img, Some("S2"), &vm.dir.path().join("s2.raw"));
    assert_same("qemu's S2", &s2, &vm.model);
}

/// Plain `island backup` wants to write the image (its own snapshot): refused with a
/// lock error while the daemon holds the image, which is left untouched.
#[test]
fn read_write_backup_of_a_running_image_is_refused() {
    let mut vm = Vm::new(16 * MIB, CLUSTER);
    let d = StorageDaemon::start(&vm.img, vm.dir.path());
    vm.write(&d, &[(0x42, 0, MIB)]);
    let hash = file_hash(&vm.img);
    let img = vm.img.display().to_string();
    let err = fails(&["backup", "--repo", &vm.repo, "--volume", "vm", &img]);
    assert!(err.contains("lock") || err.contains("permission"), "{err}");
    assert!(err.contains(&img), "the error names the image: {err}");
    assert_eq!(
        file_hash(&vm.img),
        hash,
        "the refused backup changed the image"
    );
    assert_eq!(vm.snapshot_count(), 0);
    d.stop();
    qemu::assert_check_clean(&vm.img);
    assert!(snapshot_names(&vm.img).is_empty());
}

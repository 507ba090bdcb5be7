//! The head of a volume under clock skew between hosts: snapshot ids sort by the clock of
//! the host that took them, so a host whose clock runs ahead leaves an id that sorts after
//! everything taken later. Attach, the next upload's parent, snapshot, revert, a deleted
//! head and a record without a head must all follow the volume's own history (catalog
//! head, then parent links), never the newest id.

use super::*;
use crate::backup::{backup_image_snapshot, BackupOptions};
use crate::image::{Image, OpenMode};
use crate::repo::InitOptions;
use crate::store::MemoryStore;

/// The id host A's clock, 73 years fast, gives its upload.
const SKEWED: &str = "20991231T235959.000000Z-00000000000000aa";

fn op(s: &Service) -> OpHandle {
    s.operations()
        .begin(OpSpec {
            kind: "attach".into(),
            user: "alice".into(),
            stage_count: 3,
            ..OpSpec::default()
        })
        .unwrap()
}

fn write(path: &str, offset: u64, data: &[u8]) {
    let img = Image::open(path, OpenMode::ReadWrite).unwrap();
    img.write_at(data, offset).unwrap();
    img.close().unwrap();
}

fn read(path: &str, offset: u64, len: usize) -> Vec<u8> {
    let img = Image::open(path, OpenMode::ReadOnly).unwrap();
    let mut buf = vec![0u8; len];
    img.read_at(&mut buf, offset).unwrap();
    buf
}

/// Host A detaches vm `vm` as `Service::detach_vm` does (internal snapshot, upload,
/// release recording the head, drop the image), but its clock names the snapshot
/// [`SKEWED`].
async fn skewed_detach(a: &Service, uuid: &str, path: &str, vm: &str) -> String {
    {
        let img = Image::open(path, OpenMode::ReadWrite).unwrap();
        img.create_snapshot("island-skewed").unwrap();
        img.close().unwrap();
    }
    let opts = BackupOptions {
        volume: uuid.to_string(),
        id: Some(SKEWED.to_string()),
        ..BackupOptions::default()
    };
    let r = backup_image_snapshot(&a.repo, std::path::Path::new(path), "island-skewed", &opts)
        .await
        .unwrap();
    catalog::update(a.store(), uuid, |v| {
        v.attachments.retain(|x| x.vm_id != vm);
        v.head = Some(r.id.clone());
        Ok(())
    })
    .await
    .unwrap();
    std::fs::remove_file(path).unwrap();
    r.id
}

/// A snapshot of `data` whose parent is `parent` but that no catalog change records: what
/// a detach killed between its upload and its release leaves (a fork in the chain).
async fn orphan(repo: &Repository, uuid: &str, parent: &str, data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orphan.qcow2");
    let opts = crate::image::CreateOptions {
        size: MIN_VOLUME_SIZE,
        cluster_size: 65536,
    };
    Image::create(&path, &opts).unwrap().close().unwrap();
    let p = path.display().to_string();
    write(&p, 0, data);
    {
        let img = Image::open(&path, OpenMode::ReadWrite).unwrap();
        img.create_snapshot("island-orphan").unwrap();
        img.close().unwrap();
    }
    let opts = BackupOptions {
        volume: uuid.to_string(),
        parent: Some(parent.to_string()),
        ..BackupOptions::default()
    };
    backup_image_snapshot(repo, &path, "island-orphan", &opts)
        .await
        .unwrap()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_follows_the_volume_history_not_the_newest_id() {
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new_unique().unwrap());
    let repo = Repository::init(store, &InitOptions::default())
        .await
        .unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = Service::new(repo.clone(), ServiceConfig::new(dirs[0].path(), "host-a")).unwrap();
    let b = Service::new(repo.clone(), ServiceConfig::new(dirs[1].path(), "host-b")).unwrap();
    let req = CreateVolume {
        size: MIN_VOLUME_SIZE,
        tag: "skew".into(),
        visibility: Visibility::Private,
        user_limit: None,
        source: None,
    };
    let uuid = a.create_volume("alice", &req).await.unwrap().uuid;
    let (one, two, three) = (vec![1u8; 65536], vec![2u8; 65536], vec![3u8; 65536]);

    // Host A (clock fast) writes `one` and detaches: snapshot SKEWED.
    let att = a
        .attach("alice", &uuid, "n", "1", Plug::AtStart, &op(&a))
        .await
        .unwrap();
    write(&att.path, 0, &one);
    let s1 = skewed_detach(&a, &uuid, &att.path, "1").await;

    // Host B (clock right) restores it, overwrites with `two`, detaches: s2 < s1 by id.
    let att = b
        .attach("alice", &uuid, "n", "2", Plug::AtStart, &op(&b))
        .await
        .unwrap();
    assert_eq!(att.from_snapshot.as_deref(), Some(s1.as_str()));
    assert_eq!(read(&att.path, 0, one.len()), one);
    write(&att.path, 0, &two);
    b.detach_vm("alice", "n", "2", &op(&b)).await.unwrap();
    let newest_id = repo.latest(&uuid).await.unwrap().unwrap();
    assert_eq!(newest_id.id, s1, "the skewed id sorts last");
    let v = a.get_volume("alice", &uuid).await.unwrap();
    let s2 = v.head.clone().expect("detach records the head");
    assert!(s2 < s1, "{s2} must sort before {s1}");
    let m2 = repo.snapshot(&uuid, &s2).await.unwrap();
    assert_eq!(m2.parent.as_deref(), Some(s1.as_str()), "parent = head");

    // Attach again on A: the head (s2, `two`), not the newest id (s1, `one`).
    let att = a
        .attach("alice", &uuid, "n", "3", Plug::AtStart, &op(&a))
        .await
        .unwrap();
    assert_eq!(att.from_snapshot.as_deref(), Some(s2.as_str()));
    assert_eq!(read(&att.path, 0, two.len()), two, "stale data restored");

    // A snapshot while attached moves the head; so does the detach after it.
    write(&att.path, 0, &three);
    let s3 = a.snapshot("alice", &uuid, &op(&a)).await.unwrap();
    assert_eq!(s3.parent.as_deref(), Some(s2.as_str()));
    let v = a.get_volume("alice", &uuid).await.unwrap();
    assert_eq!(v.head.as_deref(), Some(s3.id.as_str()));
    write(&att.path, 65536, &three);
    a.detach_vm("alice", "n", "3", &op(&a)).await.unwrap();
    let v = a.get_volume("alice", &uuid).await.unwrap();
    let s4 = v.head.clone().expect("head");
    assert_ne!(s4, s3.id);
    assert_eq!(
        repo.snapshot(&uuid, &s4).await.unwrap().parent.as_deref(),
        Some(s3.id.as_str())
    );

    // A record without a head (written before the field, or by a copy): the parent
    // chain's tip.
    let mut cleared = catalog::update(a.store(), &uuid, |v| {
        v.head = None;
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(a.head(&cleared).await.unwrap().unwrap().id, s4);

    // A fork: an orphan upload from s2, newer than s4. The recorded head wins; without
    // one, the newest tip is the last resort.
    let x = orphan(&repo, &uuid, &s2, &three).await;
    assert!(x > s4);
    let v = a.get_volume("alice", &uuid).await.unwrap();
    assert_eq!(v.head, None);
    cleared.head = Some(s4.clone());
    assert_eq!(a.head(&cleared).await.unwrap().unwrap().id, s4);
    cleared.head = None;
    assert_eq!(a.head(&cleared).await.unwrap().unwrap().id, x, "newest tip");

    // A deleted head: its nearest live ancestor by parent links (s3, then with s3 gone
    // too, s2), not the other tip.
    cleared.head = Some(s4.clone());
    a.delete_snapshot("alice", &uuid, &s4).await.unwrap();
    assert_eq!(a.head(&cleared).await.unwrap().unwrap().id, s3.id);
    a.delete_snapshot("alice", &uuid, &s3.id).await.unwrap();
    assert_eq!(a.head(&cleared).await.unwrap().unwrap().id, s2);
    a.delete_snapshot("alice", &uuid, &x).await.unwrap();

    // Revert to s1 records the revert's snapshot as head; attach restores `one`.
    let v = a.revert("alice", &uuid, &s1).await.unwrap();
    let r = v.last_revert.expect("revert").snapshot;
    assert_eq!(v.head.as_deref(), Some(r.as_str()));
    assert!(r < s1);
    let att = b
        .attach("alice", &uuid, "n", "4", Plug::AtStart, &op(&b))
        .await
        .unwrap();
    assert_eq!(att.from_snapshot.as_deref(), Some(r.as_str()));
    assert_eq!(read(&att.path, 0, one.len()), one);
}

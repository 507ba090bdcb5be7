//! The catalog's claim protocol under contention: two services ("hosts") sharing one
//! store race to attach one volume; the create-if-absent generations must let exactly
//! `user_limit` of them win, exactly one of them read-write, and lose no update. Also:
//! catalog compaction racing a writer and a reader, and a copy resumed after a restart.

use super::*;
use crate::repo::InitOptions;
use crate::store::MemoryStore;

async fn two_hosts() -> (Arc<Service>, Arc<Service>, Vec<tempfile::TempDir>) {
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new_unique().unwrap());
    let repo = Repository::init(store.clone(), &InitOptions::default())
        .await
        .unwrap();
    let dirs = vec![tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = Service::new(repo.clone(), ServiceConfig::new(dirs[0].path(), "host-a")).unwrap();
    let b = Service::new(repo, ServiceConfig::new(dirs[1].path(), "host-b")).unwrap();
    (Arc::new(a), Arc::new(b), dirs)
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_attaches_respect_the_user_limit_and_one_writer() {
    let (a, b, _dirs) = two_hosts().await;
    let v = a
        .create_volume(
            "alice",
            &CreateVolume {
                size: MIN_VOLUME_SIZE,
                tag: "race".into(),
                visibility: Visibility::Private,
                user_limit: Some(3),
                source: None,
            },
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let uuid = v.uuid.clone();
        tasks.push(tokio::spawn(async move {
            let h = op(&s);
            s.attach("alice", &uuid, "node", &format!("vm{i}"), Plug::AtStart, &h)
                .await
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(att) => won.push(att),
            Err(ServiceError::Conflict(m)) => assert!(m.contains("user limit"), "{m}"),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(won.len(), 3, "exactly the user limit wins");
    let writers = won
        .iter()
        .filter(|a| a.mode == AccessMode::ReadWrite)
        .count();
    assert_eq!(writers, 1, "exactly one read-write attachment");
    let now = b.get_volume("alice", &v.uuid).await.unwrap();
    assert_eq!(now.attachments.len(), 3);
    assert_eq!(now.remaining(), 0);
    for att in &won {
        assert!(std::path::Path::new(&att.path).exists(), "{}", att.path);
    }
    // Bob does not see alice's private volume, even by id.
    assert!(matches!(
        a.get_volume("bob", &v.uuid).await,
        Err(ServiceError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_lose_nothing_and_corruption_is_an_error() {
    let (a, b, _dirs) = two_hosts().await;
    let v = a
        .create_volume(
            "alice",
            &CreateVolume {
                size: MIN_VOLUME_SIZE,
                tag: String::new(),
                visibility: Visibility::Public,
                user_limit: None,
                source: None,
            },
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let uuid = v.uuid.clone();
        tasks.push(tokio::spawn(async move {
            catalog::update(s.store(), &uuid, |v| {
                v.tag.push_str(&format!("[{i}]"));
                Ok(())
            })
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let last = a.get_volume("bob", &v.uuid).await.unwrap();
    assert_eq!(last.generation, 10);
    for i in 0..10 {
        assert!(
            last.tag.contains(&format!("[{i}]")),
            "update {i} lost: {}",
            last.tag
        );
    }
    // A flipped byte in the newest generation is reported with its key, not trusted.
    let key = catalog::generation_key(&v.uuid, 10);
    let mut bytes = a.store().get(&key).await.unwrap().to_vec();
    bytes[20] ^= 1;
    a.store().put(&key, bytes.into()).await.unwrap();
    let err = a.get_volume("bob", &v.uuid).await.unwrap_err();
    assert!(err.to_string().contains(&key), "{err}");
    // Size bounds are refused with the reason.
    let err = a
        .create_volume(
            "alice",
            &CreateVolume {
                size: MAX_VOLUME_SIZE + 1,
                tag: String::new(),
                visibility: Visibility::Public,
                user_limit: None,
                source: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Invalid(_)), "{err}");
}

#[test]
fn file_size_probe_accepts_the_volume_range_and_refuses_beyond_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    attach::check_file_size_limit(dir.path(), MIN_VOLUME_SIZE).unwrap();
    // No Linux filesystem holds a 2^62-byte file: refused with the reason, probe removed.
    let err = attach::check_file_size_limit(dir.path(), 1 << 62).unwrap_err();
    assert!(
        matches!(err, ServiceError::Conflict(ref m) if m.contains("cannot hold")),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Catalog compaction racing one writer and a reader: with grace 0 (the worst case) no
/// read fails and no update is lost; a real grace keeps recent generations; the newest
/// always stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catalog_compaction_races_a_writer_and_a_reader() {
    let (a, b, _dirs) = two_hosts().await;
    let req = CreateVolume {
        size: MIN_VOLUME_SIZE,
        tag: String::new(),
        visibility: Visibility::Public,
        user_limit: None,
        source: None,
    };
    let v = a.create_volume("alice", &req).await.unwrap();
    let writer = {
        let (b, uuid) = (b.clone(), v.uuid.clone());
        tokio::spawn(async move {
            for i in 0..20 {
                catalog::update(b.store(), &uuid, |v| {
                    v.tag.push_str(&format!("[{i}]"));
                    Ok(())
                })
                .await
                .unwrap();
            }
        })
    };
    let reader = {
        let (b, uuid) = (b.clone(), v.uuid.clone());
        tokio::spawn(async move {
            for _ in 0..40 {
                b.get_volume("bob", &uuid).await.unwrap();
            }
        })
    };
    let mut deleted = 0;
    while !writer.is_finished() {
        deleted += catalog::compact(a.store(), std::time::Duration::ZERO, false)
            .await
            .unwrap()
            .generations;
    }
    writer.await.unwrap();
    reader.await.unwrap();
    let last = a.get_volume("bob", &v.uuid).await.unwrap();
    assert_eq!(last.generation, 20);
    assert!(
        (0..20).all(|i| last.tag.contains(&format!("[{i}]"))),
        "{}",
        last.tag
    );
    let hour = std::time::Duration::from_secs(3600);
    let kept = catalog::compact(a.store(), hour, false).await.unwrap();
    assert_eq!(
        kept.generations, 0,
        "an hour's grace keeps every recent generation"
    );
    let dry = catalog::compact(a.store(), std::time::Duration::ZERO, true)
        .await
        .unwrap();
    let done = catalog::compact(a.store(), std::time::Duration::ZERO, false)
        .await
        .unwrap();
    assert_eq!(dry, done);
    assert_eq!(deleted + done.generations, 20, "all but the newest");
    let keys = a.store().list(catalog::PREFIX, None, 100).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(a.get_volume("bob", &v.uuid).await.unwrap(), last);
}

/// A copy interrupted by a restart (its record left running) resumes under its id on the
/// next start and completes: the snapshot and the volume's record reach the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_copy_resumes_after_a_restart() {
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new_unique().unwrap());
    let repo = Repository::init(store, &InitOptions::default())
        .await
        .unwrap();
    let other: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new_unique().unwrap());
    let target = Repository::init(other.clone(), &InitOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut s = Service::new(repo.clone(), ServiceConfig::new(dir.path(), "host-a")).unwrap();
        s.add_copy_target("mem://dr", target.clone());
        Arc::new(s)
    };
    let a = start();
    let req = CreateVolume {
        size: MIN_VOLUME_SIZE,
        tag: String::new(),
        visibility: Visibility::Private,
        user_limit: None,
        source: None,
    };
    let v = a.create_volume("alice", &req).await.unwrap();
    // Finished operations are not resumed; only the copy below is left running.
    let h = op(&a);
    let att = a
        .attach("alice", &v.uuid, "n", "vm", Plug::AtStart, &h)
        .await
        .unwrap();
    h.finish(Ok(serde_json::Value::Null));
    let img = crate::image::Image::open(&att.path, crate::image::OpenMode::ReadWrite).unwrap();
    img.write_at(&[7u8; 65536], 1 << 20).unwrap();
    img.close().unwrap();
    let h = op(&a);
    a.detach_vm("alice", "n", "vm", &h).await.unwrap();
    h.finish(Ok(serde_json::Value::Null));
    let snap = a.snapshots("alice", &v.uuid).await.unwrap().remove(0).id;
    let copy = CopyRequest {
        target: "mem://dr".into(),
        snapshot: None,
        base: None,
    };
    let h = a
        .operations()
        .begin(OpSpec {
            kind: "copy".into(),
            user: "alice".into(),
            volume: Some(v.uuid.clone()),
            args: Some(serde_json::json!(copy)),
            stage_count: 2,
            ..OpSpec::default()
        })
        .unwrap();
    h.enter(1, "copy");
    let id = h.id();
    drop(a);
    let a = start();
    assert_eq!(a.resume_interrupted(), 1);
    let mut done = a.operations().get(&id).await.unwrap();
    for _ in 0..200 {
        if matches!(done.state, OpState::Done | OpState::Failed) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        done = a.operations().get(&id).await.unwrap();
    }
    assert_eq!(done.state, OpState::Done, "{done:?}");
    let result = done.result.unwrap();
    assert_eq!(result["resumed"], true);
    assert_eq!(result["copy"]["copied"], serde_json::json!([snap]));
    assert!(target.snapshot(&v.uuid, &snap).await.is_ok());
    let record = catalog::latest(&other, &v.uuid).await.unwrap().unwrap();
    assert_eq!((record.owner.as_str(), record.generation), ("alice", 0));
}

//! The journal and the shared record of an operation: persisted before it runs, visible
//! to a second server on the same store, progress throttled, the journal gone once the
//! final state is shared, a restart resumes from the journal, and the pruner removes
//! only what is past the retention.

use super::*;
use crate::store::MemoryStore;
use std::time::Duration;

/// Timing where nothing but stage changes and the end is written during the test.
fn slow() -> OpTiming {
    OpTiming {
        progress: Duration::from_secs(3600),
        heartbeat: Duration::from_secs(3600),
        expiry: Duration::from_secs(7200),
        retention: Duration::from_secs(7200),
    }
}

fn open(dir: &Path, store: &Arc<dyn ObjectStore>, server: &str, t: OpTiming) -> Operations {
    Operations::open(dir.to_path_buf(), store.clone(), server.into(), t).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_shared_throttled_and_resumed_after_restart() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new_unique().unwrap());
    let a = open(da.path(), &store, "host-a", slow());
    let b = open(db.path(), &store, "host-b", slow());
    let h = a
        .begin(OpSpec {
            kind: "detach".into(),
            user: "alice".into(),
            stage_count: 3,
            ..OpSpec::default()
        })
        .unwrap();
    let id = h.id();
    let journal = da.path().join(format!("{id}.json"));
    let on_disk: Operation = serde_json::from_slice(&std::fs::read(&journal).unwrap()).unwrap();
    assert_eq!(
        (on_disk.state, on_disk.server.as_str()),
        (OpState::Queued, "host-a")
    );
    h.flush().await.unwrap();
    let seen = b.get(&id).await.unwrap();
    assert_eq!(
        (seen.state, seen.server.as_str()),
        (OpState::Queued, "host-a")
    );
    assert!(seen.heartbeat.is_some());

    h.enter(1, "upload");
    h.flush().await.unwrap();
    h.stage("backup", 200);
    h.advance(50);
    h.flush().await.unwrap();
    let live = a.get(&id).await.unwrap();
    assert_eq!(
        (live.state, live.percent, live.stage_index),
        (OpState::Running, 25, 1)
    );
    let shared = b.get(&id).await.unwrap();
    assert_eq!(
        (shared.state, shared.stage.as_str()),
        (OpState::Running, "upload")
    );
    // Progress alone is not written before the throttle interval.
    assert_eq!((shared.done, shared.percent), (0, 0), "{shared:?}");
    assert_eq!(b.list(|_| true).await.unwrap().len(), 1);

    // A restart of host A resumes from the journal and updates the shared record.
    drop(h);
    drop(a);
    let a = open(da.path(), &store, "host-a", slow());
    let pending = a.take_interrupted();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].id.as_str(), pending[0].stage_index),
        (id.as_str(), 1)
    );
    assert!(a.take_interrupted().is_empty(), "taken once");
    let h = a.adopt(pending[0].clone());
    h.flush().await.unwrap();
    let resumed = b.get(&id).await.unwrap();
    assert!(resumed.error.unwrap().contains("interrupted"));
    h.finish(Ok(serde_json::json!({"ok": 1})));
    h.flush().await.unwrap();
    assert!(!journal.exists(), "journal dropped once the end is shared");
    for ops in [&a, &b] {
        let op = ops.get(&id).await.unwrap();
        assert_eq!(
            (op.state, op.error, op.result),
            (OpState::Done, None, Some(serde_json::json!({"ok": 1})))
        );
    }
    assert!(matches!(
        b.get("../x").await,
        Err(ServiceError::NotFound(_))
    ));
    // Within the retention nothing is pruned.
    assert_eq!(
        b.prune().await.unwrap(),
        PruneReport {
            records: 1,
            deleted: 0,
            abandoned: 0
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_journal_and_the_store_is_published_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new_unique().unwrap());
    // A finished journal record whose final state never reached the store.
    let a = open(dir.path(), &store, "host-a", slow());
    let h = a
        .begin(OpSpec {
            kind: "snapshot".into(),
            user: "u".into(),
            stage_count: 1,
            ..OpSpec::default()
        })
        .unwrap();
    h.flush().await.unwrap();
    let id = h.id();
    let mut done = h.snapshot();
    drop(h);
    drop(a);
    done.state = OpState::Failed;
    done.error = Some("boom".into());
    write_record(dir.path(), &done).unwrap();
    let a = open(dir.path(), &store, "host-a", slow());
    assert!(a.take_interrupted().is_empty());
    assert_eq!(a.republish(), 1);
    let mut shared = None;
    for _ in 0..200 {
        shared = ops_shared::read(&store, &id).await.unwrap();
        if shared.as_ref().is_some_and(|s| s.state == OpState::Failed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(shared.unwrap().error.as_deref(), Some("boom"));
    for _ in 0..200 {
        if !dir.path().join(format!("{id}.json")).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!dir.path().join(format!("{id}.json")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_live_owner_fresh_and_the_pruner_spares_live_records() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new_unique().unwrap());
    let fast = OpTiming {
        progress: Duration::from_millis(100),
        heartbeat: Duration::from_millis(200),
        expiry: Duration::from_millis(800),
        retention: Duration::from_millis(800),
    };
    let a = open(da.path(), &store, "host-a", fast);
    let b = open(db.path(), &store, "host-b", fast);
    let h = a
        .begin(OpSpec {
            kind: "copy".into(),
            user: "u".into(),
            stage_count: 2,
            ..OpSpec::default()
        })
        .unwrap();
    h.enter(1, "copy");
    h.stage("copy", 10);
    h.advance(3);
    let id = h.id();
    // Silent work for longer than the expiry: the heartbeat keeps it running.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let op = b.get(&id).await.unwrap();
    assert_eq!(
        (op.state, op.done),
        (OpState::Running, 3),
        "progress written once due: {op:?}"
    );
    assert_eq!(b.prune().await.unwrap().deleted, 0, "fresh heartbeat");
    // The owner stops (as if killed): others see it gone, then prune it.
    drop(h);
    drop(a);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let op = b.get(&id).await.unwrap();
    assert_eq!(op.state, OpState::Failed);
    assert!(op.error.unwrap().contains("owner server host-a gone since"));
    assert_eq!(
        b.prune().await.unwrap(),
        PruneReport {
            records: 1,
            deleted: 1,
            abandoned: 1
        }
    );
    assert!(matches!(b.get(&id).await, Err(ServiceError::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_writes_are_throttled_stage_changes_and_the_end_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let counting = Arc::new(crate::store::CountingStore::new(Arc::new(
        MemoryStore::new_unique().unwrap(),
    )));
    let store: Arc<dyn ObjectStore> = counting.clone();
    let t = OpTiming {
        progress: Duration::from_millis(400),
        heartbeat: Duration::from_secs(3600),
        expiry: Duration::from_secs(7200),
        retention: Duration::from_secs(7200),
    };
    let ops = open(dir.path(), &store, "host-a", t);
    let h = ops
        .begin(OpSpec {
            kind: "snapshot".into(),
            user: "u".into(),
            stage_count: 2,
            ..OpSpec::default()
        })
        .unwrap();
    h.flush().await.unwrap();
    let begun = counting.counts().puts;
    assert_eq!(begun, 1, "one write at creation");
    // 2 s of progress, one advance every millisecond, across two stages.
    let t0 = Instant::now();
    for stage in 1..=2 {
        h.enter(stage, "upload");
        h.flush().await.unwrap();
        h.stage("upload", 1 << 30);
        while t0.elapsed() < Duration::from_millis(1000 * u64::from(stage)) {
            h.advance(4096);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    h.finish(Ok(serde_json::Value::Null));
    h.flush().await.unwrap();
    let writes = counting.counts().puts - begun;
    eprintln!("{writes} shared writes for 2 stages, the end and 2 s of progress");
    // 2 stage changes + the end + progress at most every 400 ms over 2 s (≤ 5, a tick
    // late at most once per stage).
    assert!((3..=10).contains(&writes), "{writes} writes");
    assert!(writes > 3, "progress was written at all: {writes}");
    assert_eq!(
        ops_shared::read(&store, &h.id())
            .await
            .unwrap()
            .unwrap()
            .state,
        OpState::Done
    );
}

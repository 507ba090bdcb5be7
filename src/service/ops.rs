//! Operations: every long request (attach, detach, snapshot, copy, create, fix) is
//! recorded before it runs, and again at each stage and at its end, so a client can poll
//! it by id — on any server sharing the repository — and the owner can resume what a
//! crash interrupted.
//!
//! Two copies of a record, written in this order (`format-spec/service.md`, "Operations"):
//! 1. the owner's local journal `<data dir>/operations/<id>.json`, at creation, at each
//!    stage and at the end: what a restarted owner resumes (kind, user, volume, node, vm,
//!    device, args, stage reached). It is deleted once the final state is in the store.
//! 2. the shared record `service/operations/<id>` in the repository's store
//!    ([`super::ops_shared`]), written by the owner only, throttled, with a heartbeat:
//!    what every server answers.
//!
//! On start, [`Operations::open`] collects unfinished journal records (the service
//! re-runs them under the same id, see `Service::resume_interrupted`, since every step is
//! idempotent) and finished ones whose shared record may lack the final state (published
//! again by [`Operations::republish`]).

use super::error::{io_err, ServiceError};
use super::ops_shared::{self, OpTiming, PruneReport};
use crate::repo::format::ids::now_rfc3339;
use crate::repo::Progress;
use crate::store::ObjectStore;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpState {
    /// Recorded, waiting for the volume's other operations (or a restart's resume).
    Queued,
    /// Its stages are running; the owner heartbeats the shared record.
    Running,
    /// Finished; `result` holds what it returned.
    Done,
    /// Finished with `error`.
    Failed,
}

/// The persisted, pollable record of one operation: the owner's journal entry and the
/// shared record `service/operations/<id>` (format-spec/service.md, "Operations"). Field
/// names are a stable JSON interface (`GET /api/operations/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// A random UUID the owner drew; also the shared record's key (checked on read).
    pub id: String,
    /// attach, hotattach, detach, hotdetach, snapshot, copy, create, fix.
    pub kind: String,
    /// Who requested it: they (and admins) may see it.
    pub user: String,
    /// The volume's uuid, for every kind but fix.
    pub volume: Option<String>,
    /// The attaching VM's node (attach and detach kinds).
    pub node: Option<String>,
    /// The attaching VM's id on `node` (attach and detach kinds).
    pub vm_id: Option<String>,
    /// Device name a hot attach registers (resumed with it).
    #[serde(default)]
    pub device: Option<String>,
    /// Further arguments a resume needs (copy: target, snapshot, base; fix: fix ids).
    #[serde(default)]
    pub args: Option<serde_json::Value>,
    /// Queued, running, or finished one way or the other.
    pub state: OpState,
    /// Current stage name.
    pub stage: String,
    /// Current stage number, 1-based (0 while queued).
    pub stage_index: u32,
    /// How many stages the operation has, fixed at creation.
    pub stage_count: u32,
    /// Percent of the current stage's work done.
    pub percent: u8,
    /// Units (bytes for data stages) of the current stage done and planned.
    pub done: u64,
    /// See `done`.
    pub total: u64,
    /// Why it failed, once `Failed`; on a running record, that a server restart
    /// interrupted it and it was resumed.
    pub error: Option<String>,
    /// What the operation returned, once done.
    pub result: Option<serde_json::Value>,
    /// When it was recorded (RFC 3339).
    pub created: String,
    /// When the record last changed, progress included (RFC 3339).
    pub updated: String,
    /// Server id of the owner: the server that runs the operation, the only one that
    /// writes its shared record, and the one that resumes it after a restart.
    #[serde(default)]
    pub server: String,
    /// When the owner last wrote the shared record (RFC 3339); `None` before that.
    #[serde(default)]
    pub heartbeat: Option<String>,
}

/// The operations of one data dir, shared through one store.
#[derive(Debug)]
pub struct Operations {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    store: Arc<dyn ObjectStore>,
    server: String,
    timing: OpTiming,
    /// Operations this process runs (or still has to publish), by id.
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Records a previous process left queued or running, oldest first.
    interrupted: Mutex<Vec<Operation>>,
    /// Records a previous process finished but maybe did not publish.
    unpublished: Mutex<Vec<Operation>>,
    /// Set when the [`Operations`] is dropped: publishers stop (a service dropped
    /// in-process must not keep writing records a successor now owns).
    closed: AtomicBool,
}

/// One operation this process runs.
#[derive(Debug)]
struct Live {
    op: Mutex<Operation>,
    /// Serialises the shared writes of this record, so it only moves forward.
    publish: tokio::sync::Mutex<Published>,
    /// Progress not yet written.
    dirty: AtomicBool,
    /// A stage change or the end not yet written.
    urgent: AtomicBool,
    wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Published {
    last: Option<Instant>,
    /// The final state is written: nothing more to publish.
    finished: bool,
}

/// A running operation: updates its record and implements [`Progress`] for the engine.
#[derive(Debug, Clone)]
pub struct OpHandle {
    inner: Arc<Inner>,
    live: Arc<Live>,
}

/// What identifies a new operation: the fields of its [`Operation`] record that are
/// fixed at creation (see there for each one's meaning).
#[derive(Debug, Clone, Default)]
pub struct OpSpec {
    /// [`Operation::kind`].
    pub kind: String,
    /// [`Operation::user`].
    pub user: String,
    /// [`Operation::volume`].
    pub volume: Option<String>,
    /// [`Operation::node`].
    pub node: Option<String>,
    /// [`Operation::vm_id`].
    pub vm_id: Option<String>,
    /// [`Operation::device`].
    pub device: Option<String>,
    /// [`Operation::args`].
    pub args: Option<serde_json::Value>,
    /// [`Operation::stage_count`].
    pub stage_count: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn journal_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

fn write_record(dir: &Path, op: &Operation) -> Result<(), ServiceError> {
    let path = journal_path(dir, &op.id);
    let tmp = dir.join(format!("{}.json.tmp", op.id));
    let json = serde_json::to_vec_pretty(op).unwrap_or_default();
    std::fs::write(&tmp, json).map_err(io_err(&tmp, "write"))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path, "rename"))
}

fn read_record(path: &Path) -> Result<Operation, ServiceError> {
    let bytes = std::fs::read(path).map_err(io_err(path, "read"))?;
    serde_json::from_slice(&bytes).map_err(|e| ServiceError::Io {
        path: path.display().to_string(),
        op: "parse",
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

impl Operations {
    /// Open (creating) the journal `dir` of server `server`, whose shared records go to
    /// `store`, collecting the records a previous process left.
    pub fn open(
        dir: PathBuf,
        store: Arc<dyn ObjectStore>,
        server: String,
        timing: OpTiming,
    ) -> Result<Operations, ServiceError> {
        timing.validate()?;
        std::fs::create_dir_all(&dir).map_err(io_err(&dir, "create_dir_all"))?;
        let entries = std::fs::read_dir(&dir).map_err(io_err(&dir, "read_dir"))?;
        let (mut interrupted, mut unpublished) = (Vec::new(), Vec::new());
        for entry in entries {
            let path = entry.map_err(io_err(&dir, "read_dir"))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let op = match read_record(&path) {
                Ok(op) => op,
                Err(e) => {
                    tracing::warn!("unreadable operation record, ignored: {e}");
                    continue;
                }
            };
            // The id names the record's file and object: never trust one that could
            // point elsewhere.
            let named = path.file_stem().and_then(|s| s.to_str()) == Some(op.id.as_str());
            if !named || !super::model::valid_uuid(&op.id) {
                tracing::warn!(
                    "{}: record id {:?} does not match, ignored",
                    path.display(),
                    op.id
                );
                continue;
            }
            match op.state {
                OpState::Queued | OpState::Running => interrupted.push(op),
                OpState::Done | OpState::Failed => unpublished.push(op),
            }
        }
        interrupted.sort_by(|a, b| a.created.cmp(&b.created));
        Ok(Operations {
            inner: Arc::new(Inner {
                dir,
                store,
                server,
                timing,
                live: Mutex::new(HashMap::new()),
                interrupted: Mutex::new(interrupted),
                unpublished: Mutex::new(unpublished),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The timing of shared records.
    pub fn timing(&self) -> OpTiming {
        self.inner.timing
    }

    /// Take the interrupted records (once) to resume them.
    pub fn take_interrupted(&self) -> Vec<Operation> {
        std::mem::take(&mut *lock(&self.inner.interrupted))
    }

    /// Publish (in the background) the final state of the records a previous process
    /// finished, in case it crashed before writing them to the store; each journal
    /// record is deleted once published. Returns how many.
    pub fn republish(&self) -> usize {
        let finished = std::mem::take(&mut *lock(&self.inner.unpublished));
        let n = finished.len();
        for op in finished {
            self.register(op);
        }
        n
    }

    /// Track `op` as run by this process and start its publisher; its first write is
    /// due at once.
    fn register(&self, op: Operation) -> OpHandle {
        let id = op.id.clone();
        let live = Arc::new(Live {
            op: Mutex::new(op),
            publish: tokio::sync::Mutex::new(Published::default()),
            dirty: AtomicBool::new(false),
            urgent: AtomicBool::new(true),
            wake: tokio::sync::Notify::new(),
        });
        lock(&self.inner.live).insert(id, live.clone());
        live.wake.notify_one();
        // Without a runtime (never in the server) the record is written by `flush`.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(run_publisher(Arc::downgrade(&self.inner), live.clone()));
        }
        OpHandle {
            inner: self.inner.clone(),
            live,
        }
    }

    /// Continue an interrupted record under its id: it is running again (owned by this
    /// server), noting where it was interrupted.
    pub fn adopt(&self, mut op: Operation) -> OpHandle {
        op.state = OpState::Running;
        op.error = Some(format!(
            "interrupted by a server restart at stage {}/{} ({}); resumed",
            op.stage_index, op.stage_count, op.stage
        ));
        op.server = self.inner.server.clone();
        op.updated = now_rfc3339();
        if let Err(e) = write_record(&self.inner.dir, &op) {
            tracing::warn!("operation {}: {e}", op.id);
        }
        self.register(op)
    }

    /// Record a new queued operation: in the local journal before this returns, in the
    /// store at once in the background ([`OpHandle::flush`] waits for it).
    pub fn begin(&self, spec: OpSpec) -> Result<OpHandle, ServiceError> {
        let now = now_rfc3339();
        let op = Operation {
            id: uuid::Uuid::new_v4().to_string(),
            kind: spec.kind,
            user: spec.user,
            volume: spec.volume,
            node: spec.node,
            vm_id: spec.vm_id,
            device: spec.device,
            args: spec.args,
            state: OpState::Queued,
            stage: "queued".into(),
            stage_index: 0,
            stage_count: spec.stage_count,
            percent: 0,
            done: 0,
            total: 0,
            error: None,
            result: None,
            created: now.clone(),
            updated: now,
            server: self.inner.server.clone(),
            heartbeat: None,
        };
        write_record(&self.inner.dir, &op)?;
        Ok(self.register(op))
    }

    fn live_copy(&self, id: &str) -> Option<Operation> {
        let live = lock(&self.inner.live).get(id).cloned();
        live.map(|l| lock(&l.op).clone())
    }

    /// The current record of operation `id`: this process's own state if it runs it,
    /// else the shared record (a gone owner's unfinished one shown `failed`, see
    /// format-spec/service.md, "An owner that never comes back"), else this host's
    /// journal.
    pub async fn get(&self, id: &str) -> Result<Operation, ServiceError> {
        let not_found = || ServiceError::NotFound(format!("operation {id}"));
        if !super::model::valid_uuid(id) {
            return Err(not_found());
        }
        if let Some(op) = self.live_copy(id) {
            return Ok(op);
        }
        if let Some(op) = ops_shared::read(&self.inner.store, id).await? {
            let now = time::OffsetDateTime::now_utc();
            return Ok(ops_shared::view(op, &self.inner.timing, now));
        }
        let path = journal_path(&self.inner.dir, id);
        match read_record(&path) {
            Ok(op) => Ok(op),
            Err(ServiceError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Err(not_found())
            }
            Err(e) => Err(e),
        }
    }

    /// Every operation of every server sharing the store that `keep` accepts, newest
    /// first (this process's own from its live state, others' as [`Operations::get`]
    /// shows them).
    pub async fn list(
        &self,
        keep: impl Fn(&Operation) -> bool,
    ) -> Result<Vec<Operation>, ServiceError> {
        let now = time::OffsetDateTime::now_utc();
        let mut out: Vec<Operation> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let live: Vec<Arc<Live>> = lock(&self.inner.live).values().cloned().collect();
        for l in live {
            let op = lock(&l.op).clone();
            seen.insert(op.id.clone());
            out.push(op);
        }
        for id in ops_shared::list_ids(&self.inner.store).await? {
            if seen.contains(&id) {
                continue;
            }
            // Pruned between the listing and the read: gone, not an error.
            if let Some(op) = ops_shared::read(&self.inner.store, &id).await? {
                out.push(ops_shared::view(op, &self.inner.timing, now));
            }
        }
        out.retain(|op| keep(op));
        out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Delete the shared records past the retention (format-spec/service.md, "Retention"),
    /// except those this process runs. Any server may prune any record: a final record
    /// is never written again, and an owner gone that long that does come back writes
    /// its record anew.
    pub async fn prune(&self) -> Result<PruneReport, ServiceError> {
        let now = time::OffsetDateTime::now_utc();
        let mut report = PruneReport::default();
        for id in ops_shared::list_ids(&self.inner.store).await? {
            if lock(&self.inner.live).contains_key(&id) {
                continue;
            }
            let Some(op) = ops_shared::read(&self.inner.store, &id).await? else {
                continue;
            };
            report.records += 1;
            if ops_shared::prunable(&op, &self.inner.timing, now) {
                ops_shared::delete(&self.inner.store, &id).await?;
                report.deleted += 1;
                if matches!(op.state, OpState::Queued | OpState::Running) {
                    report.abandoned += 1;
                }
            }
        }
        Ok(report)
    }
}

impl Drop for Operations {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
    }
}

/// Write `live`'s record to the store if a write is due (or `urgent` is pending); after
/// writing the final state, drop the journal record and stop tracking it. Returns
/// whether the final state is written.
async fn publish(inner: &Inner, live: &Live) -> Result<bool, ServiceError> {
    let mut st = live.publish.lock().await;
    if st.finished {
        return Ok(true);
    }
    if inner.closed.load(Ordering::SeqCst) {
        return Ok(false);
    }
    let urgent = live.urgent.swap(false, Ordering::SeqCst);
    let dirty = live.dirty.load(Ordering::SeqCst);
    let t = &inner.timing;
    let due = urgent
        || st.last.is_none_or(|last| {
            let since = last.elapsed();
            (dirty && since >= t.progress) || since >= t.heartbeat
        });
    if !due {
        return Ok(false);
    }
    live.dirty.store(false, Ordering::SeqCst);
    let record = {
        let mut op = lock(&live.op);
        op.heartbeat = Some(now_rfc3339());
        op.clone()
    };
    if let Err(e) = ops_shared::put(&inner.store, &record).await {
        // Written again at the next tick.
        let pending = if urgent { &live.urgent } else { &live.dirty };
        pending.store(true, Ordering::SeqCst);
        return Err(e);
    }
    st.last = Some(Instant::now());
    if !matches!(record.state, OpState::Done | OpState::Failed) {
        return Ok(false);
    }
    st.finished = true;
    let path = journal_path(&inner.dir, &record.id);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("{}: remove: {e}", path.display()),
    }
    lock(&inner.live).remove(&record.id);
    Ok(true)
}

/// Write one record's changes to the store, throttled, until its final state is written
/// or the [`Operations`] is dropped.
async fn run_publisher(inner: Weak<Inner>, live: Arc<Live>) {
    loop {
        let tick = match inner.upgrade() {
            Some(i) => i.timing.progress.min(i.timing.heartbeat),
            None => return,
        };
        tokio::select! {
            _ = live.wake.notified() => {}
            _ = tokio::time::sleep(tick) => {}
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        match publish(&inner, &live).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                let id = lock(&live.op).id.clone();
                tracing::warn!("operation {id}: writing its shared record: {e}");
            }
        }
    }
}

impl OpHandle {
    /// The operation's id.
    pub fn id(&self) -> String {
        lock(&self.live.op).id.clone()
    }

    /// A copy of the current record.
    pub fn snapshot(&self) -> Operation {
        lock(&self.live.op).clone()
    }

    /// Write the record's pending stage change or end (and anything else due) to the
    /// store now, instead of at the publisher's next turn.
    pub async fn flush(&self) -> Result<(), ServiceError> {
        publish(&self.inner, &self.live).await.map(|_| ())
    }

    /// Change the record; `journal` = also write the local journal and the shared
    /// record at once (stage changes and the end), else only mark progress for the
    /// next throttled write.
    fn edit(&self, journal: bool, f: impl FnOnce(&mut Operation)) {
        let copy = {
            let mut op = lock(&self.live.op);
            f(&mut op);
            op.updated = now_rfc3339();
            op.clone()
        };
        if !journal {
            self.live.dirty.store(true, Ordering::SeqCst);
            return;
        }
        // The journal first: what a crash before the shared write leaves is resumed.
        if let Err(e) = write_record(&self.inner.dir, &copy) {
            tracing::warn!("operation {}: {e}", copy.id);
        }
        self.live.urgent.store(true, Ordering::SeqCst);
        self.live.wake.notify_one();
    }

    /// Enter stage `index` (1-based) named `name`; persisted.
    pub fn enter(&self, index: u32, name: &str) {
        self.edit(true, |op| {
            op.state = OpState::Running;
            op.stage_index = index;
            op.stage = name.to_string();
            op.percent = 0;
            op.done = 0;
            op.total = 0;
        });
    }

    /// Record the outcome; persisted.
    pub fn finish(&self, outcome: Result<serde_json::Value, String>) {
        self.edit(true, |op| match outcome {
            Ok(v) => {
                op.state = OpState::Done;
                op.percent = 100;
                op.result = Some(v);
                op.error = None;
            }
            Err(e) => {
                op.state = OpState::Failed;
                op.error = Some(e);
            }
        });
    }
}

impl Progress for OpHandle {
    fn stage(&self, _name: &str, total: u64) {
        self.edit(false, |op| {
            op.total = total;
            op.done = 0;
            op.percent = if total == 0 { 100 } else { 0 };
        });
    }

    fn advance(&self, n: u64) {
        self.edit(false, |op| {
            op.done = op.done.saturating_add(n).min(op.total);
            op.percent = op
                .done
                .saturating_mul(100)
                .checked_div(op.total)
                .map_or(100, |p| u8::try_from(p).unwrap_or(100));
        });
    }
}

#[cfg(test)]
mod tests;

//! Operations: every long request (attach, detach, snapshot, copy, fix) is recorded in
//! `<data dir>/operations/<id>.json` before it runs, and again at each stage and at its
//! end, so a client can poll it by id and an operator can see what a crash interrupted.
//!
//! Each record holds what a resume needs (kind, user, volume, node, vm, device, args,
//! stage reached). On start, [`Operations::open`] collects unfinished records; the
//! service re-runs them under the same id (see `Service::resume_interrupted`), since
//! every step is idempotent.

use super::error::{io_err, ServiceError};
use crate::repo::ids::now_rfc3339;
use crate::repo::Progress;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpState {
    Queued,
    Running,
    Done,
    Failed,
}

/// The persisted, pollable record of one operation. Field names are a stable JSON
/// interface (`GET /api/operations/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    /// attach, hotattach, detach, hotdetach, snapshot, copy, fix.
    pub kind: String,
    pub user: String,
    pub volume: Option<String>,
    pub node: Option<String>,
    pub vm_id: Option<String>,
    /// Device name a hot attach registers (resumed with it).
    #[serde(default)]
    pub device: Option<String>,
    /// Further arguments a resume needs (copy: target, snapshot, base; fix: fix ids).
    #[serde(default)]
    pub args: Option<serde_json::Value>,
    pub state: OpState,
    /// Current stage name.
    pub stage: String,
    /// Current stage number, 1-based (0 while queued).
    pub stage_index: u32,
    pub stage_count: u32,
    /// Percent of the current stage's work done.
    pub percent: u8,
    /// Units (bytes for data stages) of the current stage done and planned.
    pub done: u64,
    pub total: u64,
    pub error: Option<String>,
    /// What the operation returned, once done.
    pub result: Option<serde_json::Value>,
    pub created: String,
    pub updated: String,
}

/// The operations of one data dir.
#[derive(Debug)]
pub struct Operations {
    dir: PathBuf,
    live: Mutex<HashMap<String, Arc<Mutex<Operation>>>>,
    /// Records a previous process left queued or running, oldest first.
    interrupted: Mutex<Vec<Operation>>,
}

/// A running operation: updates its record and implements [`Progress`] for the engine.
#[derive(Debug, Clone)]
pub struct OpHandle {
    dir: PathBuf,
    op: Arc<Mutex<Operation>>,
}

/// What identifies a new operation.
#[derive(Debug, Clone, Default)]
pub struct OpSpec {
    pub kind: String,
    pub user: String,
    pub volume: Option<String>,
    pub node: Option<String>,
    pub vm_id: Option<String>,
    pub device: Option<String>,
    pub args: Option<serde_json::Value>,
    pub stage_count: u32,
}

fn write_record(dir: &Path, op: &Operation) -> Result<(), ServiceError> {
    let path = dir.join(format!("{}.json", op.id));
    let tmp = dir.join(format!("{}.json.tmp", op.id));
    let json = serde_json::to_vec_pretty(op).unwrap_or_default();
    std::fs::write(&tmp, json).map_err(io_err(&tmp, "write"))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path, "rename"))
}

impl Operations {
    /// Open (creating) `dir`, collecting the unfinished records a previous process left.
    pub fn open(dir: PathBuf) -> Result<Operations, ServiceError> {
        std::fs::create_dir_all(&dir).map_err(io_err(&dir, "create_dir_all"))?;
        let entries = std::fs::read_dir(&dir).map_err(io_err(&dir, "read_dir"))?;
        let mut interrupted = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_err(&dir, "read_dir"))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(op) = serde_json::from_slice::<Operation>(&bytes) else {
                tracing::warn!("{}: unreadable operation record, ignored", path.display());
                continue;
            };
            // The id names the record's file: never trust one that could point elsewhere.
            let named = path.file_stem().and_then(|s| s.to_str()) == Some(op.id.as_str());
            if !named || !super::model::valid_uuid(&op.id) {
                tracing::warn!(
                    "{}: record id {:?} does not match, ignored",
                    path.display(),
                    op.id
                );
                continue;
            }
            if matches!(op.state, OpState::Queued | OpState::Running) {
                interrupted.push(op);
            }
        }
        interrupted.sort_by(|a, b| a.created.cmp(&b.created));
        Ok(Operations {
            dir,
            live: Mutex::new(HashMap::new()),
            interrupted: Mutex::new(interrupted),
        })
    }

    /// Take the interrupted records (once) to resume them.
    pub fn take_interrupted(&self) -> Vec<Operation> {
        match self.interrupted.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        }
    }

    /// Continue an interrupted record under its id: it is running again, noting where
    /// it was interrupted.
    pub fn adopt(&self, mut op: Operation) -> OpHandle {
        op.state = OpState::Running;
        op.error = Some(format!(
            "interrupted by a server restart at stage {}/{} ({}); resumed",
            op.stage_index, op.stage_count, op.stage
        ));
        op.updated = now_rfc3339();
        if let Err(e) = write_record(&self.dir, &op) {
            tracing::warn!("operation {}: {e}", op.id);
        }
        let id = op.id.clone();
        let op = Arc::new(Mutex::new(op));
        if let Ok(mut live) = self.live.lock() {
            live.insert(id, op.clone());
        }
        OpHandle {
            dir: self.dir.clone(),
            op,
        }
    }

    /// Record a new queued operation (persisted before this returns).
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
        };
        write_record(&self.dir, &op)?;
        let id = op.id.clone();
        let op = Arc::new(Mutex::new(op));
        if let Ok(mut live) = self.live.lock() {
            live.insert(id, op.clone());
        }
        Ok(OpHandle {
            dir: self.dir.clone(),
            op,
        })
    }

    /// The current record of operation `id` (live state first, then the file).
    pub fn get(&self, id: &str) -> Result<Operation, ServiceError> {
        let not_found = || ServiceError::NotFound(format!("operation {id}"));
        if !super::model::valid_uuid(id) {
            return Err(not_found());
        }
        let live = self.live.lock().ok().and_then(|l| l.get(id).cloned());
        if let Some(op) = live {
            if let Ok(op) = op.lock() {
                return Ok(op.clone());
            }
        }
        let path = self.dir.join(format!("{id}.json"));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(io_err(&path, "read")(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| ServiceError::Io {
            path: path.display().to_string(),
            op: "parse",
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }
}

impl OpHandle {
    /// The operation's id.
    pub fn id(&self) -> String {
        self.snapshot().id
    }

    /// A copy of the current record.
    pub fn snapshot(&self) -> Operation {
        match self.op.lock() {
            Ok(op) => op.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn edit(&self, persist: bool, f: impl FnOnce(&mut Operation)) {
        let copy = {
            let mut op = match self.op.lock() {
                Ok(op) => op,
                Err(p) => p.into_inner(),
            };
            f(&mut op);
            op.updated = now_rfc3339();
            op.clone()
        };
        if persist {
            if let Err(e) = write_record(&self.dir, &copy) {
                tracing::warn!("operation {}: {e}", copy.id);
            }
        }
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
mod tests {
    use super::*;

    #[test]
    fn persisted_before_running_and_collected_on_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ops = Operations::open(dir.path().to_path_buf()).unwrap();
        let h = ops
            .begin(OpSpec {
                kind: "detach".into(),
                user: "alice".into(),
                stage_count: 3,
                ..OpSpec::default()
            })
            .unwrap();
        let id = h.id();
        let on_disk: Operation =
            serde_json::from_slice(&std::fs::read(dir.path().join(format!("{id}.json"))).unwrap())
                .unwrap();
        assert_eq!(on_disk.state, OpState::Queued);
        h.enter(1, "upload");
        h.stage("backup", 200);
        h.advance(50);
        let live = ops.get(&id).unwrap();
        assert_eq!(
            (live.state, live.percent, live.stage_index),
            (OpState::Running, 25, 1)
        );
        drop(ops);
        let reopened = Operations::open(dir.path().to_path_buf()).unwrap();
        let pending = reopened.take_interrupted();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (pending[0].id.as_str(), pending[0].stage_index),
            (id.as_str(), 1)
        );
        assert!(reopened.take_interrupted().is_empty(), "taken once");
        let h = reopened.adopt(pending[0].clone());
        assert!(reopened
            .get(&id)
            .unwrap()
            .error
            .unwrap()
            .contains("interrupted"));
        h.finish(Ok(serde_json::json!({})));
        let op = reopened.get(&id).unwrap();
        assert_eq!((op.state, op.error), (OpState::Done, None));
        assert!(matches!(
            reopened.get("../x"),
            Err(ServiceError::NotFound(_))
        ));
    }
}

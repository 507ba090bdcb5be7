//! Attach, detach and snapshot endpoints, run as persisted operations (see
//! [`crate::service::ops`]; their status is served by [`super::operations`]).

use super::authed::Authed;
use super::error::ApiError;
use super::input::Fields;
use super::ApiState;
use crate::service::model::valid_device;
use crate::service::{OpHandle, OpSpec, Plug, Service, ServiceError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// `node` and `vm_id` (required), `wait` (optional, default true) and, on a hot attach,
/// `target` (optional: the device name the frontend reports) of a request.
struct VmArgs {
    node: String,
    vm_id: String,
    wait: bool,
    device: Option<String>,
}

fn vm_args(mut f: Fields, with_target: bool) -> Result<VmArgs, ApiError> {
    let node = f.string("node", true);
    let vm_id = f.string("vm_id", true);
    let wait = f.boolean("wait").unwrap_or(true);
    let device = if with_target {
        f.only(&["node", "vm_id", "wait", "target"]);
        let device = f.string("target", false);
        if let Some(d) = device.as_deref().filter(|d| !valid_device(d)) {
            f.problem(format!("target {d:?}: a device name is 1-32 of [a-z0-9]"));
        }
        device
    } else {
        f.only(&["node", "vm_id", "wait"]);
        None
    };
    let problems = std::mem::take(&mut f.problems);
    match (node, vm_id, problems.is_empty()) {
        (Some(node), Some(vm_id), true) => Ok(VmArgs {
            node,
            vm_id,
            wait,
            device,
        }),
        _ => Err(ApiError::unprocessable(problems)),
    }
}

/// The four requests naming a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VmOp {
    Attach,
    HotAttach,
    HotDetach,
    Detach,
}

impl VmOp {
    /// The operation kind recorded (and resumed).
    fn kind(self) -> &'static str {
        match self {
            VmOp::Attach => "attach",
            VmOp::HotAttach => "hotattach",
            VmOp::HotDetach => "hotdetach",
            VmOp::Detach => "detach",
        }
    }
}

/// Parse, authorise and run one VM request as a persisted operation (3 stages).
async fn vm_op(
    s: Arc<ApiState>,
    uuid: Option<String>,
    Authed { user, input }: Authed<Fields>,
    what: VmOp,
) -> Result<Response, ApiError> {
    let a = vm_args(input, what == VmOp::HotAttach)?;
    // Refuse an unknown or invisible volume, and a detach of an attachment that is not
    // the caller's to detach (403), before recording an operation.
    if let Some(uuid) = &uuid {
        let v = s.service.get_volume(&user, uuid).await?;
        let vm = |x: &&crate::service::Attachment| x.node == a.node && x.vm_id == a.vm_id;
        if let (VmOp::HotDetach, Some(x)) = (what, v.attachments.iter().find(vm)) {
            s.service.check_may_detach(&v, x, &user)?;
        }
    }
    if what == VmOp::Detach {
        s.service.detachable(&user, &a.node, &a.vm_id).await?;
    }
    let spec = OpSpec {
        kind: what.kind().into(),
        user: user.clone(),
        volume: uuid.clone(),
        node: Some(a.node.clone()),
        vm_id: Some(a.vm_id.clone()),
        device: a.device.clone(),
        args: None,
        stage_count: 3,
    };
    let uuid = uuid.unwrap_or_default();
    run_op(&s, spec, a.wait, move |svc, op| async move {
        let (node, vm) = (a.node.as_str(), a.vm_id.as_str());
        let mut out = json!({"node": node, "vm_id": vm});
        match what {
            VmOp::Attach | VmOp::HotAttach => {
                let hot = what == VmOp::HotAttach;
                let plug = if hot {
                    Plug::Hot {
                        device: a.device.as_deref(),
                    }
                } else {
                    Plug::AtStart
                };
                let att = svc.attach(&user, &uuid, node, vm, plug, &op).await?;
                out["mode"] = json!(att.mode);
                out["path"] = json!(att.path);
                out["from_snapshot"] = json!(att.from_snapshot);
                if hot {
                    out["target"] = json!(att.target.unwrap_or_default());
                }
            }
            VmOp::HotDetach => {
                // The device the attachment registered, as StratusLab answers it.
                let v = svc.get_volume(&user, &uuid).await?;
                let device = v
                    .attachments
                    .iter()
                    .find(|x| x.node == node && x.vm_id == vm)
                    .and_then(|x| x.target.clone());
                let report = svc.hot_detach(&user, &uuid, node, vm, &op).await?;
                out["target"] = json!(device.unwrap_or_default());
                out["backup"] = json!(report);
            }
            VmOp::Detach => {
                out["uuid"] = json!(svc.detach_vm(&user, node, vm, &op).await?);
                return Ok(out);
            }
        }
        out["uuid"] = json!(svc.vm_volumes(&user, node, vm).await?);
        Ok(out)
    })
    .await
}

/// Record operation `spec`, run `work` on its own task (it survives a dropped client) and
/// either wait for its result (200) or answer 202 with the operation id at once.
pub(super) async fn run_op<F, Fut>(
    s: &ApiState,
    spec: OpSpec,
    wait: bool,
    work: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(Arc<Service>, OpHandle) -> Fut,
    Fut: Future<Output = Result<Value, ServiceError>> + Send + 'static,
{
    let (id, task) = start_op(s, spec, work).await?;
    if !wait {
        return Ok((StatusCode::ACCEPTED, Json(json!({"operation": id}))).into_response());
    }
    Ok(Json(finish_op(id, task).await?).into_response())
}

/// Record operation `spec` (in the local journal and the shared store, so any server
/// answers for the id returned) and run `work` on its own task, which records the
/// outcome and writes it to the store before the task ends.
pub(super) async fn start_op<F, Fut>(
    s: &ApiState,
    spec: OpSpec,
    work: F,
) -> Result<(String, JoinHandle<Result<Value, ServiceError>>), ApiError>
where
    F: FnOnce(Arc<Service>, OpHandle) -> Fut,
    Fut: Future<Output = Result<Value, ServiceError>> + Send + 'static,
{
    let op = s.service.operations().begin(spec)?;
    let id = op.id();
    // The journal has it: an unreachable store delays only its visibility elsewhere
    // (the record's publisher keeps trying).
    if let Err(e) = op.flush().await {
        tracing::warn!("operation {id}: writing its shared record: {e}");
    }
    let fut = work(s.service.clone(), op.clone());
    let task = tokio::spawn(async move {
        let r = fut.await;
        op.finish(match &r {
            Ok(v) => Ok(v.clone()),
            Err(e) => Err(e.to_string()),
        });
        if let Err(e) = op.flush().await {
            tracing::warn!("operation {}: writing its end: {e}", op.id());
        }
        r
    });
    Ok((id, task))
}

/// Wait for an operation's task: its result with the operation id added.
pub(super) async fn finish_op(
    id: String,
    task: JoinHandle<Result<Value, ServiceError>>,
) -> Result<Value, ApiError> {
    match task.await {
        Ok(Ok(mut v)) => {
            v["operation"] = Value::String(id);
            Ok(v)
        }
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("operation {id} task failed: {e}"),
        )),
    }
}

/// `POST /api/attach/{uuid}` (node, vm_id): attach at VM start.
pub(super) async fn attach(
    State(s): State<Arc<ApiState>>,
    Path(uuid): Path<String>,
    req: Authed<Fields>,
) -> Result<Response, ApiError> {
    vm_op(s, Some(uuid), req, VmOp::Attach).await
}

/// `POST /api/hotattach/{uuid}` (node, vm_id, optional target device): attach to a
/// running VM.
pub(super) async fn hot_attach(
    State(s): State<Arc<ApiState>>,
    Path(uuid): Path<String>,
    req: Authed<Fields>,
) -> Result<Response, ApiError> {
    vm_op(s, Some(uuid), req, VmOp::HotAttach).await
}

/// `POST /api/hotdetach/{uuid}` (node, vm_id): detach a hot-plugged volume (uploads).
pub(super) async fn hot_detach(
    State(s): State<Arc<ApiState>>,
    Path(uuid): Path<String>,
    req: Authed<Fields>,
) -> Result<Response, ApiError> {
    vm_op(s, Some(uuid), req, VmOp::HotDetach).await
}

/// `POST /api/detach` (node, vm_id): the VM is gone; detach (and upload) all its volumes.
pub(super) async fn detach(
    State(s): State<Arc<ApiState>>,
    req: Authed<Fields>,
) -> Result<Response, ApiError> {
    vm_op(s, None, req, VmOp::Detach).await
}

/// `POST /api/disks/{uuid}/snapshots`: snapshot the read-write local image (uploads).
pub(super) async fn snapshot(
    State(s): State<Arc<ApiState>>,
    Path(uuid): Path<String>,
    Authed { user, input: mut f }: Authed<Fields>,
) -> Result<Response, ApiError> {
    let wait = f.boolean("wait").unwrap_or(true);
    f.only(&["wait"]);
    f.finish()?;
    let v = s.service.get_volume(&user, &uuid).await?;
    s.service.check_may_change(&v, &user, "snapshots it")?;
    let spec = OpSpec {
        kind: "snapshot".into(),
        user: user.clone(),
        volume: Some(uuid.clone()),
        stage_count: 1,
        ..OpSpec::default()
    };
    run_op(&s, spec, wait, move |svc, op| async move {
        let report = svc.snapshot(&user, &uuid, &op).await?;
        Ok(json!({"uuid": uuid, "snapshot": report.id, "backup": report}))
    })
    .await
}

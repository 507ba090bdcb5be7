//! Attach, detach, snapshot and operation-status endpoints. The first three run as
//! persisted operations (see [`crate::service::ops`]).

use super::error::ApiError;
use super::input;
use super::{user_of, ApiState};
use crate::service::{OpHandle, OpSpec, Service, ServiceError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Arc;

/// `node` and `vm_id` (required) and `wait` (optional, default true) of a request.
struct VmArgs {
    node: String,
    vm_id: String,
    wait: bool,
}

fn vm_args(
    headers: &HeaderMap,
    query: Option<&str>,
    body: Result<&[u8], &BytesRejection>,
) -> Result<VmArgs, ApiError> {
    let mut f = input::parse(headers, query, body)?;
    let node = f.string("node", true);
    let vm_id = f.string("vm_id", true);
    let wait = f.boolean("wait").unwrap_or(true);
    f.only(&["node", "vm_id", "wait"]);
    let problems = std::mem::take(&mut f.problems);
    match (node, vm_id, problems.is_empty()) {
        (Some(node), Some(vm_id), true) => Ok(VmArgs { node, vm_id, wait }),
        _ => Err(ApiError::unprocessable(problems)),
    }
}

/// Record operation `spec`, run `work` on its own task (it survives a dropped client) and
/// either wait for its result (200) or answer 202 with the operation id at once.
async fn run_op<F, Fut>(
    s: &ApiState,
    spec: OpSpec,
    wait: bool,
    work: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(Arc<Service>, OpHandle) -> Fut,
    Fut: Future<Output = Result<Value, ServiceError>> + Send + 'static,
{
    let op = s.service.operations().begin(spec)?;
    let id = op.id();
    let fut = work(s.service.clone(), op.clone());
    let task = tokio::spawn(async move {
        let r = fut.await;
        op.finish(match &r {
            Ok(v) => Ok(v.clone()),
            Err(e) => Err(e.to_string()),
        });
        r
    });
    if !wait {
        return Ok((StatusCode::ACCEPTED, Json(json!({"operation": id}))).into_response());
    }
    match task.await {
        Ok(Ok(mut v)) => {
            v["operation"] = Value::String(id);
            Ok(Json(v).into_response())
        }
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("operation {id} task failed: {e}"),
        )),
    }
}

async fn attach_common(
    s: Arc<ApiState>,
    uuid: String,
    headers: HeaderMap,
    query: Option<String>,
    body: Result<Bytes, BytesRejection>,
    hot: bool,
) -> Result<Response, ApiError> {
    let user = user_of(&s, &headers)?;
    let a = vm_args(&headers, query.as_deref(), body.as_deref())?;
    // Refuse an unknown or invisible volume before recording an operation.
    s.service.get_volume(&user, &uuid).await?;
    let spec = OpSpec {
        kind: if hot { "hotattach" } else { "attach" }.into(),
        user: user.clone(),
        volume: Some(uuid.clone()),
        node: Some(a.node.clone()),
        vm_id: Some(a.vm_id.clone()),
        stage_count: 3,
    };
    run_op(&s, spec, a.wait, move |svc, op| async move {
        let att = svc
            .attach(&user, &uuid, &a.node, &a.vm_id, hot, &op)
            .await?;
        let all = svc.vm_volumes(&user, &a.node, &a.vm_id).await?;
        let mut out = json!({
            "node": a.node,
            "vm_id": a.vm_id,
            "uuid": all,
            "mode": att.mode,
            "path": att.path,
            "from_snapshot": att.from_snapshot,
        });
        if hot {
            out["target"] = Value::String(String::new());
        }
        Ok(out)
    })
    .await
}

/// `POST /api/attach/{uuid}` (node, vm_id): attach at VM start.
pub async fn attach(
    State(s): State<Arc<ApiState>>,
    Path(uuid): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    attach_common(s, uuid, headers, query, body, false).await
}

/// `POST /api/hotattach/{uuid}` (node, vm_id): attach to a running VM.
pub async fn hot_attach(
    State(s): State<Arc<ApiState>>,
    Path(uuid): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    attach_common(s, uuid, headers, query, body, true).await
}

/// `POST /api/hotdetach/{uuid}` (node, vm_id): detach a hot-plugged volume (uploads).
pub async fn hot_detach(
    State(s): State<Arc<ApiState>>,
    Path(uuid): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let user = user_of(&s, &headers)?;
    let a = vm_args(&headers, query.as_deref(), body.as_deref())?;
    s.service.get_volume(&user, &uuid).await?;
    let spec = OpSpec {
        kind: "hotdetach".into(),
        user: user.clone(),
        volume: Some(uuid.clone()),
        node: Some(a.node.clone()),
        vm_id: Some(a.vm_id.clone()),
        stage_count: 3,
    };
    run_op(&s, spec, a.wait, move |svc, op| async move {
        let report = svc.hot_detach(&user, &uuid, &a.node, &a.vm_id, &op).await?;
        let all = svc.vm_volumes(&user, &a.node, &a.vm_id).await?;
        Ok(json!({
            "node": a.node, "vm_id": a.vm_id, "target": "", "uuid": all, "backup": report,
        }))
    })
    .await
}

/// `POST /api/detach` (node, vm_id): the VM is gone; detach (and upload) all its volumes.
pub async fn detach(
    State(s): State<Arc<ApiState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let user = user_of(&s, &headers)?;
    let a = vm_args(&headers, query.as_deref(), body.as_deref())?;
    let spec = OpSpec {
        kind: "detach".into(),
        user: user.clone(),
        volume: None,
        node: Some(a.node.clone()),
        vm_id: Some(a.vm_id.clone()),
        stage_count: 3,
    };
    run_op(&s, spec, a.wait, move |svc, op| async move {
        let done = svc.detach_vm(&user, &a.node, &a.vm_id, &op).await?;
        Ok(json!({"node": a.node, "vm_id": a.vm_id, "uuid": done}))
    })
    .await
}

/// `POST /api/disks/{uuid}/snapshots`: snapshot the read-write local image (uploads).
pub async fn snapshot(
    State(s): State<Arc<ApiState>>,
    Path(uuid): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let user = user_of(&s, &headers)?;
    let mut f = input::parse(&headers, query.as_deref(), body.as_deref())?;
    let wait = f.boolean("wait").unwrap_or(true);
    f.only(&["wait"]);
    f.finish()?;
    s.service.get_volume(&user, &uuid).await?;
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

/// `GET /api/operations/{id}`: an operation's state; only its user sees it.
pub async fn operation(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let user = user_of(&s, &headers)?;
    let op = s.service.operations().get(&id)?;
    if op.user != user {
        return Err(ServiceError::NotFound(format!("operation {id}")).into());
    }
    Ok(Json(serde_json::to_value(op).unwrap_or(Value::Null)))
}

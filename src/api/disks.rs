//! Volume endpoints: list, get, create, delete, list snapshots.

use super::authed::Authed;
use super::error::ApiError;
use super::input::Fields;
use super::volumes_attach::{finish_op, start_op};
use super::ApiState;
use crate::service::{CreateVolume, OpSpec, SnapshotRef, Visibility, Volume};
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

const GIB: u64 = 1 << 30;

/// `created` in the original API's `yyyy/mm/dd hh:mm:ss` (UTC) form.
fn api_time(rfc3339: &str) -> String {
    rfc3339
        .get(..19)
        .map(|s| s.replace('-', "/").replace('T', " "))
        .unwrap_or_default()
}

/// A volume in the original API's shape (every value a string, size in GiB).
pub(crate) fn disk_json(v: &Volume) -> Value {
    json!({
        "users": v.attachments.len().to_string(),
        "created": api_time(&v.created),
        "visibility": v.visibility.as_str(),
        "tag": v.tag,
        "owner": v.owner,
        "uuid": v.uuid,
        "size": (v.size / GIB).to_string(),
    })
}

/// `GET /api/disks`: the volumes the caller may see.
pub(super) async fn list(
    State(s): State<Arc<ApiState>>,
    Authed { user, .. }: Authed<()>,
) -> Result<Json<Value>, ApiError> {
    let all = s.service.list_volumes(&user).await?;
    Ok(Json(Value::Array(all.iter().map(disk_json).collect())))
}

/// `GET /api/disks/{uuid}`: one volume, with its user limit and remaining slots in the
/// `X-DiskUser-Limit` / `X-DiskUser-Remaining` headers, its attachments (with the device
/// a hot attach registered), its image status by the last check, its last revert and its
/// head snapshot (what an attach materialises).
pub(super) async fn get_one(
    State(s): State<Arc<ApiState>>,
    Path(uuid): Path<String>,
    Authed { user, .. }: Authed<()>,
) -> Result<Response, ApiError> {
    let v = s.service.get_volume(&user, &uuid).await?;
    let mut body = disk_json(&v);
    body["attachments"] = serde_json::to_value(&v.attachments).unwrap_or(Value::Null);
    body["status"] = s.service.image_status(&v.uuid).await?.as_str().into();
    body["last_revert"] = serde_json::to_value(&v.last_revert).unwrap_or(Value::Null);
    body["head"] = s.service.head(&v).await?.map(|m| m.id).into();
    let limit = HeaderValue::from(v.user_limit);
    let remaining = HeaderValue::from(v.remaining());
    Ok((
        [
            (HeaderName::from_static("x-diskuser-limit"), limit),
            (HeaderName::from_static("x-diskuser-remaining"), remaining),
        ],
        Json(body),
    )
        .into_response())
}

/// `DELETE /api/disks/{uuid}[?force=true]`.
pub(super) async fn remove(
    State(s): State<Arc<ApiState>>,
    Path(uuid): Path<String>,
    Authed { user, input: mut f }: Authed<Fields>,
) -> Result<Json<Value>, ApiError> {
    let force = f.boolean("force").unwrap_or(false);
    f.only(&["force"]);
    f.finish()?;
    let d = s.service.delete_volume(&user, &uuid, force).await?;
    Ok(Json(
        json!({"uuid": d.uuid, "snapshots_deleted": d.snapshots_deleted}),
    ))
}

/// `POST /api/create`: size (GiB), tag and visibility are required; `user_limit` is
/// optional; `source` + `snapshot` start it as that snapshot, of this repository or, with
/// `source_repository`, of an allowed peer repository (copied here first).
pub(super) async fn create(
    State(s): State<Arc<ApiState>>,
    Authed { user, input: mut f }: Authed<Fields>,
) -> Result<Response, ApiError> {
    let source = f.string("source", false);
    let snapshot = f.string("snapshot", false);
    let from = match (source, snapshot) {
        (Some(volume), Some(snapshot)) => Some(SnapshotRef { volume, snapshot }),
        (None, None) => None,
        _ => {
            f.problem("source and snapshot go together (create from a snapshot)".into());
            None
        }
    };
    let peer = f.string("source_repository", false);
    if peer.is_some() && from.is_none() {
        f.problem(
            "source_repository needs source and snapshot (a snapshot in that repository)".into(),
        );
    }
    let wait = f.boolean("wait").unwrap_or(true);
    let size = f.integer("size", from.is_none());
    if let Some(gib) = size {
        if !(1..=s.max_size_gib).contains(&gib) {
            f.problem(format!(
                "size {gib} GiB is outside 1..={} GiB",
                s.max_size_gib
            ));
        }
    }
    let tag = f.string("tag", true);
    let visibility = f.string("visibility", true);
    let vis = visibility.as_deref().and_then(Visibility::parse);
    if visibility.is_some() && vis.is_none() {
        f.problem("visibility must be private or public".into());
    }
    let limit = f.integer("user_limit", false);
    let user_limit = match limit.map(u32::try_from) {
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            f.problem("user_limit is too large".into());
            None
        }
        None => None,
    };
    f.only(&[
        "size",
        "tag",
        "visibility",
        "user_limit",
        "source",
        "snapshot",
        "source_repository",
        "wait",
    ]);
    let problems = std::mem::take(&mut f.problems);
    let (Some(tag), Some(visibility), true) = (tag, vis, problems.is_empty()) else {
        return Err(ApiError::unprocessable(problems));
    };
    let req = CreateVolume {
        // 0 = the source snapshot's size (size is required without a source).
        size: size.unwrap_or(0) * GIB,
        tag,
        visibility,
        user_limit,
        source: from,
    };
    if let Some(url) = peer {
        return create_from_peer(&s, user, &req, url, wait).await;
    }
    let v = s.service.create_volume(&user, &req).await?;
    Ok((StatusCode::CREATED, Json(json!({"uuid": v.uuid}))).into_response())
}

/// `POST /api/create` with `source_repository`: the snapshot is copied from that peer
/// as an operation (kind `create`); 201 with the volume's uuid and the copy's report, or
/// with `wait=false` 202 with the operation id and the uuid the volume will have.
async fn create_from_peer(
    s: &ApiState,
    user: String,
    req: &CreateVolume,
    url: String,
    wait: bool,
) -> Result<Response, ApiError> {
    // Refuse a bad request before recording an operation.
    let planned = s.service.plan_create_from_peer(&user, req, &url).await?;
    let uuid = planned.uuid.clone();
    let spec = OpSpec {
        kind: "create".into(),
        user: user.clone(),
        volume: Some(uuid.clone()),
        args: Some(json!({"source_repository": url, "volume": planned})),
        stage_count: 3,
        ..OpSpec::default()
    };
    let (id, task) = start_op(s, spec, move |svc, op| async move {
        Ok(json!(
            svc.create_from_peer(&user, &planned, &url, &op).await?
        ))
    })
    .await?;
    if !wait {
        let body = json!({"operation": id, "uuid": uuid});
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let done = finish_op(id, task).await?;
    Ok((StatusCode::CREATED, Json(done)).into_response())
}

/// `GET /api/disks/{uuid}/snapshots`: the volume's snapshots in the repository.
pub(super) async fn snapshots(
    State(s): State<Arc<ApiState>>,
    Path(uuid): Path<String>,
    Authed { user, .. }: Authed<()>,
) -> Result<Json<Value>, ApiError> {
    let list = s.service.snapshots(&user, &uuid).await?;
    Ok(Json(serde_json::to_value(list).unwrap_or(Value::Null)))
}

/// `DELETE /api/disks/{uuid}/snapshots/{id}`: owner only.
pub(super) async fn delete_snapshot(
    State(s): State<Arc<ApiState>>,
    Path((uuid, id)): Path<(String, String)>,
    Authed { user, .. }: Authed<()>,
) -> Result<Json<Value>, ApiError> {
    let report = s.service.delete_snapshot(&user, &uuid, &id).await?;
    Ok(Json(
        json!({"uuid": uuid, "snapshot": id, "report": report}),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_time_shape() {
        assert_eq!(
            super::api_time("2011-07-28T15:01:40.000000000Z"),
            "2011/07/28 15:01:40"
        );
    }
}

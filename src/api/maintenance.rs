//! Revert, copy, and repository check/fix endpoints. Copy and fix run as persisted
//! operations (see [`crate::service::ops`]); check and fix need an admin user (the
//! users file's `admins`), since they act on the whole repository.

use super::authed::{Admin, Authed, QueryFields};
use super::error::ApiError;
use super::input::Fields;
use super::volumes_attach::run_op;
use super::ApiState;
use crate::service::{CopyRequest, OpSpec};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// `POST /api/revert/{uuid}` (snapshot): make that snapshot the volume's newest again.
pub(super) async fn revert(
    State(s): State<Arc<ApiState>>,
    Path(uuid): Path<String>,
    Authed { user, input: mut f }: Authed<Fields>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = f.string("snapshot", true);
    f.only(&["snapshot"]);
    let problems = std::mem::take(&mut f.problems);
    let (Some(snapshot), true) = (snapshot, problems.is_empty()) else {
        return Err(ApiError::unprocessable(problems));
    };
    let v = s.service.revert(&user, &uuid, &snapshot).await?;
    let new = v.last_revert.map(|r| r.snapshot).unwrap_or_default();
    Ok(Json(
        json!({"uuid": uuid, "reverted_to": snapshot, "snapshot": new}),
    ))
}

/// `POST /api/copy/{uuid}` (target, optional snapshot, base, wait): copy a snapshot to an
/// allowed repository.
pub(super) async fn copy(
    State(s): State<Arc<ApiState>>,
    Path(uuid): Path<String>,
    Authed { user, input: mut f }: Authed<Fields>,
) -> Result<Response, ApiError> {
    let target = f.string("target", true);
    let snapshot = f.string("snapshot", false);
    let base = f.string("base", false);
    let wait = f.boolean("wait").unwrap_or(true);
    f.only(&["target", "snapshot", "base", "wait"]);
    let problems = std::mem::take(&mut f.problems);
    let (Some(target), true) = (target, problems.is_empty()) else {
        return Err(ApiError::unprocessable(problems));
    };
    let req = CopyRequest {
        target,
        snapshot,
        base,
    };
    // Refuse a bad request before recording an operation.
    s.service.copy_target(&req)?;
    let v = s.service.get_volume(&user, &uuid).await?;
    s.service
        .check_may_change(&v, &user, "copies it to another repository")?;
    let spec = OpSpec {
        kind: "copy".into(),
        user: user.clone(),
        volume: Some(uuid.clone()),
        args: Some(json!(req)),
        stage_count: 2,
        ..OpSpec::default()
    };
    run_op(&s, spec, wait, move |svc, op| async move {
        Ok(json!(svc.copy(&user, &uuid, &req, &op).await?))
    })
    .await
}

/// `GET /api/check[?read_data=true]`: check the repository (re-hashing every chunk with
/// `read_data`); the fixes it proposes (admins only).
pub(super) async fn check(
    State(s): State<Arc<ApiState>>,
    Admin {
        input: QueryFields(mut f),
        ..
    }: Admin<QueryFields>,
) -> Result<Json<Value>, ApiError> {
    let read_data = f.boolean("read_data").unwrap_or(false);
    f.only(&["read_data"]);
    f.finish()?;
    Ok(Json(json!(s.service.check(read_data).await?)))
}

/// `POST /api/fix` (fixes: ids from the last check, wait): apply them (admins only).
pub(super) async fn fix(
    State(s): State<Arc<ApiState>>,
    Admin { user, input: mut f }: Admin<Fields>,
) -> Result<Response, ApiError> {
    let ids = f.strings("fixes", true);
    let wait = f.boolean("wait").unwrap_or(true);
    f.only(&["fixes", "wait"]);
    let problems = std::mem::take(&mut f.problems);
    let (Some(mut ids), true) = (ids, problems.is_empty()) else {
        return Err(ApiError::unprocessable(problems));
    };
    // One stage per distinct fix.
    ids.sort();
    ids.dedup();
    s.service.check_fix_ids(&ids).await?;
    let spec = OpSpec {
        kind: "fix".into(),
        user,
        args: Some(json!({ "fixes": ids })),
        stage_count: u32::try_from(ids.len()).unwrap_or(u32::MAX),
        ..OpSpec::default()
    };
    run_op(&s, spec, wait, move |svc, op| async move {
        let applied = svc.fix(&ids, &op).await?;
        Ok(json!({ "fixes": applied }))
    })
    .await
}

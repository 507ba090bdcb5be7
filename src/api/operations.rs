//! Operation-status endpoints. Records come from the repository's store, so any server
//! sharing the repository answers for an operation any of them runs (see
//! [`crate::service::ops_shared`]). A user sees their own operations; an admin (the users
//! file's `admins`) sees every operation.

use super::authed::{Authed, QueryFields};
use super::error::ApiError;
use super::ApiState;
use crate::service::model::valid_uuid;
use crate::service::{Operation, ServiceError};
use axum::extract::{Path, State};
use axum::Json;
use serde_json::Value;
use std::sync::Arc;

/// May `user` see `op`?
fn visible(s: &ApiState, user: &str, op: &Operation) -> bool {
    op.user == user || s.users.admins.iter().any(|a| a == user)
}

/// `GET /api/operations/{id}`: an operation's state, from any server sharing the
/// repository; an unfinished one whose owner stopped writing it is shown `failed`.
pub(super) async fn get_one(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Authed { user, .. }: Authed<()>,
) -> Result<Json<Value>, ApiError> {
    let op = s.service.operations().get(&id).await?;
    if !visible(&s, &user, &op) {
        return Err(ServiceError::NotFound(format!("operation {id}")).into());
    }
    Ok(Json(serde_json::to_value(op).unwrap_or(Value::Null)))
}

/// `GET /api/operations[?volume=UUID]`: the caller's operations (an admin's: all),
/// newest first, optionally only those of one volume.
pub(super) async fn list(
    State(s): State<Arc<ApiState>>,
    Authed {
        user,
        input: QueryFields(mut f),
    }: Authed<QueryFields>,
) -> Result<Json<Value>, ApiError> {
    let volume = f.string("volume", false);
    if let Some(v) = volume.as_deref().filter(|v| !valid_uuid(v)) {
        f.problem(format!(
            "volume {v:?} is not a volume id (a lower-case UUID)"
        ));
    }
    f.only(&["volume"]);
    f.finish()?;
    let ops = s
        .service
        .operations()
        .list(|op| {
            visible(&s, &user, op)
                && volume
                    .as_deref()
                    .is_none_or(|v| op.volume.as_deref() == Some(v))
        })
        .await?;
    Ok(Json(serde_json::to_value(ops).unwrap_or(Value::Null)))
}

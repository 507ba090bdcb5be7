//! The HTTP API of `island serve`: the StratusLab persistent-disk endpoints (same paths
//! and JSON shapes) plus snapshot, revert, copy, check/fix and operation-status endpoints
//! in the same style, on top of [`crate::service`]. See README.md ("island serve").
//!
//! Every request carries `Authorization: Bearer TOKEN`; tokens map to user names in the
//! `[tokens]` table of the users file; its `admins` list names who may check and fix the
//! repository. Long requests (attach, detach, snapshot, copy, fix) run as persisted
//! operations: by default the response waits for the result; with `wait=false` it is a
//! 202 carrying the operation id to poll at `/api/operations/{id}`.

mod authed;
mod disks;
mod error;
mod input;
mod maintenance;
mod operations;
mod volumes_attach;

pub(crate) use error::ApiError;

use crate::service::Service;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Largest request body accepted (the API's inputs are a few short fields).
pub const MAX_BODY: usize = 64 << 10;
/// The API's OpenAPI 3.0 document, kept in the repository and served at
/// `/api/openapi.json`; the integration tests check every response against it.
pub const OPENAPI: &str = include_str!("../../format-spec/openapi.json");
/// Default upper bound of `size` (GiB) in `POST /api/create`, as in the original API.
pub const DEFAULT_MAX_SIZE_GIB: u64 = 1024;

/// The users file: `[tokens]` maps a bearer token to a user name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Users {
    /// Bearer token → user name; every request must carry one of these tokens.
    pub tokens: HashMap<String, String>,
    /// Users who may check and fix the repository (`GET /api/check`, `POST /api/fix`).
    #[serde(default)]
    pub admins: Vec<String>,
}

impl Users {
    /// Parse a users file's text; empty tokens or user names are refused.
    pub fn parse(text: &str) -> Result<Users, String> {
        let users: Users = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(u) = users
            .tokens
            .iter()
            .find(|(t, u)| t.len() < 8 || u.is_empty() || u.len() > 128)
            .map(|(_, u)| u)
        {
            // The token itself is a secret: name only its user.
            return Err(format!(
                "the token of user {u:?}: tokens need 8+ characters, user names 1-128"
            ));
        }
        Ok(users)
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct ApiState {
    /// The volume service every handler calls into.
    pub service: Arc<Service>,
    /// Who may call the API, and who as an admin.
    pub users: Users,
    /// Upper bound of `size` in GiB for `POST /api/create`.
    pub max_size_gib: u64,
}

/// The user a request authenticates as.
pub(crate) fn user_of(state: &ApiState, headers: &HeaderMap) -> Result<String, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer TOKEN"))?
        .to_str()
        .map_err(|_| unauthorized("Authorization header is not ASCII"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthorized("Authorization must be Bearer TOKEN"))?;
    state
        .users
        .tokens
        .get(token.trim())
        .cloned()
        .ok_or_else(|| unauthorized("unknown token"))
}

/// The API's router.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/disks", get(disks::list))
        .route("/api/disks/{uuid}", get(disks::get_one))
        .route("/api/disks/{uuid}", delete(disks::remove))
        .route("/api/create", post(disks::create))
        .route(
            "/api/disks/{uuid}/snapshots",
            get(disks::snapshots).post(volumes_attach::snapshot),
        )
        .route(
            "/api/disks/{uuid}/snapshots/{id}",
            delete(disks::delete_snapshot),
        )
        .route("/api/attach/{uuid}", post(volumes_attach::attach))
        .route("/api/hotattach/{uuid}", post(volumes_attach::hot_attach))
        .route("/api/hotdetach/{uuid}", post(volumes_attach::hot_detach))
        .route("/api/detach", post(volumes_attach::detach))
        .route("/api/operations", get(operations::list))
        .route("/api/operations/{id}", get(operations::get_one))
        .route("/api/revert/{uuid}", post(maintenance::revert))
        .route("/api/copy/{uuid}", post(maintenance::copy))
        .route("/api/check", get(maintenance::check))
        .route("/api/fix", post(maintenance::fix))
        .route(
            "/api/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        // After every route: it applies to the routes added so far.
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serve the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file() {
        let u = Users::parse("[tokens]\n\"secret-alice\" = \"alice\"\n").unwrap();
        assert_eq!(u.tokens["secret-alice"], "alice");
        assert!(u.admins.is_empty());
        let u = Users::parse("admins = [\"alice\"]\n[tokens]\n\"secret-alice\" = \"alice\"\n");
        assert_eq!(u.unwrap().admins, ["alice"]);
        assert!(Users::parse("[tokens]\nshort = \"bob\"\n").is_err());
        assert!(Users::parse("[tokenz]\n").is_err());
        assert!(Users::parse("not toml [").is_err());
    }
}

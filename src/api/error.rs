//! HTTP errors in the persistent-disk API's format: a status and
//! `{"message": ["…", …]}`, plus a stable `code` for errors a client must tell apart
//! (`copied_repository`). Client mistakes are 4xx with every problem listed; a repository
//! that refuses work until an operator acts is a 409; only an engine or local I/O failure
//! is a 500.

use crate::service::ServiceError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error response.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// 4xx for a client's mistake, 409 for a repository an operator must act on, 500
    /// for an engine or local I/O failure.
    pub status: StatusCode,
    /// Every problem found, each a sentence for a person (the body's `message` list).
    pub messages: Vec<String>,
    /// A stable machine-readable reason, where a client must act on it (never renamed).
    pub code: Option<&'static str>,
}

/// `code` of a 409: the repository looks like a copy whose store times were reset
/// (`RepoError::CopiedRepository`, CLI exit code 13); destructive work refuses until an
/// operator runs `island check --adopt-copy` on it.
pub(super) const COPIED_REPOSITORY: &str = "copied_repository";

impl ApiError {
    /// `status` with one message.
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            messages: vec![message.into()],
            code: None,
        }
    }

    /// 400: the request could not be read at all (syntax, encoding, content type).
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 422: the request was read but its fields are missing, mistyped or out of range.
    pub(crate) fn unprocessable(messages: Vec<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            messages,
            code: None,
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        match e {
            ServiceError::Invalid(messages) => ApiError::unprocessable(messages),
            ServiceError::NotFound(what) => {
                ApiError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
            }
            ServiceError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, m),
            ServiceError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            ServiceError::Engine(crate::Error::Repo(
                e @ crate::repo::RepoError::CopiedRepository { .. },
            )) => ApiError {
                code: Some(COPIED_REPOSITORY),
                ..ApiError::new(StatusCode::CONFLICT, e.to_string())
            },
            other => {
                tracing::error!("request failed: {other}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "message": self.messages });
        if let Some(code) = self.code {
            body["code"] = code.into();
        }
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::RepoError;

    /// A copied repository's refusal is a 409 with the stable code, not a 500: the client
    /// must tell "an operator has to adopt this copy" from an engine failure.
    #[tokio::test]
    async fn a_copied_repository_is_a_409_with_a_stable_code() {
        let e = ServiceError::from(crate::Error::from(RepoError::CopiedRepository {
            markers: 2,
            example: "snapshots/vm/x".into(),
        }));
        let resp = ApiError::from(e).into_response();
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["code"], COPIED_REPOSITORY, "{body}");
        let m = body["message"][0].as_str().unwrap();
        assert!(m.contains("adopt-copy"), "{m}");
        let other = ApiError::from(ServiceError::Conflict("attached".into())).into_response();
        let bytes = axum::body::to_bytes(other.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(body.get("code").is_none(), "{body}");
    }
}

//! HTTP errors in the persistent-disk API's format: a status and
//! `{"message": ["…", …]}`. Client mistakes are 4xx with every problem listed; only an
//! engine or local I/O failure is a 500.

use crate::service::ServiceError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub messages: Vec<String>,
}

impl ApiError {
    /// `status` with one message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            messages: vec![message.into()],
        }
    }

    /// 400: the request could not be read at all (syntax, encoding, content type).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 422: the request was read but its fields are missing, mistyped or out of range.
    pub fn unprocessable(messages: Vec<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            messages,
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
            other => {
                tracing::error!("request failed: {other}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "message": self.messages });
        (self.status, Json(body)).into_response()
    }
}

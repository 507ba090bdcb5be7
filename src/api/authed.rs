//! The preamble every handler shares, as extractors: authenticate the caller (401), for
//! check/fix require an admin (403), then parse the request's input (400/413/422 later)
//! — always in that order, so a bad token is reported before a bad body. [`Authed`] is
//! any user, [`Admin`] a user listed in the users file's `admins`; the input `T` is
//! nothing (`()`), the query string only ([`QueryFields`]) or the query string and the
//! body ([`Fields`]: JSON or form-encoded).

use super::error::ApiError;
use super::input::{self, Fields};
use super::{user_of, ApiState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use std::sync::Arc;

/// What a handler reads once the caller is known.
pub(crate) trait ReadInput: Sized {
    /// Whether the body is read (an input without one leaves it unread).
    const BODY: bool;
    fn read(
        headers: &HeaderMap,
        query: Option<&str>,
        body: Result<&[u8], &BytesRejection>,
    ) -> Result<Self, ApiError>;
}

impl ReadInput for () {
    const BODY: bool = false;
    fn read(
        _: &HeaderMap,
        _: Option<&str>,
        _: Result<&[u8], &BytesRejection>,
    ) -> Result<(), ApiError> {
        Ok(())
    }
}

impl ReadInput for Fields {
    const BODY: bool = true;
    fn read(
        headers: &HeaderMap,
        query: Option<&str>,
        body: Result<&[u8], &BytesRejection>,
    ) -> Result<Fields, ApiError> {
        input::parse(headers, query, body)
    }
}

/// The query string's fields only (a GET: any body is ignored).
pub(crate) struct QueryFields(pub Fields);

impl ReadInput for QueryFields {
    const BODY: bool = false;
    fn read(
        headers: &HeaderMap,
        query: Option<&str>,
        _: Result<&[u8], &BytesRejection>,
    ) -> Result<QueryFields, ApiError> {
        input::parse(headers, query, Ok(&[])).map(QueryFields)
    }
}

/// An authenticated request: its user and its input.
pub(crate) struct Authed<T> {
    pub user: String,
    pub input: T,
}

/// An authenticated request of an admin: its user and its input.
pub(crate) struct Admin<T> {
    pub user: String,
    pub input: T,
}

/// A request split for the extractors: its headers, query string and (when the input
/// reads one) its body, read before anything is answered — as the handlers' `Bytes`
/// argument did — so a client still sending a body below the limit never meets a closed
/// connection.
struct Split {
    headers: HeaderMap,
    query: Option<String>,
    body: Result<Bytes, BytesRejection>,
}

async fn split<T: ReadInput>(req: Request, state: &Arc<ApiState>) -> Split {
    let headers = req.headers().clone();
    let query = req.uri().query().map(str::to_string);
    let body = if T::BODY {
        Bytes::from_request(req, state).await
    } else {
        Ok(Bytes::new())
    };
    Split {
        headers,
        query,
        body,
    }
}

impl Split {
    fn input<T: ReadInput>(&self) -> Result<T, ApiError> {
        T::read(&self.headers, self.query.as_deref(), self.body.as_deref())
    }
}

impl<T: ReadInput + Send> FromRequest<Arc<ApiState>> for Authed<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let r = split::<T>(req, state).await;
        let user = user_of(state, &r.headers)?;
        let input = r.input()?;
        Ok(Authed { user, input })
    }
}

impl<T: ReadInput + Send> FromRequest<Arc<ApiState>> for Admin<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let r = split::<T>(req, state).await;
        let user = user_of(state, &r.headers)?;
        if !state.users.admins.contains(&user) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("user {user} is not an admin (the users file's admins)"),
            ));
        }
        let input = r.input()?;
        Ok(Admin { user, input })
    }
}

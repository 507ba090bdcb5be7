//! Swift login: tempauth v1 (`ST_AUTH`/`ST_USER`/`ST_KEY`) and Keystone v3 password auth
//! (`OS_AUTH_URL`, `OS_USERNAME`, `OS_PASSWORD`, `OS_PROJECT_NAME`, `OS_USER_DOMAIN_NAME`,
//! `OS_PROJECT_DOMAIN_NAME`, optional `OS_REGION_NAME`, `OS_INTERFACE`).
//!
//! opendal's Swift service only takes a fixed token and storage URL. Tokens expire (tempauth
//! default: a day; Keystone: often an hour) while a nightly job runs, so Island logs in
//! itself and logs in again when the server answers 401 (see `swift/mod.rs`).

use serde_json::{json, Value};

use crate::store::{StoreError, StoreErrorKind};

/// How Island logs in to Swift.
#[derive(Clone, PartialEq, Eq)]
pub enum SwiftCredentials {
    /// Swift's v1 auth (tempauth, swauth, radosgw's `/auth/v1.0`).
    V1 {
        /// Auth endpoint, e.g. `http://127.0.0.1:8080/auth/v1.0`.
        auth_url: String,
        /// `account:user`.
        user: String,
        /// The user's key.
        key: String,
    },
    /// Keystone v3 password authentication, scoped to a project.
    KeystoneV3 {
        /// Keystone endpoint, e.g. `https://keystone.example.com:5000/v3`.
        auth_url: String,
        /// User name.
        username: String,
        /// Password.
        password: String,
        /// Project (tenant) name the token is scoped to.
        project_name: String,
        /// Domain of the user (`Default` when unset).
        user_domain_name: String,
        /// Domain of the project (`Default` when unset).
        project_domain_name: String,
        /// Catalog region to pick the object-store endpoint from (any when `None`).
        region: Option<String>,
        /// Catalog interface: `public` (default), `internal` or `admin`.
        interface: String,
    },
}

impl std::fmt::Debug for SwiftCredentials {
    /// Never prints keys or passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwiftCredentials::V1 { auth_url, user, .. } => f
                .debug_struct("V1")
                .field("auth_url", auth_url)
                .field("user", user)
                .finish_non_exhaustive(),
            SwiftCredentials::KeystoneV3 {
                auth_url,
                username,
                project_name,
                ..
            } => f
                .debug_struct("KeystoneV3")
                .field("auth_url", auth_url)
                .field("username", username)
                .field("project_name", project_name)
                .finish_non_exhaustive(),
        }
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl SwiftCredentials {
    /// Reads credentials from the environment the `swift` and `openstack` clients use:
    /// `ST_AUTH`/`ST_USER`/`ST_KEY` first, else the `OS_*` Keystone v3 variables.
    pub fn from_env() -> Option<SwiftCredentials> {
        if let (Some(auth_url), Some(user), Some(key)) = (
            env_nonempty("ST_AUTH"),
            env_nonempty("ST_USER"),
            env_nonempty("ST_KEY"),
        ) {
            return Some(SwiftCredentials::V1 {
                auth_url,
                user,
                key,
            });
        }
        let (auth_url, username, password, project_name) = (
            env_nonempty("OS_AUTH_URL")?,
            env_nonempty("OS_USERNAME")?,
            env_nonempty("OS_PASSWORD")?,
            env_nonempty("OS_PROJECT_NAME").or_else(|| env_nonempty("OS_TENANT_NAME"))?,
        );
        Some(SwiftCredentials::KeystoneV3 {
            auth_url,
            username,
            password,
            project_name,
            user_domain_name: env_nonempty("OS_USER_DOMAIN_NAME")
                .unwrap_or_else(|| "Default".into()),
            project_domain_name: env_nonempty("OS_PROJECT_DOMAIN_NAME")
                .unwrap_or_else(|| "Default".into()),
            region: env_nonempty("OS_REGION_NAME"),
            interface: env_nonempty("OS_INTERFACE").unwrap_or_else(|| "public".into()),
        })
    }

    fn auth_url(&self) -> &str {
        match self {
            SwiftCredentials::V1 { auth_url, .. }
            | SwiftCredentials::KeystoneV3 { auth_url, .. } => auth_url,
        }
    }
}

/// A logged-in Swift session: the token and the account's storage URL.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct SwiftToken {
    pub token: String,
    pub storage_url: String,
}

impl std::fmt::Debug for SwiftToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwiftToken")
            .field("storage_url", &self.storage_url)
            .finish_non_exhaustive()
    }
}

fn auth_error(
    kind: StoreErrorKind,
    temporary: bool,
    location: &str,
    message: String,
) -> StoreError {
    StoreError::new(kind, "login", location, "", message).with_temporary(temporary)
}

/// Maps a non-success login status to an error.
fn status_error(status: reqwest::StatusCode, location: &str, url: &str) -> StoreError {
    match status.as_u16() {
        401 | 403 => auth_error(
            StoreErrorKind::PermissionDenied,
            false,
            location,
            format!("login at {url} refused ({status}): wrong user, key or password"),
        ),
        404 => auth_error(
            StoreErrorKind::ConfigInvalid,
            false,
            location,
            format!("no auth service at {url} ({status})"),
        ),
        429 => auth_error(
            StoreErrorKind::RateLimited,
            true,
            location,
            format!("login at {url} rate limited"),
        ),
        s if s >= 500 => auth_error(
            StoreErrorKind::Unexpected,
            true,
            location,
            format!("auth service at {url} failed ({status})"),
        ),
        _ => auth_error(
            StoreErrorKind::Unexpected,
            false,
            location,
            format!("unexpected answer from auth service at {url} ({status})"),
        ),
    }
}

fn transport_error(e: reqwest::Error, location: &str, url: &str) -> StoreError {
    let (kind, msg) = crate::store::http::classify_transport(&e).unwrap_or((
        StoreErrorKind::Unexpected,
        format!("login request failed: {e}"),
    ));
    auth_error(kind, true, location, format!("{msg} (auth URL {url})")).with_source(e)
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|v| !v.is_empty())
}

/// Logs in and returns a token and storage URL.
pub(super) async fn login(
    client: &reqwest::Client,
    creds: &SwiftCredentials,
    location: &str,
) -> Result<SwiftToken, StoreError> {
    let url = creds.auth_url();
    match creds {
        SwiftCredentials::V1 { user, key, .. } => {
            let resp = client
                .get(url)
                .header("X-Auth-User", user)
                .header("X-Auth-Key", key)
                .send()
                .await
                .map_err(|e| transport_error(e, location, url))?;
            if !resp.status().is_success() {
                return Err(status_error(resp.status(), location, url));
            }
            let token = header(&resp, "x-auth-token").or_else(|| header(&resp, "x-storage-token"));
            let storage_url = header(&resp, "x-storage-url");
            match (token, storage_url) {
                (Some(token), Some(storage_url)) => Ok(SwiftToken { token, storage_url }),
                _ => Err(auth_error(
                    StoreErrorKind::Unexpected,
                    false,
                    location,
                    format!("login at {url} answered without X-Auth-Token/X-Storage-Url"),
                )),
            }
        }
        SwiftCredentials::KeystoneV3 {
            username,
            password,
            project_name,
            user_domain_name,
            project_domain_name,
            region,
            interface,
            ..
        } => {
            let tokens_url = keystone_tokens_url(url);
            let body = json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": username, "domain": {"name": user_domain_name}, "password": password}}},
                "scope": {"project": {"name": project_name, "domain": {"name": project_domain_name}}}
            }});
            let body = serde_json::to_vec(&body).map_err(|e| {
                auth_error(StoreErrorKind::Unexpected, false, location, format!("{e}"))
            })?;
            let resp = client
                .post(&tokens_url)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| transport_error(e, location, &tokens_url))?;
            if !resp.status().is_success() {
                return Err(status_error(resp.status(), location, &tokens_url));
            }
            let token = header(&resp, "x-subject-token").ok_or_else(|| {
                auth_error(
                    StoreErrorKind::Unexpected,
                    false,
                    location,
                    format!("Keystone at {tokens_url} answered without X-Subject-Token"),
                )
            })?;
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| transport_error(e, location, &tokens_url))?;
            let storage_url =
                object_store_endpoint(&bytes, region.as_deref(), interface).map_err(|m| {
                    auth_error(
                        StoreErrorKind::ConfigInvalid,
                        false,
                        location,
                        format!("Keystone at {tokens_url}: {m}"),
                    )
                })?;
            Ok(SwiftToken { token, storage_url })
        }
    }
}

/// `OS_AUTH_URL` may name the Keystone root or its `/v3`; tokens live at `/v3/auth/tokens`.
fn keystone_tokens_url(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    }
}

/// Picks the object-store endpoint from a Keystone v3 token response's catalog.
fn object_store_endpoint(
    body: &[u8],
    region: Option<&str>,
    interface: &str,
) -> Result<String, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("token response is not JSON: {e}"))?;
    let catalog = v
        .pointer("/token/catalog")
        .and_then(Value::as_array)
        .ok_or("token response has no service catalog (is the token project-scoped?)")?;
    for service in catalog {
        if service.get("type").and_then(Value::as_str) != Some("object-store") {
            continue;
        }
        let Some(endpoints) = service.get("endpoints").and_then(Value::as_array) else {
            continue;
        };
        for ep in endpoints {
            let iface = ep.get("interface").and_then(Value::as_str);
            let ep_region = ep
                .get("region_id")
                .or_else(|| ep.get("region"))
                .and_then(Value::as_str);
            if iface != Some(interface) {
                continue;
            }
            if region.is_some_and(|r| ep_region != Some(r)) {
                continue;
            }
            if let Some(url) = ep.get("url").and_then(Value::as_str) {
                return Ok(url.to_string());
            }
        }
    }
    Err(format!(
        "no object-store endpoint with interface {interface:?}{} in the catalog",
        region
            .map(|r| format!(" in region {r:?}"))
            .unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shape of a real Keystone v3 `POST /v3/auth/tokens` answer (trimmed).
    const CATALOG: &str = r#"{"token": {"methods": ["password"], "expires_at": "2026-11-22T05:00:00.000000Z",
      "project": {"name": "demo", "id": "p1", "domain": {"name": "Default", "id": "default"}},
      "catalog": [
        {"type": "identity", "name": "keystone", "endpoints": [
          {"interface": "public", "region_id": "RegionOne", "region": "RegionOne", "url": "http://ks:5000/v3/"}]},
        {"type": "object-store", "name": "swift", "endpoints": [
          {"interface": "internal", "region_id": "RegionOne", "region": "RegionOne", "url": "http://int1:8080/v1/AUTH_p1"},
          {"interface": "public", "region_id": "RegionOne", "region": "RegionOne", "url": "http://pub1:8080/v1/AUTH_p1"},
          {"interface": "public", "region_id": "RegionTwo", "region": "RegionTwo", "url": "http://pub2:8080/v1/AUTH_p1"}]}
      ]}}"#;

    #[test]
    fn catalog_picks_interface_and_region() {
        let b = CATALOG.as_bytes();
        assert_eq!(
            object_store_endpoint(b, None, "public").as_deref(),
            Ok("http://pub1:8080/v1/AUTH_p1")
        );
        assert_eq!(
            object_store_endpoint(b, Some("RegionTwo"), "public").as_deref(),
            Ok("http://pub2:8080/v1/AUTH_p1")
        );
        assert_eq!(
            object_store_endpoint(b, Some("RegionOne"), "internal").as_deref(),
            Ok("http://int1:8080/v1/AUTH_p1")
        );
        let err = object_store_endpoint(b, Some("RegionThree"), "public").unwrap_err();
        assert!(err.contains("RegionThree"), "{err}");
    }

    #[test]
    fn catalog_rejects_garbage_without_panicking() {
        assert!(object_store_endpoint(b"not json", None, "public").is_err());
        assert!(object_store_endpoint(b"{}", None, "public").is_err());
        assert!(object_store_endpoint(
            br#"{"token":{"catalog":[{"type":"object-store","endpoints":7}]}}"#,
            None,
            "public"
        )
        .is_err());
        assert!(object_store_endpoint(br#"{"token":{"catalog":[{"type":"object-store","endpoints":[{"interface":"public","url":3}]}]}}"#, None, "public").is_err());
    }

    #[test]
    fn keystone_url_forms() {
        assert_eq!(
            keystone_tokens_url("http://ks:5000/v3"),
            "http://ks:5000/v3/auth/tokens"
        );
        assert_eq!(
            keystone_tokens_url("http://ks:5000/v3/"),
            "http://ks:5000/v3/auth/tokens"
        );
        assert_eq!(
            keystone_tokens_url("http://ks:5000"),
            "http://ks:5000/v3/auth/tokens"
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let c = SwiftCredentials::V1 {
            auth_url: "http://a/auth/v1.0".into(),
            user: "t:u".into(),
            key: "supersecret".into(),
        };
        assert!(!format!("{c:?}").contains("supersecret"));
        let t = SwiftToken {
            token: "AUTH_tksecret".into(),
            storage_url: "http://s/v1/AUTH_t".into(),
        };
        assert!(!format!("{t:?}").contains("tksecret"));
    }
}

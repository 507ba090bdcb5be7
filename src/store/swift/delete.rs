//! Batch deletes on Swift with the bulk middleware (`POST ?bulk-delete`), which opendal's
//! Swift service does not use: one request per chunk of `SWIFT_MAX_BATCH_DELETE` names,
//! resending only the names an expired token was refused for after a fresh login.

use super::{encode_path, Session, SwiftStore};
use crate::store::{StoreError, StoreErrorKind};

/// Most logins one bulk delete may use: the token is checked for every name, so a slow
/// server and short-lived tokens can need several, but each must make progress.
const BULK_DELETE_MAX_LOGINS: u32 = 20;

/// What one `?bulk-delete` answer says (Swift answers 200 and reports per-name results in
/// a JSON body, including refusals of an expired token).
#[derive(Debug, PartialEq, Eq)]
enum BulkOutcome {
    /// Every name was deleted or already absent.
    Done,
    /// The token was refused for these names (all of them when the list is empty); the
    /// names before them were processed.
    Unauthorized(Vec<String>),
    /// Other per-name failures: `(name, status)` pairs.
    Failed(Vec<(String, String)>),
}

/// Parses a `?bulk-delete` JSON answer without trusting its shape.
fn parse_bulk_delete(body: &[u8]) -> Result<BulkOutcome, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("bulk-delete answer is not JSON: {e}"))?;
    let status = v
        .get("Response Status")
        .and_then(serde_json::Value::as_str)
        .ok_or("bulk-delete answer has no \"Response Status\"")?;
    let mut refused = Vec::new();
    let mut failed = Vec::new();
    if let Some(errors) = v.get("Errors").and_then(serde_json::Value::as_array) {
        for e in errors {
            let pair = e.as_array().map(Vec::as_slice).unwrap_or_default();
            let name = pair
                .first()
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?");
            let st = pair
                .get(1)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?");
            if st.starts_with("401") {
                refused.push(name.to_string());
            } else {
                failed.push((name.to_string(), st.to_string()));
            }
        }
    }
    if !failed.is_empty() {
        return Ok(BulkOutcome::Failed(failed));
    }
    if !refused.is_empty() || status.starts_with("401") {
        return Ok(BulkOutcome::Unauthorized(refused));
    }
    if status.starts_with('2') {
        Ok(BulkOutcome::Done)
    } else {
        Ok(BulkOutcome::Failed(vec![(
            String::new(),
            status.to_string(),
        )]))
    }
}

impl SwiftStore {
    /// The `?bulk-delete` line for `key`: `/container/object`, URL-encoded.
    fn bulk_line(&self, key: &str) -> String {
        format!(
            "/{}/{}",
            encode_path(&self.target.container),
            encode_path(&format!("{}{}", self.target.prefix, key))
        )
    }

    /// Deletes at most [`super::SWIFT_MAX_BATCH_DELETE`] keys, logging in again and resending
    /// only the refused names while each attempt makes progress.
    pub(super) async fn bulk_delete_chunk(&self, chunk: &[String]) -> Result<(), StoreError> {
        let mut pending: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let mut logins = 0;
        while let Some(first) = pending.first().copied() {
            let s = self.current();
            let refused = self.bulk_delete(&s, &pending).await?;
            if refused.is_empty() {
                return Ok(());
            }
            let progress = refused.len() < pending.len();
            if logins >= BULK_DELETE_MAX_LOGINS || (!progress && logins > 0) {
                return Err(StoreError::new(
                    StoreErrorKind::PermissionDenied,
                    "delete_batch",
                    &self.location,
                    first,
                    format!(
                        "token refused for {} names after {logins} logins",
                        refused.len()
                    ),
                ));
            }
            logins += 1;
            self.relogin(s.generation).await?;
            pending = refused;
        }
        Ok(())
    }

    /// One `POST ?bulk-delete`; returns the keys whose deletion the token did not cover.
    async fn bulk_delete<'k>(
        &self,
        s: &Session,
        keys: &[&'k str],
    ) -> Result<Vec<&'k str>, StoreError> {
        let first = keys.first().copied().unwrap_or("");
        let lines: Vec<String> = keys.iter().map(|k| self.bulk_line(k)).collect();
        let mut body = lines.join("\n");
        body.push('\n');
        let url = format!("{}?bulk-delete", s.token.storage_url.trim_end_matches('/'));
        let resp = self
            .client
            .post(&url)
            .header("X-Auth-Token", &s.token.token)
            .header("Accept", "application/json")
            .header("Content-Type", "text/plain")
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error("delete_batch", first, e))?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Ok(keys.to_vec());
        }
        if !resp.status().is_success() {
            return Err(self.status_error("delete_batch", first, resp.status()));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error("delete_batch", first, e))?;
        let fail = |m: String| {
            StoreError::new(
                StoreErrorKind::Unexpected,
                "delete_batch",
                &self.location,
                first,
                m,
            )
        };
        match parse_bulk_delete(&bytes).map_err(fail)? {
            BulkOutcome::Done => Ok(Vec::new()),
            BulkOutcome::Unauthorized(names) => {
                // Swift echoes the names as sent or decoded; unknown names mean "all".
                let refused: Vec<&str> = keys
                    .iter()
                    .zip(&lines)
                    .filter(|(k, line)| {
                        names
                            .iter()
                            .any(|n| n == *line || n.ends_with(&format!("/{}", k)))
                    })
                    .map(|(k, _)| *k)
                    .collect();
                Ok(if refused.is_empty() {
                    keys.to_vec()
                } else {
                    refused
                })
            }
            BulkOutcome::Failed(list) => {
                let shown: Vec<String> = list
                    .iter()
                    .take(5)
                    .map(|(n, st)| format!("{n}: {st}"))
                    .collect();
                let temporary = list.iter().any(|(_, st)| st.starts_with('5'));
                Err(fail(format!(
                    "bulk delete failed for {} names ({})",
                    list.len(),
                    shown.join(", ")
                ))
                .with_temporary(temporary))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_bulk_delete, BulkOutcome};

    /// Answers captured from Swift 2.30's bulk middleware.
    #[test]
    fn bulk_delete_answers() {
        let ok = br#"{"Response Status": "200 OK", "Response Body": "", "Number Deleted": 1, "Number Not Found": 2, "Errors": []}"#;
        assert_eq!(parse_bulk_delete(ok), Ok(BulkOutcome::Done));
        let expired = br#"{"Response Status": "400 Bad Request", "Response Body": "", "Number Deleted": 0, "Number Not Found": 0, "Errors": [["/island-test/bd/1", "401 Unauthorized"]]}"#;
        assert_eq!(
            parse_bulk_delete(expired),
            Ok(BulkOutcome::Unauthorized(vec!["/island-test/bd/1".into()]))
        );
        let conflict = br#"{"Response Status": "400 Bad Request", "Response Body": "", "Number Deleted": 0, "Number Not Found": 1, "Errors": [["/island-test", "409 Conflict"]]}"#;
        assert_eq!(
            parse_bulk_delete(conflict),
            Ok(BulkOutcome::Failed(vec![(
                "/island-test".into(),
                "409 Conflict".into()
            )]))
        );
        let bad = br#"{"Response Status": "502 Bad Gateway", "Errors": []}"#;
        assert!(matches!(parse_bulk_delete(bad), Ok(BulkOutcome::Failed(_))));
        assert!(parse_bulk_delete(b"<html>").is_err());
        assert!(parse_bulk_delete(br#"{"Errors": [[1, 2], 3]}"#).is_err());
        let odd = br#"{"Response Status": "400 Bad Request", "Errors": [[1, 2], 3]}"#;
        assert!(matches!(parse_bulk_delete(odd), Ok(BulkOutcome::Failed(v)) if v.len() == 2));
    }
}

//! Ranged reads on Swift with Island's own `GET`, so that the answer alone decides the
//! outcome.
//!
//! Going through opendal, a range past the end of an object surfaced as an opaque
//! `Unexpected` error (a `416`, or a `206` shorter than asked), and only a second request
//! (`HEAD` for the size) could tell "past the end" from a real failure. That second request
//! is a race: the token can expire between the two (tempauth tokens live 20 s in the test
//! servers), or the object can be replaced or deleted, and the caller then saw `Unexpected`
//! instead of `InvalidRange` and aborted where it would have treated the object as damaged.
//! Swift states the object's size in every ranged answer (`Content-Range: bytes a-b/SIZE`
//! on `206`, `bytes */SIZE` on `416`), so one request suffices:
//!
//! | answer | result |
//! |---|---|
//! | `206`, `Content-Range` covers the whole range, body that long | the bytes |
//! | `206` ending before the range does (object shorter) | `InvalidRange` |
//! | `416` (range starts at or past the end, or the object is empty) | `InvalidRange` |
//! | `200` (range ignored): the whole object | the slice if it is long enough, else `InvalidRange` |
//! | body shorter than its `Content-Length` (connection cut) | `Unexpected`, temporary |
//! | `206` whose `Content-Range` does not match the request | `Unexpected`, permanent |
//! | `404` | `NotFound`; `401`/`403` ⇒ `PermissionDenied` (re-login by the caller) |

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use reqwest::StatusCode;

use super::{Session, SwiftStore};
use crate::store::{StoreError, StoreErrorKind};

const OP: &str = "get_range";

/// A parsed `Content-Range` header: the byte span sent (inclusive, absent in `bytes */N`)
/// and the object's total size (absent in `bytes a-b/*`).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ContentRange {
    pub(super) span: Option<(u64, u64)>,
    pub(super) size: Option<u64>,
}

/// Parses `bytes a-b/N`, `bytes a-b/*` and `bytes */N`; anything else is `None`.
pub(super) fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, size) = rest.split_once('/')?;
    let size = match size.trim() {
        "*" => None,
        n => Some(n.parse::<u64>().ok()?),
    };
    let span = match span.trim() {
        "*" => None,
        s => {
            let (a, b) = s.split_once('-')?;
            let (a, b) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
            if a > b {
                return None;
            }
            Some((a, b))
        }
    };
    if span.is_none() && size.is_none() {
        return None;
    }
    Some(ContentRange { span, size })
}

impl SwiftStore {
    fn range_error(&self, kind: StoreErrorKind, key: &str, msg: String) -> StoreError {
        StoreError::new(kind, OP, &self.location, key, msg)
    }

    fn past_end(&self, key: &str, range: &Range<u64>, size: Option<u64>) -> StoreError {
        let size = size.map_or_else(|| "unknown".to_string(), |n| n.to_string());
        self.range_error(
            StoreErrorKind::InvalidRange,
            key,
            format!(
                "range {}..{} lies past the end of the object (size {size})",
                range.start, range.end
            ),
        )
    }

    /// One ranged `GET` of a non-empty range (`range.start < range.end`), classified as
    /// the module documentation says.
    pub(super) async fn get_range_once(
        &self,
        s: Arc<Session>,
        key: &str,
        range: Range<u64>,
    ) -> Result<Bytes, StoreError> {
        let want = range.end - range.start;
        let resp = self
            .client
            .get(self.object_url(&s, key))
            .header("X-Auth-Token", &s.token.token)
            .header(
                reqwest::header::RANGE,
                format!("bytes={}-{}", range.start, range.end - 1),
            )
            .send()
            .await
            .map_err(|e| self.transport_error(OP, key, e))?;
        let status = resp.status();
        let content_range = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let parsed = content_range.as_deref().and_then(parse_content_range);
        match status {
            StatusCode::PARTIAL_CONTENT | StatusCode::OK => {}
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Err(self.past_end(key, &range, parsed.and_then(|c| c.size)));
            }
            StatusCode::NOT_FOUND => {
                return Err(self.range_error(
                    StoreErrorKind::NotFound,
                    key,
                    "object not found".into(),
                ));
            }
            other => return Err(self.status_error(OP, key, other)),
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(OP, key, e))?;
        if status == StatusCode::OK {
            // Range ignored: the body is the whole object.
            let len = body.len() as u64;
            if range.end > len {
                return Err(self.past_end(key, &range, Some(len)));
            }
            return Ok(body.slice(range.start as usize..range.end as usize));
        }
        let Some(ContentRange {
            span: Some((first, last)),
            size,
        }) = parsed
        else {
            return Err(self.range_error(
                StoreErrorKind::Unexpected,
                key,
                format!("206 answer with Content-Range {content_range:?}"),
            ));
        };
        let sent = last - first + 1;
        if body.len() as u64 != sent {
            return Err(self
                .range_error(
                    StoreErrorKind::Unexpected,
                    key,
                    format!(
                        "truncated answer: {} of {sent} bytes for range {}..{}",
                        body.len(),
                        range.start,
                        range.end
                    ),
                )
                .with_temporary(true));
        }
        if first != range.start || sent > want {
            return Err(self.range_error(
                StoreErrorKind::Unexpected,
                key,
                format!(
                    "asked for {}..{}, Swift sent bytes {first}-{last}",
                    range.start, range.end
                ),
            ));
        }
        if sent < want {
            return Err(match size {
                Some(n) if n < range.end => self.past_end(key, &range, Some(n)),
                _ => self.range_error(
                    StoreErrorKind::Unexpected,
                    key,
                    format!(
                        "short answer: bytes {first}-{last} for range {}..{} of an object \
                         of size {size:?}",
                        range.start, range.end
                    ),
                ),
            });
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_content_range, ContentRange};

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 4000-4095/4096"),
            Some(ContentRange {
                span: Some((4000, 4095)),
                size: Some(4096)
            })
        );
        assert_eq!(
            parse_content_range("bytes */0"),
            Some(ContentRange {
                span: None,
                size: Some(0)
            })
        );
        assert_eq!(
            parse_content_range("bytes 0-0/*"),
            Some(ContentRange {
                span: Some((0, 0)),
                size: None
            })
        );
        for bad in [
            "",
            "bytes",
            "bytes */*",
            "bytes 5-4/10",
            "bytes 1-2",
            "items 0-1/2",
            "bytes -1-2/3",
            "bytes 0-99999999999999999999/1",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }
}

//! Request inputs: JSON objects or form-encoded bodies (and query strings), read into one
//! map and checked field by field so a response lists every problem at once. Fields are
//! typed strictly — a wrong type is a 422, never a panic or a 500.

use super::error::ApiError;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap};
use serde_json::{Map, Value};

/// The fields of one request.
#[derive(Debug, Default)]
pub(super) struct Fields {
    map: Map<String, Value>,
    /// Problems found so far (reported together as a 422).
    pub problems: Vec<String>,
}

/// Read `body` as JSON (`application/json`) or as a form (`application/x-www-form-urlencoded`,
/// or no content type), then add the query string's fields.
pub(super) fn parse(
    headers: &HeaderMap,
    query: Option<&str>,
    body: Result<&[u8], &BytesRejection>,
) -> Result<Fields, ApiError> {
    // An unreadable or oversized body (413) keeps its status but gets the JSON format.
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let mut map = Map::new();
    if !body.iter().all(u8::is_ascii_whitespace) {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match ct.as_str() {
            "application/json" => match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(m)) => map = m,
                Ok(_) => return Err(ApiError::bad_request("the JSON body must be an object")),
                Err(e) => return Err(ApiError::bad_request(format!("invalid JSON body: {e}"))),
            },
            "application/x-www-form-urlencoded" | "" => form_into(&mut map, body, "body")?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unsupported Content-Type {other:?}: send application/json or application/x-www-form-urlencoded"
                )))
            }
        }
    }
    if let Some(q) = query {
        form_into(&mut map, q.as_bytes(), "query string")?;
    }
    Ok(Fields {
        map,
        problems: Vec::new(),
    })
}

fn form_into(map: &mut Map<String, Value>, bytes: &[u8], what: &str) -> Result<(), ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::bad_request(format!("the {what} is not UTF-8")));
    }
    for (k, v) in url::form_urlencoded::parse(bytes) {
        if map
            .insert(k.to_string(), Value::String(v.into_owned()))
            .is_some()
        {
            return Err(ApiError::bad_request(format!("field {k:?} is given twice")));
        }
    }
    Ok(())
}

impl Fields {
    /// Record a problem.
    pub(super) fn problem(&mut self, message: String) {
        self.problems.push(message);
    }

    fn missing(&mut self, name: &str, required: bool) {
        if required {
            self.problem(format!("{name} is required"));
        }
    }

    /// A string field (at most 1024 bytes).
    pub(super) fn string(&mut self, name: &str, required: bool) -> Option<String> {
        match self.map.get(name) {
            None | Some(Value::Null) => {
                self.missing(name, required);
                None
            }
            Some(Value::String(s)) if s.len() <= 1024 => Some(s.clone()),
            Some(Value::String(_)) => {
                self.problem(format!("{name} is longer than 1024 bytes"));
                None
            }
            Some(_) => {
                self.problem(format!("{name} must be a string"));
                None
            }
        }
    }

    /// A list of 1-100 strings: a JSON array, or (forms, query strings) one
    /// comma-separated string.
    pub(super) fn strings(&mut self, name: &str, required: bool) -> Option<Vec<String>> {
        let list: Option<Vec<String>> = match self.map.get(name) {
            None | Some(Value::Null) => {
                self.missing(name, required);
                return None;
            }
            Some(Value::String(s)) => Some(s.split(',').map(|x| x.trim().to_string()).collect()),
            Some(Value::Array(a)) => a.iter().map(|v| v.as_str().map(str::to_string)).collect(),
            Some(_) => None,
        };
        match list {
            Some(l)
                if (1..=100).contains(&l.len())
                    && l.iter().all(|x| (1..=1024).contains(&x.len())) =>
            {
                Some(l)
            }
            _ => {
                self.problem(format!(
                    "{name} must be a list of 1-100 non-empty strings (JSON array or comma-separated)"
                ));
                None
            }
        }
    }

    /// A non-negative integer field, as a JSON number or a decimal string.
    pub(super) fn integer(&mut self, name: &str, required: bool) -> Option<u64> {
        let parsed = match self.map.get(name) {
            None | Some(Value::Null) => {
                self.missing(name, required);
                return None;
            }
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) => {
                s.parse().ok()
            }
            Some(_) => None,
        };
        if parsed.is_none() {
            self.problem(format!("{name} must be a non-negative integer"));
        }
        parsed
    }

    /// A boolean field: JSON true/false, or "true"/"false"/"1"/"0".
    pub(super) fn boolean(&mut self, name: &str) -> Option<bool> {
        let parsed = match self.map.get(name) {
            None | Some(Value::Null) => return None,
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) => match s.as_str() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => None,
            },
            Some(_) => None,
        };
        if parsed.is_none() {
            self.problem(format!("{name} must be true or false"));
        }
        parsed
    }

    /// Refuse fields not in `allowed` (catches misspelled names).
    pub(super) fn only(&mut self, allowed: &[&str]) {
        let unknown: Vec<String> = self
            .map
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            self.problem(format!(
                "unknown field {k:?} (expected one of: {})",
                allowed.join(", ")
            ));
        }
    }

    /// 422 with every problem, if any.
    pub(super) fn finish(self) -> Result<(), ApiError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ApiError::unprocessable(self.problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h
    }

    #[test]
    fn json_form_and_types() {
        let mut f = parse(&json_headers(), None, Ok(br#"{"size": 2, "tag": 5}"#)).unwrap();
        assert_eq!(f.integer("size", true), Some(2));
        assert_eq!(f.string("tag", true), None);
        assert_eq!(f.string("visibility", true), None);
        assert_eq!(f.problems.len(), 2, "{:?}", f.problems);
        let mut f = parse(&HeaderMap::new(), Some("force=1"), Ok(b"size=3&tag=a+b")).unwrap();
        assert_eq!(f.integer("size", true), Some(3));
        assert_eq!(f.string("tag", true).as_deref(), Some("a b"));
        assert_eq!(f.boolean("force"), Some(true));
        f.only(&["size", "tag"]);
        assert_eq!(f.problems.len(), 1);
        assert!(parse(&json_headers(), None, Ok(b"[1]")).is_err());
        assert!(parse(&json_headers(), None, Ok(b"{")).is_err());
        assert!(parse(&HeaderMap::new(), None, Ok(b"a=1&a=2")).is_err());
        let mut f = parse(&json_headers(), None, Ok(br#"{"size": -1}"#)).unwrap();
        assert_eq!(f.integer("size", true), None);
    }
}

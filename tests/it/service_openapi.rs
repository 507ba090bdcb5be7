//! Responses of `island serve` against its OpenAPI document (`format-spec/openapi.json`):
//! every reply the service tests receive is checked here (status declared for the path and
//! method, body valid against the declared schema), and the served document is the file.

use super::service_common::{Site, ALICE};
use serde_json::Value;
use std::sync::OnceLock;

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        serde_json::from_str(include_str!("../../format-spec/openapi.json")).expect("valid JSON")
    })
}

fn resolve(schema: &Value) -> &Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().expect("ref name");
            &spec()["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// Check `v` against the subset of JSON Schema the document uses.
fn validate(schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let s = resolve(schema);
    if v.is_null() {
        return if s["nullable"] == true || s.get("type").is_none() {
            Ok(())
        } else {
            Err(format!("{at}: null where not nullable"))
        };
    }
    let ty_ok = match s["type"].as_str() {
        None => true,
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_u64() || v.is_i64(),
        Some("boolean") => v.is_boolean(),
        Some(other) => return Err(format!("{at}: schema type {other} unsupported")),
    };
    if !ty_ok {
        return Err(format!("{at}: {v} is not of type {}", s["type"]));
    }
    if let Some(e) = s["enum"].as_array() {
        if !e.contains(v) {
            return Err(format!("{at}: {v} not in {e:?}"));
        }
    }
    if let (Some(min), Some(n)) = (s["minimum"].as_u64(), v.as_u64()) {
        if n < min {
            return Err(format!("{at}: {n} < {min}"));
        }
    }
    if let (Some(max), Some(n)) = (s["maximum"].as_u64(), v.as_u64()) {
        if n > max {
            return Err(format!("{at}: {n} > {max}"));
        }
    }
    if let Some(items) = v.as_array() {
        if let Some(min) = s["minItems"].as_u64() {
            if (items.len() as u64) < min {
                return Err(format!("{at}: fewer than {min} items"));
            }
        }
        for (i, item) in items.iter().enumerate() {
            validate(&s["items"], item, &format!("{at}[{i}]"))?;
        }
    }
    if let Some(obj) = v.as_object() {
        for r in s["required"].as_array().into_iter().flatten() {
            let r = r.as_str().expect("required names are strings");
            if !obj.contains_key(r) {
                return Err(format!("{at}: required {r} missing in {v}"));
            }
        }
        if let Some(props) = s["properties"].as_object() {
            for (k, val) in obj {
                match props.get(k) {
                    Some(p) => validate(p, val, &format!("{at}.{k}"))?,
                    None => return Err(format!("{at}: undocumented property {k}")),
                }
            }
        }
    }
    Ok(())
}

/// The document's path template matching `path` (query stripped), if any.
fn template(path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or(path);
    let segs: Vec<&str> = path.split('/').collect();
    spec()["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .find(|t| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segs.len()
                && ts
                    .iter()
                    .zip(&segs)
                    .all(|(t, s)| t.starts_with('{') || t == s)
        })
}

/// Panic unless the reply to `method path` is declared by the document and its body is
/// valid. Paths the document does not know (the 404 fallback) must be 404s.
pub fn check(method: &str, path: &str, status: u16, body: &Value) {
    let Some(t) = template(path) else {
        assert_eq!(
            status, 404,
            "{method} {path}: undocumented path answered {status}"
        );
        return;
    };
    let op = &spec()["paths"][t][method.to_ascii_lowercase()];
    assert!(
        op.is_object(),
        "{method} {t} is not in the OpenAPI document"
    );
    let resp = &op["responses"][status.to_string()];
    assert!(
        resp.is_object(),
        "{method} {path}: status {status} is not declared in the OpenAPI document"
    );
    let schema = &resp["content"]["application/json"]["schema"];
    if schema.is_object() {
        if let Err(e) = validate(schema, body, &format!("{method} {path} {status}")) {
            panic!("response does not match the OpenAPI document: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_document_is_the_file_and_the_validator_bites() {
    let site = Site::new();
    let s = site.serve("host-a", &[]);
    let served = s.get("/api/openapi.json", ALICE).await.expect(200);
    assert_eq!(&served, spec());
    assert!(served["paths"]["/api/create"]["post"].is_object());
    // The validator refuses what the document does not allow.
    let disk = serde_json::json!({"users": "0", "created": "x", "visibility": "hidden",
        "tag": "", "owner": "a", "uuid": "u", "size": "1"});
    let schema = serde_json::json!({"$ref": "#/components/schemas/Disk"});
    assert!(validate(&schema, &disk, "disk").is_err(), "enum checked");
    let mut ok = disk.clone();
    ok["visibility"] = "public".into();
    assert!(validate(&schema, &ok, "disk").is_ok());
    ok["extra"] = 1.into();
    assert!(
        validate(&schema, &ok, "disk").is_err(),
        "undocumented property"
    );
    let err = serde_json::json!({"message": []});
    let e = serde_json::json!({"$ref": "#/components/schemas/Error"});
    assert!(validate(&e, &err, "error").is_err(), "minItems checked");
}

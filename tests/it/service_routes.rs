//! Every route of `island serve`, table-driven from its OpenAPI document
//! (`format-spec/openapi.json`), which must list exactly the router's paths
//! (`src/api/mod.rs`) and methods (others answer 405). For each route, derived from the
//! inputs the document declares (request body schema, query parameters):
//! - no token and an unknown token: 401 (the document itself is public);
//! - hostile path parameters (traversal, NUL, over-long, upper-case uuid): a 4xx;
//! - each required field missing, each field wrong-typed, each bound (minimum, maximum,
//!   enum) crossed, an unknown field: 422 naming the field;
//! - unreadable bodies (malformed JSON, not an object, unsupported content type, invalid
//!   UTF-8, a field given twice): 400; a body over 64 KiB: 413.
//!
//! Every reply must carry `{"message": [...]}` and (through `Server::call`) match the
//! document; none may be a 5xx. Afterwards the server still serves and nothing was created.

use super::service_common::{Body, Server, Site, ALICE};
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

const NIL: &str = "00000000-0000-4000-8000-000000000000";
const SNAPSHOT_ID: &str = "20260101T000000.000000Z-0000000000000000";

fn spec() -> Value {
    serde_json::from_str(include_str!("../../format-spec/openapi.json")).expect("valid JSON")
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => &spec["components"]["schemas"][r.rsplit('/').next().expect("name")],
        None => schema,
    }
}

/// The paths `src/api/mod.rs` routes (the string literal after each `.route(`).
fn router_paths() -> BTreeSet<String> {
    let src = include_str!("../../src/api/mod.rs");
    src.split(".route(")
        .skip(1)
        .filter_map(|rest| {
            let start = rest.find('"')? + 1;
            let len = rest[start..].find('"')?;
            Some(rest[start..start + len].to_string())
        })
        .collect()
}

/// A valid body for each route taking one, so each case has exactly one problem.
fn base_body(method: &str, template: &str) -> Map<String, Value> {
    let v = match (method, template) {
        ("post", "/api/create") => json!({"size": 1, "tag": "t", "visibility": "public"}),
        ("post", t) if t.starts_with("/api/attach") || t.contains("detach") => {
            json!({"node": "n", "vm_id": "v"})
        }
        ("post", t) if t.starts_with("/api/hotattach") => {
            json!({"node": "n", "vm_id": "v", "target": "vdb"})
        }
        ("post", t) if t.starts_with("/api/revert") => json!({"snapshot": SNAPSHOT_ID}),
        ("post", t) if t.starts_with("/api/copy") => json!({"target": "s3://not-allowed/x"}),
        ("post", "/api/fix") => json!({"fixes": ["clean:gc"]}),
        _ => json!({}),
    };
    v.as_object().expect("object").clone()
}

/// Values of the wrong type for a field of `schema`.
fn wrong_types(schema: &Value) -> Vec<Value> {
    match schema["type"].as_str() {
        Some("string") => vec![json!(5), json!(["x"]), json!({"a": 1})],
        Some("integer") => vec![json!("many"), json!(-1), json!(1.5), json!(true)],
        Some("boolean") => vec![json!("perhaps"), json!(2)],
        Some("array") => vec![json!(7), json!([1]), json!([])],
        other => panic!("no wrong-type values for {other:?}"),
    }
}

/// Values crossing the bounds `schema` declares.
fn out_of_range(schema: &Value) -> Vec<Value> {
    let mut v = Vec::new();
    if let Some(min) = schema["minimum"].as_u64().filter(|m| *m > 0) {
        v.push(json!(min - 1));
    }
    if let Some(max) = schema["maximum"].as_u64() {
        v.push(json!(max + 1));
    }
    if schema["enum"].is_array() {
        v.push(json!("not-one-of-them"));
    }
    v
}

/// One request and what must come back.
struct Case {
    what: String,
    method: Method,
    path: String,
    token: Option<&'static str>,
    body: Body<'static>,
    status: u16,
    /// A word the messages must contain (empty: any message).
    word: String,
}

fn json_body(m: &Map<String, Value>) -> Body<'static> {
    Body::Json(Value::Object(m.clone()))
}

/// The cases of one route.
fn cases(spec: &Value, method: &str, template: &str, op: &Value, uuid: &str) -> Vec<Case> {
    let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
    let fill = |uuid: &str, id: &str| template.replace("{uuid}", uuid).replace("{id}", id);
    let id = if template.contains("operations") {
        NIL
    } else {
        SNAPSHOT_ID
    };
    let path = fill(uuid, id);
    let base = base_body(method, template);
    let mut out = Vec::new();
    let mut push = |what: String, path: String, token, body, status, word: &str| {
        out.push(Case {
            what: format!("{} {template}: {what}", m.as_str()),
            method: m.clone(),
            path,
            token,
            body,
            status,
            word: word.to_string(),
        })
    };

    // Authentication.
    if op["responses"]["401"].is_object() {
        push(
            "no token".into(),
            path.clone(),
            None,
            Body::None,
            401,
            "Authorization",
        );
        push(
            "unknown token".into(),
            path.clone(),
            Some("not-a-known-token"),
            Body::None,
            401,
            "unknown token",
        );
    }

    // Hostile path parameters: any client error, never a 5xx.
    let hostile = [
        "..%2F..%2Fservice%2Fvolumes".to_string(),
        "%2e%2e".to_string(),
        "%00".to_string(),
        "x".repeat(1000),
        uuid.to_uppercase(),
    ];
    for bad in &hostile {
        for (param, p) in [("uuid", fill(bad, id)), ("id", fill(uuid, bad))] {
            if template.contains(&format!("{{{param}}}")) {
                push(
                    format!("{param} = {:.20}", bad),
                    p,
                    Some(ALICE),
                    json_body(&base),
                    0,
                    "",
                );
            }
        }
    }

    // Declared inputs: the request body's properties, then query parameters.
    let body_schema = resolve(
        spec,
        &op["requestBody"]["content"]["application/json"]["schema"],
    );
    let required: Vec<&str> = body_schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if let Some(props) = body_schema["properties"].as_object() {
        for name in &required {
            let mut b = base.clone();
            b.remove(*name);
            push(
                format!("{name} missing"),
                path.clone(),
                Some(ALICE),
                json_body(&b),
                422,
                &format!("{name} is required"),
            );
        }
        for (name, schema) in props {
            let schema = resolve(spec, schema);
            for bad in wrong_types(schema).into_iter().chain(out_of_range(schema)) {
                let mut b = base.clone();
                b.insert(name.clone(), bad.clone());
                push(
                    format!("{name} = {bad}"),
                    path.clone(),
                    Some(ALICE),
                    json_body(&b),
                    422,
                    name,
                );
            }
        }
        let mut b = base.clone();
        b.insert("zz_unknown".into(), json!(1));
        push(
            "unknown field".into(),
            path.clone(),
            Some(ALICE),
            json_body(&b),
            422,
            "unknown field",
        );
        let first = props.keys().next().expect("a property");
        let unreadable: [(&str, Body<'static>, u16, &str); 6] = [
            (
                "malformed JSON",
                Body::Raw("application/json", b"{\"x\":".to_vec()),
                400,
                "invalid JSON",
            ),
            ("JSON array", Body::Json(json!([1])), 400, "object"),
            (
                "text/plain",
                Body::Raw("text/plain", b"a=1".to_vec()),
                400,
                "Content-Type",
            ),
            (
                "form not UTF-8",
                Body::Raw("application/x-www-form-urlencoded", vec![0xff, 0xfe]),
                400,
                "UTF-8",
            ),
            (
                "field twice",
                Body::Raw(
                    "application/x-www-form-urlencoded",
                    format!("{first}=a&{first}=b").into_bytes(),
                ),
                400,
                "twice",
            ),
            (
                "body over 64 KiB",
                Body::Raw(
                    "application/x-www-form-urlencoded",
                    format!("tag={}", "a".repeat(100 << 10)).into_bytes(),
                ),
                413,
                "",
            ),
        ];
        for (what, body, status, word) in unreadable {
            push(what.into(), path.clone(), Some(ALICE), body, status, word);
        }
    }
    for p in op["parameters"].as_array().into_iter().flatten() {
        if p["in"] != "query" {
            continue;
        }
        let name = p["name"].as_str().expect("name");
        for bad in wrong_types(&p["schema"]) {
            let text = bad.as_str().map_or(bad.to_string(), str::to_string);
            let q: String = url::form_urlencoded::Serializer::new(String::new())
                .append_pair(name, &text)
                .finish();
            push(
                format!("?{q}"),
                format!("{path}?{q}"),
                Some(ALICE),
                Body::None,
                422,
                name,
            );
        }
        push(
            "unknown query field".into(),
            format!("{path}?zz_unknown=1"),
            Some(ALICE),
            Body::None,
            422,
            "unknown field",
        );
    }
    out
}

/// Methods a documented path does not declare must be refused with 405 and a message
/// (checked with a plain client: 405 is no declared response).
async fn undeclared_methods(s: &Server, template: &str, declared: &[String], uuid: &str) -> u32 {
    let path = template
        .replace("{uuid}", uuid)
        .replace("{id}", SNAPSHOT_ID);
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let mut n = 0;
    for m in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        if declared.iter().any(|d| d.eq_ignore_ascii_case(m)) {
            continue;
        }
        let r = http
            .request(
                Method::from_bytes(m.as_bytes()).expect("method"),
                format!("{}{path}", s.base),
            )
            .header("Authorization", format!("Bearer {ALICE}"))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let body: Value =
            serde_json::from_slice(&r.bytes().await.expect("body")).expect("JSON body");
        assert_eq!(status, 405, "{m} {template}: {body}");
        assert!(
            body["message"][0].as_str().is_some_and(|t| !t.is_empty()),
            "{m} {template}: {body}"
        );
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_bad_input_with_4xx_messages() {
    let spec = spec();
    let paths = spec["paths"].as_object().expect("paths");
    let documented: BTreeSet<String> = paths.keys().cloned().collect();
    assert_eq!(
        router_paths(),
        documented,
        "the router's paths and the OpenAPI document's differ"
    );

    let site = Site::new();
    let s = site.serve("host-a", &["--max-size-gib", "8"]);
    let uuid = s
        .create(
            ALICE,
            json!({"size": 1, "tag": "t", "visibility": "public"}),
        )
        .await;
    let (mut routes, mut total, mut refused_methods) = (0, 0, 0);
    for (template, item) in paths {
        let ops: Vec<(&String, &Value)> = item
            .as_object()
            .expect("path item")
            .iter()
            .filter(|(k, _)| k.as_str() != "parameters")
            .collect();
        let declared: Vec<String> = ops.iter().map(|(k, _)| k.to_string()).collect();
        refused_methods += undeclared_methods(&s, template, &declared, &uuid).await;
        for (method, op) in ops {
            routes += 1;
            for c in cases(&spec, method, template, op, &uuid) {
                total += 1;
                let r = s.call(c.method, &c.path, c.token, c.body).await;
                let status = r.status.as_u16();
                if c.status == 0 {
                    assert!(
                        (400..500).contains(&status) && status != 401,
                        "{}: {status} {}",
                        c.what,
                        r.body
                    );
                } else {
                    assert_eq!(status, c.status, "{}: {}", c.what, r.body);
                }
                let m = r.messages();
                assert!(m.contains(&c.word), "{}: {m:?} lacks {:?}", c.what, c.word);
            }
        }
    }
    eprintln!(
        "{routes} routes, {total} bad requests, {refused_methods} undeclared methods: all refused with messages"
    );
    assert_eq!(
        routes, 18,
        "a route was added: the table covers it, update the count"
    );

    // The server still serves; the bad requests created nothing.
    let list = s.get("/api/disks", ALICE).await.expect(200);
    assert_eq!(list.as_array().expect("array").len(), 1, "{list}");
    s.get("/api/openapi.json", "no-token-needed")
        .await
        .expect(200);
}

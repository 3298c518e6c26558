// Shared by the mgmt_* tests (included with `#[path]`).
//! A JSON-RPC client for the management socket and a small JSON Schema
//! validator (the subset docs/rpc-schema.json uses: type, enum, properties,
//! required, additionalProperties=false, items, minimum/maximum, maxLength, $ref).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::{json, Value};

pub fn schema() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/rpc-schema.json")).unwrap();
    serde_json::from_str(&text).expect("docs/rpc-schema.json is JSON")
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "null" => v.is_null(),
        _ => panic!("schema uses unknown type {t}"),
    }
}

pub fn validate(s: &Value, v: &Value, root: &Value, path: &str) -> Result<(), String> {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/$defs/").expect("local $ref");
        return validate(&root["$defs"][name], v, root, path);
    }
    match s.get("type") {
        Some(Value::String(t)) if !type_ok(t, v) => return Err(format!("{path}: {v} is not {t}")),
        Some(Value::Array(ts)) if !ts.iter().any(|t| type_ok(t.as_str().unwrap(), v)) => {
            return Err(format!("{path}: {v} is none of {ts:?}"))
        }
        _ => {}
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{path}: {v} not in {e:?}"));
        }
    }
    if let (Some(min), Some(x)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if x < min {
            return Err(format!("{path}: {x} < {min}"));
        }
    }
    if let (Some(max), Some(x)) = (s.get("maximum").and_then(Value::as_f64), v.as_f64()) {
        if x > max {
            return Err(format!("{path}: {x} > {max}"));
        }
    }
    if let (Some(max), Some(x)) = (s.get("maxLength").and_then(Value::as_u64), v.as_str()) {
        if x.len() as u64 > max {
            return Err(format!("{path}: longer than {max}"));
        }
    }
    if let Some(o) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for r in s.get("required").and_then(Value::as_array).into_iter().flatten() {
            if !o.contains_key(r.as_str().unwrap()) {
                return Err(format!("{path}: missing {r}"));
            }
        }
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => validate(ps, x, root, &format!("{path}.{k}"))?,
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{path}: unexpected member {k}"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(a)) = (s.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            validate(items, x, root, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

/// Send raw bytes (a line is appended) and read one response line.
pub fn raw(sock: &Path, body: &[u8]) -> Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(body).unwrap();
    s.write_all(b"\n").unwrap();
    let mut line = Vec::new();
    BufReader::new(s.take(64 << 20)).read_until(b'\n', &mut line).unwrap();
    serde_json::from_slice(&line).unwrap_or_else(|e| panic!("bad response {:?}: {e}", String::from_utf8_lossy(&line)))
}

/// A call whose params and (on success) result are checked against the schema.
pub fn call(sock: &Path, method: &str, params: Value) -> Result<Value, (i64, String)> {
    let root = schema();
    let m = &root["methods"][method];
    if m.is_object() {
        validate(&m["params"], &params, &root, &format!("{method}.params")).unwrap();
    }
    let req = json!({"jsonrpc": "2.0", "id": 42, "method": method, "params": params});
    let r = raw(sock, &serde_json::to_vec(&req).unwrap());
    assert_eq!(r["jsonrpc"], "2.0");
    assert_eq!(r["id"], 42);
    if let Some(e) = r.get("error") {
        return Err((e["code"].as_i64().unwrap(), e["message"].as_str().unwrap().to_string()));
    }
    let result = r["result"].clone();
    validate(&m["result"], &result, &root, &format!("{method}.result")).unwrap();
    Ok(result)
}

pub fn ok(sock: &Path, method: &str, params: Value) -> Value {
    call(sock, method, params).unwrap_or_else(|e| panic!("{method}: {e:?}"))
}

/// Expect an error with `code` whose message contains `needle`.
pub fn err(sock: &Path, method: &str, params: Value, code: i64, needle: &str) {
    let req = json!({"jsonrpc": "2.0", "id": 42, "method": method, "params": params});
    let r = raw(sock, &serde_json::to_vec(&req).unwrap());
    match r.get("error") {
        None => panic!("{method} {params}: expected error {code}, got {r}"),
        Some(e) => {
            let (c, m) = (e["code"].as_i64().unwrap(), e["message"].as_str().unwrap());
            assert_eq!(c, code, "{method} {params}: {m}");
            assert!(m.contains(needle), "{method} {params}: {m:?} lacks {needle:?}");
        }
    }
}

//! JSON-RPC 2.0 framing, independent of the transport: a request body in,
//! a response body out (`None` for notifications). Pure code.

use serde_json::{json, Map, Value};

/// Largest request body accepted (one line on the Unix socket, or one HTTP body).
pub const REQUEST_BYTES_MAX: usize = 1 << 20;
/// Most requests in one JSON-RPC batch.
pub const BATCH_LEN_MAX: usize = 128;

/// JSON-RPC error codes (the standard ones plus this target's application codes).
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The operation failed (backend, socket, file system).
    pub const FAILED: i64 = -32000;
    /// A named object (subsystem, namespace, listener, ...) does not exist.
    pub const NOT_FOUND: i64 = -32001;
    /// An object with that name exists already.
    pub const EXISTS: i64 = -32002;
    /// The change conflicts with the current state (e.g. still in use).
    pub const CONFLICT: i64 = -32003;
    /// Missing or wrong bearer token (TCP listener).
    pub const UNAUTHORIZED: i64 = -32004;
}

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into() }
    }
    /// Invalid params, naming the parameter.
    pub fn param(name: &str, why: impl std::fmt::Display) -> RpcError {
        RpcError::new(code::INVALID_PARAMS, format!("invalid params: {name}: {why}"))
    }
    pub fn not_found(what: impl Into<String>) -> RpcError {
        RpcError::new(code::NOT_FOUND, what)
    }
    pub fn exists(what: impl Into<String>) -> RpcError {
        RpcError::new(code::EXISTS, what)
    }
    pub fn conflict(what: impl Into<String>) -> RpcError {
        RpcError::new(code::CONFLICT, what)
    }
    pub fn failed(what: impl Into<String>) -> RpcError {
        RpcError::new(code::FAILED, what)
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

/// What executes methods.
pub trait Dispatch {
    fn call(&self, method: &str, params: &Map<String, Value>) -> Result<Value, RpcError>;
}

fn error_response(id: Value, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": e.code, "message": e.message}, "id": id})
}

/// Handle one request body (an object or a batch array).
pub fn handle_body(body: &[u8], d: &dyn Dispatch) -> Option<Value> {
    if body.len() > REQUEST_BYTES_MAX {
        return Some(oversized_response());
    }
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Some(error_response(Value::Null, &RpcError::new(code::PARSE_ERROR, format!("parse error: {e}"))))
        }
    };
    match v {
        Value::Array(items) => {
            if items.is_empty() {
                return Some(error_response(
                    Value::Null,
                    &RpcError::new(code::INVALID_REQUEST, "invalid request: empty batch"),
                ));
            }
            if items.len() > BATCH_LEN_MAX {
                return Some(error_response(
                    Value::Null,
                    &RpcError::new(
                        code::INVALID_REQUEST,
                        format!("invalid request: batch longer than {BATCH_LEN_MAX}"),
                    ),
                ));
            }
            let out: Vec<Value> = items.into_iter().filter_map(|r| handle_one(r, d)).collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => handle_one(other, d),
    }
}

/// The response to a request over [`REQUEST_BYTES_MAX`].
pub fn oversized_response() -> Value {
    error_response(
        Value::Null,
        &RpcError::new(code::INVALID_REQUEST, format!("invalid request: larger than {REQUEST_BYTES_MAX} bytes")),
    )
}

/// The response to an unauthenticated request.
pub fn unauthorized_response() -> Value {
    error_response(
        Value::Null,
        &RpcError::new(code::UNAUTHORIZED, "unauthorized: send the token as \"Authorization: Bearer TOKEN\""),
    )
}

fn handle_one(req: Value, d: &dyn Dispatch) -> Option<Value> {
    let Value::Object(mut obj) = req else {
        return Some(error_response(
            Value::Null,
            &RpcError::new(code::INVALID_REQUEST, "invalid request: not a JSON object"),
        ));
    };
    let id = obj.remove("id");
    let id_ok = matches!(id, None | Some(Value::Null | Value::Number(_) | Value::String(_)));
    let reply_id = if id_ok { id.clone().unwrap_or(Value::Null) } else { Value::Null };
    let invalid = |m: &str| Some(error_response(reply_id.clone(), &RpcError::new(code::INVALID_REQUEST, m)));
    if !id_ok {
        return invalid("invalid request: \"id\" must be a string, a number or null");
    }
    if obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return invalid("invalid request: \"jsonrpc\" must be \"2.0\"");
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => return invalid("invalid request: \"method\" must be a string"),
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Some(error_response(
                reply_id,
                &RpcError::new(code::INVALID_PARAMS, "invalid params: params must be an object (by-name)"),
            ))
        }
    };
    obj.remove("jsonrpc");
    if let Some(k) = obj.keys().next() {
        return invalid(&format!("invalid request: unknown member {k:?}"));
    }
    let result = d.call(&method, &params);
    // A notification (no id) gets no response, even on error.
    id.as_ref()?;
    Some(match result {
        Ok(v) => json!({"jsonrpc": "2.0", "result": v, "id": reply_id}),
        Err(e) => error_response(reply_id, &e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Dispatch for Echo {
        fn call(&self, method: &str, params: &Map<String, Value>) -> Result<Value, RpcError> {
            match method {
                "echo" => Ok(Value::Object(params.clone())),
                _ => Err(RpcError::new(code::METHOD_NOT_FOUND, format!("unknown method {method:?}"))),
            }
        }
    }

    fn call(body: &str) -> Value {
        handle_body(body.as_bytes(), &Echo).unwrap()
    }

    #[test]
    fn requests_and_errors() {
        let r = call(r#"{"jsonrpc":"2.0","method":"echo","params":{"a":1},"id":7}"#);
        assert_eq!(r, json!({"jsonrpc":"2.0","result":{"a":1},"id":7}));
        assert_eq!(call("{nope")["error"]["code"], code::PARSE_ERROR);
        assert_eq!(call("[]")["error"]["code"], code::INVALID_REQUEST);
        assert_eq!(call("3")["error"]["code"], code::INVALID_REQUEST);
        assert_eq!(call(r#"{"jsonrpc":"1.0","method":"echo","id":1}"#)["error"]["code"], code::INVALID_REQUEST);
        assert_eq!(call(r#"{"jsonrpc":"2.0","method":"x","id":"a"}"#)["error"]["code"], code::METHOD_NOT_FOUND);
        assert_eq!(call(r#"{"jsonrpc":"2.0","method":"x","id":"a"}"#)["id"], "a");
        assert_eq!(
            call(r#"{"jsonrpc":"2.0","method":"echo","params":[1],"id":1}"#)["error"]["code"],
            code::INVALID_PARAMS
        );
        assert_eq!(call(r#"{"jsonrpc":"2.0","method":"echo","id":{}}"#)["error"]["code"], code::INVALID_REQUEST);
        assert!(handle_body(br#"{"jsonrpc":"2.0","method":"echo"}"#, &Echo).is_none());
        let b = call(r#"[{"jsonrpc":"2.0","method":"echo","id":1},{"jsonrpc":"2.0","method":"echo"},5]"#);
        assert_eq!(b.as_array().unwrap().len(), 2);
        let big = vec![b' '; REQUEST_BYTES_MAX + 1];
        assert_eq!(handle_body(&big, &Echo).unwrap()["error"]["code"], code::INVALID_REQUEST);
    }
}

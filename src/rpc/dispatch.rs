//! JSON-RPC 2.0 request handling: validation, method lookup, state checks, serialisation of
//! calls, and response building. Transport-agnostic: the socket server and the config loader
//! both come through here.

use super::error::*;
use super::method::{Allowed, RpcMethod};
use super::table;
use crate::app;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Held while a locked method runs, so management calls see each other whole (SPDK runs them
/// one at a time on its main thread).
static CALL_LOCK: Mutex<()> = Mutex::new(());

/// The daemon is shutting down: calls are refused.
static REFUSING: AtomicBool = AtomicBool::new(false);

/// Refuses every later call and waits for a locked call in progress to finish, so the daemon
/// can tear down under no handler. Calls that wait outside the lock (`framework_wait_init`, a
/// virtio attach) take it again for each change, and find the daemon stopping.
pub fn refuse_new_calls() {
    let _guard = CALL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    REFUSING.store(true, Ordering::Release);
}

/// Handles one decoded JSON text (a request or a batch); `None` when nothing is to be sent
/// back (notifications only).
pub fn handle_value(value: Value) -> Option<Value> {
    match value {
        Value::Array(batch) if batch.is_empty() => Some(error_response(Value::Null, &invalid_request("empty batch"))),
        Value::Array(batch) => {
            let responses: Vec<Value> = batch.into_iter().filter_map(handle_request).collect();
            (!responses.is_empty()).then_some(Value::Array(responses))
        }
        other => handle_request(other),
    }
}

fn invalid_request(why: &str) -> RpcError {
    RpcError::new(INVALID_REQUEST, format!("Invalid request: {why}"))
}

fn handle_request(request: Value) -> Option<Value> {
    let Value::Object(mut obj) = request else {
        return Some(error_response(Value::Null, &invalid_request("a request must be a JSON object")));
    };
    let id = obj.remove("id");
    let id_value = id.clone().unwrap_or(Value::Null);
    if !matches!(id_value, Value::Null | Value::Number(_) | Value::String(_)) {
        return Some(error_response(Value::Null, &invalid_request("id must be a number, a string or null")));
    }
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(error_response(id_value, &invalid_request("jsonrpc must be \"2.0\"")));
    }
    let Some(Value::String(method)) = obj.remove("method") else {
        return Some(error_response(id_value, &invalid_request("method must be a string")));
    };
    let params = obj.remove("params");
    if let Some(unknown) = obj.keys().find(|k| k.as_str() != "jsonrpc") {
        return Some(error_response(id_value, &invalid_request(&format!("unknown member `{unknown}`"))));
    }
    let result = call(&method, params);
    // A request without an id is a notification: run it, answer nothing.
    id.map(|id| match result {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err(e) => error_response(id, &e),
    })
}

fn error_response(id: Value, e: &RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": e.to_json() })
}

/// Runs `f` holding the call lock, as a locked method's whole handler runs. An unlocked method
/// ([`RpcMethod::runtime_unlocked`]) does its slow, peer-facing part outside and wraps each
/// step that reads or changes shared state in this. Never call it from a locked handler (the
/// lock is not reentrant).
pub fn serialized<R>(f: impl FnOnce() -> R) -> R {
    let _guard = CALL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    f()
}

/// Calls `method` with `params` as a client would (state checks and serialisation included).
pub fn call(method: &str, params: Option<Value>) -> Result<Value, RpcError> {
    if REFUSING.load(Ordering::Acquire) {
        return Err(RpcError::new(-libc::ESHUTDOWN, format!("{method}: the daemon is shutting down")));
    }
    let m =
        table::find(method).ok_or_else(|| RpcError::new(METHOD_NOT_FOUND, format!("Method not found: {method}")))?;
    check_state(m)?;
    let (params, unused) = super::spdk_params::strip(m.spdk_params, params)?;
    if !unused.is_empty() {
        tracing::info!(method, params = ?unused, "SPDK parameters accepted; they change nothing in Ferry");
    }
    let run = || {
        std::panic::catch_unwind(|| (m.handler)(params)).unwrap_or_else(|_| {
            tracing::error!(method, "RPC handler panicked");
            Err(RpcError::new(INTERNAL_ERROR, format!("internal error in {method}")))
        })
    };
    if m.locked {
        serialized(run)
    } else {
        run()
    }
}

fn check_state(m: &RpcMethod) -> Result<(), RpcError> {
    let initialised = app::is_initialised();
    match (m.allowed, initialised) {
        (Allowed::Runtime, false) => Err(RpcError::new(
            INVALID_STATE,
            format!(
                "{}: method may only be called after framework is initialized using framework_start_init RPC",
                m.name
            ),
        )),
        (Allowed::Startup, true) if !app::config::replaying_start() => Err(RpcError::new(
            INVALID_STATE,
            format!("{}: method may only be called before framework_start_init", m.name),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(v: &Value) -> i64 {
        v["error"]["code"].as_i64().unwrap()
    }

    #[test]
    fn malformed_requests_get_invalid_request() {
        assert_eq!(code(&handle_value(json!(42)).unwrap()), INVALID_REQUEST as i64);
        assert_eq!(code(&handle_value(json!([])).unwrap()), INVALID_REQUEST as i64);
        assert_eq!(code(&handle_value(json!({"id": 1, "method": "x"})).unwrap()), INVALID_REQUEST as i64);
        assert_eq!(code(&handle_value(json!({"jsonrpc": "2.0", "id": 1})).unwrap()), INVALID_REQUEST as i64);
        assert_eq!(
            code(&handle_value(json!({"jsonrpc": "2.0", "id": {}, "method": "a"})).unwrap()),
            INVALID_REQUEST as i64
        );
        let r = handle_value(json!({"jsonrpc": "2.0", "id": 7, "method": "no_such_method"})).unwrap();
        assert_eq!(code(&r), METHOD_NOT_FOUND as i64);
        assert_eq!(r["id"], 7);
    }

    #[test]
    fn notifications_get_no_answer_and_batches_answer_each() {
        assert!(handle_value(json!({"jsonrpc": "2.0", "method": "spdk_get_version"})).is_none());
        let r = handle_value(json!([
            {"jsonrpc": "2.0", "id": 1, "method": "spdk_get_version"},
            {"jsonrpc": "2.0", "method": "spdk_get_version"},
            {"jsonrpc": "2.0", "id": 2, "method": "nope"}
        ]))
        .unwrap();
        let arr = r.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        assert!(arr[0]["result"]["version"].is_string());
        assert_eq!(code(&arr[1]), METHOD_NOT_FOUND as i64);
    }
}

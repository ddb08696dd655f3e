//! The JSON-RPC target: the fuzzer's bytes framed as a client connection's reads are
//! (`rpc::framer::Framer` and `rpc::server::next_request`, as `rpc::connection` drives them), once
//! whole and once cut into the pieces the first byte picks, then each request dispatched. The
//! framing must not depend on how the bytes were cut, and every answer must be a well-formed
//! JSON-RPC 2.0 response.

use super::Input;
use crate::rpc::dispatch;
use crate::rpc::framer::Framer;
use crate::rpc::server::{next_request, LIMITS};
use serde_json::Value;

/// Methods dispatched as the client named them: read-only ones with no effect outside the
/// process. Any other name is replaced by one that does not exist (creating bdevs on files,
/// sockets, or `spdk_kill_instance` are not for a fuzzer).
const ALLOWED: &[&str] = &[
    "rpc_get_methods",
    "spdk_get_version",
    "framework_wait_init",
    "framework_get_subsystems",
    "log_get_level",
    "log_get_print_level",
    "log_get_flags",
    "bdev_get_bdevs",
    "bdev_get_iostat",
    "vhost_get_controllers",
];

/// What the connection loop did with the bytes.
#[derive(Debug, PartialEq)]
enum Event {
    Request(Value),
    /// The connection was closed with a parse error (malformed text, or too long).
    Closed,
}

/// Frames `bytes` arriving in pieces of `cuts` bytes (the rest in one last read), exactly as
/// `rpc::connection` does.
fn frame(bytes: &[u8], cuts: &[usize]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut framer = Framer::new(LIMITS);
    let mut rest = bytes;
    let mut cuts = cuts.iter();
    while !rest.is_empty() {
        let n = cuts.next().copied().unwrap_or(rest.len()).clamp(1, rest.len());
        framer.push(&rest[..n]);
        rest = &rest[n..];
        while let Some(request) = next_request(&mut framer) {
            match request {
                Ok(value) => events.push(Event::Request(value)),
                Err(_) => {
                    events.push(Event::Closed);
                    return events;
                }
            }
        }
    }
    events
}

/// Replaces method names outside [`ALLOWED`] (in a request or each request of a batch).
fn restrict(value: &mut Value) {
    let one = |v: &mut Value| {
        if let Some(Value::String(m)) = v.get_mut("method") {
            if !ALLOWED.contains(&m.as_str()) {
                *m = "fuzz_method_not_allowed".into();
            }
        }
    };
    match value {
        Value::Array(batch) => batch.iter_mut().for_each(one),
        other => one(other),
    }
}

#[track_caller]
fn check_response(request: &Value, response: &Value) {
    let obj = response.as_object().unwrap_or_else(|| panic!("response {response} to {request} is not an object"));
    assert_eq!(obj.get("jsonrpc"), Some(&Value::String("2.0".into())), "{response}: jsonrpc");
    assert!(obj.contains_key("id"), "{response}: id");
    match (obj.get("result"), obj.get("error")) {
        (Some(_), None) => {}
        (None, Some(e)) => {
            assert!(e["code"].is_i64(), "{response}: error code");
            assert!(e["message"].is_string(), "{response}: error message");
        }
        _ => panic!("{response}: exactly one of result and error"),
    }
    // A request whose id is valid gets it back.
    if let Some(id @ (Value::Number(_) | Value::String(_))) = request.get("id") {
        if request.is_object() {
            assert_eq!(obj.get("id"), Some(id), "{response}: the request's id");
        }
    }
}

/// Input: one byte choosing how the rest is cut into reads, then the bytes of a connection.
pub fn rpc(data: &[u8]) -> u64 {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        super::reactor();
        crate::app::mark_initialised();
    });
    let mut input = Input(data);
    let seed = input.u8() as usize;
    let bytes = input.rest();
    // Cuts of 1..=seed%16+1 bytes, varying along the input.
    let cuts: Vec<usize> = (0..bytes.len()).map(|i| 1 + (i * 7 + seed) % (seed % 16 + 1)).collect();
    let whole = frame(bytes, &[]);
    let pieces = frame(bytes, &cuts);
    assert_eq!(whole, pieces, "framing depends on how the bytes were cut ({cuts:?})");
    let mut answered = 0;
    for event in whole {
        let Event::Request(mut request) = event else { break };
        restrict(&mut request);
        match (&request, dispatch::handle_value(request.clone())) {
            (Value::Array(batch), Some(Value::Array(responses))) => {
                assert!(!responses.is_empty() && responses.len() <= batch.len(), "batch answers");
                responses.iter().for_each(|r| check_response(&Value::Null, r));
                answered += 1;
            }
            (Value::Array(batch), Some(r)) => {
                assert!(batch.is_empty(), "{r}: only an empty batch gets a single answer");
                check_response(&Value::Null, &r);
            }
            (_, Some(r)) => {
                check_response(&request, &r);
                answered += 1;
            }
            // A notification: nothing to answer, but only for an object with a method.
            (request, None) => assert!(
                request.is_array() || (request.get("id").is_none() && request.get("method").is_some()),
                "{request}: only notifications go unanswered"
            ),
        }
    }
    answered
}

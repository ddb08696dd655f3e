//! JSON-RPC errors with SPDK's codes.

use crate::bdev::BdevError;
use serde_json::{json, Value};

/// JSON-RPC 2.0: the text is not JSON.
pub const PARSE_ERROR: i32 = -32700;
/// JSON-RPC 2.0: not a valid request object.
pub const INVALID_REQUEST: i32 = -32600;
/// JSON-RPC 2.0: no such method.
pub const METHOD_NOT_FOUND: i32 = -32601;
/// JSON-RPC 2.0: bad parameters.
pub const INVALID_PARAMS: i32 = -32602;
/// JSON-RPC 2.0: the server failed.
pub const INTERNAL_ERROR: i32 = -32603;
/// SPDK: the method is not allowed in the current state (before or after init).
pub const INVALID_STATE: i32 = -1;

/// An error answer: code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// JSON-RPC code, or a negative errno for failed operations.
    pub code: i32,
    /// What was wrong, naming the thing.
    pub message: String,
}

impl RpcError {
    /// An error with this code and message.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into() }
    }

    /// -32602 with a message naming the parameter.
    pub fn invalid_params(message: impl std::fmt::Display) -> Self {
        RpcError::new(INVALID_PARAMS, format!("Invalid parameters: {message}"))
    }

    /// A failed operation, as `-errno` and a message.
    pub fn errno(errno: i32, message: impl Into<String>) -> Self {
        RpcError::new(-errno.abs(), message)
    }

    /// The `error` member of a response.
    pub fn to_json(&self) -> Value {
        json!({ "code": self.code, "message": self.message })
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

impl From<BdevError> for RpcError {
    fn from(e: BdevError) -> Self {
        match e {
            BdevError::InvalidParam(m) => RpcError::invalid_params(m),
            other => RpcError::errno(other.errno(), other.to_string()),
        }
    }
}

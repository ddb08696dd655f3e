//! RPC methods: how a module declares one, and how parameters are decoded.

use super::error::RpcError;
use super::spdk_params::SpdkParam;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// When a method may be called (SPDK's SPDK_RPC_STARTUP / SPDK_RPC_RUNTIME).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Only before `framework_start_init`.
    Startup,
    /// Only after initialisation.
    Runtime,
    /// Always.
    Always,
}

/// A method handler: params in, result out.
pub type Handler = fn(Option<Value>) -> Result<Value, RpcError>;

/// One RPC method as a module declares it in its `METHODS` table.
pub struct RpcMethod {
    /// SPDK's method name.
    pub name: &'static str,
    /// The implementation.
    pub handler: Handler,
    /// When it may be called.
    pub allowed: Allowed,
    /// Whether calls are serialised with every other locked call (all but waits).
    pub locked: bool,
    /// Parameters SPDK defines for the method that the handler does not decode: checked and
    /// removed by the dispatcher first (see [`super::spdk_params`]).
    pub spdk_params: &'static [SpdkParam],
}

impl RpcMethod {
    /// A runtime method, serialised with the others: the common case.
    pub const fn runtime(name: &'static str, handler: Handler) -> Self {
        RpcMethod { name, handler, allowed: Allowed::Runtime, locked: true, spdk_params: &[] }
    }

    /// A runtime method that waits on a peer (connects, handshakes): it runs *without* the call
    /// lock, so a slow or silent peer holds up only its own caller, and takes the lock with
    /// [`crate::rpc::serialized`] for each step that touches shared state (e.g. registering
    /// what it built). Rule: no RPC ever blocks on a peer while holding the lock.
    pub const fn runtime_unlocked(name: &'static str, handler: Handler) -> Self {
        RpcMethod { name, handler, allowed: Allowed::Runtime, locked: false, spdk_params: &[] }
    }

    /// A method callable at any time.
    pub const fn always(name: &'static str, handler: Handler) -> Self {
        RpcMethod { name, handler, allowed: Allowed::Always, locked: true, spdk_params: &[] }
    }

    /// The same method with `allowed` as its state rule.
    pub const fn when(self, allowed: Allowed) -> Self {
        RpcMethod { allowed, ..self }
    }

    /// The same method without the call lock (it waits, or takes the lock per step).
    pub const fn unlocked(self) -> Self {
        RpcMethod { locked: false, ..self }
    }

    /// The same method, also accepting these SPDK parameters it does not decode itself.
    pub const fn accepting(self, spdk_params: &'static [SpdkParam]) -> Self {
        RpcMethod { spdk_params, ..self }
    }
}

/// Decodes params into `T`, rejecting unknown fields (`T` uses `deny_unknown_fields`),
/// missing ones and wrong types with -32602 naming the field. Absent params decode as `{}`.
pub fn parse<T: DeserializeOwned>(params: Option<Value>) -> Result<T, RpcError> {
    let value = match params {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(RpcError::invalid_params("params must be a JSON object")),
    };
    serde_json::from_value(value).map_err(RpcError::invalid_params)
}

/// Accepts absent, null or empty params; anything else names the unexpected parameter.
pub fn no_params(params: Option<Value>) -> Result<(), RpcError> {
    match params {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(m)) if m.is_empty() => Ok(()),
        Some(Value::Object(m)) => {
            let name = m.keys().next().map(String::as_str).unwrap_or_default();
            Err(RpcError::invalid_params(format!("unknown field `{name}`, this method takes no parameters")))
        }
        Some(_) => Err(RpcError::invalid_params("params must be a JSON object")),
    }
}

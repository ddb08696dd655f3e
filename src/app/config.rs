//! The whole configuration as SPDK's JSON document: `save_config` writes it, `load_config`
//! and `ferryd -c FILE` replay it, subsystem by subsystem, entry by entry, through the same
//! RPC dispatcher a client uses.

use crate::bdev;
use crate::rpc::{self, RpcError};
use serde_json::{json, Value};

/// A subsystem: a named part of the configuration and what it depends on.
pub struct Subsystem {
    /// SPDK's subsystem name.
    pub name: &'static str,
    /// Subsystems that must be configured before it.
    pub depends_on: &'static [&'static str],
    /// Its part of the configuration: RPC calls that recreate it, in order.
    pub write_config: fn() -> Vec<Value>,
}

/// Every subsystem, in dependency order.
pub const SUBSYSTEMS: &[Subsystem] = &[
    Subsystem { name: "bdev", depends_on: &[], write_config: bdev::rpc::write_config },
    Subsystem { name: "vhost_scsi", depends_on: &["bdev"], write_config: crate::vhost::scsi::rpc::write_config },
    Subsystem { name: "vhost_blk", depends_on: &["bdev"], write_config: crate::vhost::rpc::write_config },
];

/// One config entry: `{"method": .., "params": ..}`.
pub fn entry(method: &str, params: Value) -> Value {
    json!({ "method": method, "params": params })
}

/// The configuration of one subsystem.
pub fn subsystem_config(name: &str) -> Option<Vec<Value>> {
    SUBSYSTEMS.iter().find(|s| s.name == name).map(|s| (s.write_config)())
}

/// The whole configuration document.
pub fn save() -> Value {
    let subsystems: Vec<Value> =
        SUBSYSTEMS.iter().map(|s| json!({ "subsystem": s.name, "config": (s.write_config)() })).collect();
    json!({ "subsystems": subsystems })
}

/// Replays a configuration document. Stops at the first failing entry, with an error that
/// names the subsystem, the entry and the method's own error.
pub fn load(doc: &Value) -> Result<(), RpcError> {
    let subsystems = doc
        .get("subsystems")
        .and_then(Value::as_array)
        .ok_or_else(|| RpcError::invalid_params("the configuration needs a \"subsystems\" array"))?;
    // Replay in our dependency order, whatever order the document lists them in.
    let mut ordered: Vec<&Value> = Vec::new();
    for known in SUBSYSTEMS {
        ordered.extend(subsystems.iter().filter(|s| s.get("subsystem").and_then(Value::as_str) == Some(known.name)));
    }
    for s in subsystems {
        let name = s
            .get("subsystem")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params("every subsystem needs a \"subsystem\" name"))?;
        if !SUBSYSTEMS.iter().any(|k| k.name == name) {
            tracing::warn!(subsystem = name, "configuration names a subsystem Ferry does not have; skipped");
        }
    }
    for s in ordered {
        let name = s["subsystem"].as_str().unwrap_or_default();
        let entries = match s.get("config") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(a)) => a,
            Some(_) => return Err(RpcError::invalid_params(format!("subsystem {name}: config must be an array"))),
        };
        for (i, e) in entries.iter().enumerate() {
            let method = e
                .get("method")
                .and_then(Value::as_str)
                .ok_or_else(|| RpcError::invalid_params(format!("subsystem {name}: entry {i} has no method")))?;
            rpc::call(method, e.get("params").cloned()).map_err(|err| {
                RpcError::new(err.code, format!("subsystem {name}: entry {i} ({method}): {}", err.message))
            })?;
        }
    }
    Ok(())
}

//! The whole configuration as SPDK's JSON document: `save_config` writes it, `load_config`
//! and `ferryd -c FILE` replay it, subsystem by subsystem, entry by entry, through the same
//! RPC dispatcher a client uses.
//!
//! A document saved by SPDK loads too: an entry may be a batch (an array of entries, as SPDK
//! groups its malloc and null creates), and the subsystems Ferry does not have (`iobuf`,
//! `sock`, `accel`, ...) are replayed first, in the document's order: their options
//! methods are accepted (see `app::absent`), while an object Ferry cannot create fails the
//! load with the entry named.

use crate::bdev;
use crate::rpc::{self, Allowed, RpcError};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set while the daemon replays its start-up configuration (`ferryd -c`, or the pending one
/// at `framework_start_init`): SPDK's JSON loader runs the start-up-only methods of such a
/// document (`iscsi_set_options`) before initialisation, so they are allowed then.
static START_REPLAY: AtomicBool = AtomicBool::new(false);

/// Whether the start-up configuration is being replayed.
pub fn replaying_start() -> bool {
    START_REPLAY.load(Ordering::Acquire)
}

/// Replays the daemon's start-up configuration (see [`replaying_start`]).
pub fn load_at_start(doc: &Value) -> Result<(), RpcError> {
    START_REPLAY.store(true, Ordering::Release);
    let r = load(doc);
    START_REPLAY.store(false, Ordering::Release);
    r
}

/// A subsystem: a named part of the configuration and what it depends on.
pub struct Subsystem {
    /// SPDK's subsystem name.
    pub name: &'static str,
    /// Subsystems that must be configured before it.
    pub depends_on: &'static [&'static str],
    /// Its part of the configuration: RPC calls that recreate it, in order.
    pub write_config: fn() -> Vec<Value>,
    /// Methods whose consecutive entries SPDK saves as one batch (with `with_batches`).
    pub batched: &'static [&'static str],
}

/// Every subsystem, in dependency order.
pub const SUBSYSTEMS: &[Subsystem] = &[
    // SPDK's accel subsystem: the crypto keys, before the bdevs that use them (as SPDK orders
    // them: its bdev subsystem depends on accel).
    Subsystem {
        name: "accel",
        depends_on: &[],
        write_config: crate::bdev::modules::crypto::write_accel_config,
        batched: &[],
    },
    Subsystem {
        name: "bdev",
        depends_on: &["accel"],
        write_config: bdev::rpc::write_config,
        batched: &["bdev_malloc_create", "bdev_null_create"],
    },
    // After bdev and before vhost, in SPDK's order (its iscsi and vhost_scsi sit on scsi).
    Subsystem { name: "iscsi", depends_on: &["bdev"], write_config: crate::iscsi::rpc::write_config, batched: &[] },
    // After iscsi and before vhost, as SPDK saves it; SPDK batches each kind of nvmf call.
    Subsystem {
        name: "nvmf",
        depends_on: &["bdev"],
        write_config: crate::nvmf::rpc::write_config,
        batched: &[
            "nvmf_create_subsystem",
            "nvmf_subsystem_add_host",
            "nvmf_subsystem_add_ns",
            "nvmf_subsystem_add_listener",
        ],
    },
    Subsystem {
        name: "vhost_scsi",
        depends_on: &["bdev"],
        write_config: crate::vhost::scsi::rpc::write_config,
        batched: &[],
    },
    Subsystem { name: "vhost_blk", depends_on: &["bdev"], write_config: crate::vhost::rpc::write_config, batched: &[] },
];

/// One config entry: `{"method": .., "params": ..}`.
pub fn entry(method: &str, params: Value) -> Value {
    json!({ "method": method, "params": params })
}

/// A subsystem's entries, with consecutive entries of its batched methods grouped into
/// arrays when `with_batches` (as SPDK's `framework_get_config` keeps them).
fn entries(s: &Subsystem, with_batches: bool) -> Vec<Value> {
    let flat = (s.write_config)();
    if !with_batches {
        return flat;
    }
    let method_of = |e: &Value| e.get("method").and_then(Value::as_str).map(str::to_string);
    let mut out: Vec<Value> = Vec::new();
    for e in flat {
        let method = method_of(&e).unwrap_or_default();
        if !s.batched.contains(&method.as_str()) {
            out.push(e);
            continue;
        }
        match out.last_mut() {
            Some(Value::Array(batch)) if batch.first().and_then(method_of).as_deref() == Some(&method) => batch.push(e),
            _ => out.push(Value::Array(vec![e])),
        }
    }
    out
}

/// The configuration of one subsystem.
pub fn subsystem_config(name: &str, with_batches: bool) -> Option<Vec<Value>> {
    SUBSYSTEMS.iter().find(|s| s.name == name).map(|s| entries(s, with_batches))
}

/// The whole configuration document.
pub fn save(with_batches: bool) -> Value {
    let subsystems: Vec<Value> =
        SUBSYSTEMS.iter().map(|s| json!({ "subsystem": s.name, "config": entries(s, with_batches) })).collect();
    json!({ "subsystems": subsystems })
}

/// Replays a configuration document. Stops at the first failing entry, with an error that
/// names the subsystem, the entry and the method's own error.
pub fn load(doc: &Value) -> Result<(), RpcError> {
    let subsystems = doc
        .get("subsystems")
        .and_then(Value::as_array)
        .ok_or_else(|| RpcError::invalid_params("the configuration needs a \"subsystems\" array"))?;
    let mut named: Vec<(&str, &Value)> = Vec::new();
    for s in subsystems {
        let name = s
            .get("subsystem")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params("every subsystem needs a \"subsystem\" name"))?;
        named.push((name, s));
    }
    // Subsystems Ferry does not have first, in the document's order (SPDK saves them in its
    // initialisation order, options before objects); then Ferry's in its dependency order,
    // whatever order the document lists them in.
    let mut ordered: Vec<(&str, &Value)> = Vec::new();
    for &(name, s) in &named {
        if !SUBSYSTEMS.iter().any(|k| k.name == name) {
            tracing::info!(subsystem = name, "configuration of a subsystem Ferry does not have: replaying its options");
            ordered.push((name, s));
        }
    }
    for known in SUBSYSTEMS {
        ordered.extend(named.iter().filter(|(name, _)| *name == known.name));
    }
    for (name, s) in ordered {
        let entries = match s.get("config") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(a)) => a,
            Some(_) => return Err(RpcError::invalid_params(format!("subsystem {name}: config must be an array"))),
        };
        for (i, e) in entries.iter().enumerate() {
            match e {
                // A batch: SPDK sends it as one JSON-RPC batch; its calls run in order.
                Value::Array(batch) => {
                    for (j, e) in batch.iter().enumerate() {
                        replay(e, &format!("subsystem {name}: entry {i}.{j}"))?;
                    }
                }
                e => replay(e, &format!("subsystem {name}: entry {i}"))?,
            }
        }
    }
    Ok(())
}

/// Calls one `{"method", "params"}` entry; errors are prefixed with `place`.
fn replay(e: &Value, place: &str) -> Result<(), RpcError> {
    let method = e
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params(format!("{place} has no method")))?;
    // As rpc.py's load_config: a start-up-only method is skipped once that state has passed.
    if rpc::table::find(method).is_some_and(|m| m.allowed == Allowed::Startup)
        && crate::app::is_initialised()
        && !replaying_start()
    {
        tracing::warn!(method, "{place}: skipped, the method may only be called before framework_start_init");
        return Ok(());
    }
    rpc::call(method, e.get("params").cloned())
        .map_err(|err| RpcError::new(err.code, format!("{place} ({method}): {}", err.message)))?;
    Ok(())
}

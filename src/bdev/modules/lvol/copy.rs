//! The bandwidth of lvol background copies (inflate, decouple-parent, shallow copy): Ferry's
//! `bdev_lvol_set_options` with `copy_max_bandwidth_mb_sec` (SPDK has no such knob). Each
//! copy runs under a QoS limit of its own at that rate (`bdev::qos::gate::Pacer`), waiting for
//! its tokens before each cluster it moves; the lvols' own I/O is never metered by it. A
//! change applies to the copies running too.

use crate::bdev::qos::gate::{LimitSlot, Pacer};
use crate::bdev::qos::spec::{QosSpec, RateLimits};
use crate::rpc::{parse, RpcError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, Weak};

struct Options {
    /// MiB per second each copy may move (0: no limit).
    copy_max_bandwidth_mb_sec: u32,
    /// The limits of the copies running, to change with the option.
    running: Vec<Weak<LimitSlot>>,
}

static OPTIONS: Mutex<Options> = Mutex::new(Options { copy_max_bandwidth_mb_sec: 0, running: Vec::new() });

fn spec(mb_sec: u32) -> QosSpec {
    QosSpec::spdk(RateLimits { rw_mbytes_per_sec: mb_sec as u64, ..Default::default() })
}

/// A pacer for one copy, at the bandwidth set now (and later).
pub(super) fn pacer() -> Pacer {
    let mut o = OPTIONS.lock().unwrap_or_else(|e| e.into_inner());
    let slot = Arc::new(LimitSlot::new(spec(o.copy_max_bandwidth_mb_sec)));
    o.running.retain(|w| w.strong_count() > 0);
    o.running.push(Arc::downgrade(&slot));
    Pacer::new(slot, "lvol_copy_qos")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetOptions {
    copy_max_bandwidth_mb_sec: Option<u32>,
}

/// `bdev_lvol_set_options` (Ferry's): absent parameters keep their value.
pub(super) fn set_options(params: Option<Value>) -> Result<Value, RpcError> {
    let p: SetOptions = match params {
        None => SetOptions { copy_max_bandwidth_mb_sec: None },
        params => parse(params)?,
    };
    let mut o = OPTIONS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(mb) = p.copy_max_bandwidth_mb_sec {
        o.copy_max_bandwidth_mb_sec = mb;
        o.running.retain(|w| w.strong_count() > 0);
        for slot in o.running.iter().filter_map(Weak::upgrade) {
            slot.set(spec(mb)).map_err(RpcError::invalid_params)?;
        }
        tracing::info!(copy_max_bandwidth_mb_sec = mb, "lvol copy options set");
    }
    Ok(json!(true))
}

/// The `bdev_lvol_set_options` entry of `save_config` (first in the bdev subsystem, beside
/// SPDK's module options), when a limit is set.
pub fn options_entry() -> Option<Value> {
    let mb = OPTIONS.lock().unwrap_or_else(|e| e.into_inner()).copy_max_bandwidth_mb_sec;
    (mb != 0).then(|| crate::app::config::entry("bdev_lvol_set_options", json!({ "copy_max_bandwidth_mb_sec": mb })))
}

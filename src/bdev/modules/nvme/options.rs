//! `bdev_nvme_set_options`, SPDK's options of the NVMe bdev module. Ferry applies the I/O
//! command timeout: with `timeout_us` set and `action_on_timeout` "reset", a command the
//! controller has not answered within it resets the controller, and the I/O is retried on the
//! new queues (SPDK's reset action). `timeout_admin_us` is kept and saved; Ferry's admin queue
//! has its own limits (the bring-up timeout, keep alive). Every other parameter of SPDK's schema
//! is type-checked and accepted without effect, so SPDK's configurations load.

use crate::framework::ticks;
use crate::rpc::spdk_params::ParamType::{Array, Bool, Object};
use crate::rpc::{parse, RpcError, SpdkParam, I32, U16, U32, U64, U8};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// What happens when a command times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutAction {
    /// Nothing (the default).
    None,
    /// The controller is reset and the I/O retried.
    Reset,
}

impl TimeoutAction {
    fn name(self) -> &'static str {
        match self {
            TimeoutAction::None => "none",
            TimeoutAction::Reset => "reset",
        }
    }
}

/// The options Ferry applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutOptions {
    /// The action.
    pub action: TimeoutAction,
    /// I/O command timeout in µs (0: none).
    pub timeout_us: u64,
    /// Admin command timeout in µs (kept, not applied).
    pub timeout_admin_us: u64,
}

const DEFAULTS: TimeoutOptions = TimeoutOptions { action: TimeoutAction::None, timeout_us: 0, timeout_admin_us: 0 };

static OPTIONS: Mutex<TimeoutOptions> = Mutex::new(DEFAULTS);
/// The I/O timeout in ticks when the action is a reset, else 0: what the I/O channels read.
static IO_TIMEOUT_TICKS: AtomicU64 = AtomicU64::new(0);

/// The I/O command timeout in ticks, 0 when timeouts do nothing.
pub fn io_timeout_ticks() -> u64 {
    IO_TIMEOUT_TICKS.load(Ordering::Relaxed)
}

fn current() -> TimeoutOptions {
    *OPTIONS.lock().unwrap_or_else(|e| e.into_inner())
}

/// SPDK's parameters Ferry accepts without applying them (`schema/schema.yaml`).
const fn p(name: &'static str, ty: crate::rpc::spdk_params::ParamType) -> SpdkParam {
    SpdkParam::any(name, ty)
}

/// The parameters of SPDK's `bdev_nvme_set_options` other than the timeouts.
pub const ACCEPTED: &[SpdkParam] = &[
    p("keep_alive_timeout_ms", U32),
    p("arbitration_burst", U32),
    p("low_priority_weight", U32),
    p("medium_priority_weight", U32),
    p("high_priority_weight", U32),
    p("nvme_adminq_poll_period_us", U64),
    p("nvme_ioq_poll_period_us", U64),
    p("io_queue_requests", U32),
    p("delay_cmd_submit", Bool),
    p("transport_retry_count", U32),
    p("bdev_retry_count", I32),
    p("transport_ack_timeout", U8),
    p("ctrlr_loss_timeout_sec", I32),
    p("reconnect_delay_sec", U32),
    p("fast_io_fail_timeout_sec", U32),
    p("disable_auto_failback", Bool),
    p("generate_uuids", Bool),
    p("transport_tos", U8),
    p("nvme_error_stat", Bool),
    p("rdma_srq_size", U32),
    p("io_path_stat", Bool),
    p("allow_accel_sequence", Bool),
    p("rdma_max_cq_size", U32),
    p("rdma_cm_event_timeout_ms", U16),
    p("dhchap_digests", Array),
    p("dhchap_dhgroups", Array),
    p("rdma_umr_per_io", Bool),
    p("tcp_connect_timeout_ms", U32),
    p("enable_flush", Bool),
    p("multipath_opts", Object),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    action_on_timeout: Option<String>,
    timeout_us: Option<u64>,
    timeout_admin_us: Option<u64>,
}

/// The method: absent parameters keep their value.
pub fn bdev_nvme_set_options(params: Option<Value>) -> Result<Value, RpcError> {
    let p: Params = parse(params)?;
    let mut o = current();
    if let Some(a) = &p.action_on_timeout {
        o.action = match a.to_ascii_lowercase().as_str() {
            "none" => TimeoutAction::None,
            "reset" => TimeoutAction::Reset,
            "abort" => {
                return Err(RpcError::invalid_params("action_on_timeout abort is not supported (none or reset)"))
            }
            other => {
                return Err(RpcError::invalid_params(format!("action_on_timeout {other:?} must be none or reset")))
            }
        };
    }
    if let Some(t) = p.timeout_us {
        o.timeout_us = t;
    }
    if let Some(t) = p.timeout_admin_us {
        o.timeout_admin_us = t;
    }
    if o.timeout_us > 3_600_000_000 || o.timeout_admin_us > 3_600_000_000 {
        return Err(RpcError::invalid_params("timeouts are at most an hour"));
    }
    *OPTIONS.lock().unwrap_or_else(|e| e.into_inner()) = o;
    let ticks = match o.action {
        TimeoutAction::Reset if o.timeout_us > 0 => ticks::from_duration(Duration::from_micros(o.timeout_us)).max(1),
        _ => 0,
    };
    IO_TIMEOUT_TICKS.store(ticks, Ordering::Relaxed);
    tracing::info!(?o, "NVMe bdev options set");
    Ok(json!(true))
}

/// The `bdev_nvme_set_options` entry of `save_config` (before any attach), when the options
/// differ from the defaults.
pub fn options_entry() -> Option<Value> {
    let o = current();
    (o != DEFAULTS).then(|| {
        crate::app::config::entry(
            "bdev_nvme_set_options",
            json!({ "action_on_timeout": o.action.name(), "timeout_us": o.timeout_us,
                    "timeout_admin_us": o.timeout_admin_us }),
        )
    })
}

//! vhost RPC methods (SPDK's names and parameters) and the `vhost_blk` configuration.

use super::backend_channel::BackendChannel;
use super::blk::BlkDevice;
use super::controller::{CoalescingParams, Controller, ControllerError, ControllerKind};
use super::device::MAX_VIRTQUEUES;
use super::{controllers, socket_dir};
use crate::app::config::entry;
use crate::bdev;
use crate::bdev::qos;
use crate::bdev::qos::spec::{RateChanges, SpecChanges};
use crate::framework::{self, Cpumask};
use crate::rpc::{parse, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The vhost methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime("vhost_create_blk_controller", vhost_create_blk_controller),
    RpcMethod::runtime("vhost_get_controllers", vhost_get_controllers),
    RpcMethod::runtime("vhost_delete_controller", vhost_delete_controller),
    RpcMethod::runtime("vhost_controller_set_coalescing", vhost_controller_set_coalescing),
    RpcMethod::runtime("vhost_controller_set_qos", vhost_controller_set_qos),
];

impl From<ControllerError> for RpcError {
    fn from(e: ControllerError) -> Self {
        match e {
            ControllerError::Invalid(m) => RpcError::invalid_params(m),
            ControllerError::Bdev(b) => b.into(),
            other => RpcError::errno(other.errno(), other.to_string()),
        }
    }
}

/// The `vhost_blk` subsystem's configuration.
pub fn write_config() -> Vec<Value> {
    let mut out = Vec::new();
    for c in controllers::list() {
        let ControllerKind::Blk { bdev, readonly, packed_ring } = &c.kind else { continue };
        out.push(entry(
            "vhost_create_blk_controller",
            json!({ "ctrlr": c.name, "dev_name": bdev, "cpumask": c.cpumask.to_string(),
                    "readonly": readonly, "packed_ring": packed_ring }),
        ));
        out.extend(coalescing_entry(&c));
        out.extend(qos_entry(&c));
    }
    out
}

/// The `vhost_controller_set_coalescing` entry that restores `c`'s coalescing, if set.
pub(crate) fn coalescing_entry(c: &Controller) -> Option<Value> {
    let co = c.coalescing();
    (co.delay_base_us != 0).then(|| {
        entry(
            "vhost_controller_set_coalescing",
            json!({ "ctrlr": c.name, "delay_base_us": co.delay_base_us, "iops_threshold": co.iops_threshold }),
        )
    })
}

/// The `vhost_controller_set_qos` entry that restores `c`'s limit, if one is set.
pub(crate) fn qos_entry(c: &Controller) -> Option<Value> {
    let spec = c.qos().spec();
    (!spec.limits.is_none()).then(|| {
        let mut params = serde_json::Map::new();
        params.insert("ctrlr".into(), c.name.clone().into());
        params.extend(qos::rpc::spec_params(&spec));
        entry("vhost_controller_set_qos", Value::Object(params))
    })
}

/// The reactors (by index) of `cpumask`, or all reactors when none is given.
pub(crate) fn reactors_for(cpumask: Option<&str>) -> Result<(Cpumask, Vec<usize>), ControllerError> {
    let all = framework::reactors();
    let Some(text) = cpumask else {
        let cores: Vec<u32> = all.iter().map(|r| r.core()).collect();
        let mask = Cpumask::parse(&format!("[{}]", cores.iter().map(u32::to_string).collect::<Vec<_>>().join(",")))
            .map_err(|e| ControllerError::Invalid(e.to_string()))?;
        return Ok((mask, (0..all.len()).collect()));
    };
    let mask = Cpumask::parse(text).map_err(|e| ControllerError::Invalid(e.to_string()))?;
    let reactors: Vec<usize> = all.iter().filter(|r| mask.contains(r.core())).map(|r| r.index()).collect();
    if reactors.is_empty() || reactors.len() != mask.cores().len() {
        return Err(ControllerError::Invalid(format!("cpumask {text} names cores ferryd does not run reactors on")));
    }
    Ok((mask, reactors))
}

pub(crate) fn valid_name(name: &str) -> Result<(), ControllerError> {
    if name.is_empty()
        || name.len() > 100
        || name.contains('/')
        || name == "."
        || name == ".."
        || name.chars().any(char::is_control)
    {
        return Err(ControllerError::Invalid(format!("invalid controller name {name:?}")));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBlk {
    ctrlr: String,
    dev_name: String,
    cpumask: Option<String>,
    #[serde(default)]
    readonly: bool,
    #[serde(default)]
    packed_ring: bool,
    /// SPDK's transport selector; only vhost-user is served.
    transport: Option<String>,
}

fn vhost_create_blk_controller(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateBlk = parse(params)?;
    valid_name(&p.ctrlr)?;
    if p.transport.as_deref().is_some_and(|t| t != "vhost_user_blk") {
        return Err(RpcError::invalid_params(format!("transport {:?} is not supported", p.transport)));
    }
    if controllers::get(&p.ctrlr).is_some() {
        return Err(ControllerError::Exists(p.ctrlr).into());
    }
    let (mask, reactors) = reactors_for(p.cpumask.as_deref())?;
    let removed = Arc::new(AtomicBool::new(false));
    let flag = removed.clone();
    let ctrlr_name = p.ctrlr.clone();
    let backend_channel = Arc::new(BackendChannel::default());
    let notify = backend_channel.clone();
    // Opened as SPDK's vhost-blk does (spdk_bdev_open_ext, no claim): several controllers
    // may serve one bdev (the source and destination of a live migration do), while a bdev
    // claimed by another module (a virtual bdev on top of it) still refuses a writer.
    let desc = bdev::open(
        &p.dev_name,
        !p.readonly,
        Box::new(move |ev, b| match ev {
            bdev::BdevEvent::Remove => {
                tracing::warn!(ctrlr = %ctrlr_name, bdev = b.name(), "bdev removed; the controller fails its I/O");
                flag.store(true, std::sync::atomic::Ordering::Release);
            }
            bdev::BdevEvent::Resize => {
                let told = notify.notify_config_change();
                tracing::info!(ctrlr = %ctrlr_name, bdev = b.name(), told, "bdev resized; config change sent");
            }
        }),
    )
    .map_err(ControllerError::from)?;
    // A bdev read-only by nature (a snapshot, a read-only lvol) is offered with VIRTIO_BLK_F_RO.
    let readonly = p.readonly || desc.bdev().backend().read_only();
    let device = Arc::new(BlkDevice::with_ring(Arc::new(desc), readonly, p.packed_ring, MAX_VIRTQUEUES, removed));
    let kind = ControllerKind::Blk { bdev: p.dev_name, readonly: p.readonly, packed_ring: p.packed_ring };
    let ctrl = Controller::start(&p.ctrlr, &socket_dir(), mask, reactors, device, kind, backend_channel)?;
    controllers::insert(ctrl);
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetControllers {
    name: Option<String>,
}

fn describe(c: &Controller) -> Value {
    let co = c.coalescing();
    let sessions: Vec<Value> = c
        .session_info()
        .into_iter()
        .map(|s| {
            let inflight_now = s.inflight.as_ref().map_or(0, |a| a.inflight_now());
            json!({ // SPDK's session fields (`vid`, `id`: Ferry's session number, unique per daemon).
                    "vid": s.session_id, "id": s.session_id, "name": format!("{}s{}", c.name, s.session_id),
                    "started": s.running_queues > 0,
                    "max_queues": s.running.iter().map(|&(q, _)| q as usize + 1).max().unwrap_or(0),
                    "inflight_task_cnt": inflight_now,
                    // Ferry's own.
                    "running_queues": s.running_queues, "mem_regions": s.mem_regions, "features": s.features,
                    "config_change_notifications": c.can_notify_config_change(),
                    "inflight_tracking": s.inflight.is_some(),
                    "inflight_requests": inflight_now,
                    "resubmitted": s.inflight.as_ref().map_or(0, |a| a.resubmitted()) })
        })
        .collect();
    json!({
        "ctrlr": c.name,
        "cpumask": c.cpumask.to_string(),
        "delay_base_us": co.delay_base_us,
        "iops_threshold": co.iops_threshold,
        "socket": c.socket.to_string_lossy(),
        // Ferry's: the controller's own limit (`vhost_controller_set_qos`).
        "qos": qos::rpc::spec_json(&c.qos().spec()),
        "sessions": sessions,
        "backend_specific": match &c.kind {
            ControllerKind::Blk { bdev, readonly, packed_ring } => json!({
                "block": { "readonly": readonly, "bdev": bdev, "packed_ring": packed_ring, "transport": "vhost_user_blk" }
            }),
            ControllerKind::Scsi { targets, .. } => json!({ "scsi": super::scsi::rpc::describe_targets(targets) }),
        }
    })
}

fn vhost_get_controllers(params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetControllers = parse(params)?;
    match p.name {
        Some(name) => {
            let c = controllers::get(&name).ok_or(ControllerError::NotFound(name))?;
            Ok(json!([describe(&c)]))
        }
        None => Ok(Value::Array(controllers::list().iter().map(|c| describe(c)).collect())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteController {
    ctrlr: String,
}

fn vhost_delete_controller(params: Option<Value>) -> Result<Value, RpcError> {
    let p: DeleteController = parse(params)?;
    let c = controllers::get(&p.ctrlr).ok_or_else(|| ControllerError::NotFound(p.ctrlr.clone()))?;
    if c.is_connected() {
        return Err(ControllerError::Busy(p.ctrlr).into());
    }
    if let ControllerKind::Scsi { targets, .. } = &c.kind {
        // As SPDK: a controller with targets is not deleted; remove them first.
        if let Some(t) = targets.snapshot().into_iter().flatten().next() {
            return Err(RpcError::errno(
                libc::EBUSY,
                format!("vhost controller {}: SCSI target {} is still present", p.ctrlr, t.id),
            ));
        }
    }
    controllers::remove(&p.ctrlr);
    c.shutdown();
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetCoalescing {
    ctrlr: String,
    delay_base_us: u32,
    iops_threshold: u32,
}

fn vhost_controller_set_coalescing(params: Option<Value>) -> Result<Value, RpcError> {
    let p: SetCoalescing = parse(params)?;
    if p.delay_base_us > 1_000_000 {
        return Err(RpcError::invalid_params("delay_base_us must be at most 1000000"));
    }
    let c = controllers::get(&p.ctrlr).ok_or(ControllerError::NotFound(p.ctrlr))?;
    c.set_coalescing(CoalescingParams { delay_base_us: p.delay_base_us, iops_threshold: p.iops_threshold });
    Ok(json!(true))
}

/// `vhost_controller_set_qos` (Ferry's): a limit on everything the controller's guest sends,
/// with `bdev_qos_group_set_limit`'s parameters. Absent: unchanged; 0: removed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetQos {
    ctrlr: String,
    rw_ios_per_sec: Option<u64>,
    rw_mbytes_per_sec: Option<u64>,
    r_mbytes_per_sec: Option<u64>,
    w_mbytes_per_sec: Option<u64>,
    rw_ios_burst_per_sec: Option<u64>,
    rw_mbytes_burst_per_sec: Option<u64>,
    r_mbytes_burst_per_sec: Option<u64>,
    w_mbytes_burst_per_sec: Option<u64>,
    burst_length_ms: Option<u64>,
    meter_unmap: Option<bool>,
}

fn vhost_controller_set_qos(params: Option<Value>) -> Result<Value, RpcError> {
    let p: SetQos = parse(params)?;
    // As SPDK's vhost methods answer an unknown controller: -32602, strerror(ENODEV).
    let c = controllers::get(&p.ctrlr).ok_or_else(|| {
        tracing::error!(ctrlr = %p.ctrlr, "vhost controller not found");
        RpcError::new(crate::rpc::error::INVALID_PARAMS, "No such device")
    })?;
    let changes = SpecChanges {
        limits: RateChanges {
            rw_ios_per_sec: p.rw_ios_per_sec,
            rw_mbytes_per_sec: p.rw_mbytes_per_sec,
            r_mbytes_per_sec: p.r_mbytes_per_sec,
            w_mbytes_per_sec: p.w_mbytes_per_sec,
        },
        burst: RateChanges {
            rw_ios_per_sec: p.rw_ios_burst_per_sec,
            rw_mbytes_per_sec: p.rw_mbytes_burst_per_sec,
            r_mbytes_per_sec: p.r_mbytes_burst_per_sec,
            w_mbytes_per_sec: p.w_mbytes_burst_per_sec,
        },
        burst_length_ms: p.burst_length_ms,
        meter_unmap: p.meter_unmap,
    };
    if changes.is_empty() {
        return Err(RpcError::errno(libc::EINVAL, "No rate limits specified"));
    }
    let spec = changes.apply(c.qos().spec());
    c.qos().set(spec).map_err(RpcError::invalid_params)?;
    tracing::info!(ctrlr = %c.name, ?spec, "vhost controller QoS set");
    Ok(json!(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::modules::null;
    use crate::framework::testing;

    /// Controllers take no claim (as SPDK's), but a bdev another module claimed (a virtual
    /// bdev built on it) still refuses a writable controller, with SPDK's -EPERM; read-only
    /// opens stay allowed, and the bdev accepts writers once the claim is released.
    #[test]
    fn a_bdev_claimed_by_another_module_refuses_a_writable_controller() {
        testing::reactors();
        null::create("vhost_rpc_claimed", 64, 512, None).unwrap();
        let mut vbdev = bdev::open("vhost_rpc_claimed", true, Box::new(|_, _| {})).unwrap();
        vbdev.claim("raid").unwrap();
        let e = vhost_create_blk_controller(Some(json!({"ctrlr": "claimed.0", "dev_name": "vhost_rpc_claimed"})))
            .unwrap_err();
        assert_eq!(e.code, -libc::EPERM, "{e:?}");
        assert!(e.message.contains("claimed by raid"), "{e:?}");
        assert!(controllers::get("claimed.0").is_none());
        assert!(bdev::open("vhost_rpc_claimed", false, Box::new(|_, _| {})).is_ok(), "readers are still let in");
        drop(vbdev);
        assert!(bdev::open("vhost_rpc_claimed", true, Box::new(|_, _| {})).is_ok(), "writable once released");
    }
}

//! vhost-user-scsi RPC methods (SPDK's names and parameters) and the `vhost_scsi`
//! configuration.

use super::{EventQueueState, ScsiDevice, TargetTable, MAX_TARGETS};
use crate::app::config::entry;
use crate::bdev;
use crate::rpc::{parse, RpcError, RpcMethod};
use crate::scsi::{ScsiLun, ScsiTarget};
use crate::vhost::backend_channel::BackendChannel;
use crate::vhost::controller::{Controller, ControllerError, ControllerKind};
use crate::vhost::rpc::{coalescing_entry, qos_entry, reactors_for, valid_name};
use crate::vhost::{controllers, socket_dir};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, Weak};

/// The vhost-user-scsi methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime("vhost_create_scsi_controller", vhost_create_scsi_controller),
    RpcMethod::runtime("vhost_scsi_controller_add_target", vhost_scsi_controller_add_target),
    RpcMethod::runtime("vhost_scsi_controller_remove_target", vhost_scsi_controller_remove_target),
    RpcMethod::runtime("vhost_start_scsi_controller", vhost_start_scsi_controller),
];

/// The `vhost_scsi` subsystem's configuration: each controller, then its targets.
pub fn write_config() -> Vec<Value> {
    let mut out = Vec::new();
    for c in controllers::list() {
        let ControllerKind::Scsi { targets, .. } = &c.kind else { continue };
        out.push(entry("vhost_create_scsi_controller", json!({ "ctrlr": c.name, "cpumask": c.cpumask.to_string() })));
        for t in targets.snapshot().into_iter().flatten() {
            for lun in t.luns() {
                out.push(entry(
                    "vhost_scsi_controller_add_target",
                    json!({ "ctrlr": c.name, "scsi_target_num": t.id, "bdev_name": lun.bdev_name() }),
                ));
            }
        }
        out.extend(coalescing_entry(&c));
        out.extend(qos_entry(&c));
    }
    out
}

/// `backend_specific.scsi` of `vhost_get_controllers`, as SPDK lists it.
pub fn describe_targets(targets: &TargetTable) -> Value {
    let list: Vec<Value> = targets
        .snapshot()
        .into_iter()
        .flatten()
        .map(|t| {
            let luns: Vec<Value> = t.luns().iter().map(|l| json!({ "id": l.id, "bdev_name": l.bdev_name() })).collect();
            json!({ "scsi_dev_num": t.id, "id": t.id, "target_name": t.name, "luns": luns })
        })
        .collect();
    Value::Array(list)
}

/// A vhost-user-scsi controller with its target table and event queue.
type ScsiController = (Arc<Controller>, Arc<TargetTable>, Arc<EventQueueState>);

fn scsi_controller(name: &str) -> Result<ScsiController, ControllerError> {
    let c = controllers::get(name).ok_or_else(|| ControllerError::NotFound(name.to_string()))?;
    match &c.kind {
        ControllerKind::Scsi { targets, events } => {
            let (t, e) = (targets.clone(), events.clone());
            Ok((c, t, e))
        }
        _ => Err(ControllerError::Invalid(format!("vhost controller {name} is not a vhost-user-scsi controller"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateScsi {
    ctrlr: String,
    cpumask: Option<String>,
    /// SPDK's delay flag (start the controller later); Ferry starts at once.
    #[serde(default)]
    delay: bool,
}

fn vhost_create_scsi_controller(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateScsi = parse(params)?;
    let _ = p.delay;
    valid_name(&p.ctrlr)?;
    if controllers::get(&p.ctrlr).is_some() {
        return Err(ControllerError::Exists(p.ctrlr).into());
    }
    let (mask, reactors) = reactors_for(p.cpumask.as_deref())?;
    let targets = Arc::new(TargetTable::default());
    let events = Arc::new(EventQueueState::default());
    let device = Arc::new(ScsiDevice::new(&p.ctrlr, targets.clone(), events.clone()));
    let kind = ControllerKind::Scsi { targets, events };
    // Queue 0 (control) and 1 (event) take the first reactors; request queues 2.. spread
    // over the mask starting from the first reactor again.
    let mut order = reactors.clone();
    if reactors.len() > 1 {
        order.rotate_right(2 % reactors.len());
    }
    let ctrl =
        Controller::start(&p.ctrlr, &socket_dir(), mask, order, device, kind, Arc::new(BackendChannel::default()))?;
    controllers::insert(ctrl);
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartScsi {
    ctrlr: String,
}

/// SPDK starts a controller created with `delay` here (its saved configurations call it after
/// each controller's targets); Ferry's controllers serve from creation, so this checks that
/// the controller exists.
fn vhost_start_scsi_controller(params: Option<Value>) -> Result<Value, RpcError> {
    let p: StartScsi = parse(params)?;
    scsi_controller(&p.ctrlr)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddTarget {
    ctrlr: String,
    /// Target slot, or -1 for the first free one.
    scsi_target_num: i64,
    bdev_name: String,
}

fn vhost_scsi_controller_add_target(params: Option<Value>) -> Result<Value, RpcError> {
    let p: AddTarget = parse(params)?;
    let (ctrl, targets, events) = scsi_controller(&p.ctrlr)?;
    let slots = targets.snapshot();
    let id = match p.scsi_target_num {
        -1 => slots
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| ControllerError::Invalid(format!("vhost controller {} has no free target slot", p.ctrlr)))?,
        n if (0..MAX_TARGETS as i64).contains(&n) => n as usize,
        n => {
            return Err(RpcError::invalid_params(format!(
                "scsi_target_num {n} is out of range (0..{} or -1)",
                MAX_TARGETS - 1
            )))
        }
    };
    if slots[id].is_some() {
        return Err(RpcError::errno(libc::EEXIST, format!("vhost controller {}: target {id} already exists", p.ctrlr)));
    }
    // The LUN is made after the descriptor is open; the bdev's events reach it through this.
    let lun_slot: Arc<Mutex<Weak<ScsiLun>>> = Arc::new(Mutex::new(Weak::new()));
    let on_event = {
        let (lun_slot, targets, events, ctrl_name) =
            (lun_slot.clone(), targets.clone(), events.clone(), p.ctrlr.clone());
        let ctrl_weak = Arc::downgrade(&ctrl);
        Box::new(move |ev: bdev::BdevEvent, b: &bdev::Bdev| {
            let connected = ctrl_weak.upgrade().is_some_and(|c| c.is_connected());
            match ev {
                bdev::BdevEvent::Remove => {
                    tracing::warn!(ctrlr = %ctrl_name, target = id, bdev = b.name(), "bdev removed; hot-removing the target");
                    if targets.remove(id).is_some() && connected {
                        events.target_removed(id as u8);
                    }
                }
                bdev::BdevEvent::Resize => {
                    if let Some(lun) = lun_slot.lock().unwrap_or_else(|e| e.into_inner()).upgrade() {
                        lun.capacity_changed();
                    }
                    if connected {
                        events.capacity_changed(id as u8);
                    }
                    tracing::info!(ctrlr = %ctrl_name, target = id, bdev = b.name(), "bdev resized; guest told");
                }
            }
        })
    };
    // No claim, as SPDK's SCSI LUNs (spdk_bdev_open_ext): other controllers may serve the
    // bdev too (live migration); a bdev another module claimed refuses this writer.
    let desc = bdev::open(&p.bdev_name, true, on_event).map_err(ControllerError::from)?;
    let name = format!("{}.Target{id}", p.ctrlr);
    let lun = Arc::new(ScsiLun::new(0, desc, &name, id as u16 + 1, false));
    *lun_slot.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(&lun);
    if !targets.insert(Arc::new(ScsiTarget::new(id as u32, &name, vec![lun]))) {
        return Err(RpcError::errno(libc::EEXIST, format!("vhost controller {}: target {id} already exists", p.ctrlr)));
    }
    if ctrl.is_connected() {
        events.target_added(id as u8);
    }
    tracing::info!(ctrlr = %p.ctrlr, target = id, bdev = %p.bdev_name, "SCSI target added");
    Ok(json!(id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveTarget {
    ctrlr: String,
    scsi_target_num: u32,
}

fn vhost_scsi_controller_remove_target(params: Option<Value>) -> Result<Value, RpcError> {
    let p: RemoveTarget = parse(params)?;
    let (ctrl, targets, events) = scsi_controller(&p.ctrlr)?;
    let id = p.scsi_target_num as usize;
    if id >= MAX_TARGETS || targets.remove(id).is_none() {
        return Err(RpcError::errno(libc::ENODEV, format!("vhost controller {}: no target {id}", p.ctrlr)));
    }
    // In-flight commands hold the unit until they finish; the guest drops the disk on the event.
    if ctrl.is_connected() {
        events.target_removed(id as u8);
    }
    tracing::info!(ctrlr = %p.ctrlr, target = id, "SCSI target removed");
    Ok(json!(true))
}

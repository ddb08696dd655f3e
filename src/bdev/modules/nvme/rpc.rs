//! `bdev_nvme_attach_controller`, `bdev_nvme_detach_controller`, `bdev_nvme_get_controllers`,
//! `bdev_nvme_reset_controller` and `bdev_nvme_get_controller_health_info` with SPDK's
//! parameters and answers (`schema/schema.yaml`).

use super::ctrlr::{self, AttachParams};
use crate::rpc::{parse, RpcError, RpcMethod};
use ferry_nvme::host::ctrlr::CtrlrState;
use ferry_nvme::host::health::{self, Health};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The module's RPC methods.
pub const METHODS: &[RpcMethod] = &[
    // Connecting waits on the target: done outside the call lock.
    RpcMethod::runtime_unlocked("bdev_nvme_attach_controller", bdev_nvme_attach_controller),
    RpcMethod::runtime("bdev_nvme_detach_controller", bdev_nvme_detach_controller),
    RpcMethod::runtime("bdev_nvme_get_controllers", bdev_nvme_get_controllers),
    // Both wait for the controller (a reset, an admin command): outside the call lock.
    RpcMethod::runtime_unlocked("bdev_nvme_reset_controller", bdev_nvme_reset_controller),
    RpcMethod::runtime_unlocked("bdev_nvme_get_controller_health_info", bdev_nvme_get_controller_health_info),
    RpcMethod::always("bdev_nvme_set_options", super::options::bdev_nvme_set_options)
        .accepting(super::options::ACCEPTED),
];

/// How long a reset may take before the RPC gives up waiting (the reset goes on).
const RESET_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetParams {
    name: String,
    cntlid: Option<u16>,
}

fn no_controller(name: &str) -> RpcError {
    RpcError::errno(libc::ENODEV, format!("Controller {name} does not exist"))
}

/// SPDK's `bdev_nvme_reset_controller`: the controller is disabled and brought up again, its
/// I/O queues re-created, and I/O in flight retried on them; answers once it is enabled again.
fn bdev_nvme_reset_controller(params: Option<Value>) -> Result<Value, RpcError> {
    let p: ResetParams = parse(params)?;
    let c = ctrlr::find(&p.name).ok_or_else(|| no_controller(&p.name))?;
    let before = c.shared.io_view();
    if let Some(id) = p.cntlid {
        if id != before.cntlid {
            return Err(RpcError::errno(libc::ENODEV, format!("Controller {} has no path with cntlid {id}", p.name)));
        }
    }
    if before.state != CtrlrState::Enabled {
        return Err(RpcError::errno(libc::EBUSY, format!("Controller {} is {}", p.name, before.state.spdk_name())));
    }
    c.shared.request_reset(before.generation);
    let deadline = Instant::now() + RESET_TIMEOUT;
    loop {
        let v = c.shared.io_view();
        if v.generation != before.generation && v.state == CtrlrState::Enabled {
            return Ok(json!(true));
        }
        if v.state == CtrlrState::Deleted {
            return Err(RpcError::errno(libc::EIO, format!("Controller {} was lost during the reset", p.name)));
        }
        if Instant::now() > deadline {
            return Err(RpcError::errno(
                libc::ETIMEDOUT,
                format!("Controller {} did not come back within 60 s", p.name),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthParams {
    name: String,
}

/// SPDK's `bdev_nvme_get_controller_health_info`: the SMART / Health Information log page
/// with the controller's identity, under SPDK's field names.
fn bdev_nvme_get_controller_health_info(params: Option<Value>) -> Result<Value, RpcError> {
    let p: HealthParams = parse(params)?;
    let c = ctrlr::find(&p.name).ok_or_else(|| no_controller(&p.name))?;
    let (cpl, data) = ctrlr::admin_command(&p.name, health::get_log_page(), health::LEN)?;
    if !cpl.status.is_success() {
        return Err(RpcError::errno(libc::EIO, format!("Get Log Page (SMART) failed: {:?}", cpl.status)));
    }
    let h = Health::parse(&data).ok_or_else(|| RpcError::errno(libc::EIO, "short SMART log page"))?;
    let id = c.shared.snapshot().data;
    Ok(json!({
        "model_number": id.model,
        "serial_number": id.serial,
        "firmware_revision": id.firmware,
        "traddr": c.params.traddr,
        "critical_warning": h.critical_warning,
        "temperature_celsius": h.temperature_kelvin as i32 - 273,
        "available_spare_percentage": h.available_spare,
        "available_spare_threshold_percentage": h.available_spare_threshold,
        "percentage_used": h.percentage_used,
        "data_units_read": h.data_units_read,
        "data_units_written": h.data_units_written,
        "host_read_commands": h.host_read_commands,
        "host_write_commands": h.host_write_commands,
        "controller_busy_time": h.controller_busy_time,
        "power_cycles": h.power_cycles,
        "power_on_hours": h.power_on_hours,
        "unsafe_shutdowns": h.unsafe_shutdowns,
        "media_errors": h.media_errors,
        "num_err_log_entries": h.num_err_log_entries,
        "warning_temperature_time_minutes": h.warning_temperature_time,
        "critical_composite_temperature_time_minutes": h.critical_temperature_time,
    }))
}

fn bdev_nvme_attach_controller(params: Option<Value>) -> Result<Value, RpcError> {
    let p: AttachParams = parse(params)?;
    let names = ctrlr::attach(p)?;
    Ok(json!(names))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetachParams {
    name: String,
    trtype: Option<String>,
    traddr: Option<String>,
    adrfam: Option<String>,
    trsvcid: Option<String>,
    subnqn: Option<String>,
    hostaddr: Option<String>,
    hostsvcid: Option<String>,
}

fn bdev_nvme_detach_controller(params: Option<Value>) -> Result<Value, RpcError> {
    let p: DetachParams = parse(params)?;
    let c = ctrlr::find(&p.name).ok_or_else(|| RpcError::errno(libc::ENODEV, format!("No such device: {}", p.name)))?;
    // A path given must be this controller's (Ferry's controllers have one path).
    let a = &c.params;
    let same = |given: &Option<String>, have: &str| given.as_deref().is_none_or(|g| g.eq_ignore_ascii_case(have));
    let tcp = a.trtype_name() == "TCP";
    let matches = same(&p.trtype, a.trtype_name())
        && same(&p.traddr, &a.traddr)
        && (!tcp || same(&p.adrfam, a.adrfam.as_deref().unwrap_or("ipv4")))
        && (!tcp || same(&p.trsvcid, a.trsvcid.as_deref().unwrap_or(ctrlr::DEFAULT_PORT)))
        && same(&p.subnqn, &a.subnqn)
        && same(&p.hostaddr, a.hostaddr.as_deref().unwrap_or(""))
        && same(&p.hostsvcid, a.hostsvcid.as_deref().unwrap_or(""));
    if !matches {
        return Err(RpcError::errno(libc::ENODEV, format!("No such path on controller {}", p.name)));
    }
    // Dropped first: detach waits for the last reference to the controller's device.
    drop(c);
    ctrlr::detach(&p.name)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    name: Option<String>,
}

fn bdev_nvme_get_controllers(params: Option<Value>) -> Result<Value, RpcError> {
    let p: Option<GetParams> = match params {
        None | Some(Value::Null) => None,
        v => Some(parse(v)?),
    };
    let list = ctrlr::list();
    let name = p.and_then(|p| p.name);
    if let Some(n) = &name {
        if !list.iter().any(|c| &c.name == n) {
            return Err(RpcError::errno(libc::ENODEV, format!("Controller {n} does not exist")));
        }
    }
    Ok(Value::Array(list.iter().filter(|c| name.as_ref().is_none_or(|n| n == &c.name)).map(|c| c.info()).collect()))
}

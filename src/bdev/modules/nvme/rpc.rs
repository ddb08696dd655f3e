//! `bdev_nvme_attach_controller`, `bdev_nvme_detach_controller`, `bdev_nvme_get_controllers`
//! with SPDK's parameters and answers (`schema/schema.yaml`).

use super::ctrlr::{self, AttachParams};
use crate::rpc::{parse, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Value};

/// The module's RPC methods.
pub const METHODS: &[RpcMethod] = &[
    // Connecting waits on the target: done outside the call lock.
    RpcMethod::runtime_unlocked("bdev_nvme_attach_controller", bdev_nvme_attach_controller),
    RpcMethod::runtime("bdev_nvme_detach_controller", bdev_nvme_detach_controller),
    RpcMethod::runtime("bdev_nvme_get_controllers", bdev_nvme_get_controllers),
];

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

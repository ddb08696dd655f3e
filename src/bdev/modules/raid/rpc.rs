//! SPDK's `bdev_raid_*` methods, with SPDK's parameters, errors and answers
//! (module/bdev/raid/bdev_raid_rpc.c).

use super::array::{self, Array, RaidState, Slot};
use super::layout::RaidLevel;
use super::superblock::{MAX_SLOTS, NAME_MAX};
use super::{members, rebuild, MD_REACTOR};
use crate::bdev::{registry, BdevError};
use crate::framework::task;
use crate::rpc::{parse, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use uuid::Uuid;

/// The module's RPC methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime("bdev_raid_create", bdev_raid_create),
    RpcMethod::runtime("bdev_raid_delete", bdev_raid_delete),
    RpcMethod::runtime("bdev_raid_get_bdevs", bdev_raid_get_bdevs),
    RpcMethod::runtime("bdev_raid_add_base_bdev", bdev_raid_add_base_bdev),
    RpcMethod::runtime("bdev_raid_remove_base_bdev", bdev_raid_remove_base_bdev),
    // As SPDK: before and after framework_start_init.
    RpcMethod::always("bdev_raid_set_options", bdev_raid_set_options),
];

fn strerror(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string().split(" (os error").next().unwrap_or_default().to_string()
}

/// SPDK's answer for a failed operation: `-errno` and "<what>: <strerror>".
fn failed(errno: i32, what: &str) -> RpcError {
    RpcError::errno(errno, format!("{what}: {}", strerror(errno)))
}

/// `base_bdevs`: a list, or (as SPDK's decoder also takes) one whitespace-separated string.
#[derive(Deserialize)]
#[serde(untagged)]
enum BaseBdevs {
    List(Vec<String>),
    Words(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: String,
    #[serde(default)]
    strip_size_kb: u32,
    raid_level: String,
    base_bdevs: BaseBdevs,
    uuid: Option<Uuid>,
    #[serde(default)]
    superblock: bool,
}

fn check_create(p: &CreateParams, level: Result<RaidLevel, ()>, bases: &[String]) -> Result<RaidLevel, i32> {
    if p.name.len() > NAME_MAX {
        tracing::error!("Raid bdev name '{}' exceeds {NAME_MAX} characters", p.name);
        return Err(libc::EINVAL);
    }
    if array::find(&p.name).is_some() {
        tracing::error!("Duplicate raid bdev name found: {}", p.name);
        return Err(libc::EEXIST);
    }
    let Ok(level) = level else {
        tracing::error!("Unsupported raid level '{}'", p.raid_level);
        return Err(libc::EINVAL);
    };
    if level == RaidLevel::Raid1 {
        if p.strip_size_kb != 0 {
            tracing::error!("Strip size is not supported by raid1");
            return Err(libc::EINVAL);
        }
    } else if !p.strip_size_kb.is_power_of_two() {
        tracing::error!("Invalid strip size {}", p.strip_size_kb);
        return Err(libc::EINVAL);
    }
    if bases.len() < level.min_members() || bases.len() > 255 || (p.superblock && bases.len() > MAX_SLOTS) {
        tracing::error!("At least {} base devices required for {}", level.min_members(), level.name());
        return Err(libc::EINVAL);
    }
    let mut sorted: Vec<&String> = bases.iter().collect();
    sorted.sort();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        tracing::error!("a base bdev is named twice");
        return Err(libc::EINVAL);
    }
    Ok(level)
}

fn bdev_raid_create(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateParams = parse(params)?;
    let bases: Vec<String> = match &p.base_bdevs {
        BaseBdevs::List(l) => l.clone(),
        BaseBdevs::Words(s) => s.split_whitespace().map(str::to_string).collect(),
    };
    if bases.iter().any(String::is_empty) {
        return Err(failed(libc::EINVAL, "The base bdev name cannot be empty"));
    }
    let Some(level) = RaidLevel::parse(&p.raid_level) else {
        return Err(RpcError::invalid_params(format!("raid_level {:?}: raid0, 0, raid1, 1, concat", p.raid_level)));
    };
    let what = format!("Failed to create RAID bdev {}", p.name);
    let level = check_create(&p, level, &bases).map_err(|e| failed(e, &what))?;
    let uuid = members::uuid_or_new(p.uuid);
    let slots = bases.iter().map(|b| Slot::named(b)).collect();
    let array = Arc::new(Array::new(&p.name, uuid, level, p.strip_size_kb, p.superblock, slots));
    array::insert(array.clone()).map_err(|e| failed(e.errno(), &what))?;
    match build(&array, &bases) {
        Ok(()) => Ok(json!(true)),
        Err(e) => {
            tracing::error!(raid = %p.name, error = %e, "raid bdev not created");
            members::discard(&array);
            Err(failed(e.errno(), &what))
        }
    }
}

/// Attaches every member present (SPDK waits, configuring, for those that are not) and
/// brings the array online when all are.
fn build(array: &Arc<Array>, bases: &[String]) -> Result<(), BdevError> {
    for (i, name) in bases.iter().enumerate() {
        if registry::get(name).is_none() {
            continue;
        }
        if let Some((other, _)) = registry::get(name).and_then(|b| array::owner_of(&b)) {
            tracing::error!(member = %name, raid = %other.name, "Unable to claim this bdev as it is already claimed");
            return Err(BdevError::Claimed { bdev: name.clone(), module: "raid".into() });
        }
        members::attach(array, i, name)?;
    }
    if members::complete(array) {
        members::go_online_blocking(array)?;
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    name: String,
    #[serde(default)]
    clear_sb: bool,
}

fn bdev_raid_delete(params: Option<Value>) -> Result<Value, RpcError> {
    let p: DeleteParams = parse(params)?;
    let array =
        array::find(&p.name).ok_or_else(|| RpcError::errno(libc::ENODEV, format!("raid bdev {} not found", p.name)))?;
    let clear = p.clear_sb;
    task::block_on(MD_REACTOR, move || async move { members::delete(&array, clear).await })
        .map_err(|e| RpcError::new(crate::rpc::error::INTERNAL_ERROR, e.to_string()))?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    #[serde(default = "all")]
    category: String,
}

fn all() -> String {
    "all".into()
}

fn bdev_raid_get_bdevs(params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetParams = parse(params)?;
    let want = match p.category.as_str() {
        "all" => None,
        "online" => Some(RaidState::Online),
        "configuring" => Some(RaidState::Configuring),
        "offline" => Some(RaidState::Offline),
        other => {
            return Err(RpcError::invalid_params(format!("category {other:?}: all, online, configuring or offline")))
        }
    };
    let out: Vec<Value> = array::list()
        .into_iter()
        .filter(|a| want.is_none_or(|w| a.ctl().state == w))
        .map(|a| {
            let mut v = json!({"name": a.name});
            if let (Value::Object(o), Value::Object(info)) = (&mut v, a.info_json()) {
                o.extend(info);
            }
            v
        })
        .collect();
    Ok(Value::Array(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddParams {
    raid_bdev: String,
    base_bdev: String,
}

fn bdev_raid_add_base_bdev(params: Option<Value>) -> Result<Value, RpcError> {
    let p: AddParams = parse(params)?;
    let array = array::find(&p.raid_bdev)
        .ok_or_else(|| RpcError::errno(libc::ENODEV, format!("raid bdev {} is not found in config", p.raid_bdev)))?;
    let name = p.base_bdev.clone();
    let r = task::block_on(MD_REACTOR, move || async move { members::add(&array, &name).await })
        .unwrap_or_else(|e| Err(BdevError::Framework(e)));
    r.map_err(|e| {
        tracing::error!(error = %e, "base bdev not added");
        failed(e.errno(), &format!("Failed to add base bdev {} to RAID bdev {}", p.base_bdev, p.raid_bdev))
    })?;
    Ok(json!(true))
}

fn bdev_raid_remove_base_bdev(params: Option<Value>) -> Result<Value, RpcError> {
    let p: crate::bdev::modules::DeleteParams = parse(params)?;
    let name = p.name.clone();
    let r = task::block_on(MD_REACTOR, move || async move { members::remove(&name) })
        .unwrap_or_else(|e| Err(BdevError::Framework(e)));
    r.map_err(|e| RpcError::errno(e.errno(), "Failed to remove base bdev from raid bdev"))?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetOptions {
    process_window_size_kb: Option<u32>,
    process_max_bandwidth_mb_sec: Option<u32>,
}

/// SPDK's `bdev_raid_set_options`: absent parameters keep their value; a window of 0 is
/// SPDK's `-22` (EINVAL).
fn bdev_raid_set_options(params: Option<Value>) -> Result<Value, RpcError> {
    let p: SetOptions = match params {
        None => SetOptions { process_window_size_kb: None, process_max_bandwidth_mb_sec: None },
        params => parse(params)?,
    };
    let old = rebuild::options();
    let new = rebuild::ProcessOptions {
        process_window_size_kb: p.process_window_size_kb.unwrap_or(old.process_window_size_kb),
        process_max_bandwidth_mb_sec: p.process_max_bandwidth_mb_sec.unwrap_or(old.process_max_bandwidth_mb_sec),
    };
    rebuild::set_options(new).map_err(|e| {
        tracing::error!(error = %e, "raid options not set");
        RpcError::errno(libc::EINVAL, strerror(libc::EINVAL))
    })?;
    tracing::info!(?new, "raid process options set");
    Ok(json!(true))
}

/// The `bdev_raid_set_options` entry of `save_config` (as SPDK, first in the bdev
/// subsystem), when the options differ from the defaults.
pub fn options_entry() -> Option<Value> {
    let o = rebuild::options();
    (o != rebuild::DEFAULT_OPTIONS).then(|| {
        crate::app::config::entry(
            "bdev_raid_set_options",
            json!({ "process_window_size_kb": o.process_window_size_kb,
                    "process_max_bandwidth_mb_sec": o.process_max_bandwidth_mb_sec }),
        )
    })
}

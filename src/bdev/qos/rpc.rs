//! QoS methods: SPDK's `bdev_set_qos_limit` and Ferry's `bdev_qos_group_*`, the
//! `assigned_rate_limits` of `bdev_get_bdevs`, and the `save_config` entries.

use super::group::{self, Group, QosError};
use super::spec::{QosSpec, RateChanges, RateLimits, SpecChanges, DEFAULT_BURST_MS};
use crate::bdev::{registry, Bdev, BdevError};
use crate::rpc::{parse, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The QoS methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime("bdev_set_qos_limit", bdev_set_qos_limit),
    RpcMethod::runtime("bdev_qos_group_create", bdev_qos_group_create),
    RpcMethod::runtime("bdev_qos_group_set_limit", bdev_qos_group_set_limit),
    RpcMethod::runtime("bdev_qos_group_delete", bdev_qos_group_delete),
    RpcMethod::runtime("bdev_qos_group_add_bdev", bdev_qos_group_add_bdev),
    RpcMethod::runtime("bdev_qos_group_remove_bdev", bdev_qos_group_remove_bdev),
    RpcMethod::runtime("bdev_qos_group_get", bdev_qos_group_get),
];

impl From<QosError> for RpcError {
    fn from(e: QosError) -> Self {
        match e {
            QosError::Invalid(m) => RpcError::invalid_params(m),
            other => RpcError::errno(other.errno(), other.to_string()),
        }
    }
}

fn limits_json(l: &RateLimits) -> Value {
    Value::Object(l.named().into_iter().map(|(k, v)| (k.to_string(), v.into())).collect())
}

/// SPDK's `assigned_rate_limits` of a bdev: its own four limits (0: none).
pub fn assigned_rate_limits(bdev: &Bdev) -> Value {
    limits_json(&bdev.0.qos.limits())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetQosLimit {
    name: String,
    rw_ios_per_sec: Option<u64>,
    rw_mbytes_per_sec: Option<u64>,
    r_mbytes_per_sec: Option<u64>,
    w_mbytes_per_sec: Option<u64>,
}

fn bdev_set_qos_limit(params: Option<Value>) -> Result<Value, RpcError> {
    let p: SetQosLimit = parse(params)?;
    // As SPDK: the bdev is looked up (ENODEV) before the limits are looked at.
    let bdev = registry::get(&p.name).ok_or_else(|| BdevError::NotFound(p.name.clone()))?;
    let changes = RateChanges {
        rw_ios_per_sec: p.rw_ios_per_sec,
        rw_mbytes_per_sec: p.rw_mbytes_per_sec,
        r_mbytes_per_sec: p.r_mbytes_per_sec,
        w_mbytes_per_sec: p.w_mbytes_per_sec,
    };
    if changes.is_empty() {
        return Err(RpcError::errno(libc::EINVAL, "No rate limits specified"));
    }
    let limits = changes.apply(bdev.0.qos.limits());
    bdev.0.qos.set_limits(limits);
    tracing::info!(bdev = bdev.name(), ?limits, "QoS limits set");
    Ok(json!(true))
}

/// A group's parameters: SPDK's four limits, a burst rate for each, the burst length, and
/// whether unmap and write-zeroes are metered. Absent: unchanged (create: none).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupParams {
    name: String,
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

impl GroupParams {
    fn changes(&self) -> SpecChanges {
        SpecChanges {
            limits: RateChanges {
                rw_ios_per_sec: self.rw_ios_per_sec,
                rw_mbytes_per_sec: self.rw_mbytes_per_sec,
                r_mbytes_per_sec: self.r_mbytes_per_sec,
                w_mbytes_per_sec: self.w_mbytes_per_sec,
            },
            burst: RateChanges {
                rw_ios_per_sec: self.rw_ios_burst_per_sec,
                rw_mbytes_per_sec: self.rw_mbytes_burst_per_sec,
                r_mbytes_per_sec: self.r_mbytes_burst_per_sec,
                w_mbytes_per_sec: self.w_mbytes_burst_per_sec,
            },
            burst_length_ms: self.burst_length_ms,
            meter_unmap: self.meter_unmap,
        }
    }
}

fn find_group(name: &str) -> Result<Arc<Group>, RpcError> {
    group::get(name).ok_or_else(|| QosError::GroupNotFound(name.to_string()).into())
}

fn bdev_qos_group_create(params: Option<Value>) -> Result<Value, RpcError> {
    let p: GroupParams = parse(params)?;
    let spec = p.changes().apply(QosSpec::spdk(RateLimits::default()));
    group::create(&p.name, spec)?;
    Ok(json!(true))
}

fn bdev_qos_group_set_limit(params: Option<Value>) -> Result<Value, RpcError> {
    let p: GroupParams = parse(params)?;
    let g = find_group(&p.name)?;
    if p.changes().is_empty() {
        return Err(RpcError::errno(libc::EINVAL, "No rate limits specified"));
    }
    g.set_spec(p.changes().apply(g.spec()))?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupName {
    name: String,
}

fn bdev_qos_group_delete(params: Option<Value>) -> Result<Value, RpcError> {
    let p: GroupName = parse(params)?;
    group::delete(&p.name)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Member {
    name: String,
    bdev_name: String,
}

fn member(params: Option<Value>) -> Result<(Arc<Group>, Bdev), RpcError> {
    let p: Member = parse(params)?;
    let g = find_group(&p.name)?;
    let bdev = registry::get(&p.bdev_name).ok_or(BdevError::NotFound(p.bdev_name))?;
    Ok((g, bdev))
}

fn bdev_qos_group_add_bdev(params: Option<Value>) -> Result<Value, RpcError> {
    let (g, bdev) = member(params)?;
    group::add(&g, &bdev)?;
    Ok(json!(true))
}

fn bdev_qos_group_remove_bdev(params: Option<Value>) -> Result<Value, RpcError> {
    let (g, bdev) = member(params)?;
    group::remove(&g, &bdev)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetGroups {
    name: Option<String>,
}

/// A limit as the `*_get` methods show it: its rates, burst rates, burst length and whether
/// unmap and write-zeroes are metered (a group's, a vhost controller's `qos`).
pub fn spec_json(spec: &QosSpec) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("assigned_rate_limits".into(), limits_json(&spec.limits));
    m.insert("burst_rate_limits".into(), limits_json(&spec.burst));
    m.insert("burst_length_ms".into(), spec.burst_length_ms.into());
    m.insert("meter_unmap".into(), spec.meter_unmap.into());
    m
}

fn describe(g: &Group) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), g.name().into());
    m.extend(spec_json(&g.spec()));
    m.insert("bdevs".into(), g.members().iter().map(|b| b.name().to_string()).collect::<Vec<_>>().into());
    Value::Object(m)
}

fn bdev_qos_group_get(params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetGroups = parse(params)?;
    let groups = match p.name {
        Some(n) => vec![find_group(&n)?],
        None => group::list(),
    };
    Ok(Value::Array(groups.iter().map(|g| describe(g)).collect()))
}

/// The groups whose create entry `save_config` has written so far.
#[derive(Default)]
pub struct SavedGroups(Vec<String>);

/// The parameters that set `spec` again, as `bdev_qos_group_create` and
/// `vhost_controller_set_qos` take them: the rates that are set, and what differs from the
/// defaults.
pub fn spec_params(spec: &QosSpec) -> Map<String, Value> {
    let mut params = Map::new();
    for (k, v) in spec.limits.named() {
        if v > 0 {
            params.insert(k.into(), v.into());
        }
    }
    for (k, v) in spec.burst.named() {
        if v > 0 {
            params.insert(k.replace("_per_sec", "_burst_per_sec"), v.into());
        }
    }
    if spec.burst_length_ms != DEFAULT_BURST_MS {
        params.insert("burst_length_ms".into(), spec.burst_length_ms.into());
    }
    if spec.meter_unmap {
        params.insert("meter_unmap".into(), true.into());
    }
    params
}

fn group_create_entry(g: &Group) -> Value {
    let mut params = Map::new();
    params.insert("name".into(), g.name().into());
    params.extend(spec_params(&g.spec()));
    crate::app::config::entry("bdev_qos_group_create", Value::Object(params))
}

/// The entries that follow `bdev`'s create entry in `save_config`: as SPDK, its
/// `bdev_set_qos_limit` with the limits that are set; then, if it is in a group, the group's
/// create entry (the first time) and its `bdev_qos_group_add_bdev`.
pub fn config_entries(bdev: &Bdev, saved: &mut SavedGroups) -> Vec<Value> {
    let mut out = Vec::new();
    let limits = bdev.0.qos.limits();
    if !limits.is_none() {
        let mut params = Map::new();
        params.insert("name".into(), bdev.name().into());
        for (k, v) in limits.named() {
            if v > 0 {
                params.insert(k.into(), v.into());
            }
        }
        out.push(crate::app::config::entry("bdev_set_qos_limit", Value::Object(params)));
    }
    if let Some(g) = bdev.0.qos.group() {
        if !saved.0.iter().any(|n| n == g.name()) {
            saved.0.push(g.name().to_string());
            out.push(group_create_entry(&g));
        }
        let params = json!({ "name": g.name(), "bdev_name": bdev.name() });
        out.push(crate::app::config::entry("bdev_qos_group_add_bdev", params));
    }
    out
}

/// The create entries of the groups no saved bdev named (groups without members).
pub fn remaining_groups(saved: &SavedGroups) -> Vec<Value> {
    group::list().iter().filter(|g| !saved.0.iter().any(|n| n == g.name())).map(|g| group_create_entry(g)).collect()
}

//! The bdev core's RPC methods (listing, statistics, examine) and its saved configuration.

use super::stats::{IoStats, ResetMode};
use super::{qos, registry, Bdev, BdevError, IoType};
use crate::app::config::entry;
use crate::framework::ticks;
use crate::rpc::{no_params, parse, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

/// The bdev core's methods.
pub const METHODS: &[RpcMethod] = &[
    // Unlocked so that a `timeout` wait does not hold up the call that creates the bdev.
    RpcMethod::runtime("bdev_get_bdevs", bdev_get_bdevs).unlocked(),
    RpcMethod::runtime("bdev_get_iostat", bdev_get_iostat),
    RpcMethod::runtime("bdev_wait_for_examine", bdev_wait_for_examine).unlocked(),
    RpcMethod::runtime("bdev_examine", bdev_examine),
];

/// The bdev subsystem's configuration: each bdev's create call, in registration order (bases
/// before the virtual bdevs built on them), then `bdev_wait_for_examine`.
pub fn write_config() -> Vec<Value> {
    // Module options first, as SPDK writes them (set before any bdev is made).
    let modules = super::modules::raid::rpc::options_entry().into_iter();
    let mut config: Vec<Value> = modules
        .chain(super::modules::lvol::copy::options_entry())
        .chain(super::modules::nvme::options::options_entry())
        // Registered Ceph clusters before the rbd bdevs that name them.
        .chain(super::modules::rbd::cluster::config_entries())
        .collect();
    let mut groups = qos::rpc::SavedGroups::default();
    for b in registry::list() {
        if let Some((method, params)) = b.backend().config(&b) {
            config.push(entry(method, params));
        }
        // As SPDK: a bdev's QoS limit right after its create entry.
        config.extend(qos::rpc::config_entries(&b, &mut groups));
    }
    config.extend(qos::rpc::remaining_groups(&groups));
    config.push(json!({ "method": "bdev_wait_for_examine" }));
    config
}

/// SPDK's I/O types, in its order (`spdk_bdev_get_io_type_name`): `supported_io_types`
/// lists each one.
const SPDK_IO_TYPES: &[&str] = &[
    "read",
    "write",
    "unmap",
    "flush",
    "reset",
    "nvme_admin",
    "nvme_io",
    "nvme_io_md",
    "write_zeroes",
    "zcopy",
    "get_zone_info",
    "zone_management",
    "zone_append",
    "compare",
    "compare_and_write",
    "abort",
    "seek_hole",
    "seek_data",
    "copy",
    "nvme_iov_md",
    "nvme_nssr",
    "write_uncorrectable",
];

/// SPDK's `bdev_get_bdevs` description of one bdev.
pub fn describe(bdev: &Bdev) -> Value {
    let mut io_types = Map::new();
    for &name in SPDK_IO_TYPES {
        let supported = IoType::ALL.iter().find(|t| t.spdk_name() == name).is_some_and(|&t| bdev.supports(t));
        io_types.insert(name.into(), supported.into());
    }
    let mut driver_specific = Map::new();
    if let Some((key, value)) = bdev.backend().driver_specific() {
        driver_specific.insert(key.into(), value);
    }
    let claimed = bdev.claimed_by();
    let hints = bdev.backend().io_hints();
    let mut v = json!({
        "name": bdev.name(),
        "aliases": bdev.aliases(),
        "product_name": bdev.backend().product_name(),
        "block_size": bdev.block_size(),
        "num_blocks": bdev.num_blocks(),
        "preferred_write_alignment": hints.write_alignment,
        "preferred_write_granularity": hints.write_granularity,
        "optimal_write_size": hints.optimal_write_size,
        "preferred_unmap_alignment": hints.unmap_alignment,
        "preferred_unmap_granularity": hints.unmap_granularity,
        "uuid": bdev.uuid().to_string(),
        "assigned_rate_limits": qos::rpc::assigned_rate_limits(bdev),
        "claimed": claimed.is_some(),
        "zoned": false,
        "supported_io_types": io_types,
        "memory_domains": [],
        "driver_specific": driver_specific,
    });
    if let Some(module) = claimed {
        v["claim_type"] = json!("exclusive_write");
        v["claims"] = json!([{ "type": "exclusive_write", "module": module }]);
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBdevs {
    name: Option<String>,
    /// Milliseconds to wait for `name` to appear.
    #[serde(default)]
    timeout: u64,
}

fn bdev_get_bdevs(params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetBdevs = parse(params)?;
    let Some(name) = p.name else {
        return Ok(Value::Array(registry::list().iter().map(describe).collect()));
    };
    let deadline = Instant::now() + Duration::from_millis(p.timeout.min(3_600_000));
    let mut told = false;
    loop {
        if let Some(b) = registry::get(&name) {
            return Ok(json!([describe(&b)]));
        }
        if Instant::now() >= deadline {
            return Err(BdevError::NotFound(name).into());
        }
        if !told {
            tracing::info!(bdev = %name, timeout_ms = p.timeout, "bdev_get_bdevs: waiting for the bdev to appear");
            told = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetIostat {
    /// The bdevs to report (SPDK v26.01 on); all when absent.
    names: Option<Vec<String>>,
    /// The older spelling: one bdev (rpc.py before v26.01, ferryctl).
    name: Option<String>,
    #[serde(default)]
    per_channel: bool,
    /// What to reset once read.
    #[serde(default)]
    reset_mode: ResetMode,
}

pub(super) fn bdev_get_iostat(params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetIostat = parse(params)?;
    if p.names.as_ref().is_some_and(|n| n.len() > 1024) {
        return Err(RpcError::invalid_params("names may list at most 1024 bdevs"));
    }
    let names: Option<Vec<String>> = match (p.names, p.name) {
        (Some(_), Some(_)) => return Err(RpcError::invalid_params("give names or name, not both")),
        (names, name) => names.or(name.map(|n| vec![n])),
    };
    let bdevs = match &names {
        Some(names) => names
            .iter()
            .map(|n| registry::get(n).ok_or_else(|| BdevError::NotFound(n.clone())))
            .collect::<Result<Vec<_>, _>>()?,
        None => registry::list(),
    };
    let header = json!({ "tick_rate": ticks::tick_rate(), "ticks": ticks::now() });
    let mut out = header.as_object().cloned().unwrap_or_default();
    if p.per_channel {
        // As SPDK: per-channel statistics are for exactly one named bdev.
        let [bdev] = bdevs.as_slice() else {
            return Err(RpcError::errno(
                libc::EINVAL,
                format!("per_channel needs exactly one bdev in names, not {}", names.map_or(0, |n| n.len())),
            ));
        };
        // One entry per thread, as SPDK's: a reactor's channel and the counters it shares
        // with a stacked bdev (its remapped I/O) are one channel here.
        let mut by_reactor: Vec<(Option<usize>, IoStats)> = Vec::new();
        for (reactor, s) in bdev.take_channel_stats(p.reset_mode)? {
            match by_reactor.iter().find(|(r, _)| *r == reactor) {
                Some((_, sum)) => sum.merge(&s),
                None => by_reactor.push((reactor, s)),
            }
        }
        let channels: Vec<Value> = by_reactor
            .into_iter()
            .map(|(reactor, s)| {
                let mut v = s.to_spdk_json();
                // SPDK's thread id: Ferry's thread is its reactor, numbered from 1.
                v["thread_id"] = json!(reactor.map_or(0, |r| r + 1));
                v
            })
            .collect();
        out.insert("name".into(), bdev.name().into());
        out.insert("channels".into(), channels.into());
    } else {
        let mut list = Vec::new();
        for b in &bdevs {
            let mut s = b.take_stats(p.reset_mode)?.to_spdk_json();
            s["name"] = b.name().into();
            list.push(s);
        }
        out.insert("bdevs".into(), list.into());
    }
    Ok(Value::Object(out))
}

fn bdev_wait_for_examine(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    // Examines run on the reactors, some in the background (an lvstore load, a RAID array
    // assembled from its members and then examined itself); wait for them, bounded.
    if !registry::wait_for_examine(std::time::Duration::from_secs(60)) {
        tracing::warn!("bdev_wait_for_examine: examines still running after 60 s");
    }
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Examine {
    name: String,
}

fn bdev_examine(params: Option<Value>) -> Result<Value, RpcError> {
    let p: Examine = parse(params)?;
    registry::get(&p.name).ok_or(BdevError::NotFound(p.name))?;
    Ok(json!(true))
}

//! The bdev core's RPC methods (listing, statistics, examine) and its saved configuration.

use super::{registry, Bdev, BdevError, IoType};
use crate::app::config::entry;
use crate::framework::ticks;
use crate::rpc::{no_params, parse, Allowed, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

/// The bdev core's methods.
pub const METHODS: &[RpcMethod] = &[
    // Unlocked so that a `timeout` wait does not hold up the call that creates the bdev.
    RpcMethod { name: "bdev_get_bdevs", handler: bdev_get_bdevs, allowed: Allowed::Runtime, locked: false },
    RpcMethod::runtime("bdev_get_iostat", bdev_get_iostat),
    RpcMethod::runtime("bdev_wait_for_examine", bdev_wait_for_examine),
    RpcMethod::runtime("bdev_examine", bdev_examine),
];

/// The bdev subsystem's configuration: each bdev's create call, in registration order (bases
/// before the virtual bdevs built on them), then `bdev_wait_for_examine`.
pub fn write_config() -> Vec<Value> {
    let mut config: Vec<Value> = registry::list()
        .iter()
        .filter_map(|b| b.backend().config(b))
        .map(|(method, params)| entry(method, params))
        .collect();
    config.push(json!({ "method": "bdev_wait_for_examine" }));
    config
}

/// SPDK's `bdev_get_bdevs` description of one bdev.
pub fn describe(bdev: &Bdev) -> Value {
    let mut io_types = Map::new();
    for t in IoType::ALL {
        io_types.insert(t.spdk_name().into(), bdev.supports(t).into());
    }
    for unsupported in [
        "nvme_admin",
        "nvme_io",
        "zcopy",
        "compare",
        "compare_and_write",
        "abort",
        "seek_hole",
        "seek_data",
        "copy",
        "nvme_iov_md",
    ] {
        io_types.insert(unsupported.into(), false.into());
    }
    let mut driver_specific = Map::new();
    if let Some((key, value)) = bdev.backend().driver_specific() {
        driver_specific.insert(key.into(), value);
    }
    let claimed = bdev.claimed_by();
    let mut v = json!({
        "name": bdev.name(),
        "aliases": bdev.aliases(),
        "product_name": bdev.backend().product_name(),
        "block_size": bdev.block_size(),
        "num_blocks": bdev.num_blocks(),
        "uuid": bdev.uuid().to_string(),
        "assigned_rate_limits": {
            "rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0
        },
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
    name: Option<String>,
    #[serde(default)]
    per_channel: bool,
}

fn bdev_get_iostat(params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetIostat = parse(params)?;
    let bdevs = match &p.name {
        Some(name) => vec![registry::get(name).ok_or_else(|| BdevError::NotFound(name.clone()))?],
        None => registry::list(),
    };
    let header = json!({ "tick_rate": ticks::tick_rate(), "ticks": ticks::now() });
    let mut out = header.as_object().cloned().unwrap_or_default();
    if p.per_channel {
        let bdev = bdevs.first().ok_or_else(|| RpcError::invalid_params("per_channel needs a name"))?;
        let channels: Vec<Value> = bdev.channel_stats().iter().map(|s| s.to_spdk_json()).collect();
        out.insert("name".into(), bdev.name().into());
        out.insert("channels".into(), channels.into());
    } else {
        let list: Vec<Value> = bdevs
            .iter()
            .map(|b| {
                let mut s = b.stats().to_spdk_json();
                s["name"] = b.name().into();
                s
            })
            .collect();
        out.insert("bdevs".into(), list.into());
    }
    Ok(Value::Object(out))
}

fn bdev_wait_for_examine(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    // Examine hooks run synchronously at registration, so nothing is ever pending.
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

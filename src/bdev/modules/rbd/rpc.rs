//! SPDK's `bdev_rbd_*` methods with its parameters (`schema/schema.yaml`, `bdev_rbd_rpc.c`).
//! Those that wait on the cluster run without the call lock, each wait bounded.

use super::cluster::{self, ClusterSpec};
use super::image::Image;
use super::{RbdBackend, RbdError, Source};
use crate::bdev::modules::{delete_bdev, next_free_name};
use crate::bdev::{registry, BdevError, BdevProps};
use crate::rpc::{parse, serialized, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The module's RPC methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime_unlocked("bdev_rbd_register_cluster", bdev_rbd_register_cluster),
    RpcMethod::runtime_unlocked("bdev_rbd_unregister_cluster", bdev_rbd_unregister_cluster),
    RpcMethod::runtime("bdev_rbd_get_clusters_info", bdev_rbd_get_clusters_info),
    RpcMethod::runtime_unlocked("bdev_rbd_create", bdev_rbd_create),
    RpcMethod::runtime("bdev_rbd_delete", bdev_rbd_delete),
    RpcMethod::runtime_unlocked("bdev_rbd_resize", bdev_rbd_resize),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterParams {
    name: String,
    user_id: Option<String>,
    config_param: Option<BTreeMap<String, String>>,
    config_file: Option<String>,
    key_file: Option<String>,
    core_mask: Option<String>,
}

/// Connects to a cluster and registers it under `name`; answers the name.
fn bdev_rbd_register_cluster(params: Option<Value>) -> Result<Value, RpcError> {
    let p: RegisterParams = parse(params)?;
    let spec = ClusterSpec {
        user_id: p.user_id,
        config: p.config_param.unwrap_or_default(),
        config_file: p.config_file,
        key_file: p.key_file,
        core_mask: p.core_mask,
        default_conf: true,
    };
    cluster::register(&p.name, spec)?;
    Ok(json!(p.name))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

fn bdev_rbd_unregister_cluster(params: Option<Value>) -> Result<Value, RpcError> {
    let p: NameParams = parse(params)?;
    cluster::unregister(&p.name)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InfoParams {
    name: Option<String>,
}

/// One cluster's description, or (without `name`) the list of every registered cluster.
fn bdev_rbd_get_clusters_info(params: Option<Value>) -> Result<Value, RpcError> {
    let p: InfoParams = parse(params)?;
    Ok(cluster::info(p.name.as_deref())?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: Option<String>,
    user_id: Option<String>,
    pool_name: String,
    rbd_name: String,
    block_size: u32,
    config: Option<BTreeMap<String, String>>,
    cluster_name: Option<String>,
    uuid: Option<Uuid>,
    #[serde(default)]
    read_only: bool,
}

/// Opens an image as a bdev; answers the bdev's name (`Ceph<n>` when none is given).
fn bdev_rbd_create(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateParams = parse(params)?;
    let source = match p.cluster_name {
        Some(c) if p.user_id.is_some() || p.config.is_some() => {
            return Err(RpcError::invalid_params(format!(
                "cluster_name {c} names a registered cluster: user_id and config belong to its registration"
            )))
        }
        Some(c) => Source::Named(c),
        None => Source::Unnamed(ClusterSpec {
            user_id: p.user_id,
            default_conf: p.config.is_none(),
            config: p.config.unwrap_or_default(),
            ..Default::default()
        }),
    };
    let bs = p.block_size;
    if bs == 0 || !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
        return Err(RpcError::invalid_params(format!("block_size {bs} is not a power of two from 512 to 65536")));
    }
    let name = p.name.unwrap_or_else(|| next_free_name("Ceph"));
    registry::validate_name(&name)?;
    if registry::get(&name).is_some() {
        return Err(BdevError::AlreadyExists(name).into());
    }
    let (conn, cluster_use) = match &source {
        Source::Named(c) => cluster::named(c).map(|(conn, used)| (conn, Some(used)))?,
        Source::Unnamed(spec) => (cluster::shared(spec)?, None),
    };
    let image = Image::open(conn, &p.pool_name, &p.rbd_name, p.read_only)?;
    let size = image.size()?;
    let num_blocks = size / bs as u64;
    if num_blocks == 0 {
        return Err(RbdError::Invalid(format!(
            "image {}/{} holds {size} bytes, less than one {bs}-byte block",
            p.pool_name, p.rbd_name
        ))
        .into());
    }
    let backend =
        RbdBackend { image: image.clone(), pool_name: p.pool_name, rbd_name: p.rbd_name, source, block_size: bs };
    let props = BdevProps { name, uuid: p.uuid, block_size: bs, num_blocks };
    let bdev = serialized(|| registry::register(props, Box::new(backend)));
    // From here the registered bdev keeps the cluster registered (`cluster::unregister`).
    drop(cluster_use);
    let bdev = bdev?;
    if let Err(e) = image.watch(bdev.name(), bdev.uuid()) {
        // The bdev works; it only will not follow resizes made by other clients.
        tracing::warn!(bdev = bdev.name(), error = %e, "cannot watch the RBD image's header");
    }
    tracing::info!(bdev = bdev.name(), librbd = %super::ffi::version(image.api()), "RBD bdev created");
    Ok(json!(bdev.name()))
}

fn bdev_rbd_delete(params: Option<Value>) -> Result<Value, RpcError> {
    delete_bdev(params, "rbd")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeParams {
    name: String,
    /// The new size in MiB, as SPDK takes it; it may only grow.
    new_size: u64,
}

/// Grows the image and the bdev (SPDK refuses to shrink: so does Ferry).
fn bdev_rbd_resize(params: Option<Value>) -> Result<Value, RpcError> {
    let p: ResizeParams = parse(params)?;
    let bdev = registry::get(&p.name).filter(|b| b.module() == "rbd").ok_or(BdevError::NotFound(p.name))?;
    let bytes = p
        .new_size
        .checked_mul(1 << 20)
        .ok_or_else(|| RpcError::invalid_params(format!("new_size {} MiB overflows", p.new_size)))?;
    let current_mib = (bdev.num_blocks() * bdev.block_size() as u64) >> 20;
    if p.new_size < current_mib {
        return Err(RpcError::invalid_params(format!(
            "new_size {} MiB is smaller than the current {current_mib} MiB: RBD bdevs only grow",
            p.new_size
        )));
    }
    bdev.resize(bytes / bdev.block_size() as u64)?;
    Ok(json!(true))
}

//! `null`: discards writes and reads back zeroes. Shows the framework's own cost per I/O.

use super::{delete_bdev, next_free_name};
use crate::bdev::{registry, BackendChannel, Bdev, BdevBackend, BdevError, BdevIo, BdevProps, IoStatus, IoType};
use crate::rpc::{parse, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

/// The module's RPC methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime("bdev_null_create", bdev_null_create),
    RpcMethod::runtime("bdev_null_delete", bdev_null_delete),
    RpcMethod::runtime("bdev_null_resize", bdev_null_resize),
];

struct NullBackend;

struct NullChannel;

impl BackendChannel for NullChannel {
    fn submit(&self, mut io: Box<BdevIo>) {
        if io.io_type == IoType::Read {
            io.zero_iovs();
        }
        io.complete(IoStatus::Success);
    }
}

impl BdevBackend for NullBackend {
    fn module(&self) -> &'static str {
        "null"
    }

    fn product_name(&self) -> &'static str {
        "Null disk"
    }

    fn supports(&self, _io_type: IoType) -> bool {
        true
    }

    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        Ok(Box::new(NullChannel))
    }

    fn config(&self, bdev: &Bdev) -> Option<(&'static str, Value)> {
        Some((
            "bdev_null_create",
            json!({
                "name": bdev.name(),
                "num_blocks": bdev.num_blocks(),
                "block_size": bdev.block_size(),
                "uuid": bdev.uuid().to_string(),
            }),
        ))
    }

    fn retains_data(&self) -> bool {
        false
    }

    fn resize(&self, _num_blocks: u64) -> Result<(), BdevError> {
        Ok(())
    }
}

/// Creates a null bdev.
pub fn create(name: &str, num_blocks: u64, block_size: u32, uuid: Option<Uuid>) -> Result<Bdev, BdevError> {
    registry::register(BdevProps { name: name.to_string(), uuid, block_size, num_blocks }, Box::new(NullBackend))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: Option<String>,
    num_blocks: u64,
    block_size: u32,
    uuid: Option<Uuid>,
}

fn bdev_null_create(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateParams = parse(params)?;
    let name = p.name.unwrap_or_else(|| next_free_name("Null"));
    let bdev = create(&name, p.num_blocks, p.block_size, p.uuid)?;
    Ok(json!(bdev.name()))
}

fn bdev_null_delete(params: Option<Value>) -> Result<Value, RpcError> {
    delete_bdev(params, "null")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeParams {
    name: String,
    /// New size in MiB, as SPDK takes it.
    new_size: u64,
}

fn bdev_null_resize(params: Option<Value>) -> Result<Value, RpcError> {
    let p: ResizeParams = parse(params)?;
    let bdev = registry::get(&p.name).filter(|b| b.module() == "null").ok_or(BdevError::NotFound(p.name))?;
    let bytes = p
        .new_size
        .checked_mul(1 << 20)
        .ok_or_else(|| BdevError::InvalidParam(format!("new_size {} MiB overflows", p.new_size)))?;
    let blocks = bytes / bdev.block_size() as u64;
    registry::validate_geometry(bdev.block_size(), blocks)?;
    if blocks < bdev.num_blocks() {
        return Err(BdevError::InvalidParam(format!(
            "new_size {} MiB is smaller than the current size; null bdevs only grow",
            p.new_size
        ))
        .into());
    }
    bdev.resize(blocks)?;
    Ok(json!(true))
}

//! `null`: discards writes and reads back zeroes. Shows the framework's own cost per I/O.
//!
//! `read_zeroes: false` (a Ferry extension of `bdev_null_create`) makes reads complete
//! without touching the buffers, as SPDK's null bdev does: a bdev that does no data work at
//! all, for comparing frameworks. For benchmarks only: a network target's buffers would then
//! carry whatever they last held to the initiator.

use super::format_params::*;
use super::{delete_bdev, next_free_name};
use crate::bdev::{
    registry, BackendChannel, Bdev, BdevBackend, BdevError, BdevIo, BdevProps, IoHints, IoStatus, IoType,
};
use crate::rpc::{parse, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

/// The module's RPC methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime("bdev_null_create", bdev_null_create).accepting(&[
        PHYSICAL_BLOCK_SIZE,
        MD_SIZE,
        DIF_TYPE,
        DIF_IS_HEAD_OF_MD,
        DIF_PI_FORMAT,
    ]),
    RpcMethod::runtime("bdev_null_delete", bdev_null_delete),
    RpcMethod::runtime("bdev_null_resize", bdev_null_resize),
];

/// A null bdev: nothing but the hints it was created with.
struct NullBackend {
    hints: IoHints,
    /// Whether reads fill the buffers with zeroes (else they are left as they are).
    read_zeroes: bool,
}

struct NullChannel {
    read_zeroes: bool,
}

impl BackendChannel for NullChannel {
    fn submit(&self, mut io: Box<BdevIo>) {
        if io.io_type == IoType::Read && self.read_zeroes {
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

    fn supports_every_io_type(&self) -> bool {
        true
    }

    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        Ok(Box::new(NullChannel { read_zeroes: self.read_zeroes }))
    }

    fn config(&self, bdev: &Bdev) -> Option<(&'static str, Value)> {
        let mut params = json!({
            "name": bdev.name(),
            "num_blocks": bdev.num_blocks(),
            "block_size": bdev.block_size(),
            "uuid": bdev.uuid().to_string(),
        });
        if let (Value::Object(p), Ok(Value::Object(h))) = (&mut params, serde_json::to_value(self.hints)) {
            p.extend(h);
        }
        if !self.read_zeroes {
            params["read_zeroes"] = json!(false);
        }
        Some(("bdev_null_create", params))
    }

    fn io_hints(&self) -> IoHints {
        self.hints
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
    create_with_hints(name, num_blocks, block_size, uuid, IoHints::default(), true)
}

/// Creates a null bdev that advertises `hints` (SPDK's null bdev takes them for testing
/// consumers of the hints).
pub(crate) fn create_with_hints(
    name: &str,
    num_blocks: u64,
    block_size: u32,
    uuid: Option<Uuid>,
    hints: IoHints,
    read_zeroes: bool,
) -> Result<Bdev, BdevError> {
    registry::register(
        BdevProps { name: name.to_string(), uuid, block_size, num_blocks },
        Box::new(NullBackend { hints, read_zeroes }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: Option<String>,
    num_blocks: u64,
    block_size: u32,
    uuid: Option<Uuid>,
    #[serde(default)]
    preferred_write_alignment: u32,
    #[serde(default)]
    preferred_write_granularity: u32,
    #[serde(default)]
    optimal_write_size: u32,
    #[serde(default)]
    preferred_unmap_alignment: u32,
    #[serde(default)]
    preferred_unmap_granularity: u32,
    /// Ferry's: false leaves read buffers untouched (SPDK's null bdev); default true.
    #[serde(default = "yes")]
    read_zeroes: bool,
}

fn yes() -> bool {
    true
}

fn bdev_null_create(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateParams = parse(params)?;
    let name = p.name.unwrap_or_else(|| next_free_name("Null"));
    let hints = IoHints {
        write_alignment: p.preferred_write_alignment,
        write_granularity: p.preferred_write_granularity,
        optimal_write_size: p.optimal_write_size,
        unmap_alignment: p.preferred_unmap_alignment,
        unmap_granularity: p.preferred_unmap_granularity,
    };
    let bdev = create_with_hints(&name, p.num_blocks, p.block_size, p.uuid, hints, p.read_zeroes)?;
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

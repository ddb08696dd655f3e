//! Bdev modules: each file holds one module's backend and its RPC methods.

pub mod crypto;
pub mod delay;
pub mod error;
pub mod lvol;
pub mod malloc;
pub mod null;
pub mod nvme;
pub mod passthru;
pub mod raid;
pub mod rbd;
pub mod split;
pub mod uring;
pub mod virtio;

pub use crypto::METHODS as METHODS_CRYPTO;
pub use delay::METHODS as METHODS_DELAY;
pub use error::METHODS as METHODS_ERROR;
pub use lvol::METHODS as METHODS_LVOL;
pub use malloc::METHODS as METHODS_MALLOC;
pub use null::METHODS as METHODS_NULL;
pub use nvme::METHODS as METHODS_NVME;
pub use passthru::METHODS as METHODS_PASSTHRU;
pub use raid::METHODS as METHODS_RAID;
pub use rbd::METHODS as METHODS_RBD;
pub use split::METHODS as METHODS_SPLIT;
pub use uring::METHODS as METHODS_URING;
pub use virtio::METHODS as METHODS_VIRTIO;

use super::{registry, BdevError};
use crate::rpc::{RpcError, SpdkParam, I32, U32};
use serde::Deserialize;
use serde_json::{json, Value};

/// SPDK's block-format parameters of `bdev_malloc_create` and `bdev_null_create`: Ferry's
/// blocks carry no metadata and no protection information, and the physical block is the
/// logical one; the values meaning exactly that are accepted.
pub mod format_params {
    use super::*;

    /// `physical_block_size`: 0 (unset) or the block size.
    pub const PHYSICAL_BLOCK_SIZE: SpdkParam = SpdkParam::zero_or_same_as("physical_block_size", U32, "block_size");
    /// `md_size`: no metadata.
    pub const MD_SIZE: SpdkParam = SpdkParam::only("md_size", U32, 0, "Ferry's blocks carry no metadata");
    /// `dif_type`: no protection information.
    pub const DIF_TYPE: SpdkParam =
        SpdkParam::only("dif_type", I32, 0, "Ferry's blocks carry no protection information");
    /// `dif_is_head_of_md`: meaningless without metadata.
    pub const DIF_IS_HEAD_OF_MD: SpdkParam =
        SpdkParam::any("dif_is_head_of_md", crate::rpc::spdk_params::ParamType::Bool);
    /// `dif_pi_format`: meaningless without protection information.
    pub const DIF_PI_FORMAT: SpdkParam = SpdkParam::any("dif_pi_format", U32);
}

/// `{"name": ..}`: the parameters of every `*_delete` method.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    /// The bdev to delete.
    pub name: String,
}

/// Unregisters bdev `name` of `module` for a `*_delete` method.
pub fn delete_bdev(params: Option<Value>, module: &str) -> Result<Value, RpcError> {
    let p: DeleteParams = crate::rpc::parse(params)?;
    match registry::unregister(&p.name, Some(module)) {
        Ok(_) => Ok(json!(true)),
        Err(BdevError::NotFound(_)) => match registry::get(&p.name) {
            Some(other) => Err(BdevError::InvalidParam(format!(
                "bdev {} is a {} bdev, not a {module} bdev",
                p.name,
                other.module()
            ))
            .into()),
            None => Err(BdevError::NotFound(p.name).into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// The first free name `PREFIX<n>`, as SPDK names bdevs created without a name.
pub fn next_free_name(prefix: &str) -> String {
    (0..).map(|n| format!("{prefix}{n}")).find(|n| registry::get(n).is_none()).unwrap_or_else(|| prefix.to_string())
}

/// Bytes of memory the system could still give us (MemAvailable).
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

//! `rbd`: a bdev on a Ceph RBD image, through librbd (SPDK's `bdev_rbd_*` methods).
//!
//! - `ffi.rs`: librados and librbd, loaded at run time (ferryd runs without them).
//! - `cluster.rs`: cluster connections, registered by name or shared by unnamed images.
//! - `image.rs`: an open image, its size watch; opened and closed off the reactors.
//! - `channel.rs`: a reactor's channel: aio submission, completions handed back from
//!   librados's threads.
//! - `rpc.rs`: the RPC methods.
//!
//! What waits on the cluster (connecting, opening, closing, resizing) runs on threads of
//! its own with deadlines; I/O never waits on a reactor. An I/O to a cluster that went away
//! waits inside librados until it returns, unless `rados_osd_op_timeout` is set in the
//! cluster's configuration, in which case it fails with ETIMEDOUT after that many seconds
//! (docs/rbd.md).

mod channel;
pub mod cluster;
mod error;
mod ffi;
mod image;
mod rpc;

pub use error::RbdError;
pub use rpc::METHODS;

use self::channel::RbdChannel;
use self::cluster::ClusterSpec;
use self::image::Image;
use crate::bdev::{registry, BackendChannel, Bdev, BdevBackend, BdevError, IoType};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Where an image's cluster comes from.
#[derive(Debug, Clone)]
enum Source {
    /// A cluster registered with `bdev_rbd_register_cluster`.
    Named(String),
    /// `bdev_rbd_create`'s own `user_id` and `config`.
    Unnamed(ClusterSpec),
}

/// An RBD bdev.
struct RbdBackend {
    image: Arc<Image>,
    pool_name: String,
    rbd_name: String,
    source: Source,
    block_size: u32,
}

/// Whether a registered rbd bdev is on registered cluster `cluster`.
fn registered_on(cluster: &str) -> bool {
    registry::list()
        .iter()
        .filter(|b| b.module() == "rbd")
        .any(|b| b.backend().config(b).is_some_and(|(_, p)| p["cluster_name"] == cluster))
}

impl BdevBackend for RbdBackend {
    fn module(&self) -> &'static str {
        "rbd"
    }

    fn product_name(&self) -> &'static str {
        "Ceph Rbd Disk"
    }

    fn supports(&self, io_type: IoType) -> bool {
        match io_type {
            IoType::Read | IoType::Flush | IoType::Reset => true,
            IoType::Write | IoType::Unmap | IoType::WriteZeroes => !self.image.read_only,
        }
    }

    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        Ok(Box::new(RbdChannel::new(self.image.clone())?))
    }

    fn config(&self, bdev: &Bdev) -> Option<(&'static str, Value)> {
        let mut p = json!({
            "name": bdev.name(),
            "pool_name": self.pool_name,
            "rbd_name": self.rbd_name,
            "block_size": bdev.block_size(),
            "uuid": bdev.uuid().to_string(),
        });
        match &self.source {
            Source::Named(cluster) => p["cluster_name"] = json!(cluster),
            Source::Unnamed(spec) => {
                if let Some(u) = &spec.user_id {
                    p["user_id"] = json!(u);
                }
                // Kept whole, secrets too (as SPDK saves them): the entry must connect again.
                if !spec.config.is_empty() {
                    p["config"] = json!(spec.config);
                }
            }
        }
        if self.image.read_only {
            p["read_only"] = json!(true);
        }
        Some(("bdev_rbd_create", p))
    }

    fn driver_specific(&self) -> Option<(&'static str, Value)> {
        let mut m = Map::new();
        m.insert("pool_name".into(), json!(self.pool_name));
        m.insert("rbd_name".into(), json!(self.rbd_name));
        match &self.source {
            Source::Named(cluster) => {
                m.insert("cluster_name".into(), json!(cluster));
                m.extend(cluster::describe_named(cluster));
            }
            Source::Unnamed(spec) => {
                if let Some(u) = &spec.user_id {
                    m.insert("user_id".into(), json!(u));
                }
                if !spec.config.is_empty() {
                    m.insert("config".into(), cluster::masked(&spec.config));
                }
            }
        }
        let features: Vec<&str> =
            ffi::FEATURE_NAMES.iter().filter(|(bit, _)| self.image.features & bit != 0).map(|(_, n)| *n).collect();
        m.insert("features".into(), json!(features));
        m.insert("read_only".into(), json!(self.image.read_only));
        Some(("rbd", Value::Object(m)))
    }

    /// librbd acknowledges writes from its cache (`rbd_cache`: write-around by default,
    /// write-back with `rbd_cache_policy`), as QEMU's rbd driver reports it: flushes matter
    /// and are passed on.
    fn write_cache(&self) -> bool {
        true
    }

    fn read_only(&self) -> bool {
        self.image.read_only
    }

    /// Grows the image first when it is smaller than `num_blocks` (`bdev_rbd_resize`); a size
    /// the image already has (its watch saw another client resize it) changes nothing there.
    /// Waits on the cluster, within a deadline: called off the reactors only.
    fn resize(&self, num_blocks: u64) -> Result<(), BdevError> {
        let bytes = num_blocks.checked_mul(self.block_size as u64).ok_or_else(|| {
            BdevError::InvalidParam(format!("{num_blocks} blocks of {} bytes overflow", self.block_size))
        })?;
        let image = self.image.clone();
        let grow = move || match image.size()? {
            size if size < bytes => image.resize(bytes),
            _ => Ok(()),
        };
        cluster::bounded("resizing the image".into(), image::OPEN_TIMEOUT, grow).map_err(|e| match e {
            RbdError::Bdev(b) => b,
            other => BdevError::os(other.to_string(), std::io::Error::from_raw_os_error(other.errno())),
        })
    }
}

//! `split`: cuts a base bdev into equal parts `<base>p0`, `<base>p1`, ... (SPDK's
//! `bdev_split_create`), each forwarding its I/O to the base at its offset.
//!
//! As SPDK: the configuration is kept per base; a create whose base does not exist yet
//! succeeds (returning no names) and the parts appear when the base does; hot-removing the
//! base unregisters the parts and keeps the configuration; `bdev_split_delete` removes both.
//! Beyond SPDK, a create that would produce no part (a split size larger than the base) is an
//! error instead of an empty success, so nothing is left half-created.

use super::passthru::{complete_like_child, BaseBdev, Forwarder};
use crate::bdev::{registry, BackendChannel, Bdev, BdevBackend, BdevError, BdevIo, IoStatus, IoType};
use crate::rpc::error::INVALID_PARAMS;
use crate::rpc::{parse, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, MutexGuard};

/// The module's RPC methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime("bdev_split_create", bdev_split_create),
    RpcMethod::runtime("bdev_split_delete", bdev_split_delete),
];

const MODULE: &str = "split";
const MIB: u64 = 1 << 20;

/// One part of a split base.
struct SplitBackend {
    base: Arc<BaseBdev>,
    offset_blocks: u64,
    /// The request, saved by part 0 (one `bdev_split_create` per base, as SPDK saves it).
    request: Option<(u32, u64)>,
}

struct SplitChannel {
    fwd: Forwarder<fn(Box<BdevIo>, IoStatus, i32)>,
    offset_blocks: u64,
}

impl BackendChannel for SplitChannel {
    #[inline]
    fn submit(&self, io: Box<BdevIo>) {
        // A reset carries no range: it goes to the base as it is.
        let shift = if io.io_type == IoType::Reset { 0 } else { self.offset_blocks };
        self.fwd.remap_or_forward(io, shift);
    }
}

impl BdevBackend for SplitBackend {
    fn module(&self) -> &'static str {
        MODULE
    }

    fn product_name(&self) -> &'static str {
        "Split Disk"
    }

    fn stacked_on(&self) -> Option<&Bdev> {
        Some(self.base.bdev())
    }

    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        let base = self.base.channel()?;
        Ok(Box::new(SplitChannel { fwd: Forwarder::new(base, complete_like_child), offset_blocks: self.offset_blocks }))
    }

    fn config(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        let (split_count, split_size_mb) = self.request?;
        Some((
            "bdev_split_create",
            json!({"base_bdev": self.base.bdev().name(), "split_count": split_count, "split_size_mb": split_size_mb}),
        ))
    }

    fn driver_specific(&self) -> Option<(&'static str, Value)> {
        Some((MODULE, json!({"base_bdev": self.base.bdev().name(), "offset_blocks": self.offset_blocks})))
    }

    fn allocation_run(&self, offset_blocks: u64, max_blocks: u64) -> Option<(bool, u64)> {
        self.base.bdev().allocation_run(self.offset_blocks + offset_blocks, max_blocks)
    }
}

/// A split asked for, per base (SPDK's `g_split_config`).
struct Config {
    base: String,
    split_count: u32,
    split_size_mb: u64,
    /// The claimed base and the parts' names while the parts exist.
    live: Option<(Arc<BaseBdev>, Vec<String>)>,
}

static CONFIGS: Mutex<Vec<Config>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a split cannot be built (errno, for SPDK's message).
struct BuildError(BdevError);

/// The parts' size in blocks and their number for `base`, as SPDK computes them.
fn geometry(base: &Bdev, split_count: u32, split_size_mb: u64) -> Result<(u64, u64), BdevError> {
    let bs = base.block_size() as u64;
    let size_blocks = if split_size_mb > 0 {
        let bytes = split_size_mb
            .checked_mul(MIB)
            .ok_or_else(|| BdevError::InvalidParam(format!("split_size_mb {split_size_mb} overflows")))?;
        if !bytes.is_multiple_of(bs) {
            return Err(BdevError::InvalidParam(format!(
                "Split size {split_size_mb} MB is not possible with block size {bs}"
            )));
        }
        bytes / bs
    } else {
        base.num_blocks() / split_count as u64
    };
    if size_blocks == 0 || size_blocks > base.num_blocks() {
        return Err(BdevError::InvalidParam(format!(
            "{} ({} blocks of {bs} bytes) cannot hold a part of {}",
            base.name(),
            base.num_blocks(),
            if split_size_mb > 0 { format!("{split_size_mb} MB") } else { format!("1/{split_count} of it") }
        )));
    }
    let max = base.num_blocks() / size_blocks;
    let count = split_count as u64;
    if count > max {
        tracing::warn!(base = base.name(), count, max, "split count greater than the maximum possible: clamping");
    }
    Ok((size_blocks, count.min(max)))
}

/// Claims `base_name` and registers its parts; undoes everything on failure.
fn build(base_name: &str, split_count: u32, split_size_mb: u64) -> Result<(Arc<BaseBdev>, Vec<String>), BuildError> {
    let owner = base_name.to_string();
    let base = BaseBdev::open(base_name, MODULE, move || hot_removed(&owner)).map_err(BuildError)?;
    let (size, count) = match geometry(base.bdev(), split_count, split_size_mb) {
        Ok(g) => g,
        Err(e) => {
            base.release();
            return Err(BuildError(e));
        }
    };
    let mut names: Vec<String> = Vec::new();
    for i in 0..count {
        let name = format!("{base_name}p{i}");
        let backend = SplitBackend {
            base: base.clone(),
            offset_blocks: i * size,
            request: (i == 0).then_some((split_count, split_size_mb)),
        };
        if let Err(e) = registry::register(base.props(&name, None, size), Box::new(backend)) {
            for n in &names {
                let _ = registry::unregister(n, Some(MODULE));
            }
            base.release();
            return Err(BuildError(e));
        }
        names.push(name);
    }
    Ok((base, names))
}

/// The base went: unregister its parts (their users get Remove), keep the configuration.
fn hot_removed(base: &str) {
    let names = lock(&CONFIGS).iter_mut().find(|c| c.base == base).and_then(|c| c.live.take()).map(|(_, n)| n);
    for name in names.unwrap_or_default() {
        let _ = registry::unregister(&name, Some(MODULE));
    }
}

/// Examine: splits a base whose configuration waited for it.
fn examine(bdev: &Bdev) {
    let waiting = lock(&CONFIGS)
        .iter()
        .find(|c| c.live.is_none() && c.base == bdev.name())
        .map(|c| (c.split_count, c.split_size_mb));
    let Some((count, size_mb)) = waiting else { return };
    match build(bdev.name(), count, size_mb) {
        Ok(live) => set_live(bdev.name(), live),
        Err(BuildError(e)) => tracing::error!(base = bdev.name(), "could not split bdev at examine: {e}"),
    }
}

fn set_live(base: &str, live: (Arc<BaseBdev>, Vec<String>)) {
    match lock(&CONFIGS).iter_mut().find(|c| c.base == base) {
        Some(c) => c.live = Some(live),
        None => undo(live),
    }
}

fn undo((base, names): (Arc<BaseBdev>, Vec<String>)) {
    for n in &names {
        let _ = registry::unregister(n, Some(MODULE));
    }
    base.release();
}

fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| registry::register_examine(examine));
}

/// `strerror` without the " (os error N)" Rust adds.
pub(crate) fn strerror(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    base_bdev: String,
    split_count: u32,
    #[serde(default)]
    split_size_mb: u64,
}

fn bdev_split_create(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateParams = parse(params)?;
    let failed = |e: &BdevError| {
        let why = match e {
            BdevError::InvalidParam(m) => format!("{}: {m}", strerror(libc::EINVAL)),
            other => strerror(other.errno()),
        };
        RpcError::new(
            INVALID_PARAMS,
            format!("Failed to create {} split bdevs from '{}': {why}", p.split_count, p.base_bdev),
        )
    };
    if p.split_count == 0 {
        return Err(failed(&BdevError::InvalidParam("split_count can't be 0".into())));
    }
    init();
    {
        let mut configs = lock(&CONFIGS);
        if configs.iter().any(|c| c.base == p.base_bdev) {
            let e = BdevError::AlreadyExists(format!("split configuration for {}", p.base_bdev));
            return Err(failed(&e));
        }
        configs.push(Config {
            base: p.base_bdev.clone(),
            split_count: p.split_count,
            split_size_mb: p.split_size_mb,
            live: None,
        });
    }
    match build(&p.base_bdev, p.split_count, p.split_size_mb) {
        Ok(live) => {
            let names = live.1.clone();
            set_live(&p.base_bdev, live);
            Ok(json!(names))
        }
        // As SPDK: the base may come later; no parts yet.
        Err(BuildError(BdevError::NotFound(_))) => Ok(json!([])),
        Err(BuildError(e)) => {
            lock(&CONFIGS).retain(|c| c.base != p.base_bdev);
            Err(failed(&e))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    base_bdev: String,
}

fn bdev_split_delete(params: Option<Value>) -> Result<Value, RpcError> {
    let p: DeleteParams = parse(params)?;
    let config = {
        let mut configs = lock(&CONFIGS);
        let i = configs.iter().position(|c| c.base == p.base_bdev);
        i.map(|i| configs.remove(i))
    };
    let Some(config) = config else {
        return Err(RpcError::new(INVALID_PARAMS, strerror(libc::ENOENT)));
    };
    if let Some(live) = config.live {
        undo(live);
    }
    Ok(json!(true))
}

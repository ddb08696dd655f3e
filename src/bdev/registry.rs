//! The registry of bdevs: by name, alias or uuid, in registration order, with examine hooks.

use super::desc;
use super::device::{lock, Bdev, BdevBackend, BdevProps};
use super::error::BdevError;
use super::BdevEvent;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

static BDEVS: Mutex<Vec<Bdev>> = Mutex::new(Vec::new());

/// Called for every bdev that appears (lvstores and partition tables look for themselves).
pub type ExamineHook = fn(&Bdev);

static EXAMINE_HOOKS: Mutex<Vec<ExamineHook>> = Mutex::new(Vec::new());

/// Examines in flight (hooks that went on in the background), and a signal when it drops.
static EXAMINING: Mutex<usize> = Mutex::new(0);
static EXAMINED: std::sync::Condvar = std::sync::Condvar::new();

/// Held by an examine hook's background work while it runs: [`wait_for_examine`] waits for
/// every guard to go. Taken in the hook itself (before it returns), so a bdev registered by an
/// examine (a RAID array assembled from its members, then examined for an lvstore) is covered
/// before its parent's guard drops.
pub struct ExamineGuard(());

impl ExamineGuard {
    /// Counts one examine in flight.
    pub fn new() -> Self {
        *lock(&EXAMINING) += 1;
        ExamineGuard(())
    }
}

impl Default for ExamineGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ExamineGuard {
    fn drop(&mut self) {
        let mut n = lock(&EXAMINING);
        *n -= 1;
        if *n == 0 {
            EXAMINED.notify_all();
        }
    }
}

/// Waits (off the reactors only) until no examine is in flight, at most `limit`; returns
/// whether none is.
pub fn wait_for_examine(limit: std::time::Duration) -> bool {
    let n = lock(&EXAMINING);
    if crate::framework::current_index().is_some() {
        return *n == 0; // a reactor never blocks: examines run on reactors
    }
    let (n, _) = EXAMINED.wait_timeout_while(n, limit, |n| *n > 0).unwrap_or_else(|e| e.into_inner());
    *n == 0
}

/// Adds a hook run on every bdev registered from now on.
pub fn register_examine(hook: ExamineHook) {
    lock(&EXAMINE_HOOKS).push(hook);
}

/// Checks a name for use as a bdev name or alias.
pub fn validate_name(name: &str) -> Result<(), BdevError> {
    if name.is_empty() || name.len() > 255 {
        return Err(BdevError::InvalidParam(format!("bdev name must be 1 to 255 bytes, got {}", name.len())));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(BdevError::InvalidParam(format!("bdev name {name:?} contains whitespace or control characters")));
    }
    Ok(())
}

/// Checks geometry common to every bdev.
pub fn validate_geometry(block_size: u32, num_blocks: u64) -> Result<(), BdevError> {
    if block_size < 512 || !block_size.is_power_of_two() || block_size > 65536 {
        return Err(BdevError::InvalidParam(format!(
            "block_size {block_size} must be a power of two between 512 and 65536"
        )));
    }
    if num_blocks == 0 {
        return Err(BdevError::InvalidParam("num_blocks must be greater than zero".into()));
    }
    if num_blocks.checked_mul(block_size as u64).is_none_or(|b| b > i64::MAX as u64) {
        return Err(BdevError::InvalidParam(format!("size {num_blocks} x {block_size} bytes overflows")));
    }
    Ok(())
}

/// Registers a new bdev and runs the examine hooks on it.
pub fn register(props: BdevProps, backend: Box<dyn BdevBackend>) -> Result<Bdev, BdevError> {
    validate_name(&props.name)?;
    validate_geometry(props.block_size, props.num_blocks)?;
    let bdev = {
        let mut bdevs = lock(&BDEVS);
        if bdevs.iter().any(|b| b.answers_to(&props.name)) {
            return Err(BdevError::AlreadyExists(props.name));
        }
        if let Some(uuid) = props.uuid {
            if let Some(b) = bdevs.iter().find(|b| b.uuid() == uuid) {
                return Err(BdevError::AlreadyExists(format!("with uuid {uuid} ({})", b.name())));
            }
        }
        let bdev = Bdev::new(props, backend);
        bdevs.push(bdev.clone());
        bdev
    };
    tracing::info!(name = bdev.name(), module = bdev.module(), blocks = bdev.num_blocks(), "bdev registered");
    let hooks = lock(&EXAMINE_HOOKS).clone();
    for hook in hooks {
        hook(&bdev);
    }
    Ok(bdev)
}

/// Removes a bdev of `module` from the registry (its name is free at once), tells every
/// open descriptor, and returns it. I/O already in flight completes; the device's memory
/// lives until the last handle and channel are gone.
pub fn unregister(name: &str, module: Option<&str>) -> Result<Bdev, BdevError> {
    let bdev = {
        let mut bdevs = lock(&BDEVS);
        let pos = bdevs
            .iter()
            .position(|b| b.name() == name && module.is_none_or(|m| m == b.module()))
            .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        bdevs.remove(pos)
    };
    bdev.0.removed.store(true, Ordering::Release);
    bdev.0.range_locks.bdev_removed(&bdev);
    super::qos::bdev_removed(&bdev);
    desc::notify(&bdev, BdevEvent::Remove);
    tracing::info!(name, "bdev unregistered");
    Ok(bdev)
}

/// The bdev answering to `name` (name, alias or uuid).
pub fn get(name: &str) -> Option<Bdev> {
    lock(&BDEVS).iter().find(|b| b.answers_to(name)).cloned()
}

/// Every registered bdev, in registration order.
pub fn list() -> Vec<Bdev> {
    lock(&BDEVS).clone()
}

/// Adds an alias to a bdev.
pub fn add_alias(bdev: &Bdev, alias: &str) -> Result<(), BdevError> {
    validate_name(alias)?;
    let bdevs = lock(&BDEVS);
    if bdevs.iter().any(|b| b.answers_to(alias)) {
        return Err(BdevError::AlreadyExists(alias.to_string()));
    }
    lock(&bdev.0.aliases).push(alias.to_string());
    Ok(())
}

/// Replaces alias `old` of a bdev by `new` (renames of lvstores and lvols).
pub fn replace_alias(bdev: &Bdev, old: &str, new: &str) -> Result<(), BdevError> {
    validate_name(new)?;
    let bdevs = lock(&BDEVS);
    if bdevs.iter().any(|b| b.answers_to(new)) {
        return Err(BdevError::AlreadyExists(new.to_string()));
    }
    let mut aliases = lock(&bdev.0.aliases);
    match aliases.iter_mut().find(|a| *a == old) {
        Some(a) => *a = new.to_string(),
        None => aliases.push(new.to_string()),
    }
    Ok(())
}

/// Unregisters every bdev, newest first (virtual bdevs before their bases). For shutdown.
pub fn unregister_all() {
    for bdev in list().into_iter().rev() {
        let _ = unregister(bdev.name(), None);
    }
}

//! Open descriptors, write claims and hot-remove / resize notification.

use super::channel::{BdevChannel, ChannelInner};
use super::device::{lock, Bdev};
use super::error::BdevError;
use super::registry;
use super::BdevEvent;
use crate::framework::{self, io_channel};
use std::rc::Rc;
use std::sync::{Arc, Weak};

/// Called when something happens to an open bdev; runs on the reactor that opened it
/// (or at once, for descriptors opened off the reactors).
pub type EventCallback = Box<dyn Fn(BdevEvent, &Bdev) + Send + Sync>;

pub(crate) struct DescShared {
    on_event: EventCallback,
    reactor: Option<usize>,
}

/// An open bdev. Read-only or read-write; may hold the bdev's exclusive write claim.
pub struct BdevDesc {
    bdev: Bdev,
    writable: bool,
    shared: Arc<DescShared>,
    claimed: bool,
}

/// Opens the bdev answering to `name`. `on_event` hears of removal and resizes.
pub fn open(name: &str, writable: bool, on_event: EventCallback) -> Result<BdevDesc, BdevError> {
    let bdev = registry::get(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    if writable {
        if let Some(module) = bdev.claimed_by() {
            return Err(BdevError::Claimed { bdev: bdev.name().to_string(), module });
        }
    }
    let shared = Arc::new(DescShared { on_event, reactor: framework::current_index() });
    let mut descs = lock(&bdev.0.descs);
    descs.retain(|w| w.strong_count() > 0);
    descs.push(Arc::downgrade(&shared));
    drop(descs);
    Ok(BdevDesc { bdev, writable, shared, claimed: false })
}

impl BdevDesc {
    /// The open bdev.
    pub fn bdev(&self) -> &Bdev {
        &self.bdev
    }

    /// Whether writes are allowed through it.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Takes the exclusive write claim for `module`: no one else may then open it writable.
    pub fn claim(&mut self, module: &str) -> Result<(), BdevError> {
        let mut claim = lock(&self.bdev.0.claim);
        if let Some(holder) = claim.as_ref() {
            return Err(BdevError::Claimed { bdev: self.bdev.name().to_string(), module: holder.clone() });
        }
        *claim = Some(module.to_string());
        self.claimed = true;
        Ok(())
    }

    /// This thread's channel for I/O through this descriptor. Reactor threads only.
    pub fn channel(&self) -> Result<BdevChannel, BdevError> {
        if framework::current_index().is_none() {
            return Err(BdevError::NotOnReactor);
        }
        if self.bdev.is_removed() {
            return Err(BdevError::Removed(self.bdev.name().to_string()));
        }
        let inner: Rc<ChannelInner> = io_channel::get_channel(self.bdev.io_device(), || ChannelInner::new(&self.bdev))?;
        Ok(BdevChannel::new(inner, self.writable))
    }
}

impl Drop for BdevDesc {
    fn drop(&mut self) {
        if self.claimed {
            *lock(&self.bdev.0.claim) = None;
        }
        let me = Arc::as_ptr(&self.shared);
        lock(&self.bdev.0.descs).retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), me));
    }
}

/// Tells every open descriptor of `bdev` about `event`, each on its own reactor.
pub(crate) fn notify(bdev: &Bdev, event: BdevEvent) {
    let descs: Vec<Arc<DescShared>> = lock(&bdev.0.descs).iter().filter_map(Weak::upgrade).collect();
    for desc in descs {
        let target = bdev.clone();
        match desc.reactor {
            Some(r) if framework::current_index() != Some(r) => {
                let d = desc.clone();
                if framework::send(r, move || (d.on_event)(event, &target)).is_err() {
                    (desc.on_event)(event, bdev);
                }
            }
            _ => (desc.on_event)(event, &target),
        }
    }
}

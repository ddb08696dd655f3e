//! I/O devices and their per-thread channels (SPDK's io_device / io_channel).
//!
//! Anything that serves I/O from several threads (a bdev, a controller, a transport) owns an
//! [`IoDeviceId`]. Each thread asks for its channel of that device with [`get_channel`]: the
//! first call on a thread creates it, later calls share it, and it is released when the last
//! user on that thread drops its `Rc`. Channels never cross threads, so they need no locks.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};

/// The identity of an I/O device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoDeviceId(u64);

impl IoDeviceId {
    /// A new, process-unique id.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        IoDeviceId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for IoDeviceId {
    fn default() -> Self {
        Self::new()
    }
}

thread_local! {
    static CHANNELS: RefCell<HashMap<IoDeviceId, Weak<dyn Any>>> = RefCell::new(HashMap::new());
}

/// This thread's channel of `device`, created by `create` if the thread has none alive.
pub fn get_channel<T: 'static, E>(device: IoDeviceId, create: impl FnOnce() -> Result<T, E>) -> Result<Rc<T>, E> {
    let existing = CHANNELS.with(|c| c.borrow().get(&device).and_then(Weak::upgrade));
    if let Some(any) = existing {
        if let Ok(channel) = any.downcast::<T>() {
            return Ok(channel);
        }
    }
    // Create outside the borrow: a channel may itself take channels of other devices.
    let channel = Rc::new(create()?);
    let as_any: Rc<dyn Any> = channel.clone();
    CHANNELS.with(|c| {
        let mut map = c.borrow_mut();
        map.retain(|_, weak| weak.strong_count() > 0);
        map.insert(device, Rc::downgrade(&as_any));
    });
    Ok(channel)
}

/// This thread's live channel of `device`, if it has one (never creates it).
pub fn existing_channel<T: 'static>(device: IoDeviceId) -> Option<Rc<T>> {
    let any = CHANNELS.with(|c| c.borrow().get(&device).and_then(Weak::upgrade))?;
    any.downcast::<T>().ok()
}

/// Whether this thread holds a live channel of `device`.
pub fn has_channel(device: IoDeviceId) -> bool {
    CHANNELS.with(|c| c.borrow().get(&device).is_some_and(|w| w.strong_count() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn channels_are_shared_per_thread_and_released() {
        let dev = IoDeviceId::new();
        let created = Cell::new(0);
        let make = || {
            created.set(created.get() + 1);
            Ok::<_, ()>(42u32)
        };
        let a = get_channel(dev, make).unwrap();
        let b = get_channel(dev, || Ok::<_, ()>(7u32)).unwrap();
        assert_eq!((*a, *b), (42, 42));
        assert_eq!(created.get(), 1);
        drop((a, b));
        assert!(!has_channel(dev));
        let c = get_channel(dev, || Ok::<_, ()>(7u32)).unwrap();
        assert_eq!(*c, 7);
        let other_thread = std::thread::spawn(move || *get_channel(dev, || Ok::<_, ()>(9u32)).unwrap());
        assert_eq!(other_thread.join().unwrap(), 9);
    }
}

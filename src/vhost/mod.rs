//! vhost-user frontends: guests' virtio devices served from Ferry's reactors.
//!
//! `memory` maps the guest's shared memory; `ring` serves one split virtqueue; `session`
//! speaks the vhost-user protocol for one connection (device-agnostic); `controller` owns a
//! socket and its sessions; `blk` is the virtio-blk device; `rpc` the management methods.

pub mod backend_channel;
pub mod blk;
mod coalesce;
mod config_msg;
pub mod connection;
pub mod controller;
pub mod device;
pub mod dirty_log;
pub mod fault_guard;
pub mod guest_buf;
pub mod inflight;
pub mod inflight_packed;
pub mod memory;
pub mod packed;
pub mod ring;
#[cfg(any(test, feature = "fuzz"))]
#[doc(hidden)]
pub mod ring_oracle;
#[cfg(test)]
mod ring_oracle_tests;
pub mod rpc;
pub mod scsi;
pub mod session;
pub mod split;

use crate::framework::socket::SocketPerms;
use std::path::PathBuf;
use std::sync::Mutex;

static SOCKET_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
static SOCKET_PERMS: Mutex<SocketPerms> = Mutex::new(SocketPerms { mode: 0o600, uid: None, gid: None });

/// Sets the owner and mode controller sockets are created with (`ferryd --vhost-socket-*`).
pub fn set_socket_perms(perms: SocketPerms) {
    *SOCKET_PERMS.lock().unwrap_or_else(|e| e.into_inner()) = perms;
}

/// The owner and mode controller sockets are created with (default 0600, the daemon's user).
pub fn socket_perms() -> SocketPerms {
    *SOCKET_PERMS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets the directory controller sockets are created in (`ferryd -S`).
pub fn set_socket_dir(dir: PathBuf) {
    *SOCKET_DIR.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir);
}

/// The directory controller sockets are created in (default /var/tmp, as SPDK's).
pub fn socket_dir() -> PathBuf {
    SOCKET_DIR.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// The registry of controllers.
pub mod controllers {
    use super::controller::Controller;
    use std::sync::{Arc, Mutex};

    static CONTROLLERS: Mutex<Vec<Arc<Controller>>> = Mutex::new(Vec::new());

    fn lock() -> std::sync::MutexGuard<'static, Vec<Arc<Controller>>> {
        CONTROLLERS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a controller.
    pub fn insert(c: Arc<Controller>) {
        lock().push(c);
    }

    /// The controller called `name`.
    pub fn get(name: &str) -> Option<Arc<Controller>> {
        lock().iter().find(|c| c.name == name).cloned()
    }

    /// Every controller, in creation order.
    pub fn list() -> Vec<Arc<Controller>> {
        lock().clone()
    }

    /// Removes a controller from the registry.
    pub fn remove(name: &str) -> Option<Arc<Controller>> {
        let mut all = lock();
        let pos = all.iter().position(|c| c.name == name)?;
        Some(all.remove(pos))
    }

    /// Stops every controller (shutdown), newest first.
    pub fn shutdown_all() {
        let all: Vec<_> = std::mem::take(&mut *lock());
        for c in all.into_iter().rev() {
            c.shutdown();
        }
    }
}

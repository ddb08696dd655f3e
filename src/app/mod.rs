//! The application: start-up state (`--wait-for-rpc`), subsystems and their saved
//! configuration, logging control, and the framework's own RPC methods.

pub mod absent;
pub mod config;
pub mod cpu_stat;
pub mod log;
pub mod rpc;
pub mod sd_notify;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

static INITIALISED: AtomicBool = AtomicBool::new(false);
static INIT_WAIT: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());

/// Whether `framework_start_init` has run (or the daemon started without `--wait-for-rpc`).
pub fn is_initialised() -> bool {
    INITIALISED.load(Ordering::Acquire)
}

/// Moves to the runtime state and wakes `framework_wait_init` callers.
pub fn mark_initialised() {
    cpu_stat::init_baseline();
    let _guard = INIT_WAIT.0.lock().unwrap_or_else(|e| e.into_inner());
    INITIALISED.store(true, Ordering::Release);
    INIT_WAIT.1.notify_all();
}

/// Blocks until initialised.
pub fn wait_initialised() {
    let mut guard = INIT_WAIT.0.lock().unwrap_or_else(|e| e.into_inner());
    if !is_initialised() {
        tracing::info!("framework_wait_init: waiting for framework_start_init");
    }
    while !is_initialised() {
        guard = INIT_WAIT.1.wait(guard).unwrap_or_else(|e| e.into_inner());
    }
}

/// The version string `spdk_get_version` reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

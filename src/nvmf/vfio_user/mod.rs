//! The NVMe-oF target's VFIOUSER transport (SPDK's name): the NVMe controller model served
//! to a VM as an emulated NVMe PCIe function over vfio-user (QEMU's `vfio-user-pci`), so
//! the guest runs its ordinary NVMe driver. Each listener (`traddr` a directory) is one
//! endpoint at `<traddr>/cntrl`: one PCI function, one client at a time, one controller.
//!
//! | module | job |
//! |---|---|
//! | `options` | `nvmf_create_transport -t VFIOUSER`'s options, SPDK's defaults |
//! | `pci` | configuration space and BAR layout |
//! | `endpoint` | the function as a vfio-user `Device`: registers, CC.EN, doorbells, MSI-X, reset |
//! | `shared` | what the loop, the worker and the reactors share of an endpoint |
//! | `queue` | the queues on the reactors: SQ fetch, PRPs, the model, CQ posting, interrupts, PCIe admin commands, shadow doorbells |
//! | `prp` | PRP walking into guest memory with every bound checked |

mod endpoint;
mod options;
pub mod pci;
pub mod prp;
mod queue;
mod shared;

pub use options::VfioUserOptions;
pub use queue::QueueInfo;

use crate::nvme::fabrics::{PcieFunction, TransportLimits};
use crate::nvme::subsystem::ListenAddress;
use crate::vfio_user::Server;
use endpoint::Endpoint;
use shared::Shared;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The transport's name (trtype).
pub const TRTYPE: &str = "VFIOUSER";
/// The socket of an endpoint, in its directory (SPDK's name).
pub const SOCKET_NAME: &str = "cntrl";

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VfioUserError {
    /// The transport exists already.
    #[error("transport VFIOUSER already exists")]
    TransportExists,
    /// The transport does not exist.
    #[error("the VFIOUSER transport does not exist (nvmf_create_transport -t VFIOUSER)")]
    NoTransport,
    /// An option out of range.
    #[error("invalid VFIOUSER transport option: {0}")]
    InvalidOption(String),
    /// The traddr is not a usable directory, or is taken.
    #[error("traddr {traddr}: {reason}")]
    BadAddress {
        /// traddr.
        traddr: String,
        /// Why.
        reason: String,
    },
}

struct Listener {
    addr: ListenAddress,
    nqn: String,
    endpoint: Arc<Endpoint>,
    server: Server,
}

static OPTIONS: Mutex<Option<Arc<VfioUserOptions>>> = Mutex::new(None);
static LISTENERS: Mutex<Vec<Listener>> = Mutex::new(Vec::new());
static NEXT_UID: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates the transport (once, as SPDK).
pub fn create_transport(opts: VfioUserOptions) -> Result<(), VfioUserError> {
    opts.check().map_err(VfioUserError::InvalidOption)?;
    let mut o = lock(&OPTIONS);
    if o.is_some() {
        return Err(VfioUserError::TransportExists);
    }
    tracing::info!(?opts, "nvmf: VFIOUSER transport created");
    *o = Some(Arc::new(opts));
    Ok(())
}

/// The transport's options, if it exists.
pub fn transport_options() -> Option<VfioUserOptions> {
    lock(&OPTIONS).as_ref().map(|o| (**o).clone())
}

/// Whether `a` is a VFIOUSER address.
pub fn is_vfio_user(a: &ListenAddress) -> bool {
    a.trtype.eq_ignore_ascii_case(TRTYPE)
}

/// The socket path of endpoint `traddr`.
pub fn socket_path(traddr: &str) -> PathBuf {
    Path::new(traddr).join(SOCKET_NAME)
}

/// Starts an endpoint of subsystem `nqn` at `addr` (`<traddr>/cntrl`).
pub fn listen(nqn: &str, addr: &ListenAddress) -> Result<(), VfioUserError> {
    let opts = lock(&OPTIONS).clone().ok_or(VfioUserError::NoTransport)?;
    let bad = |reason: String| VfioUserError::BadAddress { traddr: addr.traddr.clone(), reason };
    let dir = Path::new(&addr.traddr);
    if !dir.is_absolute() {
        return Err(bad("must be an absolute directory path".into()));
    }
    if !dir.is_dir() {
        return Err(bad("is not an existing directory".into()));
    }
    if lock(&LISTENERS).iter().any(|l| l.addr.traddr == addr.traddr) {
        return Err(bad("another listener uses this directory".into()));
    }
    let reactors = crate::framework::reactors().len();
    if reactors == 0 {
        return Err(bad("the reactors are not running".into()));
    }
    let uid = NEXT_UID.fetch_add(1, Ordering::Relaxed);
    let limits = TransportLimits {
        max_queue_depth: opts.max_queue_depth,
        // The host sizes its admin queue through AQA (up to 4096 entries); the model checks
        // Connect's SQSIZE against this.
        max_aq_depth: 4097,
        max_io_qpairs_per_ctrlr: opts.max_io_qpairs_per_ctrlr,
        in_capsule_data_size: 0,
        max_io_size: opts.max_io_size,
        listen: addr.clone(),
        host_addr: socket_path(&addr.traddr).display().to_string(),
        pcie: Some(PcieFunction { vendor_id: pci::VENDOR_ID, shadow_doorbells: !opts.disable_shadow_doorbells }),
    };
    let shared = Shared::new(uid, nqn, &addr.traddr, opts, limits, reactors).map_err(|e| bad(e.to_string()))?;
    let endpoint = Arc::new(Endpoint::new(Arc::new(shared)));
    let path = socket_path(&addr.traddr);
    let server = Server::start(&addr.traddr, &path, crate::vhost::socket_perms(), endpoint.clone())
        .map_err(|e| bad(e.reason))?;
    lock(&LISTENERS).push(Listener { addr: addr.clone(), nqn: nqn.to_string(), endpoint, server });
    tracing::info!(nqn, socket = %path.display(), "nvmf: VFIOUSER endpoint listening");
    Ok(())
}

/// Stops the endpoint at `addr`: its client is disconnected and its controller ends.
pub fn stop_listening(addr: &ListenAddress) {
    let l = {
        let mut all = lock(&LISTENERS);
        let Some(i) = all.iter().position(|l| l.addr.traddr == addr.traddr) else { return };
        all.remove(i)
    };
    l.server.shutdown();
    drop(l.endpoint);
    tracing::info!(nqn = %l.nqn, traddr = %addr.traddr, "nvmf: VFIOUSER endpoint stopped");
}

/// Stops every endpoint (shutdown).
pub fn shutdown_all() {
    let all: Vec<Listener> = std::mem::take(&mut *lock(&LISTENERS));
    for l in all.into_iter().rev() {
        l.server.shutdown();
    }
}

/// The queue pairs of subsystem `nqn`'s endpoints, on every reactor.
pub fn qpairs(nqn: &str) -> Vec<QueueInfo> {
    let nqn = nqn.to_string();
    crate::framework::call_on_each(move || queue::queues_here(&nqn))
        .map(|v| v.into_iter().flatten().collect())
        .unwrap_or_default()
}

/// Whether a client is connected to the endpoint at `traddr`.
pub fn connected(traddr: &str) -> bool {
    lock(&LISTENERS).iter().any(|l| l.addr.traddr == traddr && l.server.is_connected())
}

//! PLACEHOLDER written in the rpc worktree so that `src/nvmf/rpc.rs` compiles and its tests
//! run before the parts merge: replaced at merge by the tcp part's transport (the signatures
//! are those fixed in nvme-interfaces.md). It stores the options, and `listen` binds a real
//! listening socket (refcounted per address) that accepts nothing, so that tests see a port
//! listening and freed again. No RPC logic lives here.

use crate::nvme::subsystem::ListenAddress;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{TcpListener, ToSocketAddrs};
use std::sync::{Mutex, MutexGuard, OnceLock};
use thiserror::Error;

/// The TCP transport's options: SPDK's `nvmf_create_transport` keys and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpTransportOptions {
    /// Entries of an I/O queue.
    pub max_queue_depth: u16,
    /// I/O queues per controller.
    pub max_io_qpairs_per_ctrlr: u16,
    /// In-capsule data bytes.
    pub in_capsule_data_size: u32,
    /// Largest transfer.
    pub max_io_size: u32,
    /// Buffer unit.
    pub io_unit_size: u32,
    /// Entries of the admin queue.
    pub max_aq_depth: u32,
    /// Buffer pool size.
    pub num_shared_buffers: u32,
    /// Buffers cached per poll group.
    pub buf_cache_size: u32,
    /// DIF insert/strip.
    pub dif_insert_or_strip: bool,
    /// C2HData with SUCCESS when the host allows it.
    pub c2h_success: bool,
    /// SO_PRIORITY of connections.
    pub sock_priority: u32,
    /// Seconds an abort waits.
    pub abort_timeout_sec: u32,
    /// ACK timeout in ms.
    pub ack_timeout: u32,
    /// Control messages per poll group.
    pub control_msg_num: u16,
    /// Zero copy.
    pub zcopy: bool,
}

impl Default for TcpTransportOptions {
    fn default() -> Self {
        TcpTransportOptions {
            max_queue_depth: 128,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 4096,
            max_io_size: 131072,
            io_unit_size: 131072,
            max_aq_depth: 128,
            num_shared_buffers: 511,
            buf_cache_size: 32,
            dif_insert_or_strip: false,
            c2h_success: true,
            sock_priority: 0,
            abort_timeout_sec: 1,
            ack_timeout: 0,
            control_msg_num: 32,
            zcopy: false,
        }
    }
}

/// One queue pair as `nvmf_subsystem_get_qpairs` shows it (SPDK's keys).
#[derive(Debug, Clone, Serialize)]
pub struct QpairInfo {
    /// Its controller.
    pub cntlid: u16,
    /// Queue ID (0 = admin).
    pub qid: u16,
    /// "enabled", ...
    pub state: String,
    /// The reactor serving it.
    pub thread: String,
    /// The host.
    pub hostnqn: String,
    /// The address it connected to.
    pub listen_address: ListenAddress,
    /// The host's address.
    pub peer_address: ListenAddress,
}

/// What the transport's calls fail with.
#[derive(Debug, Error)]
pub enum NvmfError {
    /// `create_transport` was called before.
    #[error("the TCP transport already exists")]
    Exists,
    /// No transport yet.
    #[error("the TCP transport does not exist")]
    NoTransport,
    /// An address that cannot be listened on.
    #[error("{0}")]
    InvalidAddress(String),
    /// The socket could not be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

struct State {
    opts: Option<TcpTransportOptions>,
    listeners: HashMap<ListenAddress, (TcpListener, usize)>,
}

fn state() -> MutexGuard<'static, State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    let m = STATE.get_or_init(|| Mutex::new(State { opts: None, listeners: HashMap::new() }));
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates the transport (once).
pub fn create_transport(opts: TcpTransportOptions) -> Result<(), NvmfError> {
    let mut st = state();
    if st.opts.is_some() {
        return Err(NvmfError::Exists);
    }
    st.opts = Some(opts);
    Ok(())
}

/// The transport's options, if it exists.
pub fn transport_options() -> Option<TcpTransportOptions> {
    state().opts.clone()
}

/// Listens on `addr` (a second listen on the same address only counts it).
pub fn listen(addr: &ListenAddress) -> Result<(), NvmfError> {
    let mut st = state();
    if st.opts.is_none() {
        return Err(NvmfError::NoTransport);
    }
    if let Some((_, n)) = st.listeners.get_mut(addr) {
        *n += 1;
        return Ok(());
    }
    let port: u16 = addr.trsvcid.parse().map_err(|_| NvmfError::InvalidAddress(addr.trsvcid.clone()))?;
    let text = format!("{}:{}", addr.traddr, addr.trsvcid);
    let sa = (addr.traddr.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| NvmfError::InvalidAddress(text.clone()))?;
    let l = TcpListener::bind(sa).map_err(|source| NvmfError::Listen { addr: text, source })?;
    st.listeners.insert(addr.clone(), (l, 1));
    Ok(())
}

/// Drops one use of `addr`; the socket closes with the last.
pub fn stop_listening(addr: &ListenAddress) {
    let mut st = state();
    if let Some((_, n)) = st.listeners.get_mut(addr) {
        *n -= 1;
        if *n == 0 {
            st.listeners.remove(addr);
        }
    }
}

/// The queue pairs of subsystem `nqn` (none in this placeholder).
pub fn qpairs(_nqn: &str) -> Vec<QpairInfo> {
    Vec::new()
}

/// `nvmf_get_stats`: the tick rate and one poll group per reactor.
pub fn stats() -> serde_json::Value {
    let groups: Vec<serde_json::Value> = (0..crate::framework::reactors().len())
        .map(|i| {
            serde_json::json!({
                "name": format!("nvmf_tgt_poll_group_{i:03}"),
                "admin_qpairs": 0, "io_qpairs": 0, "current_admin_qpairs": 0, "current_io_qpairs": 0,
                "current_unassociated_qpairs": 0, "pending_bdev_io": 0, "completed_nvme_io": 0,
                "transports": [{"trtype": "TCP"}],
            })
        })
        .collect();
    serde_json::json!({ "tick_rate": crate::framework::ticks::tick_rate(), "poll_groups": groups })
}

//! The NVMe/TCP target transport (NVMe/TCP Transport Specification 1.0, SPDK's
//! `lib/nvmf/tcp.c` for options and behaviour): one transport with SPDK's options, listeners
//! refcounted per address accepting on reactor 0, connections placed on the reactor with the
//! fewest and polled there without a thread of their own.
//!
//! | module | job |
//! |---|---|
//! | `options` | `nvmf_create_transport`'s TCP keys, SPDK's defaults, checks |
//! | `listener` | listening sockets per address (refcounted), accepting on reactor 0 |
//! | `group` | each reactor's connections (`crate::net::poll_group`), placement, the connection bound |
//! | `pdu` | cutting received PDUs out of the stream: the allowed types per state, length limits, header digest |
//! | `command` | one command's transfer: SGL decoding, buffers, the R2T window H2CData must fit |
//! | `conn` | one connection: ICReq/ICResp, Connect, capsules, R2T/H2CData, C2HData, responses, termination |

mod command;
mod conn;
mod group;
mod listener;
mod options;
pub mod pdu;

pub use command::{decode_sgl, SglPlan, Window};
pub use listener::{listen, stop_listening};
pub use options::TcpTransportOptions;

use crate::framework::FrameworkError;
use crate::nvme::subsystem::ListenAddress;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Errors of the TCP transport's management operations.
#[derive(Debug, Error)]
pub enum NvmfError {
    /// `create_transport` was called twice (SPDK allows one transport per type).
    #[error("transport TCP already exists")]
    TransportExists,
    /// Listening before the transport exists.
    #[error("transport TCP does not exist")]
    NoTransport,
    /// A bad transport option.
    #[error("invalid TCP transport option: {0}")]
    InvalidOption(String),
    /// A listen address that cannot be used.
    #[error("invalid listen address {trtype} {adrfam} {traddr}:{trsvcid}: {reason}")]
    BadAddress {
        /// trtype.
        trtype: String,
        /// adrfam.
        adrfam: String,
        /// traddr.
        traddr: String,
        /// trsvcid.
        trsvcid: String,
        /// Why.
        reason: String,
    },
    /// Binding the address failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The reactors are not running.
    #[error(transparent)]
    Framework(#[from] FrameworkError),
}

static OPTIONS: Mutex<Option<Arc<TcpTransportOptions>>> = Mutex::new(None);

/// Creates the TCP transport (once, as SPDK: a second call fails).
pub fn create_transport(opts: TcpTransportOptions) -> Result<(), NvmfError> {
    opts.check()?;
    let mut o = OPTIONS.lock().unwrap_or_else(|e| e.into_inner());
    if o.is_some() {
        return Err(NvmfError::TransportExists);
    }
    tracing::info!(?opts, "nvmf: TCP transport created");
    *o = Some(Arc::new(opts));
    Ok(())
}

/// The transport's options, if it exists (`nvmf_get_transports`).
pub fn transport_options() -> Option<TcpTransportOptions> {
    current_options().map(|o| (*o).clone())
}

pub(crate) fn current_options() -> Option<Arc<TcpTransportOptions>> {
    OPTIONS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// One queue pair as `nvmf_subsystem_get_qpairs` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct QpairInfo {
    /// Controller id.
    pub cntlid: u16,
    /// Queue id.
    pub qid: u16,
    /// "active" (connected) or "deleting" (closing, I/O still in flight).
    pub state: String,
    /// The listener the connection came in on.
    pub listen_address: ListenAddress,
    /// The host's address and port.
    pub peer_address: String,
}

/// The queue pairs of subsystem `nqn`, on every reactor.
pub fn qpairs(nqn: &str) -> Vec<QpairInfo> {
    let nqn = nqn.to_string();
    group::each_conn(move |c| c.qpair_info(&nqn))
}

/// `nvmf_get_stats`: `{tick_rate, poll_groups: [{name, admin_qpairs, io_qpairs, ...}]}`.
pub fn stats() -> serde_json::Value {
    serde_json::json!({
        "tick_rate": crate::framework::ticks::tick_rate(),
        "poll_groups": group::stats(),
    })
}

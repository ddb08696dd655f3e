//! The NVMe/TCP transport: how the controller opens its queue pairs.

use super::qpair::{TcpConfig, TcpQpair};
use super::{HostError, IoLimits, Transport};
use crate::tcp::Digests;
use std::net::SocketAddr;
use std::time::Duration;

/// Admin queue entries Ferry asks for (SPDK's default admin queue size is 32).
pub const ADMIN_QUEUE_SIZE: u16 = 32;
/// In-capsule data the host sends on the admin queue (Connect's 1024 bytes fit).
pub const ADMIN_IN_CAPSULE: u32 = 4096;
/// Largest admin data buffer (Identify: 4096).
pub const ADMIN_MAX_TRANSFER: u32 = 8192;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct TcpTransport {
    /// The target's address.
    pub addr: SocketAddr,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
    /// Host identifier.
    pub hostid: [u8; 16],
    /// Digests to ask for.
    pub digests: Digests,
    /// How long connecting one queue may take.
    pub connect_timeout: Duration,
}

impl Transport for TcpTransport {
    type Qpair = TcpQpair;

    fn connect_admin(&self, kato_ms: u32) -> Result<TcpQpair, HostError> {
        TcpQpair::connect(TcpConfig {
            addr: self.addr,
            qid: 0,
            sqsize: ADMIN_QUEUE_SIZE,
            kato_ms,
            cntlid: 0xffff,
            hostid: self.hostid,
            subnqn: self.subnqn.clone(),
            hostnqn: self.hostnqn.clone(),
            digests: self.digests,
            in_capsule: ADMIN_IN_CAPSULE,
            max_transfer: ADMIN_MAX_TRANSFER,
            connect_timeout: self.connect_timeout,
        })
    }

    fn connect_io(&self, qid: u16, sqsize: u16, cntlid: u16, limits: &IoLimits) -> Result<TcpQpair, HostError> {
        TcpQpair::connect(TcpConfig {
            addr: self.addr,
            qid,
            sqsize,
            kato_ms: 0,
            cntlid,
            hostid: self.hostid,
            subnqn: self.subnqn.clone(),
            hostnqn: self.hostnqn.clone(),
            digests: self.digests,
            in_capsule: limits.in_capsule,
            max_transfer: limits.max_transfer,
            connect_timeout: self.connect_timeout,
        })
    }

    fn describe(&self) -> String {
        format!("tcp {} {}", self.addr, self.subnqn)
    }
}

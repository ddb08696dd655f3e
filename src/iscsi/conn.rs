//! Connections on the reactors. (Skeleton: the engine lands next; this fixes the interface
//! the portals and the RPCs use.)

use serde::Serialize;
use std::net::{SocketAddr, TcpStream};

/// One connection as `iscsi_get_connections` lists it (SPDK's keys).
#[derive(Debug, Clone, Serialize)]
pub struct ConnInfo {
    /// Ferry's connection id.
    pub id: u64,
    /// The iSCSI connection id (CID).
    pub cid: u16,
    /// The session's TSIH.
    pub tsih: u16,
    /// The core of the reactor polling it.
    pub lcore_id: u32,
    /// The initiator's address.
    pub initiator_addr: String,
    /// The local address.
    pub target_addr: String,
    /// The target node's name (empty for discovery).
    pub target_node_name: String,
}

/// Session counts by state, as `iscsi_get_stats` reports them.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stats {
    /// Connections that failed.
    pub invalid: u64,
    /// Connections running.
    pub running: u64,
    /// Connections closing.
    pub exiting: u64,
    /// Connections closed.
    pub exited: u64,
}

/// Takes over a connection accepted on portal group `pg_tag` (on reactor 0).
pub fn adopt(stream: TcpStream, peer: SocketAddr, pg_tag: u32) {
    tracing::debug!(%peer, pg_tag, "iscsi: connection accepted (engine not yet built)");
    drop(stream);
}

/// Every connection now.
pub fn connections() -> Vec<ConnInfo> {
    Vec::new()
}

/// Connection counts.
pub fn stats() -> Stats {
    Stats::default()
}

/// Drops every session logged in to target `name` (its node is being deleted).
pub fn drop_target_sessions(name: &str) {
    let _ = name;
}

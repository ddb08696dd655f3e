//! TEMPORARY STUB (replaced by the proto branch): interface only.
#![allow(missing_docs, dead_code)]
use super::config::TargetNode;
use super::pdu::Bhs;
use std::net::SocketAddr;
use std::sync::Arc;
pub struct LoginEnv {
    pub pg_tag: u32,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}
pub struct Response {
    pub bhs: Bhs,
    pub data: Vec<u8>,
}
pub enum LoginStep {
    Continue(Response),
    Done(Response, Box<LoginOutcome>),
    Fail(Response),
}
pub enum SessionKind {
    Discovery,
    Normal(Arc<TargetNode>),
}
pub struct LoginOutcome {
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cid: u16,
    pub kind: SessionKind,
    pub params: SessionParams,
}
#[derive(Debug, Clone, Copy)]
pub struct SessionParams {
    pub header_digest: bool,
    pub data_digest: bool,
    pub target_max_recv_data_segment: u32,
    pub initiator_max_recv_data_segment: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub max_connections: u32,
    pub error_recovery_level: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
}
pub struct Login {
    env: LoginEnv,
}
impl Login {
    pub fn new(env: LoginEnv) -> Login {
        Login { env }
    }
    pub fn on_request(&mut self, bhs: &Bhs, _data: &[u8]) -> LoginStep {
        LoginStep::Fail(failure(bhs, 3, 0))
    }
}
pub fn failure(_req: &Bhs, _class: u8, _detail: u8) -> Response {
    Response { bhs: Bhs::default(), data: Vec::new() }
}

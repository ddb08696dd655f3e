//! TEMPORARY STUB (replaced by the proto branch): interface only.
#![allow(missing_docs, dead_code)]
use super::login::Response;
use super::pdu::Bhs;
pub struct TextState;
impl TextState {
    pub fn new() -> TextState {
        TextState
    }
    pub fn on_request(&mut self, _bhs: &Bhs, _data: &[u8], _ctx: &TextContext) -> Response {
        Response { bhs: Bhs::default(), data: Vec::new() }
    }
}
pub struct TextContext<'a> {
    pub discovery: bool,
    pub target_name: Option<&'a str>,
    pub initiator_name: &'a str,
    pub peer: std::net::SocketAddr,
    pub pg_tag: u32,
    pub initiator_max_recv_data_segment: u32,
}

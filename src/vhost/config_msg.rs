//! GET_CONFIG and SET_CONFIG as frontends really send them.
//!
//! The spec's form is a 12-byte header (offset, size, flags) followed by exactly `size` bytes,
//! and that is all rust-vmm's parser accepts. SPDK's virtio-user (and its forks) always send
//! the whole `struct vhost_user_config`, whose region is VHOST_USER_MAX_CONFIG_SIZE (256)
//! bytes, whatever `size` says: a one-byte SET_CONFIG arrives as 268 bytes of payload. Such a
//! message is rewritten into the spec's form before it is parsed, and a GET_CONFIG reply is
//! padded back to the payload size the frontend sent, since the spec requires the reply to
//! match the request ("the back-end's payload size MUST match the front-end's request").

use vhost::vhost_user::message::FrontendReq;

/// vhost-user message header bytes (request, flags, size).
const HEADER: usize = 12;
/// The config message's own header (offset, size, flags).
const CONFIG_HEADER: usize = 12;
/// The config region of SPDK's and DPDK's `struct vhost_user_config`.
pub const MAX_CONFIG_SIZE: usize = 256;

/// What to do to the reply of a rewritten request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyPadding {
    /// The payload size the frontend's request had.
    payload: usize,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// Rewrites a GET_CONFIG or SET_CONFIG whose payload is longer than its config header says
/// (SPDK's fixed-size form, at most MAX_CONFIG_SIZE of region) into the spec's form. Returns
/// how to pad the reply of a rewritten GET_CONFIG. Anything else is left as it is (the
/// parser judges it).
pub fn normalize(bytes: &mut Vec<u8>) -> Option<ReplyPadding> {
    if bytes.len() < HEADER + CONFIG_HEADER {
        return None;
    }
    let request = u32_at(bytes, 0);
    let get = request == FrontendReq::GET_CONFIG as u32;
    if !get && request != FrontendReq::SET_CONFIG as u32 {
        return None;
    }
    let payload = bytes.len() - HEADER;
    let size = u32_at(bytes, HEADER + 4) as usize;
    if payload != CONFIG_HEADER + MAX_CONFIG_SIZE || size >= MAX_CONFIG_SIZE {
        return None;
    }
    bytes.truncate(HEADER + CONFIG_HEADER + size);
    bytes[8..12].copy_from_slice(&((CONFIG_HEADER + size) as u32).to_le_bytes());
    get.then_some(ReplyPadding { payload })
}

/// Pads a successful GET_CONFIG reply (its config size is not 0) with zeros to the payload
/// size of the request it answers. A failed one keeps its empty region: that is how the
/// spec signals the error.
pub fn pad_reply(reply: &mut Vec<u8>, padding: ReplyPadding) {
    if reply.len() < HEADER + CONFIG_HEADER || u32_at(reply, 0) != FrontendReq::GET_CONFIG as u32 {
        return;
    }
    let payload = reply.len() - HEADER;
    if u32_at(reply, HEADER + 4) == 0 || payload >= padding.payload {
        return;
    }
    reply.resize(HEADER + padding.payload, 0);
    reply[8..12].copy_from_slice(&(padding.payload as u32).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(request: FrontendReq, size: u32, region: usize) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&(request as u32).to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&((CONFIG_HEADER + region) as u32).to_le_bytes());
        m.extend_from_slice(&32u32.to_le_bytes()); // offset
        m.extend_from_slice(&size.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes()); // flags
        m.extend((0..region).map(|i| i as u8));
        m
    }

    #[test]
    fn spdk_sized_set_config_is_cut_to_its_size_and_get_config_replies_are_padded_back() {
        let mut set = message(FrontendReq::SET_CONFIG, 1, MAX_CONFIG_SIZE);
        assert_eq!(normalize(&mut set), None, "a SET_CONFIG has no reply to pad");
        assert_eq!(set, message(FrontendReq::SET_CONFIG, 1, 1));

        let mut get = message(FrontendReq::GET_CONFIG, 60, MAX_CONFIG_SIZE);
        let padding = normalize(&mut get).expect("rewritten");
        assert_eq!(get, message(FrontendReq::GET_CONFIG, 60, 60));
        let mut reply = message(FrontendReq::GET_CONFIG, 60, 60);
        pad_reply(&mut reply, padding);
        assert_eq!(reply.len(), HEADER + CONFIG_HEADER + MAX_CONFIG_SIZE);
        assert_eq!(u32_at(&reply, 8) as usize, CONFIG_HEADER + MAX_CONFIG_SIZE);
        assert!(reply[HEADER + CONFIG_HEADER + 60..].iter().all(|&b| b == 0));

        // An error reply (config size 0) stays empty.
        let mut failed = message(FrontendReq::GET_CONFIG, 0, 0);
        pad_reply(&mut failed, padding);
        assert_eq!(failed.len(), HEADER + CONFIG_HEADER);
    }

    #[test]
    fn spec_sized_and_other_messages_are_left_alone() {
        for m in [
            message(FrontendReq::GET_CONFIG, 60, 60),
            message(FrontendReq::GET_CONFIG, 256, 256),
            message(FrontendReq::SET_CONFIG, 300, MAX_CONFIG_SIZE),
            message(FrontendReq::GET_FEATURES, 1, MAX_CONFIG_SIZE),
            message(FrontendReq::GET_CONFIG, 1, 100),
        ] {
            let mut copy = m.clone();
            assert_eq!(normalize(&mut copy), None);
            assert_eq!(copy, m);
        }
        let mut short = vec![24, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(normalize(&mut short), None);
    }
}

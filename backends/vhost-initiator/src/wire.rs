//! vhost-user messages byte for byte: a header (request, flags, payload size) and a payload
//! exactly as a given frontend lays it out, with the fds it passes. rust-vmm's `Frontend`
//! only sends the spec's canonical forms; other frontends send other sizes (SPDK's
//! virtio-user a fixed 268-byte config payload, for one), and [`crate::frontends`] replays them
//! on this. Every exchange is recorded, so tests can check the sizes that went each way.

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use thiserror::Error;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Header flag bits.
pub mod flags {
    /// Protocol version 1 (the only one).
    pub const VERSION: u32 = 0x1;
    /// Set on replies.
    pub const REPLY: u32 = 0x4;
    /// Asks for a REPLY_ACK.
    pub const NEED_REPLY: u32 = 0x8;
}

/// Request codes (vhost-user.rst, "Front-end message types").
pub mod req {
    #![allow(missing_docs)]
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    pub const GET_CONFIG: u32 = 24;
    pub const SET_CONFIG: u32 = 25;
    pub const GET_INFLIGHT_FD: u32 = 31;
    pub const SET_INFLIGHT_FD: u32 = 32;
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    pub const ADD_MEM_REG: u32 = 37;
}

/// Why an exchange failed.
#[derive(Debug, Error)]
pub enum WireError {
    /// The socket failed or closed.
    #[error("request {request}: socket: {source}")]
    Io {
        /// The request being sent or answered.
        request: u32,
        /// The error.
        source: std::io::Error,
    },
    /// The reply is not what the frontend being imitated accepts (its own check failed).
    #[error("request {request}: {why}")]
    BadReply {
        /// The request answered.
        request: u32,
        /// What the frontend would have said.
        why: String,
    },
}

/// One request and what came back, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Request code.
    pub request: u32,
    /// Payload bytes sent.
    pub sent: usize,
    /// Payload bytes of the reply, if one was read.
    pub replied: Option<usize>,
}

/// A connected socket speaking raw vhost-user.
pub struct Wire {
    stream: UnixStream,
    log: Vec<Exchange>,
}

impl Wire {
    /// Wraps a connected stream; a reply that does not come within `timeout` fails the
    /// exchange (a backend that drops a request must fail a test, not hang it).
    pub fn new(stream: UnixStream, timeout: std::time::Duration) -> std::io::Result<Wire> {
        stream.set_read_timeout(Some(timeout))?;
        Ok(Wire { stream, log: Vec::new() })
    }

    /// The exchanges so far.
    pub fn log(&self) -> &[Exchange] {
        &self.log
    }

    /// Gives the stream back (and the log).
    pub fn into_parts(self) -> (UnixStream, Vec<Exchange>) {
        (self.stream, self.log)
    }

    /// Sends `request` with `flags` (VERSION is added), `payload` as it is and `fds`.
    pub fn send(&mut self, request: u32, flags: u32, payload: &[u8], fds: &[RawFd]) -> Result<(), WireError> {
        let mut bytes = Vec::with_capacity(12 + payload.len());
        bytes.extend_from_slice(&request.to_le_bytes());
        bytes.extend_from_slice(&(flags | flags::VERSION).to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(payload);
        let io = |source| WireError::Io { request, source };
        let mut sent = self.stream.send_with_fds(&[&bytes[..]], fds).map_err(|e| io(e.into()))?;
        while sent < bytes.len() {
            sent += self.stream.send_with_fds(&[&bytes[sent..]], &[]).map_err(|e| io(e.into()))?;
        }
        self.log.push(Exchange { request, sent: payload.len(), replied: None });
        Ok(())
    }

    /// Reads the reply to the last request sent: its payload. The header must be a reply
    /// (flags VERSION|REPLY, as SPDK and DPDK insist) to that request.
    pub fn reply(&mut self) -> Result<Vec<u8>, WireError> {
        let (payload, fd) = self.reply_with_fd()?;
        match fd {
            None => Ok(payload),
            Some(_) => Err(WireError::BadReply { request: self.last_request(), why: "an fd with the reply".into() }),
        }
    }

    fn last_request(&self) -> u32 {
        self.log.last().map_or(0, |e| e.request)
    }

    /// As [`Wire::reply`], with the fd that came with it (GET_INFLIGHT_FD).
    pub fn reply_with_fd(&mut self) -> Result<(Vec<u8>, Option<File>), WireError> {
        let request = self.last_request();
        let mut header = [0u8; 12];
        let mut fds = [-1 as RawFd; 1];
        let mut iov = [libc::iovec { iov_base: header.as_mut_ptr().cast(), iov_len: header.len() }];
        // SAFETY: the iovec covers `header`, writable; at most one fd is received.
        let (got, nfds) = unsafe { self.stream.recv_with_fds(&mut iov, &mut fds) }
            .map_err(|e| WireError::Io { request, source: e.into() })?;
        // SAFETY: recvmsg gave us this descriptor; it is ours now.
        let fd = (nfds == 1).then(|| unsafe { File::from_raw_fd(fds[0]) });
        if got == 0 {
            let source = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
            return Err(WireError::Io { request, source });
        }
        self.read_exact(request, &mut header[got..])?;
        let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("four bytes"));
        let (code, flags, size) = (word(0), word(4), word(8) as usize);
        if code != request || flags != flags::VERSION | flags::REPLY {
            return Err(WireError::BadReply {
                request,
                why: format!("reply header: request {code}, flags {flags:#x}"),
            });
        }
        if size > 0x1000 {
            return Err(WireError::BadReply { request, why: format!("oversized reply: {size} bytes") });
        }
        let mut payload = vec![0u8; size];
        self.read_exact(request, &mut payload)?;
        if let Some(last) = self.log.last_mut() {
            last.replied = Some(size);
        }
        Ok((payload, fd))
    }

    /// Sends and reads the reply, which must carry exactly `reply_size` payload bytes (the
    /// check every C frontend makes: "Received bad msg size").
    pub fn call(&mut self, request: u32, payload: &[u8], reply_size: usize) -> Result<Vec<u8>, WireError> {
        self.send(request, 0, payload, &[])?;
        let reply = self.reply()?;
        if reply.len() != reply_size {
            return Err(WireError::BadReply {
                request,
                why: format!("Received bad msg size: {} bytes, {reply_size} expected", reply.len()),
            });
        }
        Ok(reply)
    }

    /// Sends with NEED_REPLY and checks the REPLY_ACK (a u64, 0 for success).
    pub fn call_ack(&mut self, request: u32, payload: &[u8], fds: &[RawFd]) -> Result<(), WireError> {
        self.send(request, flags::NEED_REPLY, payload, fds)?;
        let ack = self.reply()?;
        match <[u8; 8]>::try_from(ack.as_slice()) {
            Ok(v) if u64::from_le_bytes(v) == 0 => Ok(()),
            Ok(v) => Err(WireError::BadReply { request, why: format!("NACK {}", u64::from_le_bytes(v)) }),
            Err(_) => Err(WireError::BadReply { request, why: format!("ack of {} bytes", ack.len()) }),
        }
    }

    fn read_exact(&mut self, request: u32, buf: &mut [u8]) -> Result<(), WireError> {
        use std::io::Read;
        self.stream.read_exact(buf).map_err(|source| WireError::Io { request, source })
    }
}

/// Payload builders: the C structs' layouts, little-endian.
pub mod payload {
    /// A u64 (features, protocol features, SET_LOG_BASE's legacy form).
    pub fn u64(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    /// `struct vhost_vring_state` { index, num }.
    pub fn state(index: u32, num: u32) -> Vec<u8> {
        let mut p = index.to_le_bytes().to_vec();
        p.extend_from_slice(&num.to_le_bytes());
        p
    }

    /// `struct vhost_vring_addr` { index, flags, desc, used, avail, log } (40 bytes).
    pub fn vring_addr(index: u32, flags: u32, desc: u64, used: u64, avail: u64, log: u64) -> Vec<u8> {
        let mut p = index.to_le_bytes().to_vec();
        p.extend_from_slice(&flags.to_le_bytes());
        for v in [desc, used, avail, log] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        p
    }

    /// A memory region { guest address, size, user address, mmap offset } (32 bytes).
    pub fn region(gpa: u64, size: u64, user: u64, offset: u64) -> Vec<u8> {
        [gpa, size, user, offset].iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// SET_MEM_TABLE's { nregions, padding, regions[n] }: 8 + 32 n bytes.
    pub fn mem_table(regions: &[Vec<u8>]) -> Vec<u8> {
        let mut p = (regions.len() as u32).to_le_bytes().to_vec();
        p.extend_from_slice(&0u32.to_le_bytes());
        regions.iter().for_each(|r| p.extend_from_slice(r));
        p
    }

    /// A config message { offset, size, flags } followed by `region` (whose length may
    /// differ from `size`: SPDK always sends 256 bytes).
    pub fn config(offset: u32, size: u32, flags: u32, region: &[u8]) -> Vec<u8> {
        let mut p = offset.to_le_bytes().to_vec();
        p.extend_from_slice(&size.to_le_bytes());
        p.extend_from_slice(&flags.to_le_bytes());
        p.extend_from_slice(region);
        p
    }

    /// `VhostUserInflight` { mmap_size, mmap_offset, num_queues, queue_size } as QEMU's C
    /// struct, padded to 24 bytes.
    pub fn inflight(mmap_size: u64, mmap_offset: u64, num_queues: u16, queue_size: u16) -> Vec<u8> {
        let mut p = mmap_size.to_le_bytes().to_vec();
        p.extend_from_slice(&mmap_offset.to_le_bytes());
        p.extend_from_slice(&num_queues.to_le_bytes());
        p.extend_from_slice(&queue_size.to_le_bytes());
        p.extend_from_slice(&[0; 4]);
        p
    }

    /// `VhostUserLog` { mmap_size, mmap_offset } (SET_LOG_BASE with LOG_SHMFD).
    pub fn log(mmap_size: u64, mmap_offset: u64) -> Vec<u8> {
        let mut p = mmap_size.to_le_bytes().to_vec();
        p.extend_from_slice(&mmap_offset.to_le_bytes());
        p
    }

    /// Reads a u64 reply.
    pub fn as_u64(reply: &[u8]) -> u64 {
        u64::from_le_bytes(reply[..8].try_into().expect("eight bytes"))
    }
}

//! The backend-to-frontend channel (vhost-user BACKEND_REQ), used to tell the frontend that
//! the config space changed (a resized bdev), which QEMU passes to the guest as a virtio
//! config-change interrupt.
//!
//! rust-vmm's `vhost` crate receives this channel (SET_BACKEND_REQ_FD) but its `Backend`
//! type has no way to send CONFIG_CHANGE_MSG and does not lend its socket. So the
//! connection (which gathers every message before the crate sees it) hands
//! SET_BACKEND_REQ_FD here; every other message goes to the crate untouched.

use super::connection::Message;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

const SET_BACKEND_REQ_FD: u32 = 21;
const CONFIG_CHANGE_MSG: u32 = 2;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const HEADER: usize = 12;

/// The frontend's request socket for one session, once it sent one.
#[derive(Default)]
pub struct BackendChannel {
    sock: Mutex<Option<UnixStream>>,
}

impl BackendChannel {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<UnixStream>> {
        self.sock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the channel (the frontend disconnected).
    pub fn clear(&self) {
        *self.lock() = None;
    }

    /// Whether the frontend gave us a channel.
    pub fn is_connected(&self) -> bool {
        self.lock().is_some()
    }

    /// Sends CONFIG_CHANGE_MSG; false when there is no channel or it failed.
    pub fn notify_config_change(&self) -> bool {
        let mut guard = self.lock();
        let Some(sock) = guard.as_mut() else { return false };
        let mut msg = [0u8; HEADER];
        msg[0..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
        msg[4..8].copy_from_slice(&FLAG_VERSION.to_le_bytes());
        let ok = sock.write_all(&msg).is_ok();
        if !ok {
            *guard = None;
        }
        ok
    }

    /// If `msg` is SET_BACKEND_REQ_FD, keeps the socket it carries and returns the reply to
    /// send (empty when the frontend asked for none); `None` for every other message, which
    /// goes to the vhost crate.
    pub(super) fn accept_message(&self, msg: &Message) -> Option<Vec<u8>> {
        if msg.request() != SET_BACKEND_REQ_FD {
            return None;
        }
        let flags = u32::from_le_bytes(msg.bytes[4..8].try_into().expect("header"));
        let socket = msg.fds.first().filter(|f| is_socket(f)).and_then(|f| f.try_clone().ok());
        let accepted = socket.is_some();
        if let Some(f) = socket {
            *self.lock() = Some(UnixStream::from(OwnedFd::from(f)));
        }
        tracing::debug!(accepted, "backend request channel set up");
        if flags & FLAG_NEED_REPLY == 0 {
            return Some(Vec::new());
        }
        let mut reply = Vec::with_capacity(HEADER + 8);
        reply.extend_from_slice(&SET_BACKEND_REQ_FD.to_le_bytes());
        reply.extend_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
        reply.extend_from_slice(&8u32.to_le_bytes());
        reply.extend_from_slice(&u64::from(!accepted).to_le_bytes());
        Some(reply)
    }
}

/// Whether `f` is a socket (what a backend channel must be).
fn is_socket(f: &File) -> bool {
    use std::os::unix::fs::FileTypeExt;
    f.metadata().is_ok_and(|m| m.file_type().is_socket())
}

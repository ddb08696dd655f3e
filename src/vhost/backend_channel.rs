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
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

const SET_BACKEND_REQ_FD: u32 = 21;
const CONFIG_CHANGE_MSG: u32 = 2;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const HEADER: usize = 12;

/// The frontend's request socket for one session, once it sent one.
///
/// The socket is the frontend's: it may never read it. So a notice is sent with
/// `MSG_DONTWAIT` (never `O_NONBLOCK` on the fd: that flag lives in the file description the
/// frontend shares) and a send that would block, or only half fits, counts as a broken
/// channel: it is dropped and the notice lost, rather than the caller (the RPC thread) frozen.
/// The lock is held only to take or drop the socket, never across the send.
#[derive(Default)]
pub struct BackendChannel {
    sock: Mutex<Option<Arc<UnixStream>>>,
}

impl BackendChannel {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<UnixStream>>> {
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

    /// Sends CONFIG_CHANGE_MSG without ever waiting; false when there is no channel or the
    /// frontend does not take the message at once (the channel is then dropped).
    pub fn notify_config_change(&self) -> bool {
        let Some(sock) = self.lock().clone() else { return false };
        let mut msg = [0u8; HEADER];
        msg[0..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
        msg[4..8].copy_from_slice(&FLAG_VERSION.to_le_bytes());
        let sent = loop {
            // SAFETY: `msg` is valid for HEADER bytes; the fd stays open while we hold `sock`.
            let n = unsafe {
                libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), HEADER, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break n;
        };
        if sent == HEADER as isize {
            return true;
        }
        // Full (the frontend does not read), a partial message (the stream is now out of step),
        // or closed: the channel is of no further use.
        tracing::warn!(
            sent,
            error = %std::io::Error::last_os_error(),
            "frontend's backend-request channel does not take messages; dropping it"
        );
        let mut guard = self.lock();
        if guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, &sock)) {
            *guard = None;
        }
        false
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
            *self.lock() = Some(Arc::new(UnixStream::from(OwnedFd::from(f))));
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

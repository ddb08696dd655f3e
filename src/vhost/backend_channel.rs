//! The backend-to-frontend channel (vhost-user BACKEND_REQ), used to tell the frontend that
//! the config space changed (a resized bdev), which QEMU passes to the guest as a virtio
//! config-change interrupt.
//!
//! rust-vmm's `vhost` crate receives this channel (SET_BACKEND_REQ_FD) but its `Backend`
//! type has no way to send CONFIG_CHANGE_MSG and does not lend its socket. So the session
//! thread peeks at each incoming message and takes SET_BACKEND_REQ_FD itself; every other
//! message goes to the crate untouched.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

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

    /// If the next message on the session socket `fd` is SET_BACKEND_REQ_FD, consumes it,
    /// keeps its socket and acknowledges it if asked; returns whether it did.
    pub fn intercept(&self, fd: RawFd) -> std::io::Result<bool> {
        let mut hdr = [0u8; HEADER];
        // SAFETY: `hdr` is a valid writable buffer of HEADER bytes; MSG_PEEK leaves the data
        // in the socket for the crate when it is not our message.
        let n = unsafe { libc::recv(fd, hdr.as_mut_ptr().cast(), HEADER, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n != HEADER as isize {
            return Ok(false);
        }
        let request = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let flags = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
        if request != SET_BACKEND_REQ_FD || size > 64 {
            return Ok(false);
        }
        // Borrow the session socket for one recvmsg (ManuallyDrop: the crate owns it).
        // SAFETY: fd is the session's open socket for the duration of this call; we never
        // close it (ManuallyDrop).
        let stream = std::mem::ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(fd) });
        let mut buf = [0u8; HEADER + 64];
        let mut iov = [libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: HEADER + size }];
        let mut fds = [-1 as RawFd; 1];
        // SAFETY: the iovec points at `buf`, valid and writable for HEADER + size bytes.
        let (_, nfds) = unsafe { stream.recv_with_fds(&mut iov, &mut fds) }.map_err(std::io::Error::from)?;
        if nfds == 1 && fds[0] >= 0 {
            // SAFETY: recvmsg gave us this fd; we own it from here on.
            *self.lock() = Some(Arc::new(unsafe { UnixStream::from_raw_fd(fds[0]) }));
        }
        if flags & FLAG_NEED_REPLY != 0 {
            let mut reply = [0u8; HEADER + 8];
            reply[0..4].copy_from_slice(&SET_BACKEND_REQ_FD.to_le_bytes());
            reply[4..8].copy_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
            reply[8..12].copy_from_slice(&8u32.to_le_bytes());
            let status: u64 = if nfds == 1 { 0 } else { 1 };
            reply[12..20].copy_from_slice(&status.to_le_bytes());
            (&*stream).write_all(&reply)?;
        }
        tracing::debug!(fd_received = nfds == 1, "backend request channel set up");
        Ok(true)
    }
}

//! A connection's outgoing PDUs: a header built in place, data either owned or borrowed from
//! a command's buffer (zero copy for read data), and a tail (padding, data digest), sent with
//! one `sendmsg` over as many PDUs as are queued, resuming after a short write. The protocol
//! builds the header and tail; this queue only moves bytes.

use super::buffers::SharedBuf;
use std::collections::VecDeque;
use std::os::fd::RawFd;

/// Data of an outgoing PDU.
pub enum OutData {
    /// No data segment.
    None,
    /// Bytes of its own (text, sense, a termination request's header copy).
    Owned(Vec<u8>),
    /// A slice of a command's buffer.
    Shared {
        /// The buffer, kept alive until sent.
        buf: SharedBuf,
        /// Start.
        off: usize,
        /// Length.
        len: usize,
    },
}

impl OutData {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            OutData::None => &[],
            OutData::Owned(v) => v,
            OutData::Shared { buf, off, len } => &buf.as_slice()[*off..*off + *len],
        }
    }
}

/// Longest header kept in place (an iSCSI BHS with its digest; NVMe/TCP headers are shorter;
/// anything longer goes as owned data).
pub const MAX_HEAD: usize = 52;
/// Longest tail (up to 3 bytes of padding and a 4-byte digest).
pub const MAX_TAIL: usize = 8;

/// One PDU ready to send.
struct OutPdu {
    head: [u8; MAX_HEAD],
    head_len: u8,
    data: OutData,
    tail: [u8; MAX_TAIL],
    tail_len: u8,
}

impl OutPdu {
    fn total(&self) -> usize {
        self.head_len as usize + self.data.bytes().len() + self.tail_len as usize
    }
}

/// The queue.
#[derive(Default)]
pub struct Outbox {
    q: VecDeque<OutPdu>,
    /// Bytes of the front PDU already sent.
    sent: usize,
    /// Bytes queued and not sent.
    bytes: usize,
}

/// Most iovecs per sendmsg.
const MAX_IOVS: usize = 256;

impl Outbox {
    /// Queues a PDU: `head` (at most [`MAX_HEAD`] bytes), `data`, then `tail` (at most
    /// [`MAX_TAIL`] bytes).
    ///
    /// # Panics
    /// If `head` or `tail` is longer than allowed (a caller's bug, not peer input).
    pub fn push_parts(&mut self, head: &[u8], data: OutData, tail: &[u8]) {
        let mut h = [0u8; MAX_HEAD];
        h[..head.len()].copy_from_slice(head);
        let mut t = [0u8; MAX_TAIL];
        t[..tail.len()].copy_from_slice(tail);
        let pdu = OutPdu { head: h, head_len: head.len() as u8, data, tail: t, tail_len: tail.len() as u8 };
        self.bytes += pdu.total();
        self.q.push_back(pdu);
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Sends what the socket takes. Ok(true) when everything went.
    pub fn flush(&mut self, fd: RawFd) -> std::io::Result<bool> {
        while !self.q.is_empty() {
            let mut iovs: [libc::iovec; MAX_IOVS] =
                [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_IOVS];
            let mut n = 0;
            let mut skip = self.sent;
            'fill: for pdu in &self.q {
                for part in [&pdu.head[..pdu.head_len as usize], pdu.data.bytes(), &pdu.tail[..pdu.tail_len as usize]] {
                    if part.len() <= skip {
                        skip -= part.len();
                        continue;
                    }
                    if n == MAX_IOVS {
                        break 'fill;
                    }
                    let part = &part[skip..];
                    skip = 0;
                    iovs[n] = libc::iovec { iov_base: part.as_ptr() as *mut _, iov_len: part.len() };
                    n += 1;
                }
            }
            // SAFETY: an all-zero msghdr is valid; only the iovec fields are set.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iovs.as_mut_ptr();
            msg.msg_iovlen = n;
            // SAFETY: every iovec points into a PDU of `self.q` (headers, owned data, or a
            // shared buffer kept alive by its Rc), none of which change during the call.
            // MSG_NOSIGNAL: a peer that closed gives EPIPE, not a SIGPIPE to the daemon.
            let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                return match e.kind() {
                    std::io::ErrorKind::WouldBlock => Ok(false),
                    std::io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            self.consume(r as usize);
        }
        Ok(true)
    }

    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let front = self.q.front().expect("sent bytes belong to queued PDUs").total();
            let left = front - self.sent;
            if n >= left {
                n -= left;
                self.sent = 0;
                self.q.pop_front();
            } else {
                self.sent += n;
                n = 0;
            }
        }
    }

    /// Drops everything queued (the connection is going).
    pub fn clear(&mut self) {
        self.q.clear();
        self.sent = 0;
        self.bytes = 0;
    }
}

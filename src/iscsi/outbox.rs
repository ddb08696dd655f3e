//! A connection's outgoing PDUs: headers built in place, data either owned or borrowed from
//! a command's buffer (zero copy for Data-In), sent with one `sendmsg` over as many PDUs as
//! are queued, resuming after a short write.

use super::buffers::SharedBuf;
use super::frame::{digest, pad};
use super::pdu::{Bhs, BHS_LEN};
use std::collections::VecDeque;
use std::os::fd::RawFd;

/// Data of an outgoing PDU.
pub enum OutData {
    /// No data segment.
    None,
    /// Bytes of its own (text, sense, NOP echo).
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
    fn bytes(&self) -> &[u8] {
        match self {
            OutData::None => &[],
            OutData::Owned(v) => v,
            OutData::Shared { buf, off, len } => &buf.as_slice()[*off..*off + *len],
        }
    }
}

/// One PDU ready to send.
struct OutPdu {
    head: [u8; BHS_LEN + 4],
    head_len: usize,
    data: OutData,
    /// Padding and the data digest.
    tail: [u8; 7],
    tail_len: usize,
}

impl OutPdu {
    fn total(&self) -> usize {
        self.head_len + self.data.bytes().len() + self.tail_len
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
    /// Queues `bhs` with `data` (its DataSegmentLength is set here), with digests as negotiated.
    pub fn push(&mut self, mut bhs: Bhs, data: OutData, header_digest: bool, data_digest: bool) {
        let d = data.bytes();
        bhs.set_data_len(d.len() as u32);
        let mut head = [0u8; BHS_LEN + 4];
        head[..BHS_LEN].copy_from_slice(&bhs.0);
        let mut head_len = BHS_LEN;
        if header_digest {
            head[BHS_LEN..].copy_from_slice(&digest(&[&bhs.0]));
            head_len += 4;
        }
        let mut tail = [0u8; 7];
        let p = pad(d.len());
        let mut tail_len = p;
        if data_digest && !d.is_empty() {
            let zeros = [0u8; 3];
            tail[p..p + 4].copy_from_slice(&digest(&[d, &zeros[..p]]));
            tail_len += 4;
        }
        let pdu = OutPdu { head, head_len, data, tail, tail_len };
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
                for part in [&pdu.head[..pdu.head_len], pdu.data.bytes(), &pdu.tail[..pdu.tail_len]] {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::op;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    #[test]
    fn pdus_arrive_whole_with_padding_and_digests_across_short_writes() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut out = Outbox::default();
        for i in 0..200u32 {
            let mut h = Bhs::new(op::NOP_IN);
            h.set_itt(i);
            out.push(h, OutData::Owned(vec![i as u8; (i % 7) as usize]), true, true);
        }
        let expected = out.bytes();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            b.read_to_end(&mut all).unwrap();
            all
        });
        while !out.flush(a.as_raw_fd()).unwrap() {
            std::thread::yield_now();
        }
        drop(a);
        let all = reader.join().unwrap();
        assert_eq!(all.len(), expected);
        let limits = crate::iscsi::frame::Limits { header_digest: true, data_digest: true, max_data: 64 };
        let mut off = 0;
        for i in 0..200u32 {
            let l = crate::iscsi::frame::parse(&all[off..], &limits).unwrap().unwrap();
            assert!(crate::iscsi::frame::check_data_digest(&all[off..], &l));
            assert_eq!(Bhs(all[off..off + 48].try_into().unwrap()).itt(), i);
            assert_eq!(l.data_len, (i % 7) as usize);
            off += l.total;
        }
    }
}

//! iSCSI PDUs onto the shared outbox (`crate::net::outbox`): the BHS with its header digest in
//! place, the data segment (owned or borrowed from a command's buffer: zero copy for Data-In),
//! padding and data digest as the tail.

pub use crate::net::outbox::{OutData, Outbox};

use super::frame::{digest, pad};
use super::pdu::{Bhs, BHS_LEN};

/// Queuing iSCSI PDUs.
pub trait PushPdu {
    /// Queues `bhs` with `data` (its DataSegmentLength is set here), with digests as negotiated.
    fn push(&mut self, bhs: Bhs, data: OutData, header_digest: bool, data_digest: bool);
}

impl PushPdu for Outbox {
    fn push(&mut self, mut bhs: Bhs, data: OutData, header_digest: bool, data_digest: bool) {
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
        self.push_parts(&head[..head_len], data, &tail[..tail_len]);
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

//! Write data received straight into its command's buffer (zero copy on the write path): when
//! a Data-Out's header has arrived but most of its data segment has not, and the Data-Out is
//! exactly what its command asked for, the rest of the segment is read from the socket into
//! the command's aligned buffer instead of the connection's receive buffer, then checked
//! (data digest) and accounted as an ordinary Data-Out.

use super::buffers::SharedBuf;
use super::conn::{reject, Conn, Phase};
use super::frame::{digest, pad, Layout};
use super::pdu::{op, Bhs, BHS_LEN};
use std::io::Read;

/// Segments at least this long are received in place (below it one copy costs less than the
/// extra reads).
const DIRECT_MIN: usize = 16 * 1024;
const _: () = assert!(DIRECT_MIN >= 4096, "a read per page at least");

/// A Data-Out being received into its command's buffer.
pub(super) struct DirectRecv {
    bhs: Bhs,
    slot: usize,
    /// The buffer, kept alive here whatever happens to the command meanwhile.
    buf: SharedBuf,
    /// Where the segment goes in it.
    off: usize,
    len: usize,
    got: usize,
    /// Padding and data digest after the segment.
    tail: [u8; 7],
    tail_len: usize,
    tail_got: usize,
}

impl Conn {
    /// If the bytes at the read position start a large Data-Out (laid out as `l`, its header
    /// already checked) whose header is in but whose segment is not, and it is what its command asked for: moves what has arrived of it into
    /// the command's buffer and receives the rest there (`read_direct`). True if started.
    pub(super) fn try_start_direct(&mut self, l: &Layout) -> bool {
        if !matches!(self.phase, Phase::Full) {
            return false;
        }
        let buf = &self.rbuf[self.rstart..self.rend];
        if buf.len() >= l.total || l.data_len < DIRECT_MIN || l.ahs_len != 0 || buf[0] & 0x3f != op::DATA_OUT {
            return false;
        }
        let bhs = Bhs(buf[..BHS_LEN].try_into().expect("48 bytes"));
        let Ok((slot, off)) = self.data_out_check(&bhs, l.data_len as u32) else { return false };
        let Some(target) = self.command_buffer(slot) else { return false };
        let tail_len = pad(l.data_len) + if l.data_digest_off.is_some() { 4 } else { 0 };
        let mut d = DirectRecv {
            bhs,
            slot,
            buf: target,
            off: off as usize,
            len: l.data_len,
            got: 0,
            tail: [0; 7],
            tail_len,
            tail_got: 0,
        };
        // What has arrived already: some of the segment (all of it is not, or parse would
        // have had the whole PDU... unless only the tail is missing).
        let arrived = &buf[l.data_off..];
        let data_now = arrived.len().min(d.len);
        d.write(&arrived[..data_now]);
        let tail_now = (arrived.len() - data_now).min(tail_len);
        d.tail[..tail_now].copy_from_slice(&arrived[data_now..data_now + tail_now]);
        d.tail_got = tail_now;
        self.rstart += l.data_off + data_now + tail_now;
        self.direct = Some(Box::new(d));
        true
    }

    /// Reads into a Data-Out being received in place. Ok(true) once it is complete (and
    /// handled); Ok(false) when the socket has nothing more now.
    pub(super) fn read_direct(&mut self) -> std::io::Result<bool> {
        let Some(d) = self.direct.as_mut() else { return Ok(true) };
        while d.got < d.len {
            // SAFETY: the command's buffer is at least `off + len` bytes (its EDTL, which
            // data_out_check measured the Data-Out against); this connection is the only
            // writer while the command collects data, and `d.buf` keeps it alive.
            let dst = unsafe { std::slice::from_raw_parts_mut(d.buf.as_ptr().add(d.off + d.got), d.len - d.got) };
            match self.sock.read(dst) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => d.got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while d.tail_got < d.tail_len {
            match self.sock.read(&mut d.tail[d.tail_got..d.tail_len]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => d.tail_got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let d = self.direct.take().expect("checked above");
        let p = pad(d.len);
        let digest_ok = d.tail_len == p || {
            let data = &d.buf.as_slice()[d.off..d.off + d.len];
            digest(&[data, &d.tail[..p]])[..] == d.tail[p..p + 4]
        };
        if !digest_ok {
            // As for any PDU (RFC 7143 §7.8): rejected and discarded; the command's state did
            // not move, so its buffer bytes there will be written again or never used.
            self.send_reject(&d.bhs, reject::DATA_DIGEST);
        } else if matches!(self.phase, Phase::Full) {
            // Still exactly what was asked (nothing else ran on this connection meanwhile),
            // unless the connection is closing.
            match self.data_out_check(&d.bhs, d.len as u32) {
                Ok((slot, _)) if slot == d.slot => self.data_out_accept(slot, &d.bhs, d.len as u32),
                Ok(_) => {}
                Err(e) => self.data_out_refused(&d.bhs, e),
            }
        }
        Ok(true)
    }
}

impl DirectRecv {
    fn write(&mut self, bytes: &[u8]) {
        assert!(self.got + bytes.len() <= self.len, "within the segment");
        // SAFETY: as in `read_direct`: inside the command's buffer, sole writer, kept alive.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.buf.as_ptr().add(self.off + self.got), bytes.len())
        };
        self.got += bytes.len();
    }
}

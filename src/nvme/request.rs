//! One NVMe command as a transport hands it to the controller model, and what comes back.

use ferry_nvme::spec::{Command, Completion, Status};
use std::rc::Rc;

/// Which way a command moves data, from its opcode (bits 1:0 of the opcode, or of the fctype
/// for fabrics commands; NVMe Base 2.0 Figure 28): transports size and fetch data by it
/// before the model sees the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDir {
    /// No data.
    None,
    /// Host to controller (writes, Set Features data, Connect data).
    ToController,
    /// Controller to host (reads, Identify, Get Log Page).
    ToHost,
    /// Both (not used by the commands Ferry serves; refused).
    Both,
}

impl DataDir {
    /// The direction of `cmd`.
    pub fn of(cmd: &Command) -> DataDir {
        let bits = if cmd.opcode() == ferry_nvme::spec::admin::FABRICS { cmd.fctype() } else { cmd.opcode() };
        match bits & 0x3 {
            0 => DataDir::None,
            1 => DataDir::ToController,
            2 => DataDir::ToHost,
            _ => DataDir::Both,
        }
    }
}

/// Called with a request that finished after `execute` returned, on the reactor that ran it.
pub type RequestDone = Rc<dyn Fn(Box<NvmeRequest>)>;

/// One command. A transport fills `cmd`, `qid` and the data iovecs (its own buffers, or a
/// guest's memory: zero copy; for commands moving data to the controller, already holding
/// the data), executes it on a queue pair, and sends `cpl` back with its own cid/sqid/sqhd.
/// Requests are reused: `reset` readies one for the next command without freeing buffers.
pub struct NvmeRequest {
    /// The submission queue entry.
    pub cmd: Command,
    /// The completion: the model sets `dw0`, `dw1` and `status`; the transport sets `cid`
    /// (from `cmd`), `sqid`, `sqhd` and the phase.
    pub cpl: Completion,
    /// The queue it arrived on (0 = admin).
    pub qid: u16,
    /// The transport's own context (e.g. a slot index).
    pub ctx: u64,
    iovs: Vec<libc::iovec>,
    len: u64,
    transferred: u64,
    pub(crate) done: Option<RequestDone>,
    /// Scratch for commands whose data the model builds or parses (Identify, log pages,
    /// DSM ranges): kept across `reset` to avoid an allocation per command.
    pub(crate) scratch: Vec<u8>,
}

impl NvmeRequest {
    /// A new, empty request.
    pub fn new() -> Box<NvmeRequest> {
        Box::new(NvmeRequest {
            cmd: Command::default(),
            cpl: Completion::default(),
            qid: 0,
            ctx: 0,
            iovs: Vec::new(),
            len: 0,
            transferred: 0,
            done: None,
            scratch: Vec::new(),
        })
    }

    /// Readies the request for a new command (keeps its allocations and `done`).
    pub fn reset(&mut self) {
        self.cmd = Command::default();
        self.cpl = Completion::default();
        self.qid = 0;
        self.iovs.clear();
        self.len = 0;
        self.transferred = 0;
        self.scratch.clear();
    }

    /// Sets what is called when the request finishes after `execute` returned.
    pub fn set_done(&mut self, done: RequestDone) {
        self.done = Some(done);
    }

    /// Appends a data segment.
    ///
    /// # Safety
    /// `base..base+len` must stay valid for reads and writes, untouched by anyone else, until
    /// the request completes: its data is read or written in place (zero copy), possibly by
    /// the kernel (io_uring) or a device.
    pub unsafe fn push_iov(&mut self, base: *mut u8, len: usize) {
        self.iovs.push(libc::iovec { iov_base: base.cast(), iov_len: len });
        self.len += len as u64;
    }

    /// The data segments.
    pub fn iovs(&self) -> &[libc::iovec] {
        &self.iovs
    }

    /// Total bytes of the data buffer the transport gave (what the command's SGL or PRPs
    /// describe).
    pub fn data_len(&self) -> u64 {
        self.len
    }

    /// Bytes the model moved to the host (for data-to-host commands: a transport sends this
    /// much, which may be less than `data_len`).
    pub fn transferred(&self) -> u64 {
        self.transferred
    }

    /// Copies `data` into the buffer from its start (as much as fits); records the bytes moved.
    pub fn copy_to_host(&mut self, data: &[u8]) {
        let mut done = 0usize;
        for iov in &self.iovs {
            if done == data.len() {
                break;
            }
            let n = iov.iov_len.min(data.len() - done);
            // SAFETY: push_iov's contract: each segment is valid for writes of iov_len bytes
            // and owned by this request until it completes; n <= iov_len.
            unsafe { std::ptr::copy_nonoverlapping(data[done..].as_ptr(), iov.iov_base.cast::<u8>(), n) };
            done += n;
        }
        self.transferred = done as u64;
    }

    /// Copies the buffer's first `out.len()` bytes (at most) into `out`; returns how many.
    pub fn copy_from_host(&self, out: &mut [u8]) -> usize {
        let mut done = 0usize;
        for iov in &self.iovs {
            if done == out.len() {
                break;
            }
            let n = iov.iov_len.min(out.len() - done);
            // SAFETY: push_iov's contract: each segment is valid for reads of iov_len bytes
            // until the request completes; n <= iov_len.
            unsafe { std::ptr::copy_nonoverlapping(iov.iov_base.cast::<u8>(), out[done..].as_mut_ptr(), n) };
            done += n;
        }
        done
    }

    /// Records that `n` bytes were moved to the host in place (a bdev read into the iovecs).
    pub fn set_transferred(&mut self, n: u64) {
        self.transferred = n.min(self.len);
    }

    /// Completes with `status` (dw0 and dw1 as set before).
    pub fn set_status(&mut self, status: Status) {
        self.cpl.status = status;
    }

    /// Calls the completion callback (for a request finishing after `execute` returned).
    pub fn finish(self: Box<Self>) {
        if let Some(done) = self.done.clone() {
            done(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_nvme::spec::{admin, fabrics, io};

    #[test]
    fn direction_comes_from_the_opcode_or_the_fabrics_type() {
        assert_eq!(DataDir::of(&Command::new(io::WRITE, 1)), DataDir::ToController);
        assert_eq!(DataDir::of(&Command::new(io::READ, 1)), DataDir::ToHost);
        assert_eq!(DataDir::of(&Command::new(io::FLUSH, 1)), DataDir::None);
        assert_eq!(DataDir::of(&Command::new(admin::IDENTIFY, 1)), DataDir::ToHost);
        let mut connect = Command::new(admin::FABRICS, 1);
        connect.0[4] = fabrics::CONNECT;
        assert_eq!(DataDir::of(&connect), DataDir::ToController);
        connect.0[4] = fabrics::PROPERTY_GET;
        assert_eq!(DataDir::of(&connect), DataDir::None);
    }

    #[test]
    fn copies_span_segments_and_stop_at_the_buffer() {
        let mut a = [0u8; 3];
        let mut b = [0u8; 4];
        let mut r = NvmeRequest::new();
        // SAFETY: a and b outlive r's use of them in this test and nothing else touches them.
        unsafe {
            r.push_iov(a.as_mut_ptr(), a.len());
            r.push_iov(b.as_mut_ptr(), b.len());
        }
        r.copy_to_host(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(r.transferred(), 7);
        let mut out = [0u8; 5];
        assert_eq!(r.copy_from_host(&mut out), 5);
        assert_eq!(out, [1, 2, 3, 4, 5]);
        drop(r);
        assert_eq!((a, b), ([1, 2, 3], [4, 5, 6, 7]));
    }
}

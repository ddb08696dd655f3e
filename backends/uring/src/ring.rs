//! The [`Ring`]: one io_uring instance driven by one reactor thread.

use std::io;
use std::os::unix::io::RawFd;

use io_uring::{opcode, squeue, types, IoUring};

use crate::error::{QueueFull, UringError};

/// An io_uring instance: queue vectored reads/writes, flushes and
/// `fallocate`s, submit them, and reap their completions.
///
/// A `Ring` is meant to be owned and driven by a single reactor thread. The
/// hot path (`prep_*`, [`submit`](Ring::submit), [`reap`](Ring::reap)) does not
/// allocate or lock; `submit` makes at most one `io_uring_enter` system call and
/// none at all when there is nothing to submit.
///
/// Every queued operation produces exactly one completion, identified by the
/// caller's `user_data`. At most [`max_in_flight`](Ring::max_in_flight)
/// operations may be queued-or-unreaped at once; beyond that (or when the
/// submission queue itself is full) `prep_*` returns [`QueueFull`]. This keeps
/// the completion queue from ever overflowing.
///
/// Dropping a `Ring` submits anything still queued and blocks until every
/// operation has completed (their completions are discarded), so that the
/// kernel no longer touches caller memory once `drop` returns.
pub struct Ring {
    ring: IoUring,
    /// Operations pushed to the SQ whose CQE has not been reaped yet.
    in_flight: usize,
    /// Cap on `in_flight`: the CQ size, so completions can never overflow.
    max_in_flight: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("sq_entries", &self.ring.params().sq_entries())
            .field("cq_entries", &self.ring.params().cq_entries())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// `true` for the `io_uring_enter` errors that mean "the kernel is short of
/// completion-queue room or request memory right now; reap and try again".
fn is_backpressure(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN))
}

impl Ring {
    /// Create a ring with `entries` SQ entries (a power of two, e.g. 256; the
    /// kernel rounds other values up). The completion queue gets the kernel's
    /// default size of twice that.
    ///
    /// Returns [`UringError::Unsupported`] if the kernel refuses io_uring
    /// altogether (`ENOSYS`, or `EPERM` from the `kernel.io_uring_disabled`
    /// sysctl or a seccomp policy), and [`UringError::Setup`] for any other
    /// setup failure (e.g. `EINVAL` for 0 or too many entries).
    pub fn new(entries: u32) -> Result<Ring, UringError> {
        let ring = IoUring::new(entries).map_err(|source| match source.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EPERM) => UringError::Unsupported { source },
            _ => UringError::Setup { entries, source },
        })?;
        let max_in_flight = ring.params().cq_entries() as usize;
        Ok(Ring { ring, in_flight: 0, max_in_flight })
    }

    /// Register an eventfd that the kernel signals on each completion
    /// (`IORING_REGISTER_EVENTFD`), so a sleeping reactor can wake up and reap.
    ///
    /// The ring does not take ownership of `fd`; it must stay open for as long
    /// as it is registered (i.e. for the life of the ring).
    pub fn register_eventfd(&self, fd: RawFd) -> Result<(), UringError> {
        self.ring.submitter().register_eventfd(fd).map_err(|source| UringError::Ring { op: "register_eventfd", source })
    }

    /// Number of submission queue entries (as rounded up by the kernel).
    pub fn sq_entries(&self) -> u32 {
        self.ring.params().sq_entries()
    }

    /// Most operations that may be queued or in flight (not yet reaped) at
    /// once: the completion queue size. Past this, `prep_*` returns [`QueueFull`].
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Push one SQE, enforcing both the SQ capacity and the in-flight cap.
    ///
    /// # Safety
    /// Any memory `entry` points to must stay valid (and, for reads, not be
    /// accessed by anyone else) until its completion is reaped.
    #[inline]
    unsafe fn push(&mut self, entry: &squeue::Entry) -> Result<(), QueueFull> {
        if self.in_flight >= self.max_in_flight {
            return Err(QueueFull);
        }
        // SAFETY: forwarded from this function's contract: the caller keeps
        // everything `entry` references alive until the completion is reaped.
        unsafe { self.ring.submission().push(entry) }.map_err(|_| QueueFull)?;
        self.in_flight += 1;
        Ok(())
    }

    /// Queue a vectored read (`preadv`) of `iovcnt` iovecs from `fd` at byte
    /// `offset`. The completion's result is the number of bytes read (short at
    /// end of file) or `-errno`.
    ///
    /// Returns `Err(QueueFull)` when there is no room; the caller retries after
    /// [`submit`](Ring::submit) / [`reap`](Ring::reap).
    ///
    /// # Safety
    /// The iovec array and the memory it describes must stay valid, and must
    /// not be read or written by anyone else, until the completion for
    /// `user_data` has been reaped (or the ring has been dropped).
    pub unsafe fn prep_readv(
        &mut self,
        fd: RawFd,
        iovs: *const libc::iovec,
        iovcnt: u32,
        offset: u64,
        user_data: u64,
    ) -> Result<(), QueueFull> {
        let entry = opcode::Readv::new(types::Fd(fd), iovs, iovcnt).offset(offset).build().user_data(user_data);
        // SAFETY: the caller guarantees the iovecs and buffers outlive the operation.
        unsafe { self.push(&entry) }
    }

    /// Queue a vectored write (`pwritev`) of `iovcnt` iovecs to `fd` at byte
    /// `offset`. The completion's result is the number of bytes written or `-errno`.
    ///
    /// Returns `Err(QueueFull)` when there is no room; the caller retries after
    /// [`submit`](Ring::submit) / [`reap`](Ring::reap).
    ///
    /// # Safety
    /// The iovec array and the memory it describes must stay valid, and must
    /// not be written by anyone else, until the completion for `user_data` has
    /// been reaped (or the ring has been dropped).
    pub unsafe fn prep_writev(
        &mut self,
        fd: RawFd,
        iovs: *const libc::iovec,
        iovcnt: u32,
        offset: u64,
        user_data: u64,
    ) -> Result<(), QueueFull> {
        let entry = opcode::Writev::new(types::Fd(fd), iovs, iovcnt).offset(offset).build().user_data(user_data);
        // SAFETY: the caller guarantees the iovecs and buffers outlive the operation.
        unsafe { self.push(&entry) }
    }

    /// Queue an `fsync` (or `fdatasync` when `datasync` is true) of the whole file.
    /// The completion's result is 0 or `-errno`.
    ///
    /// Note that io_uring does not order this against other queued operations:
    /// to flush completed writes, queue it after their completions were reaped.
    pub fn prep_fsync(&mut self, fd: RawFd, datasync: bool, user_data: u64) -> Result<(), QueueFull> {
        let entry = fsync_entry(fd, datasync, user_data);
        // SAFETY: an fsync SQE references no user memory.
        unsafe { self.push(&entry) }
    }

    /// Queue `fallocate(fd, mode, offset, len)`. Used for unmap
    /// (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`) and write-zeroes
    /// (`FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE`). The completion's result
    /// is 0 or `-errno` (e.g. `-EOPNOTSUPP` when the file system lacks the mode).
    pub fn prep_fallocate(
        &mut self,
        fd: RawFd,
        mode: i32,
        offset: u64,
        len: u64,
        user_data: u64,
    ) -> Result<(), QueueFull> {
        let entry = opcode::Fallocate::new(types::Fd(fd), len).offset(offset).mode(mode).build().user_data(user_data);
        // SAFETY: a fallocate SQE references no user memory.
        unsafe { self.push(&entry) }
    }

    /// Submit everything queued, without waiting. Returns the number of
    /// operations the kernel accepted.
    ///
    /// Makes no system call when nothing is queued. `EINTR` is retried.
    /// `EBUSY`/`EAGAIN` (completion-queue or memory pressure) yield `Ok(0)`:
    /// the unsubmitted operations stay queued, so reap and call again.
    pub fn submit(&mut self) -> Result<usize, UringError> {
        {
            let sq = self.ring.submission();
            if sq.is_empty() && !sq.cq_overflow() && !sq.taskrun() {
                return Ok(0);
            }
        }
        loop {
            match self.ring.submit() {
                Ok(n) => return Ok(n),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if is_backpressure(&e) => return Ok(0),
                Err(source) => return Err(UringError::Ring { op: "submit", source }),
            }
        }
    }

    /// Submit everything queued and block until at least `want` completions
    /// are ready to [`reap`](Ring::reap). Returns the number submitted.
    ///
    /// Meant for tests and shutdown draining, not for a busy reactor. `want`
    /// is clamped to [`in_flight`](Ring::in_flight) so this cannot wait for
    /// completions that will never come. Signals (`EINTR`) do not cut the wait
    /// short. On `EBUSY`/`EAGAIN` it returns early with what was submitted so
    /// far; reap and call again.
    pub fn submit_and_wait(&mut self, want: usize) -> Result<usize, UringError> {
        let want = want.min(self.in_flight);
        let mut submitted = 0;
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(n) => submitted += n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if is_backpressure(&e) => return Ok(submitted),
                Err(source) => return Err(UringError::Ring { op: "submit_and_wait", source }),
            }
            // The kernel can return before `want` completions are posted, e.g.
            // when a signal interrupts the wait after the submission part.
            if self.ring.completion().len() >= want {
                return Ok(submitted);
            }
        }
    }

    /// Call `f(user_data, result)` for every completion currently available,
    /// where `result` is the CQE's `res`: bytes transferred or 0 on success,
    /// `-errno` on failure. Returns how many completions were reaped.
    ///
    /// Never blocks and makes no system call.
    pub fn reap(&mut self, mut f: impl FnMut(u64, i32)) -> usize {
        let mut n = 0;
        // The CQ head is published when `cq` is dropped, including on unwind
        // out of `f`; `in_flight` is updated before `f` runs so it stays in
        // step with the kernel's view either way.
        let cq = self.ring.completion();
        for cqe in cq {
            self.in_flight -= 1;
            n += 1;
            f(cqe.user_data(), cqe.result());
        }
        n
    }

    /// Operations queued or submitted whose completion has not been reaped yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Turns the registered eventfd's signal per completion on or off. A caller polling the
    /// ring turns it off (no kernel work per completion) and back on before it sleeps, then
    /// reaps once more, so no completion goes unnoticed. Linux 5.8 and later.
    pub fn set_eventfd_enabled(&mut self, enabled: bool) {
        let cq = self.ring.completion();
        if enabled {
            cq.enable_eventfd();
        } else {
            cq.disable_eventfd();
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Closing the ring fd does not stop requests already handed to the
        // kernel from writing into caller buffers, so wait them all out.
        while self.in_flight > 0 {
            if self.submit_and_wait(1).is_err() {
                break;
            }
            self.reap(|_, _| {});
        }
    }
}

/// The SQE of an `fsync` (`fdatasync` when `datasync`) of `fd`.
fn fsync_entry(fd: RawFd, datasync: bool, user_data: u64) -> squeue::Entry {
    let flags = if datasync { types::FsyncFlags::DATASYNC } else { types::FsyncFlags::empty() };
    opcode::Fsync::new(types::Fd(fd)).flags(flags).build().user_data(user_data)
}

#[cfg(test)]
mod sqe_tests {
    use super::*;

    /// The kernel's view of an SQE (`struct io_uring_sqe`, 64 bytes): opcode at byte 0, fd at
    /// 4, the op's flags (`fsync_flags`) at 28, user_data at 32.
    fn raw(entry: squeue::Entry) -> [u8; 64] {
        // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's 64-byte
        // `io_uring_sqe`, built from zeroed memory by io-uring's opcode builders: every byte
        // is initialised. The sizes are checked by `transmute` at compile time.
        unsafe { std::mem::transmute::<squeue::Entry, [u8; 64]>(entry) }
    }

    #[test]
    fn a_datasync_fsync_is_the_kernels_fdatasync() {
        const IORING_OP_FSYNC: u8 = 3;
        const IORING_FSYNC_DATASYNC: u32 = 1;
        let sqe = raw(fsync_entry(7, true, 42));
        assert_eq!(sqe[0], IORING_OP_FSYNC);
        assert_eq!(i32::from_ne_bytes(sqe[4..8].try_into().unwrap()), 7, "fd");
        assert_eq!(u32::from_ne_bytes(sqe[28..32].try_into().unwrap()), IORING_FSYNC_DATASYNC, "fsync_flags");
        assert_eq!(u64::from_ne_bytes(sqe[32..40].try_into().unwrap()), 42, "user_data");
        let sqe = raw(fsync_entry(7, false, 42));
        assert_eq!((sqe[0], u32::from_ne_bytes(sqe[28..32].try_into().unwrap())), (IORING_OP_FSYNC, 0), "plain fsync");
    }
}

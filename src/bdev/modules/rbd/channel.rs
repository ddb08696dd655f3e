//! A reactor's channel to an RBD image: submits with librbd's aio calls and hands each
//! completion back from librados's thread to the submitting reactor.
//!
//! librbd completes operations on its own threads. No Ferry code runs there: the completion
//! callback only records the result, pushes its record on the channel's lock-free list and,
//! when the list was empty, writes the channel's eventfd (one of the reactor's interrupt
//! sources, so a sleeping reactor wakes). The reactor's poller takes the whole list at once
//! and completes the I/O where it was submitted. (librbd's own event-socket mode,
//! `rbd_set_image_notification`, gives one queue per image, so every reactor would have to
//! poll it and pass on the others' completions; one list per channel avoids that hop.)

use super::ffi::{self, CompletionT};
use super::image::Image;
use crate::bdev::{BackendChannel, BdevError, BdevIo, IoStatus, IoType};
use crate::framework::{self, InterruptSource, PollStatus, Poller};
use std::ffi::c_void;
use std::os::fd::AsRawFd;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// One operation in flight: owned by librbd from submission until its callback pushes it on
/// the hand-off list, then by the reactor.
struct Pending {
    next: *mut Pending,
    io: Box<BdevIo>,
    /// Bytes a successful read returns (0 for every other operation).
    expected: u64,
    /// librbd's return value.
    result: isize,
    handoff: Arc<Handoff>,
}

/// Completed operations waiting for their reactor: a lock-free stack (Treiber). Producers
/// push one record each; the single consumer takes the whole stack with one swap, so the
/// ABA problem of popping single nodes never arises. Hand-written because the crates that do
/// this (crossbeam) would bring a dependency for fifteen lines.
struct Handoff {
    head: AtomicPtr<Pending>,
    eventfd: EventFd,
}

// SAFETY: the raw pointers in the list are records only one side owns at a time (see Pending);
// the list itself is only touched with atomic operations.
unsafe impl Send for Handoff {}
// SAFETY: as above.
unsafe impl Sync for Handoff {}

impl Handoff {
    /// Pushes `p`; true when the list was empty (the consumer needs a wake-up).
    ///
    /// # Safety
    /// `p` is a live record owned by the caller, who gives it up.
    unsafe fn push(&self, p: *mut Pending) -> bool {
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the caller owns `p` until the exchange below publishes it.
            unsafe { (*p).next = head };
            match self.head.compare_exchange_weak(head, p, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return head.is_null(),
                Err(now) => head = now,
            }
        }
    }

    /// Takes every pushed record, oldest first.
    fn take_all(&self) -> Vec<Pending> {
        // Most polls find nothing: a plain load leaves the cache line shared with librados's
        // threads instead of writing it. (A push after this load signals the eventfd.)
        if self.head.load(Ordering::Relaxed).is_null() {
            return Vec::new();
        }
        let mut node = self.head.swap(ptr::null_mut(), Ordering::Acquire);
        let mut out = Vec::new();
        while !node.is_null() {
            // SAFETY: every node on the list came from Box::into_raw in `submit` and was
            // published by `push`; the swap made this consumer its only owner.
            let p = *unsafe { Box::from_raw(node) };
            node = p.next;
            out.push(p);
        }
        out.reverse();
        out
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        // Only reached when no record is in flight (each holds an Arc): free what is left.
        drop(self.take_all());
    }
}

/// librbd's completion callback, on a librados thread.
unsafe extern "C" fn on_complete(c: CompletionT, arg: *mut c_void) {
    let p = arg.cast::<Pending>();
    let Ok(api) = ffi::api() else { return };
    // SAFETY: `c` is this operation's completion, released once, here; `p` is the record
    // passed at submission, owned by librbd until the push below gives it to the reactor.
    unsafe {
        (*p).result = (api.rbd_aio_get_return_value)(c);
        (api.rbd_aio_release)(c);
        // A clone: once pushed, the record (and its Arc) may be freed by the reactor at once.
        let handoff = (*p).handoff.clone();
        if handoff.push(p) {
            // A full counter (never, at 2^64 - 1) would only mean the reactor is awake anyway.
            let _ = handoff.eventfd.write(1);
        }
    }
}

/// A reactor's channel to one image.
pub struct RbdChannel {
    image: Arc<Image>,
    handoff: Arc<Handoff>,
    _poller: Poller,
    _interrupt: InterruptSource,
}

impl RbdChannel {
    /// Makes the current reactor's channel to `image`.
    pub fn new(image: Arc<Image>) -> Result<Self, BdevError> {
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(|e| BdevError::os("creating the completion eventfd", e))?;
        let interrupt = framework::register_interrupt(eventfd.as_raw_fd())
            .map_err(|e| BdevError::os("adding the completion eventfd to the reactor", e))?;
        let handoff = Arc::new(Handoff { head: AtomicPtr::new(ptr::null_mut()), eventfd });
        let polled = handoff.clone();
        let poller = framework::poller_register("rbd_completions", Duration::ZERO, move || complete_all(&polled));
        Ok(RbdChannel { image, handoff, _poller: poller, _interrupt: interrupt })
    }
}

/// Completes every handed-off operation on this reactor.
fn complete_all(handoff: &Handoff) -> PollStatus {
    let done = handoff.take_all();
    let busy = !done.is_empty();
    for p in done {
        let Pending { io, expected, result, .. } = p;
        // Completed here, from the poller, not through the bdev completion queue: the queue's
        // poller would report busy and keep the reactor spinning for signalled work.
        let mut io = io;
        if result < 0 {
            let errno = i32::try_from(-result).unwrap_or(libc::EIO);
            tracing::debug!(errno, io_type = ?io.io_type, "RBD I/O failed");
            io.set_errno(errno);
            io.complete_inline(IoStatus::Failed);
        } else if io.io_type == IoType::Read && result as u64 != expected {
            tracing::warn!(got = result, expected, "short RBD read");
            io.set_errno(libc::EIO);
            io.complete_inline(IoStatus::Failed);
        } else {
            io.complete_inline(IoStatus::Success);
        }
    }
    // Every later completion is pushed by librados's threads and signalled on the eventfd:
    // the reactor need not spin for it, and must not, when it shares a core with them.
    if busy {
        PollStatus::Signalled
    } else {
        PollStatus::Idle
    }
}

impl BackendChannel for RbdChannel {
    fn submit(&self, io: Box<BdevIo>) {
        let api = self.image.api();
        let image = self.image.raw();
        let (offset, len, io_type) = (io.offset_bytes(), io.len_bytes(), io.io_type);
        let expected = if io_type == IoType::Read { len } else { 0 };
        let p = Box::into_raw(Box::new(Pending {
            next: ptr::null_mut(),
            io,
            expected,
            result: 0,
            handoff: self.handoff.clone(),
        }));
        let mut c: CompletionT = ptr::null_mut();
        // SAFETY: `p` is a live record that librbd passes back to `on_complete`; the out
        // pointer is valid.
        let rc = unsafe { (api.rbd_aio_create_completion)(p.cast(), on_complete, &mut c) };
        if rc < 0 {
            // SAFETY: no completion exists, so nothing else holds `p`.
            let p = unsafe { Box::from_raw(p) };
            return p.io.fail(-rc);
        }
        // SAFETY: an open image (the channel holds it); the iovec array lives in the BdevIo
        // inside `p`, which is not touched again until the completion hands it back, and the
        // buffers it points to stay valid until the I/O completes (BdevIo::push_iov's
        // contract). librbd calls `on_complete` exactly once for an accepted operation.
        let rc = unsafe {
            let iovs = (*p).io.iovs();
            let (iov, n) = (iovs.as_ptr(), iovs.len() as i32);
            match io_type {
                IoType::Read => (api.rbd_aio_readv)(image, iov, n, offset, c),
                IoType::Write => (api.rbd_aio_writev)(image, iov, n, offset, c),
                // librbd has no reset: what is in flight completes; a flush settles the cache.
                IoType::Flush | IoType::Reset => (api.rbd_aio_flush)(image, c),
                IoType::Unmap => (api.rbd_aio_discard)(image, offset, len, c),
                IoType::WriteZeroes => (api.rbd_aio_write_zeroes)(image, offset, len as usize, c, 0, 0),
            }
        };
        if rc < 0 {
            // SAFETY: librbd refused the operation, so the callback never runs: the
            // completion and the record are ours to release.
            let p = unsafe {
                (api.rbd_aio_release)(c);
                Box::from_raw(p)
            };
            p.io.fail(-rc);
        }
    }
}

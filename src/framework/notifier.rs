//! Signalling an eventfd that belongs to a peer without ever blocking on it.
//!
//! A vhost-user frontend hands us the guest's "call" eventfd. `write(2)` on an eventfd blocks
//! when its counter would overflow, and a hostile frontend can leave the counter at the
//! maximum with the file in blocking mode: the reactor that writes it would sleep in the
//! kernel forever, and every other VM on that reactor with it. Setting O_NONBLOCK does not
//! help, since the flag lives in the open file that the frontend shares and can clear again,
//! and eventfds reject `pwritev2(RWF_NOWAIT)`.
//!
//! The kernel's own way of signalling an eventfd, `eventfd_signal`, saturates instead of
//! blocking. Userspace reaches it through Linux native AIO: an iocb with
//! `IOCB_FLAG_RESFD` signals its `aio_resfd` when it completes. So a notification is one
//! `io_submit` of an `IOCB_CMD_POLL` on an eventfd of our own that is always readable: the
//! poll completes inside the call, and the completion signals the peer's eventfd. The kernel
//! also checks that the fd is an eventfd (EINVAL otherwise). Completions are reaped in
//! batches. One AIO context per thread; the cost is one system call per interrupt, the same
//! as `write(2)`.

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const IOCB_CMD_POLL: u16 = 5;
const IOCB_FLAG_RESFD: u32 = 1;
/// Completion slots per thread's context; completions are reaped at half of it.
const CONTEXT_EVENTS: usize = 256;
const REAP_AT: usize = CONTEXT_EVENTS / 2;

/// The kernel's `struct iocb` (include/uapi/linux/aio_abi.h), little-endian layout.
#[repr(C)]
#[derive(Default)]
struct Iocb {
    aio_data: u64,
    aio_key: u32,
    aio_rw_flags: i32,
    aio_lio_opcode: u16,
    aio_reqprio: i16,
    aio_fildes: u32,
    aio_buf: u64,
    aio_nbytes: u64,
    aio_offset: i64,
    aio_reserved2: u64,
    aio_flags: u32,
    aio_resfd: u32,
}

/// The kernel's `struct io_event`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

/// Why a peer's fd cannot be used as a notification target.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    /// The fd is not an eventfd.
    #[error("fd is not an eventfd ({0})")]
    NotEventfd(String),
    /// Inspecting or duplicating the fd failed.
    #[error("cannot use the fd: {0}")]
    Io(#[from] std::io::Error),
}

/// A peer's eventfd we signal (a virtqueue's call fd).
#[derive(Debug)]
pub struct Notifier {
    fd: OwnedFd,
}

impl Notifier {
    /// Takes a copy of `file` after checking that it is an eventfd.
    pub fn new(file: &File) -> Result<Notifier, NotifierError> {
        check_eventfd(file.as_raw_fd())?;
        Ok(Notifier { fd: file.try_clone()?.into() })
    }

    /// Signals the eventfd (adds 1, saturating). Never blocks. Errors are reported, not
    /// retried: a notification that cannot be delivered is the peer's loss.
    pub fn notify(&self) -> std::io::Result<()> {
        CONTEXT.with(|c| {
            let mut c = c.borrow_mut();
            match c.as_mut() {
                Some(ctx) => ctx.signal(self.fd.as_raw_fd()),
                None => {
                    let mut ctx = AioContext::new()?;
                    let r = ctx.signal(self.fd.as_raw_fd());
                    *c = Some(ctx);
                    r
                }
            }
        })
    }
}

impl AsRawFd for Notifier {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Checks that `fd` is an eventfd (its /proc link reads `anon_inode:[eventfd]`).
pub fn check_eventfd(fd: RawFd) -> Result<(), NotifierError> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))?;
    if link.as_os_str() == "anon_inode:[eventfd]" {
        Ok(())
    } else {
        Err(NotifierError::NotEventfd(link.display().to_string()))
    }
}

thread_local! {
    static CONTEXT: RefCell<Option<AioContext>> = const { RefCell::new(None) };
}

/// One thread's AIO context and the always-readable eventfd its polls complete on.
struct AioContext {
    ctx: libc::c_ulong,
    ready: OwnedFd,
    pending: usize,
}

impl AioContext {
    fn new() -> std::io::Result<AioContext> {
        // SAFETY: eventfd with a count of 1 (always readable; never read) and no pointers.
        let fd = unsafe { libc::eventfd(1, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor we own.
        let ready = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut ctx: libc::c_ulong = 0;
        // SAFETY: io_setup writes the new context id into `ctx`, a valid c_ulong.
        if unsafe { libc::syscall(libc::SYS_io_setup, CONTEXT_EVENTS as libc::c_long, &mut ctx) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(AioContext { ctx, ready, pending: 0 })
    }

    fn signal(&mut self, target: RawFd) -> std::io::Result<()> {
        if self.pending >= REAP_AT {
            self.reap();
        }
        let mut iocb = Iocb {
            aio_lio_opcode: IOCB_CMD_POLL,
            aio_fildes: self.ready.as_raw_fd() as u32,
            aio_buf: libc::POLLIN as u64,
            aio_flags: IOCB_FLAG_RESFD,
            aio_resfd: target as u32,
            ..Iocb::default()
        };
        let mut list = [&mut iocb as *mut Iocb];
        // SAFETY: one valid iocb, alive for the call (a poll that is ready completes inside
        // io_submit; ours always is, so the kernel keeps no pointer to it afterwards).
        let n = unsafe { libc::syscall(libc::SYS_io_submit, self.ctx, 1 as libc::c_long, list.as_mut_ptr()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                // The completion ring is full (should not happen: we reap at half).
                self.reap();
            }
            return Err(e);
        }
        self.pending += 1;
        Ok(())
    }

    /// Collects finished completions without waiting.
    fn reap(&mut self) {
        let mut events = [IoEvent::default(); CONTEXT_EVENTS];
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `events` has room for CONTEXT_EVENTS entries; a zero timeout never sleeps.
        let n = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                self.ctx,
                0 as libc::c_long,
                CONTEXT_EVENTS as libc::c_long,
                events.as_mut_ptr(),
                &zero,
            )
        };
        if n > 0 {
            self.pending = self.pending.saturating_sub(n as usize);
        }
    }
}

impl Drop for AioContext {
    fn drop(&mut self) {
        // SAFETY: our context; destroying it waits for nothing (all polls completed inline).
        unsafe { libc::syscall(libc::SYS_io_destroy, self.ctx) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn as_file(e: &EventFd) -> File {
        // SAFETY: a fresh duplicate of the eventfd that the File then owns.
        unsafe { File::from_raw_fd(libc::dup(e.as_raw_fd())) }
    }

    #[test]
    fn notifications_add_up_and_never_block_on_a_full_blocking_eventfd() {
        let target = EventFd::new(0).unwrap(); // blocking mode, as a hostile peer leaves it
        let n = Notifier::new(&as_file(&target)).unwrap();
        for _ in 0..1000 {
            n.notify().unwrap();
        }
        assert_eq!(target.read().unwrap(), 1000);
        // A counter at the maximum: write(2) of 1 would block forever here.
        target.write(u64::MAX - 1).unwrap();
        for _ in 0..3 * REAP_AT {
            n.notify().unwrap();
        }
        // The kernel saturates at u64::MAX, which write(2) can never reach.
        assert_eq!(target.read().unwrap(), u64::MAX, "saturated, not blocked");
    }

    #[test]
    #[ignore = "timing, run by hand"]
    fn cost_against_write() {
        let target = EventFd::new(EFD_NONBLOCK).unwrap();
        let n = Notifier::new(&as_file(&target)).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..1_000_000 {
            n.notify().unwrap();
        }
        let aio = t.elapsed();
        let t = std::time::Instant::now();
        for _ in 0..1_000_000 {
            target.write(1).unwrap();
        }
        eprintln!("notify {:?} write {:?} per 1M", aio, t.elapsed());
    }

    #[test]
    fn only_eventfds_are_accepted() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(matches!(Notifier::new(&file), Err(NotifierError::NotEventfd(_))));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(Notifier::new(&File::from(OwnedFd::from(a))), Err(NotifierError::NotEventfd(_))));
        assert!(Notifier::new(&as_file(&EventFd::new(EFD_NONBLOCK).unwrap())).is_ok());
    }
}

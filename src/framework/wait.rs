//! Blocking waits for control-path threads (the RPC server, vhost controllers): an fd
//! becoming readable, or a stop eventfd firing.

use std::os::fd::{AsRawFd, RawFd};
use vmm_sys_util::eventfd::EventFd;

/// Waits until `fd` is readable or `stop` fires; false on stop. `stop` is never drained, so
/// once written it stops every thread waiting on it.
pub fn wait_readable(fd: RawFd, stop: &EventFd) -> bool {
    let mut fds = [
        libc::pollfd { fd, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd structs for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return fds[1].revents == 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// Whether thread `tid` of this process sits in poll(2)/ppoll(2) (from /proc).
    fn in_poll(tid: i32) -> bool {
        let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
        let nr: i64 = s.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(-1);
        #[cfg(target_arch = "x86_64")]
        if nr == libc::SYS_poll {
            return true;
        }
        nr == libc::SYS_ppoll
    }

    /// Runs `wait_readable` on a pipe in a thread, waits until that thread is blocked in the
    /// kernel, then fires `wake` (given the pipe's write end and the stop fd) and returns
    /// what `wait_readable` said.
    fn blocks_until(wake: impl FnOnce(&OwnedFd, &EventFd)) -> bool {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid two-int array for pipe2 to fill.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds were just created and are owned by nobody else.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let stop = std::sync::Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let (tx, rx) = mpsc::channel();
        let stop2 = stop.clone();
        let waiter = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            wait_readable(rd.as_raw_fd(), &stop2)
        });
        let tid = rx.recv().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !in_poll(tid) {
            assert!(Instant::now() < deadline, "the waiter never blocked in poll");
            assert!(!waiter.is_finished(), "the waiter returned without anything to wake it");
            std::thread::sleep(Duration::from_millis(1));
        }
        wake(&wr, &stop);
        waiter.join().unwrap()
    }

    #[test]
    fn wait_readable_blocks_until_the_fd_is_readable() {
        let readable = blocks_until(|wr, _| {
            // SAFETY: writes one byte from a live local to an open pipe.
            assert_eq!(unsafe { libc::write(wr.as_raw_fd(), [1u8].as_ptr().cast(), 1) }, 1);
        });
        assert!(readable, "woken by data: true");
    }

    #[test]
    fn wait_readable_blocks_until_stop_fires() {
        let readable = blocks_until(|_, stop| stop.write(1).unwrap());
        assert!(!readable, "woken by stop: false");
    }
}

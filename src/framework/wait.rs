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

//! The vhost-user target: the fuzzer's bytes as the message stream a frontend sends to a
//! controller, served as a connection is (`vhost::connection`: messages gathered with their
//! fds, the back-channel taken, the rest relayed to rust-vmm's `BackendReqHandler` driving
//! Ferry's `Session` of a virtio-blk device on a malloc bdev, its queues started on a real
//! reactor).
//!
//! Fds cannot come from bytes, so the harness attaches them the way a frontend would, by
//! message type: one sealed memfd of guest memory per region of SET_MEM_TABLE (and for
//! ADD_MEM_REG), a fresh eventfd for SET_VRING_KICK/CALL/ERR unless the payload's NOFD bit
//! is set, a socket for SET_BACKEND_REQ_FD, a memfd for SET_INFLIGHT_FD and the log and
//! device-state fds. The guest memory's first bytes come from the input, so rings that a
//! started queue polls are the fuzzer's too.
//!
//! Invariants: no panic, no hang (AFL's timeout), and after the stream every session is
//! torn down: the connection ends and the reactor still answers.

use super::Input;
use crate::bdev::modules::malloc;
use crate::vhost::backend_channel::BackendChannel;
use crate::vhost::blk::BlkDevice;
use crate::vhost::connection::{serve_blocking, Handler};
use crate::vhost::device::VirtioDevice;
use crate::vhost::ring::Coalescing;
use crate::vhost::session::{Session, SessionInfo};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const BDEV: &str = "FuzzVhost0";
/// Size of the guest memory file each run shares.
const GUEST_MEM: u64 = 1 << 20;
/// Most messages per run (bounds a run's time).
const MAX_MESSAGES: usize = 256;

const SET_MEM_TABLE: u32 = 5;
const SET_LOG_BASE: u32 = 6;
const SET_LOG_FD: u32 = 7;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const SET_VRING_ERR: u32 = 14;
const SET_BACKEND_REQ_FD: u32 = 21;
const SET_INFLIGHT_FD: u32 = 32;
const ADD_MEM_REG: u32 = 37;
const SET_DEVICE_STATE_FD: u32 = 42;
/// VHOST_USER_VRING_NOFD_MASK.
const NOFD: u64 = 0x100;

fn devices() -> &'static [Arc<dyn VirtioDevice>; 2] {
    static DEVICES: OnceLock<[Arc<dyn VirtioDevice>; 2]> = OnceLock::new();
    DEVICES.get_or_init(|| {
        super::reactor();
        malloc::create(BDEV, 2048, 512, None).expect("the fuzz bdev");
        let desc = Arc::new(crate::bdev::open(BDEV, true, Box::new(|_, _| {})).expect("open the fuzz bdev"));
        let removed = Arc::new(AtomicBool::new(false));
        [
            Arc::new(BlkDevice::with_ring(desc.clone(), false, false, 2, removed.clone())),
            Arc::new(BlkDevice::with_ring(desc, false, true, 2, removed)),
        ]
    })
}

/// A sealed memfd of `size` bytes starting with `contents`.
fn memfd(contents: &[u8], size: u64) -> File {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"ferry-fuzz-guest".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).expect("size the memfd");
    file.write_all_at(&contents[..contents.len().min(size as usize)], 0).expect("fill the memfd");
    // SAFETY: fcntl on our own fd with an integer argument. QEMU seals its memfds the same way.
    unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) };
    file
}

/// One message as the harness sends it: its bytes and the fds that go with them.
fn fds_for(request: u32, payload: &[u8], guest: &File, keep: &mut Vec<File>) -> Vec<RawFd> {
    let mut fresh = |f: File| {
        let fd = f.as_raw_fd();
        keep.push(f);
        fd
    };
    match request {
        SET_MEM_TABLE => {
            let regions = payload.get(..4).map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap())).min(8);
            (0..regions).map(|_| guest.as_raw_fd()).collect()
        }
        ADD_MEM_REG => vec![guest.as_raw_fd()],
        SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => {
            let v = payload.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
            if v & NOFD != 0 {
                Vec::new()
            } else {
                let e = EventFd::new(EFD_NONBLOCK).expect("eventfd");
                // SAFETY: dup of our own eventfd gives a new fd we own.
                vec![fresh(unsafe { File::from_raw_fd(libc::dup(e.as_raw_fd())) })]
            }
        }
        SET_BACKEND_REQ_FD => {
            // The frontend's end stays open (unread) until the run ends.
            let (a, b) = UnixStream::pair().expect("socketpair");
            fresh(File::from(std::os::fd::OwnedFd::from(b)));
            vec![fresh(File::from(std::os::fd::OwnedFd::from(a)))]
        }
        SET_INFLIGHT_FD | SET_LOG_BASE | SET_LOG_FD | SET_DEVICE_STATE_FD => vec![fresh(memfd(&[], 1 << 16))],
        _ => Vec::new(),
    }
}

/// What [`vhost_user`] adds to its count when the seeds' virtio-blk request completed.
pub const COMPLETED: u64 = 1 << 20;

/// Input: device choice (bit 0: offers packed rings), guest memory length (u16) and bytes,
/// then vhost-user messages (12-byte header: request, flags, size; then up to `size` bytes).
/// Returns the messages handled, plus [`COMPLETED`] if the request the seeds place in the
/// guest memory came back OK.
pub fn vhost_user(data: &[u8]) -> u64 {
    let device = devices()[(data.first().copied().unwrap_or(0) & 1) as usize].clone();
    let mut input = Input(data.get(1..).unwrap_or_default());
    let mem_len = input.u16() as usize;
    let guest = memfd(input.bytes(mem_len), GUEST_MEM);
    let probe = guest.try_clone().expect("dup");
    // Split the stream into messages (the harness must know where each starts to attach its
    // fds; the size field is sent as the fuzzer wrote it).
    let mut messages = Vec::new();
    while !input.0.is_empty() && messages.len() < MAX_MESSAGES {
        let header = input.bytes(12);
        let request = header.get(..4).map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()));
        let size = header.get(8..12).map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()));
        let payload = input.bytes(size as usize);
        messages.push((header.to_vec(), payload.to_vec(), request));
    }
    let (frontend, backend) = UnixStream::pair().expect("socketpair");
    // The frontend writes in its own thread (a full socket must not stall the backend) and
    // drains the replies in another; both end when the backend side closes.
    let reader = frontend.try_clone().expect("dup");
    let drain = std::thread::spawn(move || {
        let mut reader = reader;
        let mut sink = [0u8; 4096];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    });
    let writer = std::thread::spawn(move || {
        let mut keep = Vec::new();
        for (header, payload, request) in &messages {
            let fds = fds_for(*request, payload, &guest, &mut keep);
            let bytes = [header.as_slice(), payload.as_slice()].concat();
            if frontend.send_with_fds(&[&bytes[..]], &fds).is_err() {
                break;
            }
        }
        let _ = frontend.shutdown(std::net::Shutdown::Write);
        keep
    });
    let info = Arc::new(Mutex::new(SessionInfo::default()));
    let session =
        Arc::new(Mutex::new(Session::new(device, vec![0], Arc::new(Mutex::new(Coalescing::default())), info.clone())));
    let channel = Arc::new(BackendChannel::default());
    let mut handler = Handler::new(session.clone(), channel).expect("relay socket pair");
    // Not torn down yet: the loop below first lets started queues poll.
    let handled = serve_blocking(&backend, &mut handler) as u64;
    // Let running queues poll before they stop, as a guest's kick would: until the seeds'
    // request is back, or every queue has polled a few times since the stream ended (popped,
    // submitted, completed). Counted in poller runs, not in messages to the reactor: a
    // reactor drains up to a batch of messages between two rounds of its pollers.
    let queue_polls = || {
        crate::framework::call(0, || {
            crate::framework::reactor::pollers()
                .into_iter()
                .filter(|p| p.name.starts_with("vhost_blk_q"))
                .map(|p| p.run_count)
                .min()
        })
        .expect("the reactor answers")
    };
    let mut status = [0u8; 1];
    if let Some(first) = queue_polls() {
        loop {
            probe.read_exact_at(&mut status, 0x600).expect("read the guest memory");
            if info.lock().unwrap_or_else(|e| e.into_inner()).running_queues == 0 || status[0] != 0xff {
                break;
            }
            match queue_polls() {
                Some(runs) if runs < first + 3 => {}
                _ => break,
            }
        }
    }
    handler.teardown();
    drop(handler);
    drop(backend); // the reply drain ends on this end's close
    let kept = writer.join().expect("the frontend writer");
    drain.join().expect("the reply drain");
    drop(kept);
    // The reactor survived whatever the queues met.
    crate::framework::call(0, || ()).expect("the reactor still answers");
    // The seeds' request has its status byte at guest address 0x600, 0xff until a queue
    // completed it with VIRTIO_BLK_S_OK.
    probe.read_exact_at(&mut status, 0x600).expect("read the guest memory");
    handled + if mem_len > 0x600 && status[0] == 0 { COMPLETED } else { 0 }
}

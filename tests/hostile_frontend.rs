//! A hostile vhost-user frontend against a real ferryd: the files and fds it hands over
//! (undersized, unsealed and truncated memory files, call eventfds left blocking at their
//! maximum count, kick and call fds that are not eventfds) and thousands of random message
//! sequences. In every case ferryd stays up, answers RPCs, and a well-behaved controller on
//! the same reactor keeps completing verified I/O throughout.

mod common;

use common::{Ferryd, Rng};
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::{Client, Completion, Options, Request, SharedMemory};
use serde_json::json;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const VERSION_1: u64 = 1 << 32;

/// One reactor, so the hostile controller and the good one share it.
fn start() -> Ferryd {
    let dir = common::scratch_dir("hostile");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x1", "-S", dir.to_str().unwrap()]);
    d.ok("bdev_malloc_create", json!({"name": "Good", "num_blocks": 8192, "block_size": 512}));
    d.ok("bdev_malloc_create", json!({"name": "Bad", "num_blocks": 8192, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "good", "dev_name": "Good", "cpumask": "0x1"}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "bad", "dev_name": "Bad", "cpumask": "0x1"}));
    d
}

/// A well-behaved frontend doing verified writes and reads in a loop.
struct GoodFrontend {
    done: Arc<AtomicU64>,
    failure: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GoodFrontend {
    fn start(sock: PathBuf) -> GoodFrontend {
        let done = Arc::new(AtomicU64::new(0));
        let failure = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (done, failure, stop) = (done.clone(), failure.clone(), stop.clone());
            std::thread::spawn(move || {
                if let Err(e) = Self::run(&sock, &done, &stop) {
                    *failure.lock().unwrap() = Some(e);
                }
            })
        };
        GoodFrontend { done, failure, stop, thread: Some(thread) }
    }

    fn run(sock: &Path, done: &AtomicU64, stop: &AtomicBool) -> Result<(), String> {
        let opts = Options { num_queues: 1, queue_size: 64, mem_size: 4 << 20, hugetlbfs: None };
        let mut c = Client::connect(sock, &opts).map_err(|e| format!("connect: {e}"))?;
        let mem = c.mem().clone();
        let (w, r) = (mem.alloc(4096, 4096).unwrap(), mem.alloc(4096, 4096).unwrap());
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let sector = (i % 1000) * 8;
            let pattern: Vec<u8> = (0..4096u64).map(|b| (b * 31 + i * 7) as u8).collect();
            mem.write(w, &pattern);
            for (tag, req) in
                [(1, Request::Write { sector, bufs: &[(w, 4096)] }), (2, Request::Read { sector, bufs: &[(r, 4096)] })]
            {
                c.queue(0).submit(&req, tag).map_err(|_| "queue full".to_string())?;
                c.queue(0).kick();
                let got = wait_one(&mut c, Duration::from_secs(30))?;
                if got.tag != tag || got.status != status::OK {
                    return Err(format!("request {i}/{tag}: {got:?}"));
                }
            }
            let mut back = vec![0u8; 4096];
            mem.read(r, &mut back);
            if back != pattern {
                return Err(format!("request {i}: data read back differs"));
            }
            i += 1;
            done.store(i, Ordering::Release);
        }
        Ok(())
    }

    /// Waits until 20 more verified write+read pairs completed after this call began.
    #[track_caller]
    fn assert_progress(&self, after: &str) {
        let start = self.done.load(Ordering::Acquire);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.done.load(Ordering::Acquire) < start + 20 {
            if let Some(e) = self.failure.lock().unwrap().clone() {
                panic!("the good frontend failed after {after}: {e}");
            }
            assert!(Instant::now() < deadline, "the good controller stopped completing I/O after {after}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for GoodFrontend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_one(c: &mut Client, timeout: Duration) -> Result<Completion, String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        if c.queue(0).poll(&mut out) > 0 {
            return Ok(out[0]);
        }
        if Instant::now() > deadline {
            return Err("no completion".into());
        }
        c.queue(0).wait(10);
    }
}

/// ferryd is alive and answers RPCs.
#[track_caller]
fn assert_alive(d: &mut Ferryd, after: &str) {
    assert!(d.is_running(), "ferryd died after {after}; log:\n{}", d.log_text());
    d.ok("spdk_get_version", json!(null));
}

/// Waits (up to 10 s) for `needle` in ferryd's log.
#[track_caller]
fn wait_log(d: &Ferryd, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Connects with rust-vmm's frontend, negotiates VERSION_1 and REPLY_ACK (so every request
/// gets ferryd's verdict).
fn handshake(sock: &Path) -> Frontend {
    let mut f = Frontend::connect(sock, 1).expect("connect");
    f.set_owner().unwrap();
    let offered = f.get_features().unwrap();
    f.set_features(offered & (VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())).unwrap();
    let pf = f.get_protocol_features().unwrap();
    f.set_protocol_features(pf & VhostUserProtocolFeatures::REPLY_ACK).unwrap();
    f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    f
}

fn memfd(len: u64, seals: i32) -> File {
    // SAFETY: memfd_create with a static NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"hostile".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0);
    // SAFETY: a new fd we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    if seals != 0 {
        // SAFETY: F_ADD_SEALS on our own memfd.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) }, 0);
    }
    f
}

fn region(file: &File, size: u64) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: 0x7f00_0000_0000,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    }
}

#[test]
fn memory_files_that_could_raise_sigbus_are_refused_or_absorbed() {
    let mut d = start();
    let good = GoodFrontend::start(d.dir.join("good"));
    good.assert_progress("start");

    // A 4 KiB memfd announced as 1 MiB: mapping it and touching the rest would SIGBUS.
    let f = handshake(&d.dir.join("bad"));
    let small = memfd(4096, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW);
    assert!(f.set_mem_table(&[region(&small, 1 << 20)]).is_err(), "an undersized file is refused");
    wait_log(&d, "exceeds the file's size");
    // A memfd of the right size that is not sealed: it could shrink under the mapping.
    let unsealed = memfd(1 << 20, 0);
    assert!(f.set_mem_table(&[region(&unsealed, 1 << 20)]).is_err(), "an unsealed memfd is refused");
    wait_log(&d, "not sealed against shrinking");
    // Not a regular file at all.
    let (sock, _peer) = UnixStream::pair().unwrap();
    // SAFETY: a fresh fd of ours handed over as the region's file.
    let sock_file = unsafe { File::from_raw_fd(libc::dup(sock.as_raw_fd())) };
    assert!(f.set_mem_table(&[region(&sock_file, 1 << 20)]).is_err(), "a socket is refused");
    wait_log(&d, "not a regular file");
    // The sealed memfd of the right size is fine.
    let sealed = memfd(1 << 20, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW);
    f.set_mem_table(&[region(&sealed, 1 << 20)]).expect("a sealed memfd is mapped");
    drop(f);
    assert_alive(&mut d, "refused memory files");
    good.assert_progress("refused memory files");

    // A file that cannot be sealed (tmpfs, hugetlbfs, a plain file) truncated while its
    // queue runs: the reactor's next touch of the ring faults, and is absorbed.
    let files = common::scratch_dir("hostile-mem");
    let opts = Options { num_queues: 1, queue_size: 64, mem_size: 4 << 20, hugetlbfs: Some(files.to_path_buf()) };
    let mut c = Client::connect(&d.dir.join("bad"), &opts).expect("file-backed memory is accepted");
    let buf = c.mem().alloc(4096, 4096).unwrap();
    c.queue(0).submit(&Request::Read { sector: 0, bufs: &[(buf, 4096)] }, 1).unwrap();
    c.queue(0).kick();
    assert_eq!(wait_one(&mut c, Duration::from_secs(10)).unwrap().status, status::OK);
    c.mem().file().set_len(0).unwrap();
    // Kick without touching the (now unbacked) memory ourselves.
    c.queue(0).ring().kick_always();
    wait_log(&d, "truncated a guest memory file");
    assert_alive(&mut d, "a memory file truncated under a running queue");
    good.assert_progress("a memory file truncated under a running queue");
    std::mem::forget(c); // its mapping is gone: dropping would touch it

    // A sealed memfd cannot be shrunk at all (what makes memfds safe without the guard).
    let honest = memfd(1 << 20, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW);
    assert!(honest.set_len(4096).is_err());
}

#[test]
fn a_call_eventfd_left_blocking_at_its_maximum_does_not_freeze_the_reactor() {
    let mut d = start();
    let good = GoodFrontend::start(d.dir.join("good"));
    good.assert_progress("start");
    let opts = Options { num_queues: 1, queue_size: 64, mem_size: 4 << 20, hugetlbfs: None };
    let mut c = Client::connect(&d.dir.join("bad"), &opts).unwrap();
    // The frontend's copy of the call fd: blocking mode, count one below the maximum.
    // write(2) of 1 on it would sleep until someone reads it, which this frontend never does.
    let call = c.queue(0).call_raw_fd();
    // SAFETY: fcntl on our own fd.
    unsafe { libc::fcntl(call, libc::F_SETFL, libc::fcntl(call, libc::F_GETFL) & !libc::O_NONBLOCK) };
    let max = (u64::MAX - 1).to_ne_bytes();
    // SAFETY: 8 valid bytes; the count is 0, so this write does not block.
    assert_eq!(unsafe { libc::write(call, max.as_ptr().cast(), 8) }, 8);
    let buf = c.mem().alloc(4096, 4096).unwrap();
    for tag in 0..8u64 {
        c.queue(0).submit(&Request::Read { sector: tag * 8, bufs: &[(buf, 4096)] }, tag).unwrap();
        c.queue(0).kick();
        // Poll the used ring only: waiting on the call fd would read it and undo the trap.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        while c.queue(0).poll(&mut out) == 0 {
            assert!(Instant::now() < deadline, "request {tag} never completed");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(out[0].status, status::OK);
    }
    assert_alive(&mut d, "a call eventfd at its maximum");
    good.assert_progress("a call eventfd at its maximum");
}

#[test]
fn kick_and_call_fds_that_are_not_eventfds_are_refused() {
    let mut d = start();
    let good = GoodFrontend::start(d.dir.join("good"));
    let mut f = handshake(&d.dir.join("bad"));
    let mem = SharedMemory::new(1 << 20, None).unwrap();
    f.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: mem.len() as u64,
        userspace_addr: mem.host_addr(0),
        mmap_offset: 0,
        mmap_handle: mem.file().as_raw_fd(),
    }])
    .unwrap();
    f.set_vring_num(0, 64).unwrap();
    let config = VringConfigData {
        queue_max_size: 64,
        queue_size: 64,
        flags: 0,
        desc_table_addr: mem.host_addr(0x1000),
        used_ring_addr: mem.host_addr(0x3000),
        avail_ring_addr: mem.host_addr(0x2000),
        log_addr: None,
    };
    f.set_vring_addr(0, &config).unwrap();
    f.set_vring_base(0, 0).unwrap();
    let not_eventfds: Vec<(&str, RawFd)> = {
        let mut pipe = [0; 2];
        // SAFETY: pipe2 fills the two-element array.
        assert_eq!(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let file = File::open("/proc/self/stat").unwrap();
        vec![("a pipe", pipe[0]), ("a regular file", std::os::fd::IntoRawFd::into_raw_fd(file))]
    };
    for (what, fd) in not_eventfds {
        // SAFETY: EventFd is only a wrapper of the fd here; ownership moves to it.
        let fake = unsafe { EventFd::from_raw_fd(fd) };
        assert!(f.set_vring_call(0, &fake).is_err(), "{what} as a call fd is refused");
        assert!(f.set_vring_kick(0, &fake).is_err(), "{what} as a kick fd is refused");
    }
    wait_log(&d, "refusing call fd");
    wait_log(&d, "refusing kick fd");
    // Real eventfds still work on the same session.
    let (call, kick) = (EventFd::new(EFD_NONBLOCK).unwrap(), EventFd::new(EFD_NONBLOCK).unwrap());
    f.set_vring_call(0, &call).unwrap();
    f.set_vring_kick(0, &kick).unwrap();
    f.set_vring_enable(0, true).unwrap();
    assert_alive(&mut d, "fds that are not eventfds");
    good.assert_progress("fds that are not eventfds");
}

/// A raw vhost-user message with optional fds (SCM_RIGHTS).
fn send_raw(sock: &UnixStream, request: u32, flags: u32, payload: &[u8], fds: &[RawFd]) -> bool {
    let mut msg = Vec::with_capacity(12 + payload.len());
    msg.extend_from_slice(&request.to_le_bytes());
    msg.extend_from_slice(&flags.to_le_bytes());
    msg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    msg.extend_from_slice(payload);
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    sock.send_with_fds(&[&msg[..]], fds).is_ok()
}

/// The payload of a plausible message for `request`, with random values.
fn plausible_payload(rng: &mut Rng, request: u32, mem: &SharedMemory) -> Vec<u8> {
    let mut p = Vec::new();
    let queue = rng.below(3) as u32;
    match request {
        // SET_FEATURES, SET_PROTOCOL_FEATURES
        2 | 16 => p.extend_from_slice(&(rng.next() | VERSION_1).to_le_bytes()),
        // SET_MEM_TABLE: one region over the memory (or a random one).
        5 => {
            p.extend_from_slice(&1u32.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
            let size = if rng.below(4) == 0 { rng.next() } else { mem.len() as u64 };
            for v in [0, size, mem.host_addr(0), rng.below(2) * rng.next()] {
                p.extend_from_slice(&v.to_le_bytes());
            }
        }
        // SET_VRING_NUM, SET_VRING_BASE, GET_VRING_BASE, SET_VRING_ENABLE
        8 | 10 | 11 | 18 => {
            p.extend_from_slice(&queue.to_le_bytes());
            let num = [64, 0, 3, 1 << 15, rng.next() as u32][rng.below(5) as usize];
            p.extend_from_slice(&num.to_le_bytes());
        }
        // SET_VRING_ADDR: rings inside the memory, or anywhere.
        9 => {
            p.extend_from_slice(&queue.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
            for off in [0x1000u64, 0x3000, 0x2000] {
                let a =
                    if rng.below(4) == 0 { rng.next() } else { mem.host_addr(off + rng.below(2) * rng.below(0x1000)) };
                p.extend_from_slice(&a.to_le_bytes());
            }
            p.extend_from_slice(&0u64.to_le_bytes());
        }
        // SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR: index, sometimes the no-fd flag.
        12..=14 => p.extend_from_slice(&(queue as u64 | ((rng.below(4) == 0) as u64 * 0x100)).to_le_bytes()),
        _ => {
            let n = rng.below(64) as usize;
            p.extend((0..n).map(|_| rng.next() as u8));
        }
    }
    if rng.below(8) == 0 {
        // Wrong size: cut short or padded.
        if rng.below(2) == 0 {
            p.truncate(rng.below(p.len() as u64 + 1) as usize);
        } else {
            p.extend((0..rng.below(32)).map(|_| rng.next() as u8));
        }
    }
    p
}

/// What a real frontend sends to get queue 0 running (no protocol features, so the kick
/// starts it), with a few random choices: event index, packed ring, ring placement.
fn send_prefix(sock: &UnixStream, rng: &mut Rng, mem: &SharedMemory, efd: &EventFd) -> bool {
    const EVENT_IDX: u64 = 1 << 29;
    const RING_PACKED: u64 = 1 << 34;
    let features = VERSION_1 | (rng.below(2) * EVENT_IDX) | ((rng.below(4) == 0) as u64 * RING_PACKED);
    let u32s = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let u64s = |v: &[u64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut table = u32s(&[1, 0]);
    table.extend(u64s(&[0, mem.len() as u64, mem.host_addr(0), 0]));
    let mut addr = u32s(&[0, 0]);
    let shift = (rng.below(2) * rng.below(0x800)) & !0xF;
    addr.extend(u64s(&[mem.host_addr(0x1000 + shift), mem.host_addr(0x3000), mem.host_addr(0x2000), 0]));
    let size = [64u32, 16, 256][rng.below(3) as usize];
    let steps: [(u32, Vec<u8>, Vec<RawFd>); 8] = [
        (3, vec![], vec![]),
        (2, u64s(&[features]), vec![]),
        (5, table, vec![mem.file().as_raw_fd()]),
        (8, u32s(&[0, size]), vec![]),
        (9, addr, vec![]),
        (10, u32s(&[0, rng.below(2) as u32 * rng.next() as u32]), vec![]),
        (13, u64s(&[0]), vec![efd.as_raw_fd()]),
        (12, u64s(&[0]), vec![efd.as_raw_fd()]),
    ];
    steps.iter().all(|(request, payload, fds)| send_raw(sock, *request, 0x1, payload, fds))
}

#[test]
fn ten_thousand_random_message_sequences_leave_ferryd_serving() {
    let mut d = start();
    let good = GoodFrontend::start(d.dir.join("good"));
    good.assert_progress("start");
    let sock_path = d.dir.join("bad");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Memory whose contents are random too: queues started on it walk garbage rings.
    let mem = SharedMemory::new(64 << 10, None).unwrap();
    let junk: Vec<u8> = (0..mem.len()).map(|_| rng.next() as u8).collect();
    let unsealed = memfd(64 << 10, 0);
    let tiny = memfd(4096, libc::F_SEAL_SHRINK);
    let efd = EventFd::new(0).unwrap();
    let (sock_a, _sock_b) = UnixStream::pair().unwrap();
    let devnull = File::open("/dev/null").unwrap();
    let fd_kinds = [
        efd.as_raw_fd(),
        mem.file().as_raw_fd(),
        unsealed.as_raw_fd(),
        tiny.as_raw_fd(),
        sock_a.as_raw_fd(),
        devnull.as_raw_fd(),
    ];
    const SEQUENCES: u32 = 10_000;
    for seq in 0..SEQUENCES {
        mem.write(0, &junk[..]);
        let sock = loop {
            match UnixStream::connect(&sock_path) {
                Ok(s) => break s,
                // The controller is still tearing down the previous session.
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        // Half the sequences start like a real frontend, so queues start on junk rings.
        if rng.below(2) == 0 && !send_prefix(&sock, &mut rng, &mem, &efd) {
            continue;
        }
        let mut script: Vec<u32> = Vec::new();
        for _ in 0..rng.below(12) {
            script.push(if rng.below(4) == 0 {
                rng.below(64) as u32
            } else {
                [2, 5, 8, 9, 10, 11, 12, 13, 18, 24][rng.below(10) as usize]
            });
        }
        for request in script {
            let flags = if rng.below(10) == 0 { rng.next() as u32 } else { 0x1 };
            let payload = plausible_payload(&mut rng, request, &mem);
            let fds: Vec<RawFd> = match request {
                5 if rng.below(6) != 0 => vec![mem.file().as_raw_fd()],
                12 | 13 if rng.below(6) != 0 => vec![efd.as_raw_fd()],
                _ if rng.below(6) == 0 => vec![fd_kinds[rng.below(fd_kinds.len() as u64) as usize]],
                _ => vec![],
            };
            if !send_raw(&sock, request, flags, &payload, &fds) {
                break; // ferryd dropped the connection: the sequence ends
            }
            if rng.below(3) == 0 {
                let _ = efd.write(1); // kick whatever queue may be running
            }
        }
        // Some sequences end half-way through a message.
        if rng.below(10) == 0 {
            let _ = (&sock).write_all(&[5, 0, 0, 0, 1]);
        }
        drop(sock);
        if seq % 2000 == 1999 {
            assert_alive(&mut d, &format!("{} random sequences", seq + 1));
            good.assert_progress(&format!("{} random sequences", seq + 1));
        }
    }
    assert_alive(&mut d, "the random sequences");
    good.assert_progress("the random sequences");
    // The sequences got deep: queues started on junk rings and broke on them.
    let log = d.log_text();
    let started = log.matches("virtqueue started").count();
    let broken = log.matches("marked broken").count();
    eprintln!("random sequences: {started} queue starts, {broken} broken rings");
    assert!(started > 1000 && broken > 100, "{started} queue starts, {broken} broken rings");
    // And a well-behaved frontend can still use the controller the sequences hammered.
    let mut c =
        Client::connect(&sock_path, &Options { num_queues: 1, queue_size: 64, mem_size: 4 << 20, hugetlbfs: None })
            .expect("connect after the random sequences");
    let buf = c.mem().alloc(4096, 4096).unwrap();
    c.queue(0).submit(&Request::Read { sector: 0, bufs: &[(buf, 4096)] }, 9).unwrap();
    c.queue(0).kick();
    assert_eq!(wait_one(&mut c, Duration::from_secs(10)).unwrap().status, status::OK);
}

#[test]
fn bogus_dirty_logs_are_refused_and_logging_without_a_log_writes_nothing() {
    let mut d = start();
    let good = GoodFrontend::start(d.dir.join("good"));
    good.assert_progress("start");
    let opts = Options { num_queues: 1, queue_size: 64, mem_size: 4 << 20, hugetlbfs: None };
    let sealed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    // A log fd smaller than the log, a size and offset that wrap or reach past the file, an
    // unsealed memfd (it could shrink under the mapping), a zero size, and an fd that is not
    // a file at all: each is refused with a clear error and the connection ends (SET_LOG_BASE
    // cannot carry a failure, and the frontend waits for its reply), never a hang; ferryd
    // serves on and the controller takes the next frontend.
    let (sock, _peer) = UnixStream::pair().unwrap();
    let cases: [(&dyn AsRawFd, u64, u64, &str); 6] = [
        (&memfd(4096, sealed), 8192, 0, "log fd smaller than the log"),
        (&memfd(4096, sealed), 4096, 4096, "log past the end of its file"),
        (&memfd(4096, sealed), 16, u64::MAX - 8, "offset + size wraps"),
        (&memfd(4096, 0), 4096, 0, "unsealed memfd"),
        (&memfd(4096, sealed), 0, 0, "zero size"),
        (&sock, 4096, 0, "a socket, not a file"),
    ];
    for (fd, size, offset, what) in cases {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut c = loop {
            match Client::connect(&d.dir.join("bad"), &opts) {
                Ok(c) => break c,
                Err(e) => assert!(Instant::now() < deadline, "{what}: the controller never listened again: {e}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(c.start_dirty_log(fd, size, offset).is_err(), "{what}: accepted");
        assert_alive(&mut d, what);
    }
    wait_log(&d, "SET_LOG_BASE refused");
    good.assert_progress("bogus dirty logs");
}

#[test]
fn a_log_smaller_than_guest_memory_is_never_written_past_its_end() {
    let mut d = start();
    let opts = Options { num_queues: 1, queue_size: 64, mem_size: 4 << 20, hugetlbfs: None };
    let mut c = Client::connect(&d.dir.join("bad"), &opts).unwrap();
    // Logging on before any log: nothing to write to, a warning, I/O goes on.
    c.set_log_all(true).unwrap();
    wait_log(&d, "VHOST_F_LOG_ALL without a log");
    // A one-byte log at the end of a page-sized file (covers pages 0..8 of 1024); a guard
    // byte pattern fills the rest of the file, which must stay as it is.
    let f = memfd(4096, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW);
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0xA5; 4095], 0).unwrap();
    c.start_dirty_log(&f, 1, 4095).unwrap();
    c.mem().alloc(1 << 20, 4096).unwrap(); // so the buffer lies well past page 8
    let buf = c.mem().alloc(4096, 4096).unwrap();
    assert!(buf >= 8 * 4096, "the buffer lies past what the log covers");
    for tag in 0..4 {
        c.queue(0).submit(&Request::Read { sector: tag * 8, bufs: &[(buf, 4096)] }, tag).unwrap();
        c.queue(0).kick();
        assert_eq!(wait_one(&mut c, Duration::from_secs(10)).map(|r| r.status), Ok(status::OK));
    }
    let mut back = vec![0u8; 4096];
    f.read_exact_at(&mut back, 0).unwrap();
    assert!(back[..4095].iter().all(|&b| b == 0xA5), "nothing written outside the log");
    assert_alive(&mut d, "a short log");
}

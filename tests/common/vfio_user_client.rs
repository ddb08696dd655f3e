//! A vfio-user client for tests (the protocol of QEMU's `docs/interop/vfio-user.rst`, raw, so
//! tests can also send what no well-behaved client would), with shared guest memory in a
//! sealed memfd and a small NVMe driver over the function Ferry serves: admin and I/O
//! queues in that memory, doorbells written as QEMU writes them (posted region writes),
//! completions found by their phase bit.

#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

pub const VERSION: u16 = 1;
pub const DMA_MAP: u16 = 2;
pub const DMA_UNMAP: u16 = 3;
pub const GET_INFO: u16 = 4;
pub const GET_REGION_INFO: u16 = 5;
pub const GET_IRQ_INFO: u16 = 7;
pub const SET_IRQS: u16 = 8;
pub const REGION_READ: u16 = 9;
pub const REGION_WRITE: u16 = 10;
pub const RESET: u16 = 13;
pub const NO_REPLY: u32 = 1 << 4;
pub const ERROR: u32 = 1 << 5;
pub const BAR0: u32 = 0;
pub const CONFIG: u32 = 7;
pub const MSIX: u32 = 2;

/// A reply: its flags, errno and payload.
#[derive(Debug)]
pub struct Reply {
    pub flags: u32,
    pub error: u32,
    pub payload: Vec<u8>,
}

impl Reply {
    pub fn ok(&self) -> Result<&[u8], i32> {
        if self.flags & ERROR != 0 {
            Err(self.error as i32)
        } else {
            Ok(&self.payload)
        }
    }
}

pub struct Client {
    pub sock: UnixStream,
    id: u16,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl Client {
    /// Connects (retrying for a moment while the endpoint starts) without negotiating.
    pub fn connect_raw(path: &Path) -> Client {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(path) {
                Ok(sock) => {
                    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    return Client { sock, id: 0 };
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connect {}: {e}", path.display()),
            }
        }
    }

    /// Connects and negotiates the version (as QEMU proposes it).
    pub fn connect(path: &Path) -> Client {
        let mut c = Client::connect_raw(path);
        let caps =
            r#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535}}"#;
        let mut p = vec![0u8, 0, 1, 0];
        p.extend_from_slice(caps.as_bytes());
        p.push(0);
        let r = c.request(VERSION, &p, &[]);
        let payload = r.ok().expect("VERSION");
        assert_eq!(&payload[0..2], &[0, 0], "major 0");
        assert_eq!(*payload.last().unwrap(), 0, "NUL-terminated capabilities");
        c
    }

    /// Sends a message (header built here) with `fds`.
    pub fn send(&mut self, command: u16, payload: &[u8], fds: &[RawFd], flags: u32) {
        self.id = self.id.wrapping_add(1);
        let size = (16 + payload.len()) as u32;
        let mut m = Vec::with_capacity(size as usize);
        m.extend_from_slice(&self.id.to_le_bytes());
        m.extend_from_slice(&command.to_le_bytes());
        m.extend_from_slice(&size.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(payload);
        self.send_bytes(&m, fds);
    }

    /// Sends raw bytes (whatever they are) with `fds`.
    pub fn send_bytes(&mut self, bytes: &[u8], fds: &[RawFd]) {
        self.sock.send_with_fds(&[bytes], fds).expect("send");
    }

    /// Reads one reply (its fds are closed).
    pub fn recv(&mut self) -> Reply {
        let mut h = [0u8; 16];
        self.sock.read_exact(&mut h).expect("reply header");
        let size = le32(&h, 4) as usize;
        assert!(size >= 16, "reply size {size}");
        let mut payload = vec![0u8; size - 16];
        self.sock.read_exact(&mut payload).expect("reply payload");
        assert_eq!(le32(&h, 8) & 0xf, 1, "a reply");
        Reply { flags: le32(&h, 8), error: le32(&h, 12), payload }
    }

    /// Sends a command and waits for its reply.
    pub fn request(&mut self, command: u16, payload: &[u8], fds: &[RawFd]) -> Reply {
        self.send(command, payload, fds, 0);
        self.recv()
    }

    pub fn dma_map(&mut self, fd: Option<RawFd>, offset: u64, gpa: u64, size: u64, flags: u32) -> Result<(), i32> {
        let mut p = Vec::new();
        p.extend_from_slice(&32u32.to_le_bytes());
        p.extend_from_slice(&flags.to_le_bytes());
        p.extend_from_slice(&offset.to_le_bytes());
        p.extend_from_slice(&gpa.to_le_bytes());
        p.extend_from_slice(&size.to_le_bytes());
        let fds: Vec<RawFd> = fd.into_iter().collect();
        self.request(DMA_MAP, &p, &fds).ok().map(|_| ())
    }

    pub fn dma_unmap(&mut self, gpa: u64, size: u64, flags: u32) -> Result<(), i32> {
        let mut p = Vec::new();
        p.extend_from_slice(&24u32.to_le_bytes());
        p.extend_from_slice(&flags.to_le_bytes());
        p.extend_from_slice(&gpa.to_le_bytes());
        p.extend_from_slice(&size.to_le_bytes());
        self.request(DMA_UNMAP, &p, &[]).ok().map(|_| ())
    }

    /// DEVICE_GET_INFO: (flags, regions, irqs).
    pub fn device_info(&mut self) -> (u32, u32, u32) {
        let mut p = vec![0u8; 16];
        p[0..4].copy_from_slice(&16u32.to_le_bytes());
        let r = self.request(GET_INFO, &p, &[]);
        let b = r.ok().expect("GET_INFO");
        (le32(b, 4), le32(b, 8), le32(b, 12))
    }

    /// DEVICE_GET_REGION_INFO: (flags, size).
    pub fn region_info(&mut self, index: u32) -> Result<(u32, u64), i32> {
        let mut p = vec![0u8; 32];
        p[0..4].copy_from_slice(&32u32.to_le_bytes());
        p[8..12].copy_from_slice(&index.to_le_bytes());
        let r = self.request(GET_REGION_INFO, &p, &[]);
        let b = r.ok()?;
        Ok((le32(b, 4), le64(b, 16)))
    }

    /// DEVICE_GET_IRQ_INFO: (flags, count).
    pub fn irq_info(&mut self, index: u32) -> Result<(u32, u32), i32> {
        let mut p = vec![0u8; 16];
        p[0..4].copy_from_slice(&16u32.to_le_bytes());
        p[8..12].copy_from_slice(&index.to_le_bytes());
        let r = self.request(GET_IRQ_INFO, &p, &[]);
        let b = r.ok()?;
        Ok((le32(b, 4), le32(b, 12)))
    }

    /// DEVICE_SET_IRQS with eventfds for MSI-X vectors `start..`.
    pub fn set_msix(&mut self, start: u32, fds: &[RawFd]) -> Result<(), i32> {
        let mut p = vec![0u8; 20];
        p[0..4].copy_from_slice(&20u32.to_le_bytes());
        p[4..8].copy_from_slice(&((1u32 << 2) | (1 << 5)).to_le_bytes());
        p[8..12].copy_from_slice(&MSIX.to_le_bytes());
        p[12..16].copy_from_slice(&start.to_le_bytes());
        p[16..20].copy_from_slice(&(fds.len() as u32).to_le_bytes());
        self.request(SET_IRQS, &p, fds).ok().map(|_| ())
    }

    pub fn region_read(&mut self, region: u32, offset: u64, count: u32) -> Result<Vec<u8>, i32> {
        let mut p = Vec::new();
        p.extend_from_slice(&offset.to_le_bytes());
        p.extend_from_slice(&region.to_le_bytes());
        p.extend_from_slice(&count.to_le_bytes());
        let r = self.request(REGION_READ, &p, &[]);
        let b = r.ok()?;
        assert_eq!(le32(b, 12), count);
        Ok(b[16..].to_vec())
    }

    fn region_write_msg(region: u32, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&offset.to_le_bytes());
        p.extend_from_slice(&region.to_le_bytes());
        p.extend_from_slice(&(data.len() as u32).to_le_bytes());
        p.extend_from_slice(data);
        p
    }

    pub fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), i32> {
        let p = Self::region_write_msg(region, offset, data);
        self.request(REGION_WRITE, &p, &[]).ok().map(|_| ())
    }

    /// A posted write (no reply), as QEMU sends BAR writes.
    pub fn region_write_posted(&mut self, region: u32, offset: u64, data: &[u8]) {
        let p = Self::region_write_msg(region, offset, data);
        self.send(REGION_WRITE, &p, &[], NO_REPLY);
    }

    pub fn read32(&mut self, off: u64) -> u32 {
        le32(&self.region_read(BAR0, off, 4).expect("BAR0 read"), 0)
    }

    pub fn read64(&mut self, off: u64) -> u64 {
        le64(&self.region_read(BAR0, off, 8).expect("BAR0 read"), 0)
    }

    pub fn write32(&mut self, off: u64, v: u32) {
        self.region_write(BAR0, off, &v.to_le_bytes()).expect("BAR0 write")
    }

    /// Doorbell `idx` (SQ y tail: 2y, CQ y head: 2y + 1), posted.
    pub fn doorbell(&mut self, idx: u64, v: u32) {
        self.region_write_posted(BAR0, 0x1000 + 4 * idx, &v.to_le_bytes());
    }
}

/// Guest memory: a sealed memfd mapped here, shared with Ferry through DMA_MAP.
pub struct Mem {
    pub file: File,
    pub ptr: *mut u8,
    pub len: usize,
}

impl Mem {
    pub fn new(len: usize) -> Mem {
        let name = std::ffi::CString::new("ferry-test-guest").unwrap();
        // SAFETY: memfd_create with a valid name; the fd is ours.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: fresh fd owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64).unwrap();
        // SAFETY: sealing our own memfd, as QEMU seals guest memory.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) }, 0);
        // SAFETY: a shared mapping of the whole file; unmapped on drop.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Mem { file, ptr: ptr.cast(), len }
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn write(&self, at: u64, data: &[u8]) {
        assert!(at as usize + data.len() <= self.len);
        // SAFETY: in bounds of our mapping; Ferry reads it concurrently (volatile-ish copy).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(at as usize), data.len()) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    pub fn read(&self, at: u64, len: usize) -> Vec<u8> {
        assert!(at as usize + len <= self.len);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let mut v = vec![0u8; len];
        // SAFETY: in bounds of our mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(at as usize), v.as_mut_ptr(), len) };
        v
    }

    pub fn read_u32(&self, at: u64) -> u32 {
        assert!(at as usize + 4 <= self.len);
        // SAFETY: in bounds and aligned by the callers; Ferry writes it concurrently.
        u32::from_le(unsafe { std::ptr::read_volatile(self.ptr.add(at as usize).cast::<u32>()) })
    }

    pub fn write_u32(&self, at: u64, v: u32) {
        assert!(at as usize + 4 <= self.len);
        // SAFETY: in bounds and aligned by the callers.
        unsafe { std::ptr::write_volatile(self.ptr.add(at as usize).cast::<u32>(), v.to_le()) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A completion as the driver reads it.
#[derive(Debug, Clone, Copy)]
pub struct Cqe {
    pub dw0: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    /// Status field without the phase bit (SCT << 8 | SC, DNR, M).
    pub status: u16,
}

impl Cqe {
    pub fn sc(&self) -> u8 {
        (self.status >> 1) as u8
    }
    pub fn sct(&self) -> u8 {
        ((self.status >> 9) & 7) as u8
    }
    pub fn ok(&self) -> bool {
        self.status >> 1 == 0
    }
}

/// One queue pair in guest memory.
pub struct Queue {
    pub qid: u16,
    pub sq: u64,
    pub cq: u64,
    pub size: u16,
    pub tail: u16,
    pub head: u16,
    pub phase: bool,
    /// Shadow doorbells in use: (shadow page, event index page).
    pub shadow: Option<(u64, u64)>,
}

impl Queue {
    pub fn new(qid: u16, sq: u64, cq: u64, size: u16) -> Queue {
        Queue { qid, sq, cq, size, tail: 0, head: 0, phase: true, shadow: None }
    }
}

/// A 64-byte command.
pub fn cmd(opcode: u8, cid: u16, nsid: u32) -> [u8; 64] {
    let mut c = [0u8; 64];
    c[0] = opcode;
    c[2..4].copy_from_slice(&cid.to_le_bytes());
    c[4..8].copy_from_slice(&nsid.to_le_bytes());
    c
}

pub fn set32(c: &mut [u8; 64], at: usize, v: u32) {
    c[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn set64(c: &mut [u8; 64], at: usize, v: u64) {
    c[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// PRP1 and PRP2.
pub fn prps(c: &mut [u8; 64], prp1: u64, prp2: u64) {
    set64(c, 24, prp1);
    set64(c, 32, prp2);
}

/// The driver: a client, the guest memory, and queues.
pub struct Nvme {
    pub c: Client,
    pub mem: Mem,
    pub admin: Queue,
    cid: u16,
}

impl Nvme {
    pub fn new(c: Client, mem: Mem) -> Nvme {
        Nvme { c, mem, admin: Queue::new(0, 0x0, 0x1000, 32), cid: 0 }
    }

    pub fn next_cid(&mut self) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        self.cid
    }

    /// Programs the admin queue and sets CC.EN; waits for CSTS.RDY (or CFS).
    pub fn enable(&mut self) -> u32 {
        let q = &self.admin;
        let aqa = ((q.size as u32 - 1) << 16) | (q.size as u32 - 1);
        self.c.write32(0x24, aqa);
        let (sq, cq) = (q.sq, q.cq);
        // As Linux does: a fresh queue starts zeroed (no stale phase bits).
        self.mem.write(cq, &vec![0u8; q.size as usize * 16]);
        self.c.region_write(BAR0, 0x28, &sq.to_le_bytes()).unwrap();
        self.c.region_write(BAR0, 0x30, &cq.to_le_bytes()).unwrap();
        self.c.write32(0x14, (6 << 16) | (4 << 20) | 1);
        self.wait_csts(|s| s & 3 != 0)
    }

    /// Clears CC.EN and waits for CSTS.RDY to clear.
    pub fn disable(&mut self) -> u32 {
        self.c.write32(0x14, (6 << 16) | (4 << 20));
        let s = self.wait_csts(|s| s & 1 == 0);
        self.admin = Queue::new(0, self.admin.sq, self.admin.cq, self.admin.size);
        s
    }

    pub fn wait_csts(&mut self, done: impl Fn(u32) -> bool) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.c.read32(0x1c);
            if done(s) {
                return s;
            }
            assert!(Instant::now() < deadline, "CSTS stuck at {s:#x}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Submits `c` on queue `q` (ringing its doorbell, or its shadow doorbell).
    pub fn submit(&mut self, q: &mut Queue, c: &[u8; 64]) {
        self.mem.write(q.sq + q.tail as u64 * 64, c);
        let old = q.tail;
        q.tail = (q.tail + 1) % q.size;
        match q.shadow {
            Some((shadow, eventidx)) => {
                let idx = 2 * q.qid as u64;
                self.mem.write_u32(shadow + 4 * idx, q.tail as u32);
                let ev = self.mem.read_u32(eventidx + 4 * idx) as u16;
                // Linux's nvme_dbbuf_need_event.
                if q.tail.wrapping_sub(ev).wrapping_sub(1) < q.tail.wrapping_sub(old) {
                    self.c.doorbell(idx, q.tail as u32);
                }
            }
            None => self.c.doorbell(2 * q.qid as u64, q.tail as u32),
        }
    }

    /// Waits for the next completion of queue `q` and consumes it.
    pub fn reap(&mut self, q: &mut Queue) -> Cqe {
        let at = q.cq + q.head as u64 * 16;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let b = self.mem.read(at, 16);
            let st = u16::from_le_bytes([b[14], b[15]]);
            if (st & 1 != 0) == q.phase {
                let cqe = Cqe {
                    dw0: le32(&b, 0),
                    sqhd: u16::from_le_bytes([b[8], b[9]]),
                    sqid: u16::from_le_bytes([b[10], b[11]]),
                    cid: u16::from_le_bytes([b[12], b[13]]),
                    status: st & !1,
                };
                q.head = (q.head + 1) % q.size;
                if q.head == 0 {
                    q.phase = !q.phase;
                }
                match q.shadow {
                    Some((shadow, _)) => self.mem.write_u32(shadow + 4 * (2 * q.qid as u64 + 1), q.head as u32),
                    None => self.c.doorbell(2 * q.qid as u64 + 1, q.head as u32),
                }
                return cqe;
            }
            assert!(Instant::now() < deadline, "no completion on queue {} (head {})", q.qid, q.head);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether a completion is waiting on queue `q` (without consuming it).
    pub fn has_completion(&self, q: &Queue) -> bool {
        let b = self.mem.read(q.cq + q.head as u64 * 16, 16);
        (b[14] & 1 != 0) == q.phase
    }

    /// Runs an admin command and returns its completion.
    pub fn admin(&mut self, c: [u8; 64]) -> Cqe {
        let mut q = std::mem::replace(&mut self.admin, Queue::new(0, 0, 0, 2));
        self.submit(&mut q, &c);
        let cqe = self.reap(&mut q);
        self.admin = q;
        cqe
    }

    /// Identify (CNS `cns`) into guest memory at `buf` (one page).
    pub fn identify(&mut self, cns: u8, nsid: u32, buf: u64) -> Cqe {
        let mut c = cmd(0x06, self.next_cid(), nsid);
        prps(&mut c, buf, 0);
        set32(&mut c, 40, cns as u32);
        self.admin(c)
    }

    /// Set Features Number of Queues.
    pub fn set_queues(&mut self, n: u16) -> Cqe {
        let mut c = cmd(0x09, self.next_cid(), 0);
        set32(&mut c, 40, 0x07);
        set32(&mut c, 44, ((n as u32 - 1) << 16) | (n as u32 - 1));
        self.admin(c)
    }

    /// Create I/O CQ `qid` at `gpa`, `size` entries, vector `iv`.
    pub fn create_cq(&mut self, qid: u16, gpa: u64, size: u16, iv: u16) -> Cqe {
        if gpa + size as u64 * 16 <= self.mem.len as u64 {
            self.mem.write(gpa, &vec![0u8; size as usize * 16]);
        }
        let mut c = cmd(0x05, self.next_cid(), 0);
        prps(&mut c, gpa, 0);
        set32(&mut c, 40, ((size as u32 - 1) << 16) | qid as u32);
        set32(&mut c, 44, ((iv as u32) << 16) | 0x3);
        self.admin(c)
    }

    /// Create I/O SQ `qid` at `gpa` on CQ `cqid`.
    pub fn create_sq(&mut self, qid: u16, gpa: u64, size: u16, cqid: u16) -> Cqe {
        let mut c = cmd(0x01, self.next_cid(), 0);
        prps(&mut c, gpa, 0);
        set32(&mut c, 40, ((size as u32 - 1) << 16) | qid as u32);
        set32(&mut c, 44, ((cqid as u32) << 16) | 0x1);
        self.admin(c)
    }

    pub fn delete_sq(&mut self, qid: u16) -> Cqe {
        let mut c = cmd(0x00, self.next_cid(), 0);
        set32(&mut c, 40, qid as u32);
        self.admin(c)
    }

    pub fn delete_cq(&mut self, qid: u16) -> Cqe {
        let mut c = cmd(0x04, self.next_cid(), 0);
        set32(&mut c, 40, qid as u32);
        self.admin(c)
    }

    /// Doorbell Buffer Config.
    pub fn dbbuf(&mut self, shadow: u64, eventidx: u64) -> Cqe {
        let mut c = cmd(0x7c, self.next_cid(), 0);
        prps(&mut c, shadow, eventidx);
        self.admin(c)
    }

    /// A Read (0x02) or Write (0x01) of `nlb` blocks at `lba` with PRPs `prp1`/`prp2`.
    pub fn rw(&mut self, q: &mut Queue, opcode: u8, lba: u64, nlb: u16, prp1: u64, prp2: u64) -> Cqe {
        let cid = self.next_cid();
        let mut c = cmd(opcode, cid, 1);
        prps(&mut c, prp1, prp2);
        set64(&mut c, 40, lba);
        set32(&mut c, 48, nlb as u32 - 1);
        self.submit(q, &c);
        let cqe = self.reap(q);
        assert_eq!(cqe.cid, cid);
        cqe
    }
}

/// A non-blocking eventfd (an MSI-X vector's) and how many times it fired.
pub struct Vector(pub File);

impl Vector {
    pub fn new() -> Vector {
        // SAFETY: eventfd returns a fresh fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: ours.
        Vector(unsafe { File::from_raw_fd(fd) })
    }

    /// Reads (and resets) the count.
    pub fn take(&mut self) -> u64 {
        let mut b = [0u8; 8];
        match self.0.read(&mut b) {
            Ok(8) => u64::from_le_bytes(b),
            _ => 0,
        }
    }

    /// Waits (up to 10 s) for the vector to fire, then reads and resets the count: the
    /// function writes a completion before it signals, so a completion seen in memory does not
    /// mean the interrupt was sent yet.
    pub fn wait_take(&mut self) -> u64 {
        let mut pfd = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 10_000) };
        self.take()
    }
}

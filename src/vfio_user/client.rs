//! The client side of vfio-user, as a carrier for Ferry's NVMe driver
//! ([`ferry_nvme::host::pcie::PciFunction`]): Ferry's driver attaches an NVMe function served
//! over vfio-user (Ferry's own VFIOUSER endpoint, or SPDK's) as it would a PCI function bound
//! to vfio-pci.
//!
//! - The DMA arena is a sealed memfd (or a hugetlbfs file) mapped here and shared with the
//!   server once, with DMA_MAP, at [`ARENA_IOVA`].
//! - BAR0 register accesses are REGION_READ and REGION_WRITE messages whose replies are
//!   collected without blocking ([`PciFunction::poll_reg`]).
//! - Doorbells are posted REGION_WRITEs (no reply). When the socket is full, the latest value
//!   of each doorbell is kept and sent later: a doorbell holds a position, so nothing is lost.
//! - MSI-X vectors are eventfds given to the server with DEVICE_SET_IRQS.
//!
//! Connecting (version, device and region checks, DMA_MAP, SET_IRQS) happens once, blocking
//! with a timeout, on the thread of the RPC that attaches; afterwards nothing waits on the
//! server. Everything the server sends is checked: a malformed or unexpected message fails
//! the function, and the controller above it with it.
//!
//! Hand-written rather than the rust-vmm `vfio_user` crate's `Client`: that client blocks on
//! every request and owns its socket, where the driver needs register accesses that do not
//! block a reactor and doorbell writes from several threads.

use super::wire::{self, cmd, dma_flags, flags, irq, irq_set, region, region_flags, Header, HEADER_LEN};
use ferry_nvme::host::pcie::{DmaArena, PciFunction, RegAccess, RegOp};
use ferry_nvme::host::HostError;
use ferry_vhost_initiator::SharedMemory;
use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Where the server sees the arena (any address works; a fixed one keeps logs readable).
pub const ARENA_IOVA: u64 = 1 << 32;
/// Largest message the server may send the client (replies to register accesses are tiny).
const MAX_REPLY: usize = 4096;

/// Why connecting to a vfio-user endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A socket or memory operation failed.
    #[error("{step}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server refused a request.
    #[error("{step}: the server answered errno {errno}")]
    Refused {
        /// The request.
        step: &'static str,
        /// Its errno.
        errno: u32,
    },
    /// The server's answer is not what an NVMe PCI function gives.
    #[error("{step}: {reason}")]
    Unsuitable {
        /// The request.
        step: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn io_err(step: &'static str) -> impl FnOnce(std::io::Error) -> ClientError {
    move |source| ClientError::Io { step, source }
}

/// The socket and what is in flight on it.
struct Link {
    sock: UnixStream,
    next_id: u16,
    /// Bytes not yet sent, from `tx_pos`.
    tx: Vec<u8>,
    tx_pos: usize,
    /// Doorbell values that found the socket full, by BAR0 offset (the last one wins).
    doorbells: BTreeMap<u32, u32>,
    rx: Vec<u8>,
    /// Finished register accesses by message id.
    done: HashMap<u16, Result<u64, HostError>>,
    /// Register accesses waiting for their reply: id, bytes read (0 for a write).
    waiting: HashMap<u16, u32>,
    dead: Option<HostError>,
}

/// An NVMe function reached over vfio-user (see the module documentation).
pub struct VfioUserFunction {
    path: PathBuf,
    mem: SharedMemory,
    irqs: Vec<EventFd>,
    link: Mutex<Link>,
}

fn region_access(offset: u64, count: u32, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + data.len());
    p.extend_from_slice(&offset.to_le_bytes());
    p.extend_from_slice(&region::BAR0.to_le_bytes());
    p.extend_from_slice(&count.to_le_bytes());
    p.extend_from_slice(data);
    p
}

fn message(id: u16, command: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    let h = Header { id, command, size: (HEADER_LEN + payload.len()) as u32, flags, error: 0 };
    let mut m = h.encode().to_vec();
    m.extend_from_slice(payload);
    m
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Blocking request and reply during connect.
fn request(
    sock: &mut UnixStream,
    id: u16,
    command: u16,
    payload: &[u8],
    fds: &[RawFd],
    step: &'static str,
) -> Result<Vec<u8>, ClientError> {
    let m = message(id, command, flags::COMMAND, payload);
    if fds.is_empty() {
        sock.write_all(&m).map_err(io_err(step))?;
    } else {
        let sent = sock.send_with_fds(&[&m[..]], fds).map_err(|e| ClientError::Io { step, source: e.into() })?;
        if sent != m.len() {
            return Err(ClientError::Unsuitable { step, reason: format!("sent {sent} of {} bytes", m.len()) });
        }
    }
    let mut h = [0u8; HEADER_LEN];
    sock.read_exact(&mut h).map_err(io_err(step))?;
    let h = Header::decode(&h);
    let size = h.size as usize;
    if !(HEADER_LEN..=MAX_REPLY).contains(&size) || h.id != id || h.command != command || h.is_command() {
        return Err(ClientError::Unsuitable { step, reason: format!("bad reply header {h:?}") });
    }
    let mut payload = vec![0u8; size - HEADER_LEN];
    sock.read_exact(&mut payload).map_err(io_err(step))?;
    if h.flags & flags::ERROR != 0 {
        return Err(ClientError::Refused { step, errno: h.error });
    }
    Ok(payload)
}

impl VfioUserFunction {
    /// Connects to the endpoint socket `path`, shares an arena of `arena_len` bytes (from
    /// `hugetlbfs` when given, else a memfd) and asks for up to `vectors` MSI-X vectors.
    /// Blocks for at most about `timeout` per step.
    pub fn connect(
        path: &Path,
        arena_len: usize,
        vectors: u16,
        hugetlbfs: Option<&Path>,
        timeout: Duration,
    ) -> Result<Arc<VfioUserFunction>, ClientError> {
        let mut sock = UnixStream::connect(path).map_err(io_err("connecting"))?;
        sock.set_read_timeout(Some(timeout)).map_err(io_err("connecting"))?;
        sock.set_write_timeout(Some(timeout)).map_err(io_err("connecting"))?;
        let mut id = 0u16;
        let mut next = || {
            id = id.wrapping_add(1);
            id
        };
        // VERSION: 0.1, with the limits we keep to (one fd per message at most).
        let caps =
            r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":16}}"#;
        let mut p = Vec::new();
        p.extend_from_slice(&wire::MAJOR.to_le_bytes());
        p.extend_from_slice(&wire::MINOR.to_le_bytes());
        p.extend_from_slice(caps.as_bytes());
        p.push(0);
        let r = request(&mut sock, next(), cmd::VERSION, &p, &[], "VERSION")?;
        if r.len() < 4 || u16::from_le_bytes([r[0], r[1]]) != wire::MAJOR {
            return Err(ClientError::Unsuitable { step: "VERSION", reason: "not protocol 0.x".into() });
        }
        // The device: a PCI function with a readable, writable BAR0 and MSI-X.
        let mut p = vec![0u8; 16];
        p[0..4].copy_from_slice(&16u32.to_le_bytes());
        let r = request(&mut sock, next(), cmd::DEVICE_GET_INFO, &p, &[], "DEVICE_GET_INFO")?;
        if r.len() < 16 || le32(&r, 4) & wire::device_flags::PCI == 0 || le32(&r, 8) == 0 {
            return Err(ClientError::Unsuitable {
                step: "DEVICE_GET_INFO",
                reason: "not a PCI device with a BAR0".into(),
            });
        }
        let mut p = vec![0u8; 32];
        p[0..4].copy_from_slice(&32u32.to_le_bytes());
        p[8..12].copy_from_slice(&region::BAR0.to_le_bytes());
        let r = request(&mut sock, next(), cmd::DEVICE_GET_REGION_INFO, &p, &[], "DEVICE_GET_REGION_INFO")?;
        let rw = region_flags::READ | region_flags::WRITE;
        if r.len() < 32 || le32(&r, 4) & rw != rw || le64(&r, 16) < 0x2000 {
            return Err(ClientError::Unsuitable {
                step: "DEVICE_GET_REGION_INFO",
                reason: "BAR0 is not a read-write NVMe register file".into(),
            });
        }
        let mut p = vec![0u8; 16];
        p[0..4].copy_from_slice(&16u32.to_le_bytes());
        p[8..12].copy_from_slice(&irq::MSIX.to_le_bytes());
        let r = request(&mut sock, next(), cmd::DEVICE_GET_IRQ_INFO, &p, &[], "DEVICE_GET_IRQ_INFO")?;
        let msix = if r.len() >= 16 { le32(&r, 12) } else { 0 };
        // The arena, shared once.
        let mem = SharedMemory::new(arena_len, hugetlbfs).map_err(io_err("allocating the DMA arena"))?;
        let mut p = Vec::new();
        p.extend_from_slice(&32u32.to_le_bytes());
        p.extend_from_slice(&(dma_flags::READ | dma_flags::WRITE).to_le_bytes());
        p.extend_from_slice(&0u64.to_le_bytes());
        p.extend_from_slice(&ARENA_IOVA.to_le_bytes());
        p.extend_from_slice(&(arena_len as u64).to_le_bytes());
        request(&mut sock, next(), cmd::DMA_MAP, &p, &[mem.file().as_raw_fd()], "DMA_MAP")?;
        // MSI-X eventfds, one per vector asked for (the server may have fewer).
        let count = (vectors as u32).min(msix);
        let irqs: Vec<EventFd> = (0..count)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<_, _>>()
            .map_err(io_err("making eventfds"))?;
        if count > 0 {
            let mut p = vec![0u8; 20];
            p[0..4].copy_from_slice(&20u32.to_le_bytes());
            p[4..8].copy_from_slice(&(irq_set::DATA_EVENTFD | irq_set::ACTION_TRIGGER).to_le_bytes());
            p[8..12].copy_from_slice(&irq::MSIX.to_le_bytes());
            p[16..20].copy_from_slice(&count.to_le_bytes());
            let fds: Vec<RawFd> = irqs.iter().map(|e| e.as_raw_fd()).collect();
            request(&mut sock, next(), cmd::DEVICE_SET_IRQS, &p, &fds, "DEVICE_SET_IRQS")?;
        }
        sock.set_nonblocking(true).map_err(io_err("connecting"))?;
        let link = Link {
            sock,
            next_id: id,
            tx: Vec::new(),
            tx_pos: 0,
            doorbells: BTreeMap::new(),
            rx: Vec::new(),
            done: HashMap::new(),
            waiting: HashMap::new(),
            dead: None,
        };
        tracing::info!(socket = %path.display(), arena_len, vectors = count, "vfio-user: connected to the NVMe function");
        Ok(Arc::new(VfioUserFunction { path: path.to_path_buf(), mem, irqs, link: Mutex::new(link) }))
    }

    fn link(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Link {
    fn check(&self) -> Result<(), HostError> {
        self.dead.clone().map_or(Ok(()), Err)
    }

    fn die(&mut self, e: HostError) -> HostError {
        self.dead.get_or_insert(e).clone()
    }

    /// Sends what is queued, without blocking; doorbells kept for later go out once the
    /// queue drained.
    fn flush(&mut self) -> Result<(), HostError> {
        loop {
            while self.tx_pos < self.tx.len() {
                match self.sock.write(&self.tx[self.tx_pos..]) {
                    Ok(0) => return Err(self.die(HostError::Closed)),
                    Ok(n) => self.tx_pos += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.die(HostError::io("vfio-user send", e))),
                }
            }
            self.tx.clear();
            self.tx_pos = 0;
            if self.doorbells.is_empty() {
                return Ok(());
            }
            for (offset, value) in std::mem::take(&mut self.doorbells) {
                let id = self.take_id();
                let m = message(
                    id,
                    cmd::REGION_WRITE,
                    flags::COMMAND | flags::NO_REPLY,
                    &region_access(offset as u64, 4, &value.to_le_bytes()),
                );
                self.tx.extend_from_slice(&m);
            }
        }
    }

    fn take_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Reads what has arrived and files the replies.
    fn receive(&mut self) -> Result<(), HostError> {
        let mut buf = [0u8; 1024];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => return Err(self.die(HostError::Closed)),
                Ok(n) => self.rx.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.die(HostError::io("vfio-user receive", e))),
            }
        }
        while self.rx.len() >= HEADER_LEN {
            let h = Header::decode(&self.rx);
            let size = h.size as usize;
            if !(HEADER_LEN..=MAX_REPLY).contains(&size) {
                return Err(self.die(HostError::Unexpected(format!("a vfio-user message of {size} bytes"))));
            }
            if self.rx.len() < size {
                break;
            }
            let msg: Vec<u8> = self.rx.drain(..size).collect();
            let Some(count) = self.waiting.remove(&h.id).filter(|_| !h.is_command()) else {
                return Err(self.die(HostError::Unexpected(format!("vfio-user message {h:?}, which answers nothing"))));
            };
            let result = if h.flags & flags::ERROR != 0 {
                Err(HostError::Io { context: "BAR0 access", message: format!("errno {}", h.error) })
            } else if count == 0 {
                Ok(0)
            } else {
                // A read's reply: offset, region, count, then the data.
                let data = &msg[HEADER_LEN..];
                if data.len() != 16 + count as usize || le32(data, 12) != count {
                    return Err(self.die(HostError::Unexpected("a REGION_READ reply of the wrong size".into())));
                }
                Ok(if count == 8 { le64(data, 16) } else { le32(data, 16) as u64 })
            };
            self.done.insert(h.id, result);
        }
        Ok(())
    }
}

impl PciFunction for VfioUserFunction {
    fn arena(&self) -> DmaArena {
        DmaArena { vaddr: self.mem.user_addr() as *mut u8, iova: ARENA_IOVA, len: self.mem.len() }
    }

    fn start_reg(&self, access: RegAccess) -> Result<RegOp, HostError> {
        let mut l = self.link();
        l.check()?;
        let id = l.take_id();
        let (command, payload, count) = match access {
            RegAccess::Read32(o) => (cmd::REGION_READ, region_access(o as u64, 4, &[]), 4),
            RegAccess::Read64(o) => (cmd::REGION_READ, region_access(o as u64, 8, &[]), 8),
            RegAccess::Write32(o, v) => (cmd::REGION_WRITE, region_access(o as u64, 4, &v.to_le_bytes()), 0),
            RegAccess::Write64(o, v) => (cmd::REGION_WRITE, region_access(o as u64, 8, &v.to_le_bytes()), 0),
        };
        l.waiting.insert(id, count);
        let m = message(id, command, flags::COMMAND, &payload);
        l.tx.extend_from_slice(&m);
        l.flush()?;
        Ok(RegOp::Pending(id as u64))
    }

    fn poll_reg(&self, ticket: u64) -> Result<Option<u64>, HostError> {
        let mut l = self.link();
        l.check()?;
        l.flush()?;
        l.receive()?;
        match l.done.remove(&(ticket as u16)) {
            Some(r) => r.map(Some),
            None => Ok(None),
        }
    }

    fn ring(&self, offset: u32, value: u32) -> Result<(), HostError> {
        let mut l = self.link();
        l.check()?;
        if l.tx.is_empty() {
            let id = l.take_id();
            let m = message(
                id,
                cmd::REGION_WRITE,
                flags::COMMAND | flags::NO_REPLY,
                &region_access(offset as u64, 4, &value.to_le_bytes()),
            );
            l.tx.extend_from_slice(&m);
        } else {
            l.doorbells.insert(offset, value);
        }
        l.flush()
    }

    fn flush_doorbells(&self) -> Result<bool, HostError> {
        let mut l = self.link();
        if l.tx.is_empty() && l.doorbells.is_empty() {
            return l.check().map(|_| false);
        }
        l.flush()?;
        Ok(!l.tx.is_empty() || !l.doorbells.is_empty())
    }

    fn irq_fd(&self, vector: u16) -> Option<RawFd> {
        self.irqs.get(vector as usize).map(|e| e.as_raw_fd())
    }

    fn describe(&self) -> String {
        format!("vfio-user {}", self.path.display())
    }
}

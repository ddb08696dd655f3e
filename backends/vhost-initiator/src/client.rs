//! Connecting to a vhost-user-blk or vhost-user-scsi backend: feature and protocol
//! negotiation, the memory table, queue setup and the config space, on rust-vmm's `vhost`
//! frontend.

use super::blk::BlkQueue;
use super::memory::SharedMemory;
use super::scsi::{self, ScsiQueue};
use super::split::SplitQueue;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo, VringConfigData};

/// VHOST_F_LOG_ALL: the backend logs its writes to guest memory.
pub const LOG_ALL: u64 = 1 << 26;

/// Why connecting failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The vhost-user protocol failed.
    #[error("{step}: {source}")]
    Protocol {
        /// What was being done.
        step: &'static str,
        /// The error.
        source: vhost::Error,
    },
    /// Shared memory could not be set up.
    #[error("shared memory: {0}")]
    Memory(#[from] std::io::Error),
    /// The backend lacks something we need.
    #[error("{0}")]
    Unsupported(String),
    /// Connecting to the socket failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The backend did not answer in time.
    #[error("{step}: the backend did not answer within {timeout:?}")]
    Timeout {
        /// What was being done.
        step: &'static str,
        /// The time allowed for connecting and the whole handshake.
        timeout: Duration,
    },
}

fn step(step: &'static str) -> impl FnOnce(vhost::Error) -> ClientError {
    move |source| ClientError::Protocol { step, source }
}

/// Connection options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Queues to set up.
    pub num_queues: u16,
    /// Ring size.
    pub queue_size: u16,
    /// Shared memory size in bytes.
    pub mem_size: usize,
    /// A hugetlbfs directory to take memory from instead of a memfd.
    pub hugetlbfs: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options { num_queues: 1, queue_size: 128, mem_size: 64 << 20, hugetlbfs: None }
    }
}

/// The virtio-blk config space, as far as we use it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlkConfig {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Most segments per request.
    pub seg_max: u32,
    /// Logical block size.
    pub blk_size: u32,
    /// Queues the device has.
    pub num_queues: u16,
    /// Most sectors per discard.
    pub max_discard_sectors: u32,
}

impl BlkConfig {
    /// Bytes of the config space read (through `write_zeroes_may_unmap` and its padding).
    pub const SIZE: usize = 60;

    /// Decodes the fields we use from at least [`BlkConfig::SIZE`] bytes of config space.
    pub fn decode(payload: &[u8]) -> BlkConfig {
        let u32_at = |o: usize| u32::from_le_bytes(payload[o..o + 4].try_into().unwrap());
        BlkConfig {
            capacity: u64::from_le_bytes(payload[0..8].try_into().unwrap()),
            seg_max: u32_at(12),
            blk_size: u32_at(20),
            num_queues: u16::from_le_bytes(payload[34..36].try_into().unwrap()),
            max_discard_sectors: u32_at(36),
        }
    }
}

/// The virtio-scsi config space (virtio 1.2, 5.6.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScsiConfig {
    /// Request queues (control and event queues not counted).
    pub num_queues: u32,
    /// Most segments per command.
    pub seg_max: u32,
    /// Most sectors per command.
    pub max_sectors: u32,
    /// Most commands in flight per LUN.
    pub cmd_per_lun: u32,
    /// Size of an event buffer the driver should post.
    pub event_info_size: u32,
    /// Sense bytes the device writes (the driver may change it).
    pub sense_size: u32,
    /// CDB bytes the driver sends (the driver may change it).
    pub cdb_size: u32,
    /// Highest channel (0).
    pub max_channel: u16,
    /// Highest target (at most 255).
    pub max_target: u16,
    /// Highest LUN (at most 16383).
    pub max_lun: u32,
}

impl ScsiConfig {
    /// Bytes of the config space.
    pub const SIZE: usize = 36;

    /// Decodes the config space (little-endian fields).
    pub fn decode(b: &[u8; Self::SIZE]) -> ScsiConfig {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
        ScsiConfig {
            num_queues: u32_at(0),
            seg_max: u32_at(4),
            max_sectors: u32_at(8),
            cmd_per_lun: u32_at(12),
            event_info_size: u32_at(16),
            sense_size: u32_at(20),
            cdb_size: u32_at(24),
            max_channel: u16_at(28),
            max_target: u16_at(30),
            max_lun: u32_at(32),
        }
    }
}

/// virtio-blk feature bits we know.
pub mod feature {
    /// seg_max valid.
    pub const SEG_MAX: u64 = 1 << 2;
    /// Read-only.
    pub const RO: u64 = 1 << 5;
    /// blk_size valid.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// Flush.
    pub const FLUSH: u64 = 1 << 9;
    /// Multiqueue.
    pub const MQ: u64 = 1 << 12;
    /// Discard.
    pub const DISCARD: u64 = 1 << 13;
    /// Write zeroes.
    pub const WRITE_ZEROES: u64 = 1 << 14;
    /// Indirect descriptors.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// Virtio 1.
    pub const VERSION_1: u64 = 1 << 32;
}

/// The memory-table entry for `mem` placed at guest address `gpa`.
fn region_info(mem: &SharedMemory, gpa: u64) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: gpa,
        memory_size: mem.len() as u64,
        userspace_addr: mem.user_addr(),
        mmap_offset: 0,
        mmap_handle: mem.file().as_raw_fd(),
    }
}

/// What connecting and negotiating leaves behind, whatever the device type.
pub(crate) struct Link {
    pub(crate) frontend: Frontend,
    pub(crate) mem: Arc<SharedMemory>,
    pub(crate) rings: Vec<SplitQueue>,
    pub(crate) features: u64,
    pub(crate) protocol: bool,
    pub(crate) device_queues: Option<u64>,
}

/// Connects to a Unix socket, waiting at most `timeout` (a listener whose backlog is full
/// would otherwise block `connect` for as long as it does not accept).
fn connect_unix(path: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    let timeout_err = || ClientError::Timeout { step: "connect", timeout };
    // SAFETY: plain socket(2) call; the fd is owned by the UnixStream right after.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(ClientError::Connect(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // Unix connect(2) waits for backlog room for at most the send timeout.
    stream.set_write_timeout(Some(timeout)).map_err(ClientError::Connect)?;
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ClientError::Connect(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG)));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    loop {
        // SAFETY: addr is a valid sockaddr_un of `len` bytes for the duration of the call.
        let rc = unsafe { libc::connect(stream.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) };
        if rc == 0 {
            return Ok(stream);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::ETIMEDOUT) => return Err(timeout_err()),
            _ => return Err(ClientError::Connect(e)),
        }
    }
}

/// Bounds a whole handshake: if it is not finished within its time, the socket is shut down,
/// which wakes any blocked send or receive (a silent or trickling peer cannot stretch it).
struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<bool>>,
    timeout: Duration,
}

impl Watchdog {
    fn arm(stream: &UnixStream, timeout: Duration) -> Result<Watchdog, ClientError> {
        let sock = stream.try_clone().map_err(ClientError::Connect)?;
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("vhost_handshake_timeout".into())
            .spawn(move || {
                let expired = matches!(wait.recv_timeout(timeout), Err(std::sync::mpsc::RecvTimeoutError::Timeout));
                if expired {
                    let _ = sock.shutdown(std::net::Shutdown::Both);
                }
                expired
            })
            .map_err(ClientError::Connect)?;
        Ok(Watchdog { done: Some(done), thread: Some(thread), timeout })
    }

    /// Stops the watch; an error after it fired becomes [`ClientError::Timeout`].
    fn finish<T>(mut self, result: Result<T, ClientError>) -> Result<T, ClientError> {
        drop(self.done.take());
        let expired = self.thread.take().is_some_and(|t| t.join().unwrap_or(false));
        match result {
            Err(ClientError::Protocol { step, .. }) if expired => {
                Err(ClientError::Timeout { step, timeout: self.timeout })
            }
            Err(_) if expired => Err(ClientError::Timeout { step: "handshake", timeout: self.timeout }),
            // Finished just as it fired: the socket is shut down, so the link is useless.
            Ok(_) if expired => Err(ClientError::Timeout { step: "handshake", timeout: self.timeout }),
            other => other,
        }
    }
}

impl Link {
    /// Connects to `path`: with a `timeout`, connecting and the whole handshake (up to the
    /// config space) must finish within it, else [`ClientError::Timeout`].
    fn open(
        path: &Path,
        num_queues: u16,
        timeout: Option<Duration>,
    ) -> Result<(Frontend, Option<Watchdog>), ClientError> {
        match timeout {
            None => Ok((Frontend::connect(path, num_queues as u64).map_err(step("connect"))?, None)),
            Some(t) => {
                let stream = connect_unix(path, t)?;
                stream.set_write_timeout(None).map_err(ClientError::Connect)?;
                let watchdog = Watchdog::arm(&stream, t)?;
                Ok((Frontend::from_stream(stream, num_queues as u64), Some(watchdog)))
            }
        }
    }

    /// Negotiates `want` (VERSION_1 is required), shares memory and sets up `num_queues`
    /// rings (virtqueues 0..num_queues).
    fn negotiate(mut frontend: Frontend, opts: &Options, num_queues: u16, want: u64) -> Result<Link, ClientError> {
        frontend.set_owner().map_err(step("SET_OWNER"))?;
        let offered = frontend.get_features().map_err(step("GET_FEATURES"))?;
        let features = offered & want;
        if features & feature::VERSION_1 == 0 {
            return Err(ClientError::Unsupported("the backend does not offer VIRTIO_F_VERSION_1".into()));
        }
        frontend.set_features(features).map_err(step("SET_FEATURES"))?;
        let protocol = features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        let mut device_queues = None;
        if protocol {
            let pf = frontend.get_protocol_features().map_err(step("GET_PROTOCOL_FEATURES"))?;
            let want = VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::INFLIGHT_SHMFD
                | VhostUserProtocolFeatures::LOG_SHMFD;
            frontend.set_protocol_features(pf & want).map_err(step("SET_PROTOCOL_FEATURES"))?;
            if pf.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every request then waits for the backend's answer (memory-table changes
                // are applied before they return).
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if pf.contains(VhostUserProtocolFeatures::MQ) {
                let n = frontend.get_queue_num().map_err(step("GET_QUEUE_NUM"))?;
                if n < num_queues as u64 {
                    return Err(ClientError::Unsupported(format!("the backend has {n} queues, {num_queues} asked")));
                }
                device_queues = Some(n);
            }
        }
        let mem = Arc::new(SharedMemory::new(opts.mem_size, opts.hugetlbfs.as_deref())?);
        frontend.set_mem_table(&[region_info(&mem, 0)]).map_err(step("SET_MEM_TABLE"))?;
        let mut rings = Vec::new();
        for q in 0..num_queues as usize {
            let ring = SplitQueue::new(mem.clone(), opts.queue_size)
                .ok_or_else(|| ClientError::Unsupported("shared memory too small for the rings".into()))?;
            let (desc, avail, used) = ring.addresses();
            frontend.set_vring_num(q, opts.queue_size).map_err(step("SET_VRING_NUM"))?;
            let config = VringConfigData {
                queue_max_size: opts.queue_size,
                queue_size: opts.queue_size,
                flags: 0,
                desc_table_addr: mem.host_addr(desc),
                used_ring_addr: mem.host_addr(used),
                avail_ring_addr: mem.host_addr(avail),
                log_addr: None,
            };
            frontend.set_vring_addr(q, &config).map_err(step("SET_VRING_ADDR"))?;
            frontend.set_vring_base(q, 0).map_err(step("SET_VRING_BASE"))?;
            frontend.set_vring_call(q, ring.call_fd()).map_err(step("SET_VRING_CALL"))?;
            frontend.set_vring_kick(q, ring.kick_fd()).map_err(step("SET_VRING_KICK"))?;
            if protocol {
                frontend.set_vring_enable(q, true).map_err(step("SET_VRING_ENABLE"))?;
            }
            rings.push(ring);
        }
        Ok(Link { frontend, mem, rings, features, protocol, device_queues })
    }

    /// `len` bytes of the config space, if the backend serves it (CONFIG protocol feature).
    fn config(&mut self, len: u32) -> Option<Vec<u8>> {
        if !self.protocol {
            return None;
        }
        let buf = vec![0u8; len as usize];
        let (_, payload) = self.frontend.get_config(0, len, VhostUserConfigFlags::WRITABLE, &buf).ok()?;
        (payload.len() >= len as usize).then(|| payload.to_vec())
    }

    fn add_region(&mut self, gpa: u64, len: usize) -> Result<Arc<SharedMemory>, ClientError> {
        let mem = Arc::new(SharedMemory::new(len, None)?);
        self.frontend.add_mem_region(&region_info(&mem, gpa)).map_err(step("ADD_MEM_REG"))?;
        Ok(mem)
    }

    fn remove_region(&mut self, gpa: u64, mem: &SharedMemory) -> Result<(), ClientError> {
        self.frontend.remove_mem_region(&region_info(mem, gpa)).map_err(step("REM_MEM_REG"))
    }

    fn stop_queue(&mut self, i: usize) -> Result<u32, ClientError> {
        self.frontend.get_vring_base(i).map_err(step("GET_VRING_BASE"))
    }

    fn get_inflight_fd(&mut self, num_queues: u16, queue_size: u16) -> Result<(Inflight, File), ClientError> {
        let ask = VhostUserInflight { num_queues, queue_size, ..Default::default() };
        let (reply, file) = self.frontend.get_inflight_fd(&ask).map_err(step("GET_INFLIGHT_FD"))?;
        let area = Inflight {
            mmap_size: reply.mmap_size,
            mmap_offset: reply.mmap_offset,
            num_queues: reply.num_queues,
            queue_size: reply.queue_size,
        };
        Ok((area, file))
    }

    fn set_inflight_fd(&mut self, area: &Inflight, fd: &impl AsRawFd) -> Result<(), ClientError> {
        let msg = VhostUserInflight {
            mmap_size: area.mmap_size,
            mmap_offset: area.mmap_offset,
            num_queues: area.num_queues,
            queue_size: area.queue_size,
        };
        self.frontend.set_inflight_fd(&msg, fd.as_raw_fd()).map_err(step("SET_INFLIGHT_FD"))
    }
}

/// An inflight area's description (GET_INFLIGHT_FD's reply, SET_INFLIGHT_FD's request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inflight {
    /// Bytes of the area.
    pub mmap_size: u64,
    /// Where it starts in its file.
    pub mmap_offset: u64,
    /// Queues it covers.
    pub num_queues: u16,
    /// Ring size it was made for.
    pub queue_size: u16,
}

/// A connected vhost-user-blk initiator.
pub struct Client {
    link: Link,
    queues: Vec<BlkQueue>,
    config: BlkConfig,
    /// Our end of a back-end request channel a frontend's handshake set up.
    backend_channel: Option<UnixStream>,
}

impl Client {
    /// Connects to the backend at `path` and sets up `opts.num_queues` queues.
    pub fn connect(path: &Path, opts: &Options) -> Result<Client, ClientError> {
        Self::connect_with(path, opts, None)
    }

    /// As [`Client::connect`], but connecting and the whole handshake must finish within
    /// `timeout` (a silent or slow backend gets [`ClientError::Timeout`], never a hang).
    pub fn connect_timeout(path: &Path, opts: &Options, timeout: Duration) -> Result<Client, ClientError> {
        Self::connect_with(path, opts, Some(timeout))
    }

    fn connect_with(path: &Path, opts: &Options, timeout: Option<Duration>) -> Result<Client, ClientError> {
        let (frontend, watchdog) = Link::open(path, opts.num_queues, timeout)?;
        let result = Self::handshake(frontend, opts);
        match watchdog {
            Some(w) => w.finish(result),
            None => result,
        }
    }

    fn handshake(frontend: Frontend, opts: &Options) -> Result<Client, ClientError> {
        let want = feature::VERSION_1
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | feature::SEG_MAX
            | feature::BLK_SIZE
            | feature::FLUSH
            | feature::MQ
            | feature::DISCARD
            | feature::WRITE_ZEROES
            | feature::RO
            | feature::INDIRECT_DESC;
        let mut link = Link::negotiate(frontend, opts, opts.num_queues, want)?;
        let config = link.config(BlkConfig::SIZE as u32).map(|p| BlkConfig::decode(&p)).unwrap_or_default();
        Self::from_link(link, config)
    }

    /// A client over a link some frontend's handshake set up, with the config it read.
    pub(crate) fn from_link(mut link: Link, config: BlkConfig) -> Result<Client, ClientError> {
        let mut queues = Vec::new();
        for ring in std::mem::take(&mut link.rings) {
            queues.push(
                BlkQueue::new(ring, link.mem.clone())
                    .ok_or_else(|| ClientError::Unsupported("shared memory too small for request slots".into()))?,
            );
        }
        Ok(Client { link, queues, config, backend_channel: None })
    }

    /// Keeps `channel` (our end of the back-end request channel) open as long as the client.
    pub(crate) fn keep_alive(&mut self, channel: Option<UnixStream>) {
        self.backend_channel = channel;
    }

    /// The device's config space.
    pub fn config(&self) -> BlkConfig {
        self.config
    }

    /// Negotiated features.
    pub fn features(&self) -> u64 {
        self.link.features
    }

    /// The backend's queue count (GET_QUEUE_NUM), if it has the MQ protocol feature.
    pub fn device_queues(&self) -> Option<u64> {
        self.link.device_queues
    }

    /// The shared memory (allocate data buffers here).
    pub fn mem(&self) -> &Arc<SharedMemory> {
        &self.link.mem
    }

    /// Takes the queues (to drive them, e.g. from one thread each).
    pub fn take_queues(&mut self) -> Vec<BlkQueue> {
        std::mem::take(&mut self.queues)
    }

    /// The queue `i`.
    pub fn queue(&mut self, i: usize) -> &mut BlkQueue {
        &mut self.queues[i]
    }

    /// Adds `len` bytes of new memory at guest address `gpa` (ADD_MEM_REG, memory hotplug);
    /// offset 0 of the returned memory is guest address `gpa`.
    pub fn add_region(&mut self, gpa: u64, len: usize) -> Result<Arc<SharedMemory>, ClientError> {
        self.link.add_region(gpa, len)
    }

    /// Removes a region added with [`Client::add_region`] (REM_MEM_REG).
    pub fn remove_region(&mut self, gpa: u64, mem: &SharedMemory) -> Result<(), ClientError> {
        self.link.remove_region(gpa, mem)
    }

    /// Stops queue `i` (GET_VRING_BASE) and returns where the backend stopped.
    pub fn stop_queue(&mut self, i: usize) -> Result<u32, ClientError> {
        self.link.stop_queue(i)
    }

    /// Asks the backend for an inflight area (GET_INFLIGHT_FD; INFLIGHT_SHMFD negotiated).
    pub fn get_inflight_fd(&mut self, num_queues: u16, queue_size: u16) -> Result<(Inflight, File), ClientError> {
        self.link.get_inflight_fd(num_queues, queue_size)
    }

    /// Gives the backend a dirty log of `size` bytes at `offset` of `log` (SET_LOG_BASE with
    /// LOG_SHMFD) and turns logging on (SET_FEATURES with VHOST_F_LOG_ALL), as QEMU does when
    /// a migration starts. Tests hand hostile logs too.
    pub fn start_dirty_log(
        &mut self,
        log: &(impl AsRawFd + ?Sized),
        size: u64,
        offset: u64,
    ) -> Result<(), ClientError> {
        let region = VhostUserDirtyLogRegion { mmap_size: size, mmap_offset: offset, mmap_handle: log.as_raw_fd() };
        self.link.frontend.set_log_base(0, Some(region)).map_err(step("SET_LOG_BASE"))?;
        self.set_log_all(true)
    }

    /// Turns VHOST_F_LOG_ALL on or off (SET_FEATURES), leaving the log as it is.
    pub fn set_log_all(&mut self, on: bool) -> Result<(), ClientError> {
        let features = if on { self.link.features | LOG_ALL } else { self.link.features };
        self.link.frontend.set_features(features).map_err(step("SET_FEATURES"))
    }

    /// Hands an inflight area to the backend (SET_INFLIGHT_FD), as QEMU does on every start;
    /// tests send hostile ones.
    pub fn set_inflight_fd(&mut self, area: &Inflight, fd: &impl AsRawFd) -> Result<(), ClientError> {
        self.link.set_inflight_fd(area, fd)
    }
}

/// A connected vhost-user-scsi initiator: virtqueue 0 is the control queue, 1 the event queue,
/// 2.. the request queues.
pub struct ScsiClient {
    link: Link,
    /// By virtqueue index; `None` once taken.
    queues: Vec<Option<ScsiQueue>>,
    config: ScsiConfig,
}

impl ScsiClient {
    /// Connects to the backend at `path` and sets up the control queue, the event queue and
    /// `opts.num_queues` request queues (so `2 + opts.num_queues` virtqueues in all; the
    /// backend's GET_QUEUE_NUM counts all of them). Negotiates VERSION_1, HOTPLUG, CHANGE and
    /// INOUT (bidirectional commands) if offered, and INDIRECT_DESC for hostile tests.
    pub fn connect(path: &Path, opts: &Options) -> Result<ScsiClient, ClientError> {
        let want = feature::VERSION_1
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | scsi::feature::INOUT
            | scsi::feature::HOTPLUG
            | scsi::feature::CHANGE
            | feature::INDIRECT_DESC;
        let total = opts
            .num_queues
            .checked_add(scsi::queue::REQUEST)
            .ok_or_else(|| ClientError::Unsupported("too many request queues".into()))?;
        let (frontend, _) = Link::open(path, total, None)?;
        let mut link = Link::negotiate(frontend, opts, total, want)?;
        let mut queues = Vec::new();
        for ring in std::mem::take(&mut link.rings) {
            queues.push(Some(
                ScsiQueue::new(ring, link.mem.clone())
                    .ok_or_else(|| ClientError::Unsupported("shared memory too small for request slots".into()))?,
            ));
        }
        let config = link
            .config(ScsiConfig::SIZE as u32)
            .map(|p| ScsiConfig::decode(p[..ScsiConfig::SIZE].try_into().unwrap()))
            .unwrap_or_default();
        Ok(ScsiClient { link, queues, config })
    }

    /// The device's config space (all zero if the backend does not serve it).
    pub fn config(&self) -> ScsiConfig {
        self.config
    }

    /// Negotiated features.
    pub fn features(&self) -> u64 {
        self.link.features
    }

    /// The backend's queue count (GET_QUEUE_NUM, control and event queues included), if it
    /// has the MQ protocol feature.
    pub fn device_queues(&self) -> Option<u64> {
        self.link.device_queues
    }

    /// The shared memory (allocate data buffers here).
    pub fn mem(&self) -> &Arc<SharedMemory> {
        &self.link.mem
    }

    /// Virtqueue `vq` (0 control, 1 event, 2.. requests). Panics if it was taken.
    pub fn queue(&mut self, vq: usize) -> &mut ScsiQueue {
        self.queues[vq].as_mut().expect("the queue was taken")
    }

    /// The control queue.
    pub fn control(&mut self) -> &mut ScsiQueue {
        self.queue(scsi::queue::CONTROL as usize)
    }

    /// The event queue.
    pub fn event(&mut self) -> &mut ScsiQueue {
        self.queue(scsi::queue::EVENT as usize)
    }

    /// Request queue `i` (virtqueue `2 + i`).
    pub fn request(&mut self, i: usize) -> &mut ScsiQueue {
        self.queue(scsi::queue::REQUEST as usize + i)
    }

    /// Takes the request queues (to drive them, e.g. from one thread each); the control and
    /// event queues stay.
    pub fn take_request_queues(&mut self) -> Vec<ScsiQueue> {
        self.queues.iter_mut().skip(scsi::queue::REQUEST as usize).filter_map(Option::take).collect()
    }

    /// Adds `len` bytes of new memory at guest address `gpa` (ADD_MEM_REG, memory hotplug);
    /// offset 0 of the returned memory is guest address `gpa`.
    pub fn add_region(&mut self, gpa: u64, len: usize) -> Result<Arc<SharedMemory>, ClientError> {
        self.link.add_region(gpa, len)
    }

    /// Removes a region added with [`ScsiClient::add_region`] (REM_MEM_REG).
    pub fn remove_region(&mut self, gpa: u64, mem: &SharedMemory) -> Result<(), ClientError> {
        self.link.remove_region(gpa, mem)
    }

    /// Stops virtqueue `vq` (GET_VRING_BASE) and returns where the backend stopped.
    pub fn stop_queue(&mut self, vq: usize) -> Result<u32, ClientError> {
        self.link.stop_queue(vq)
    }
}

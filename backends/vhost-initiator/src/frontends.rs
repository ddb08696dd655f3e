//! Attaching to a vhost-user-blk backend the way each real frontend does: the same messages,
//! in the same order, with the same payload sizes and the same checks on the replies, read
//! from each one's source:
//!
//! - QEMU 10 (`hw/block/vhost-user-blk.c`, `hw/virtio/vhost.c`, `vhost-user.c`): backend
//!   init (features, protocol features, queue count, memory slots, back-end channel), then
//!   SET_OWNER, GET_FEATURES, a masked SET_VRING_CALL per queue, GET_CONFIG of
//!   `virtio_get_config_size()` bytes (57 with discard and write-zeroes); at start
//!   SET_FEATURES, GET/SET_INFLIGHT_FD, SET_FEATURES, ADD_MEM_REG per region, per queue
//!   NUM/BASE/ADDR/KICK/CALL, then SET_VRING_ENABLE on every queue and the guest's call fds.
//! - SPDK's virtio-user (`lib/virtio/virtio_vhost_user.c`, `bdev_virtio_blk.c`): SET_OWNER,
//!   GET/SET_FEATURES, GET/SET_PROTOCOL_FEATURES (MQ and CONFIG only, no REPLY_ACK), one
//!   GET_CONFIG of its whole `struct vhost_user_config` (offset 0, size 256, 268 payload
//!   bytes; the reply must be 268 bytes too) per config field it reads, SET_VRING_ENABLE
//!   before a queue has anything else, then GET_QUEUE_NUM, every SET_VRING_CALL, SET_MEM_TABLE
//!   with guest addresses equal to its virtual addresses, GET_FEATURES as a barrier, and per
//!   queue NUM/BASE/ADDR/KICK.
//! - DPDK's virtio-user (`drivers/net/virtio/virtio_user/`): no GET_CONFIG over vhost-user;
//!   every SET_VRING_CALL first, SET_MEM_TABLE with NEED_REPLY when REPLY_ACK is there,
//!   per queue NUM/BASE/ADDR/KICK, and only then SET_VRING_ENABLE (of queue pair 0: 0 and 1).
//! - cloud-hypervisor (`vu_common_ctrl.rs`, rust-vmm frontend): GET_PROTOCOL_FEATURES before
//!   any SET_FEATURES, NEED_REPLY on every request once REPLY_ACK is acked, GET_CONFIG of its
//!   60-byte `VirtioBlockConfig`; at activation SET_FEATURES, SET_MEM_TABLE, inflight, per
//!   queue NUM/ADDR/BASE/CALL/KICK, then SET_VRING_ENABLE on all.
//! - crosvm (`vhost_user_frontend`, rust-vmm frontend): SET_FEATURES with only
//!   PROTOCOL_FEATURES before the protocol features, the guest's own config accesses as
//!   GET_CONFIGs of a few bytes at their offsets, the full SET_FEATURES at activation.

use crate::client::{BlkConfig, Client, ClientError, Link, Options};
use crate::memory::SharedMemory;
use crate::split::SplitQueue;
use crate::wire::{payload, req, Exchange, Wire, WireError};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;
use vhost::vhost_user::Frontend;

/// A frontend whose way of attaching is reproduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendKind {
    /// QEMU's `vhost-user-blk-pci`.
    Qemu,
    /// SPDK's virtio-user (`bdev_virtio_attach_controller -t user`).
    Spdk,
    /// DPDK's virtio-user.
    Dpdk,
    /// cloud-hypervisor.
    CloudHypervisor,
    /// crosvm.
    Crosvm,
}

impl FrontendKind {
    /// Every frontend reproduced.
    pub const ALL: [FrontendKind; 5] = [
        FrontendKind::Qemu,
        FrontendKind::Spdk,
        FrontendKind::Dpdk,
        FrontendKind::CloudHypervisor,
        FrontendKind::Crosvm,
    ];
}

/// Why attaching failed.
#[derive(Debug, Error)]
pub enum FrontendError {
    /// A message exchange failed, or its reply is one the frontend refuses.
    #[error("{kind:?}: {source}")]
    Wire {
        /// The frontend imitated.
        kind: FrontendKind,
        /// What failed.
        source: WireError,
    },
    /// Setting up the client side failed.
    #[error("{kind:?}: {source}")]
    Client {
        /// The frontend imitated.
        kind: FrontendKind,
        /// What failed.
        source: ClientError,
    },
}

/// virtio and vhost-user feature bits used here.
mod bit {
    pub const SIZE_MAX: u64 = 1 << 1;
    pub const SEG_MAX: u64 = 1 << 2;
    pub const GEOMETRY: u64 = 1 << 4;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const TOPOLOGY: u64 = 1 << 10;
    pub const CONFIG_WCE: u64 = 1 << 11;
    pub const MQ: u64 = 1 << 12;
    pub const DISCARD: u64 = 1 << 13;
    pub const WRITE_ZEROES: u64 = 1 << 14;
    pub const INDIRECT_DESC: u64 = 1 << 28;
    pub const EVENT_IDX: u64 = 1 << 29;
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    pub const VERSION_1: u64 = 1 << 32;

    pub const P_MQ: u64 = 1 << 0;
    pub const P_LOG_SHMFD: u64 = 1 << 1;
    pub const P_REPLY_ACK: u64 = 1 << 3;
    pub const P_BACKEND_REQ: u64 = 1 << 5;
    pub const P_CONFIG: u64 = 1 << 9;
    pub const P_INFLIGHT_SHMFD: u64 = 1 << 12;
    pub const P_CONFIGURE_MEM_SLOTS: u64 = 1 << 15;

    /// The virtio-blk bits a guest driver (Linux) takes: what QEMU and cloud-hypervisor pass.
    pub const GUEST_BLK: u64 = SIZE_MAX
        | SEG_MAX
        | GEOMETRY
        | RO
        | BLK_SIZE
        | FLUSH
        | TOPOLOGY
        | CONFIG_WCE
        | MQ
        | DISCARD
        | WRITE_ZEROES
        | INDIRECT_DESC
        | VERSION_1;
    /// SPDK's `VIRTIO_BLK_DEV_SUPPORTED_FEATURES`, VERSION_1 and PROTOCOL_FEATURES.
    pub const SPDK_BLK: u64 = SIZE_MAX
        | SEG_MAX
        | BLK_SIZE
        | TOPOLOGY
        | MQ
        | RO
        | DISCARD
        | FLUSH
        | EVENT_IDX
        | VERSION_1
        | PROTOCOL_FEATURES;
}

/// SPDK's and DPDK's `VHOST_USER_MAX_CONFIG_SIZE`.
const SPDK_CONFIG_REGION: usize = 256;
/// QEMU's virtio-blk config size with DISCARD and WRITE_ZEROES: through
/// `write_zeroes_may_unmap` (`virtio_blk_cfg_size_params`).
const QEMU_BLK_CONFIG: u32 = 57;
/// How long a reply may take before the attach fails.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Ring flag: log used-ring writes (VHOST_VRING_F_LOG), unset by every frontend here at start.
const NO_LOG: u32 = 0;

/// A per-queue message.
#[derive(Clone, Copy)]
enum Step {
    Num,
    Base,
    Addr,
    Kick,
    Call,
    Enable,
}

/// One attach in progress.
struct Attach<'a> {
    kind: FrontendKind,
    wire: Wire,
    opts: &'a Options,
    mem: Arc<SharedMemory>,
    rings: Vec<SplitQueue>,
    features: u64,
    protocol: u64,
    device_queues: Option<u64>,
    config: Vec<u8>,
    /// Our end of the back-end request channel (kept open for the session).
    backend_channel: Option<UnixStream>,
}

impl Attach<'_> {
    fn err(&self, source: WireError) -> FrontendError {
        FrontendError::Wire { kind: self.kind, source }
    }

    fn send(&mut self, request: u32, body: &[u8]) -> Result<(), FrontendError> {
        // With REPLY_ACK, rust-vmm's frontend (cloud-hypervisor's, crosvm's) asks for an ack
        // on every request that has no reply of its own.
        let acks = self.protocol & bit::P_REPLY_ACK != 0
            && matches!(self.kind, FrontendKind::CloudHypervisor | FrontendKind::Crosvm);
        let r = if acks { self.wire.call_ack(request, body, &[]) } else { self.wire.send(request, 0, body, &[]) };
        r.map_err(|e| self.err(e))
    }

    fn call(&mut self, request: u32, body: &[u8], reply: usize) -> Result<Vec<u8>, FrontendError> {
        self.wire.call(request, body, reply).map_err(|e| self.err(e))
    }

    fn get_u64(&mut self, request: u32) -> Result<u64, FrontendError> {
        Ok(payload::as_u64(&self.call(request, &[], 8)?))
    }

    fn set_u64(&mut self, request: u32, v: u64) -> Result<(), FrontendError> {
        self.send(request, &payload::u64(v))
    }

    fn with_fd(&mut self, request: u32, body: &[u8], fd: &impl AsRawFd, ack: bool) -> Result<(), FrontendError> {
        let fds = [fd.as_raw_fd()];
        let r = if ack { self.wire.call_ack(request, body, &fds) } else { self.wire.send(request, 0, body, &fds) };
        r.map_err(|e| self.err(e))
    }

    fn acked(&self, p: u64) -> bool {
        self.protocol & p != 0
    }

    /// GET_CONFIG of `size` bytes at `offset`, sending a region of `region` bytes; the reply
    /// must have the request's payload size, as every frontend checks.
    fn get_config(&mut self, offset: u32, size: u32, region: usize) -> Result<Vec<u8>, FrontendError> {
        let body = payload::config(offset, size, 0, &vec![0u8; region]);
        let reply = self.call(req::GET_CONFIG, &body, body.len())?;
        Ok(reply[12..].to_vec())
    }

    fn ring(&self, q: usize) -> &SplitQueue {
        &self.rings[q]
    }

    fn call_fd(&mut self, q: usize) -> Result<(), FrontendError> {
        let fd = self.rings[q].call_fd().as_raw_fd();
        self.wire.send(req::SET_VRING_CALL, 0, &payload::u64(q as u64), &[fd]).map_err(|e| self.err(e))
    }

    fn kick_fd(&mut self, q: usize) -> Result<(), FrontendError> {
        let fd = self.rings[q].kick_fd().as_raw_fd();
        self.wire.send(req::SET_VRING_KICK, 0, &payload::u64(q as u64), &[fd]).map_err(|e| self.err(e))
    }

    fn vring_num(&mut self, q: usize) -> Result<(), FrontendError> {
        self.send(req::SET_VRING_NUM, &payload::state(q as u32, self.opts.queue_size as u32))
    }

    fn vring_base(&mut self, q: usize) -> Result<(), FrontendError> {
        self.send(req::SET_VRING_BASE, &payload::state(q as u32, 0))
    }

    fn vring_addr(&mut self, q: usize) -> Result<(), FrontendError> {
        let (desc, avail, used) = self.ring(q).addresses();
        let m = &self.mem;
        let body = payload::vring_addr(q as u32, NO_LOG, m.host_addr(desc), m.host_addr(used), m.host_addr(avail), 0);
        self.send(req::SET_VRING_ADDR, &body)
    }

    /// Runs `steps` for every queue in turn (queue 0's steps, then queue 1's, ...).
    fn each_queue(&mut self, steps: &[Step]) -> Result<(), FrontendError> {
        for q in 0..self.rings.len() {
            for step in steps {
                match step {
                    Step::Num => self.vring_num(q)?,
                    Step::Base => self.vring_base(q)?,
                    Step::Addr => self.vring_addr(q)?,
                    Step::Kick => self.kick_fd(q)?,
                    Step::Call => self.call_fd(q)?,
                    Step::Enable => self.vring_enable(q, true)?,
                }
            }
        }
        Ok(())
    }

    fn vring_enable(&mut self, q: usize, on: bool) -> Result<(), FrontendError> {
        self.send(req::SET_VRING_ENABLE, &payload::state(q as u32, on as u32))
    }

    fn region(&self) -> Vec<u8> {
        payload::region(self.mem.gpa_base(), self.mem.len() as u64, self.mem.user_addr(), 0)
    }

    fn set_mem_table(&mut self, ack: bool) -> Result<(), FrontendError> {
        let body = payload::mem_table(&[self.region()]);
        let file = self.mem.clone();
        self.with_fd(req::SET_MEM_TABLE, &body, file.file(), ack)
    }

    fn add_mem_reg(&mut self, ack: bool) -> Result<(), FrontendError> {
        let mut body = vec![0u8; 8];
        body.extend_from_slice(&self.region());
        let file = self.mem.clone();
        self.with_fd(req::ADD_MEM_REG, &body, file.file(), ack)
    }

    /// The protocol features negotiated: `offered & wanted`, sent with SET_PROTOCOL_FEATURES.
    fn protocol_features(&mut self, wanted: u64) -> Result<(), FrontendError> {
        let offered = self.get_u64(req::GET_PROTOCOL_FEATURES)?;
        let acked = offered & wanted;
        self.set_u64(req::SET_PROTOCOL_FEATURES, acked)?;
        self.protocol = acked;
        Ok(())
    }

    fn queue_num(&mut self) -> Result<(), FrontendError> {
        if self.acked(bit::P_MQ) {
            self.device_queues = Some(self.get_u64(req::GET_QUEUE_NUM)?);
        }
        Ok(())
    }

    /// QEMU (vhost_user_backend_init) and cloud-hypervisor refuse a backend with fewer
    /// queues than the device was given.
    fn enough_queues(&self, message: &str) -> Result<(), FrontendError> {
        match self.device_queues {
            Some(n) if n < self.rings.len() as u64 => Err(self.err(WireError::BadReply {
                request: req::GET_QUEUE_NUM,
                why: format!("{message} {n}; {} asked", self.rings.len()),
            })),
            _ => Ok(()),
        }
    }

    fn backend_req_fd(&mut self, ack: bool) -> Result<(), FrontendError> {
        if !self.acked(bit::P_BACKEND_REQ) {
            return Ok(());
        }
        let (ours, theirs) = UnixStream::pair().map_err(|e| self.err(WireError::Io { request: 21, source: e }))?;
        self.with_fd(req::SET_BACKEND_REQ_FD, &[], &theirs, ack)?;
        self.backend_channel = Some(ours);
        Ok(())
    }

    /// GET_INFLIGHT_FD then SET_INFLIGHT_FD with what came back (QEMU's and
    /// cloud-hypervisor's start).
    fn inflight(&mut self) -> Result<(), FrontendError> {
        if !self.acked(bit::P_INFLIGHT_SHMFD) {
            return Ok(());
        }
        let n = self.rings.len() as u16;
        let ask = payload::inflight(0, 0, n, self.opts.queue_size);
        self.wire.send(req::GET_INFLIGHT_FD, 0, &ask, &[]).map_err(|e| self.err(e))?;
        let (reply, fd) = self.wire.reply_with_fd().map_err(|e| self.err(e))?;
        if reply.len() != ask.len() {
            let why = format!("GET_INFLIGHT_FD reply of {} bytes", reply.len());
            return Err(self.err(WireError::BadReply { request: req::GET_INFLIGHT_FD, why }));
        }
        let fd = fd.ok_or_else(|| {
            self.err(WireError::BadReply { request: req::GET_INFLIGHT_FD, why: "no fd with the reply".into() })
        })?;
        let ack = self.acked(bit::P_REPLY_ACK);
        self.with_fd(req::SET_INFLIGHT_FD, &reply, &fd, ack)
    }

    fn qemu(&mut self) -> Result<(), FrontendError> {
        let offered = self.get_u64(req::GET_FEATURES)?;
        self.protocol_features(
            bit::P_MQ
                | bit::P_LOG_SHMFD
                | bit::P_REPLY_ACK
                | bit::P_BACKEND_REQ
                | bit::P_CONFIG
                | bit::P_INFLIGHT_SHMFD
                | bit::P_CONFIGURE_MEM_SLOTS,
        )?;
        self.queue_num()?;
        self.enough_queues("The maximum number of queues supported by the backend is")?;
        if self.acked(bit::P_CONFIGURE_MEM_SLOTS) {
            self.get_u64(req::GET_MAX_MEM_SLOTS)?;
        }
        let ack = self.acked(bit::P_REPLY_ACK);
        self.backend_req_fd(ack)?;
        self.send(req::SET_OWNER, &[])?;
        self.get_u64(req::GET_FEATURES)?;
        self.each_queue(&[Step::Call])?; // the masked notifiers
        self.config = self.get_config(0, QEMU_BLK_CONFIG, QEMU_BLK_CONFIG as usize)?;
        // The guest driver sets DRIVER_OK: vhost_user_blk_start.
        self.features = offered & (bit::GUEST_BLK | bit::PROTOCOL_FEATURES);
        self.set_u64(req::SET_FEATURES, self.features)?;
        self.inflight()?;
        self.set_u64(req::SET_FEATURES, self.features)?;
        if self.acked(bit::P_CONFIGURE_MEM_SLOTS) {
            self.add_mem_reg(ack)?;
        } else {
            self.set_mem_table(ack)?;
        }
        self.each_queue(&[Step::Num, Step::Base, Step::Addr, Step::Kick, Step::Call])?;
        self.each_queue(&[Step::Enable])?;
        self.each_queue(&[Step::Call])?; // unmasked: the guests' irqfds
        Ok(())
    }

    fn spdk(&mut self) -> Result<(), FrontendError> {
        self.send(req::SET_OWNER, &[])?;
        let offered = self.get_u64(req::GET_FEATURES)?;
        self.features = offered & bit::SPDK_BLK;
        self.set_u64(req::SET_FEATURES, self.features)?;
        if self.features & bit::PROTOCOL_FEATURES != 0 {
            self.protocol_features(bit::P_MQ | bit::P_CONFIG)?;
        }
        // virtio_blk_dev_init: blk_size, capacity, num_queues, size_max, seg_max, each read
        // through a GET_CONFIG of the whole 256-byte region.
        for _ in 0..5 {
            self.config = self.get_config(0, SPDK_CONFIG_REGION as u32, SPDK_CONFIG_REGION)?;
        }
        // virtio_dev_start: each queue is enabled as it is set up.
        self.each_queue(&[Step::Enable])?;
        // DRIVER_OK: virtio_user_start_device.
        self.device_queues = Some(self.get_u64(req::GET_QUEUE_NUM)?);
        self.each_queue(&[Step::Call])?;
        self.set_mem_table(false)?;
        self.get_u64(req::GET_FEATURES)?; // "make sure the backend processed SET_MEM_TABLE"
        self.each_queue(&[Step::Num, Step::Base, Step::Addr, Step::Kick])?;
        Ok(())
    }

    fn dpdk(&mut self) -> Result<(), FrontendError> {
        self.send(req::SET_OWNER, &[])?;
        let offered = self.get_u64(req::GET_FEATURES)?;
        self.features = offered & (bit::GUEST_BLK | bit::PROTOCOL_FEATURES);
        if self.features & bit::PROTOCOL_FEATURES != 0 {
            self.protocol_features(bit::P_MQ | bit::P_REPLY_ACK)?;
        }
        self.set_u64(req::SET_FEATURES, self.features)?;
        self.each_queue(&[Step::Call])?;
        let ack = self.acked(bit::P_REPLY_ACK);
        self.set_mem_table(ack)?;
        self.each_queue(&[Step::Num, Step::Base, Step::Addr, Step::Kick])?;
        // enable_qp(0): virtqueues 0 and 1.
        for q in 0..self.rings.len().min(2) {
            self.vring_enable(q, true)?;
        }
        Ok(())
    }

    fn cloud_hypervisor(&mut self) -> Result<(), FrontendError> {
        self.send(req::SET_OWNER, &[])?;
        let offered = self.get_u64(req::GET_FEATURES)?;
        self.features = offered & (bit::GUEST_BLK | bit::EVENT_IDX | bit::PROTOCOL_FEATURES);
        self.protocol_features(
            bit::P_MQ
                | bit::P_REPLY_ACK
                | bit::P_CONFIG
                | bit::P_INFLIGHT_SHMFD
                | bit::P_CONFIGURE_MEM_SLOTS
                | bit::P_LOG_SHMFD,
        )?;
        self.queue_num()?;
        self.enough_queues("backend supports fewer queues:")?;
        self.config = self.get_config(0, BlkConfig::SIZE as u32, BlkConfig::SIZE)?;
        // Activation: setup_vhost_user.
        self.set_u64(req::SET_FEATURES, self.features)?;
        let ack = self.acked(bit::P_REPLY_ACK);
        self.set_mem_table(ack)?;
        self.inflight()?;
        self.each_queue(&[Step::Num, Step::Addr, Step::Base, Step::Call, Step::Kick])?;
        self.each_queue(&[Step::Enable])?;
        Ok(())
    }

    fn crosvm(&mut self) -> Result<(), FrontendError> {
        self.send(req::SET_OWNER, &[])?;
        let offered = self.get_u64(req::GET_FEATURES)?;
        if offered & bit::PROTOCOL_FEATURES != 0 {
            self.set_u64(req::SET_FEATURES, bit::PROTOCOL_FEATURES)?;
            self.protocol_features(bit::P_MQ | bit::P_REPLY_ACK | bit::P_CONFIG | bit::P_BACKEND_REQ)?;
        }
        self.queue_num()?;
        self.backend_req_fd(self.acked(bit::P_REPLY_ACK))?;
        // The guest's config reads, each forwarded as it comes: capacity, blk_size, seg_max,
        // num_queues, then the discard fields.
        let mut config = vec![0u8; BlkConfig::SIZE];
        for (offset, len) in [(0u32, 8usize), (20, 4), (12, 4), (34, 2), (36, 4), (40, 4), (44, 4)] {
            let got = self.get_config(offset, len as u32, len)?;
            config[offset as usize..offset as usize + len].copy_from_slice(&got);
        }
        self.config = config;
        self.features = offered & (bit::GUEST_BLK | bit::EVENT_IDX | bit::PROTOCOL_FEATURES);
        self.set_u64(req::SET_FEATURES, self.features)?;
        let ack = self.acked(bit::P_REPLY_ACK);
        self.set_mem_table(ack)?;
        self.each_queue(&[Step::Num, Step::Addr, Step::Base, Step::Call, Step::Kick, Step::Enable])?;
        Ok(())
    }
}

/// Connects to the vhost-user-blk backend at `path` as `kind` does, with `opts.num_queues`
/// queues, and returns a client ready for I/O with every exchange as it happened.
pub fn connect_blk(path: &Path, kind: FrontendKind, opts: &Options) -> Result<(Client, Vec<Exchange>), FrontendError> {
    let client_err = |source| FrontendError::Client { kind, source };
    let stream = UnixStream::connect(path).map_err(|e| client_err(ClientError::Connect(e)))?;
    let wire = Wire::new(stream, REPLY_TIMEOUT).map_err(|e| client_err(ClientError::Connect(e)))?;
    let shared = SharedMemory::new(opts.mem_size, opts.hugetlbfs.as_deref()).map_err(|e| client_err(e.into()))?;
    // SPDK and DPDK have no guest: their "guest-physical" addresses are virtual addresses.
    let shared = match kind {
        FrontendKind::Spdk | FrontendKind::Dpdk => shared.identity_mapped(),
        _ => shared,
    };
    let mem = Arc::new(shared);
    let rings = (0..opts.num_queues)
        .map(|_| SplitQueue::new(mem.clone(), opts.queue_size))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| client_err(ClientError::Unsupported("shared memory too small for the rings".into())))?;
    let mut a = Attach {
        kind,
        wire,
        opts,
        mem,
        rings,
        features: 0,
        protocol: 0,
        device_queues: None,
        config: Vec::new(),
        backend_channel: None,
    };
    match kind {
        FrontendKind::Qemu => a.qemu(),
        FrontendKind::Spdk => a.spdk(),
        FrontendKind::Dpdk => a.dpdk(),
        FrontendKind::CloudHypervisor => a.cloud_hypervisor(),
        FrontendKind::Crosvm => a.crosvm(),
    }?;
    // QEMU reads 57 bytes: what it did not read stays zero.
    let config = match a.config.len() {
        0 => BlkConfig::default(),
        n => {
            let mut bytes = std::mem::take(&mut a.config);
            bytes.resize(n.max(BlkConfig::SIZE), 0);
            BlkConfig::decode(&bytes)
        }
    };
    let (stream, log) = a.wire.into_parts();
    stream.set_read_timeout(None).map_err(|e| client_err(ClientError::Connect(e)))?;
    let link = Link {
        frontend: Frontend::from_stream(stream, opts.num_queues as u64),
        mem: a.mem,
        rings: a.rings,
        features: a.features,
        protocol: a.features & bit::PROTOCOL_FEATURES != 0,
        device_queues: a.device_queues,
    };
    let mut client = Client::from_link(link, config).map_err(client_err)?;
    client.keep_alive(a.backend_channel);
    Ok((client, log))
}

/// The replies a frontend got, by request: (request, request payload, reply payload).
pub fn sizes(log: &[Exchange], request: u32) -> Vec<(usize, Option<usize>)> {
    log.iter().filter(|e| e.request == request).map(|e| (e.sent, e.replied)).collect()
}

//! Connecting to a vhost-user-blk backend: feature and protocol negotiation, the memory
//! table, queue setup and the config space, on rust-vmm's `vhost` frontend.

use super::blk::BlkQueue;
use super::memory::SharedMemory;
use super::split::SplitQueue;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};

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
        userspace_addr: mem.host_addr(0),
        mmap_offset: 0,
        mmap_handle: mem.file().as_raw_fd(),
    }
}

/// A connected initiator.
pub struct Client {
    frontend: Frontend,
    mem: Arc<SharedMemory>,
    queues: Vec<BlkQueue>,
    config: BlkConfig,
    features: u64,
}

impl Client {
    /// Connects to the backend at `path` and sets up `opts.num_queues` queues.
    pub fn connect(path: &Path, opts: &Options) -> Result<Client, ClientError> {
        let mut frontend = Frontend::connect(path, opts.num_queues as u64).map_err(step("connect"))?;
        frontend.set_owner().map_err(step("SET_OWNER"))?;
        let offered = frontend.get_features().map_err(step("GET_FEATURES"))?;
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
        let features = offered & want;
        if features & feature::VERSION_1 == 0 {
            return Err(ClientError::Unsupported("the backend does not offer VIRTIO_F_VERSION_1".into()));
        }
        frontend.set_features(features).map_err(step("SET_FEATURES"))?;
        let protocol = features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        if protocol {
            let pf = frontend.get_protocol_features().map_err(step("GET_PROTOCOL_FEATURES"))?;
            let want = VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
                | VhostUserProtocolFeatures::REPLY_ACK;
            frontend.set_protocol_features(pf & want).map_err(step("SET_PROTOCOL_FEATURES"))?;
            if pf.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every request then waits for the backend's answer (memory-table changes
                // are applied before they return).
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if pf.contains(VhostUserProtocolFeatures::MQ) {
                let n = frontend.get_queue_num().map_err(step("GET_QUEUE_NUM"))?;
                if n < opts.num_queues as u64 {
                    return Err(ClientError::Unsupported(format!(
                        "the backend has {n} queues, {} asked",
                        opts.num_queues
                    )));
                }
            }
        }
        let mem = Arc::new(SharedMemory::new(opts.mem_size, opts.hugetlbfs.as_deref())?);
        frontend.set_mem_table(&[region_info(&mem, 0)]).map_err(step("SET_MEM_TABLE"))?;
        let mut queues = Vec::new();
        for q in 0..opts.num_queues as usize {
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
            queues.push(
                BlkQueue::new(ring, mem.clone())
                    .ok_or_else(|| ClientError::Unsupported("shared memory too small for request slots".into()))?,
            );
        }
        let mut config = BlkConfig::default();
        if protocol {
            let buf = [0u8; 60];
            if let Ok((_, payload)) = frontend.get_config(0, 60, VhostUserConfigFlags::WRITABLE, &buf) {
                let u32_at = |o: usize| u32::from_le_bytes(payload[o..o + 4].try_into().unwrap());
                config = BlkConfig {
                    capacity: u64::from_le_bytes(payload[0..8].try_into().unwrap()),
                    seg_max: u32_at(12),
                    blk_size: u32_at(20),
                    num_queues: u16::from_le_bytes(payload[34..36].try_into().unwrap()),
                    max_discard_sectors: u32_at(36),
                };
            }
        }
        Ok(Client { frontend, mem, queues, config, features })
    }

    /// The device's config space.
    pub fn config(&self) -> BlkConfig {
        self.config
    }

    /// Negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The shared memory (allocate data buffers here).
    pub fn mem(&self) -> &Arc<SharedMemory> {
        &self.mem
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
        let mem = Arc::new(SharedMemory::new(len, None)?);
        self.frontend.add_mem_region(&region_info(&mem, gpa)).map_err(step("ADD_MEM_REG"))?;
        Ok(mem)
    }

    /// Removes a region added with [`Client::add_region`] (REM_MEM_REG).
    pub fn remove_region(&mut self, gpa: u64, mem: &SharedMemory) -> Result<(), ClientError> {
        self.frontend.remove_mem_region(&region_info(mem, gpa)).map_err(step("REM_MEM_REG"))
    }

    /// Stops queue `i` (GET_VRING_BASE) and returns where the backend stopped.
    pub fn stop_queue(&mut self, i: usize) -> Result<u32, ClientError> {
        self.frontend.get_vring_base(i).map_err(step("GET_VRING_BASE"))
    }
}

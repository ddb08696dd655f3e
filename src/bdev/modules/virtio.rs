//! `virtio`: a bdev on a vhost-user-blk device (SPDK's `bdev_virtio_attach_controller` with
//! trtype `user`), through `ferry-vhost-initiator`.
//!
//! Each reactor's channel owns one virtqueue (so `vq_count` bounds the reactors that can use
//! it) and a set of bounce buffers in the memory shared with the device: the device can only
//! reach that memory, so data is copied in for writes and out for reads. The virtqueue's call
//! eventfd is the reactor's interrupt source, so an idle reactor sleeps until the device answers.

use super::DeleteParams;
use crate::bdev::{registry, BackendChannel, Bdev, BdevBackend, BdevError, BdevIo, BdevProps, IoStatus, IoType};
use crate::framework::{self, InterruptSource, PollStatus, Poller};
use crate::rpc::{self, parse, RpcError, RpcMethod};
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::client::{feature, ClientError};
use ferry_vhost_initiator::{BlkQueue, Client, Completion, Options, Request, SharedMemory};
use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The module's RPC methods.
pub const METHODS: &[RpcMethod] = &[
    // Connecting waits on a peer: done outside the call lock, only registering takes it.
    RpcMethod::runtime_unlocked("bdev_virtio_attach_controller", bdev_virtio_attach_controller),
    RpcMethod::runtime("bdev_virtio_detach_controller", bdev_virtio_detach_controller),
];

/// How long connecting and the vhost-user handshake may take by default.
const ATTACH_TIMEOUT_MS: u64 = 10_000;

/// Largest I/O a channel bounces (bigger requests are refused with EINVAL).
const BOUNCE_SIZE: usize = 128 << 10;

struct VirtioBackend {
    socket: PathBuf,
    vq_count: u16,
    vq_size: u16,
    features: u64,
    /// Queues not owned by a channel now; a channel returns its queue when dropped.
    queues: Arc<Mutex<Vec<IdleQueue>>>,
    mem: Arc<SharedMemory>,
    /// The connection; dropping it disconnects from the device.
    _client: Mutex<Client>,
}

impl BdevBackend for VirtioBackend {
    fn module(&self) -> &'static str {
        "virtio"
    }

    fn product_name(&self) -> &'static str {
        "VirtioBlkDisk"
    }

    fn supports(&self, io_type: IoType) -> bool {
        let ro = self.features & feature::RO != 0;
        match io_type {
            IoType::Read | IoType::Reset => true,
            IoType::Write => !ro,
            IoType::Flush => self.features & feature::FLUSH != 0,
            IoType::Unmap => !ro && self.features & feature::DISCARD != 0,
            IoType::WriteZeroes => !ro && self.features & feature::WRITE_ZEROES != 0,
        }
    }

    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        let queue = self.queues.lock().unwrap_or_else(|e| e.into_inner()).pop().ok_or_else(|| {
            BdevError::NoMemory(format!("all {} virtqueues are in use by other reactors", self.vq_count))
        })?;
        VirtioChannel::new(queue, self.mem.clone(), self.queues.clone(), self.vq_size).map(|c| Box::new(c) as _)
    }

    fn config(&self, bdev: &Bdev) -> Option<(&'static str, Value)> {
        Some((
            "bdev_virtio_attach_controller",
            json!({ "name": bdev.name(), "trtype": "user", "traddr": self.socket.to_string_lossy(),
                    "dev_type": "blk", "vq_count": self.vq_count, "vq_size": self.vq_size }),
        ))
    }

    fn driver_specific(&self) -> Option<(&'static str, Value)> {
        Some((
            "virtio_blk",
            json!({ "socket": self.socket.to_string_lossy(), "vq_count": self.vq_count, "vq_size": self.vq_size }),
        ))
    }

    fn write_cache(&self) -> bool {
        self.features & feature::FLUSH != 0
    }
}

/// A virtqueue no channel owns, with the bounce buffers a channel used with it before (none
/// until its first channel). Channels come and go with their users (a vhost queue that stops
/// and starts again makes a new one), and the shared memory's allocator never frees, so the
/// buffers travel with the queue instead of being allocated again.
struct IdleQueue {
    queue: BlkQueue,
    bounces: Vec<u64>,
}

struct Inflight {
    io: Box<BdevIo>,
    bounce: u64,
}

struct ChannelState {
    queue: Option<BlkQueue>,
    mem: Arc<SharedMemory>,
    free_bounces: Vec<u64>,
    inflight: Vec<Option<Inflight>>,
    free_tags: Vec<usize>,
    waiting: VecDeque<Box<BdevIo>>,
    done: Vec<Completion>,
}

struct VirtioChannel {
    state: Rc<RefCell<ChannelState>>,
    pool: Arc<Mutex<Vec<IdleQueue>>>,
    _poller: Poller,
    _interrupt: InterruptSource,
}

impl VirtioChannel {
    fn new(
        idle: IdleQueue,
        mem: Arc<SharedMemory>,
        pool: Arc<Mutex<Vec<IdleQueue>>>,
        vq_size: u16,
    ) -> Result<Self, BdevError> {
        let IdleQueue { queue, bounces: mut free_bounces } = idle;
        // Each request takes up to 3 descriptors (header, data, status).
        let depth = (vq_size / 3).max(1) as usize;
        while free_bounces.len() < depth {
            match mem.alloc(BOUNCE_SIZE, 4096) {
                Some(b) => free_bounces.push(b),
                None => {
                    pool.lock().unwrap_or_else(|e| e.into_inner()).push(IdleQueue { queue, bounces: free_bounces });
                    return Err(BdevError::NoMemory("shared memory too small for the bounce buffers".into()));
                }
            }
        }
        let call_fd = queue.call_raw_fd();
        let interrupt = match framework::register_interrupt(call_fd) {
            Ok(i) => i,
            Err(e) => {
                pool.lock().unwrap_or_else(|e| e.into_inner()).push(IdleQueue { queue, bounces: free_bounces });
                return Err(BdevError::os("adding the virtqueue's call eventfd to the reactor", e));
            }
        };
        let state = Rc::new(RefCell::new(ChannelState {
            queue: Some(queue),
            mem,
            free_bounces,
            inflight: (0..depth).map(|_| None).collect(),
            free_tags: (0..depth).rev().collect(),
            waiting: VecDeque::new(),
            done: Vec::with_capacity(depth),
        }));
        let poll_state = state.clone();
        let poller = framework::poller_register("virtio_blk_completions", Duration::ZERO, move || {
            poll_state.borrow_mut().poll()
        });
        Ok(VirtioChannel { state, pool, _poller: poller, _interrupt: interrupt })
    }
}

impl Drop for VirtioChannel {
    fn drop(&mut self) {
        // The channel lives while any of its I/O does, so nothing is in flight and every
        // bounce buffer is free: hand the queue back with them, for the next channel.
        let mut st = self.state.borrow_mut();
        if let Some(queue) = st.queue.take() {
            let bounces = std::mem::take(&mut st.free_bounces);
            self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(IdleQueue { queue, bounces });
        }
    }
}

impl BackendChannel for VirtioChannel {
    fn submit(&self, io: Box<BdevIo>) {
        let mut st = self.state.borrow_mut();
        if !st.waiting.is_empty() {
            st.waiting.push_back(io);
            return;
        }
        if let Err(io) = st.start(io) {
            st.waiting.push_back(io);
        }
    }
}

impl ChannelState {
    /// Starts `io` on the virtqueue; gives it back when no slot or descriptor is free.
    fn start(&mut self, io: Box<BdevIo>) -> Result<(), Box<BdevIo>> {
        let len = io.len_bytes() as usize;
        if io.io_type.has_data() && len > BOUNCE_SIZE {
            io.fail(libc::EINVAL);
            return Ok(());
        }
        if io.io_type == IoType::Reset {
            io.complete(IoStatus::Success);
            return Ok(());
        }
        let (Some(tag), Some(&bounce)) = (self.free_tags.last().copied(), self.free_bounces.last()) else {
            return Err(io);
        };
        let sector = io.offset_bytes() / 512;
        let sectors = (io.len_bytes() / 512) as u32;
        let bufs = [(bounce, len as u32)];
        if io.io_type == IoType::Write {
            // One copy through a temporary: SharedMemory only lends bytes by copy (the device
            // in another process writes the same memory).
            let mut data = vec![0u8; len];
            io.copy_from_iovs(&mut data);
            self.mem.write(bounce, &data);
        }
        let request = match io.io_type {
            IoType::Read => Request::Read { sector, bufs: &bufs },
            IoType::Write => Request::Write { sector, bufs: &bufs },
            IoType::Flush => Request::Flush,
            IoType::Unmap => Request::Discard { sector, sectors },
            IoType::WriteZeroes => Request::WriteZeroes { sector, sectors },
            IoType::Reset => unreachable!("handled above"),
        };
        let Some(queue) = self.queue.as_mut() else {
            io.fail(libc::ENODEV);
            return Ok(());
        };
        if queue.submit(&request, tag as u64).is_err() {
            return Err(io);
        }
        queue.kick();
        self.free_tags.pop();
        self.free_bounces.pop();
        self.inflight[tag] = Some(Inflight { io, bounce });
        Ok(())
    }

    fn poll(&mut self) -> PollStatus {
        let Some(queue) = self.queue.as_mut() else { return PollStatus::Idle };
        let mut done = std::mem::take(&mut self.done);
        done.clear();
        let n = queue.poll(&mut done);
        for c in &done {
            let Some(Inflight { mut io, bounce }) = self.inflight.get_mut(c.tag as usize).and_then(Option::take) else {
                tracing::warn!(tag = c.tag, "virtio-blk device completed an unknown request");
                continue;
            };
            if c.status == status::OK && io.io_type == IoType::Read {
                let mut data = vec![0u8; io.len_bytes() as usize];
                self.mem.read(bounce, &mut data);
                io.copy_to_iovs(&data);
            }
            self.free_tags.push(c.tag as usize);
            self.free_bounces.push(bounce);
            match c.status {
                status::OK => io.complete(IoStatus::Success),
                status::UNSUPP => io.fail(libc::ENOTSUP),
                _ => io.fail(libc::EIO),
            }
        }
        self.done = done;
        let mut started = 0;
        while let Some(io) = self.waiting.pop_front() {
            if let Err(io) = self.start(io) {
                self.waiting.push_front(io);
                break;
            }
            started += 1;
        }
        PollStatus::from(n + started > 0)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachParams {
    name: String,
    trtype: String,
    traddr: String,
    dev_type: String,
    vq_count: Option<u16>,
    vq_size: Option<u16>,
    /// Ferry's extension: the most milliseconds connecting and the handshake may take.
    timeout_ms: Option<u64>,
}

fn bdev_virtio_attach_controller(params: Option<Value>) -> Result<Value, RpcError> {
    let p: AttachParams = parse(params)?;
    if !p.trtype.eq_ignore_ascii_case("user") {
        return Err(RpcError::invalid_params(format!("trtype {:?} is not supported (only \"user\")", p.trtype)));
    }
    if p.dev_type != "blk" {
        return Err(RpcError::invalid_params(format!("dev_type {:?} is not supported (only \"blk\")", p.dev_type)));
    }
    registry::validate_name(&p.name)?;
    // Fail fast on a taken name (checked again when registering, under the lock).
    if rpc::serialized(|| registry::get(&p.name).is_some()) {
        return Err(BdevError::AlreadyExists(p.name).into());
    }
    let timeout_ms = p.timeout_ms.unwrap_or(ATTACH_TIMEOUT_MS);
    if !(1..=600_000).contains(&timeout_ms) {
        return Err(RpcError::invalid_params("timeout_ms must be 1 to 600000"));
    }
    let vq_count = p.vq_count.unwrap_or(framework::reactors().len().max(1) as u16);
    let vq_size = p.vq_size.unwrap_or(128);
    if vq_count == 0 || vq_count > 64 || !vq_size.is_power_of_two() || !(4..=1024).contains(&vq_size) {
        return Err(RpcError::invalid_params("vq_count must be 1 to 64 and vq_size a power of two from 4 to 1024"));
    }
    let depth = (vq_size / 3).max(1) as usize;
    let mem_size = (vq_count as usize * (depth * BOUNCE_SIZE + (1 << 20))).next_multiple_of(2 << 20);
    let opts = Options { num_queues: vq_count, queue_size: vq_size, mem_size, hugetlbfs: None };
    let socket = PathBuf::from(&p.traddr);
    // The peer may be slow, silent or hostile: this runs without the call lock, and within
    // its timeout.
    let mut client =
        Client::connect_timeout(&socket, &opts, Duration::from_millis(timeout_ms)).map_err(|e| match e {
            ClientError::Timeout { .. } => {
                RpcError::errno(libc::ETIMEDOUT, format!("connecting to {}: {e}", socket.display()))
            }
            e => RpcError::errno(libc::EIO, format!("connecting to {}: {e}", socket.display())),
        })?;
    let cfg = client.config();
    let block_size = if client.features() & feature::BLK_SIZE != 0 && cfg.blk_size >= 512 { cfg.blk_size } else { 512 };
    let num_blocks = cfg.capacity * 512 / block_size as u64;
    let backend = VirtioBackend {
        socket,
        vq_count,
        vq_size,
        features: client.features(),
        queues: Arc::new(Mutex::new(
            client.take_queues().into_iter().map(|queue| IdleQueue { queue, bounces: Vec::new() }).collect(),
        )),
        mem: client.mem().clone(),
        _client: Mutex::new(client),
    };
    let props = BdevProps { name: p.name, uuid: None, block_size, num_blocks };
    let bdev = rpc::serialized(|| registry::register(props, Box::new(backend)))?;
    Ok(json!([bdev.name()]))
}

fn bdev_virtio_detach_controller(params: Option<Value>) -> Result<Value, RpcError> {
    let p: DeleteParams = parse(params)?;
    registry::unregister(&p.name, Some("virtio"))?;
    Ok(json!(true))
}

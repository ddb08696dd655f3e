//! One vhost-user connection: the protocol's state (features, memory table, vring setup)
//! and starting/stopping queues on their reactors. Device-agnostic: the device type supplies
//! features, config space and the per-queue request handling.
//!
//! Queue life cycle: a queue starts once it has memory, a size, ring addresses and a kick fd
//! (and is enabled, when protocol features were negotiated). Stopping it (GET_VRING_BASE,
//! disable, a new memory table, disconnect) first stops it taking requests, then waits for its
//! in-flight I/O to finish before the reactor drops it: guest memory is never unmapped under
//! an I/O.

use super::device::{RunningQueue, VirtioDevice};
use super::dirty_log::DirtyLog;
use super::inflight::{InflightArea, InflightQueue, RingFormat};
use super::memory::{GuestMemory, RegionInfo};
use super::ring::{Coalescing, VringSetup};
use crate::framework;
use crate::framework::notifier::{check_eventfd, Notifier};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vhost::vhost_user::message::*;
use vhost::vhost_user::{Error as VhostError, Result as VhostResult, VhostUserBackendReqHandlerMut};
use vmm_sys_util::eventfd::EventFd;

/// How long a stopping queue may take to finish its in-flight I/O before we give up on it
/// (the queue is then leaked, never freed under an I/O).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The protocol features Ferry offers for `device` (CONFIG only where the frontend reads the
/// device's config space from us: QEMU's vhost-user-scsi keeps its own and warns about it).
fn offered_protocol_features(device: &dyn VirtioDevice) -> VhostUserProtocolFeatures {
    let config = if device.config_from_backend() {
        VhostUserProtocolFeatures::CONFIG
    } else {
        VhostUserProtocolFeatures::empty()
    };
    config
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::LOG_SHMFD
}

/// VHOST_F_LOG_ALL: the frontend is migrating; log every write to guest memory.
pub const LOG_ALL: u64 = 1 << 26;

/// Most memory regions accepted (CONFIGURE_MEM_SLOTS).
const MAX_MEM_SLOTS: u64 = 32;

thread_local! {
    /// The queues running on this reactor, by (session id, queue index).
    static RUNNING: RefCell<HashMap<(u64, u16), Box<dyn RunningQueue>>> = RefCell::new(HashMap::new());
    /// Queues whose I/O never finished: kept forever rather than freed under an I/O.
    static LEAKED: RefCell<Vec<Box<dyn std::any::Any>>> = const { RefCell::new(Vec::new()) };
    /// Requests completed by queues that stopped, by (session id, queue index), so a queue's
    /// count goes on across restarts (a new memory table) for the session's whole life.
    static FINISHED: RefCell<HashMap<(u64, u16), u64>> = RefCell::new(HashMap::new());
}

/// The request counters of one queue of a session, as its reactor sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// The session ([`SessionInfo::session_id`]).
    pub session_id: u64,
    /// The queue's index.
    pub queue: u16,
    /// Requests completed since the session started.
    pub requests: u64,
    /// Requests in flight now.
    pub inflight: usize,
}

/// The counters of every queue of every session served by the current reactor (call it on
/// the reactor, by message: the queues belong to its thread).
pub fn queue_stats_here() -> Vec<QueueStats> {
    let mut out: HashMap<(u64, u16), QueueStats> = FINISHED.with(|f| {
        f.borrow()
            .iter()
            .map(|(&(session_id, queue), &requests)| {
                ((session_id, queue), QueueStats { session_id, queue, requests, inflight: 0 })
            })
            .collect()
    });
    RUNNING.with(|r| {
        for (&(session_id, queue), q) in r.borrow().iter() {
            let s =
                out.entry((session_id, queue)).or_insert(QueueStats { session_id, queue, requests: 0, inflight: 0 });
            s.requests += q.completed();
            s.inflight = q.inflight();
        }
    });
    out.into_values().collect()
}

/// Removes a stopped queue from this reactor, keeping its request count.
fn retire(key: (u64, u16)) -> Option<Box<dyn RunningQueue>> {
    let q = RUNNING.with(|r| r.borrow_mut().remove(&key))?;
    FINISHED.with(|f| *f.borrow_mut().entry(key).or_default() += q.completed());
    Some(q)
}

#[derive(Default)]
struct VringConf {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    addresses_set: bool,
    base: u32,
    kick: Option<File>,
    call: Option<File>,
    enabled: bool,
    running: bool,
}

/// What the controller can see of a session.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    /// Queues running now.
    pub running_queues: usize,
    /// Memory regions mapped.
    pub mem_regions: usize,
    /// Negotiated virtio features.
    pub features: u64,
    /// The session's id and its running queues with their reactors, so management can
    /// reach them with messages without taking the session's lock (which a draining queue
    /// may hold for a long time).
    pub session_id: u64,
    /// (queue index, reactor) of each running queue.
    pub running: Vec<(u16, usize)>,
    /// The inflight area, when the frontend set one up (what it marks in flight, and how
    /// many requests were resubmitted from it, are reported by `vhost_get_controllers`).
    pub inflight: Option<Arc<InflightArea>>,
}

/// One connected frontend.
pub struct Session {
    id: u64,
    device: Arc<dyn VirtioDevice>,
    reactors: Vec<usize>,
    coalescing: Arc<Mutex<Coalescing>>,
    info: Arc<Mutex<SessionInfo>>,
    acked_features: u64,
    acked_protocol: u64,
    mem: Option<Arc<GuestMemory>>,
    regions: Vec<(RegionInfo, u64, File)>,
    vrings: Vec<VringConf>,
    inflight: Option<Arc<InflightArea>>,
    /// The dirty log the frontend gave (SET_LOG_BASE); used while LOG_ALL is acked.
    log: Option<Arc<DirtyLog>>,
}

fn invalid(what: &'static str) -> VhostError {
    VhostError::InvalidOperation(what)
}

impl Session {
    /// A session for a new connection; queues run on `reactors` (queue i on reactors[i % n]).
    pub fn new(
        device: Arc<dyn VirtioDevice>,
        reactors: Vec<usize>,
        coalescing: Arc<Mutex<Coalescing>>,
        info: Arc<Mutex<SessionInfo>>,
    ) -> Session {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let queues = device.num_queues() as usize;
        Session {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            device,
            reactors,
            coalescing,
            info,
            acked_features: 0,
            acked_protocol: 0,
            mem: None,
            regions: Vec::new(),
            vrings: (0..queues).map(|_| VringConf::default()).collect(),
            inflight: None,
            log: None,
        }
    }

    fn reactor_of(&self, index: u16) -> usize {
        self.reactors[index as usize % self.reactors.len()]
    }

    fn vring(&mut self, index: u32) -> VhostResult<&mut VringConf> {
        self.vrings.get_mut(index as usize).ok_or(VhostError::InvalidParam)
    }

    fn protocol_features_acked(&self) -> bool {
        self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
    }

    fn update_info(&self) {
        let mut info = self.info.lock().unwrap_or_else(|e| e.into_inner());
        info.running_queues = self.vrings.iter().filter(|v| v.running).count();
        info.session_id = self.id;
        info.running = (0..self.vrings.len() as u16)
            .filter(|&i| self.vrings[i as usize].running)
            .map(|i| (i, self.reactor_of(i)))
            .collect();
        info.mem_regions = self.regions.len();
        info.features = self.acked_features;
        info.inflight = self.inflight.clone();
    }

    /// The inflight layout for the negotiated ring format (QEMU sets features before it
    /// asks for or hands back the area, so the format is known then).
    fn ring_format(&self) -> RingFormat {
        if self.acked_features & super::blk::feature::RING_PACKED != 0 {
            RingFormat::Packed
        } else {
            RingFormat::Split
        }
    }

    /// The log queues write to now: the frontend's, while it has VHOST_F_LOG_ALL on.
    fn active_log(&self) -> Option<Arc<DirtyLog>> {
        if self.acked_features & LOG_ALL == 0 {
            return None;
        }
        if self.log.is_none() {
            tracing::warn!(session = self.id, "VHOST_F_LOG_ALL without a log (SET_LOG_BASE): nothing is logged");
        }
        self.log.clone()
    }

    /// Tells every running queue whether (and where) to log, waiting until each has it: when
    /// the frontend gets our answer, every later write is logged.
    fn push_log(&self) {
        let log = self.active_log();
        for i in 0..self.vrings.len() as u16 {
            if self.vrings[i as usize].running {
                let (key, log) = ((self.id, i), log.clone());
                let _ = framework::call(self.reactor_of(i), move || {
                    RUNNING.with(|r| r.borrow().get(&key).map(|q| q.set_log(log)));
                });
            }
        }
        tracing::info!(session = self.id, logging = log.is_some(), "dirty logging updated");
    }

    /// Starts queue `index` if it has everything it needs.
    fn maybe_start(&mut self, index: u16) -> VhostResult<()> {
        let event_idx = self.acked_features & super::blk::feature::EVENT_IDX != 0;
        let packed = self.acked_features & super::blk::feature::RING_PACKED != 0;
        let needs_enable = self.protocol_features_acked();
        let Some(mem) = self.mem.clone() else { return Ok(()) };
        let reactor = self.reactor_of(index);
        let coalescing = *self.coalescing.lock().unwrap_or_else(|e| e.into_inner());
        let log = if self.acked_features & LOG_ALL != 0 { self.log.clone() } else { None };
        let v = &mut self.vrings[index as usize];
        if v.running || v.kick.is_none() || !v.addresses_set || v.size == 0 || (needs_enable && !v.enabled) {
            return Ok(());
        }
        let (Some(desc), Some(avail), Some(used)) =
            (mem.va_to_gpa(v.desc), mem.va_to_gpa(v.avail), mem.va_to_gpa(v.used))
        else {
            tracing::warn!(queue = index, "vring addresses are outside guest memory");
            return Err(VhostError::InvalidParam);
        };
        // Resume the used ring where the guest's used->idx says (equal to base after a clean
        // stop). Packed rings carry both positions in the base itself.
        let next_used = if packed {
            0
        } else {
            mem.host_range(used + 2, 2)
                // SAFETY: host_range checked the two bytes lie inside guest memory.
                .map(|p| u16::from_le(unsafe { p.cast::<u16>().read_unaligned() }))
                .unwrap_or(v.base as u16)
        };
        let inflight = match self.inflight.clone().map(|a| InflightQueue::new(a, index, v.size, packed)) {
            Some(Ok(tracking)) => Some(tracking),
            Some(Err(e)) => {
                tracing::error!(queue = index, error = %e, "inflight tracking is off for this queue");
                None
            }
            None => None,
        };
        let kick = dup_eventfd(v.kick.as_ref().expect("checked"))?;
        let call = v.call.as_ref().map(notifier).transpose()?;
        let setup = VringSetup {
            index,
            size: v.size,
            desc,
            avail,
            used,
            next_avail: v.base as u16,
            next_used,
            event_idx,
            mem,
            call,
            coalescing,
            inflight,
            packed_base: packed.then_some(v.base),
            log,
        };
        let device = self.device.clone();
        let key = (self.id, index);
        let started = framework::call(reactor, move || {
            device.start_queue(setup, kick).map(|q| {
                RUNNING.with(|r| r.borrow_mut().insert(key, q));
            })
        })
        .map_err(|e| VhostError::ReqHandlerError(std::io::Error::other(e.to_string())))?;
        match started {
            Ok(_) => {
                tracing::info!(session = self.id, queue = index, reactor, "virtqueue started");
                self.vrings[index as usize].running = true;
                self.update_info();
                Ok(())
            }
            Err(e) => {
                tracing::warn!(queue = index, error = %e, "cannot start virtqueue");
                Err(VhostError::ReqHandlerError(std::io::Error::other(e)))
            }
        }
    }

    /// Stops queue `index` (waiting for its in-flight I/O) and records where it stopped.
    fn stop(&mut self, index: u16) -> u32 {
        let v = &self.vrings[index as usize];
        if !v.running {
            return v.base;
        }
        let reactor = self.reactor_of(index);
        let key = (self.id, index);
        let _ = framework::call(reactor, move || RUNNING.with(|r| r.borrow().get(&key).map(|q| q.stop())));
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut waiting = false;
        let base = loop {
            let state = framework::call(reactor, move || {
                RUNNING.with(|r| r.borrow().get(&key).map(|q| (q.inflight(), q.base())))
            });
            match state {
                Ok(Some((0, next))) => {
                    let _ = framework::call(reactor, move || retire(key).map(drop));
                    break next;
                }
                Ok(Some((inflight, next))) if Instant::now() > deadline => {
                    tracing::error!(queue = index, inflight, "virtqueue I/O did not finish; leaking the queue");
                    let _ = framework::call(reactor, move || {
                        if let Some(q) = retire(key) {
                            LEAKED.with(|l| l.borrow_mut().push(q.detach()));
                        }
                    });
                    break next;
                }
                Ok(Some((inflight, _))) => {
                    if !waiting {
                        waiting = true;
                        tracing::info!(session = self.id, queue = index, inflight, "virtqueue draining in-flight I/O");
                    }
                    std::thread::sleep(Duration::from_millis(1))
                }
                Ok(None) | Err(_) => break self.vrings[index as usize].base,
            }
        };
        let v = &mut self.vrings[index as usize];
        v.running = false;
        v.base = base;
        tracing::info!(session = self.id, queue = index, base, "virtqueue stopped");
        self.update_info();
        base
    }

    fn stop_all(&mut self) -> Vec<u16> {
        let running: Vec<u16> = (0..self.vrings.len() as u16).filter(|&i| self.vrings[i as usize].running).collect();
        for &i in &running {
            self.stop(i);
        }
        running
    }

    /// Tears the session down (the frontend disconnected).
    pub fn teardown(&mut self) {
        self.stop_all();
        self.mem = None;
        self.regions.clear();
        self.update_info();
    }

    /// Re-maps memory from `self.regions`, restarting queues that were running.
    fn remap(&mut self) -> VhostResult<()> {
        let was_running = self.stop_all();
        let mem = GuestMemory::map(&self.regions).map_err(|e| {
            tracing::warn!(error = %e, "cannot map guest memory");
            VhostError::InvalidParam
        })?;
        self.mem = Some(Arc::new(mem));
        for i in was_running {
            self.maybe_start(i)?;
        }
        self.update_info();
        Ok(())
    }
}

/// Applies new coalescing settings to the running queues `info` lists, by message to their
/// reactors (never waiting for the session, whose lock a draining queue may hold). Queues
/// that start later read the settings from the controller's shared copy.
pub fn apply_coalescing(info: &SessionInfo, c: Coalescing) {
    for &(index, reactor) in &info.running {
        let key = (info.session_id, index);
        let _ = framework::send(reactor, move || {
            RUNNING.with(|r| r.borrow().get(&key).map(|q| q.set_coalescing(c)));
        });
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.teardown();
        let id = self.id;
        for &reactor in &self.reactors {
            let _ = framework::send(reactor, move || FINISHED.with(|f| f.borrow_mut().retain(|k, _| k.0 != id)));
        }
    }
}

/// `size` bytes of `config` from `offset`, zero past its end.
fn config_window(config: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let mut out = vec![0u8; size as usize];
    if let Some(have) = config.get(offset as usize..) {
        let n = have.len().min(out.len());
        out[..n].copy_from_slice(&have[..n]);
    }
    out
}

/// Duplicates a kick eventfd the frontend sent (the session keeps its copy for restarts).
/// The reactor watches it edge-triggered and never reads it, so a frontend's blocking
/// eventfd cannot block the reactor.
fn dup_eventfd(file: &File) -> VhostResult<EventFd> {
    check_eventfd(file.as_raw_fd()).map_err(|e| VhostError::ReqHandlerError(std::io::Error::other(e)))?;
    let copy = file.try_clone().map_err(VhostError::ReqHandlerError)?;
    // SAFETY: `copy` is a fresh fd we own (checked to be an eventfd); EventFd takes ownership.
    Ok(unsafe { EventFd::from_raw_fd(copy.into_raw_fd()) })
}

/// A notifier on a call eventfd the frontend sent (signalled without ever blocking).
fn notifier(file: &File) -> VhostResult<Notifier> {
    Notifier::new(file).map_err(|e| VhostError::ReqHandlerError(std::io::Error::other(e)))
}

impl VhostUserBackendReqHandlerMut for Session {
    fn set_owner(&mut self) -> VhostResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostResult<()> {
        self.teardown();
        Ok(())
    }

    fn reset_device(&mut self) -> VhostResult<()> {
        self.teardown();
        self.acked_features = 0;
        self.acked_protocol = 0;
        self.vrings.iter_mut().for_each(|v| *v = VringConf::default());
        Ok(())
    }

    fn get_features(&mut self) -> VhostResult<u64> {
        Ok(self.device.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() | LOG_ALL)
    }

    fn set_features(&mut self, features: u64) -> VhostResult<()> {
        let offered = self.get_features()?;
        if features & !offered != 0 {
            return Err(invalid("features not offered"));
        }
        let logging_changed = (self.acked_features ^ features) & LOG_ALL != 0;
        self.acked_features = features;
        // Without protocol features, rings are enabled as soon as they start.
        if !self.protocol_features_acked() {
            self.vrings.iter_mut().for_each(|v| v.enabled = true);
        }
        if logging_changed {
            self.push_log();
        }
        self.update_info();
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VhostResult<Option<Vec<u64>>> {
        if ctx.len() != files.len() || ctx.len() as u64 > MAX_MEM_SLOTS {
            return Err(VhostError::InvalidParam);
        }
        self.regions = ctx
            .iter()
            .zip(files)
            .map(|(r, f)| {
                (RegionInfo { gpa: r.guest_phys_addr, size: r.memory_size, user_addr: r.user_addr }, r.mmap_offset, f)
            })
            .collect();
        self.remap()?;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostResult<()> {
        let max = self.device.max_queue_size() as u32;
        if num == 0 || num > max || !num.is_power_of_two() {
            return Err(VhostError::InvalidParam);
        }
        self.vring(index)?.size = num as u16;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostResult<()> {
        let v = self.vring(index)?;
        (v.desc, v.used, v.avail, v.addresses_set) = (descriptor, used, available, true);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostResult<()> {
        let v = self.vring(index)?;
        if v.running {
            return Err(invalid("SET_VRING_BASE on a running queue"));
        }
        v.base = base;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostResult<VhostUserVringState> {
        self.vring(index)?;
        let base = self.stop(index as u16);
        // The ring is stopped until the frontend sets a new kick fd.
        let disable = self.protocol_features_acked();
        let v = &mut self.vrings[index as usize];
        v.kick = None;
        if disable {
            v.enabled = false;
        }
        Ok(VhostUserVringState::new(index, base))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        self.vring(index as u32)?;
        if let Some(f) = &fd {
            check_eventfd(f.as_raw_fd()).map_err(|e| {
                tracing::warn!(queue = index, error = %e, "refusing kick fd");
                VhostError::InvalidParam
            })?;
        }
        if self.vrings[index as usize].running {
            self.stop(index as u16);
        }
        self.vrings[index as usize].kick = fd;
        self.maybe_start(index as u16)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        self.vring(index as u32)?;
        let call = fd.as_ref().map(notifier).transpose().inspect_err(|e| {
            tracing::warn!(queue = index, error = %e, "refusing call fd");
        })?;
        self.vrings[index as usize].call = fd;
        if self.vrings[index as usize].running {
            let key = (self.id, index as u16);
            let _ = framework::call(self.reactor_of(index as u16), move || {
                RUNNING.with(|r| r.borrow().get(&key).map(|q| q.set_call(call)));
            });
        }
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VhostResult<()> {
        self.vring(index as u32)?;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VhostResult<VhostUserProtocolFeatures> {
        Ok(offered_protocol_features(&*self.device))
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostResult<()> {
        if features & !offered_protocol_features(&*self.device).bits() != 0 {
            return Err(invalid("protocol features not offered"));
        }
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostResult<u64> {
        Ok(self.device.num_queues() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostResult<()> {
        self.vring(index)?;
        self.vrings[index as usize].enabled = enable;
        if enable {
            self.maybe_start(index as u16)
        } else {
            let base = self.stop(index as u16);
            self.vrings[index as usize].base = base;
            Ok(())
        }
    }

    fn get_config(&mut self, offset: u32, size: u32, _flags: VhostUserConfigFlags) -> VhostResult<Vec<u8>> {
        // The reply's size MUST be the request's (spec, GET_CONFIG). Frontends ask for more
        // than the fields Ferry fills: SPDK's virtio-user always reads 256 bytes (its
        // VHOST_USER_MAX_CONFIG_SIZE), QEMU the size its feature bits imply. Bytes past the
        // device's config read as zero, as on a virtio-pci device (the crate bounds
        // offset + size to VHOST_USER_CONFIG_SIZE).
        Ok(config_window(&self.device.config(), offset, size))
    }

    fn set_config(&mut self, offset: u32, buf: &[u8], _flags: VhostUserConfigFlags) -> VhostResult<()> {
        if self.device.write_config(offset, buf) {
            Ok(())
        } else {
            Err(VhostError::InvalidParam)
        }
    }

    fn set_gpu_socket(&mut self, _gpu_backend: vhost::vhost_user::GpuBackend) -> VhostResult<()> {
        Err(invalid("not a GPU device"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostResult<File> {
        Err(invalid("shared objects are not supported"))
    }

    fn get_inflight_fd(&mut self, inflight: &VhostUserInflight) -> VhostResult<(VhostUserInflight, File)> {
        if inflight.num_queues == 0 || inflight.num_queues > self.device.num_queues() || inflight.queue_size == 0 {
            return Err(VhostError::InvalidParam);
        }
        let format = self.ring_format();
        let area = InflightArea::create(format, inflight.num_queues, inflight.queue_size).map_err(|e| {
            tracing::warn!(error = %e, "GET_INFLIGHT_FD failed");
            VhostError::ReqHandlerError(std::io::Error::other(e.to_string()))
        })?;
        let file = area.file().try_clone().map_err(VhostError::ReqHandlerError)?;
        let reply = VhostUserInflight {
            mmap_size: area.len() as u64,
            mmap_offset: 0,
            num_queues: inflight.num_queues,
            queue_size: inflight.queue_size,
        };
        tracing::info!(%format, size = area.len(), "inflight area created");
        self.inflight = Some(Arc::new(area));
        self.update_info();
        Ok((reply, file))
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VhostResult<()> {
        if inflight.num_queues > self.device.num_queues() {
            tracing::warn!(
                num_queues = inflight.num_queues,
                "SET_INFLIGHT_FD refused: more queues than the device has"
            );
            return Err(VhostError::InvalidParam);
        }
        let area = InflightArea::open(
            file,
            inflight.mmap_offset,
            inflight.mmap_size,
            self.ring_format(),
            inflight.num_queues,
            inflight.queue_size,
        )
        .map_err(|e| {
            tracing::warn!(error = %e, "SET_INFLIGHT_FD refused");
            VhostError::ReqHandlerError(std::io::Error::other(e.to_string()))
        })?;
        self.inflight = Some(Arc::new(area));
        self.update_info();
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VhostResult<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VhostResult<Option<u64>> {
        if self.regions.len() as u64 >= MAX_MEM_SLOTS {
            return Err(VhostError::InvalidParam);
        }
        let info = RegionInfo { gpa: region.guest_phys_addr, size: region.memory_size, user_addr: region.user_addr };
        self.regions.push((info, region.mmap_offset, fd));
        if let Err(e) = self.remap() {
            self.regions.pop();
            let _ = self.remap();
            return Err(e);
        }
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VhostResult<()> {
        let before = self.regions.len();
        self.regions.retain(|(r, _, _)| !(r.gpa == region.guest_phys_addr && r.size == region.memory_size));
        if self.regions.len() == before {
            return Err(VhostError::InvalidParam);
        }
        self.remap()
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VhostResult<Option<File>> {
        Err(invalid("device state transfer is not supported"))
    }

    fn check_device_state(&mut self) -> VhostResult<()> {
        Err(invalid("device state transfer is not supported"))
    }

    fn get_shmem_config(&mut self) -> VhostResult<VhostUserShMemConfig> {
        Err(invalid("no shared memory regions"))
    }

    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> VhostResult<()> {
        let area = DirtyLog::map(&file, log.mmap_offset, log.mmap_size).map_err(|e| {
            tracing::warn!(size = log.mmap_size, offset = log.mmap_offset, error = %e, "SET_LOG_BASE refused");
            VhostError::ReqHandlerError(std::io::Error::other(e.to_string()))
        })?;
        tracing::info!(session = self.id, size = log.mmap_size, "dirty log set");
        self.log = Some(Arc::new(area));
        self.push_log();
        Ok(())
    }
}

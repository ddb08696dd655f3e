//! One NVMe controller as a host drives it, over any [`Transport`]: bring-up, keep alive, and
//! the state machine connected → failed → reconnecting (every `reconnect_delay_sec`) →
//! deleted after `ctrlr_loss_timeout_sec`.
//!
//! Bring-up, one admin command at a time: Connect (the transport's), Property Get CAP and VS,
//! Property Set CC.EN, Property Get CSTS until RDY (within CAP.TO), Identify Controller, the
//! active namespace list and each namespace, Set Features Number of Queues. Then Keep Alive
//! every KATO/2. The controller is polled by its owner (never blocks); what I/O threads need
//! (generation, CNTLID, limits, queue ids, whether I/O must fail) is published in [`Shared`].
//!
//! On a reconnection with [`CtrlrOpts::quiesce_io_threads`], the transport's queue setup waits
//! until the owner reports that every I/O thread has seen the new generation
//! ([`Shared::quiesce_wanted`], [`Shared::mark_quiesced`]). Over PCIe the new I/O queues reuse
//! the old ones' memory and doorbells: an I/O thread that read the old generation just before
//! the reset, and ran on after the new queues existed, would ring a stale tail into them.

use super::identify::{self, CtrlrData, NsData};
use super::reconnect::{Next, ReconnectPolicy};
use super::{cmd, Dir, HostError, IoLimits, QpCompletion, Qpair, SetupCmd, Transport};
use crate::spec::{prop, Completion};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How a controller is run.
#[derive(Debug, Clone, Copy)]
pub struct CtrlrOpts {
    /// Keep-alive timeout asked for at Connect, in ms (0: none).
    pub kato_ms: u32,
    /// I/O queues asked for (Set Features Number of Queues).
    pub num_io_queues: u16,
    /// Entries per I/O queue (bounded by CAP.MQES + 1 and MAXCMD).
    pub io_queue_size: u16,
    /// Reconnect timing.
    pub policy: ReconnectPolicy,
    /// How long one bring-up (connect to ready) may take.
    pub bringup_timeout: Duration,
    /// On a reconnection, wait for [`Shared::mark_quiesced`] before the transport's queue
    /// setup (see the module documentation). Its wait counts in `bringup_timeout`.
    pub quiesce_io_threads: bool,
}

/// The controller's state, as `bdev_nvme_get_controllers` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlrState {
    /// First bring-up in progress.
    Connecting,
    /// Ready for I/O.
    Enabled,
    /// Lost; a reconnect attempt is in progress.
    Resetting,
    /// Lost; waiting `reconnect_delay_sec` before the next attempt.
    ReconnectDelayed,
    /// Given up (or the first bring-up failed): nothing more will happen.
    Deleted,
}

impl CtrlrState {
    /// SPDK's name of the state.
    pub fn spdk_name(self) -> &'static str {
        match self {
            CtrlrState::Connecting => "connecting",
            CtrlrState::Enabled => "enabled",
            CtrlrState::Resetting => "resetting",
            CtrlrState::ReconnectDelayed => "reconnect_is_delayed",
            CtrlrState::Deleted => "deleting",
        }
    }
}

/// What the controller publishes to the threads running I/O queues.
#[derive(Debug, Clone)]
pub struct SharedState {
    /// The state.
    pub state: CtrlrState,
    /// Bumped at every (re)connection: I/O queues of an older generation are stale.
    pub generation: u64,
    /// The controller id of this generation.
    pub cntlid: u16,
    /// I/O queue limits.
    pub limits: IoLimits,
    /// Entries per I/O queue.
    pub io_queue_size: u16,
    /// I/O waiting for the controller must fail (fast_io_fail_timeout_sec passed, or deleted).
    pub fail_io: bool,
    /// Identify Controller of this generation.
    pub data: CtrlrData,
    free_qids: Vec<u16>,
    reset_requested: bool,
    /// The generation the bring-up waits for every I/O thread to have seen, if it waits.
    quiesce_wanted: Option<u64>,
    /// The newest generation every I/O thread is known to have seen.
    quiesced: u64,
}

/// What an I/O thread needs of [`SharedState`] to run its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoView {
    /// The state.
    pub state: CtrlrState,
    /// The generation.
    pub generation: u64,
    /// The controller id of this generation.
    pub cntlid: u16,
    /// I/O queue limits.
    pub limits: IoLimits,
    /// Entries per I/O queue.
    pub io_queue_size: u16,
    /// I/O waiting for the controller must fail.
    pub fail_io: bool,
}

/// [`SharedState`] behind a lock, shared by the controller and its I/O threads.
#[derive(Debug)]
pub struct Shared(Mutex<SharedState>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SharedState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> SharedState {
        self.lock().clone()
    }

    /// The state.
    pub fn state(&self) -> CtrlrState {
        self.lock().state
    }

    /// A free I/O queue id of generation `generation`, if it is current and one is left.
    pub fn take_qid(&self, generation: u64) -> Option<u16> {
        let mut s = self.lock();
        if s.generation != generation || s.state != CtrlrState::Enabled {
            return None;
        }
        s.free_qids.pop()
    }

    /// Gives queue id `qid` of `generation` back (ignored for an older generation).
    pub fn put_qid(&self, generation: u64, qid: u16) {
        let mut s = self.lock();
        if s.generation == generation && !s.free_qids.contains(&qid) {
            s.free_qids.push(qid);
        }
    }

    /// The few values an I/O thread checks on every poll (no allocation).
    pub fn io_view(&self) -> IoView {
        let s = self.lock();
        IoView {
            state: s.state,
            generation: s.generation,
            cntlid: s.cntlid,
            limits: s.limits,
            io_queue_size: s.io_queue_size,
            fail_io: s.fail_io,
        }
    }

    /// Marks the controller deleted (detached): I/O still waiting fails.
    pub fn mark_deleted(&self) {
        let mut s = self.lock();
        s.state = CtrlrState::Deleted;
        s.fail_io = true;
        s.free_qids.clear();
    }

    /// The generation a reconnection waits for every I/O thread to have seen before it makes
    /// new I/O queues, if it waits: the owner then makes sure no I/O thread is still inside
    /// code that read an older generation, and calls [`Shared::mark_quiesced`].
    pub fn quiesce_wanted(&self) -> Option<u64> {
        self.lock().quiesce_wanted
    }

    /// Every I/O thread has seen generation `generation` (or a newer one) and is done with
    /// what it did with an older generation's queue.
    pub fn mark_quiesced(&self, generation: u64) {
        let mut s = self.lock();
        s.quiesced = s.quiesced.max(generation);
        if s.quiesce_wanted.is_some_and(|g| g <= generation) {
            s.quiesce_wanted = None;
        }
    }

    /// Asks for a reset (reconnect) of generation `generation`: an I/O queue of it failed, or
    /// a bdev reset. Ignored if that generation is already gone.
    pub fn request_reset(&self, generation: u64) {
        let mut s = self.lock();
        if s.generation == generation && s.state == CtrlrState::Enabled {
            s.reset_requested = true;
        }
    }
}

/// A namespace the controller reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Its id.
    pub nsid: u32,
    /// What Identify Namespace said.
    pub data: NsData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Connect,
    ReadCap,
    ReadVs,
    Enable,
    WaitReady,
    IdentifyCtrlr,
    ActiveNs,
    IdentifyNs(usize),
    SetQueues,
    /// Waiting for the owner to report every I/O thread quiesced (a reconnection with
    /// [`CtrlrOpts::quiesce_io_threads`]).
    Quiesce,
    /// The transport's queue setup commands (`Controller::setup`), by index.
    QueueSetup(usize),
    Ready,
    Delayed(Instant),
    Deleted,
}

const TAG_STEP: u64 = 1;
const TAG_KEEP_ALIVE: u64 = 2;
/// Tags of the owner's admin commands start here.
const TAG_USER: u64 = 1 << 32;

/// How an admin command of the owner ([`Controller::admin_command`]) is answered: its
/// completion and data, or why it never ran (the controller was lost or is not ready).
pub type AdminDone = Box<dyn FnOnce(Result<(Completion, Vec<u8>), HostError>) + Send>;

/// An admin command of the owner waiting to be sent.
struct UserCmd {
    cmd: crate::spec::Command,
    len: usize,
    done: AdminDone,
}
/// CSTS is read again this often while waiting for RDY.
const CSTS_INTERVAL: Duration = Duration::from_millis(10);

/// A controller over transport `T` (see the module documentation).
pub struct Controller<T: Transport> {
    transport: Arc<T>,
    opts: CtrlrOpts,
    shared: Arc<Shared>,
    admin: Option<T::Qpair>,
    step: Step,
    step_in_flight: bool,
    step_deadline: Instant,
    next_csts: Instant,
    ready_deadline: Instant,
    cap: u64,
    data: CtrlrData,
    ns_ids: Vec<u32>,
    namespaces: Vec<Namespace>,
    io_queues: u16,
    io_qsize: u16,
    setup: Vec<SetupCmd>,
    keep_alive_sent: Option<Instant>,
    next_keep_alive: Instant,
    /// When the controller was lost (None while connected or before the first bring-up).
    lost_since: Option<Instant>,
    was_ready: bool,
    error: Option<HostError>,
    cpls: Vec<QpCompletion>,
    user_queue: Vec<UserCmd>,
    user_inflight: Vec<(u64, AdminDone)>,
    next_user_tag: u64,
}

impl<T: Transport> Controller<T> {
    /// Starts the first bring-up.
    pub fn new(transport: Arc<T>, opts: CtrlrOpts) -> Controller<T> {
        let now = Instant::now();
        let shared = Arc::new(Shared(Mutex::new(SharedState {
            state: CtrlrState::Connecting,
            generation: 0,
            cntlid: 0,
            limits: IoLimits::default(),
            io_queue_size: 0,
            fail_io: false,
            data: CtrlrData::default(),
            free_qids: Vec::new(),
            reset_requested: false,
            quiesce_wanted: None,
            quiesced: 0,
        })));
        let mut c = Controller {
            transport,
            opts,
            shared,
            admin: None,
            step: Step::Connect,
            step_in_flight: false,
            step_deadline: now,
            next_csts: now,
            ready_deadline: now,
            cap: 0,
            data: CtrlrData::default(),
            ns_ids: Vec::new(),
            namespaces: Vec::new(),
            io_queues: 0,
            io_qsize: 0,
            setup: Vec::new(),
            keep_alive_sent: None,
            next_keep_alive: now,
            lost_since: None,
            was_ready: false,
            error: None,
            cpls: Vec::new(),
            user_queue: Vec::new(),
            user_inflight: Vec::new(),
            next_user_tag: TAG_USER,
        };
        c.start_connect(now);
        c
    }

    /// What the I/O threads share.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The transport.
    pub fn transport(&self) -> &Arc<T> {
        &self.transport
    }

    /// The state.
    pub fn state(&self) -> CtrlrState {
        self.shared.state()
    }

    /// The last error (why the controller was lost, or why bring-up failed).
    pub fn error(&self) -> Option<&HostError> {
        self.error.as_ref()
    }

    /// The namespaces of the last bring-up.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }

    /// Identify Controller of the last bring-up.
    pub fn data(&self) -> &CtrlrData {
        &self.data
    }

    /// The admin queue's file descriptor (to wait on), while connected.
    pub fn raw_fd(&self) -> Option<i32> {
        self.admin.as_ref().and_then(|q| q.raw_fd())
    }

    fn start_connect(&mut self, now: Instant) {
        self.step = Step::Connect;
        self.step_in_flight = false;
        self.step_deadline = now + self.opts.bringup_timeout;
        self.keep_alive_sent = None;
        self.admin = None;
        if self.was_ready {
            self.shared.lock().state = CtrlrState::Resetting;
        }
        match self.transport.connect_admin(self.opts.kato_ms) {
            Ok(q) => self.admin = Some(q),
            Err(e) => self.lost(e, now),
        }
    }

    /// The connection failed (or a bring-up step did): decide what comes next.
    fn lost(&mut self, e: HostError, now: Instant) {
        tracing::warn!(ctrlr = %self.transport.describe(), "NVMe controller: {e}");
        for (_, done) in self.user_inflight.drain(..) {
            done(Err(e.clone()));
        }
        self.error = Some(e);
        self.admin = None;
        self.step_in_flight = false;
        if !self.was_ready {
            // The first bring-up failed: the caller reports it; nothing is retried.
            self.step = Step::Deleted;
            let mut s = self.shared.lock();
            s.state = CtrlrState::Deleted;
            s.fail_io = true;
            return;
        }
        let first = self.lost_since.is_none();
        let since = *self.lost_since.get_or_insert(now);
        {
            let mut s = self.shared.lock();
            s.generation += 1; // the old generation's I/O queues are dead
            s.free_qids.clear();
            s.reset_requested = false;
        }
        if first {
            // As SPDK: the first reset is immediate.
            self.start_connect(now);
            return;
        }
        match self.opts.policy.after_failed_attempt(since, now) {
            Next::RetryAt(at) => {
                self.step = Step::Delayed(at);
                let mut s = self.shared.lock();
                s.state = CtrlrState::ReconnectDelayed;
                s.fail_io = self.opts.policy.io_fails(since, now);
            }
            Next::Delete => {
                tracing::warn!(ctrlr = %self.transport.describe(), "NVMe controller lost for good: deleting it");
                self.step = Step::Deleted;
                let mut s = self.shared.lock();
                s.state = CtrlrState::Deleted;
                s.fail_io = true;
            }
        }
    }

    /// Asks for a reconnect, as if the connection had been lost (a bdev reset).
    pub fn reset(&mut self, now: Instant) {
        if self.step == Step::Ready {
            self.lost(HostError::Reset("requested".into()), now);
        }
    }

    /// Moves everything forward without blocking; returns whether anything happened.
    pub fn poll(&mut self, now: Instant) -> bool {
        match self.step {
            Step::Deleted => return false,
            Step::Delayed(at) => {
                if let Some(since) = self.lost_since {
                    let fail = self.opts.policy.io_fails(since, now);
                    self.shared.lock().fail_io = fail;
                }
                if now < at {
                    return false;
                }
                self.start_connect(now);
            }
            _ => {}
        }
        if self.step == Step::Ready && std::mem::take(&mut self.shared.lock().reset_requested) {
            self.lost(HostError::Reset("an I/O queue failed or a bdev reset".into()), now);
            return true;
        }
        let Some(admin) = self.admin.as_mut() else { return false };
        let mut cpls = std::mem::take(&mut self.cpls);
        let polled = admin.poll(&mut cpls);
        let mut progress = match polled {
            Ok(p) => p,
            Err(e) => {
                self.cpls = cpls;
                self.cpls.clear();
                self.lost(e, now);
                return true;
            }
        };
        let mut failed = None;
        for c in cpls.drain(..) {
            if failed.is_none() {
                failed = self.on_completion(c, now).err();
            }
            progress = true;
        }
        self.cpls = cpls;
        if let Some(e) = failed {
            self.lost(e, now);
            return true;
        }
        if let Err(e) = self.advance(now) {
            self.lost(e, now);
            return true;
        }
        progress
    }

    fn submit(&mut self, command: crate::spec::Command, dir: Dir, data: Vec<u8>, tag: u64) -> Result<(), HostError> {
        let q = self.admin.as_mut().ok_or(HostError::Closed)?;
        q.submit_owned(command, dir, data, tag)
    }

    /// Sends the next bring-up command, keep alives, and checks deadlines.
    fn advance(&mut self, now: Instant) -> Result<(), HostError> {
        if self.step == Step::Ready {
            for u in std::mem::take(&mut self.user_queue) {
                let tag = self.next_user_tag;
                self.next_user_tag += 1;
                let dir = if u.len > 0 { Dir::FromCtrlr } else { Dir::None };
                match self.submit(u.cmd, dir, vec![0; u.len], tag) {
                    Ok(()) => self.user_inflight.push((tag, u.done)),
                    Err(e) => (u.done)(Err(e)),
                }
            }
            let kato = Duration::from_millis(self.opts.kato_ms as u64);
            if kato.is_zero() {
                return Ok(());
            }
            match self.keep_alive_sent {
                Some(sent) if now.duration_since(sent) > kato => {
                    return Err(HostError::Timeout("keep alive unanswered within KATO".into()))
                }
                None if now >= self.next_keep_alive => {
                    self.submit(cmd::keep_alive(), Dir::None, Vec::new(), TAG_KEEP_ALIVE)?;
                    self.keep_alive_sent = Some(now);
                }
                _ => {}
            }
            return Ok(());
        }
        if now > self.step_deadline {
            return Err(HostError::Timeout(format!("controller bring-up stuck at {:?}", self.step)));
        }
        if self.step_in_flight || !self.admin.as_ref().is_some_and(|q| q.is_ready()) {
            return Ok(());
        }
        let (command, dir, len) = match self.step {
            Step::Connect => {
                self.step = Step::ReadCap;
                (cmd::property_get(prop::CAP, true), Dir::None, 0)
            }
            Step::ReadCap => unreachable!("ReadCap is always in flight when current"),
            Step::ReadVs => (cmd::property_get(prop::VS, false), Dir::None, 0),
            Step::Enable => (cmd::property_set(prop::CC, cmd::CC_ENABLE), Dir::None, 0),
            Step::WaitReady => {
                if now < self.next_csts {
                    return Ok(());
                }
                (cmd::property_get(prop::CSTS, false), Dir::None, 0)
            }
            Step::IdentifyCtrlr => (cmd::identify(1, 0), Dir::FromCtrlr, identify::LEN),
            Step::ActiveNs => (cmd::identify(2, 0), Dir::FromCtrlr, identify::LEN),
            Step::IdentifyNs(i) => (cmd::identify(0, self.ns_ids[i]), Dir::FromCtrlr, identify::LEN),
            Step::SetQueues => (cmd::set_num_queues(self.opts.num_io_queues), Dir::None, 0),
            Step::Quiesce => {
                if self.shared.lock().quiesce_wanted.is_none() {
                    self.set_up_queues(now);
                }
                return Ok(());
            }
            Step::QueueSetup(i) => (self.setup[i].cmd, Dir::None, 0),
            Step::Ready | Step::Delayed(_) | Step::Deleted => return Ok(()),
        };
        self.submit(command, dir, vec![0; len], TAG_STEP)?;
        self.step_in_flight = true;
        Ok(())
    }

    fn on_completion(&mut self, c: QpCompletion, now: Instant) -> Result<(), HostError> {
        if c.tag >= TAG_USER {
            if let Some(i) = self.user_inflight.iter().position(|(t, _)| *t == c.tag) {
                let (_, done) = self.user_inflight.swap_remove(i);
                done(Ok((c.cpl, c.data.unwrap_or_default())));
            }
            return Ok(());
        }
        if c.tag == TAG_KEEP_ALIVE {
            if !c.cpl.status.is_success() {
                return Err(HostError::Bringup { step: "keep alive", reason: format!("{:?}", c.cpl.status) });
            }
            self.keep_alive_sent = None;
            self.next_keep_alive = now + Duration::from_millis(self.opts.kato_ms as u64 / 2);
            return Ok(());
        }
        self.step_in_flight = false;
        let cpl = c.cpl;
        let data = c.data.unwrap_or_default();
        let step_name = format!("{:?}", self.step);
        let fail = |reason: String| HostError::Bringup { step: "bring-up", reason: format!("{step_name}: {reason}") };
        if !cpl.status.is_success() {
            match self.step {
                Step::QueueSetup(i) if !self.setup[i].required => {
                    tracing::info!(ctrlr = %self.transport.describe(), "{} refused ({:?}): going on without it", self.setup[i].what, cpl.status);
                }
                Step::QueueSetup(i) => return Err(fail(format!("{}: status {:?}", self.setup[i].what, cpl.status))),
                _ => return Err(fail(format!("status {:?}", cpl.status))),
            }
        }
        match self.step {
            Step::ReadCap => {
                self.cap = dword64(&cpl);
                // CAP.TO in 500 ms units; at least a second.
                let to = ((self.cap >> 24) & 0xff).max(2) * 500;
                self.ready_deadline = now + Duration::from_millis(to);
                self.step = Step::ReadVs;
            }
            Step::ReadVs => self.step = Step::Enable,
            Step::Enable => {
                self.next_csts = now;
                self.step = Step::WaitReady;
            }
            Step::WaitReady => {
                let csts = cpl.dw0;
                if csts & 2 != 0 {
                    return Err(fail("controller fatal status (CSTS.CFS)".into()));
                }
                if csts & 1 != 0 {
                    self.step = Step::IdentifyCtrlr;
                } else if now > self.ready_deadline {
                    return Err(fail("CSTS.RDY not set within CAP.TO".into()));
                } else {
                    self.next_csts = now + CSTS_INTERVAL;
                }
            }
            Step::IdentifyCtrlr => {
                let d = CtrlrData::parse(id_data(&data)?);
                if self.transport.is_fabrics() && d.icdoff != 0 {
                    return Err(fail(format!("ICDOFF {} (only 0 is supported)", d.icdoff)));
                }
                if self.transport.is_fabrics() && d.ioccsz < 4 {
                    return Err(fail(format!("IOCCSZ {} below 4", d.ioccsz)));
                }
                self.data = d;
                self.step = Step::ActiveNs;
            }
            Step::ActiveNs => {
                self.ns_ids = identify::active_ns_list(id_data(&data)?);
                self.namespaces.clear();
                self.step = if self.ns_ids.is_empty() { Step::SetQueues } else { Step::IdentifyNs(0) };
            }
            Step::IdentifyNs(i) => {
                let nsid = self.ns_ids[i];
                match NsData::parse(id_data(&data)?) {
                    Some(ns) if ns.metadata == 0 && ns.nsze > 0 => self.namespaces.push(Namespace { nsid, data: ns }),
                    Some(_) => tracing::warn!(nsid, "namespace skipped: empty or with metadata"),
                    None => tracing::warn!(nsid, "namespace skipped: unusable LBA format"),
                }
                self.step = if i + 1 < self.ns_ids.len() { Step::IdentifyNs(i + 1) } else { Step::SetQueues };
            }
            Step::SetQueues => {
                let nsqa = (cpl.dw0 & 0xffff) as u16;
                let ncqa = (cpl.dw0 >> 16) as u16;
                self.io_queues =
                    nsqa.min(ncqa).saturating_add(1).min(self.opts.num_io_queues).min(self.transport.max_io_queues());
                self.io_qsize = self.io_queue_size();
                if self.was_ready && self.opts.quiesce_io_threads {
                    let mut s = self.shared.lock();
                    if s.quiesced < s.generation {
                        s.quiesce_wanted = Some(s.generation);
                        drop(s);
                        self.step = Step::Quiesce;
                        return Ok(());
                    }
                }
                self.set_up_queues(now);
            }
            Step::QueueSetup(i) => {
                // (A failed optional command was let through above.)
                if i + 1 < self.setup.len() {
                    self.step = Step::QueueSetup(i + 1);
                } else {
                    self.ready(now);
                }
            }
            s => return Err(fail(format!("unexpected completion in step {s:?}"))),
        }
        Ok(())
    }

    /// Runs the transport's queue setup (its commands follow), or is ready if it has none.
    fn set_up_queues(&mut self, now: Instant) {
        self.setup = self.transport.queue_setup(&self.data, self.io_queues, self.io_qsize);
        if self.setup.is_empty() {
            self.ready(now);
        } else {
            self.step = Step::QueueSetup(0);
        }
    }

    /// Entries per I/O queue: what was asked, within CAP.MQES, MAXCMD and the transport.
    fn io_queue_size(&self) -> u16 {
        let mqes = (self.cap & 0xffff) as u16;
        let mut qsize = self.opts.io_queue_size.min(mqes.saturating_add(1)).min(self.transport.max_queue_size()).max(2);
        if self.data.maxcmd > 1 {
            qsize = qsize.min(self.data.maxcmd);
        }
        qsize
    }

    fn ready(&mut self, now: Instant) {
        let cntlid = match self.admin.as_ref().map(|q| q.cntlid()) {
            Some(id) if self.transport.is_fabrics() => id,
            _ => self.data.cntlid,
        };
        let qsize = self.io_qsize;
        // MDTS is in units of the minimum page size (CAP.MPSMIN, 4 KiB << n); 0 means no limit.
        let page = 4096u64 << ((self.cap >> 48) & 0xf);
        let max_transfer = match self.data.mdts {
            0 => DEFAULT_MAX_TRANSFER,
            m if m >= 20 => DEFAULT_MAX_TRANSFER,
            m => (page << m).min(DEFAULT_MAX_TRANSFER as u64) as u32,
        };
        let in_capsule = (self.data.ioccsz * 16).saturating_sub(64);
        {
            let mut s = self.shared.lock();
            s.state = CtrlrState::Enabled;
            s.generation += 1;
            s.cntlid = cntlid;
            s.limits = IoLimits { in_capsule, max_transfer };
            s.io_queue_size = qsize;
            s.fail_io = false;
            s.data = self.data.clone();
            s.free_qids = (1..=self.io_queues).rev().collect();
            s.reset_requested = false;
        }
        tracing::info!(
            ctrlr = %self.transport.describe(),
            cntlid,
            io_queues = self.io_queues,
            qsize,
            namespaces = self.namespaces.len(),
            "NVMe controller ready"
        );
        self.step = Step::Ready;
        self.was_ready = true;
        self.lost_since = None;
        self.error = None;
        self.next_keep_alive = now + Duration::from_millis(self.opts.kato_ms as u64 / 2);
    }

    /// Sends admin command `cmd` reading `len` bytes (0: no data) once the controller is
    /// ready; `done` gets the completion and the data, or the error that stopped it (also when
    /// the controller is not ready now: the owner retries if it wants).
    pub fn admin_command(&mut self, cmd: crate::spec::Command, len: usize, done: AdminDone) {
        if self.step != Step::Ready {
            done(Err(HostError::Reset(format!("the controller is {}", self.state().spdk_name()))));
            return;
        }
        self.user_queue.push(UserCmd { cmd, len, done });
    }

    /// Tells the controller the host is going away (CC.SHN), best effort, without waiting.
    pub fn shutdown(&mut self) {
        if self.step == Step::Ready {
            let _ = self.submit(cmd::property_set(prop::CC, cmd::CC_SHUTDOWN), Dir::None, Vec::new(), 0);
            if let Some(q) = self.admin.as_mut() {
                let mut out = Vec::new();
                let _ = q.poll(&mut out);
            }
        }
        self.step = Step::Deleted;
        self.admin = None;
        for (_, done) in self.user_inflight.drain(..) {
            done(Err(HostError::Closed));
        }
        let mut s = self.shared.lock();
        s.state = CtrlrState::Deleted;
        s.fail_io = true;
    }
}

/// Largest transfer Ferry sends in one command when the controller sets no smaller MDTS.
pub const DEFAULT_MAX_TRANSFER: u32 = 128 << 10;

fn dword64(c: &Completion) -> u64 {
    c.dw0 as u64 | ((c.dw1 as u64) << 32)
}

fn id_data(d: &[u8]) -> Result<&[u8; identify::LEN], HostError> {
    d.try_into().map_err(|_| HostError::Unexpected("Identify data of the wrong size".into()))
}

/// A controller of any transport, as its owner drives it (object safe, so one table holds
/// controllers of every transport).
pub trait Driver: Send {
    /// [`Controller::poll`].
    fn poll(&mut self, now: Instant) -> bool;
    /// [`Controller::state`].
    fn state(&self) -> CtrlrState;
    /// [`Controller::error`].
    fn error(&self) -> Option<&HostError>;
    /// [`Controller::namespaces`].
    fn namespaces(&self) -> &[Namespace];
    /// [`Controller::shared`].
    fn shared(&self) -> &Arc<Shared>;
    /// [`Controller::reset`].
    fn reset(&mut self, now: Instant);
    /// [`Controller::shutdown`].
    fn shutdown(&mut self);
    /// [`Controller::admin_command`].
    fn admin_command(&mut self, cmd: crate::spec::Command, len: usize, done: AdminDone);
    /// Identify Controller of the last bring-up.
    fn data(&self) -> &CtrlrData;
}

impl<T: Transport> Driver for Controller<T>
where
    T::Qpair: Send,
{
    fn poll(&mut self, now: Instant) -> bool {
        Controller::poll(self, now)
    }
    fn state(&self) -> CtrlrState {
        Controller::state(self)
    }
    fn error(&self) -> Option<&HostError> {
        Controller::error(self)
    }
    fn namespaces(&self) -> &[Namespace] {
        Controller::namespaces(self)
    }
    fn shared(&self) -> &Arc<Shared> {
        Controller::shared(self)
    }
    fn reset(&mut self, now: Instant) {
        Controller::reset(self, now)
    }
    fn shutdown(&mut self) {
        Controller::shutdown(self)
    }
    fn admin_command(&mut self, cmd: crate::spec::Command, len: usize, done: AdminDone) {
        Controller::admin_command(self, cmd, len, done)
    }
    fn data(&self) -> &CtrlrData {
        Controller::data(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{Seg, SetupCmd};
    use crate::spec::Command;

    /// What the scripted controller saw, in order.
    type Log = Arc<Mutex<Vec<String>>>;

    /// An admin queue pair that completes every command at the next poll, successfully, with
    /// dw0 = 1 (CAP.MQES 1, CSTS.RDY, one queue pair granted) and zeroed data.
    struct ScriptedAdmin {
        log: Log,
        pending: Vec<(u64, Vec<u8>)>,
    }

    impl Qpair for ScriptedAdmin {
        fn submit_owned(&mut self, cmd: Command, _dir: Dir, data: Vec<u8>, tag: u64) -> Result<(), HostError> {
            self.log.lock().unwrap().push(format!("admin opcode {:#x}", cmd.opcode()));
            self.pending.push((tag, data));
            Ok(())
        }
        unsafe fn submit_segs(&mut self, _: Command, _: Dir, _: &[Seg], _: u64) -> Result<(), HostError> {
            unreachable!("the controller sends owned buffers only")
        }
        fn poll(&mut self, out: &mut Vec<QpCompletion>) -> Result<bool, HostError> {
            let any = !self.pending.is_empty();
            for (tag, data) in self.pending.drain(..) {
                let cpl = Completion { dw0: 1, ..Default::default() };
                out.push(QpCompletion { tag, cpl, data: Some(data) });
            }
            Ok(any)
        }
        fn is_ready(&self) -> bool {
            true
        }
        fn cntlid(&self) -> u16 {
            1
        }
        fn free_slots(&self) -> usize {
            1
        }
        fn take_unfinished(&mut self) -> Vec<u64> {
            self.pending.drain(..).map(|(t, _)| t).collect()
        }
        fn raw_fd(&self) -> Option<i32> {
            None
        }
    }

    /// A PCIe-like transport: queue setup (one command) logged when the controller asks.
    struct ScriptedTransport {
        log: Log,
    }

    impl Transport for ScriptedTransport {
        type Qpair = ScriptedAdmin;
        fn connect_admin(&self, _: u32) -> Result<ScriptedAdmin, HostError> {
            self.log.lock().unwrap().push("connect admin".into());
            Ok(ScriptedAdmin { log: self.log.clone(), pending: Vec::new() })
        }
        fn connect_io(&self, _: u16, _: u16, _: u16, _: &IoLimits) -> Result<ScriptedAdmin, HostError> {
            unreachable!("not opened by the controller")
        }
        fn describe(&self) -> String {
            "scripted".into()
        }
        fn is_fabrics(&self) -> bool {
            false
        }
        fn queue_setup(&self, _: &CtrlrData, _: u16, _: u16) -> Vec<SetupCmd> {
            self.log.lock().unwrap().push("queue setup".into());
            vec![SetupCmd { cmd: Command::new(0x05, 0), required: true, what: "Create I/O Completion Queue" }]
        }
    }

    fn controller(quiesce_io_threads: bool) -> (Controller<ScriptedTransport>, Log) {
        let log = Log::default();
        let opts = CtrlrOpts {
            kato_ms: 0,
            num_io_queues: 1,
            io_queue_size: 2,
            policy: ReconnectPolicy::default(),
            bringup_timeout: Duration::from_secs(60),
            quiesce_io_threads,
        };
        (Controller::new(Arc::new(ScriptedTransport { log: log.clone() }), opts), log)
    }

    /// Polls until the controller is enabled again, or `limit` polls.
    fn poll_until_enabled(c: &mut Controller<ScriptedTransport>, limit: usize) -> bool {
        for _ in 0..limit {
            c.poll(Instant::now());
            if c.state() == CtrlrState::Enabled {
                return true;
            }
        }
        false
    }

    #[test]
    fn a_reconnection_makes_queues_only_once_every_io_thread_saw_the_new_generation() {
        let (mut c, log) = controller(true);
        assert!(poll_until_enabled(&mut c, 100), "the first bring-up never waits");
        assert_eq!(c.shared().quiesce_wanted(), None);
        let before = c.shared().io_view().generation;

        log.lock().unwrap().clear();
        c.reset(Instant::now());
        assert!(!poll_until_enabled(&mut c, 100), "no new queues before the I/O threads quiesced");
        let wanted = c.shared().quiesce_wanted().expect("the owner is asked to quiesce");
        assert!(wanted > before, "the generation asked for is newer than the old queues'");
        assert!(!log.lock().unwrap().iter().any(|l| l == "queue setup"), "{:?}", log.lock().unwrap());

        c.shared().mark_quiesced(wanted - 1);
        assert!(!poll_until_enabled(&mut c, 10), "an older generation's quiescence is not enough");
        c.shared().mark_quiesced(wanted);
        assert!(poll_until_enabled(&mut c, 100), "the bring-up goes on once quiesced");
        assert!(log.lock().unwrap().iter().any(|l| l == "queue setup"));
        assert_eq!(c.shared().quiesce_wanted(), None);
    }

    #[test]
    fn without_the_option_a_reconnection_does_not_wait() {
        let (mut c, _) = controller(false);
        assert!(poll_until_enabled(&mut c, 100));
        c.reset(Instant::now());
        assert!(poll_until_enabled(&mut c, 100));
        assert_eq!(c.shared().quiesce_wanted(), None);
    }
}

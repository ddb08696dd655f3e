//! Reactors: one pinned thread per core, each running pollers and draining its message ring.
//!
//! A reactor polls while any poller reports work and, after [`IDLE_BEFORE_SLEEP`] without
//! work (as seen at the start of a whole round of its pollers; work a poller reports as
//! [`PollStatus::Signalled`] does not count), sleeps in `epoll_wait` on its message eventfd
//! and on every interrupt fd registered by its pollers (io_uring completion eventfds, virtqueue kicks, sockets), bounded by the
//! next timed poller's deadline. Going to sleep is race-free: the reactor publishes
//! `sleeping` before its last look at the message ring, and a sender that sees `sleeping`
//! after pushing writes the eventfd (a Dekker pair with full fences on both sides).

use super::ticks;
use super::Cpumask;
use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;
use thiserror::Error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How long a reactor keeps polling after the last unit of work before it sleeps.
pub const IDLE_BEFORE_SLEEP: Duration = Duration::from_micros(500);

/// Messages drained per loop iteration, so pollers are not starved by a flood of messages.
const MESSAGE_BATCH: usize = 64;

/// A closure run on a reactor thread.
pub type Message = Box<dyn FnOnce() + Send + 'static>;

/// Errors of the reactor framework.
#[derive(Debug, Error)]
pub enum FrameworkError {
    /// The framework was started twice in one process.
    #[error("the reactor framework is already running")]
    AlreadyStarted,
    /// No reactor with that index exists.
    #[error("no reactor with index {0}")]
    NoSuchReactor(usize),
    /// The reactor has stopped and takes no more messages.
    #[error("reactor {0} has stopped")]
    Stopped(usize),
    /// A blocking call was made from the reactor it targets (it would deadlock).
    #[error("blocking call to reactor {0} from its own thread")]
    SelfCall(usize),
    /// The framework has not been started.
    #[error("the reactor framework is not running")]
    NotStarted,
    /// Setting up a reactor thread failed.
    #[error("starting reactor on core {core}: {source}")]
    Setup {
        /// The core of the failing reactor.
        core: u32,
        /// What failed.
        source: std::io::Error,
    },
    /// The closure of a blocking call panicked.
    #[error("the call on reactor {0} panicked")]
    CallPanicked(usize),
}

/// What a poller did in one run: the reactor stays awake while pollers are busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    /// Did work; poll again soon.
    Busy,
    /// Did work, and the poller's next work is always announced on an interrupt source it
    /// registered ([`register_interrupt`]) whatever the reactor does: completions handed over
    /// by another library's threads, say. Counted as busy time, but it does not keep the
    /// reactor spinning: a round with nothing else to do may go to sleep at once, and the
    /// signal wakes it. Spinning there would only take the core from the threads that
    /// produce the work (librados's, on a shared core).
    Signalled,
    /// Found nothing to do.
    Idle,
}

impl From<bool> for PollStatus {
    fn from(busy: bool) -> Self {
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}

/// State of a reactor visible from every thread.
struct Shared {
    index: usize,
    core: u32,
    tx: Sender<Message>,
    wake: EventFd,
    sleeping: AtomicBool,
    stop: AtomicBool,
    stopped: AtomicBool,
    busy_ticks: AtomicU64,
    idle_ticks: AtomicU64,
    active_pollers: AtomicUsize,
    timed_pollers: AtomicUsize,
    interrupt_fds: AtomicUsize,
    started_tick: u64,
}

/// A handle to one reactor, usable from any thread.
#[derive(Clone)]
pub struct ReactorHandle {
    shared: Arc<Shared>,
}

impl ReactorHandle {
    /// The reactor's index (0-based, in core order).
    pub fn index(&self) -> usize {
        self.shared.index
    }

    /// The core the reactor is pinned to.
    pub fn core(&self) -> u32 {
        self.shared.core
    }

    /// Runs `msg` on this reactor, soon.
    pub fn send(&self, msg: impl FnOnce() + Send + 'static) -> Result<(), FrameworkError> {
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(FrameworkError::Stopped(self.shared.index));
        }
        self.shared.tx.send(Box::new(msg)).map_err(|_| FrameworkError::Stopped(self.shared.index))?;
        fence(Ordering::SeqCst);
        if self.shared.sleeping.load(Ordering::SeqCst) {
            // A failed write means the counter is saturated: the reactor is awake anyway.
            let _ = self.shared.wake.write(1);
        }
        Ok(())
    }

    /// Statistics of this reactor.
    pub fn stats(&self) -> ReactorStats {
        let s = &self.shared;
        ReactorStats {
            index: s.index,
            core: s.core,
            busy_ticks: s.busy_ticks.load(Ordering::Relaxed),
            idle_ticks: s.idle_ticks.load(Ordering::Relaxed),
            elapsed_ticks: ticks::now().saturating_sub(s.started_tick),
            sleeping: s.sleeping.load(Ordering::Relaxed),
            active_pollers: s.active_pollers.load(Ordering::Relaxed),
            timed_pollers: s.timed_pollers.load(Ordering::Relaxed),
            interrupt_fds: s.interrupt_fds.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of one reactor's counters.
#[derive(Debug, Clone)]
pub struct ReactorStats {
    /// Reactor index.
    pub index: usize,
    /// Pinned core.
    pub core: u32,
    /// Ticks spent in iterations where something did work.
    pub busy_ticks: u64,
    /// Ticks spent idle (polling with nothing to do, or asleep).
    pub idle_ticks: u64,
    /// Ticks since the reactor started.
    pub elapsed_ticks: u64,
    /// Whether it is asleep in interrupt mode right now.
    pub sleeping: bool,
    /// Busy (period 0) pollers registered.
    pub active_pollers: usize,
    /// Timed pollers registered.
    pub timed_pollers: usize,
    /// Interrupt fds the reactor sleeps on besides its own.
    pub interrupt_fds: usize,
}

/// The running reactors of this process.
struct Framework {
    reactors: Vec<ReactorHandle>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    mask: Cpumask,
}

static FRAMEWORK: OnceLock<Framework> = OnceLock::new();

/// Starts one reactor thread per core of `mask`, each pinned to its core.
///
/// A process has one set of reactors; starting twice is an error. When `pin` is false the
/// threads are not pinned (tests running many daemons on two cores).
pub fn start(mask: &Cpumask, pin: bool) -> Result<(), FrameworkError> {
    if FRAMEWORK.get().is_some() {
        return Err(FrameworkError::AlreadyStarted);
    }
    let tick_start = ticks::now();
    ticks::tick_rate();
    let mut reactors = Vec::new();
    let mut threads = Vec::new();
    let mut ready = Vec::new();
    for (index, &core) in mask.cores().iter().enumerate() {
        let (tx, rx) = mpsc::channel();
        let wake = EventFd::new(EFD_NONBLOCK).map_err(|source| FrameworkError::Setup { core, source })?;
        let shared = Arc::new(Shared {
            index,
            core,
            tx,
            wake,
            sleeping: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            busy_ticks: AtomicU64::new(0),
            idle_ticks: AtomicU64::new(0),
            active_pollers: AtomicUsize::new(0),
            timed_pollers: AtomicUsize::new(0),
            interrupt_fds: AtomicUsize::new(0),
            started_tick: tick_start,
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("reactor_{core}"))
            .spawn(move || {
                let setup = Local::new(thread_shared, rx, pin);
                match setup {
                    Ok(local) => {
                        let _ = ready_tx.send(Ok(()));
                        local.run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|source| FrameworkError::Setup { core, source })?;
        reactors.push(ReactorHandle { shared });
        threads.push(thread);
        ready.push((core, ready_rx));
    }
    for (core, rx) in ready {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(FrameworkError::Setup { core, source }),
            Err(_) => return Err(FrameworkError::Setup { core, source: std::io::Error::other("reactor thread died") }),
        }
    }
    FRAMEWORK
        .set(Framework { reactors, threads: Mutex::new(threads), mask: mask.clone() })
        .map_err(|_| FrameworkError::AlreadyStarted)
}

/// Stops every reactor after it finishes its current iteration and joins the threads.
/// Thread-local state (pollers, I/O channels) is dropped on each reactor as it exits.
pub fn shutdown() {
    let Some(fw) = FRAMEWORK.get() else { return };
    for r in &fw.reactors {
        r.shared.stop.store(true, Ordering::SeqCst);
        let _ = r.shared.wake.write(1);
    }
    let threads = std::mem::take(&mut *fw.threads.lock().unwrap_or_else(|e| e.into_inner()));
    for t in threads {
        let _ = t.join();
    }
}

/// All reactors, in index order (empty before `start`).
pub fn reactors() -> &'static [ReactorHandle] {
    FRAMEWORK.get().map(|f| f.reactors.as_slice()).unwrap_or(&[])
}

/// The mask the framework was started with.
pub fn cpumask() -> Option<&'static Cpumask> {
    FRAMEWORK.get().map(|f| &f.mask)
}

/// The reactor with this index.
pub fn reactor(index: usize) -> Result<&'static ReactorHandle, FrameworkError> {
    if FRAMEWORK.get().is_none() {
        return Err(FrameworkError::NotStarted);
    }
    reactors().get(index).ok_or(FrameworkError::NoSuchReactor(index))
}

/// Runs `msg` on reactor `index`.
pub fn send(index: usize, msg: impl FnOnce() + Send + 'static) -> Result<(), FrameworkError> {
    reactor(index)?.send(msg)
}

/// Runs `f` on reactor `index` and waits for its result. For control-path threads only.
pub fn call<R: Send + 'static>(index: usize, f: impl FnOnce() -> R + Send + 'static) -> Result<R, FrameworkError> {
    if current_index() == Some(index) {
        return Err(FrameworkError::SelfCall(index));
    }
    let (tx, rx) = mpsc::sync_channel(1);
    reactor(index)?.send(move || {
        let _ = tx.send(f());
    })?;
    rx.recv().map_err(|_| FrameworkError::CallPanicked(index))
}

/// Runs `f` on every reactor, one after another, waiting for each.
pub fn call_on_each<R: Send + 'static>(f: impl Fn() -> R + Send + Sync + 'static) -> Result<Vec<R>, FrameworkError> {
    let f = Arc::new(f);
    (0..reactors().len())
        .map(|i| {
            let f = f.clone();
            call(i, move || f())
        })
        .collect()
}

/// Runs `each` on every reactor without waiting, then `done` once, right after the last of
/// them (on that reactor; here if no reactor is left to run it). A reactor that has stopped
/// counts as done: it runs nothing any more. SPDK's `spdk_for_each_thread`: by the time `done`
/// runs, every reactor has finished whatever it was doing when this was called.
pub fn for_each_reactor(each: impl Fn() + Send + Sync + 'static, done: impl FnOnce() + Send + 'static) {
    struct Round {
        left: AtomicUsize,
        each: Box<dyn Fn() + Send + Sync>,
        done: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }
    impl Round {
        fn arrive(&self) {
            if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
                let done = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(done) = done {
                    done();
                }
            }
        }
    }
    let count = reactors().len();
    // One arrival from here too: with no reactor to send to, `done` still runs.
    let round = Arc::new(Round {
        left: AtomicUsize::new(count + 1),
        each: Box::new(each),
        done: Mutex::new(Some(Box::new(done))),
    });
    for index in 0..count {
        let r = round.clone();
        if send(index, move || {
            (r.each)();
            r.arrive();
        })
        .is_err()
        {
            round.arrive();
        }
    }
    round.arrive();
}

/// The index of the reactor running the current thread, if it is one.
pub fn current_index() -> Option<usize> {
    LOCAL.with(|l| l.get().map(|l| l.shared.index))
}

struct PollerState {
    name: String,
    period_ticks: u64,
    next_run: Cell<u64>,
    active: Cell<bool>,
    run_count: Cell<u64>,
    busy_count: Cell<u64>,
    panics: Cell<u64>,
    func: RefCell<Box<dyn FnMut() -> PollStatus>>,
}

/// A registered poller; dropping it unregisters the poller.
pub struct Poller {
    state: Rc<PollerState>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.state.active.set(false);
    }
}

/// A snapshot of one poller, for `thread_get_pollers`.
#[derive(Debug, Clone)]
pub struct PollerInfo {
    /// The name given at registration.
    pub name: String,
    /// 0 for busy pollers.
    pub period_ticks: u64,
    /// Times run.
    pub run_count: u64,
    /// Runs that reported work.
    pub busy_count: u64,
}

/// Registers a poller on the current reactor. `period` zero makes a busy poller that runs
/// every iteration; otherwise it runs at most once per period. Panics off a reactor thread:
/// that is a programming error, not an input error.
pub fn poller_register(name: &str, period: Duration, func: impl FnMut() -> PollStatus + 'static) -> Poller {
    let period_ticks = if period.is_zero() { 0 } else { ticks::from_duration(period).max(1) };
    let state = Rc::new(PollerState {
        name: name.to_string(),
        period_ticks,
        next_run: Cell::new(ticks::now() + period_ticks),
        active: Cell::new(true),
        run_count: Cell::new(0),
        busy_count: Cell::new(0),
        panics: Cell::new(0),
        func: RefCell::new(Box::new(func)),
    });
    with_local(|l| {
        let counter = if period_ticks == 0 { &l.shared.active_pollers } else { &l.shared.timed_pollers };
        counter.fetch_add(1, Ordering::Relaxed);
        l.pollers.borrow_mut().push(state.clone());
    });
    Poller { state }
}

/// The pollers of the current reactor.
pub fn pollers() -> Vec<PollerInfo> {
    with_local(|l| {
        l.pollers
            .borrow()
            .iter()
            .filter(|p| p.active.get())
            .map(|p| PollerInfo {
                name: p.name.clone(),
                period_ticks: p.period_ticks,
                run_count: p.run_count.get(),
                busy_count: p.busy_count.get(),
            })
            .collect()
    })
}

/// An fd the current reactor also sleeps on; dropping it removes the fd from the set.
///
/// The fd is watched edge-triggered and never read: each write to an eventfd is a new edge
/// that wakes a sleeping reactor, and after waking the reactor runs every poller anyway.
/// Never reading matters: these fds may belong to a peer (a guest's kick eventfd), which can
/// leave them in blocking mode with a zero count, and a `read(2)` would then block the
/// reactor. (An eventfd's counter cannot realistically overflow from kicks: 2^64 of them.)
pub struct InterruptSource {
    fd: RawFd,
    reactor: usize,
}

impl Drop for InterruptSource {
    fn drop(&mut self) {
        let fd = self.fd;
        if current_index() == Some(self.reactor) {
            with_local(|l| l.remove_interrupt(fd));
        }
    }
}

/// Adds `fd` to the set the current reactor sleeps on (see [`InterruptSource`]).
pub fn register_interrupt(fd: RawFd) -> std::io::Result<InterruptSource> {
    with_local(|l| {
        let event = EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, fd as u64);
        match l.epoll.ctl(ControlOperation::Add, fd, event) {
            // A registration left behind by an fd closed while its file stayed open elsewhere
            // (epoll keys on fd and file): take it over.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => l.epoll.ctl(ControlOperation::Modify, fd, event)?,
            other => other?,
        }
        l.shared.interrupt_fds.fetch_add(1, Ordering::Relaxed);
        Ok(InterruptSource { fd, reactor: l.shared.index })
    })
}

thread_local! {
    static LOCAL: std::cell::OnceCell<Rc<Local>> = const { std::cell::OnceCell::new() };
    /// When the reactor's current round of pollers started (ticks; 0 off a reactor).
    static ROUND_START: Cell<u64> = const { Cell::new(0) };
}

/// The tick count at which the current reactor's round of pollers started: a clock reading
/// pollers can compare without reading the clock themselves (a read costs ~17 ns on these
/// virtual machines). The reactor sleeps only in a round that started more than
/// [`IDLE_BEFORE_SLEEP`] after the last busy poller, so a poller that acts once its own idle
/// time by this clock passes a shorter threshold acts before the reactor sleeps. Off a
/// reactor thread it reads the clock.
pub fn round_start() -> u64 {
    match ROUND_START.with(Cell::get) {
        0 => ticks::now(),
        t => t,
    }
}

fn with_local<R>(f: impl FnOnce(&Local) -> R) -> R {
    LOCAL.with(|l| {
        let local = l.get().expect("called off a reactor thread");
        f(local)
    })
}

/// The reactor's own thread-local state.
struct Local {
    shared: Arc<Shared>,
    rx: Receiver<Message>,
    pollers: RefCell<Vec<Rc<PollerState>>>,
    epoll: Epoll,
}

impl Local {
    fn new(shared: Arc<Shared>, rx: Receiver<Message>, pin: bool) -> std::io::Result<Rc<Local>> {
        if pin {
            super::cpumask::pin_current_thread(&[shared.core])?;
        }
        let epoll = Epoll::new()?;
        let wake_fd = shared.wake.as_raw_fd();
        epoll.ctl(ControlOperation::Add, wake_fd, EpollEvent::new(EventSet::IN, wake_fd as u64))?;
        let local = Rc::new(Local { shared, rx, pollers: RefCell::new(Vec::new()), epoll });
        LOCAL.with(|l| l.set(local.clone()).map_err(|_| std::io::Error::other("reactor already set")))?;
        Ok(local)
    }

    fn remove_interrupt(&self, fd: RawFd) {
        if self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default()).is_ok() {
            self.shared.interrupt_fds.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn run(self: Rc<Self>) {
        tracing::debug!(core = self.shared.core, "reactor started");
        let mut last_busy = ticks::now();
        let idle_ticks = ticks::from_duration(IDLE_BEFORE_SLEEP);
        let mut iteration_start = last_busy;
        while !self.shared.stop.load(Ordering::Relaxed) {
            ROUND_START.with(|r| r.set(iteration_start));
            let messages = self.drain_messages();
            let (busy, signalled) = self.run_pollers(iteration_start);
            let busy = messages | busy;
            let now = ticks::now();
            let spent = now - iteration_start;
            if busy {
                self.shared.busy_ticks.fetch_add(spent, Ordering::Relaxed);
                last_busy = now;
            } else if signalled {
                // Work done, but only work that will be signalled again: it does not restart
                // the idle clock, so the next round that finds nothing sleeps if the polled
                // pollers have been idle long enough.
                self.shared.busy_ticks.fetch_add(spent, Ordering::Relaxed);
            } else {
                self.shared.idle_ticks.fetch_add(spent, Ordering::Relaxed);
                // Measured from the start of this round, not its end: every poller of this
                // round then saw at least IDLE_BEFORE_SLEEP without work before the reactor
                // sleeps. Pollers that prepare for sleep after a shorter idle time (an NVMe
                // queue arming its event index, say) rely on it; a round that ends late (the
                // thread preempted after the pollers ran) must not skip their last look.
                if iteration_start.wrapping_sub(last_busy) > idle_ticks {
                    self.sleep();
                    let woke = ticks::now();
                    self.shared.idle_ticks.fetch_add(woke - now, Ordering::Relaxed);
                    // The idle clock is not restarted by waking up: if what woke the reactor
                    // (a timed poller, signalled work, a spurious edge) makes no poller busy,
                    // the next round goes back to sleep instead of spinning another
                    // IDLE_BEFORE_SLEEP. Work found after the wake-up restarts it as usual.
                    iteration_start = woke;
                    continue;
                }
            }
            iteration_start = now;
        }
        // Drop pollers (and the channels they own) on this thread, then refuse messages.
        self.shared.stopped.store(true, Ordering::Release);
        while let Ok(msg) = self.rx.try_recv() {
            run_guarded(msg);
        }
        self.pollers.borrow_mut().clear();
        tracing::debug!(core = self.shared.core, "reactor stopped");
    }

    fn drain_messages(&self) -> bool {
        let mut any = false;
        for _ in 0..MESSAGE_BATCH {
            match self.rx.try_recv() {
                Ok(msg) => {
                    run_guarded(msg);
                    any = true;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        any
    }

    /// Runs every due poller once; returns whether any was busy, and whether any did work
    /// that is signalled ([`PollStatus::Signalled`]).
    fn run_pollers(&self, now: u64) -> (bool, bool) {
        let mut busy = false;
        let mut signalled = false;
        let mut i = 0;
        loop {
            let poller = match self.pollers.borrow().get(i) {
                Some(p) => p.clone(),
                None => break,
            };
            if !poller.active.get() {
                self.pollers.borrow_mut().swap_remove(i);
                let counter =
                    if poller.period_ticks == 0 { &self.shared.active_pollers } else { &self.shared.timed_pollers };
                counter.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            i += 1;
            if poller.period_ticks != 0 {
                if now < poller.next_run.get() {
                    continue;
                }
                poller.next_run.set(now + poller.period_ticks);
            }
            // A poller that re-enters itself (it cannot, it has no handle to its own run) would
            // find the RefCell borrowed; try_borrow_mut keeps that from panicking.
            let Ok(mut func) = poller.func.try_borrow_mut() else { continue };
            // A panicking poller is a bug, but it costs the event it was handling, not the
            // reactor and every device on it. The poller stays registered.
            let run = || ticks::run_batched(&mut *func);
            let status = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                Ok(status) => status,
                Err(_) => {
                    poller.panics.set(poller.panics.get() + 1);
                    if poller.panics.get() <= 10 {
                        tracing::error!(poller = %poller.name, "poller panicked; the reactor keeps running");
                    }
                    PollStatus::Busy
                }
            };
            poller.run_count.set(poller.run_count.get() + 1);
            match status {
                PollStatus::Busy => busy = true,
                PollStatus::Signalled => signalled = true,
                PollStatus::Idle => continue,
            }
            poller.busy_count.set(poller.busy_count.get() + 1);
        }
        (busy, signalled)
    }

    /// Sleeps until a message, an interrupt fd, or the next timed poller is due.
    fn sleep(&self) {
        self.shared.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if let Ok(msg) = self.rx.try_recv() {
            self.shared.sleeping.store(false, Ordering::SeqCst);
            run_guarded(msg);
            return;
        }
        if self.shared.stop.load(Ordering::SeqCst) {
            self.shared.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        let now = ticks::now();
        let next_timed = self
            .pollers
            .borrow()
            .iter()
            .filter(|p| p.active.get() && p.period_ticks != 0)
            .map(|p| p.next_run.get())
            .min();
        let timeout_ms: i32 = match next_timed {
            None => -1,
            Some(due) if due <= now => 0,
            Some(due) => {
                let micros = ticks::to_micros(due - now);
                (micros / 1000.0).ceil().min(i32::MAX as f64) as i32
            }
        };
        let mut events = [EpollEvent::default(); 16];
        match self.epoll.wait(timeout_ms, &mut events) {
            Ok(n) => {
                // Only our own wake eventfd is level-triggered and drained; interrupt sources
                // are edge-triggered and left alone (see InterruptSource).
                let wake_fd = self.shared.wake.as_raw_fd();
                if events[..n].iter().any(|ev| ev.data() == wake_fd as u64) {
                    let _ = self.shared.wake.read();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => tracing::warn!(core = self.shared.core, error = %e, "epoll_wait failed"),
        }
        self.shared.sleeping.store(false, Ordering::SeqCst);
    }
}

/// Runs a message, keeping a panicking closure from taking the whole reactor down.
fn run_guarded(msg: Message) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(msg)).is_err() {
        tracing::error!("a message panicked on a reactor; the reactor keeps running");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing;
    use std::sync::atomic::AtomicU32;
    use std::time::Instant;

    #[test]
    fn messages_and_calls_run_on_the_target_reactor() {
        testing::reactors();
        assert_eq!(call(0, current_index).unwrap(), Some(0));
        assert_eq!(call(1, current_index).unwrap(), Some(1));
        assert_eq!(current_index(), None);
        assert!(matches!(call(7, || ()), Err(FrameworkError::NoSuchReactor(7))));
        let (tx, rx) = mpsc::channel();
        for i in 0..1000 {
            let tx = tx.clone();
            send(i % 2, move || tx.send((i, current_index())).unwrap()).unwrap();
        }
        let mut got: Vec<_> = (0..1000).map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
        got.sort();
        for (i, (n, on)) in got.into_iter().enumerate() {
            assert_eq!((n, on), (i, Some(i % 2)));
        }
        // A blocking call from a reactor to itself is refused instead of deadlocking.
        assert!(matches!(call(0, || call(0, || ())).unwrap(), Err(FrameworkError::SelfCall(0))));
        // Every reactor answers.
        assert_eq!(call_on_each(|| current_index().unwrap()).unwrap(), vec![0, 1]);
    }

    #[test]
    fn for_each_reactor_runs_done_after_every_reactor_ran_each() {
        testing::reactors();
        let ran = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let r = ran.clone();
        let seen = ran.clone();
        for_each_reactor(
            move || r.lock().unwrap().push(current_index().unwrap()),
            move || tx.send(seen.lock().unwrap().clone()).unwrap(),
        );
        let mut at_done = rx.recv_timeout(Duration::from_secs(5)).expect("done ran");
        at_done.sort();
        assert_eq!(at_done, vec![0, 1], "every reactor ran `each` before `done`");
    }

    #[test]
    fn a_panicking_message_does_not_kill_the_reactor() {
        testing::reactors();
        send(1, || panic!("deliberate test panic")).unwrap();
        assert_eq!(call(1, || 5).unwrap(), 5);
    }

    #[test]
    fn a_panicking_poller_does_not_kill_the_reactor() {
        testing::reactors();
        static RUNS: AtomicU32 = AtomicU32::new(0);
        call(0, || {
            let p = poller_register("test_panics_once", Duration::ZERO, || {
                if RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("deliberate poller panic");
                }
                PollStatus::Idle
            });
            HELD_PANIC.with(|h| *h.borrow_mut() = Some(p));
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while RUNS.load(Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "the poller did not run again after panicking");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(call(0, || 7).unwrap(), 7, "the reactor still takes messages");
        call(0, || HELD_PANIC.with(|h| drop(h.borrow_mut().take()))).unwrap();
    }

    thread_local! {
        static HELD_PANIC: RefCell<Option<Poller>> = const { RefCell::new(None) };
    }

    #[test]
    fn pollers_run_until_dropped_and_timed_pollers_keep_their_period() {
        testing::reactors();
        static BUSY_RUNS: AtomicU32 = AtomicU32::new(0);
        static TIMED_RUNS: AtomicU32 = AtomicU32::new(0);
        // Taken before the pollers exist: every run of theirs falls after it.
        let registered = std::time::Instant::now();
        let names = call(1, || {
            let busy = poller_register("test_busy", Duration::ZERO, || {
                BUSY_RUNS.fetch_add(1, Ordering::Relaxed);
                PollStatus::Idle
            });
            let timed = poller_register("test_timed", Duration::from_millis(50), || {
                TIMED_RUNS.fetch_add(1, Ordering::Relaxed);
                PollStatus::Idle
            });
            let names: Vec<String> = pollers().into_iter().map(|p| p.name).collect();
            // Pollers are !Send: keep them on the reactor in a thread-local slot.
            HELD.with(|h| *h.borrow_mut() = vec![busy, timed]);
            names
        })
        .unwrap();
        assert!(names.contains(&"test_busy".to_string()) && names.contains(&"test_timed".to_string()));
        std::thread::sleep(Duration::from_millis(520));
        let timed = TIMED_RUNS.load(Ordering::Relaxed);
        // Read after the count: this thread may wake late on a loaded machine.
        let elapsed_ms = registered.elapsed().as_millis() as u32;
        // About 10 runs; never more than the period allows, and the reactor wakes for them
        // even though nothing else is happening (a loaded machine may run it late, not early).
        let most = elapsed_ms / 50 + 1;
        assert!((2..=most).contains(&timed), "timed poller ran {timed} times in {elapsed_ms} ms at a 50 ms period");
        assert!(BUSY_RUNS.load(Ordering::Relaxed) >= timed);
        // Dropped on the reactor itself (between poller runs), so their counts are final once
        // the call returns. Markers registered in the same turn, a busy one and one with the
        // same period, show the reactor ran the iterations in which the dropped ones would
        // have run: the timed marker falls due no earlier than the dropped timed poller.
        static MARK_BUSY: AtomicU32 = AtomicU32::new(0);
        static MARK_TIMED: AtomicU32 = AtomicU32::new(0);
        let (busy, timed) = call(1, || {
            HELD.with(|h| h.borrow_mut().clear());
            let b = poller_register("test_mark_busy", Duration::ZERO, || {
                MARK_BUSY.fetch_add(1, Ordering::SeqCst);
                PollStatus::Idle
            });
            let t = poller_register("test_mark_timed", Duration::from_millis(50), || {
                MARK_TIMED.fetch_add(1, Ordering::SeqCst);
                PollStatus::Idle
            });
            HELD.with(|h| *h.borrow_mut() = vec![b, t]);
            (BUSY_RUNS.load(Ordering::Relaxed), TIMED_RUNS.load(Ordering::Relaxed))
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while MARK_BUSY.load(Ordering::SeqCst) < 3 || MARK_TIMED.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "the marker pollers never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(BUSY_RUNS.load(Ordering::Relaxed), busy, "a dropped busy poller no longer runs");
        assert_eq!(TIMED_RUNS.load(Ordering::Relaxed), timed, "a dropped timed poller no longer runs");
        call(1, || HELD.with(|h| h.borrow_mut().clear())).unwrap();
        let names: Vec<String> = call(1, || pollers().into_iter().map(|p| p.name).collect()).unwrap();
        assert!(!names.iter().any(|n| n.starts_with("test_")));
    }

    thread_local! {
        static HELD: RefCell<Vec<Poller>> = const { RefCell::new(Vec::new()) };
    }

    #[test]
    fn an_idle_reactor_sleeps_and_wakes_for_a_message() {
        testing::reactors();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !reactors()[0].stats().sleeping {
            assert!(Instant::now() < deadline, "reactor 0 never went to sleep");
            std::thread::sleep(Duration::from_millis(5));
        }
        let start = Instant::now();
        assert_eq!(call(0, || 1).unwrap(), 1);
        assert!(start.elapsed() < Duration::from_secs(1), "a message wakes a sleeping reactor");
    }

    #[test]
    fn signalled_work_does_not_keep_a_reactor_awake() {
        testing::reactors();
        static RUNS: AtomicU32 = AtomicU32::new(0);
        // Reports signalled work on every other run: as Busy this would keep reactor 1
        // polling forever; as Signalled it must not stop the reactor from sleeping.
        call(1, || {
            let p = poller_register("signalled_probe", Duration::ZERO, || {
                if RUNS.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                    PollStatus::Signalled
                } else {
                    PollStatus::Idle
                }
            });
            HELD_SIGNALLED.with(|h| *h.borrow_mut() = Some(p));
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while RUNS.load(Ordering::SeqCst) == 0 || !reactors()[1].stats().sleeping {
            assert!(Instant::now() < deadline, "a poller reporting signalled work kept reactor 1 awake");
            std::thread::sleep(Duration::from_millis(1));
        }
        call(1, || HELD_SIGNALLED.with(|h| drop(h.borrow_mut().take()))).unwrap();
    }

    thread_local! {
        static HELD_SIGNALLED: RefCell<Option<Poller>> = const { RefCell::new(None) };
    }

    #[test]
    fn an_interrupt_fd_wakes_a_sleeping_reactor() {
        testing::reactors();
        static SEEN: AtomicU32 = AtomicU32::new(0);
        let efd = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let fd = efd.as_raw_fd();
        call(1, move || {
            let irq = register_interrupt(fd).unwrap();
            // The poller looks at a flag the test sets before writing the eventfd.
            let p = poller_register("test_irq", Duration::ZERO, move || {
                let _keep = &irq;
                PollStatus::from(SEEN.load(Ordering::SeqCst) == 1 && SEEN.swap(2, Ordering::SeqCst) == 1)
            });
            HELD_IRQ.with(|h| *h.borrow_mut() = Some(p));
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !reactors()[1].stats().sleeping {
            assert!(Instant::now() < deadline, "reactor 1 never went to sleep");
            std::thread::sleep(Duration::from_millis(5));
        }
        SEEN.store(1, Ordering::SeqCst);
        efd.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while SEEN.load(Ordering::SeqCst) != 2 {
            assert!(Instant::now() < deadline, "the interrupt fd did not wake the reactor");
            std::thread::sleep(Duration::from_millis(1));
        }
        call(1, || HELD_IRQ.with(|h| drop(h.borrow_mut().take()))).unwrap();
    }

    thread_local! {
        static HELD_IRQ: RefCell<Option<Poller>> = const { RefCell::new(None) };
    }

    #[test]
    fn interrupt_sources_are_never_read_so_a_peer_fd_cannot_block_the_reactor() {
        testing::reactors();
        static POLLS: AtomicU32 = AtomicU32::new(0);
        // Blocking mode, as a hostile peer may leave it: with its count taken back by the
        // peer between our wake-up and a read(2), that read would sleep forever. So the
        // reactor must never read it at all: the count the peer wrote is still there after
        // the reactor woke up for it (twice: each write is a new edge).
        let efd = Arc::new(EventFd::new(0).unwrap());
        let fd = efd.as_raw_fd();
        call(1, move || {
            let irq = register_interrupt(fd).unwrap();
            let p = poller_register("test_peer_irq", Duration::ZERO, move || {
                let _keep = &irq;
                POLLS.fetch_add(1, Ordering::SeqCst);
                PollStatus::Idle
            });
            HELD_HOSTILE.with(|h| *h.borrow_mut() = Some(p));
        })
        .unwrap();
        for round in 1..=2u64 {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !reactors()[1].stats().sleeping {
                assert!(Instant::now() < deadline, "reactor 1 never went to sleep");
                std::thread::sleep(Duration::from_millis(1));
            }
            let before = POLLS.load(Ordering::SeqCst);
            efd.write(5).unwrap();
            while POLLS.load(Ordering::SeqCst) == before {
                assert!(Instant::now() < deadline, "round {round}: the write did not wake reactor 1");
                std::thread::sleep(Duration::from_millis(1));
            }
            // Let it finish that iteration (a message runs after it) before looking.
            call(1, || ()).unwrap();
            let mut count = [0u8; 8];
            let iov = libc::iovec { iov_base: count.as_mut_ptr().cast(), iov_len: 8 };
            // SAFETY: one valid iovec over `count`; RWF_NOWAIT: EAGAIN instead of blocking
            // when the reactor took the count.
            let n = unsafe { libc::preadv2(fd, &iov, 1, -1, libc::RWF_NOWAIT) };
            assert_eq!(n, 8, "round {round}: the reactor read the peer's eventfd");
            assert_eq!(u64::from_ne_bytes(count), 5);
        }
        call(1, || HELD_HOSTILE.with(|h| drop(h.borrow_mut().take()))).unwrap();
    }

    thread_local! {
        static HELD_HOSTILE: RefCell<Option<Poller>> = const { RefCell::new(None) };
    }
}

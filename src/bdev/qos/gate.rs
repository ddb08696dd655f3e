//! Limits on consumers other than bdev channels: a vhost controller's limit (the VM's view,
//! over all its queues and targets) and a background copy's (RAID rebuild, lvol inflate,
//! shallow copy). Same buckets, leases and one-shot timers as a bdev's limit; only the
//! place where a request waits differs.
//!
//! - [`LimitSlot`]: a limit that can be set, changed and removed while consumers run (the
//!   controller's, a copy's), with a generation they compare against (as a bdev's QoS).
//! - [`Gate`]: one consumer on one reactor (a virtqueue): work it lets through now is
//!   started by the caller; work that must wait is kept in order and started by the gate's
//!   one-shot timer, armed only while something waits.
//! - [`Pacer`]: a gate for an `async` copy loop: `pace(bytes).await` before each chunk.

use super::lease::{Leases, Op};
use super::spec::{QosSpec, RateLimits};
use super::Limit;
use crate::framework::{self, task, ticks, PollStatus, Poller};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A limit consumers outside the bdev channels follow: its spec, its buckets (`None` while it
/// limits nothing) and a generation bumped at every change.
pub struct LimitSlot {
    generation: AtomicU64,
    state: Mutex<(QosSpec, Option<Arc<Limit>>)>,
}

impl Default for LimitSlot {
    fn default() -> Self {
        LimitSlot { generation: AtomicU64::new(0), state: Mutex::new((QosSpec::spdk(RateLimits::default()), None)) }
    }
}

impl LimitSlot {
    /// A slot limited by `spec` from now (an unlimited spec: no limit).
    pub fn new(spec: QosSpec) -> Self {
        LimitSlot { generation: AtomicU64::new(0), state: Mutex::new((spec, Limit::new(&spec))) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (QosSpec, Option<Arc<Limit>>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limits as set.
    pub fn spec(&self) -> QosSpec {
        self.lock().0
    }

    /// Whether it limits anything.
    pub fn is_limited(&self) -> bool {
        self.lock().1.is_some()
    }

    /// Replaces the limits (fresh, full buckets; an unlimited spec removes the limit). Gates
    /// see it at their next request; gates holding work back look again now.
    pub fn set(&self, spec: QosSpec) -> Result<(), String> {
        spec.validate()?;
        *self.lock() = (spec, Limit::new(&spec));
        self.generation.fetch_add(1, Ordering::Release);
        kick_all();
        Ok(())
    }

    #[inline]
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn limit(&self) -> Option<Arc<Limit>> {
        self.lock().1.clone()
    }
}

/// What the reactor's kick looks at: a gate holding work back.
trait Waiting {
    fn release_now(self: Rc<Self>);
}

thread_local! {
    /// This reactor's gates holding work back, for [`kick_all`].
    static WAITING: RefCell<Vec<Weak<dyn Waiting>>> = const { RefCell::new(Vec::new()) };
}

/// Every reactor looks again at its gates holding work back (a limit changed).
fn kick_all() {
    for r in framework::reactors() {
        let _ = r.send(|| {
            let gates: Vec<Rc<dyn Waiting>> = WAITING.with(|l| l.borrow().iter().filter_map(Weak::upgrade).collect());
            for g in gates {
                g.release_now();
            }
        });
    }
}

struct GateState<T> {
    leases: Leases,
    queue: VecDeque<(Op, T)>,
    timer: Option<Poller>,
}

struct GateInner<T: 'static> {
    slot: Arc<LimitSlot>,
    name: &'static str,
    seen: Cell<u64>,
    active: Cell<bool>,
    state: RefCell<GateState<T>>,
    start: Box<dyn Fn(T)>,
}

/// One consumer of a [`LimitSlot`] on one reactor. Not `Send`: it belongs to the reactor that
/// made it. With no limit set, [`Gate::admit`] costs one relaxed load and two `Cell` reads.
pub struct Gate<T: 'static>(Rc<GateInner<T>>);

impl<T: 'static> Gate<T> {
    /// A gate on `slot` whose held-back work is started by `start`, on this reactor, in
    /// order; its timer is a poller named `name`.
    pub fn new(slot: Arc<LimitSlot>, name: &'static str, start: impl Fn(T) + 'static) -> Self {
        let inner = GateInner {
            slot,
            name,
            seen: Cell::new(u64::MAX),
            active: Cell::new(false),
            state: RefCell::new(GateState { leases: Leases::default(), queue: VecDeque::new(), timer: None }),
            start: Box::new(start),
        };
        inner.refresh();
        Gate(Rc::new(inner))
    }

    /// Lets `item` through now, returning it for the caller to start, or keeps it (`None`)
    /// to start it when the limit allows, after everything kept before it. `op` says what it
    /// costs (asked only while a limit is set).
    #[inline]
    pub fn admit(&self, item: T, op: impl FnOnce(&T) -> Op) -> Option<T> {
        if self.is_open() {
            return Some(item);
        }
        let op = op(&item);
        self.0.admit_slow(item, op)
    }

    /// Whether [`Gate::admit`] would let anything through at once, untouched: no limit set
    /// and none changed since this gate looked. A caller whose item is several values can
    /// ask first and not build the item at all (moving a tuple of separately stored fields
    /// through `admit` cost a store-forwarding stall per request).
    #[inline]
    pub fn is_open(&self) -> bool {
        let g = &self.0;
        !g.active.get() && g.slot.generation() == g.seen.get()
    }

    /// Starts everything kept, now, whatever the limit (the consumer is stopping: what the
    /// guest already asked for finishes instead of waiting on a device that is going away).
    pub fn flush(&self) {
        loop {
            let next = {
                let mut s = self.0.state.borrow_mut();
                let next = s.queue.pop_front();
                if next.is_none() {
                    disarm(&self.0, &mut s);
                }
                next
            };
            match next {
                Some((_, item)) => (self.0.start)(item),
                None => break,
            }
        }
    }

    /// Work kept back now.
    pub fn held(&self) -> usize {
        self.0.state.borrow().queue.len()
    }
}

impl<T: 'static> GateInner<T> {
    fn admit_slow(self: &Rc<Self>, item: T, op: Op) -> Option<T> {
        self.refresh();
        let mut s = self.state.borrow_mut();
        if !s.queue.is_empty() {
            // Behind work already waiting, whatever the tokens say: order is kept.
            s.queue.push_back((op, item));
            if !self.active.get() {
                drop(s);
                self.release();
            }
            return None;
        }
        if !self.active.get() {
            return Some(item);
        }
        match s.leases.take(op, 1, ticks::now()) {
            Ok(()) => Some(item),
            // Off the reactors there is no timer to wait for: let it through.
            Err(_) if framework::current_index().is_none() => Some(item),
            Err(until) => {
                s.queue.push_back((op, item));
                arm(self, &mut s, until);
                None
            }
        }
    }

    /// Picks up the slot's current limit if it changed since this gate looked.
    fn refresh(&self) {
        let generation = self.slot.generation();
        if generation == self.seen.get() {
            return;
        }
        // Read the generation first: a change after it is seen again at the next request.
        std::sync::atomic::fence(Ordering::Acquire);
        let limit = self.slot.limit();
        let mut s = self.state.borrow_mut();
        s.leases.hold(limit.into_iter().collect());
        self.active.set(!s.leases.is_empty());
        self.seen.set(generation);
    }

    /// Starts the kept work the limit now allows, in order; re-arms the timer for the rest.
    fn release(self: &Rc<Self>) -> PollStatus {
        self.refresh();
        let now = ticks::now();
        let mut released = false;
        loop {
            let next = {
                let mut s = self.state.borrow_mut();
                match s.queue.pop_front() {
                    None => {
                        disarm(self, &mut s);
                        None
                    }
                    Some((_, item)) if !self.active.get() => Some(item),
                    Some((op, item)) => {
                        let backlog = s.queue.len() as u64 + 1;
                        match s.leases.take(op, backlog, now) {
                            Ok(()) => Some(item),
                            Err(until) => {
                                s.queue.push_front((op, item));
                                arm(self, &mut s, until);
                                None
                            }
                        }
                    }
                }
            };
            // Started with the state released: starting may admit more work to this gate.
            match next {
                Some(item) => (self.start)(item),
                None => break,
            }
            released = true;
        }
        PollStatus::from(released)
    }
}

impl<T: 'static> Waiting for GateInner<T> {
    fn release_now(self: Rc<Self>) {
        self.release();
    }
}

/// Arms the gate's one-shot timer for tick `until` (a new poller each time: its period is
/// the wait).
fn arm<T: 'static>(g: &Rc<GateInner<T>>, s: &mut GateState<T>, until: u64) {
    if s.timer.is_none() {
        let weak: Weak<dyn Waiting> = Rc::downgrade(g) as Weak<dyn Waiting>;
        WAITING.with(|l| l.borrow_mut().push(weak));
    }
    let wait_ticks = until.saturating_sub(ticks::now()).max(1);
    let nanos = (wait_ticks as u128 * 1_000_000_000 / ticks::tick_rate().max(1) as u128) as u64;
    let weak = Rc::downgrade(g);
    s.timer = Some(framework::poller_register(g.name, Duration::from_nanos(nanos.max(1)), move || {
        weak.upgrade().map_or(PollStatus::Idle, |g| g.release())
    }));
}

fn disarm<T: 'static>(g: &GateInner<T>, s: &mut GateState<T>) {
    if s.timer.take().is_some() {
        let me = g as *const GateInner<T> as *const ();
        WAITING.with(|l| l.borrow_mut().retain(|w| w.strong_count() > 0 && w.as_ptr() as *const () != me));
    }
}

/// A background copy's gate: the copy awaits [`Pacer::pace`] before each chunk it moves.
pub struct Pacer(Gate<task::Slot<()>>);

impl Pacer {
    /// A pacer under `slot`'s limit; its timer is a poller named `name`.
    pub fn new(slot: Arc<LimitSlot>, name: &'static str) -> Self {
        Pacer(Gate::new(slot, name, |s: task::Slot<()>| s.fill(())))
    }

    /// Returns once the limit lets a chunk of `bytes` through (at once when none is set).
    /// Copies count as writes of what they move.
    pub async fn pace(&self, bytes: u64) {
        let slot = task::Slot::new();
        if self.0.admit(slot.clone(), |_| Op::Write(bytes)).is_some() {
            return;
        }
        slot.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing;

    fn write_mbytes(n: u64) -> QosSpec {
        QosSpec::spdk(RateLimits { w_mbytes_per_sec: n, ..Default::default() })
    }

    fn on_reactor<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        framework::call(1, f).unwrap()
    }

    /// On a reactor: work beyond the bucket is kept, in order, and removing the limit starts
    /// it at once (1 MiB writes at 1 MiB/s: the timer alone would take 19 s).
    #[test]
    fn kept_work_starts_in_order_and_a_removed_limit_releases_it() {
        testing::reactors();
        let slot = Arc::new(LimitSlot::new(write_mbytes(1)));
        let s = slot.clone();
        let (kept, started) = on_reactor(move || {
            let started = Rc::new(RefCell::new(Vec::new()));
            let st = started.clone();
            let gate = Gate::new(s, "gate_test", move |i: u32| st.borrow_mut().push(i));
            for i in 0..20u32 {
                if let Some(i) = gate.admit(i, |_| Op::Write(1 << 20)) {
                    started.borrow_mut().push(i);
                }
                // Reads are not metered by a write limit, but wait behind kept writes.
                if i == 5 {
                    assert!(gate.admit(100, |_| Op::Read(1 << 20)).is_none(), "order is kept");
                }
            }
            let kept = gate.held();
            GATE.with(|g| *g.borrow_mut() = Some(gate));
            STARTED.with(|x| *x.borrow_mut() = Some(started.clone()));
            let v = started.borrow().clone();
            (kept, v)
        });
        assert_eq!(started, [0], "the first went at once (in debt), the rest waits");
        assert_eq!(kept, 20);
        let t0 = std::time::Instant::now();
        slot.set(write_mbytes(0)).unwrap();
        assert!(!slot.is_limited());
        let mut want: Vec<u32> = (0..20).collect();
        want.insert(6, 100);
        loop {
            let (held, started) = on_reactor(|| {
                let held = GATE.with(|g| g.borrow().as_ref().unwrap().held());
                let v = STARTED.with(|x| x.borrow().as_ref().unwrap().borrow().clone());
                (held, v)
            });
            if held == 0 {
                assert_eq!(started, want, "all, in order");
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "the kick never released the kept work");
            std::thread::sleep(Duration::from_millis(5));
        }
        on_reactor(|| GATE.with(|g| g.borrow_mut().take()).map(drop));
    }

    /// A gate made while a limit is set follows it from its first request; flush starts
    /// what is kept whatever the limit.
    #[test]
    fn a_new_gate_follows_the_current_limit_and_flush_starts_everything() {
        testing::reactors();
        let slot = Arc::new(LimitSlot::new(write_mbytes(1)));
        let n = on_reactor(move || {
            let started = Rc::new(Cell::new(0u32));
            let st = started.clone();
            let gate = Gate::new(slot, "gate_test_flush", move |_: u32| st.set(st.get() + 1));
            let now: u32 = (0..10).map(|i| u32::from(gate.admit(i, |_| Op::Write(1 << 20)).is_some())).sum();
            assert_eq!((now, gate.held()), (1, 9));
            gate.flush();
            assert_eq!(gate.held(), 0);
            started.get()
        });
        assert_eq!(n, 9, "flush started the nine kept");
    }

    thread_local! {
        static GATE: RefCell<Option<Gate<u32>>> = const { RefCell::new(None) };
        static STARTED: RefCell<Option<Rc<RefCell<Vec<u32>>>>> = const { RefCell::new(None) };
    }
}

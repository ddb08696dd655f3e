//! `delay`: a bdev that forwards to its base and holds each completion for an artificial
//! latency (SPDK's `bdev_delay_create`): reads and writes wait their average latency, one in
//! a hundred (at random) its p99 latency; other I/O types are not delayed. Latencies are in
//! microseconds and can be changed live (`bdev_delay_update_latency`; I/O already held keeps
//! the latency it got, as SPDK).
//!
//! Held completions wait in per-channel FIFO queues (one per latency class, so each is in
//! deadline order) on the reactor. A poller drains them, and exists only while something is
//! held: when the earliest deadline is at least a millisecond away it is a timed poller due
//! at that deadline (the reactor may sleep until then), closer than that it runs every
//! iteration and counts as work, keeping the reactor awake (a reactor's sleep is bounded only
//! by timed pollers). An idle delay bdev costs nothing; the reactor never blocks.

use super::passthru::{complete_like_child, derived_uuid, BaseBdev, Forwarder};
use crate::bdev::{registry, BackendChannel, Bdev, BdevBackend, BdevChannel, BdevError, BdevIo, IoStatus, IoType};
use crate::framework::{self, ticks, PollStatus, Poller};
use crate::rpc::{parse, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use uuid::Uuid;

/// The module's RPC methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime("bdev_delay_create", bdev_delay_create),
    RpcMethod::runtime("bdev_delay_delete", bdev_delay_delete),
    RpcMethod::runtime("bdev_delay_update_latency", bdev_delay_update_latency),
];

const MODULE: &str = "delay";

/// SPDK's namespace for delay uuids (vbdev_delay.c, BDEV_DELAY_NAMESPACE_UUID).
const NAMESPACE: Uuid = uuid::uuid!("4009b574-6430-4f1b-bc40-ace811091027");

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The four latency classes (SPDK's `bdev_delay_latency_type`), in the order of `Latencies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LatencyType {
    AvgRead,
    P99Read,
    AvgWrite,
    P99Write,
}

/// Target latencies in µs, shared by the channels and changed live.
#[derive(Default)]
struct Latencies([AtomicU64; 4]);

impl Latencies {
    fn us(&self, t: LatencyType) -> u64 {
        self.0[t as usize].load(Ordering::Relaxed)
    }

    fn ticks(&self, t: LatencyType) -> u64 {
        ticks::from_duration(Duration::from_micros(self.us(t)))
    }

    fn set(&self, t: LatencyType, us: u64) {
        self.0[t as usize].store(us, Ordering::Relaxed);
    }
}

struct DelayBackend {
    base: Arc<BaseBdev>,
    lat: Arc<Latencies>,
}

type Done = Box<dyn Fn(Box<BdevIo>, IoStatus, i32)>;

/// A completion held until its deadline.
struct Held {
    deadline: u64,
    io: Box<BdevIo>,
    status: IoStatus,
    errno: i32,
}

/// One reactor's channel of a delay bdev.
struct DelayChannel {
    lat: Arc<Latencies>,
    /// Forwarding whose completion goes into the class's queue (one forwarder per class, so
    /// the class travels with the I/O without a per-I/O allocation).
    classes: [Forwarder<Done>; 4],
    /// Non-delayed types (flush, unmap, ...).
    plain: Forwarder<Done>,
    queues: [RefCell<VecDeque<Held>>; 4],
    held: Cell<usize>,
    poller: RefCell<Option<Poller>>,
    /// Whether `poller` runs every iteration (else it is timed).
    poller_busy: Cell<bool>,
    /// When a timed `poller` is due.
    poller_due: Cell<u64>,
    rng: Cell<u64>,
    me: Weak<DelayChannel>,
}

const CLASSES: [LatencyType; 4] =
    [LatencyType::AvgRead, LatencyType::P99Read, LatencyType::AvgWrite, LatencyType::P99Write];

impl DelayChannel {
    fn new(base: BdevChannel, lat: Arc<Latencies>) -> Rc<Self> {
        Rc::new_cyclic(|me: &Weak<DelayChannel>| {
            let class = |t: LatencyType| {
                let w = me.clone();
                let done: Done = Box::new(move |io, status, errno| match w.upgrade() {
                    Some(ch) => ch.hold(t, io, status, errno),
                    None => complete_like_child(io, status, errno),
                });
                Forwarder::new(base.clone(), done)
            };
            let classes = CLASSES.map(class);
            let plain: Done = Box::new(complete_like_child);
            let seed = ticks::now() | 1;
            DelayChannel {
                lat,
                classes,
                plain: Forwarder::new(base.clone(), plain),
                queues: Default::default(),
                held: Cell::new(0),
                poller: RefCell::new(None),
                poller_busy: Cell::new(false),
                poller_due: Cell::new(0),
                rng: Cell::new(seed),
                me: me.clone(),
            }
        })
    }

    /// One in a hundred, as SPDK's `rand_r() % 100 == 0`.
    fn p99(&self) -> bool {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x.is_multiple_of(100)
    }

    fn submit(&self, io: Box<BdevIo>) {
        let class = match io.io_type {
            IoType::Read => Some(if self.p99() { LatencyType::P99Read } else { LatencyType::AvgRead }),
            IoType::Write => Some(if self.p99() { LatencyType::P99Write } else { LatencyType::AvgWrite }),
            _ => None,
        };
        match class {
            Some(t) => self.classes[t as usize].forward(io, 0),
            None => self.plain.forward(io, 0),
        }
    }

    /// The base finished `io`: hold its completion for the class's latency.
    fn hold(&self, t: LatencyType, io: Box<BdevIo>, status: IoStatus, errno: i32) {
        let wait = self.lat.ticks(t);
        if wait == 0 {
            return complete_like_child(io, status, errno);
        }
        let deadline = ticks::now() + wait;
        self.queues[t as usize].borrow_mut().push_back(Held { deadline, io, status, errno });
        self.held.set(self.held.get() + 1);
        self.arm(deadline);
    }

    /// Makes sure a poller runs by `deadline`.
    fn arm(&self, deadline: u64) {
        let now = ticks::now();
        let busy = deadline.saturating_sub(now) < ticks::from_duration(Duration::from_millis(1));
        if self.poller.borrow().is_some() && (self.poller_busy.get() || self.poller_due.get() <= deadline) {
            return; // the poller runs by then already
        }
        let period = if busy {
            Duration::ZERO
        } else {
            Duration::from_nanos((ticks::to_micros(deadline - now) * 1000.0) as u64)
        };
        let w = self.me.clone();
        let poller = framework::poller_register("bdev_delay", period, move || match w.upgrade() {
            Some(ch) => ch.poll(),
            None => PollStatus::Idle,
        });
        self.poller_busy.set(busy);
        self.poller_due.set(deadline);
        *self.poller.borrow_mut() = Some(poller);
    }

    /// Completes what is due; re-arms for the next deadline or drops the poller.
    fn poll(&self) -> PollStatus {
        let now = ticks::now();
        let mut done = 0;
        let mut next = u64::MAX;
        for q in &self.queues {
            loop {
                let due = match q.borrow().front() {
                    Some(h) if h.deadline <= now => true,
                    Some(h) => {
                        next = next.min(h.deadline);
                        false
                    }
                    None => false,
                };
                if !due {
                    break;
                }
                let Some(h) = q.borrow_mut().pop_front() else { break };
                self.held.set(self.held.get() - 1);
                done += 1;
                // Through the completion queue: we are in a poller, not a completion callback.
                let mut io = h.io;
                if h.status != IoStatus::Success {
                    io.set_errno(h.errno);
                }
                io.complete(h.status);
            }
        }
        if self.held.get() == 0 {
            drop(self.poller.borrow_mut().take());
        } else if !self.poller_busy.get() || next.saturating_sub(now) >= ticks::from_duration(Duration::from_millis(1))
        {
            // Re-arm for the earliest remaining deadline.
            drop(self.poller.borrow_mut().take());
            self.arm(next);
        }
        // A poller that runs every iteration waits for a deadline under a millisecond away:
        // that is work, or the reactor, idle for 500 µs, would sleep (a busy poller bounds no
        // sleep, only timed pollers do) and strand the completion until something else woke it.
        let spinning = self.poller_busy.get() && self.poller.borrow().is_some();
        PollStatus::from(done > 0 || spinning)
    }

    /// Aborts everything held (a reset).
    fn abort_held(&self) {
        for q in &self.queues {
            let held = std::mem::take(&mut *q.borrow_mut());
            for h in held {
                h.io.complete(IoStatus::Aborted);
            }
        }
        self.held.set(0);
        drop(self.poller.borrow_mut().take());
    }
}

struct ChannelHandle(Rc<DelayChannel>);

impl BackendChannel for ChannelHandle {
    fn submit(&self, io: Box<BdevIo>) {
        if io.io_type == IoType::Reset {
            // SPDK aborts the delayed I/O of every channel; here this channel's, then the
            // reset goes to the base.
            self.0.abort_held();
        }
        self.0.submit(io);
    }
}

impl BdevBackend for DelayBackend {
    fn module(&self) -> &'static str {
        MODULE
    }

    fn product_name(&self) -> &'static str {
        "delay"
    }

    fn stacked_on(&self) -> Option<&Bdev> {
        Some(self.base.bdev())
    }

    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        Ok(Box::new(ChannelHandle(DelayChannel::new(self.base.channel()?, self.lat.clone()))))
    }

    fn config(&self, bdev: &Bdev) -> Option<(&'static str, Value)> {
        Some(("bdev_delay_create", self.values(bdev)))
    }

    fn driver_specific(&self) -> Option<(&'static str, Value)> {
        let name = lock(&NODES)
            .iter()
            .find(|n| n.live.as_ref().is_some_and(|(b, _)| Arc::ptr_eq(b, &self.base)))
            .map(|n| n.name.clone())?;
        let bdev = registry::get(&name)?;
        Some((MODULE, self.values(&bdev)))
    }
}

impl DelayBackend {
    /// SPDK's `_delay_write_conf_values`: the create parameters as they are now.
    fn values(&self, bdev: &Bdev) -> Value {
        json!({
            "name": bdev.name(),
            "base_bdev_name": self.base.bdev().name(),
            "uuid": bdev.uuid().to_string(),
            "avg_read_latency": self.lat.us(LatencyType::AvgRead),
            "p99_read_latency": self.lat.us(LatencyType::P99Read),
            "avg_write_latency": self.lat.us(LatencyType::AvgWrite),
            "p99_write_latency": self.lat.us(LatencyType::P99Write),
        })
    }
}

/// A delay bdev asked for (SPDK's `g_bdev_associations`).
struct Node {
    name: String,
    base_name: String,
    uuid: Option<Uuid>,
    /// Latencies in µs as created (a rebuilt bdev starts from these, as SPDK's).
    latencies: [u64; 4],
    live: Option<(Arc<BaseBdev>, Arc<Latencies>)>,
}

static NODES: Mutex<Vec<Node>> = Mutex::new(Vec::new());

fn build(
    name: &str,
    base_name: &str,
    uuid: Option<Uuid>,
    latencies: [u64; 4],
) -> Result<(Arc<BaseBdev>, Arc<Latencies>), BdevError> {
    let vname = name.to_string();
    let base = BaseBdev::open(base_name, MODULE, move || {
        if let Some(n) = lock(&NODES).iter_mut().find(|n| n.name == vname) {
            n.live = None;
        }
        let _ = registry::unregister(&vname, Some(MODULE));
    })?;
    let lat = Arc::new(Latencies::default());
    for (t, us) in CLASSES.iter().zip(latencies) {
        lat.set(*t, us);
    }
    let uuid = uuid.unwrap_or_else(|| derived_uuid(NAMESPACE, base.bdev()));
    let props = base.props(name, Some(uuid), base.bdev().num_blocks());
    if let Err(e) = registry::register(props, Box::new(DelayBackend { base: base.clone(), lat: lat.clone() })) {
        base.release();
        return Err(e);
    }
    Ok((base, lat))
}

fn examine(bdev: &Bdev) {
    let waiting: Vec<(String, Option<Uuid>, [u64; 4])> = lock(&NODES)
        .iter()
        .filter(|n| n.live.is_none() && n.base_name == bdev.name())
        .map(|n| (n.name.clone(), n.uuid, n.latencies))
        .collect();
    for (name, uuid, lat) in waiting {
        match build(&name, bdev.name(), uuid, lat) {
            Ok(live) => set_live(&name, live),
            Err(e) => tracing::error!(name, base = bdev.name(), "could not create delay bdev at examine: {e}"),
        }
    }
}

fn set_live(name: &str, live: (Arc<BaseBdev>, Arc<Latencies>)) {
    match lock(&NODES).iter_mut().find(|n| n.name == name) {
        Some(n) => n.live = Some(live),
        None => {
            let _ = registry::unregister(name, Some(MODULE));
            live.0.release();
        }
    }
}

fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| registry::register_examine(examine));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: String,
    base_bdev_name: String,
    avg_read_latency: u64,
    p99_read_latency: u64,
    avg_write_latency: u64,
    p99_write_latency: u64,
    uuid: Option<Uuid>,
}

/// Latencies above an hour are refused: they can only be mistakes, and µs → ticks must not
/// overflow.
const MAX_LATENCY_US: u64 = 3_600_000_000;

fn check_latency(name: &str, us: u64) -> Result<(), RpcError> {
    if us > MAX_LATENCY_US {
        return Err(RpcError::invalid_params(format!("{name} {us} us is more than an hour")));
    }
    Ok(())
}

fn bdev_delay_create(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateParams = parse(params)?;
    registry::validate_name(&p.name)?;
    let latencies = [p.avg_read_latency, p.p99_read_latency, p.avg_write_latency, p.p99_write_latency];
    for (t, us) in CLASSES.iter().zip(latencies) {
        check_latency(&format!("{t:?}"), us)?;
    }
    if p.p99_read_latency < p.avg_read_latency || p.p99_write_latency < p.avg_write_latency {
        return Err(RpcError::errno(
            libc::EINVAL,
            "Unable to create a delay bdev where p99 latency is less than average latency.",
        ));
    }
    init();
    {
        let mut nodes = lock(&NODES);
        if nodes.iter().any(|n| n.name == p.name) {
            return Err(RpcError::errno(libc::EEXIST, format!("delay bdev {} already exists", p.name)));
        }
        nodes.push(Node {
            name: p.name.clone(),
            base_name: p.base_bdev_name.clone(),
            uuid: p.uuid,
            latencies,
            live: None,
        });
    }
    match build(&p.name, &p.base_bdev_name, p.uuid, latencies) {
        Ok(live) => set_live(&p.name, live),
        Err(BdevError::NotFound(_)) => {
            tracing::info!(name = p.name, base = p.base_bdev_name, "delay creation deferred pending base bdev arrival")
        }
        Err(e) => {
            lock(&NODES).retain(|n| n.name != p.name);
            return Err(RpcError::errno(e.errno(), format!("could not create delay bdev {}: {e}", p.name)));
        }
    }
    Ok(json!(p.name))
}

fn bdev_delay_delete(params: Option<Value>) -> Result<Value, RpcError> {
    let p: super::DeleteParams = parse(params.clone())?;
    let result = super::delete_bdev(params, MODULE)?;
    let node = {
        let mut nodes = lock(&NODES);
        let i = nodes.iter().position(|n| n.name == p.name);
        i.map(|i| nodes.remove(i))
    };
    if let Some((base, _)) = node.and_then(|n| n.live) {
        base.release();
    }
    Ok(result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateParams {
    delay_bdev_name: String,
    latency_type: LatencyType,
    latency_us: u64,
}

fn bdev_delay_update_latency(params: Option<Value>) -> Result<Value, RpcError> {
    let p: UpdateParams = parse(params)?;
    check_latency("latency_us", p.latency_us)?;
    let lat =
        lock(&NODES).iter().find(|n| n.name == p.delay_bdev_name).and_then(|n| n.live.as_ref().map(|l| l.1.clone()));
    let Some(lat) = lat else {
        return Err(RpcError::new(crate::rpc::error::INVALID_PARAMS, "The requested bdev does not exist."));
    };
    lat.set(p.latency_type, p.latency_us);
    Ok(json!(true))
}

//! The QoS hook of one bdev channel: leased tokens per limit, the I/O held back in order,
//! and the one-shot timer that releases it.

use super::lease::{Leases, Op};
use crate::bdev::channel::ChannelInner;
use crate::bdev::io::{BdevIo, IoType};
use crate::framework::{self, ticks, PollStatus, Poller};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What `io` costs, as the limits see it. As SPDK, bytes are blocks × block size.
#[inline]
fn op_of(io: &BdevIo) -> Op {
    match io.io_type {
        IoType::Read => Op::Read(io.len_bytes()),
        IoType::Write => Op::Write(io.len_bytes()),
        IoType::WriteZeroes => Op::WriteZeroes(io.len_bytes()),
        IoType::Unmap => Op::Unmap,
        _ => Op::Free,
    }
}

#[derive(Default)]
struct Throttle {
    leases: Leases,
    queue: VecDeque<Box<BdevIo>>,
    timer: Option<Poller>,
}

impl Throttle {
    /// Takes `io`'s tokens from every limit, leasing more where the channel has too few;
    /// `Err(tick)` when a limit has none now (tokens leased from the others stay leased).
    fn take(&mut self, io: &BdevIo, now: u64) -> Result<(), u64> {
        // The I/O and those waiting behind it (taken as costing as much).
        let backlog = self.queue.len() as u64 + 1;
        self.leases.take(op_of(io), backlog, now)
    }
}

/// One channel's QoS state. With no limit on the bdev the submit path costs one relaxed
/// load and two `Cell` reads.
///
/// `repr(C)`, with the two fields the submit path reads first and the throttle boxed: the
/// channel keeps its submission path's fields in one cache line (see `ChannelInner`).
#[repr(C)]
pub struct QosChannel {
    seen: Cell<u64>,
    active: Cell<bool>,
    throttle: Box<RefCell<Throttle>>,
}

impl QosChannel {
    /// How many bytes from its start hold what every I/O reads (`seen`, then `active`).
    #[cfg(test)]
    pub(crate) const PER_IO_BYTES: usize = std::mem::offset_of!(QosChannel, active) + 1;
}

impl Default for QosChannel {
    fn default() -> Self {
        QosChannel { seen: Cell::new(0), active: Cell::new(false), throttle: Box::default() }
    }
}

/// What to do with the I/O at the head of the queue.
enum Next {
    Go(Box<BdevIo>),
    Fail(Box<BdevIo>),
    Stop,
}

impl QosChannel {
    /// Whether the bdev has no limit and this channel has seen every change of them: an I/O
    /// would pass [`Self::admit`] untouched.
    #[inline]
    pub(crate) fn unlimited(&self, ch: &ChannelInner) -> bool {
        !self.active.get() && ch.bdev().0.qos.generation() == self.seen.get()
    }

    /// Lets `io` (validated) through now, returning it, or holds it back (`None`): it will
    /// be started by [`ChannelInner::start_admitted`] when the limits allow, in order.
    #[inline]
    pub(crate) fn admit(&self, ch: &Rc<ChannelInner>, io: Box<BdevIo>) -> Option<Box<BdevIo>> {
        if self.unlimited(ch) {
            return Some(io);
        }
        self.admit_slow(ch, io)
    }

    fn admit_slow(&self, ch: &Rc<ChannelInner>, io: Box<BdevIo>) -> Option<Box<BdevIo>> {
        self.refresh(ch);
        let mut t = self.throttle.borrow_mut();
        if !t.queue.is_empty() {
            // Behind I/O already waiting, whatever the tokens say: order is kept.
            t.queue.push_back(io);
            if !self.active.get() {
                drop(t);
                self.release(ch);
            }
            return None;
        }
        if !self.active.get() {
            return Some(io);
        }
        match t.take(&io, io.submit_tick) {
            Ok(()) => Some(io),
            // Off the reactors there is no timer to wait for: let it through.
            Err(_) if !super::on_reactor() => Some(io),
            Err(until) => {
                t.queue.push_back(io);
                arm(&mut t, ch, until);
                None
            }
        }
    }

    /// Picks up the bdev's current limits if they changed since this channel looked.
    fn refresh(&self, ch: &ChannelInner) {
        let qos = &ch.bdev().0.qos;
        let generation = qos.generation();
        if generation == self.seen.get() {
            return;
        }
        // Read the generation first: a change after it is seen again at the next I/O.
        std::sync::atomic::fence(Ordering::Acquire);
        let limits = qos.active();
        let mut t = self.throttle.borrow_mut();
        t.leases.hold(limits);
        self.active.set(!t.leases.is_empty());
        self.seen.set(generation);
    }

    /// Starts the held-back I/O the limits now allow, in order; re-arms the timer for the
    /// rest. Fails it all with `ENODEV` once the bdev is removed.
    pub(crate) fn release(&self, ch: &Rc<ChannelInner>) -> PollStatus {
        self.refresh(ch);
        let now = ticks::now();
        let mut released = false;
        loop {
            let next = {
                let mut t = self.throttle.borrow_mut();
                if t.queue.is_empty() {
                    disarm(&mut t, ch);
                    Next::Stop
                } else if ch.bdev().is_removed() {
                    Next::Fail(t.queue.pop_front().expect("not empty"))
                } else if !self.active.get() {
                    Next::Go(t.queue.pop_front().expect("not empty"))
                } else {
                    // The head leaves the queue while its tokens are taken (`take` needs the
                    // throttle mutably) and goes back to the front if it must wait.
                    let io = t.queue.pop_front().expect("not empty");
                    match t.take(&io, now) {
                        Ok(()) => Next::Go(io),
                        Err(until) => {
                            t.queue.push_front(io);
                            arm(&mut t, ch, until);
                            Next::Stop
                        }
                    }
                }
            };
            match next {
                Next::Go(io) => ch.start_admitted(io),
                Next::Fail(io) => io.fail(libc::ENODEV),
                Next::Stop => break,
            }
            released = true;
        }
        PollStatus::from(released)
    }

    /// I/O held back now (for tests and reports).
    pub fn queued(&self) -> usize {
        self.throttle.borrow().queue.len()
    }
}

thread_local! {
    /// This reactor's channels holding I/O back, for [`kick_all`].
    static THROTTLED: RefCell<Vec<Weak<ChannelInner>>> = const { RefCell::new(Vec::new()) };
}

/// Arms the channel's timer for tick `until` (a new one-shot: the poller is replaced each
/// time, so its period is the wait).
fn arm(t: &mut Throttle, ch: &Rc<ChannelInner>, until: u64) {
    if t.timer.is_none() {
        THROTTLED.with(|l| l.borrow_mut().push(Rc::downgrade(ch)));
    }
    let wait_ticks = until.saturating_sub(ticks::now()).max(1);
    let nanos = (wait_ticks as u128 * 1_000_000_000 / ticks::tick_rate().max(1) as u128) as u64;
    let weak = Rc::downgrade(ch);
    t.timer = Some(framework::poller_register("bdev_qos", Duration::from_nanos(nanos.max(1)), move || {
        match weak.upgrade() {
            Some(ch) => ch.qos().release(&ch),
            None => PollStatus::Idle,
        }
    }));
}

fn disarm(t: &mut Throttle, ch: &Rc<ChannelInner>) {
    if t.timer.take().is_some() {
        let me = Rc::as_ptr(ch);
        THROTTLED.with(|l| l.borrow_mut().retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), me)));
    }
}

/// Every reactor looks again at its channels holding I/O back (limits changed or a bdev
/// went away). Off the reactors (no framework running) there is nothing to look at.
pub(crate) fn kick_all() {
    for r in framework::reactors() {
        let _ = r.send(kick_local);
    }
}

fn kick_local() {
    let channels: Vec<Rc<ChannelInner>> = THROTTLED.with(|l| l.borrow().iter().filter_map(Weak::upgrade).collect());
    for ch in channels {
        ch.qos().release(&ch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn io(t: IoType, blocks: u64) -> Box<BdevIo> {
        let mut io = BdevIo::new(Rc::new(|_| {}));
        io.prepare(t, 0, blocks);
        io.set_block_size(512);
        io
    }

    #[test]
    fn what_an_io_costs() {
        assert_eq!(op_of(&io(IoType::Read, 8)), Op::Read(4096));
        assert_eq!(op_of(&io(IoType::Write, 2)), Op::Write(1024));
        assert_eq!(op_of(&io(IoType::Unmap, 8)), Op::Unmap);
        assert_eq!(op_of(&io(IoType::WriteZeroes, 8)), Op::WriteZeroes(4096));
        for t in [IoType::Flush, IoType::Reset] {
            assert_eq!(op_of(&io(t, 8)), Op::Free, "{t:?}");
        }
    }
}

//! One virtqueue as its reactor serves it: popping descriptor chains (split rings in
//! `split.rs`, packed in `packed.rs`), returning them to the used ring, notification
//! suppression while polling, coalesced interrupts, and inflight tracking.
//!
//! A chain is flattened into device-readable and device-writable segments (guest-physical
//! address, length). A loop, an index past the table or a bad indirect table marks the chain
//! malformed, so the device can fail it instead of acting on half a request.

use super::coalesce::Coalescer;
pub use super::coalesce::Coalescing;
use super::dirty_log::DirtyLog;
use super::inflight::InflightQueue;
use super::inflight_packed::Recovery;
use super::memory::GuestMemory;
use super::packed::{PackedDesc, PackedPop, PackedRing};
use super::split::{RingLayout, SplitPop, SplitRing};
use crate::framework::notifier::Notifier;
use crate::framework::{self, ticks};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// How long a queue stays empty before it asks the guest to kick again (see
/// [`Vring::after_poll`]); well under the reactor's `IDLE_BEFORE_SLEEP`.
pub const KICKS_BACK_ON_AFTER: Duration = Duration::from_micros(100);
const _: () = assert!(KICKS_BACK_ON_AFTER.as_nanos() < framework::reactor::IDLE_BEFORE_SLEEP.as_nanos());

/// Without inflight tracking, a split ring's used index is published once this many
/// completions wait (and at every queue poll, and when the last request in flight completes):
/// the driver polls that line, and writing it per completion moves it between the cores each
/// time. Measured with `scripts/bench/vhost-ab.sh` (16 pairs each, against publishing every
/// completion): QD128 null +12-14% (blk and scsi), malloc +6-8%; QD1 unchanged. Waiting for
/// a whole poll's worth instead lost 6% on scsi null QD128 and 3-28% at QD1.
const PUBLISH_EVERY: u16 = 8;

/// A popped request: its head and its segments, readable ones first.
#[derive(Default)]
pub struct Chain {
    /// Head descriptor index (what goes back in the used ring).
    pub head: u16,
    /// Device-readable segments (gpa, len); appended through [`Chain::push_segment`].
    pub readable: Vec<(u64, u32)>,
    /// Device-writable segments (gpa, len); appended through [`Chain::push_segment`].
    pub writable: Vec<(u64, u32)>,
    /// Set when the chain was cut short (loop, bad index, bad indirect table) or a readable
    /// segment followed a writable one.
    pub malformed: bool,
    /// The segments' totals, kept as they are pushed: a frontend asks for them several times
    /// per request, and summing the vectors each time cost about 70 instructions per request.
    readable_bytes: u64,
    writable_bytes: u64,
}

impl Chain {
    pub(crate) fn clear(&mut self) {
        self.readable.clear();
        self.writable.clear();
        self.malformed = false;
        self.readable_bytes = 0;
        self.writable_bytes = 0;
    }

    /// Appends a segment: writable ones after every readable one, as virtio requires; a
    /// readable segment after a writable one marks the chain malformed instead.
    pub(crate) fn push_segment(&mut self, addr: u64, len: u32, writable: bool) {
        if writable {
            self.writable.push((addr, len));
            self.writable_bytes += u64::from(len);
        } else if self.writable.is_empty() {
            self.readable.push((addr, len));
            self.readable_bytes += u64::from(len);
        } else {
            self.malformed = true;
        }
    }

    /// Total device-readable bytes.
    pub fn readable_len(&self) -> u64 {
        self.readable_bytes
    }

    /// Total device-writable bytes.
    pub fn writable_len(&self) -> u64 {
        self.writable_bytes
    }
}

/// Outcome of looking at the avail ring.
pub enum Pop {
    /// A chain was popped into the caller's `Chain`.
    Chain,
    /// Nothing is available.
    Empty,
    /// The avail ring is inconsistent (index jumped by more than the queue size, or a ring
    /// outside guest memory): the queue is broken until the driver resets it.
    Broken,
}

/// The split ring of one virtqueue.
pub struct Vring {
    /// Queue index.
    pub index: u16,
    /// The ring itself, split or packed.
    layout: Layout,
    mem: Arc<GuestMemory>,
    call: Option<Notifier>,
    notifications_on: bool,
    /// When a poll last found requests (reactor round ticks): kicks stay off until the queue
    /// has been empty for [`KICKS_BACK_ON_AFTER`].
    last_popped: u64,
    /// [`KICKS_BACK_ON_AFTER`] in ticks.
    kicks_back_on_ticks: u64,
    signal_pending: bool,
    broken: bool,
    /// Given up on (its I/O outlived the drain timeout): the guest's rings may belong to a
    /// new queue by now, so nothing is written to them any more.
    detached: bool,
    coalescer: Coalescer,
    inflight: Option<InflightQueue>,
    /// Split-ring heads to resubmit after a restart, oldest first.
    resubmit: VecDeque<u16>,
    /// Packed-ring buffers to resubmit after a restart (their saved descriptors).
    resubmit_packed: VecDeque<Vec<PackedDesc>>,
    /// The dirty log, only while the frontend migrates the guest (VHOST_F_LOG_ALL).
    log: Option<Arc<DirtyLog>>,
    /// The guest range the ring writes completions into: the used ring (split) or the
    /// descriptor ring (packed, used elements overwrite descriptors).
    written: (u64, u64),
    /// Chains returned to the used ring (the metrics endpoint's request count).
    completed: u64,
    /// How many chains the current poll may pop (see [`Vring::keep_polling`]).
    poll_budget: usize,
}

/// The two ring formats.
enum Layout {
    Split(SplitRing),
    Packed(PackedRing),
}

/// What a queue needs to start, as the frontend configured it.
pub struct VringSetup {
    /// Queue index.
    pub index: u16,
    /// Ring size.
    pub size: u16,
    /// Guest-physical addresses of the descriptor table, avail and used rings.
    pub desc: u64,
    /// Avail ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// Where to resume in the avail ring.
    pub next_avail: u16,
    /// Where to resume in the used ring.
    pub next_used: u16,
    /// Whether VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// Guest memory.
    pub mem: Arc<GuestMemory>,
    /// The guest's "used buffer" notification fd.
    pub call: Option<Notifier>,
    /// Coalescing settings.
    pub coalescing: Coalescing,
    /// Inflight tracking, when the frontend set it up (in the ring's format).
    pub inflight: Option<InflightQueue>,
    /// For a packed ring: where to resume, in vhost-user's packed base format.
    pub packed_base: Option<u32>,
    /// The dirty log, when migration is under way.
    pub log: Option<Arc<DirtyLog>>,
}

impl Vring {
    /// Sets up the ring; fails if the addresses are not valid guest memory.
    pub fn new(s: VringSetup) -> Result<Vring, String> {
        let mut inflight = s.inflight;
        let mut resubmit = VecDeque::new();
        let mut resubmit_packed = VecDeque::new();
        let layout = match s.packed_base {
            Some(base) => {
                let mut packed = PackedRing::new(s.size, s.desc, s.avail, s.used, base)?;
                match inflight.as_mut() {
                    Some(InflightQueue::Packed(tracking)) => {
                        // After a restart the frontend's base is stale (QEMU cannot read a
                        // packed ring's positions back); the inflight area knows where we
                        // were and what we had fetched.
                        let from_base = packed.used_position();
                        match tracking.recover(from_base, |i| packed.slot_flags(&s.mem, i)) {
                            Ok(Recovery::Fresh) => {}
                            Ok(Recovery::Resume { avail, used, chains }) => {
                                packed.set_position(avail, used);
                                resubmit_packed.extend(chains);
                            }
                            Err(e) => {
                                tracing::error!(queue = s.index, error = %e,
                                    "inflight region refused: nothing resubmitted from it, tracking starts afresh");
                                tracking.reset(from_base);
                            }
                        }
                    }
                    Some(InflightQueue::Split(_)) => inflight = None,
                    None => {}
                }
                Layout::Packed(packed)
            }
            None => {
                let mut next_avail = s.next_avail;
                match inflight.as_mut() {
                    Some(InflightQueue::Split(tracking)) => match tracking.recover(s.next_used) {
                        // After a restart the frontend resumes us at its used index; what we
                        // had fetched but not completed is in the inflight area: resubmit it,
                        // continue after it.
                        Ok(heads) => {
                            next_avail = s.next_used.wrapping_add(heads.len() as u16);
                            resubmit.extend(heads);
                        }
                        Err(e) => {
                            tracing::error!(queue = s.index, error = %e,
                                "inflight region refused: nothing resubmitted from it, tracking starts afresh");
                            tracking.reset(s.next_used);
                        }
                    },
                    Some(InflightQueue::Packed(_)) => inflight = None,
                    None => {}
                }
                Layout::Split(
                    SplitRing::new(
                        &s.mem,
                        RingLayout { size: s.size, desc: s.desc, avail: s.avail, used: s.used },
                        next_avail,
                        s.next_used,
                        s.event_idx,
                    )
                    .map_err(|e| format!("queue {}: {e}", s.index))?,
                )
            }
        };
        let n = s.size as u64;
        // Split: flags, idx, ring[n], avail_event. Packed: the descriptor ring.
        let written = if s.packed_base.is_some() { (s.desc, 16 * n) } else { (s.used, 6 + 8 * n) };
        let count = resubmit.len() + resubmit_packed.len();
        if count > 0 {
            tracing::info!(queue = s.index, count, "resubmitting in-flight requests");
        }
        let mut ring = Vring {
            index: s.index,
            layout,
            mem: s.mem,
            call: s.call,
            // Turned on explicitly below: a previous instance of this queue (before a memory
            // table change or a reconnect) may have left notifications off in guest memory,
            // and a driver that never kicks would stall a sleeping reactor.
            notifications_on: false,
            last_popped: 0,
            kicks_back_on_ticks: ticks::from_duration(KICKS_BACK_ON_AFTER),
            signal_pending: false,
            broken: false,
            detached: false,
            coalescer: Coalescer::new(s.coalescing),
            inflight,
            resubmit,
            resubmit_packed,
            log: s.log,
            written,
            completed: 0,
            poll_budget: 0,
        };
        ring.notifications_on();
        Ok(ring)
    }

    /// Guest memory.
    pub fn mem(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Ring size.
    pub fn size(&self) -> u16 {
        match &self.layout {
            Layout::Split(split) => split.size(),
            Layout::Packed(packed) => packed.size(),
        }
    }

    /// Where the ring resumes (GET_VRING_BASE): the next avail index for a split ring, the
    /// packed base format for a packed one.
    pub fn base(&self) -> u32 {
        match &self.layout {
            Layout::Split(split) => split.next_avail() as u32,
            Layout::Packed(packed) => packed.base(),
        }
    }

    /// Whether the ring is broken.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Stops this ring from ever touching guest memory again: late completions are dropped
    /// (the session leaked the queue; a reconnected frontend's new queue owns the ring now).
    pub fn detach(&mut self) {
        // What completed before is the guest's (the stopping session answers with this
        // ring's state next), published before the ring is let go.
        if !self.detached && self.signal_pending {
            self.publish_used();
        }
        self.detached = true;
        self.broken = true;
        self.signal_pending = false;
    }

    /// Marks the ring broken (the device found the driver breaking the protocol, e.g. a
    /// head published again while still in flight); nothing more is popped until a reset.
    pub fn mark_broken(&mut self, why: &str) {
        tracing::warn!(queue = self.index, why, "virtqueue marked broken");
        self.broken = true;
    }

    /// Replaces the call fd (SET_VRING_CALL while running) and interrupts the guest once on
    /// the new one. QEMU starts a queue with a masked notifier and swaps in the guest's only
    /// after the rings run (vhost_*_common_start unmasks each queue then), without looking at
    /// what was signalled on the one it replaces: completions in between, typically the
    /// requests a guest queued while a restarted backend was away, would never reach the
    /// guest, which then waits forever (virtio-scsi commands do not time out). A spurious
    /// interrupt only costs the guest a look at its used ring.
    pub fn set_call(&mut self, mut call: Option<Notifier>) {
        if let Some(c) = call.as_mut() {
            let _ = c.notify();
        }
        self.call = call;
    }

    /// Starts or stops dirty logging (the frontend began or ended a migration, or gave a new
    /// log).
    pub fn set_log(&mut self, log: Option<Arc<DirtyLog>>) {
        self.log = log;
    }

    /// Whether writes must be logged now.
    #[inline]
    pub fn logging(&self) -> bool {
        self.log.is_some()
    }

    /// Logs device writes to guest segments `(gpa, len)`, if logging is on.
    #[inline]
    pub fn log_segments(&self, segs: &[(u64, u32)]) {
        if let Some(log) = &self.log {
            segs.iter().for_each(|&(gpa, len)| log.mark(gpa, len as u64));
        }
    }

    /// Logs device writes through host pointers into guest memory (a bdev's data buffers, a
    /// status byte), if logging is on.
    #[inline]
    pub fn log_host(&self, host: *const u8, len: usize) {
        if let Some(log) = &self.log {
            if let Some(gpa) = self.mem.host_to_gpa(host as usize) {
                log.mark(gpa, len as u64);
            }
        }
    }

    /// Changes interrupt coalescing.
    pub fn set_coalescing(&mut self, c: Coalescing) {
        self.coalescer.set(c);
    }

    /// Whether a poll that has popped `popped` chains so far pops another (a poll starts at
    /// 0). A split ring's poll pops what the driver had published when it began (its avail
    /// index read once) plus any chains waiting for resubmission, and looks at the index again
    /// only when that is done and nothing is in flight; a packed ring's pops find their own
    /// end, at most the ring's size per poll.
    ///
    /// Popping on until the ring looked empty read the index again each time the driver had
    /// added one or two more, a cache miss each (the driver keeps writing that line): at
    /// QD128 on a no-data bdev that read was over half of `SplitRing::pop`'s time. SPDK's
    /// vhost likewise takes one look per poll. With nothing in flight (queue depth 1,
    /// completed inline) the driver is waiting for us, and a second look finds its next
    /// request soonest.
    pub fn keep_polling(&mut self, popped: usize) -> bool {
        if self.broken {
            // One pop, which says so.
            return popped == 0;
        }
        if popped == 0 {
            self.poll_budget = 0;
        }
        if popped == self.poll_budget {
            let Layout::Split(split) = &mut self.layout else {
                return popped < self.size() as usize;
            };
            if popped > 0 && split.in_flight() > 0 {
                return false;
            }
            self.poll_budget += match split.published(&self.mem) {
                Some(n) => self.resubmit.len() + n as usize,
                // Let pop find the broken index and mark the queue.
                None => 1,
            };
        }
        popped < self.poll_budget
    }

    /// Pops the next available chain into `chain`.
    pub fn pop(&mut self, chain: &mut Chain) -> Pop {
        if self.broken {
            return Pop::Broken;
        }
        let popped = self.pop_unchecked(chain);
        // Looked at after the walk: a read that hit a file the frontend truncated under us
        // returned zeros (see fault_guard), so what was popped means nothing.
        if self.mem.poison().is_set() {
            tracing::error!(queue = self.index, "the frontend truncated a guest memory file under us; queue stopped");
            self.broken = true;
            return Pop::Broken;
        }
        popped
    }

    fn pop_unchecked(&mut self, chain: &mut Chain) -> Pop {
        chain.clear();
        let split =
            match &mut self.layout {
                Layout::Split(split) => split,
                Layout::Packed(packed) => {
                    if let Some(descs) = self.resubmit_packed.pop_front() {
                        if packed.resume(&self.mem, &descs, chain) {
                            return Pop::Chain;
                        }
                        tracing::warn!(queue = self.index, "a saved in-flight buffer is invalid; queue marked broken");
                        self.broken = true;
                        return Pop::Broken;
                    }
                    return match packed.pop(&self.mem, chain) {
                        PackedPop::Chain => {
                            if let Some(InflightQueue::Packed(tracking)) = self.inflight.as_mut() {
                                if !tracking.fetched(packed.popped()) {
                                    tracing::warn!(queue = self.index,
                                    "driver has more descriptors in flight than the ring holds; queue marked broken");
                                    self.broken = true;
                                    return Pop::Broken;
                                }
                            }
                            Pop::Chain
                        }
                        PackedPop::Empty => Pop::Empty,
                        PackedPop::Broken => {
                            tracing::warn!(queue = self.index, "packed ring is inconsistent; queue marked broken");
                            self.broken = true;
                            Pop::Broken
                        }
                    };
                }
            };
        if let Some(head) = self.resubmit.pop_front() {
            split.walk(&self.mem, head, chain);
            return Pop::Chain;
        }
        match split.pop(&self.mem, chain) {
            SplitPop::Chain => {}
            SplitPop::Empty => return Pop::Empty,
            SplitPop::Broken => {
                tracing::warn!(queue = self.index, "avail index moved by more than the ring size; queue marked broken");
                self.broken = true;
                return Pop::Broken;
            }
        }
        if let Some(InflightQueue::Split(tracking)) = self.inflight.as_mut() {
            tracking.fetched(chain.head);
        }
        Pop::Chain
    }

    /// Returns chain `head` to the guest with `len` bytes written; the interrupt goes out at
    /// the next [`Vring::signal`].
    pub fn complete(&mut self, head: u16, len: u32) {
        if self.detached {
            return;
        }
        // Inflight tracking brackets the used-ring update (the spec's crash-consistent order).
        let completed = match (&mut self.layout, self.inflight.as_mut()) {
            (Layout::Packed(packed), Some(InflightQueue::Packed(t))) => {
                t.before_used(head);
                let ok = packed.complete(&self.mem, head, len);
                if ok {
                    t.after_used(head);
                }
                ok
            }
            (Layout::Packed(packed), _) => packed.complete(&self.mem, head, len),
            (Layout::Split(split), Some(InflightQueue::Split(t))) => {
                t.before_used(head);
                split.add_used(head, len);
                t.after_used(head, split.next_used());
                true
            }
            // Without inflight tracking the index is published per batch (see PUBLISH_EVERY):
            // at the queue's next poll, after PUBLISH_EVERY completions, or at once when
            // nothing else is in flight (queue depth 1 waits for no one).
            (Layout::Split(split), _) => {
                split.add_used_entry(head, len);
                if split.unpublished() >= PUBLISH_EVERY || split.in_flight() == 0 {
                    split.publish_used();
                }
                true
            }
        };
        if !completed {
            self.broken = true;
            return;
        }
        if let Some(log) = &self.log {
            log.mark(self.written.0, self.written.1);
        }
        self.signal_pending = true;
        self.coalescer.count_completion();
        self.completed += 1;
    }

    /// Chains returned to the used ring since the ring started.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Sends the guest an interrupt if completions are pending and the guest wants one.
    /// Returns whether completions are still waiting (coalescing held them back).
    pub fn signal(&mut self) -> bool {
        if !self.signal_pending || self.detached {
            return false;
        }
        self.publish_used();
        if self.coalescer.hold() {
            return true;
        }
        self.send_signal();
        false
    }

    /// Sends the interrupt still owed for completions, whatever coalescing says, when the
    /// queue goes (stopped by GET_VRING_BASE, a disable, a new memory table, a disconnect):
    /// its poller never runs again, and a completion whose interrupt was held back (or not
    /// sent yet: completions arrive from the bdev's poller, the interrupt goes out from the
    /// queue's own) would leave the guest waiting for it forever. A frontend that stops the
    /// device collects what its call eventfd holds (QEMU injects it, and a migration carries
    /// it to the destination).
    pub fn flush_signal(&mut self) {
        if self.signal_pending && !self.detached {
            self.publish_used();
            self.send_signal();
        }
    }

    /// Makes the completions written so far visible to the driver (a split ring's used
    /// index; a packed ring publishes each completion as it writes it). [`Vring::signal`]
    /// does it too; a queue's poll calls this first, so the driver sees them before the poll
    /// spends its time on new requests.
    pub fn publish_used(&mut self) {
        if let Layout::Split(split) = &mut self.layout {
            split.publish_used();
        }
    }

    /// The interrupt itself, if the guest wants one.
    fn send_signal(&mut self) {
        self.signal_pending = false;
        let wanted = match &mut self.layout {
            Layout::Split(split) => split.needs_notification(),
            Layout::Packed(p) => p.needs_notification(&self.mem),
        };
        if wanted {
            if let Some(call) = self.call.as_mut() {
                // Never blocks, whatever state the frontend left its eventfd in.
                let _ = call.notify();
            }
        }
    }

    /// Decides about guest kicks after a poll that popped `popped` requests; returns true if
    /// requests arrived while kicks were off (poll again before the reactor may sleep).
    ///
    /// Kicks go off as soon as requests are found and back on only once the queue has been
    /// empty for [`KICKS_BACK_ON_AFTER`], not at the first empty poll: a driver with one
    /// request in flight would otherwise kick (an eventfd write on its side) for every request
    /// while the reactor polls anyway. The reactor sleeps only after [`IDLE_BEFORE_SLEEP`]
    /// without any busy poller, measured by the same round clock, so kicks are always back on
    /// before it does.
    ///
    /// [`IDLE_BEFORE_SLEEP`]: crate::framework::reactor::IDLE_BEFORE_SLEEP
    pub fn after_poll(&mut self, popped: usize) -> bool {
        self.after_poll_at(popped, framework::round_start())
    }

    /// [`Vring::after_poll`] at tick `now`.
    fn after_poll_at(&mut self, popped: usize, now: u64) -> bool {
        if popped > 0 {
            self.last_popped = now;
            self.notifications_off();
            false
        } else if now.wrapping_sub(self.last_popped) > self.kicks_back_on_ticks {
            self.notifications_on()
        } else {
            false
        }
    }

    /// Asks the guest not to kick (we are polling).
    pub fn notifications_off(&mut self) {
        if self.notifications_on {
            match &mut self.layout {
                Layout::Split(split) => split.notifications_off(),
                Layout::Packed(p) => p.notifications_off(&self.mem),
            }
            self.notifications_on = false;
        }
    }

    /// Asks the guest to kick again; returns true if requests arrived meanwhile (poll again
    /// before sleeping, or a kick could be lost).
    pub fn notifications_on(&mut self) -> bool {
        if self.notifications_on {
            return false;
        }
        self.notifications_on = true;
        match &mut self.layout {
            Layout::Split(split) => split.notifications_on(),
            Layout::Packed(p) => p.notifications_on(&self.mem),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhost::inflight::{InflightArea, RingFormat};

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const SIZE: u16 = 8;

    fn memory() -> Arc<GuestMemory> {
        Arc::new(GuestMemory::for_tests(1 << 20))
    }

    fn write(mem: &GuestMemory, gpa: u64, bytes: &[u8]) {
        let p = mem.host_range(gpa, bytes.len() as u64).unwrap();
        // SAFETY: host_range checked the range lies in the test's own mapping.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
    }

    fn desc(mem: &GuestMemory, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = Vec::new();
        d.extend_from_slice(&addr.to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        write(mem, DESC + 16 * i as u64, &d);
    }

    fn publish(mem: &GuestMemory, heads: &[u16]) {
        for (i, h) in heads.iter().enumerate() {
            write(mem, AVAIL + 4 + 2 * i as u64, &h.to_le_bytes());
        }
        write(mem, AVAIL + 2, &(heads.len() as u16).to_le_bytes());
    }

    /// A ring on the test layout, with inflight tracking in `area` if given (packed when
    /// `packed_base`).
    fn setup(
        mem: &Arc<GuestMemory>,
        area: Option<&Arc<InflightArea>>,
        next_avail: u16,
        next_used: u16,
        packed_base: Option<u32>,
    ) -> Vring {
        Vring::new(VringSetup {
            index: 0,
            size: SIZE,
            desc: DESC,
            avail: AVAIL,
            used: USED,
            next_avail,
            next_used,
            event_idx: false,
            mem: mem.clone(),
            call: None,
            coalescing: Coalescing::default(),
            inflight: area.and_then(|a| InflightQueue::new(a.clone(), 0, SIZE, packed_base.is_some()).ok()),
            packed_base,
            log: None,
        })
        .unwrap()
    }

    fn ring(mem: &Arc<GuestMemory>, area: &Arc<InflightArea>, next_avail: u16, next_used: u16) -> Vring {
        setup(mem, Some(area), next_avail, next_used, None)
    }

    #[test]
    fn in_flight_requests_are_resubmitted_after_a_crash_and_loops_are_caught() {
        let mem = memory();
        // Two requests: header + status each.
        desc(&mem, 0, 0x10000, 16, 1, 1);
        desc(&mem, 1, 0x11000, 1, 2, 0);
        desc(&mem, 2, 0x12000, 16, 1, 3);
        desc(&mem, 3, 0x13000, 1, 2, 0);
        publish(&mem, &[0, 2]);
        let area = Arc::new(InflightArea::create(RingFormat::Split, 1, SIZE).unwrap());
        let mut first = ring(&mem, &area, 0, 0);
        let mut chain = Chain::default();
        assert!(matches!(first.pop(&mut chain), Pop::Chain));
        assert_eq!(
            (chain.head, chain.readable.clone(), chain.writable.clone()),
            (0, vec![(0x10000, 16)], vec![(0x11000, 1)])
        );
        assert!(matches!(first.pop(&mut chain), Pop::Chain));
        assert_eq!(chain.head, 2);
        first.complete(2, 1);
        assert!(matches!(first.pop(&mut chain), Pop::Empty));
        drop(first); // the process dies with head 0 in flight

        // The frontend resumes the ring at its used index (1).
        let mut second = ring(&mem, &area, 1, 1);
        assert!(matches!(second.pop(&mut chain), Pop::Chain));
        assert!(!chain.malformed);
        assert_eq!(
            (chain.head, chain.readable.clone(), chain.writable.clone()),
            (0, vec![(0x10000, 16)], vec![(0x11000, 1)])
        );
        assert!(matches!(second.pop(&mut chain), Pop::Empty), "head 2 was completed and is not redone");
        second.complete(0, 1);
        drop(second);

        // A chain that loops (descriptor 4 points at itself) is caught, from the avail ring ...
        desc(&mem, 4, 0x14000, 16, 1, 4);
        publish(&mem, &[0, 2, 4]);
        let mut third = ring(&mem, &area, 2, 2);
        assert!(matches!(third.pop(&mut chain), Pop::Chain));
        assert!(chain.malformed && chain.head == 4, "a looping chain is malformed");
        drop(third);
        // ... and when resubmitted from the inflight area.
        let mut fourth = ring(&mem, &area, 2, 2);
        assert!(matches!(fourth.pop(&mut chain), Pop::Chain));
        assert!(chain.malformed && chain.head == 4);

        // An avail index that jumps by more than the ring size breaks the queue, nothing else.
        write(&mem, AVAIL + 2, &100u16.to_le_bytes());
        let mut fifth = ring(&mem, &Arc::new(InflightArea::create(RingFormat::Split, 1, SIZE).unwrap()), 3, 3);
        assert!(matches!(fifth.pop(&mut chain), Pop::Broken));
        assert!(fifth.is_broken());
    }

    /// A split ring with one request (header + status) published at head 0.
    fn one_request_ring(mem: &Arc<GuestMemory>) -> Vring {
        desc(mem, 0, 0x10000, 16, 1, 1);
        desc(mem, 1, 0x11000, 1, 2, 0);
        publish(mem, &[0]);
        ring(mem, &Arc::new(InflightArea::create(RingFormat::Split, 1, SIZE).unwrap()), 0, 0)
    }

    #[test]
    fn a_detached_ring_never_writes_guest_memory_again() {
        let mem = memory();
        let mut r = one_request_ring(&mem);
        let mut chain = Chain::default();
        assert!(matches!(r.pop(&mut chain), Pop::Chain));
        r.detach();
        r.complete(0, 1); // the I/O finished after the session gave the queue up
        assert_eq!(used_idx(&mem), 0, "a late completion of a detached queue is dropped");
        assert!(!r.signal());
        assert!(matches!(r.pop(&mut chain), Pop::Broken));
        // The same completion on a live ring does reach the used ring (the check above can fail).
        let mut live = ring(&mem, &Arc::new(InflightArea::create(RingFormat::Split, 1, SIZE).unwrap()), 0, 0);
        assert!(matches!(live.pop(&mut chain), Pop::Chain));
        live.complete(0, 1);
        assert_eq!(used_idx(&mem), 1);
    }

    /// The used index in guest memory (what the driver sees).
    fn used_idx(mem: &GuestMemory) -> u16 {
        let p = mem.host_range(USED + 2, 2).unwrap();
        // SAFETY: host_range checked the two bytes.
        unsafe { p.cast::<u16>().read_unaligned() }
    }

    /// A split ring on the test layout without inflight tracking, three requests published.
    fn untracked_ring_with_three_requests(mem: &Arc<GuestMemory>) -> Vring {
        for (i, head) in [0u16, 2, 4].into_iter().enumerate() {
            desc(mem, head, 0x10000 + 0x2000 * i as u64, 16, 1, head + 1);
            desc(mem, head + 1, 0x11000 + 0x2000 * i as u64, 1, 2, 0);
        }
        publish(mem, &[0, 2, 4]);
        write(mem, USED + 2, &0u16.to_le_bytes());
        setup(mem, None, 0, 0, None)
    }

    #[test]
    fn without_inflight_tracking_completions_are_published_in_batches() {
        let mem = memory();
        let mut r = untracked_ring_with_three_requests(&mem);
        let mut chain = Chain::default();
        for _ in 0..3 {
            assert!(matches!(r.pop(&mut chain), Pop::Chain));
        }
        r.complete(2, 1);
        r.complete(0, 1);
        // Both entries are in the used ring, in completion order, not yet published: a
        // request is still in flight, so more completions may join them.
        let entry = |i: u64| {
            let p = mem.host_range(USED + 4 + 8 * i, 8).unwrap();
            // SAFETY: host_range checked the eight bytes.
            unsafe { (p.cast::<u32>().read_unaligned(), p.add(4).cast::<u32>().read_unaligned()) }
        };
        assert_eq!((entry(0), entry(1)), ((2, 1), (0, 1)));
        assert_eq!(used_idx(&mem), 0, "published with a request still in flight");
        // The queue's poll publishes them (its first step, and its signal).
        r.publish_used();
        assert_eq!(used_idx(&mem), 2);
        // The last request in flight is published at once: nothing else would come soon.
        r.complete(4, 1);
        assert_eq!(used_idx(&mem), 3);

        // However the queue goes, what completed is published: its handle's drop flushes,
        // and a queue given up on publishes before it lets the ring go.
        let endings = [("flush_signal", Vring::flush_signal as fn(&mut Vring)), ("detach", Vring::detach)];
        for (how, end) in endings {
            let mut r = untracked_ring_with_three_requests(&mem);
            assert!(matches!(r.pop(&mut chain), Pop::Chain));
            assert!(matches!(r.pop(&mut chain), Pop::Chain));
            r.complete(0, 1);
            assert_eq!(used_idx(&mem), 0, "{how}");
            end(&mut r);
            assert_eq!(used_idx(&mem), 1, "{how}");
        }
        // With inflight tracking every completion is published at once (the crash-consistent
        // order of the inflight area): see a_detached_ring_never_writes_guest_memory_again.
    }

    #[test]
    fn a_poll_pops_what_was_published_when_it_began_and_looks_again_only_when_idle() {
        let mem = memory();
        let mut r = untracked_ring_with_three_requests(&mem);
        for head in [6u16, 8] {
            desc(&mem, head, 0x20000 + 0x100 * head as u64, 16, 1, head + 1);
            desc(&mem, head + 1, 0x21000 + 0x100 * head as u64, 1, 2, 0);
        }
        let mut chain = Chain::default();
        let mut popped = 0;
        while r.keep_polling(popped) {
            assert!(matches!(r.pop(&mut chain), Pop::Chain));
            popped += 1;
            if popped == 1 {
                // Published during the poll: the next poll's.
                publish(&mem, &[0, 2, 4, 6, 8]);
            }
        }
        assert_eq!(popped, 3, "the three published when the poll began");
        popped = 0;
        while r.keep_polling(popped) {
            assert!(matches!(r.pop(&mut chain), Pop::Chain));
            popped += 1;
        }
        assert_eq!(popped, 2, "the next poll takes the rest");
        assert!(!r.keep_polling(0), "nothing published");

        // Nothing in flight (all completed inline): the driver waits for us, so a poll that
        // has popped what it saw looks once more.
        let mut r = untracked_ring_with_three_requests(&mem);
        popped = 0;
        while r.keep_polling(popped) {
            assert!(matches!(r.pop(&mut chain), Pop::Chain));
            r.complete(chain.head, 1);
            popped += 1;
            if popped == 3 {
                publish(&mem, &[0, 2, 4, 6]);
            }
        }
        assert_eq!(popped, 4);
    }

    #[test]
    fn kicks_stay_off_until_the_queue_was_empty_long_enough_and_a_late_request_is_seen() {
        let mem = memory();
        let mut r = one_request_ring(&mem);
        // Without EVENT_IDX the wish is the used ring's flags word: 1 = VRING_USED_F_NO_NOTIFY.
        let no_kicks = |mem: &GuestMemory| {
            let p = mem.host_range(USED, 2).unwrap();
            // SAFETY: host_range checked the two bytes.
            unsafe { p.cast::<u16>().read_unaligned() == 1 }
        };
        assert!(!no_kicks(&mem), "a new ring asks for kicks");
        let mut chain = Chain::default();
        let t0 = 1_000_000;
        let after = ticks::from_duration(KICKS_BACK_ON_AFTER);
        assert!(matches!(r.pop(&mut chain), Pop::Chain));
        assert!(!r.after_poll_at(1, t0));
        assert!(no_kicks(&mem), "kicks off while requests come");
        assert!(matches!(r.pop(&mut chain), Pop::Empty));
        assert!(!r.after_poll_at(0, t0 + after / 2));
        assert!(no_kicks(&mem), "one empty poll does not turn kicks back on");
        // A request published while kicks are off is found when they go back on: poll again.
        desc(&mem, 2, 0x12000, 16, 1, 3);
        desc(&mem, 3, 0x13000, 1, 2, 0);
        publish(&mem, &[0, 2]);
        assert!(r.after_poll_at(0, t0 + after + 1), "a request that came while kicks were off");
        assert!(!no_kicks(&mem), "kicks back on after the queue was empty long enough");
        assert!(matches!(r.pop(&mut chain), Pop::Chain));
        assert_eq!(chain.head, 2);
    }

    /// Makes packed-ring slot `i` available with driver wrap counter `wrap`.
    fn offer(mem: &GuestMemory, i: u16, addr: u64, len: u32, id: u16, flags: u16, wrap: bool) {
        let avail = if wrap { 1 << 7 } else { 1 << 15 };
        let mut d = addr.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&id.to_le_bytes());
        d.extend_from_slice(&(flags | avail).to_le_bytes());
        write(mem, DESC + 16 * i as u64, &d);
    }

    fn packed_ring(mem: &Arc<GuestMemory>, area: &Arc<InflightArea>, base: u32) -> Vring {
        setup(mem, Some(area), 0, 0, Some(base))
    }

    type Segments = (u16, Vec<(u64, u32)>, Vec<(u64, u32)>, bool);

    fn segments(chain: &Chain) -> Segments {
        (chain.head, chain.readable.clone(), chain.writable.clone(), chain.malformed)
    }

    #[test]
    fn a_packed_ring_resubmits_what_was_in_flight_after_a_crash() {
        let mem = memory();
        // QEMU's base for a fresh packed ring: both positions 0, both wrap counters 1. After a
        // crash it sends the same (stale) base again: it cannot read a packed ring's positions.
        let base = 1 << 15 | 1 << 31;
        // Buffer 4: header + status (slots 0, 1); buffer 6: header + data + status (2, 3, 4);
        // buffer 1: one descriptor (5).
        offer(&mem, 0, 0x10000, 16, 4, 1, true);
        offer(&mem, 1, 0x11000, 1, 4, 2, true);
        offer(&mem, 2, 0x12000, 16, 6, 1, true);
        offer(&mem, 3, 0x13000, 4096, 6, 1 | 2, true);
        offer(&mem, 4, 0x14000, 1, 6, 2, true);
        offer(&mem, 5, 0x15000, 16, 1, 0, true);
        let area = Arc::new(InflightArea::create(RingFormat::Packed, 1, SIZE).unwrap());
        let mut first = packed_ring(&mem, &area, base);
        let mut chain = Chain::default();
        let mut popped = Vec::new();
        for _ in 0..3 {
            assert!(matches!(first.pop(&mut chain), Pop::Chain));
            popped.push(segments(&chain));
        }
        assert!(matches!(first.pop(&mut chain), Pop::Empty));
        assert_eq!(area.inflight_now(), 3);
        // Buffer 1 completes (its used element goes to slot 0, over buffer 4's header);
        // 4 and 6 are in flight when the process dies.
        first.complete(1, 0);
        drop(first);

        let mut second = packed_ring(&mem, &area, base);
        assert_eq!(area.resubmitted(), 2);
        assert!(matches!(second.pop(&mut chain), Pop::Chain));
        assert_eq!(segments(&chain), popped[0], "buffer 4, rebuilt from the saved descriptors");
        assert!(matches!(second.pop(&mut chain), Pop::Chain));
        assert_eq!(segments(&chain), popped[1], "then buffer 6");
        assert!(matches!(second.pop(&mut chain), Pop::Empty), "buffer 1 is done and slot 5 is not re-read");
        // New work continues after the six slots fetched before the crash.
        offer(&mem, 6, 0x16000, 16, 2, 0, true);
        assert!(matches!(second.pop(&mut chain), Pop::Chain));
        assert_eq!(chain.head, 2);
        // Used elements continue after buffer 1's: slot 1, then 4 (buffer 6 took three), 6.
        second.complete(6, 1);
        second.complete(4, 1);
        second.complete(2, 0);
        assert_eq!(second.base() >> 16 & 0x7fff, 7, "used position 1 + 3 + 2 + 1");
        let id_at = |slot: u64| {
            let p = mem.host_range(DESC + 16 * slot + 12, 2).unwrap();
            // SAFETY: inside the test's mapping.
            u16::from_le(unsafe { p.cast::<u16>().read_unaligned() })
        };
        assert_eq!((id_at(0), id_at(1), id_at(4), id_at(6)), (1, 6, 4, 2));
        assert_eq!(area.inflight_now(), 0);
    }
}

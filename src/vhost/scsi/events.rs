//! The virtio-scsi event queue: the guest posts 16-byte buffers, Ferry fills one per event
//! (a target added or removed, a capacity change). Events raised while the guest has no
//! buffer posted wait; past a bound the oldest are dropped and the next event carries
//! VIRTIO_SCSI_T_EVENTS_MISSED, telling the guest to rescan.

use crate::framework::{self, PollStatus};
use crate::vhost::device::{QueueHandle, RunningQueue, ServedQueue};
use crate::vhost::guest_buf::copy_to_guest;
use crate::vhost::ring::{Chain, Pop, Vring};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_scsi as vs;
use vmm_sys_util::eventfd::EventFd;

/// Events kept while the guest has no buffer posted.
const MAX_PENDING: usize = 64;
/// Size of virtio_scsi_event.
const EVENT_LEN: usize = 16;
const NO_REACTOR: usize = usize::MAX;

/// Events waiting for the guest, shared between the RPC side that raises them and the
/// reactor that runs the event queue.
#[derive(Debug)]
pub struct EventQueueState {
    pending: Mutex<VecDeque<[u8; EVENT_LEN]>>,
    has_pending: AtomicBool,
    missed: AtomicBool,
    reactor: AtomicUsize,
}

impl Default for EventQueueState {
    fn default() -> Self {
        EventQueueState {
            pending: Mutex::new(VecDeque::new()),
            has_pending: AtomicBool::new(false),
            missed: AtomicBool::new(false),
            reactor: AtomicUsize::new(NO_REACTOR),
        }
    }
}

impl EventQueueState {
    /// Raises `event` with `reason` for LUN 0 of `target`.
    pub fn push(&self, event: u32, target: u8, reason: u32) {
        let mut e = [0u8; EVENT_LEN];
        e[0..4].copy_from_slice(&event.to_le_bytes());
        // virtio-scsi LUN field: target addressing, then LUN 0 in peripheral format (00h 00h).
        // Linux reads bytes 2..4 as the LUN number verbatim (as QEMU sends LUNs below 256), so
        // the flat format's 40h would make it scan LUN 16384.
        e[4..12].copy_from_slice(&[1, target, 0, 0, 0, 0, 0, 0]);
        e[12..16].copy_from_slice(&reason.to_le_bytes());
        {
            let mut q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= MAX_PENDING {
                q.pop_front();
                self.missed.store(true, Ordering::Release);
            }
            q.push_back(e);
        }
        self.has_pending.store(true, Ordering::Release);
        // Wake the event queue's reactor (a no-op message), in case it sleeps.
        let r = self.reactor.load(Ordering::Acquire);
        if r != NO_REACTOR {
            let _ = framework::send(r, || {});
        }
    }

    /// A target appeared: the guest scans it (TRANSPORT_RESET / RESCAN).
    pub fn target_added(&self, target: u8) {
        self.push(vs::VIRTIO_SCSI_T_TRANSPORT_RESET, target, vs::VIRTIO_SCSI_EVT_RESET_RESCAN);
    }

    /// A target went away: the guest removes its disk (TRANSPORT_RESET / REMOVED).
    pub fn target_removed(&self, target: u8) {
        self.push(vs::VIRTIO_SCSI_T_TRANSPORT_RESET, target, vs::VIRTIO_SCSI_EVT_RESET_REMOVED);
    }

    /// A target's capacity changed: PARAM_CHANGE with CAPACITY DATA HAS CHANGED (2Ah/09h),
    /// the reason carrying ASC in its low byte and ASCQ in the next.
    pub fn capacity_changed(&self, target: u8) {
        let (asc, ascq) = crate::scsi::sense::asc::CAPACITY_CHANGED;
        self.push(vs::VIRTIO_SCSI_T_PARAM_CHANGE, target, asc as u32 | (ascq as u32) << 8);
    }

    /// Events not yet delivered.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The event queue on its reactor.
pub(super) struct EventQueue {
    ring: Vring,
    chain: Chain,
    state: Arc<EventQueueState>,
}

impl EventQueue {
    pub(super) fn start(
        ring: Vring,
        kick: EventFd,
        state: Arc<EventQueueState>,
    ) -> Result<Box<dyn RunningQueue>, String> {
        state.reactor.store(framework::current_index().unwrap_or(NO_REACTOR), Ordering::Release);
        let q = Rc::new(RefCell::new(EventQueue { ring, chain: Chain::default(), state }));
        let name = format!("vhost_scsi_event{}", q.borrow().ring.index);
        QueueHandle::start(q, kick, &name)
    }

    fn poll(&mut self) -> PollStatus {
        let mut delivered = 0;
        let mut more = false;
        if self.state.has_pending.load(Ordering::Acquire) {
            // Walk the guest's ring without the lock the management thread posts events
            // under: take the events out, put back what was not delivered.
            let mut pending = std::mem::take(&mut *self.state.pending.lock().unwrap_or_else(|p| p.into_inner()));
            // At most a ring's worth of chains per poll (a driver publishing junk buffers
            // forever cannot hold the reactor here).
            let mut budget = self.ring.size();
            while let Some(event) = pending.front().copied() {
                if budget == 0 {
                    more = true;
                    break;
                }
                budget -= 1;
                match self.ring.pop(&mut self.chain) {
                    Pop::Chain => {}
                    Pop::Empty | Pop::Broken => break,
                }
                let head = self.chain.head;
                if self.chain.malformed || self.chain.writable_len() < EVENT_LEN as u64 {
                    self.ring.complete(head, 0); // not an event buffer: skip it, keep the event
                    continue;
                }
                let mut e = event;
                if self.state.missed.swap(false, Ordering::AcqRel) {
                    let kind =
                        u32::from_le_bytes(e[0..4].try_into().expect("4 bytes")) | vs::VIRTIO_SCSI_T_EVENTS_MISSED;
                    e[0..4].copy_from_slice(&kind.to_le_bytes());
                }
                let used = match copy_to_guest(self.ring.mem(), &self.chain.writable, 0, &e) {
                    Ok(()) => EVENT_LEN as u32,
                    Err(_) => 0,
                };
                self.ring.log_segments(&self.chain.writable);
                self.ring.complete(head, used);
                if used > 0 {
                    pending.pop_front();
                    delivered += 1;
                }
            }
            let mut shared = self.state.pending.lock().unwrap_or_else(|p| p.into_inner());
            // Events posted meanwhile come after the older ones still waiting here.
            pending.append(&mut shared);
            *shared = pending;
            self.state.has_pending.store(!shared.is_empty(), Ordering::Release);
        }
        let held_back = self.ring.signal();
        PollStatus::from(delivered > 0 || held_back || more)
    }
}

impl ServedQueue for EventQueue {
    fn ring(&self) -> &Vring {
        &self.ring
    }

    fn ring_mut(&mut self) -> &mut Vring {
        &mut self.ring
    }

    fn stop(&mut self) {
        // Events raised from now on wait for the next run of the queue.
        self.state.reactor.store(NO_REACTOR, Ordering::Release);
    }

    fn poll(&mut self) -> PollStatus {
        EventQueue::poll(self)
    }

    fn inflight(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_lun_0_as_linux_reads_it() {
        let s = EventQueueState::default();
        s.target_added(3);
        let e = s.pending.lock().unwrap()[0];
        assert_eq!(u32::from_le_bytes(e[0..4].try_into().unwrap()), vs::VIRTIO_SCSI_T_TRANSPORT_RESET);
        // Linux takes (lun[2] << 8) | lun[3] as the LUN: it must be 0, not 0x4000.
        assert_eq!(&e[4..12], &[1, 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(u32::from_le_bytes(e[12..16].try_into().unwrap()), vs::VIRTIO_SCSI_EVT_RESET_RESCAN);
    }
}

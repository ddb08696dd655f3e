//! What a virtio device type (blk now, scsi next) gives the generic vhost-user session:
//! its features, config space and queue count, and how to serve one queue on a reactor.

use super::dirty_log::DirtyLog;
use super::ring::{Coalescing, Vring, VringSetup};
use crate::bdev::qos::gate::LimitSlot;
use crate::framework::notifier::Notifier;
use crate::framework::{self, InterruptSource, PollStatus, Poller};
use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// Virtqueues a controller offers, whatever its cpumask: SPDK's `SPDK_VHOST_MAX_VQUEUES`.
/// Frontends ask for one request queue per vCPU by default (QEMU's `num-queues`, libvirt
/// without `queues`), so the count must not follow the controller's cores; queue i runs on
/// the controller's reactor `i % cores`.
pub const MAX_VIRTQUEUES: u16 = 256;

/// A device type served over vhost-user.
pub trait VirtioDevice: Send + Sync + 'static {
    /// Virtio feature bits offered (device and ring features; VERSION_1 included).
    fn features(&self) -> u64;
    /// Number of request queues.
    fn num_queues(&self) -> u16;
    /// Largest ring size accepted.
    fn max_queue_size(&self) -> u16 {
        1024
    }
    /// The config space, as the guest reads it.
    fn config(&self) -> Vec<u8>;
    /// Whether frontends read the config space from the backend (the CONFIG protocol
    /// feature); QEMU's vhost-user-scsi builds its own.
    fn config_from_backend(&self) -> bool {
        true
    }
    /// A guest write to the config space; false if the field is read-only.
    fn write_config(&self, offset: u32, data: &[u8]) -> bool;
    /// The limit on everything the guest sends through this device, over all its queues
    /// and targets (the controller's QoS, `vhost_controller_set_qos`).
    fn qos(&self) -> &Arc<LimitSlot>;
    /// Starts serving a queue on the current reactor; `kick` is the guest's doorbell.
    fn start_queue(&self, setup: VringSetup, kick: EventFd) -> Result<Box<dyn RunningQueue>, String>;
}

/// A queue being served on a reactor (owned by that reactor's thread).
pub trait RunningQueue {
    /// Stops taking new requests (in-flight ones complete).
    fn stop(&self);
    /// Requests in flight.
    fn inflight(&self) -> usize;
    /// Requests completed since the queue started.
    fn completed(&self) -> u64;
    /// Where the ring should resume (GET_VRING_BASE's value).
    fn base(&self) -> u32;
    /// Replaces the guest notification fd.
    fn set_call(&self, call: Option<Notifier>);
    /// Changes interrupt coalescing.
    fn set_coalescing(&self, c: Coalescing);
    /// Starts or stops dirty logging.
    fn set_log(&self, log: Option<Arc<DirtyLog>>);
    /// Gives the queue up while I/O is still in flight: its ring stops touching guest
    /// memory, its poller and kick fd go; what the I/O still needs (the queue, and through it
    /// the guest memory mapping it reads and writes) is returned, to be kept alive.
    fn detach(self: Box<Self>) -> Box<dyn std::any::Any>;
}

/// What a device's queue type shows the generic [`QueueHandle`]: its ring, how to stop it
/// taking requests, and what it still has in flight.
pub trait ServedQueue: 'static {
    /// The queue's ring.
    fn ring(&self) -> &Vring;
    /// The queue's ring, mutably.
    fn ring_mut(&mut self) -> &mut Vring;
    /// Stops taking new requests.
    fn stop(&mut self);
    /// Requests in flight.
    fn inflight(&self) -> usize;
    /// One run of the queue's poller.
    fn poll(&mut self) -> PollStatus;
}

/// The session's handle on a queue running on this reactor: the queue, the poller that runs
/// it, and the guest's kick fd registered as an interrupt source so a sleeping reactor wakes.
pub struct QueueHandle<Q: ServedQueue> {
    queue: Rc<RefCell<Q>>,
    // Fields drop in order: the poller stops first, then the kick fd leaves the reactor's
    // epoll set, and only then is it closed (a stale registration would outlive it).
    _poller: Poller,
    _interrupt: InterruptSource,
    _kick: EventFd,
}

impl<Q: ServedQueue> QueueHandle<Q> {
    /// Serves `queue` on this reactor under the poller name `name`, woken by `kick`.
    pub fn start(queue: Rc<RefCell<Q>>, kick: EventFd, name: &str) -> Result<Box<dyn RunningQueue>, String> {
        let interrupt = framework::register_interrupt(kick.as_raw_fd()).map_err(|e| format!("kick fd: {e}"))?;
        let weak = Rc::downgrade(&queue);
        let poller = framework::poller_register(name, Duration::ZERO, move || {
            let status = weak.upgrade().map_or(PollStatus::Idle, |q| q.borrow_mut().poll());
            if status == PollStatus::Busy {
                // What the queue just submitted and a bdev finished at once (null, malloc)
                // completes now, its used-ring entry written in this round, rather than when
                // the reactor's bdev_completions poller next comes round: at queue depth 1 that
                // round is on every request's path. The queue's borrow is released: its own
                // completion callback may take it.
                crate::bdev::io::drain_completions();
            }
            status
        });
        Ok(Box::new(QueueHandle { queue, _poller: poller, _interrupt: interrupt, _kick: kick }))
    }
}

impl<Q: ServedQueue> RunningQueue for QueueHandle<Q> {
    fn stop(&self) {
        self.queue.borrow_mut().stop();
    }

    fn inflight(&self) -> usize {
        self.queue.borrow().inflight()
    }

    fn completed(&self) -> u64 {
        self.queue.borrow().ring().completed()
    }

    fn base(&self) -> u32 {
        self.queue.borrow().ring().base()
    }

    fn set_call(&self, call: Option<Notifier>) {
        self.queue.borrow_mut().ring_mut().set_call(call);
    }

    fn set_coalescing(&self, c: Coalescing) {
        self.queue.borrow_mut().ring_mut().set_coalescing(c);
    }

    fn set_log(&self, log: Option<Arc<DirtyLog>>) {
        self.queue.borrow_mut().ring_mut().set_log(log);
    }

    fn detach(self: Box<Self>) -> Box<dyn std::any::Any> {
        self.queue.borrow_mut().ring_mut().detach();
        Box::new(self.queue.clone())
    }
}

impl<Q: ServedQueue> Drop for QueueHandle<Q> {
    /// However the queue goes, the interrupt it owes goes out first (see
    /// [`Vring::flush_signal`]; a detached ring sends nothing).
    fn drop(&mut self) {
        self.queue.borrow_mut().ring_mut().flush_signal();
    }
}

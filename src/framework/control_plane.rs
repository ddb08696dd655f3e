//! The control plane's threads: event loops (rust-vmm's `event-manager`) that own every
//! management socket in non-blocking mode: one for vhost-user listeners and connections (with
//! a small fixed pool of workers for handlers that may wait on our own machinery: a queue
//! draining its I/O, a message to a reactor), and one for the operator's endpoints (the RPC
//! server, whose calls run on a pool of their own).
//!
//! So the thread count does not grow with the number of VMs, and no peer can block anything
//! but its own connection: the loop never makes a blocking call on a peer's socket, and a
//! handler runs only once its connection has delivered a complete request.

use super::worker_pool::WorkerPool;
use event_manager::{EventManager, MutEventSubscriber, RemoteEndpoint, SubscriberId, SubscriberOps};
use std::sync::mpsc::channel;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::Duration;

/// A subscriber the loop owns.
pub type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// Workers running handlers; a handler waits at most for a drain timeout, so a handful are
/// enough whatever the number of connections.
const WORKERS: usize = 4;

/// Why the control plane could not do something.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// Starting a thread or the event loop failed.
    #[error("control plane: {0}")]
    Setup(String),
    /// The event loop is gone (shutting down).
    #[error("the control plane's event loop has stopped")]
    Stopped,
}

/// One event-loop thread, reached through its endpoint.
pub struct EventLoop {
    endpoint: RemoteEndpoint<Subscriber>,
    _thread: JoinHandle<()>,
}

impl EventLoop {
    /// Starts a loop on a thread called `name`.
    fn start(name: &str) -> Result<EventLoop, ControlPlaneError> {
        let setup = |e: String| ControlPlaneError::Setup(e);
        let (endpoint_tx, endpoint_rx) = channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut manager = match EventManager::<Subscriber>::new() {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = endpoint_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = endpoint_tx.send(Ok(manager.remote_endpoint()));
                loop {
                    if let Err(e) = manager.run() {
                        tracing::error!(error = %e, "control plane event loop failed");
                    }
                }
            })
            .map_err(|e| setup(e.to_string()))?;
        let endpoint = endpoint_rx.recv().map_err(|e| setup(e.to_string()))?.map_err(setup)?;
        Ok(EventLoop { endpoint, _thread: thread })
    }

    /// Adds a subscriber to the loop and returns its id (waits for the loop to take it).
    pub fn add(&self, subscriber: Subscriber) -> Result<SubscriberId, ControlPlaneError> {
        self.endpoint
            .call_blocking(move |ops| Ok::<_, event_manager::Error>(ops.add_subscriber(subscriber)))
            .map_err(|_| ControlPlaneError::Stopped)
    }

    /// Removes a subscriber (waits for the loop, so it is not running when this returns) and
    /// gives it back. Must not be called on the loop thread: use [`EventLoop::remove_later`].
    pub fn remove(&self, id: SubscriberId) -> Option<Subscriber> {
        self.endpoint.call_blocking(move |ops| ops.remove_subscriber(id)).ok()
    }

    /// Removes a subscriber once the loop has finished the current round of events (for a
    /// subscriber removing itself from within its own `process`).
    pub fn remove_later(&self, id: SubscriberId) {
        let _ = self.endpoint.fire(move |ops| {
            let _ = ops.remove_subscriber(id);
        });
    }

    /// Waits until the loop has run everything sent to it before this call. Not on the loop
    /// thread.
    pub fn sync(&self) {
        let _ = self.endpoint.call_blocking(|_| Ok::<_, event_manager::Error>(()));
    }

    /// Runs `f` on the loop thread with access to the subscribers (fire and forget).
    pub fn on_loop(&self, f: impl FnOnce(&mut dyn SubscriberOps<Subscriber = Subscriber>) + Send + 'static) {
        let _ = self.endpoint.fire(f);
    }
}

struct ControlPlane {
    vhost: EventLoop,
    workers: WorkerPool,
}

static PLANE: OnceLock<ControlPlane> = OnceLock::new();

fn plane() -> Result<&'static ControlPlane, ControlPlaneError> {
    if let Some(p) = PLANE.get() {
        return Ok(p);
    }
    let vhost = EventLoop::start("ctrl_loop")?;
    // A fixed set: min = max, so the thread count never depends on the peers.
    let workers = WorkerPool::new("ctrl_worker", WORKERS, WORKERS, Duration::from_secs(3600))
        .map_err(|e| ControlPlaneError::Setup(e.to_string()))?;
    // Two racing first callers: one plane wins, the other's threads idle forever (harmless,
    // and only possible at start-up).
    Ok(PLANE.get_or_init(|| ControlPlane { vhost, workers }))
}

/// The management loop: the RPC server's listener and clients (and later other management
/// endpoints). Apart from the vhost-user loop so that a storm of VMs reconnecting at once
/// does not queue the operator's calls behind it.
pub fn management() -> Result<&'static EventLoop, ControlPlaneError> {
    static MANAGEMENT: OnceLock<EventLoop> = OnceLock::new();
    if let Some(l) = MANAGEMENT.get() {
        return Ok(l);
    }
    let l = EventLoop::start("mgmt_loop")?;
    Ok(MANAGEMENT.get_or_init(|| l))
}

/// Adds a subscriber to the vhost-user loop (see [`EventLoop::add`]).
pub fn add(subscriber: Subscriber) -> Result<SubscriberId, ControlPlaneError> {
    plane()?.vhost.add(subscriber)
}

/// Removes a subscriber from the vhost-user loop (see [`EventLoop::remove`]).
pub fn remove(id: SubscriberId) -> Option<Subscriber> {
    plane().ok()?.vhost.remove(id)
}

/// Removes a subscriber from the vhost-user loop later (see [`EventLoop::remove_later`]).
pub fn remove_later(id: SubscriberId) {
    if let Ok(p) = plane() {
        p.vhost.remove_later(id);
    }
}

/// Waits for the vhost-user loop (see [`EventLoop::sync`]): a connection a listener accepted
/// is registered by then.
pub fn sync() {
    if let Ok(p) = plane() {
        p.vhost.sync();
    }
}

/// Runs `f` on the vhost-user loop (see [`EventLoop::on_loop`]).
pub fn on_loop(f: impl FnOnce(&mut dyn SubscriberOps<Subscriber = Subscriber>) + Send + 'static) {
    if let Ok(p) = plane() {
        p.vhost.on_loop(f);
    }
}

/// Runs `job` on a vhost-user worker.
pub fn spawn(job: impl FnOnce() + Send + 'static) -> Result<(), ControlPlaneError> {
    plane()?.workers.spawn(job).map_err(|e| ControlPlaneError::Setup(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_manager::{EventOps, EventSet, Events};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    struct Counter {
        fd: EventFd,
        seen: Arc<AtomicU32>,
    }

    impl MutEventSubscriber for Counter {
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            let _ = self.fd.read();
            self.seen.fetch_add(1, Ordering::SeqCst);
        }

        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.fd, EventSet::IN)).unwrap();
        }
    }

    #[test]
    fn subscribers_get_events_and_jobs_run_on_workers() {
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let seen = Arc::new(AtomicU32::new(0));
        let id = add(Box::new(Counter { fd: fd.try_clone().unwrap(), seen: seen.clone() })).unwrap();
        fd.write(1).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while seen.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "the loop never processed the event");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(remove(id).is_some());
        let (tx, rx) = channel();
        spawn(move || tx.send(std::thread::current().name().map(str::to_string)).unwrap()).unwrap();
        let name = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap().unwrap();
        assert!(name.starts_with("ctrl_worker"), "{name}");
    }
}

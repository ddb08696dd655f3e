//! The control plane's threads: one event loop (rust-vmm's `event-manager`) that owns every
//! management socket (vhost-user listeners and connections, later RPC and target listeners)
//! in non-blocking mode, and a small fixed pool of workers for handlers that may wait on our
//! own machinery (a queue draining its I/O, a message to a reactor).
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

struct ControlPlane {
    endpoint: RemoteEndpoint<Subscriber>,
    workers: WorkerPool,
    _event_loop: JoinHandle<()>,
}

static PLANE: OnceLock<ControlPlane> = OnceLock::new();

fn plane() -> Result<&'static ControlPlane, ControlPlaneError> {
    if let Some(p) = PLANE.get() {
        return Ok(p);
    }
    let p = start()?;
    // Two racing first callers: one plane wins, the other's threads idle forever (harmless,
    // and only possible at start-up).
    Ok(PLANE.get_or_init(|| p))
}

fn start() -> Result<ControlPlane, ControlPlaneError> {
    let setup = |e: String| ControlPlaneError::Setup(e);
    let (endpoint_tx, endpoint_rx) = channel();
    let event_loop = std::thread::Builder::new()
        .name("ctrl_loop".into())
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
    // A fixed set: min = max, so the thread count never depends on the peers.
    let workers = WorkerPool::new("ctrl_worker", WORKERS, WORKERS, Duration::from_secs(3600))
        .map_err(|e| setup(e.to_string()))?;
    Ok(ControlPlane { endpoint, workers, _event_loop: event_loop })
}

/// Adds a subscriber to the event loop and returns its id (waits for the loop to take it).
pub fn add(subscriber: Subscriber) -> Result<SubscriberId, ControlPlaneError> {
    plane()?
        .endpoint
        .call_blocking(move |ops| Ok::<_, event_manager::Error>(ops.add_subscriber(subscriber)))
        .map_err(|_| ControlPlaneError::Stopped)
}

/// Removes a subscriber (waits for the loop, so it is not running when this returns) and
/// gives it back. Must not be called on the loop thread: use [`remove_later`] there.
pub fn remove(id: SubscriberId) -> Option<Subscriber> {
    let p = plane().ok()?;
    p.endpoint.call_blocking(move |ops| ops.remove_subscriber(id)).ok()
}

/// Removes a subscriber once the loop has finished the current round of events (for a
/// subscriber removing itself from within its own `process`).
pub fn remove_later(id: SubscriberId) {
    if let Ok(p) = plane() {
        let _ = p.endpoint.fire(move |ops| {
            let _ = ops.remove_subscriber(id);
        });
    }
}

/// Waits until the loop has run everything sent to it before this call (a connection a
/// listener accepted is registered by then). Not on the loop thread.
pub fn sync() {
    if let Ok(p) = plane() {
        let _ = p.endpoint.call_blocking(|_| Ok::<_, event_manager::Error>(()));
    }
}

/// Runs `f` on the loop thread with access to the subscribers (fire and forget).
pub fn on_loop(f: impl FnOnce(&mut dyn SubscriberOps<Subscriber = Subscriber>) + Send + 'static) {
    if let Ok(p) = plane() {
        let _ = p.endpoint.fire(f);
    }
}

/// Runs `job` on a worker.
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

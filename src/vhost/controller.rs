//! vhost controllers: one Unix socket each (`<dir>/<ctrlr>`), watched by the control plane's
//! event loop: a frontend is accepted, served as a [`Connection`] until it disconnects, and
//! the socket is listened on again (a restarted QEMU, or QEMU's `reconnect-ms`, finds it
//! waiting). One frontend at a time: while one is connected, further ones wait in the
//! listen backlog. No thread per controller.

use super::backend_channel::BackendChannel;
use super::connection::{Connection, ConnectionHandle, ConnectionOwner, Handler};
use super::device::VirtioDevice;
use super::ring::Coalescing;
use super::session::{Session, SessionInfo};
use crate::framework::socket::{self as framework_socket, peer_credentials, OwnedSocket};
use crate::framework::{control_plane, ticks, Cpumask};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber, SubscriberId};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use thiserror::Error;
use vhost::vhost_user::Listener;

/// Why a controller operation failed.
#[derive(Debug, Error)]
pub enum ControllerError {
    /// A controller of that name exists.
    #[error("vhost controller {0} already exists")]
    Exists(String),
    /// No controller of that name.
    #[error("vhost controller {0} not found")]
    NotFound(String),
    /// A guest is connected.
    #[error("vhost controller {0} has a connected guest")]
    Busy(String),
    /// A parameter is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The socket could not be set up.
    #[error("vhost controller {name}: socket {path}: {reason}")]
    Socket {
        /// Controller.
        name: String,
        /// Socket path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The bdev could not be opened.
    #[error(transparent)]
    Bdev(#[from] crate::bdev::BdevError),
}

impl ControllerError {
    /// The errno SPDK reports for it.
    pub fn errno(&self) -> i32 {
        match self {
            ControllerError::Exists(_) => libc::EEXIST,
            ControllerError::NotFound(_) => libc::ENODEV,
            ControllerError::Busy(_) => libc::EBUSY,
            ControllerError::Invalid(_) => libc::EINVAL,
            ControllerError::Socket { .. } => libc::EIO,
            ControllerError::Bdev(e) => e.errno(),
        }
    }
}

/// Coalescing as the RPC sets it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoalescingParams {
    /// Minimum µs between interrupts when busy (0 = off).
    pub delay_base_us: u32,
    /// IOPS above which coalescing applies.
    pub iops_threshold: u32,
}

/// A vhost-user controller.
pub struct Controller {
    /// Its name (`ctrlr`).
    pub name: String,
    /// Socket path.
    pub socket: PathBuf,
    /// Cores its queues run on.
    pub cpumask: Cpumask,
    /// The device type's own description for `vhost_get_controllers` and `save_config`.
    pub kind: ControllerKind,
    coalescing_params: Mutex<CoalescingParams>,
    shared: Arc<Shared>,
    /// The socket path's claim; released (and the file removed if still ours) on shutdown.
    owned_socket: Mutex<Option<OwnedSocket>>,
}

/// What the controller, its listener and its connection share.
struct Shared {
    name: String,
    device: Arc<dyn VirtioDevice>,
    reactors: Vec<usize>,
    coalescing: Arc<Mutex<Coalescing>>,
    info: Arc<Mutex<SessionInfo>>,
    backend_channel: Arc<BackendChannel>,
    connected: AtomicBool,
    stopped: AtomicBool,
    listener_fd: RawFd,
    listener_id: OnceLock<SubscriberId>,
    /// The connection being served: its subscriber and its handler (which owns the session).
    connection: Mutex<Option<ConnectionHandle>>,
}

impl ConnectionOwner for Shared {
    fn connection_closed(&self) {
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.connected.store(false, Ordering::Release);
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        tracing::info!(ctrlr = %self.name, "listening again");
        let (Some(&id), fd) = (self.listener_id.get(), self.listener_fd) else { return };
        control_plane::on_loop(move |ops| {
            if let Ok(mut listener) = ops.event_ops(id) {
                let _ = listener.add(Events::new_raw(fd, EventSet::IN));
            }
        });
    }
}

/// The device behind a controller.
#[derive(Clone)]
pub enum ControllerKind {
    /// virtio-blk on a bdev.
    Blk {
        /// The bdev.
        bdev: String,
        /// Read-only.
        readonly: bool,
        /// Packed ring asked for.
        packed_ring: bool,
    },
    /// virtio-scsi with targets that come and go.
    Scsi {
        /// The targets.
        targets: Arc<super::scsi::TargetTable>,
        /// Where hot-plug events wait for the guest.
        events: Arc<super::scsi::EventQueueState>,
    },
}

impl Controller {
    /// Starts listening on `dir/name` for `device`, its queues on the reactors of `cpumask`.
    pub fn start(
        name: &str,
        dir: &Path,
        cpumask: Cpumask,
        reactors: Vec<usize>,
        device: Arc<dyn VirtioDevice>,
        kind: ControllerKind,
        backend_channel: Arc<BackendChannel>,
    ) -> Result<Arc<Controller>, ControllerError> {
        let socket = dir.join(name);
        let sock_err = |reason: String| ControllerError::Socket { name: name.into(), path: socket.clone(), reason };
        // Never replaces a live socket or one another process holds; mode and owner as
        // `ferryd --vhost-socket-mode/-owner` say, whatever the umask.
        let (listener, owned) =
            framework_socket::bind(&socket, super::socket_perms(), &format!("vhost controller {name}"))
                .map_err(|e| sock_err(e.to_string()))?;
        let listener = Listener::from(listener);
        listener.set_nonblocking(true).map_err(|e| sock_err(e.to_string()))?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            device,
            reactors,
            coalescing: Arc::new(Mutex::new(Coalescing::default())),
            info: Arc::new(Mutex::new(SessionInfo::default())),
            backend_channel,
            connected: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            listener_fd: listener.as_raw_fd(),
            listener_id: OnceLock::new(),
            connection: Mutex::new(None),
        });
        let id = control_plane::add(Box::new(ListenerSub { listener, shared: shared.clone() }))
            .map_err(|e| sock_err(e.to_string()))?;
        let _ = shared.listener_id.set(id);
        tracing::info!(ctrlr = name, socket = %socket.display(), "vhost controller listening");
        Ok(Arc::new(Controller {
            name: name.to_string(),
            socket,
            cpumask,
            kind,
            coalescing_params: Mutex::new(CoalescingParams::default()),
            shared,
            owned_socket: Mutex::new(Some(owned)),
        }))
    }

    /// Whether a frontend is connected.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// What the connected session looks like.
    pub fn session_info(&self) -> Option<SessionInfo> {
        self.is_connected().then(|| self.shared.info.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Whether the frontend gave us a channel for config-change notifications.
    pub fn can_notify_config_change(&self) -> bool {
        self.shared.backend_channel.is_connected()
    }

    /// The controller's rate limit: on everything its guest sends, over all its queues and
    /// targets (`vhost_controller_set_qos`).
    pub fn qos(&self) -> &Arc<crate::bdev::qos::gate::LimitSlot> {
        self.shared.device.qos()
    }

    /// Current coalescing parameters.
    pub fn coalescing(&self) -> CoalescingParams {
        *self.coalescing_params.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets interrupt coalescing for this controller's queues (running ones at once).
    pub fn set_coalescing(&self, p: CoalescingParams) {
        *self.coalescing_params.lock().unwrap_or_else(|e| e.into_inner()) = p;
        let c = Coalescing {
            delay_ticks: ticks::from_duration(std::time::Duration::from_micros(p.delay_base_us as u64)),
            iops_threshold: p.iops_threshold as u64,
        };
        *self.shared.coalescing.lock().unwrap_or_else(|e| e.into_inner()) = c;
        if let Some(info) = self.session_info() {
            super::session::apply_coalescing(&info, c);
        }
    }

    /// Stops serving: the listener and the connection leave the event loop, the session (if
    /// any) is torn down, and the socket file is removed if it is still ours.
    pub fn shutdown(&self) {
        let shared = &self.shared;
        shared.stopped.store(true, Ordering::Release);
        let listener = shared.listener_id.get().and_then(|&id| control_plane::remove(id));
        // A connection the listener accepted just before is registered after this.
        control_plane::sync();
        let connection = shared.connection.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(conn) = connection {
            if let Some(&id) = conn.id.get() {
                drop(control_plane::remove(id));
            }
            // Waits for a message a worker may be handling, then ends the session.
            conn.handler.lock().unwrap_or_else(|e| e.into_inner()).teardown();
            shared.connected.store(false, Ordering::Release);
        }
        drop(listener);
        // The listener is closed: now remove the file (if still ours).
        self.owned_socket.lock().unwrap_or_else(|e| e.into_inner()).take();
        tracing::info!(ctrlr = %self.name, "vhost controller stopped");
    }
}

/// The controller's listening socket on the event loop.
struct ListenerSub {
    listener: Listener,
    shared: Arc<Shared>,
}

impl ListenerSub {
    fn accept(&mut self, ops: &mut EventOps) {
        let stream = match self.listener.accept() {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(ctrlr = %self.shared.name, error = %e, "accept failed");
                return;
            }
        };
        let shared = &self.shared;
        match peer_credentials(stream.as_raw_fd()) {
            Ok(c) => tracing::info!(ctrlr = %shared.name, pid = c.pid, uid = c.uid, gid = c.gid, "frontend connected"),
            Err(e) => tracing::warn!(ctrlr = %shared.name, error = %e, "frontend connected; SO_PEERCRED failed"),
        }
        let session = Arc::new(Mutex::new(Session::new(
            shared.device.clone(),
            shared.reactors.clone(),
            shared.coalescing.clone(),
            shared.info.clone(),
        )));
        let handler = match Handler::new(session, shared.backend_channel.clone()) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(ctrlr = %shared.name, error = %e, "cannot set up the connection");
                return;
            }
        };
        // One frontend at a time: the next waits in the backlog until this one leaves.
        let _ = ops.remove(Events::new(&self.listener, EventSet::IN));
        shared.connected.store(true, Ordering::Release);
        let owner: Arc<dyn ConnectionOwner> = shared.clone();
        match Connection::start(&shared.name, stream, handler, owner) {
            Ok(conn) => *shared.connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn),
            Err(e) => {
                tracing::warn!(ctrlr = %shared.name, error = %e, "cannot serve the connection");
                shared.connected.store(false, Ordering::Release);
                let _ = ops.add(Events::new(&self.listener, EventSet::IN));
            }
        }
    }
}

impl MutEventSubscriber for ListenerSub {
    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        self.accept(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            tracing::error!(ctrlr = %self.shared.name, error = %e, "cannot watch the controller socket");
        }
    }
}

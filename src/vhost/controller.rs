//! vhost controllers: one Unix socket each (`<dir>/<ctrlr>`), served by a thread that
//! accepts a frontend, runs its session until it disconnects, and listens again (a restarted
//! QEMU, or QEMU's `reconnect-ms`, finds the socket waiting).

use super::backend_channel::BackendChannel;
use super::device::VirtioDevice;
use super::ring::Coalescing;
use super::session::{Session, SessionInfo};
use crate::framework::socket::{self as framework_socket, peer_credentials, OwnedSocket};
use crate::framework::wait::wait_readable;
use crate::framework::{ticks, Cpumask};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use thiserror::Error;
use vhost::vhost_user::{BackendReqHandler, Error as VhostError, Listener};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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
    coalescing: Arc<Mutex<Coalescing>>,
    connected: Arc<AtomicBool>,
    session: Arc<Mutex<Option<Arc<Mutex<Session>>>>>,
    info: Arc<Mutex<SessionInfo>>,
    stop: Arc<EventFd>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The socket path's claim; released (and the file removed if still ours) on shutdown.
    owned_socket: Mutex<Option<OwnedSocket>>,
    backend_channel: Arc<BackendChannel>,
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
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|e| sock_err(e.to_string()))?);
        let ctrl = Arc::new(Controller {
            name: name.to_string(),
            socket: socket.clone(),
            cpumask,
            kind,
            coalescing_params: Mutex::new(CoalescingParams::default()),
            coalescing: Arc::new(Mutex::new(Coalescing::default())),
            connected: Arc::new(AtomicBool::new(false)),
            session: Arc::new(Mutex::new(None)),
            info: Arc::new(Mutex::new(SessionInfo::default())),
            stop: stop.clone(),
            thread: Mutex::new(None),
            owned_socket: Mutex::new(Some(owned)),
            backend_channel: backend_channel.clone(),
        });
        let worker = Worker {
            name: name.to_string(),
            listener,
            device,
            reactors,
            coalescing: ctrl.coalescing.clone(),
            connected: ctrl.connected.clone(),
            session: ctrl.session.clone(),
            info: ctrl.info.clone(),
            stop,
            backend_channel,
        };
        let thread = std::thread::Builder::new()
            .name(format!("vhost_{name}"))
            .spawn(move || worker.run())
            .map_err(|e| sock_err(e.to_string()))?;
        *ctrl.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        tracing::info!(ctrlr = name, socket = %socket.display(), "vhost controller listening");
        Ok(ctrl)
    }

    /// Whether a frontend is connected.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// What the connected session looks like.
    pub fn session_info(&self) -> Option<SessionInfo> {
        self.is_connected().then(|| self.info.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Whether the frontend gave us a channel for config-change notifications.
    pub fn can_notify_config_change(&self) -> bool {
        self.backend_channel.is_connected()
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
        *self.coalescing.lock().unwrap_or_else(|e| e.into_inner()) = c;
        if let Some(s) = self.session.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            s.lock().unwrap_or_else(|e| e.into_inner()).apply_coalescing(c);
        }
    }

    /// Stops serving: the session (if any) is torn down and the socket removed.
    pub fn shutdown(&self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        // The listener closed with the thread: now remove the file (if still ours).
        self.owned_socket.lock().unwrap_or_else(|e| e.into_inner()).take();
        tracing::info!(ctrlr = %self.name, "vhost controller stopped");
    }
}

/// The controller's thread.
struct Worker {
    name: String,
    listener: Listener,
    device: Arc<dyn VirtioDevice>,
    reactors: Vec<usize>,
    coalescing: Arc<Mutex<Coalescing>>,
    connected: Arc<AtomicBool>,
    session: Arc<Mutex<Option<Arc<Mutex<Session>>>>>,
    info: Arc<Mutex<SessionInfo>>,
    stop: Arc<EventFd>,
    backend_channel: Arc<BackendChannel>,
}

impl Worker {
    fn run(self) {
        while wait_readable(self.listener.as_raw_fd(), &self.stop) {
            let stream = match self.listener.accept() {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(ctrlr = %self.name, error = %e, "accept failed");
                    continue;
                }
            };
            let session = Arc::new(Mutex::new(Session::new(
                self.device.clone(),
                self.reactors.clone(),
                self.coalescing.clone(),
                self.info.clone(),
            )));
            *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(session.clone());
            self.connected.store(true, Ordering::Release);
            match peer_credentials(stream.as_raw_fd()) {
                Ok(c) => {
                    tracing::info!(ctrlr = %self.name, pid = c.pid, uid = c.uid, gid = c.gid, "frontend connected")
                }
                Err(e) => tracing::warn!(ctrlr = %self.name, error = %e, "frontend connected; SO_PEERCRED failed"),
            }
            let mut handler = BackendReqHandler::from_stream(stream, session.clone());
            while wait_readable(handler.as_raw_fd(), &self.stop) {
                match self.backend_channel.intercept(handler.as_raw_fd()) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(ctrlr = %self.name, error = %e, "reading SET_BACKEND_REQ_FD failed");
                        break;
                    }
                }
                match handler.handle_request() {
                    Ok(()) => {}
                    Err(
                        VhostError::Disconnected
                        | VhostError::PartialMessage
                        | VhostError::SocketBroken(_)
                        | VhostError::SocketError(_),
                    ) => break,
                    Err(e) => {
                        // A bad message gets its error answer (REPLY_ACK) and the session goes on.
                        tracing::warn!(ctrlr = %self.name, error = %e, "vhost-user request failed");
                    }
                }
            }
            *self.session.lock().unwrap_or_else(|e| e.into_inner()) = None;
            self.backend_channel.clear();
            session.lock().unwrap_or_else(|e| e.into_inner()).teardown();
            self.connected.store(false, Ordering::Release);
            tracing::info!(ctrlr = %self.name, "frontend disconnected; listening again");
        }
    }
}

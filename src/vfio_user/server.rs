//! An endpoint's listening socket on the control plane's event loop: a client is accepted,
//! served as a [`Connection`] until it disconnects, and the socket is listened on again (a
//! restarted VMM finds it waiting). One client at a time: while one is connected, others
//! wait in the listen backlog. No thread per endpoint.

use super::connection::{Connection, ConnectionHandle, ConnectionOwner};
use super::session::Session;
use super::Device;
use crate::framework::control_plane;
use crate::framework::socket::{self as framework_socket, peer_credentials, OwnedSocket, SocketPerms};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber, SubscriberId};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Why an endpoint could not listen.
#[derive(Debug, thiserror::Error)]
#[error("vfio-user socket {path}: {reason}")]
pub struct ServerError {
    /// The socket path.
    pub path: PathBuf,
    /// What failed.
    pub reason: String,
}

struct Shared {
    name: String,
    device: Arc<dyn Device>,
    connected: AtomicBool,
    stopped: AtomicBool,
    listener_fd: RawFd,
    listener_id: OnceLock<SubscriberId>,
    connection: Mutex<Option<ConnectionHandle>>,
}

impl ConnectionOwner for Shared {
    fn connection_closed(&self) {
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.connected.store(false, Ordering::Release);
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        tracing::info!(endpoint = %self.name, "vfio-user: listening again");
        let (Some(&id), fd) = (self.listener_id.get(), self.listener_fd) else { return };
        control_plane::on_loop(move |ops| {
            if let Ok(mut listener) = ops.event_ops(id) {
                let _ = listener.add(Events::new_raw(fd, EventSet::IN));
            }
        });
    }
}

/// A listening endpoint.
pub struct Server {
    path: PathBuf,
    shared: Arc<Shared>,
    owned_socket: Mutex<Option<OwnedSocket>>,
}

impl Server {
    /// Listens on `path` (created with `perms`) for clients of `device`; `name` is for logs.
    pub fn start(name: &str, path: &Path, perms: SocketPerms, device: Arc<dyn Device>) -> Result<Server, ServerError> {
        let err = |reason: String| ServerError { path: path.to_path_buf(), reason };
        let (listener, owned) = framework_socket::bind(path, perms, &format!("vfio-user endpoint {name}"))
            .map_err(|e| err(e.to_string()))?;
        listener.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            device,
            connected: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            listener_fd: listener.as_raw_fd(),
            listener_id: OnceLock::new(),
            connection: Mutex::new(None),
        });
        let id = control_plane::add(Box::new(ListenerSub { listener, shared: shared.clone() }))
            .map_err(|e| err(e.to_string()))?;
        let _ = shared.listener_id.set(id);
        tracing::info!(endpoint = name, socket = %path.display(), "vfio-user endpoint listening");
        Ok(Server { path: path.to_path_buf(), shared, owned_socket: Mutex::new(Some(owned)) })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a client is connected.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Stops serving: the listener and the connection leave the loop, the session is torn
    /// down (the device hears `disconnected`), and the socket file goes if still ours.
    pub fn shutdown(&self) {
        let shared = &self.shared;
        if shared.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let listener = shared.listener_id.get().and_then(|&id| control_plane::remove(id));
        control_plane::sync();
        let connection = shared.connection.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(conn) = connection {
            if let Some(&id) = conn.id.get() {
                drop(control_plane::remove(id));
            }
            conn.session.lock().unwrap_or_else(|e| e.into_inner()).teardown();
            shared.connected.store(false, Ordering::Release);
        }
        drop(listener);
        self.owned_socket.lock().unwrap_or_else(|e| e.into_inner()).take();
        tracing::info!(endpoint = %shared.name, "vfio-user endpoint stopped");
    }
}

struct ListenerSub {
    listener: UnixListener,
    shared: Arc<Shared>,
}

impl ListenerSub {
    fn accept(&mut self, ops: &mut EventOps) {
        let stream = match self.listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::warn!(endpoint = %self.shared.name, error = %e, "vfio-user: accept failed");
                return;
            }
        };
        let shared = &self.shared;
        match peer_credentials(stream.as_raw_fd()) {
            Ok(c) => tracing::info!(endpoint = %shared.name, pid = c.pid, uid = c.uid, "vfio-user client connected"),
            Err(e) => {
                tracing::warn!(endpoint = %shared.name, error = %e, "vfio-user client connected; SO_PEERCRED failed")
            }
        }
        let _ = ops.remove(Events::new(&self.listener, EventSet::IN));
        shared.connected.store(true, Ordering::Release);
        let owner: Arc<dyn ConnectionOwner> = shared.clone();
        match Connection::start(&shared.name, stream, Session::new(shared.device.clone()), owner) {
            Ok(conn) => *shared.connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn),
            Err(e) => {
                tracing::warn!(endpoint = %shared.name, error = %e, "vfio-user: cannot serve the connection");
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
            tracing::error!(endpoint = %self.shared.name, error = %e, "vfio-user: cannot watch the socket");
        }
    }
}

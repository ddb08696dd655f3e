//! `ferryd`'s life cycle: start reactors, bind the RPC socket, replay the configuration, serve
//! RPC and tell a service manager it is ready (sd_notify READY=1), wait for a signal, shut
//! down cleanly (STOPPING=1, stop RPC, unregister bdevs so in-flight I/O drains, stop
//! reactors, remove sockets).

use crate::app::sd_notify::{self, Notifier};
use crate::app::{self, config};
use crate::bdev::registry;
use crate::framework::socket::SocketPerms;
use crate::framework::{self, Cpumask};
use crate::metrics::{Endpoint, MetricsServer};
use crate::rpc::RpcServer;
use serde_json::Value;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The default RPC socket, as SPDK's.
pub const DEFAULT_RPC_SOCKET: &str = "/var/tmp/ferry.sock";

/// The configuration `ferryd --default-config` serves: two 64 MiB RAM disks, Malloc0 as the
/// vhost-user-blk controller `vhost.0` and Malloc1 as target 0 of the vhost-user-scsi
/// controller `vhost.1` (sockets `<-S dir>/vhost.0` and `vhost.1`).
pub const DEFAULT_CONFIG: &str = r#"{
  "subsystems": [
    { "subsystem": "bdev", "config": [
      { "method": "bdev_malloc_create",
        "params": { "name": "Malloc0", "num_blocks": 131072, "block_size": 512 } },
      { "method": "bdev_malloc_create",
        "params": { "name": "Malloc1", "num_blocks": 131072, "block_size": 512 } },
      { "method": "bdev_wait_for_examine" }
    ] },
    { "subsystem": "vhost_scsi", "config": [
      { "method": "vhost_create_scsi_controller", "params": { "ctrlr": "vhost.1" } },
      { "method": "vhost_scsi_controller_add_target",
        "params": { "ctrlr": "vhost.1", "scsi_target_num": 0, "bdev_name": "Malloc1" } }
    ] },
    { "subsystem": "vhost_blk", "config": [
      { "method": "vhost_create_blk_controller", "params": { "ctrlr": "vhost.0", "dev_name": "Malloc0" } }
    ] }
  ]
}"#;

/// What `ferryd` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cores to run reactors on.
    pub cpumask: Cpumask,
    /// Whether to pin reactors to their cores.
    pub pin: bool,
    /// The RPC socket.
    pub rpc_socket: PathBuf,
    /// A configuration to replay.
    pub config: Option<Value>,
    /// Wait for `framework_start_init` before runtime methods and the configuration.
    pub wait_for_rpc: bool,
    /// Directory of vhost controller sockets.
    pub vhost_sock_dir: PathBuf,
    /// Owner and mode of the RPC socket.
    pub rpc_socket_perms: SocketPerms,
    /// Owner and mode of vhost controller sockets.
    pub vhost_socket_perms: SocketPerms,
    /// Where to claim the reactors' cores (`None`: no claims, as with `--no-pin` or
    /// `--disable-cpumask-locks`).
    pub cpu_lock_dir: Option<PathBuf>,
    /// Where to serve metrics (`None`: off), and the mode and owner of a Unix socket there.
    pub metrics: Option<(Endpoint, SocketPerms)>,
}

/// Why the daemon could not start or run.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// Reactors could not start.
    #[error(transparent)]
    Framework(#[from] framework::FrameworkError),
    /// The RPC server could not start.
    #[error(transparent)]
    Rpc(#[from] crate::rpc::server::ServerError),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The configuration could not be read or replayed.
    #[error("configuration: {0}")]
    Config(String),
    /// A core is claimed by another process.
    #[error("{0}")]
    CpuLock(String),
    /// Signal handling could not be set up.
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
}

/// Reads a configuration file.
pub fn read_config(path: &Path) -> Result<Value, DaemonError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| DaemonError::Config(format!("reading {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| DaemonError::Config(format!("{} is not valid JSON: {e}", path.display())))
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(opts: Options) -> Result<(), DaemonError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    // Register before anything starts so an early signal is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(DaemonError::Signals)?;
    // A service manager (systemd's Type=notify) hears READY=1 once the RPC socket serves.
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!("not notifying the service manager: {e}");
        None
    });
    raise_fd_limit();
    crate::vhost::set_socket_dir(opts.vhost_sock_dir.clone());
    crate::vhost::set_socket_perms(opts.vhost_socket_perms);
    // Held until we return: the cores stay ours for the daemon's whole life.
    let _cpu_locks = match &opts.cpu_lock_dir {
        Some(dir) => Some(framework::cpu_lock::claim(&opts.cpumask, dir).map_err(DaemonError::CpuLock)?),
        None => None,
    };
    framework::reactor::start(&opts.cpumask, opts.pin)?;
    tracing::info!(cpumask = %opts.cpumask, "reactors started");
    // Lvstores are found on bdevs as the configuration creates them.
    crate::bdev::modules::lvol::init();
    // RAID arrays with a superblock assemble themselves from their members.
    crate::bdev::modules::raid::init();
    // The socket is claimed first (a clash is reported before anything is built), but clients
    // are served only once the configuration is replayed: whoever sees the socket answer sees
    // the whole configuration.
    let mut server = match RpcServer::bind(&opts.rpc_socket, opts.rpc_socket_perms) {
        Ok(s) => s,
        Err(e) => {
            framework::reactor::shutdown();
            return Err(e.into());
        }
    };
    let status = if opts.wait_for_rpc { "; waiting for framework_start_init" } else { "" };
    let started = if opts.wait_for_rpc {
        if let Some(doc) = opts.config {
            app::rpc::defer_config(doc);
        }
        tracing::info!("waiting for framework_start_init");
        Ok(())
    } else {
        app::mark_initialised();
        opts.config.map_or(Ok(()), |doc| config::load_at_start(&doc).map_err(|e| DaemonError::Config(e.message)))
    };
    let metrics = match started.and_then(|()| start_metrics(opts.metrics.as_ref())) {
        Ok(m) => m,
        Err(e) => {
            shutdown(&mut server, None);
            return Err(e);
        }
    };
    if let Err(e) = server.serve() {
        shutdown(&mut server, metrics);
        return Err(e.into());
    }
    // Only now: whoever is told the daemon is ready gets answers, and sees the whole
    // configuration.
    let ready = format!("READY=1\nSTATUS=serving RPC on {}{status}", opts.rpc_socket.display());
    sd_notify::notify(notifier.as_ref(), &ready);
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    sd_notify::notify(notifier.as_ref(), "STOPPING=1\nSTATUS=shutting down");
    shutdown(&mut server, metrics);
    Ok(())
}

/// The metrics endpoint, when asked for (before RPC is served: a scraper that gets an answer
/// sees the whole configuration too).
fn start_metrics(metrics: Option<&(Endpoint, SocketPerms)>) -> Result<Option<MetricsServer>, DaemonError> {
    metrics.map(|(endpoint, perms)| MetricsServer::start(endpoint, *perms)).transpose().map_err(DaemonError::from)
}

fn shutdown(server: &mut RpcServer, metrics: Option<MetricsServer>) {
    drop(metrics);
    server.stop();
    crate::rpc::dispatch::refuse_new_calls();
    stop_everything();
}

/// Raises the soft limit on open files to the hard one: each connected VM holds a few
/// (socket, memory files, eventfds), and a thousand VMs would pass the usual 1024.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write one rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Controllers, bdevs, then the reactors under them.
fn stop_everything() {
    crate::vhost::controllers::shutdown_all();
    // VMs' NVMe functions (vfio-user) drain and let go of guest memory before bdevs go.
    crate::nvmf::vfio_user::shutdown_all();
    // Lvstores close cleanly (a final checkpoint) before their base bdevs go.
    crate::bdev::modules::lvol::shutdown();
    // Arrays close cleanly (superblock marked clean) before their members go.
    crate::bdev::modules::raid::shutdown();
    registry::unregister_all();
    framework::reactor::shutdown();
    tracing::info!("ferryd stopped");
}

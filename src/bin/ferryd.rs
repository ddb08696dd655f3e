//! `ferryd`: the Ferry storage daemon.

use clap::Parser;
use ferry::daemon::{self, Options, DEFAULT_CONFIG, DEFAULT_RPC_SOCKET};
use ferry::framework::socket::SocketPerms;
use ferry::framework::{self, Cpumask};
use ferry::metrics::Endpoint;
use std::path::PathBuf;
use std::process::ExitCode;

/// Ferry storage daemon: vhost-user, iSCSI and NVMe-oF targets over one block layer.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Cores to run reactors on, as a hex mask (0x3) or a list ([0,1]).
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// JSON-RPC socket path (ferryctl reads FERRY_RPC_SOCKET too).
    #[arg(short = 'r', long = "rpc-socket", env = "FERRY_RPC_SOCKET", default_value = DEFAULT_RPC_SOCKET)]
    rpc_socket: PathBuf,
    /// Configuration to replay at start (as written by save_config).
    #[arg(short = 'c', long = "config", alias = "json")]
    config: Option<PathBuf>,
    /// Serve the built-in default configuration (64 MiB RAM disks: Malloc0 as vhost-user-blk
    /// vhost.0, Malloc1 as target 0 of vhost-user-scsi vhost.1).
    #[arg(long, conflicts_with = "config")]
    default_config: bool,
    /// Wait for framework_start_init before runtime RPCs and the configuration.
    #[arg(long)]
    wait_for_rpc: bool,
    /// Directory of vhost controller sockets.
    #[arg(short = 'S', long = "vhost-sock-dir", env = "FERRY_VHOST_SOCK_DIR", default_value = "/var/tmp")]
    vhost_sock_dir: PathBuf,
    /// Do not pin reactors to their cores (unpinned reactors claim no cores either).
    #[arg(long)]
    no_pin: bool,
    /// Do not claim the cores (a lock file per core, as SPDK's): let another Ferry process
    /// pinned to the same cores start.
    #[arg(long)]
    disable_cpumask_locks: bool,
    /// Directory of the core lock files `ferry_cpu_lock_NNN`.
    #[arg(long, env = "FERRY_CPU_LOCK_DIR", default_value = framework::cpu_lock::DEFAULT_DIR)]
    cpu_lock_dir: PathBuf,
    /// Mode of the RPC socket (octal), whatever the umask.
    #[arg(long, default_value = "0600", value_parser = SocketPerms::parse_mode)]
    rpc_socket_mode: u32,
    /// Owner of the RPC socket: USER[:GROUP] or :GROUP (names or ids).
    #[arg(long, value_parser = SocketPerms::parse_owner)]
    rpc_socket_owner: Option<(Option<u32>, Option<u32>)>,
    /// Mode of vhost controller sockets (octal), whatever the umask.
    #[arg(long, default_value = "0600", value_parser = SocketPerms::parse_mode)]
    vhost_socket_mode: u32,
    /// Owner of vhost controller sockets: USER[:GROUP] or :GROUP, e.g. libvirt-qemu:kvm.
    #[arg(long, value_parser = SocketPerms::parse_owner)]
    vhost_socket_owner: Option<(Option<u32>, Option<u32>)>,
    /// Serve Prometheus metrics (HTTP GET /metrics) on a loopback HOST:PORT (127.0.0.1:9100) or
    /// a Unix socket (unix:PATH). Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<Endpoint>,
    /// Mode of a Unix metrics socket (octal), whatever the umask.
    #[arg(long, default_value = "0600", value_parser = SocketPerms::parse_mode)]
    metrics_socket_mode: u32,
    /// Owner of a Unix metrics socket: USER[:GROUP] or :GROUP (names or ids).
    #[arg(long, value_parser = SocketPerms::parse_owner)]
    metrics_socket_owner: Option<(Option<u32>, Option<u32>)>,
    /// Log level: ERROR, WARNING, NOTICE, INFO, DEBUG.
    #[arg(long, default_value = "NOTICE")]
    log_level: String,
    /// Turn on debug output for a component (repeatable): bdev, rpc, reactor, ...
    #[arg(short = 'L', long = "logflag")]
    logflag: Vec<String>,
}

fn perms(mode: u32, owner: Option<(Option<u32>, Option<u32>)>) -> SocketPerms {
    let (uid, gid) = owner.unwrap_or_default();
    SocketPerms { mode, uid, gid }
}

fn main() -> ExitCode {
    let args = Args::parse();
    ferry::app::log::init(&args.log_level);
    for flag in &args.logflag {
        if !ferry::app::log::set_flag(flag, true) {
            eprintln!("ferryd: unknown log flag {flag:?}");
            return ExitCode::from(2);
        }
    }
    let cpumask = match Cpumask::parse(&args.cpumask) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("ferryd: {e}");
            return ExitCode::from(2);
        }
    };
    let config = if args.default_config {
        Some(serde_json::from_str(DEFAULT_CONFIG).expect("the built-in configuration is valid JSON"))
    } else {
        match args.config.as_deref().map(daemon::read_config).transpose() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ferryd: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let opts = Options {
        cpumask,
        pin: !args.no_pin,
        rpc_socket: args.rpc_socket,
        config,
        wait_for_rpc: args.wait_for_rpc,
        vhost_sock_dir: args.vhost_sock_dir,
        rpc_socket_perms: perms(args.rpc_socket_mode, args.rpc_socket_owner),
        vhost_socket_perms: perms(args.vhost_socket_mode, args.vhost_socket_owner),
        // Unpinned reactors do not own their cores, so they claim none.
        cpu_lock_dir: (!args.no_pin && !args.disable_cpumask_locks).then_some(args.cpu_lock_dir),
        metrics: args.metrics_addr.map(|e| (e, perms(args.metrics_socket_mode, args.metrics_socket_owner))),
    };
    match daemon::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferryd: {e}");
            ExitCode::FAILURE
        }
    }
}

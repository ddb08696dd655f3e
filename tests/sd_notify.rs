//! Readiness for a service manager (systemd's `Type=notify`): ferryd sends READY=1 to
//! `$NOTIFY_SOCKET` (a path or an abstract `@name`) only once its RPC socket serves the whole
//! configuration, never when it fails to start, and STOPPING=1 when it shuts down. The
//! receiving side here is what systemd does: a datagram socket named in the child's
//! environment.

mod common;

use common::notify::NotifySocket as Manager;
use common::{rpc_at, scratch_dir, write_config};
use serde_json::{json, Value};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A ferryd child, killed if the test ends (or fails) while it runs.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts ferryd (unpinned, logging to `dir/ferryd.log`) with `$NOTIFY_SOCKET` set to the
/// manager's socket.
fn start(dir: &Path, manager: &Manager, args: &[&str]) -> (Daemon, PathBuf) {
    let sock = dir.join("ferry.sock");
    let log = std::fs::File::create(dir.join("ferryd.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ferryd"))
        .args(["--no-pin", "--log-level", "INFO", "-r", sock.to_str().unwrap(), "-S", dir.to_str().unwrap()])
        .args(args)
        .env("NOTIFY_SOCKET", &manager.env)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn ferryd");
    (Daemon(child), sock)
}

/// The daemon's exit status so far and its log, for a failure message.
fn ferryd_state(daemon: &mut Child, log: &Path) -> String {
    format!("ferryd ({:?}); log:\n{}", daemon.try_wait().unwrap(), std::fs::read_to_string(log).unwrap_or_default())
}

fn lines(msg: &str) -> Vec<&str> {
    msg.lines().collect()
}

fn sigterm(Daemon(child): &Daemon) {
    // SAFETY: kill(2) on our own child; no memory is involved.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}

/// The configuration replay is held at a peer the test controls: while it is held (ferryd
/// past binding its RPC socket, inside the replay), no READY=1 may have been sent. When the
/// replay then fails, ferryd exits without ever sending it.
#[test]
fn no_ready_while_the_configuration_replays_nor_from_a_daemon_that_fails_to_start() {
    let dir = scratch_dir("sd-notify-held");
    let manager = Manager::at_path(&dir.join("notify"));
    let gate = UnixListener::bind(dir.join("gate")).unwrap();
    let config = write_config(
        &dir,
        "held.json",
        json!([
            {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 2048, "block_size": 512}},
            {"method": "bdev_virtio_attach_controller",
             "params": {"name": "V", "trtype": "user", "traddr": dir.join("gate"), "dev_type": "blk",
                        "timeout_ms": 60000}}
        ]),
    );
    let (mut daemon, sock) = start(&dir, &manager, &["-c", config.to_str().unwrap()]);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(gate.accept().map(|(conn, _)| conn)));
    let held = rx.recv_timeout(Duration::from_secs(30)).expect("ferryd's replay reached the gate").unwrap();
    // The replay runs after the socket is bound: here ferryd is past binding it, and waits on us.
    assert!(sock.exists(), "the RPC socket is bound before the configuration replays");
    assert_eq!(manager.sent(), None, "READY=1 was sent while the configuration was still replaying");
    // The peer goes away: the attach fails, the replay with it, and ferryd gives up.
    drop(held);
    let status = daemon.0.wait().unwrap();
    assert!(!status.success(), "ferryd should fail when its configuration does");
    // Everything it sent is queued by now.
    assert_eq!(manager.sent(), None, "a daemon that failed to start must never report READY=1");
}

/// READY=1 arrives once the configuration is in place and the RPC socket answers; STOPPING=1
/// when SIGTERM stops it; the daemon then exits cleanly.
#[test]
fn ready_once_rpc_serves_the_whole_configuration_and_stopping_on_sigterm() {
    let dir = scratch_dir("sd-notify-path");
    let manager = Manager::at_path(&dir.join("notify"));
    let config = write_config(
        &dir,
        "ok.json",
        json!([{"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 2048, "block_size": 512}}]),
    );
    let (mut daemon, sock) = start(&dir, &manager, &["-c", config.to_str().unwrap()]);
    let log = dir.join("ferryd.log");
    let ready = manager.next(|| ferryd_state(&mut daemon.0, &log));
    assert_eq!(lines(&ready)[0], "READY=1", "{ready:?}");
    assert!(ready.contains(&format!("STATUS=serving RPC on {}", sock.display())), "{ready:?}");
    // Told it is ready, a client finds the configuration: no polling, no retries.
    let bdevs = rpc_at(&sock, "bdev_get_bdevs", Value::Null).unwrap();
    assert_eq!(bdevs[0]["name"], "M0", "{bdevs}");
    assert_eq!(manager.sent(), None, "READY=1 is sent once");
    sigterm(&daemon);
    let stopping = manager.next(|| ferryd_state(&mut daemon.0, &log));
    assert_eq!(lines(&stopping)[0], "STOPPING=1", "{stopping:?}");
    assert!(daemon.0.wait().unwrap().success(), "log:\n{}", std::fs::read_to_string(&log).unwrap());
}

/// An abstract `$NOTIFY_SOCKET` (`@name`) is reached too; with `--wait-for-rpc` the daemon is
/// ready when RPC serves (to take `framework_start_init`), and says what it waits for.
#[test]
fn an_abstract_notify_socket_and_wait_for_rpc() {
    let dir = scratch_dir("sd-notify-abstract");
    let manager = Manager::abstract_named(&format!("ferry-test-notify-{}", std::process::id()));
    let (mut daemon, sock) = start(&dir, &manager, &["--wait-for-rpc"]);
    let log = dir.join("ferryd.log");
    let ready = manager.next(|| ferryd_state(&mut daemon.0, &log));
    assert_eq!(lines(&ready)[0], "READY=1", "{ready:?}");
    assert!(ready.contains("waiting for framework_start_init"), "{ready:?}");
    rpc_at(&sock, "framework_start_init", Value::Null).unwrap();
    rpc_at(&sock, "bdev_malloc_create", json!({"name": "M1", "num_blocks": 2048, "block_size": 512})).unwrap();
    sigterm(&daemon);
    assert_eq!(lines(&manager.next(|| ferryd_state(&mut daemon.0, &log)))[0], "STOPPING=1");
    assert!(daemon.0.wait().unwrap().success());
}

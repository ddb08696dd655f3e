//! The daemon's sockets and cores as shared resources: modes and owners whatever the umask,
//! who may connect, never clobbering a live socket (another daemon's, the RPC socket; and
//! ferry-bdevperf creates none), replacing a dead one, and one pinned daemon per core.

mod common;

use common::{scratch_dir, Ferryd};
use ferry_vhost_initiator::{Client, Options};
use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn inode(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).unwrap().ino()
}

/// Connects to `sock` from a forked child running as nobody:nogroup; 0 or the errno.
fn connect_as_nobody(sock: &Path) -> i32 {
    let path = std::ffi::CString::new(sock.as_os_str().as_encoded_bytes()).unwrap();
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path.as_bytes()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: the child only makes async-signal-safe system calls (setgroups, setgid, setuid,
    // socket, connect, _exit) on memory prepared before the fork.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(NOGROUP) != 0 || libc::setuid(NOBODY) != 0 {
                libc::_exit(100);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            let rc = libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len);
            libc::_exit(if rc == 0 { 0 } else { *libc::__errno_location() });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(libc::WIFEXITED(status));
        let code = libc::WEXITSTATUS(status);
        assert_ne!(code, 100, "could not become nobody");
        code
    }
}

#[test]
fn sockets_are_0600_whatever_the_umask_and_nobody_cannot_connect() {
    let dir = scratch_dir("sock-umask");
    let d = Ferryd::start_with(dir.clone(), &["--no-pin", "-S", dir.to_str().unwrap()], |cmd| {
        // SAFETY: umask is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
    });
    assert_eq!(mode(&d.sock), 0o600, "the RPC socket");
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 2048, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "v0", "dev_name": "M"}));
    assert_eq!(mode(&dir.join("v0")), 0o600, "a vhost socket");
    assert_eq!(std::fs::metadata(&d.sock).unwrap().uid(), 0);
    // The scratch directory is world-readable: only the socket's mode keeps nobody out.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(connect_as_nobody(&d.sock), libc::EACCES);
    assert_eq!(connect_as_nobody(&dir.join("v0")), libc::EACCES);
    // The peer's credentials are logged.
    let log = d.log_text();
    assert!(log.contains("RPC client connected") && log.contains("uid=0"), "{log}");
}

#[test]
fn options_set_the_mode_and_owner_of_each_kind_of_socket() {
    let dir = scratch_dir("sock-owner");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let args = [
        "--no-pin",
        "-S",
        dir.to_str().unwrap(),
        "--rpc-socket-mode",
        "0660",
        "--rpc-socket-owner",
        "nobody:nogroup",
        "--vhost-socket-mode",
        "0640",
        "--vhost-socket-owner",
        ":nogroup",
    ];
    let d = Ferryd::start_with(dir.clone(), &args, |_| {});
    let rpc = std::fs::metadata(&d.sock).unwrap();
    assert_eq!((mode(&d.sock), rpc.uid(), rpc.gid()), (0o660, NOBODY, NOGROUP));
    // Now nobody may connect (the owner gets write permission), and is logged as such.
    assert_eq!(connect_as_nobody(&d.sock), 0);
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 2048, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "v0", "dev_name": "M"}));
    let v = std::fs::metadata(dir.join("v0")).unwrap();
    assert_eq!((mode(&dir.join("v0")), v.uid(), v.gid()), (0o640, 0, NOGROUP));
    // Group members only read: connecting needs write permission.
    assert_eq!(connect_as_nobody(&dir.join("v0")), libc::EACCES);
    let log = d.log_text();
    assert!(log.contains(&format!("uid={NOBODY}")), "nobody's connection is logged: {log}");
    // Bad values are refused at start.
    for bad in [&["--rpc-socket-mode", "999"][..], &["--vhost-socket-owner", "no-such-user-here"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_ferryd")).args(bad).output().unwrap();
        assert!(!out.status.success(), "{bad:?} accepted");
    }
}

/// Runs `cmd`, which must fail on its own: a process still running after 20 s (a second
/// daemon that wrongly started) is killed and the test fails. Returns its stderr.
fn must_fail(cmd: &mut Command) -> String {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{cmd:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A ferryd (in `dir`, RPC socket `dir/ferry.sock`) serving controller `vhost.0`.
fn daemon_with_controller(dir: &common::Scratch) -> Ferryd {
    let d = Ferryd::start_in(dir.clone(), &["-S", dir.to_str().unwrap()]);
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 2048, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vhost.0", "dev_name": "M"}));
    d
}

/// A saved configuration that creates controller `vhost.0`.
fn config_with_controller(dir: &Path) -> std::path::PathBuf {
    let doc = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "M2", "num_blocks": 2048, "block_size": 512}}]},
        {"subsystem": "vhost_blk", "config": [
            {"method": "vhost_create_blk_controller", "params": {"ctrlr": "vhost.0", "dev_name": "M2"}}]}
    ]});
    let path = dir.join("other.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

/// The controller at `sock` still serves a frontend.
fn serves(sock: &Path) {
    let c = Client::connect(sock, &Options { num_queues: 1, queue_size: 64, mem_size: 4 << 20, hugetlbfs: None })
        .expect("the live daemon's controller still serves");
    assert_eq!(c.config().capacity, 2048);
}

#[test]
fn a_second_daemon_or_bdevperf_never_takes_a_live_daemons_vhost_socket() {
    let dir = scratch_dir("sock-clobber");
    let d = daemon_with_controller(&dir);
    let sock = dir.join("vhost.0");
    let ino = inode(&sock);
    let config = config_with_controller(&dir);
    let other_rpc = dir.join("other.sock");
    let err = must_fail(
        Command::new(env!("CARGO_BIN_EXE_ferryd"))
            .args(["--no-pin", "-r", other_rpc.to_str().unwrap(), "-S", dir.to_str().unwrap()])
            .args(["-c", config.to_str().unwrap()]),
    );
    assert!(err.contains("vhost.0") && err.contains("belongs to another process"), "{err}");
    // ferry-bdevperf takes only the bdevs from a configuration: it runs, and skips the controller.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-bdevperf"))
        .args(["-c", config.to_str().unwrap(), "--no-pin", "-t", "0.2"])
        .current_dir(&*dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("skipping vhost_create_blk_controller"), "{out:?}");
    // Neither replaced nor removed the socket, on start or on exit.
    assert_eq!(inode(&sock), ino);
    serves(&sock);
    // Nor the RPC socket: a second daemon on it is refused.
    let err = must_fail(Command::new(env!("CARGO_BIN_EXE_ferryd")).args([
        "--no-pin",
        "-r",
        d.sock.to_str().unwrap(),
        "-S",
        dir.join("elsewhere").to_str().unwrap(),
    ]));
    assert!(err.contains("belongs to another process"), "{err}");
    assert!(d.rpc("spdk_get_version", Value::Null).is_ok());
    assert!(d.stop().success());
    assert!(!sock.exists(), "the owner removes its socket on exit");
    assert!(!dir.join("vhost.0.lock").exists() && !dir.join("ferry.sock.lock").exists(), "and its lock files");
}

#[test]
fn a_controller_named_like_the_rpc_socket_or_a_live_socket_is_refused() {
    let dir = scratch_dir("sock-names");
    let d = Ferryd::start_in(dir.clone(), &["-S", dir.to_str().unwrap()]);
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 2048, "block_size": 512}));
    let ino = inode(&d.sock);
    let e = d.err("vhost_create_blk_controller", json!({"ctrlr": "ferry.sock", "dev_name": "M"}));
    assert!(e.message.contains("RPC socket"), "{e:?}");
    assert_eq!(inode(&d.sock), ino);
    assert!(d.rpc("spdk_get_version", Value::Null).is_ok(), "the RPC socket still answers");
    // A socket some other program listens on (no Ferry lock) is probed and left alone.
    let theirs = UnixListener::bind(dir.join("taken")).unwrap();
    let ino = inode(&dir.join("taken"));
    let e = d.err("vhost_create_blk_controller", json!({"ctrlr": "taken", "dev_name": "M"}));
    assert!(e.message.contains("in use by a live process"), "{e:?}");
    assert_eq!(inode(&dir.join("taken")), ino);
    drop(theirs);
    // A file that is not a socket is never replaced.
    std::fs::write(dir.join("data"), b"keep me").unwrap();
    let e = d.err("vhost_create_blk_controller", json!({"ctrlr": "data", "dev_name": "M"}));
    assert!(e.message.contains("not a socket"), "{e:?}");
    assert_eq!(std::fs::read(dir.join("data")).unwrap(), b"keep me");
    // The bdev was not left claimed by the refused controllers.
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vhost.0", "dev_name": "M"}));
    serves(&dir.join("vhost.0"));
}

/// Leaves a socket file at `path` that nobody listens on, made by a process that then exits.
/// (Bound in this process, the listener could live on for a moment in a child another test
/// thread is forking, and connections to it would be reset when that child execs.)
fn stale_socket(path: &Path) {
    let status = Command::new("python3")
        .args(["-c", "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])"])
        .arg(path)
        .status()
        .expect("python3");
    assert!(status.success() && path.exists());
}

#[test]
fn a_dead_processes_socket_is_replaced() {
    let dir = scratch_dir("sock-stale");
    // A socket file nobody listens on any more (its process died without removing it).
    stale_socket(&dir.join("vhost.0"));
    let stale = inode(&dir.join("vhost.0"));
    stale_socket(&dir.join("ferry.sock"));
    let d = daemon_with_controller(&dir);
    assert_ne!(inode(&dir.join("vhost.0")), stale);
    serves(&dir.join("vhost.0"));
    assert!(d.rpc("spdk_get_version", Value::Null).is_ok(), "the RPC socket replaced a stale one too");
}

#[test]
fn only_one_pinned_daemon_per_core_unless_told() {
    let dir = scratch_dir("cpu-locks");
    let locks = dir.join("locks");
    std::fs::create_dir(&locks).unwrap();
    let env = |cmd: &mut Command| {
        cmd.env("FERRY_CPU_LOCK_DIR", &locks);
    };
    let d1 = Ferryd::start_with(scratch_dir("cpu-lock-1"), &["-m", "0x1"], env);
    assert!(locks.join("ferry_cpu_lock_000").exists());
    let sub = scratch_dir("cpu-lock-n");
    let err = must_fail(
        Command::new(env!("CARGO_BIN_EXE_ferryd"))
            .args(["-r", sub.join("s").to_str().unwrap(), "-S", sub.to_str().unwrap(), "-m", "0x3"])
            .env("FERRY_CPU_LOCK_DIR", &locks),
    );
    assert!(err.contains("core 0 is claimed") && err.contains(&format!("pid {}", d1.pid())), "{err}");
    // Forced, or unpinned: it starts.
    let d2 = Ferryd::start_with(scratch_dir("cpu-lock-2"), &["-m", "0x1", "--disable-cpumask-locks"], env);
    let d3 = Ferryd::start_with(scratch_dir("cpu-lock-3"), &["-m", "0x1", "--no-pin"], env);
    // Another core is free; after the first daemon exits, core 0 is too.
    let d4 = Ferryd::start_with(scratch_dir("cpu-lock-4"), &["-m", "0x2"], env);
    assert!(d1.stop().success());
    let d5 = Ferryd::start_with(scratch_dir("cpu-lock-5"), &["-m", "0x1"], env);
    for d in [d2, d3, d4, d5] {
        assert!(d.stop().success());
    }
}

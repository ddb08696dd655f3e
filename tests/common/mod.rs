//! Test harness: start a real `ferryd` on a private socket and talk JSON-RPC to it.

#![allow(dead_code)]

pub mod ceph;
pub mod notify;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A JSON-RPC error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcErr {
    pub code: i64,
    pub message: String,
}

/// A TCP port on 127.0.0.1 that nothing listens on now and that the kernel will not hand out
/// by itself while the test uses it.
///
/// Ports are taken from just below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`). A port from `bind(0)` would be ephemeral: between its
/// release and the target binding it, a parallel test's `bind(0)` or an outgoing connection
/// could be given the same number, and a connect to an ephemeral port nothing listens on can
/// even connect to itself (TCP simultaneous open). Both made "nothing listens here yet"
/// checks fail now and then. Each call starts from a different port (process id and a
/// counter) and checks that the port can be bound.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let span = 8192u32.min(ephemeral_low.saturating_sub(1024));
    let first = ephemeral_low - span;
    let start = std::process::id().wrapping_mul(613);
    for _ in 0..span {
        let port = first + (start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span);
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port in {first}..{ephemeral_low}");
}

/// A fresh, empty directory for one test: `/tmp/ferry-test-TAG-PID-N` (under `$TMPDIR`).
///
/// Removed with everything in it when the last clone of the handle is dropped. When a test
/// fails (the drop happens while panicking) and `FERRY_KEEP_SCRATCH` is set, it is kept and
/// its path printed, for the logs and sockets inside.
pub fn scratch_dir(tag: &str) -> Scratch {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ferry-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    Scratch(Arc::new(ScratchDir(dir)))
}

/// A test's scratch directory (see [`scratch_dir`]); derefs to its path. Clones share it.
#[derive(Clone, Debug)]
pub struct Scratch(Arc<ScratchDir>);

#[derive(Debug)]
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("FERRY_KEEP_SCRATCH").is_some() {
            eprintln!("FERRY_KEEP_SCRATCH: kept {}", self.0.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("could not remove scratch dir {}: {e}", self.0.display());
        }
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0 .0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0 .0
    }
}

/// A running `ferryd`, killed when dropped.
pub struct Ferryd {
    child: Child,
    pub sock: PathBuf,
    /// Its scratch directory, removed once this and every clone of it are gone.
    pub dir: Scratch,
    pub log: PathBuf,
    /// The arguments it was started with (besides `-r` and `--log-level`): a restart the same way.
    pub args: Vec<String>,
}

impl Ferryd {
    /// Starts `ferryd` with `args` (plus `-r SOCK --no-pin`) and waits for its socket.
    pub fn start(args: &[&str]) -> Ferryd {
        Self::start_in(scratch_dir("ferryd"), args)
    }

    /// As `start`, in a given scratch directory (its socket is `DIR/ferry.sock`).
    pub fn start_in(dir: Scratch, args: &[&str]) -> Ferryd {
        Self::start_with(dir, &[&["--no-pin"], args].concat(), |_| {})
    }

    /// As `start_in` without `--no-pin`, after `configure` adjusts the command (environment,
    /// umask in `pre_exec`, ...).
    pub fn start_with(dir: Scratch, args: &[&str], configure: impl FnOnce(&mut Command)) -> Ferryd {
        let sock = dir.join("ferry.sock");
        let log = dir.join("ferryd.log");
        let log_file = std::fs::File::create(&log).expect("create log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferryd"));
        cmd.args(["-r", sock.to_str().unwrap(), "--log-level", "INFO"]).args(args);
        configure(&mut cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawn ferryd");
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut d = Ferryd { child, sock, dir, log, args };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("ferryd exited early with {status}; log:\n{}", self.log_text());
            }
            if UnixStream::connect(&self.sock).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("ferryd did not open its socket in time; log:\n{}", self.log_text());
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Calls `method` and returns its result or error.
    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, RpcErr> {
        rpc_at(&self.sock, method, params)
    }

    /// Calls `method` and panics on an error.
    pub fn ok(&self, method: &str, params: Value) -> Value {
        self.rpc(method, params.clone())
            .unwrap_or_else(|e| panic!("{method} {params} failed: {e:?}\nlog:\n{}", self.log_text()))
    }

    /// Calls `method`, expects an error, returns it.
    pub fn err(&self, method: &str, params: Value) -> RpcErr {
        match self.rpc(method, params.clone()) {
            Ok(v) => panic!("{method} {params} unexpectedly succeeded with {v}"),
            Err(e) => e,
        }
    }

    /// Run counts of the busy pollers named `name` on reactor `reactor` (`thread_get_pollers`).
    pub fn poller_runs(&self, reactor: usize, name: &str) -> Vec<u64> {
        let all = self.ok("thread_get_pollers", Value::Null);
        let thread = all["threads"]
            .as_array()
            .expect("threads")
            .iter()
            .find(|t| t["id"] == reactor as u64 + 1)
            .unwrap_or_else(|| panic!("no reactor {reactor} in {all}"));
        thread["active_pollers"]
            .as_array()
            .expect("active_pollers")
            .iter()
            .filter(|p| p["name"] == name)
            .map(|p| p["run_count"].as_u64().expect("run_count"))
            .collect()
    }

    /// Waits (up to 10 s) until the one poller named `name` on reactor `reactor` has run
    /// again: proof that it has looked at its queue since this call began, where a sleep
    /// would only be a guess. `thread_get_pollers` reads the counts on the reactor itself,
    /// between poller runs, so a higher count can only come from a run that started after
    /// the first reading.
    #[track_caller]
    pub fn wait_polled(&self, reactor: usize, name: &str) {
        let first = self.poller_runs(reactor, name);
        assert_eq!(first.len(), 1, "exactly one poller {name} on reactor {reactor}: {first:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.poller_runs(reactor, name);
            assert_eq!(now.len(), 1, "poller {name} on reactor {reactor} went away");
            if now[0] > first[0] {
                return;
            }
            assert!(Instant::now() < deadline, "poller {name} on reactor {reactor} never ran again");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops with SIGTERM and waits (up to 20 s) for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        // std's Child::kill sends SIGKILL; a clean shutdown needs SIGTERM.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("ferryd did not stop on SIGTERM; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ferryd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One JSON-RPC call on a new connection to `sock`.
pub fn rpc_at(sock: &Path, method: &str, params: Value) -> Result<Value, RpcErr> {
    let mut req = json!({"jsonrpc": "2.0", "id": 1, "method": method});
    if !params.is_null() {
        req["params"] = params;
    }
    let resp = exchange(sock, req.to_string().as_bytes());
    if let Some(e) = resp.get("error") {
        return Err(RpcErr {
            code: e["code"].as_i64().expect("error code"),
            message: e["message"].as_str().expect("error message").to_string(),
        });
    }
    Ok(resp["result"].clone())
}

/// Sends raw bytes on a new connection and reads one JSON response.
pub fn exchange(sock: &Path, bytes: &[u8]) -> Value {
    let mut s = connect(sock);
    s.write_all(bytes).expect("write request");
    read_response(&mut s)
}

/// Connects with a 30 s read timeout.
pub fn connect(sock: &Path) -> UnixStream {
    let s = UnixStream::connect(sock).expect("connect to ferryd");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Reads one newline-terminated JSON response.
pub fn read_response(s: &mut UnixStream) -> Value {
    let mut line = String::new();
    BufReader::new(&*s).read_line(&mut line).expect("read response");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("response {line:?} is not JSON: {e}"))
}

/// Writes a bdev configuration document to `dir/name` and returns its path.
pub fn write_config(dir: &Path, name: &str, entries: Value) -> PathBuf {
    let path = dir.join(name);
    let doc = json!({"subsystems": [{"subsystem": "bdev", "config": entries}]});
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

/// Stops or continues process `pid` with `signal` and waits until /proc shows it stopped
/// (`T`) or not.
pub fn signal_and_wait(pid: u32, signal: i32, stopped: bool) {
    // SAFETY: kill(2) on a child process of this test; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill({pid}, {signal})");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // The state follows the parenthesised command name.
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next()).unwrap_or(None);
        if (state == Some('T')) == stopped {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} state {state:?}, wanted stopped={stopped}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// xorshift64*: deterministic randomness without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A second ferryd serving a 4 MiB malloc bdev as vhost-user-blk controller `held`, and its
/// scratch directory: attached to a daemon under test as virtio bdev `name`
/// ([`attach_held`]), its I/O can be held by stopping the process ([`signal_and_wait`]).
pub fn held_backend(tag: &str) -> (Ferryd, Scratch) {
    held_backend_of(tag, 8192)
}

/// As [`held_backend`], with a malloc bdev of `num_blocks` 512-byte blocks.
pub fn held_backend_of(tag: &str, num_blocks: u64) -> (Ferryd, Scratch) {
    let dir = scratch_dir(tag);
    let back = Ferryd::start_in(dir.clone(), &["-m", "0x1", "-S", dir.to_str().unwrap()]);
    back.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": num_blocks, "block_size": 512}));
    back.ok("vhost_create_blk_controller", json!({"ctrlr": "held", "dev_name": "M"}));
    (back, dir)
}

/// Attaches `held_backend`'s controller to `d` as virtio bdev `name` (one virtqueue: one
/// reactor of `d` can use it).
pub fn attach_held(d: &Ferryd, back_dir: &Path, name: &str) {
    attach_held_queues(d, back_dir, name, 1);
}

/// As [`attach_held`] with `vq_count` virtqueues, one per reactor of `d` that uses it.
pub fn attach_held_queues(d: &Ferryd, back_dir: &Path, name: &str, vq_count: u16) {
    let attach = json!({"name": name, "trtype": "user", "traddr": back_dir.join("held"), "dev_type": "blk",
                        "vq_count": vq_count});
    d.ok("bdev_virtio_attach_controller", attach);
}

/// The names of `pid`'s threads, sorted.
pub fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// `pid`'s threads once those other than RPC workers are `before`'s again: a worker just
/// started carries its parent's name for a moment, until it names itself. Panics if they
/// stay different.
pub fn threads_settle_to(pid: u32, before: &[String]) -> Vec<String> {
    let fixed = |names: &[String]| names.iter().filter(|n| !n.starts_with("rpc_worker")).cloned().collect::<Vec<_>>();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = thread_names(pid);
        if fixed(&now) == fixed(before) {
            return now;
        }
        assert!(Instant::now() < deadline, "threads before {before:?} and after {now:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (up to 20 s) for `n` completions on queue `q` of a vhost-user-blk initiator.
#[track_caller]
pub fn wait_completions(
    client: &mut ferry_vhost_initiator::Client,
    q: usize,
    n: usize,
) -> Vec<ferry_vhost_initiator::Completion> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} completions arrived", out.len());
        if client.queue(q).poll(&mut out) == 0 {
            client.queue(q).wait(10);
        }
    }
    out
}

/// Runs the project's idempotent setup `script` (relative to the repository) that installs
/// what a test needs; panics if it fails.
pub fn install_tools(script: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let status = Command::new("bash").arg(&path).stdout(Stdio::null()).status().expect("run bash");
    assert!(status.success(), "{} failed", path.display());
}

/// SPDK's `bdev_lvol_get_lvstores` members (vbdev_lvol_rpc.c, rpc_dump_lvol_store_info).
pub const LVSTORE_KEYS: &[&str] = &[
    "uuid",
    "name",
    "base_bdev",
    "total_data_clusters",
    "free_clusters",
    "block_size",
    "cluster_size",
    "max_growable_size",
];
/// SPDK's `bdev_lvol_get_lvols` members (vbdev_lvol_rpc.c, rpc_dump_lvol).
pub const LVOL_KEYS: &[&str] = &[
    "alias",
    "uuid",
    "name",
    "is_thin_provisioned",
    "is_snapshot",
    "is_clone",
    "is_esnap_clone",
    "is_degraded",
    "num_allocated_clusters",
    "lvs",
];

/// `len` bytes of a pseudo-random pattern (xorshift) distinct for each `tag`: data whose
/// every block differs, so a write that lands in the wrong place or not at all shows.
pub fn pat(tag: u32, len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (tag as u64).wrapping_mul(0xA24B_AED4_963E_E407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

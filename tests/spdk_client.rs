//! SPDK's own clients against a real `ferryd`: `spdk-rpc` (rpc.py) and `spdk-cli` from the
//! `spdk` package on PyPI, installed by `scripts/spdk-client.sh`.
//!
//! `every_served_method_works_with_spdk_rpc` calls every method `rpc_get_methods` lists
//! through SPDK's client, with rpc.py's own argument defaults, and fails if one was left out:
//! the methods covered are read from the requests rpc.py itself logs (`-v`), so a method added
//! to Ferry without a call here fails the test. A configuration written as SPDK saves one
//! (`tests/spdk_client/spdk_tgt_saved_config.json`) loads through rpc.py and `ferryd -c`.

mod common;

use common::{Ferryd, Scratch};
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::{Client, Options, Request};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The venv's `bin` directory, after `scripts/spdk-client.sh` installed SPDK's client there
/// (once per test binary; the script itself keeps an installed venv).
fn spdk_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/spdk-client.sh");
        let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().expect("run spdk-client.sh");
        assert!(out.status.success(), "{} failed", script.display());
        let text = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(text.lines().last().expect("the script prints the venv's bin directory").trim())
    })
}

/// The SPDK release Ferry's RPC matches, as scripts/spdk-client.sh pins it.
fn pinned_version() -> String {
    let script = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/spdk-client.sh")).unwrap();
    let line = script.lines().find_map(|l| l.strip_prefix("SPDK_VERSION=")).expect("SPDK_VERSION= in the script");
    line.trim().to_string()
}

/// SPDK's client against one daemon at a time, remembering every method it sent with success.
struct SpdkClient {
    covered: RefCell<BTreeSet<String>>,
}

/// What a failed call answered.
#[derive(Debug)]
struct Refused {
    code: i64,
    message: String,
}

impl SpdkClient {
    fn new() -> Self {
        SpdkClient { covered: RefCell::new(BTreeSet::new()) }
    }

    /// Runs `spdk-rpc -s SOCK -v ARGS` (with `stdin` fed in when given).
    fn run(&self, sock: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(spdk_bin().join("spdk-rpc"));
        cmd.arg("-s").arg(sock).arg("-v").args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().expect("spawn spdk-rpc");
        if let Some(bytes) = stdin {
            child.stdin.take().unwrap().write_all(bytes).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// `spdk-rpc ARGS` must succeed; returns its standard output and records the methods it
    /// sent (from the requests rpc.py logs with `-v`).
    fn ok(&self, d: &Ferryd, args: &[&str]) -> String {
        self.ok_at(&d.sock, args, None, d)
    }

    fn ok_at(&self, sock: &Path, args: &[&str], stdin: Option<&[u8]>, d: &Ferryd) -> String {
        let out = self.run(sock, args, stdin);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "spdk-rpc {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nferryd log:\n{}",
            d.log_text()
        );
        let sent = requested_methods(&stderr);
        assert!(!sent.is_empty(), "spdk-rpc {args:?} logged no request:\n{stderr}");
        self.covered.borrow_mut().extend(sent);
        stdout.into_owned()
    }

    /// `spdk-rpc ARGS`, recording what it sent if it succeeded; whether it did.
    fn try_ok(&self, d: &Ferryd, args: &[&str]) -> bool {
        let out = self.run(&d.sock, args, None);
        if out.status.success() {
            self.covered.borrow_mut().extend(requested_methods(&String::from_utf8_lossy(&out.stderr)));
        }
        out.status.success()
    }

    /// `spdk-rpc ARGS` printing JSON.
    fn json(&self, d: &Ferryd, args: &[&str]) -> Value {
        let text = self.ok(d, args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("spdk-rpc {args:?} printed no JSON ({e}):\n{text}"))
    }

    /// `spdk-rpc ARGS` must fail with a JSON-RPC error; returns it.
    fn refused(&self, d: &Ferryd, args: &[&str]) -> Refused {
        let out = self.run(&d.sock, args, None);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "spdk-rpc {args:?} should fail:\n{stdout}");
        let (_, response) = stdout
            .split_once("Got JSON-RPC error response\nresponse:\n")
            .unwrap_or_else(|| panic!("spdk-rpc {args:?} got no error response:\n{stdout}"));
        let e: Value = serde_json::from_str(response.trim()).expect("the error response is JSON");
        Refused { code: e["code"].as_i64().unwrap(), message: e["message"].as_str().unwrap().to_string() }
    }

    /// Calls `method` through SPDK's Python client library (`spdk.rpc.client.JSONRPCClient`),
    /// for Ferry's server-side `save_config` and `load_config`, which rpc.py's commands of
    /// the same names build on the client side instead.
    fn library_call(&self, d: &Ferryd, method: &str, params: &Value) -> Value {
        const SCRIPT: &str = "import json, sys\nfrom spdk.rpc.client import JSONRPCClient\n\
            c = JSONRPCClient(sys.argv[1])\nprint(json.dumps(c.call(sys.argv[2], json.load(sys.stdin))))\n";
        let mut child = Command::new(spdk_bin().join("python"))
            .args(["-c", SCRIPT])
            .arg(&d.sock)
            .arg(method)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(params.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "JSONRPCClient.call({method}) failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.covered.borrow_mut().insert(method.to_string());
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// The methods of every request rpc.py logged (`INFO: Requests:` followed by the JSON it
/// sent: one request, several, or a batch array).
fn requested_methods(stderr: &str) -> Vec<String> {
    let mut methods = Vec::new();
    for chunk in stderr.split("INFO: ").filter_map(|c| c.strip_prefix("Requests:")) {
        for v in serde_json::Deserializer::from_str(chunk).into_iter::<Value>().map_while(Result::ok) {
            let requests = if let Value::Array(batch) = v { batch } else { vec![v] };
            methods.extend(requests.iter().filter_map(|r| r["method"].as_str().map(str::to_string)));
        }
    }
    methods
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap_or_else(|| panic!("{v} is not an object")).keys().map(String::as_str).collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

/// spdk_top's decoders (app/spdk_top/spdk_top.c) refuse members they do not know: a
/// reactor object may hold exactly these (`core_freq` optional).
const SPDK_TOP_REACTOR: &[&str] =
    &["lcore", "numa_id", "tid", "busy", "idle", "in_interrupt", "irq", "sys", "usr", "lw_threads"];
const SPDK_TOP_LW_THREAD: &[&str] = &["name", "id", "cpumask", "elapsed"];
const SPDK_TOP_THREAD: &[&str] =
    &["name", "id", "cpumask", "busy", "idle", "active_pollers_count", "timed_pollers_count", "paused_pollers_count"];
const SPDK_TOP_POLLER: &[&str] = &["name", "state", "id", "run_count", "busy_count", "period_ticks"];

/// SPDK's I/O type names (`spdk_bdev_get_io_type_name`), all listed in `supported_io_types`.
const SPDK_IO_TYPES: &str = "read write unmap flush reset nvme_admin nvme_io nvme_io_md write_zeroes zcopy \
    get_zone_info zone_management zone_append compare compare_and_write abort seek_hole seek_data copy \
    nvme_iov_md nvme_nssr write_uncorrectable";

fn start(dir: Scratch, extra: &[&str]) -> Ferryd {
    let sock_dir = dir.to_str().unwrap().to_string();
    Ferryd::start_in(dir, &[&["-m", "0x3", "-S", &sock_dir], extra].concat())
}

/// Framework, thread and logging methods; the shapes spdk_top decodes.
fn framework(c: &SpdkClient, d: &Ferryd) {
    let v = c.json(d, &["spdk_get_version"]);
    assert!(v["version"].as_str().unwrap().starts_with("Ferry v"));
    let methods: Vec<String> = serde_json::from_value(c.json(d, &["rpc_get_methods", "--current"])).unwrap();
    assert!(methods.iter().any(|m| m == "bdev_malloc_create"));
    c.ok(d, &["framework_wait_init"]);
    let subsystems = c.json(d, &["framework_get_subsystems"]);
    assert_eq!((&subsystems[0]["subsystem"], &subsystems[1]["subsystem"]), (&json!("accel"), &json!("bdev")));

    let r = c.json(d, &["framework_get_reactors"]);
    let reactors = r["reactors"].as_array().unwrap();
    assert_eq!(reactors.len(), 2);
    for (i, reactor) in reactors.iter().enumerate() {
        assert_eq!(keys(reactor), set(SPDK_TOP_REACTOR), "framework_get_reactors: {reactor}");
        let lw = &reactor["lw_threads"][0];
        assert_eq!(keys(lw), set(SPDK_TOP_LW_THREAD));
        assert_eq!(lw["cpumask"], format!("{:x}", 1 << i), "SPDK's cpuset format: hex without 0x");
        assert!(reactor["tid"].as_u64().unwrap() > 0);
        assert!(reactor["numa_id"].is_i64());
    }
    let t = c.json(d, &["thread_get_stats"]);
    for (i, thread) in t["threads"].as_array().unwrap().iter().enumerate() {
        assert_eq!(keys(thread), set(SPDK_TOP_THREAD), "thread_get_stats: {thread}");
        assert_eq!(thread["cpumask"], format!("{:x}", 1 << i));
    }

    for level in ["DEBUG", "INFO"] {
        c.ok(d, &["log_set_level", level]);
        assert_eq!(c.json(d, &["log_get_level"]), level);
        c.ok(d, &["log_set_print_level", level]);
        assert_eq!(c.json(d, &["log_get_print_level"]), level);
    }
    c.ok(d, &["log_set_flag", "bdev"]);
    assert_eq!(c.json(d, &["log_get_flags"])["bdev"], true);
    c.ok(d, &["log_clear_flag", "bdev"]);
}

/// Bdev methods with rpc.py's defaults, including those current rpc.py broke on.
fn bdevs(c: &SpdkClient, d: &Ferryd) {
    // The first command of SPDK's getting-started guide.
    assert_eq!(c.ok(d, &["bdev_malloc_create", "-b", "M0", "64", "512"]).trim(), "M0");
    assert_eq!(c.ok(d, &["bdev_malloc_create", "8", "4096"]).trim(), "Malloc0", "rpc.py's default name");
    assert_eq!(c.ok(d, &["bdev_null_create", "N0", "64", "512"]).trim(), "N0");
    c.ok(d, &["bdev_null_create", "N1", "8", "512", "--preferred-write-granularity", "8", "-s", "16"]);
    let n1 = &c.json(d, &["bdev_get_bdevs", "-b", "N1"])[0];
    assert_eq!((&n1["preferred_write_granularity"], &n1["optimal_write_size"]), (&json!(8), &json!(16)));
    c.ok(d, &["bdev_null_resize", "N0", "128"]);
    let file = d.dir.join("aio.img");
    std::fs::File::create(&file).unwrap().set_len(16 << 20).unwrap();
    assert_eq!(c.ok(d, &["bdev_aio_create", file.to_str().unwrap(), "A0"]).trim(), "A0");
    std::fs::File::options().write(true).open(&file).unwrap().set_len(32 << 20).unwrap();
    c.ok(d, &["bdev_aio_rescan", "A0"]);
    assert_eq!(c.json(d, &["bdev_get_bdevs", "-b", "A0"])[0]["num_blocks"], 65536);
    let ufile = d.dir.join("uring.img");
    std::fs::File::create(&ufile).unwrap().set_len(16 << 20).unwrap();
    c.ok(d, &["bdev_uring_create", ufile.to_str().unwrap(), "U0"]);

    let all = c.json(d, &["bdev_get_bdevs"]);
    assert_eq!(all.as_array().unwrap().len(), 6);
    let m0 = &c.json(d, &["bdev_get_bdevs", "-b", "M0", "-t", "10"])[0];
    assert_eq!(keys(&m0["supported_io_types"]), SPDK_IO_TYPES.split_whitespace().collect());
    for f in ["preferred_write_alignment", "optimal_write_size", "preferred_unmap_granularity", "uuid"] {
        assert!(m0.get(f).is_some(), "bdev_get_bdevs lacks {f}: {m0}");
    }
    c.ok(d, &["bdev_examine", "-b", "M0"]);
    c.ok(d, &["bdev_wait_for_examine"]);

    // A value Ferry cannot honour: -32602 naming the parameter.
    for (args, param) in [
        (&["bdev_malloc_create", "-b", "X", "8", "512", "-m", "8"][..], "md_size"),
        (&["bdev_malloc_create", "-b", "X", "8", "512", "-p", "1000"][..], "physical_block_size"),
        (&["bdev_null_create", "X", "8", "512", "-m", "8", "-t", "1"][..], "md_size"),
    ] {
        let e = c.refused(d, args);
        assert_eq!(e.code, -32602, "{args:?}: {e:?}");
        assert!(e.message.contains(param), "{args:?}: {e:?}");
    }
}

/// vhost controllers and a session made by a real vhost-user frontend; I/O statistics with
/// `names`, `per_channel` and `reset_mode`; several controllers on one bdev (no claims, as SPDK).
fn vhost_and_iostat(c: &SpdkClient, d: &Ferryd) {
    c.ok(d, &["vhost_create_blk_controller", "c0", "M0"]);
    c.ok(d, &["vhost_create_scsi_controller", "s0"]);
    assert_eq!(c.ok(d, &["vhost_scsi_controller_add_target", "s0", "0", "N0"]).trim(), "0");
    c.ok(d, &["vhost_start_scsi_controller", "s0"]);
    c.ok(d, &["vhost_controller_set_coalescing", "c0", "0", "0"]);
    // Ferry's extension, through SPDK's client library.
    let qos = json!({"ctrlr": "c0", "rw_ios_per_sec": 5000, "rw_ios_burst_per_sec": 10000});
    assert_eq!(c.library_call(d, "vhost_controller_set_qos", &qos), json!(true));
    let limits = &c.json(d, &["vhost_get_controllers", "-n", "c0"])[0]["qos"]["assigned_rate_limits"];
    assert_eq!(limits["rw_ios_per_sec"], 5000);
    c.library_call(d, "vhost_controller_set_qos", &json!({"ctrlr": "c0", "rw_ios_per_sec": 0}));
    // As SPDK's, vhost controllers do not claim their bdevs: M0 serves c0, c1 and a SCSI
    // target at once (a bdev claimed by another module answers -EPERM: unit-tested in
    // src/vhost/rpc.rs, as no RPC-made bdev claims today).
    c.ok(d, &["vhost_create_blk_controller", "c1", "M0"]);
    assert_eq!(c.ok(d, &["vhost_scsi_controller_add_target", "s0", "1", "M0"]).trim(), "1");
    c.ok(d, &["vhost_scsi_controller_remove_target", "s0", "1"]);
    c.ok(d, &["vhost_delete_controller", "c1"]);

    // A frontend writes and reads 8 KiB through queue 1.
    let opts = Options { num_queues: 2, queue_size: 64, mem_size: 4 << 20, hugetlbfs: None };
    let mut client = Client::connect(&d.dir.join("c0"), &opts).expect("connect to c0");
    let mem = client.mem().clone();
    let buf = mem.alloc(8192, 4096).unwrap();
    mem.write(buf, &[0x5a; 8192]);
    client.queue(1).submit(&Request::Write { sector: 8, bufs: &[(buf, 8192)] }, 1).unwrap();
    client.queue(1).submit(&Request::Read { sector: 8, bufs: &[(buf, 8192)] }, 2).unwrap();
    client.queue(1).kick();
    let done = common::wait_completions(&mut client, 1, 2);
    assert!(done.iter().all(|x| x.status == status::OK), "{done:?}");

    let ctrl = &c.json(d, &["vhost_get_controllers", "-n", "c0"])[0];
    let session = &ctrl["sessions"][0];
    for f in ["vid", "id", "name", "started", "max_queues", "inflight_task_cnt"] {
        assert!(session.get(f).is_some(), "vhost_get_controllers session lacks {f}: {session}");
    }
    assert_eq!((&session["started"], &session["max_queues"]), (&json!(true), &json!(2)), "{session}");
    assert_eq!(session["name"], format!("c0s{}", session["vid"]));
    assert_eq!(c.json(d, &["vhost_get_controllers"]).as_array().unwrap().len(), 2);

    let pollers = c.json(d, &["thread_get_pollers"]);
    let all: Vec<&Value> = pollers["threads"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| ["active_pollers", "timed_pollers"].map(|k| t[k].as_array().unwrap().iter()))
        .flatten()
        .collect();
    assert!(!all.is_empty(), "a running queue has pollers: {pollers}");
    for p in all {
        assert!(keys(p).is_subset(&set(SPDK_TOP_POLLER)), "thread_get_pollers: {p}");
        assert!(p["id"].as_u64().unwrap() > 0);
    }

    let stat = c.json(d, &["bdev_get_iostat", "--names", "M0,N0"]);
    let names: Vec<&str> = stat["bdevs"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["M0", "N0"]);
    assert_eq!(
        (stat["bdevs"][0]["num_write_ops"].as_u64(), stat["bdevs"][0]["bytes_read"].as_u64()),
        (Some(1), Some(8192))
    );
    let per_channel = c.json(d, &["bdev_get_iostat", "-c", "--names", "M0"]);
    assert_eq!(per_channel["name"], "M0");
    let channels = per_channel["channels"].as_array().unwrap();
    assert_eq!(channels.iter().map(|ch| ch["num_read_ops"].as_u64().unwrap()).sum::<u64>(), 1);
    assert!(channels.iter().all(|ch| ch["thread_id"].as_u64().unwrap() >= 1), "{per_channel}");
    // As SPDK: per-channel statistics of no named bdev are refused.
    assert_eq!(c.refused(d, &["bdev_get_iostat", "-c"]).code, -22);
    // Read, then reset: the next reading starts from zero.
    let before = c.json(d, &["bdev_get_iostat", "--names", "M0", "--reset-mode", "all"]);
    assert_eq!(before["bdevs"][0]["num_read_ops"], 1, "the reading before the reset");
    let after = c.json(d, &["bdev_get_iostat", "--names", "M0"]);
    assert_eq!((&after["bdevs"][0]["num_read_ops"], &after["bdevs"][0]["bytes_written"]), (&json!(0), &json!(0)));
    drop(client);

    c.ok(d, &["vhost_scsi_controller_remove_target", "s0", "0"]);
    for ctrl in ["c0", "s0"] {
        // The frontend's disconnect is noticed on the control plane's loop; retry until then.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.try_ok(d, &["vhost_delete_controller", ctrl]) {
            assert!(Instant::now() < deadline, "vhost_delete_controller {ctrl} kept failing");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(c.json(d, &["vhost_get_controllers"]), json!([]));
}

/// rpc.py's `save_config` and `load_config` (built from `framework_get_config` and the
/// methods themselves), Ferry's server-side pair through SPDK's client library, and the
/// virtio initiator against a second daemon.
fn configs(c: &SpdkClient, d: &Ferryd) {
    let saved = c.ok(d, &["save_config"]);
    let doc: Value = serde_json::from_str(&saved).unwrap();
    let bdev_cfg = c.json(d, &["framework_get_config", "bdev"]);
    let bdev_saved = doc["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "bdev").unwrap();
    assert_eq!(bdev_saved["config"], bdev_cfg);
    let batched = c.ok(d, &["save_subsystem_config", "-n", "bdev", "--with-batches"]);
    let batched: Value = serde_json::from_str(&batched).unwrap();
    assert!(batched["config"].as_array().unwrap().iter().any(Value::is_array), "batches kept: {batched}");

    let d2 = start(common::scratch_dir("spdk-load"), &[]);
    c.ok_at(&d2.sock, &["load_config"], Some(saved.as_bytes()), &d2);
    let names = |d: &Ferryd| -> Vec<String> {
        d.ok("bdev_get_bdevs", Value::Null).as_array().unwrap().iter().map(|b| b["name"].to_string()).collect()
    };
    assert_eq!(names(&d2), names(d));
    // Ferry's own save_config / load_config, called through SPDK's client library.
    let own = c.library_call(d, "save_config", &json!({"with_batches": true}));
    let d3 = start(common::scratch_dir("spdk-load3"), &[]);
    assert_eq!(c.library_call(&d3, "load_config", &own), true);
    assert_eq!(names(&d3), names(d));
    assert_eq!(d3.ok("bdev_get_bdevs", json!({"name": "N1"}))[0]["preferred_write_granularity"], 8);

    // d2 serves M0 as a vhost-user-blk controller; d attaches it as a virtio bdev.
    c.ok(&d2, &["vhost_create_blk_controller", "back", "M0"]);
    let sock = d2.dir.join("back");
    let v = c.ok(d, &["bdev_virtio_attach_controller", "-t", "user", "-a", sock.to_str().unwrap(), "-d", "blk", "V0"]);
    assert_eq!(v.trim(), "V0");
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "V0"}))[0]["num_blocks"], 131072);
    c.ok(d, &["bdev_virtio_detach_controller", "V0"]);

    for (method, name) in [
        ("bdev_malloc_delete", "M0"),
        ("bdev_null_delete", "N0"),
        ("bdev_aio_delete", "A0"),
        ("bdev_uring_delete", "U0"),
    ] {
        c.ok(d, &[method, name]);
    }
}

/// Every options method of a subsystem Ferry does not have, with rpc.py's defaults.
fn options(c: &SpdkClient, d: &Ferryd) {
    for args in [
        &["iobuf_set_options"][..],
        &["sock_set_default_impl", "-i", "posix"],
        &["sock_impl_set_options", "-i", "posix"],
        &["accel_set_options"],
        &["accel_assign_opc", "-o", "copy", "-m", "software"],
        &["accel_set_driver", "--name", "mlx5"],
        &["bdev_set_options"],
        &["bdev_nvme_set_options"],
        &["bdev_nvme_set_options", "-a", "reset", "-t", "2000000", "--timeout-admin-us", "3000000"],
        &["bdev_nvme_set_options", "-a", "none", "-t", "0", "--timeout-admin-us", "0"],
        &["bdev_nvme_set_hotplug", "--no-hotplug"],
        &["bdev_iscsi_set_options"],
        &["nvmf_set_config"],
        &["nvmf_set_max_subsystems", "-x", "1024"],
        &["nvmf_set_crdt"],
        &["framework_set_scheduler", "static"],
        &["fsdev_set_opts", "65535", "256"],
        &["keyring_linux_set_options"],
    ] {
        c.ok(d, args);
    }
}

/// Every `iscsi_*` method Ferry serves through rpc.py's own commands and argument forms
/// (`iscsi_set_options` is start-up only, as in SPDK: see the `--wait-for-rpc` daemon below).
fn iscsi(c: &SpdkClient, d: &Ferryd) {
    c.ok(d, &["bdev_malloc_create", "-b", "IM0", "8", "512"]);
    c.ok(d, &["bdev_malloc_create", "-b", "IM1", "8", "512"]);
    let port = common::free_port();
    let portal = format!("127.0.0.1:{port}");
    c.ok(d, &["iscsi_create_portal_group", "1", &portal, "-w"]);
    c.ok(d, &["iscsi_start_portal_group", "1"]);
    assert!(std::net::TcpStream::connect(&portal).is_ok(), "portal group 1 listens on {portal}");
    c.ok(d, &["iscsi_create_initiator_group", "2", "ANY", "127.0.0.1/32"]);
    c.ok(d, &["iscsi_initiator_group_add_initiators", "2", "-n", "iqn.2016-06.io.spdk:host1", "-m", "10.0.0.0/8"]);
    c.ok(d, &["iscsi_initiator_group_remove_initiators", "2", "-n", "iqn.2016-06.io.spdk:host1", "-m", "10.0.0.0/8"]);
    c.ok(d, &["iscsi_create_auth_group", "3", "-c", "user:u1 secret:s1 muser:m1 msecret:ms1"]);
    c.ok(d, &["iscsi_auth_group_add_secret", "3", "-u", "u2", "-s", "s2"]);
    c.ok(d, &["iscsi_auth_group_remove_secret", "3", "-u", "u2"]);
    let groups = c.json(d, &["iscsi_get_auth_groups"]);
    assert_eq!(
        groups,
        json!([{"tag": 3, "secrets": [{"user": "u1", "secret": "s1", "muser": "m1", "msecret": "ms1"}]}])
    );
    c.ok(d, &["iscsi_set_discovery_auth", "-r", "-g", "3"]);
    assert_eq!(c.json(d, &["iscsi_get_options"])["require_chap"], json!(true));
    c.ok(d, &["iscsi_set_discovery_auth", "-d"]);
    c.ok(d, &["iscsi_portal_group_set_auth", "1", "-d"]);

    c.ok(d, &["iscsi_create_target_node", "disk1", "Data Disk1", "IM0:0", "1:2", "64", "-d", "-H"]);
    c.ok(d, &["iscsi_target_node_add_lun", "disk1", "IM1", "-i", "3"]);
    c.ok(d, &["iscsi_target_node_set_auth", "disk1", "-r", "-m", "-g", "3"]);
    c.ok(d, &["iscsi_create_portal_group", "4", "127.0.0.1:0"]);
    c.ok(d, &["iscsi_target_node_add_pg_ig_maps", "disk1", "4:2"]);
    c.ok(d, &["iscsi_target_node_remove_pg_ig_maps", "disk1", "4:2"]);
    let nodes = c.json(d, &["iscsi_get_target_nodes"]);
    let node = &nodes[0];
    assert_eq!(node["name"], "iqn.2016-06.io.spdk:disk1", "{node}");
    assert_eq!(node["luns"], json!([{"bdev_name": "IM0", "lun_id": 0}, {"bdev_name": "IM1", "lun_id": 3}]));
    assert_eq!(node["pg_ig_maps"], json!([{"pg_tag": 1, "ig_tag": 2}]), "{node}");
    assert_eq!(
        (&node["require_chap"], &node["mutual_chap"], &node["chap_group"], &node["header_digest"]),
        (&json!(true), &json!(true), &json!(3), &json!(true)),
        "{node}"
    );
    assert_eq!(c.json(d, &["iscsi_get_portal_groups"]).as_array().unwrap().len(), 2);
    assert_eq!(c.json(d, &["iscsi_get_initiator_groups"])[0]["netmasks"], json!(["127.0.0.1/32"]));
    assert_eq!(c.json(d, &["iscsi_get_connections"]), json!([]));
    assert!(c.json(d, &["iscsi_get_stats"]).is_object());
    assert_eq!(c.json(d, &["iscsi_get_options"])["node_base"], "iqn.2016-06.io.spdk");
    let refused = c.refused(d, &["iscsi_set_options", "-o", "30"]);
    assert!(refused.message.contains("framework_start_init"), "{refused:?}");

    c.ok(d, &["iscsi_delete_target_node", "iqn.2016-06.io.spdk:disk1"]);
    c.ok(d, &["iscsi_delete_portal_group", "4"]);
    c.ok(d, &["iscsi_delete_portal_group", "1"]);
    c.ok(d, &["iscsi_delete_initiator_group", "2"]);
    c.ok(d, &["iscsi_delete_auth_group", "3"]);
    assert_eq!(c.json(d, &["iscsi_get_target_nodes"]), json!([]));
    for m in ["IM0", "IM1"] {
        c.ok(d, &["bdev_malloc_delete", m]);
    }
}

/// Every `bdev_lvol_*` method through rpc.py's own commands and argument forms.
fn lvols(c: &SpdkClient, d: &Ferryd) {
    c.ok(d, &["bdev_malloc_create", "-b", "LM", "64", "512"]);
    c.ok(d, &["bdev_malloc_create", "-b", "E", "4", "512"]);
    c.ok(d, &["bdev_malloc_create", "-b", "D", "8", "512"]);
    // rpc.py prints a string result bare.
    let text = |args: &[&str]| c.ok(d, args).trim().to_string();
    let uuid = text(&["bdev_lvol_create_lvstore", "LM", "lvs0", "-c", "1048576", "--clear-method", "unmap"]);
    assert!(uuid.parse::<uuid::Uuid>().is_ok(), "{uuid}");
    let stores = c.json(d, &["bdev_lvol_get_lvstores", "-l", "lvs0"]);
    let store = &stores[0];
    assert_eq!(keys(store), set(common::LVSTORE_KEYS), "{store}");
    assert_eq!(
        (&store["uuid"], &store["base_bdev"], &store["cluster_size"]),
        (&json!(uuid), &json!("LM"), &json!(1 << 20))
    );
    assert_eq!(c.json(d, &["bdev_lvol_get_lvstores", "-u", &uuid]), stores);
    let total = store["total_data_clusters"].as_u64().unwrap();

    let thin = text(&["bdev_lvol_create", "-l", "lvs0", "-t", "thin", "8"]);
    text(&["bdev_lvol_create", "-u", &uuid, "-c", "none", "thick", "4"]);
    let snap = text(&["bdev_lvol_snapshot", "lvs0/thin", "snap"]);
    let clone = text(&["bdev_lvol_clone", &snap, "cl"]);
    assert_eq!(c.refused(d, &["bdev_lvol_delete", "lvs0/snap"]).code, -1, "a snapshot with two clones");
    text(&["bdev_lvol_clone_bdev", "E", "lvs0", "ext"]);
    let all = c.json(d, &["bdev_lvol_get_lvols", "-l", "lvs0"]);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 5, "{all:?}");
    let by_name = |name: &str| all.iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("{name}: {all:?}"));
    for l in all {
        assert_eq!(keys(l), set(common::LVOL_KEYS), "{l}");
        assert_eq!(l["lvs"], json!({"name": "lvs0", "uuid": uuid}));
    }
    assert_eq!((&by_name("thin")["uuid"], &by_name("thin")["is_clone"]), (&json!(thin), &json!(true)));
    assert_eq!((&by_name("snap")["uuid"], &by_name("snap")["is_snapshot"]), (&json!(snap), &json!(true)));
    assert_eq!((&by_name("cl")["uuid"], &by_name("ext")["is_esnap_clone"]), (&json!(clone), &json!(true)));
    assert_eq!(by_name("thick")["num_allocated_clusters"], 4);
    assert_eq!(c.json(d, &["bdev_lvol_get_lvols", "-u", &uuid]).as_array().unwrap().len(), 5);
    let lvol = &c.json(d, &["bdev_get_bdevs", "-b", "lvs0/thin"])[0];
    assert_eq!((&lvol["name"], &lvol["driver_specific"]["lvol"]["base_snapshot"]), (&json!(thin), &json!("snap")));

    c.ok(d, &["bdev_lvol_rename", "lvs0/cl", "cl2"]);
    c.ok(d, &["bdev_lvol_resize", "lvs0/thick", "6"]);
    assert_eq!(c.json(d, &["bdev_get_bdevs", "-b", "lvs0/thick"])[0]["num_blocks"], 6 * 2048);
    // Ferry's extension (through SPDK's client library): the copies' bandwidth.
    let opts = json!({"copy_max_bandwidth_mb_sec": 1000});
    assert_eq!(c.library_call(d, "bdev_lvol_set_options", &opts), json!(true));
    c.ok(d, &["bdev_lvol_inflate", "lvs0/cl2"]);
    c.library_call(d, "bdev_lvol_set_options", &json!({"copy_max_bandwidth_mb_sec": 0}));
    text(&["bdev_lvol_create", "-l", "lvs0", "-t", "t2", "8"]);
    c.ok(d, &["bdev_lvol_set_parent", "lvs0/t2", "lvs0/snap"]);
    c.ok(d, &["bdev_lvol_decouple_parent", "lvs0/t2"]);
    text(&["bdev_lvol_create", "-l", "lvs0", "-t", "t3", "4"]);
    c.ok(d, &["bdev_lvol_set_parent_bdev", "lvs0/t3", "E"]);
    c.ok(d, &["bdev_lvol_set_read_only", "lvs0/thick"]);
    let op = c.json(d, &["bdev_lvol_start_shallow_copy", "lvs0/thick", "D"]);
    let id = op["operation_id"].as_u64().expect("an operation id").to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.json(d, &["bdev_lvol_check_shallow_copy", &id]);
        if s["state"] == "complete" {
            assert_eq!(s["total_clusters"], 6, "{s}");
            break;
        }
        assert_eq!(s["state"], "in progress", "{s}");
        assert!(Instant::now() < deadline, "the shallow copy did not finish");
    }
    c.ok(d, &["bdev_lvol_rename_lvstore", "lvs0", "lvs1"]);
    assert_eq!(c.json(d, &["bdev_get_bdevs", "-b", "lvs1/thin"])[0]["name"], json!(thin));
    c.ok(d, &["bdev_lvol_grow_lvstore", "-l", "lvs1"]);
    c.ok(d, &["bdev_lvol_grow_lvstore", "-u", &uuid]);
    assert_eq!(c.json(d, &["bdev_lvol_get_lvstores", "-l", "lvs1"])[0]["total_data_clusters"], total);
    assert_eq!(c.refused(d, &["bdev_lvol_create", "-l", "lvs1", "thin", "4"]).code, -17, "a taken name");
    c.ok(d, &["bdev_lvol_delete", "lvs1/cl2"]);
    c.ok(d, &["bdev_lvol_delete", &thin]);
    c.ok(d, &["bdev_lvol_delete", "lvs1/snap"]);
    c.ok(d, &["bdev_lvol_delete_lvstore", "-l", "lvs1"]);
    assert_eq!(c.json(d, &["bdev_lvol_get_lvstores"]), json!([]));
    assert_eq!(c.json(d, &["bdev_lvol_get_lvols"]), json!([]));
    // The store is gone from its base: a new one on it, deleted by uuid.
    let again = text(&["bdev_lvol_create_lvstore", "LM", "lvs2"]);
    c.ok(d, &["bdev_lvol_delete_lvstore", "-u", &again]);
    for m in ["LM", "E", "D"] {
        c.ok(d, &["bdev_malloc_delete", m]);
    }
}

/// Every `nvmf_*` method Ferry serves through rpc.py's own commands and argument forms
/// (`discovery` is rpc.py's shortcut for the discovery subsystem's NQN).
fn nvmf(c: &SpdkClient, d: &Ferryd) {
    const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
    const HOST: &str = "nqn.2016-06.io.spdk:host1";
    c.ok(d, &["bdev_malloc_create", "-b", "NM0", "8", "512"]);
    c.ok(d, &["bdev_malloc_create", "-b", "NM1", "8", "512"]);
    c.ok(d, &["nvmf_create_transport", "-t", "TCP", "-q", "64", "-c", "8192", "-o"]);
    let t = c.json(d, &["nvmf_get_transports", "--trtype", "tcp"]);
    assert_eq!(
        (&t[0]["trtype"], &t[0]["max_queue_depth"], &t[0]["c2h_success"]),
        (&json!("TCP"), &json!(64), &json!(false))
    );
    let refused = c.refused(d, &["nvmf_create_transport", "-t", "RDMA"]);
    assert_eq!(refused.code, -32602, "{refused:?}");
    assert!(refused.message.contains("Invalid transport type 'RDMA'"), "{refused:?}");
    // The VFIOUSER transport (an NVMe PCIe function over vfio-user), with rpc.py's defaults
    // for every other transport's options, and one endpoint (`<dir>/cntrl`).
    c.ok(d, &["nvmf_create_transport", "-t", "VFIOUSER", "-q", "128", "-S"]);
    let vt = c.json(d, &["nvmf_get_transports", "--trtype", "VFIOUSER"]);
    assert_eq!(
        (&vt[0]["trtype"], &vt[0]["max_queue_depth"], &vt[0]["disable_shadow_doorbells"]),
        (&json!("VFIOUSER"), &json!(128), &json!(true))
    );
    const VNQN: &str = "nqn.2016-06.io.spdk:vfio-user1";
    let vdir = common::scratch_dir("spdk-vfio-user");
    c.ok(d, &["nvmf_create_subsystem", VNQN, "-a"]);
    c.ok(d, &["nvmf_subsystem_add_ns", VNQN, "NM1"]);
    c.ok(d, &["nvmf_subsystem_add_listener", VNQN, "-t", "VFIOUSER", "-a", vdir.to_str().unwrap(), "-s", "0"]);
    assert!(vdir.join("cntrl").exists(), "the endpoint's socket");
    let vl = c.json(d, &["nvmf_subsystem_get_listeners", VNQN]);
    assert_eq!(vl[0]["address"]["trtype"], "VFIOUSER", "{vl}");
    c.ok(d, &["nvmf_subsystem_remove_listener", VNQN, "-t", "VFIOUSER", "-a", vdir.to_str().unwrap(), "-s", "0"]);
    assert!(!vdir.join("cntrl").exists(), "the socket went with the listener");
    c.ok(d, &["nvmf_delete_subsystem", VNQN]);

    c.ok(d, &["nvmf_create_subsystem", NQN, "-s", "SPDK00000000000001", "-d", "Ferry", "-m", "8"]);
    // rpc.py prints nothing for add_ns; the NSIDs show in nvmf_get_subsystems.
    // NGUIDs of their own: the initiator below, in the same daemon, registers its bdevs with
    // the namespaces' NGUIDs as uuids, which the bdevs' own uuids (the default) would collide with.
    c.ok(d, &["nvmf_subsystem_add_ns", NQN, "NM0", "-g", "F0E0D0C0B0A090807060504030201000"]);
    c.ok(
        d,
        &[
            "nvmf_subsystem_add_ns",
            NQN,
            "NM1",
            "-n",
            "5",
            "-e",
            "0011223344556677",
            "-g",
            "F0E0D0C0B0A090807060504030201005",
        ],
    );
    c.ok(d, &["nvmf_subsystem_add_host", NQN, HOST]);
    c.ok(d, &["nvmf_subsystem_allow_any_host", NQN, "--allow-any-host"]);
    c.ok(d, &["nvmf_subsystem_allow_any_host", NQN, "--no-allow-any-host"]);
    let port = common::free_port().to_string();
    c.ok(d, &["nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", &port, "-f", "ipv4"]);
    c.ok(d, &["nvmf_subsystem_add_listener", "discovery", "-t", "tcp", "-a", "127.0.0.1", "-s", &port]);
    assert!(std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok(), "listening on {port}");

    let subs = c.json(d, &["nvmf_get_subsystems"]);
    assert_eq!(
        (&subs[0]["nqn"], &subs[0]["subtype"]),
        (&json!("nqn.2014-08.org.nvmexpress.discovery"), &json!("Discovery"))
    );
    assert_eq!(subs[0]["listen_addresses"][0]["trsvcid"], port.as_str(), "{subs}");
    let one = c.json(d, &["nvmf_get_subsystems", NQN]);
    let s = &one[0];
    assert_eq!(
        (&s["serial_number"], &s["model_number"], &s["allow_any_host"]),
        (&json!("SPDK00000000000001"), &json!("Ferry"), &json!(false))
    );
    assert_eq!(s["hosts"], json!([{"nqn": HOST}]));
    let nsids: Vec<&Value> = s["namespaces"].as_array().unwrap().iter().map(|n| &n["nsid"]).collect();
    assert_eq!(nsids, [&json!(1), &json!(5)], "{s}");
    assert_eq!(s["namespaces"][1]["eui64"], "0011223344556677", "{s}");
    let listeners = c.json(d, &["nvmf_subsystem_get_listeners", NQN]);
    assert_eq!(
        listeners[0]["address"],
        json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port})
    );
    assert_eq!(c.json(d, &["nvmf_subsystem_get_controllers", NQN]), json!([]));
    assert_eq!(c.json(d, &["nvmf_subsystem_get_qpairs", NQN]), json!([]));
    assert!(c.json(d, &["nvmf_get_stats"])["poll_groups"].is_array());
    let missing = c.refused(d, &["nvmf_subsystem_get_controllers", "nqn.2016-06.io.spdk:none"]);
    assert_eq!(
        (missing.code, missing.message.as_str()),
        (-32602, "Subsystem with NQN 'nqn.2016-06.io.spdk:none' not found")
    );

    // Ferry's own NVMe/TCP initiator against this target, through rpc.py's bdev_nvme commands,
    // with digests; rpc.py prints the bdevs the controller's namespaces became.
    let names = c.ok(
        d,
        &[
            "bdev_nvme_attach_controller",
            "-b",
            "Nv",
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            &port,
            "-f",
            "ipv4",
            "-n",
            NQN,
            "-q",
            HOST,
            "-e",
            "-d",
        ],
    );
    assert_eq!(names.split_whitespace().collect::<Vec<_>>(), ["Nvn1", "Nvn5"], "{names}");
    let ctrlrs = c.json(d, &["bdev_nvme_get_controllers", "-n", "Nv"]);
    assert_eq!(ctrlrs[0]["name"], "Nv", "{ctrlrs}");
    assert_eq!(c.json(d, &["nvmf_subsystem_get_controllers", NQN])[0]["hostnqn"], HOST);
    // A reset brings the controller back under a new CNTLID (a new fabrics Connect).
    let cntlid = ctrlrs[0]["ctrlrs"][0]["cntlid"].clone();
    c.ok(d, &["bdev_nvme_reset_controller", "Nv"]);
    let after = c.json(d, &["bdev_nvme_get_controllers", "-n", "Nv"]);
    assert_eq!(after[0]["ctrlrs"][0]["state"], "enabled", "{after}");
    assert_ne!(after[0]["ctrlrs"][0]["cntlid"], cntlid, "{after}");
    let health = c.json(d, &["bdev_nvme_get_controller_health_info", "-c", "Nv"]);
    assert_eq!((&health["critical_warning"], &health["traddr"]), (&json!(0), &json!("127.0.0.1")), "{health}");
    assert!(health["power_on_hours"].is_u64() && health["model_number"] == "Ferry", "{health}");
    let missing = c.refused(d, &["bdev_nvme_reset_controller", "NoSuch"]);
    assert_eq!(missing.message, "Controller NoSuch does not exist");
    let bad = c.refused(d, &["bdev_nvme_attach_controller", "-b", "P", "-t", "pcie", "-a", "00:zz.0"]);
    assert_eq!(bad.code, -32602, "{}", bad.message);
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "Nvn5"}))[0]["num_blocks"], 8 * 2048);
    c.ok(d, &["bdev_nvme_detach_controller", "Nv"]);
    assert!(d.err("bdev_get_bdevs", json!({"name": "Nvn1"})).message.contains("Nvn1"));

    c.ok(d, &["nvmf_subsystem_remove_listener", "discovery", "-t", "tcp", "-a", "127.0.0.1", "-s", &port]);
    c.ok(d, &["nvmf_subsystem_remove_listener", NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", &port]);
    c.ok(d, &["nvmf_subsystem_remove_host", NQN, HOST]);
    c.ok(d, &["nvmf_subsystem_remove_ns", NQN, "5"]);
    c.ok(d, &["nvmf_delete_subsystem", NQN]);
    assert_eq!(c.json(d, &["nvmf_get_subsystems"]).as_array().unwrap().len(), 1);
    for m in ["NM0", "NM1"] {
        c.ok(d, &["bdev_malloc_delete", m]);
    }
}

/// The `bdev_raid_*` methods through rpc.py: create (level aliases, the quoted base list),
/// get by category, remove and add back a raid1 member (rebuilt), delete; SPDK's errors.
fn raid(c: &SpdkClient, d: &Ferryd) {
    for m in ["RM0", "RM1", "RM2", "RM3"] {
        c.ok(d, &["bdev_malloc_create", "-b", m, "4", "512"]);
    }
    c.ok(d, &["bdev_raid_create", "-n", "R0", "-z", "64", "-r", "0", "-b", "RM0 RM1"]);
    c.ok(d, &["bdev_raid_create", "-n", "R1", "-r", "raid1", "-b", "RM2 RM3", "-s"]);
    let online = c.json(d, &["bdev_raid_get_bdevs", "online"]);
    let names: BTreeSet<&str> = online.as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, set(&["R0", "R1"]), "{online}");
    let r0 = online.as_array().unwrap().iter().find(|r| r["name"] == "R0").unwrap();
    assert_eq!(
        (&r0["raid_level"], &r0["strip_size_kb"], &r0["state"]),
        (&json!("raid0"), &json!(64), &json!("online"))
    );
    assert_eq!(c.json(d, &["bdev_raid_get_bdevs", "configuring"]), json!([]));
    assert_eq!(c.refused(d, &["bdev_raid_create", "-n", "X", "-z", "64", "-r", "1", "-b", "RM0 RM1"]).code, -22);
    c.ok(d, &["bdev_raid_remove_base_bdev", "RM3"]);
    c.ok(d, &["bdev_raid_add_base_bdev", "R1", "RM3"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r1 = c.json(d, &["bdev_raid_get_bdevs", "all"]);
        let r1 = r1.as_array().unwrap().iter().find(|r| r["name"] == "R1").unwrap().clone();
        if r1.get("process").is_none() && r1["num_base_bdevs_discovered"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "rebuild did not end: {r1}");
    }
    assert_eq!(c.refused(d, &["bdev_raid_delete", "nope"]).code, -19);
    // Rebuild and resync window and bandwidth (SPDK's option names and flags).
    c.ok(d, &["bdev_raid_set_options", "-w", "512", "-b", "10"]);
    let saved = c.json(d, &["save_config"]).to_string();
    assert!(saved.contains(r#""process_max_bandwidth_mb_sec":10"#), "saved: {saved}");
    assert_eq!(c.refused(d, &["bdev_raid_set_options", "-w", "0"]).code, -22);
    c.ok(d, &["bdev_raid_set_options", "-w", "1024", "-b", "0"]);
    c.ok(d, &["bdev_raid_delete", "R0"]);
    c.ok(d, &["bdev_raid_delete", "-c", "R1"]);
    for m in ["RM0", "RM1", "RM2", "RM3"] {
        c.ok(d, &["bdev_malloc_delete", m]);
    }
}

/// The split, passthru, delay and error-injection bdevs through rpc.py's own commands.
fn vbdevs(c: &SpdkClient, d: &Ferryd) {
    c.ok(d, &["bdev_malloc_create", "-b", "VM0", "8", "512"]);
    c.ok(d, &["bdev_malloc_create", "-b", "VM1", "8", "512"]);
    c.ok(d, &["bdev_malloc_create", "-b", "VM2", "8", "512"]);
    // rpc.py prints the names split_create returns on one line.
    assert_eq!(c.ok(d, &["bdev_split_create", "VM0", "2", "-s", "2"]).trim(), "VM0p0 VM0p1");
    assert_eq!(c.ok(d, &["bdev_passthru_create", "-b", "VM0p1", "-p", "VPT"]).trim(), "VPT");
    let pt = c.json(d, &["bdev_get_bdevs", "-b", "VPT"]);
    assert_eq!(pt[0]["driver_specific"]["passthru"]["base_bdev_name"], "VM0p1");
    assert_eq!(pt[0]["num_blocks"], 4096, "a 2 MiB part");
    c.ok(d, &["bdev_delay_create", "-b", "VM1", "-d", "VD", "-r", "10", "-t", "20", "-w", "30", "-n", "40"]);
    c.ok(d, &["bdev_delay_update_latency", "VD", "p99_write", "50"]);
    let dl = c.json(d, &["bdev_get_bdevs", "-b", "VD"]);
    assert_eq!(dl[0]["driver_specific"]["delay"]["p99_write_latency"], 50);
    c.ok(d, &["bdev_error_create", "VM2"]);
    c.ok(d, &["bdev_error_inject_error", "EE_VM2", "read", "pending", "-n", "2", "-q", "1"]);
    c.ok(
        d,
        &[
            "bdev_error_inject_error",
            "EE_VM2",
            "write",
            "corrupt_data",
            "--corrupt-offset",
            "3",
            "--corrupt-value",
            "7",
        ],
    );
    c.ok(d, &["bdev_error_inject_error", "EE_VM2", "clear", "failure"]);
    c.ok(d, &["bdev_error_resume_pending", "EE_VM2"]);
    let refused = c.refused(d, &["bdev_error_inject_error", "EE_VM2", "read", "corrupt_data"]);
    assert_eq!(refused.code, -22, "{}", refused.message);
    c.ok(d, &["bdev_error_delete", "EE_VM2"]);
    c.ok(d, &["bdev_delay_delete", "VD"]);
    c.ok(d, &["bdev_passthru_delete", "VPT"]);
    c.ok(d, &["bdev_split_delete", "VM0"]);
    for m in ["VM0", "VM1", "VM2"] {
        c.ok(d, &["bdev_malloc_delete", m]);
    }
}

/// Encryption keys and crypto bdevs through rpc.py's own commands and argument forms.
fn crypto(c: &SpdkClient, d: &Ferryd) {
    let (k1, k2) = ("00112233445566778899aabbccddeeff", "ffeeddccbbaa99887766554433221100");
    c.ok(d, &["accel_crypto_key_create", "-c", "AES_XTS", "-k", k1, "-e", k2, "-n", "ck"]);
    let listed = c.json(d, &["accel_crypto_keys_get", "-k", "ck"]);
    assert_eq!(listed, json!([{"name": "ck", "cipher": "AES_XTS", "key": k1, "key2": k2, "tweak_mode": "SIMPLE_LBA"}]));
    let e = c.refused(d, &["accel_crypto_key_create", "-c", "AES_XTS", "-k", k1, "-e", k1, "-n", "same"]);
    assert!(e.message.starts_with("failed to create DEK, rc -22"), "identical keys: {}", e.message);
    c.ok(d, &["bdev_malloc_create", "-b", "CB", "8", "512"]);
    assert_eq!(c.ok(d, &["bdev_crypto_create", "CB", "CR", "-n", "ck"]).trim(), "CR");
    let info = d.ok("bdev_get_bdevs", json!({"name": "CR"}));
    assert_eq!(info[0]["driver_specific"]["crypto"], json!({"base_bdev_name": "CB", "name": "CR", "key_name": "ck"}));
    c.ok(d, &["bdev_crypto_delete", "CR"]);
    c.ok(d, &["accel_crypto_key_destroy", "-n", "ck"]);
    assert_eq!(c.json(d, &["accel_crypto_keys_get"]), json!([]));
    c.ok(d, &["bdev_malloc_delete", "CB"]);
}

/// QoS: SPDK's `bdev_set_qos_limit` through rpc.py (its rounding and errors), Ferry's
/// `bdev_qos_group_*` extensions through SPDK's client library.
/// The RBD methods against a real Ceph cluster (`scripts/ceph-dev.sh`), with rpc.py's flags.
fn rbd(c: &SpdkClient, d: &Ferryd) {
    let cluster = common::ceph::CephCluster::up("spdk-rpc-rbd");
    cluster.create_image("disk0", 16);
    let (conf, keyring) = (cluster.conf().to_str().unwrap(), cluster.keyring().to_str().unwrap());
    let reg =
        ["bdev_rbd_register_cluster", "ceph0", "--config-file", conf, "--key-file", keyring, "--core-mask", "0x1"];
    assert_eq!(c.ok(d, &reg).trim(), "ceph0");
    let info = c.json(d, &["bdev_rbd_get_clusters_info", "-b", "ceph0"]);
    assert_eq!(info, json!({"cluster_name": "ceph0", "config_file": conf, "key_file": keyring, "core_mask": "0x1"}));
    let name = c.ok(d, &["bdev_rbd_create", "rbd", "disk0", "4096", "--cluster-name", "ceph0", "-b", "Rbd0"]);
    assert_eq!(name.trim(), "Rbd0");
    let mon = format!("mon_host={}", cluster.mon_addr());
    let key = format!("key={}", cluster.key());
    let name = c.ok(
        d,
        &["bdev_rbd_create", "rbd", "disk0", "512", "--user", "admin", "--config", &mon, "--config", &key, "-r"],
    );
    assert_eq!(name.trim(), "Ceph0", "SPDK's default name");
    let ro = &c.json(d, &["bdev_get_bdevs", "-b", "Ceph0"])[0];
    assert_eq!(
        (&ro["supported_io_types"]["write"], &ro["driver_specific"]["rbd"]["config"]["key"]),
        (&json!(false), &json!("***"))
    );
    c.ok(d, &["bdev_rbd_resize", "Rbd0", "32"]);
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "Rbd0"}))[0]["num_blocks"], 32 * 256);
    assert_eq!(c.refused(d, &["bdev_rbd_unregister_cluster", "ceph0"]).code, -16, "in use");
    c.ok(d, &["bdev_rbd_delete", "Rbd0"]);
    c.ok(d, &["bdev_rbd_delete", "Ceph0"]);
    c.ok(d, &["bdev_rbd_unregister_cluster", "ceph0"]);
}

fn qos(c: &SpdkClient, d: &Ferryd) {
    c.ok(d, &["bdev_malloc_create", "-b", "Q0", "8", "512"]);
    c.ok(d, &["bdev_set_qos_limit", "Q0", "--rw-ios-per-sec", "1500", "--r-mbytes-per-sec", "10"]);
    let limits = |c: &SpdkClient| c.json(d, &["bdev_get_bdevs", "-b", "Q0"])[0]["assigned_rate_limits"].clone();
    assert_eq!(
        limits(c),
        json!({"rw_ios_per_sec": 2000, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 10, "w_mbytes_per_sec": 0}),
        "rounded up to a multiple of 1000, as SPDK"
    );
    c.ok(d, &["bdev_set_qos_limit", "Q0", "--rw-ios-per-sec", "0"]);
    assert_eq!(limits(c)["rw_ios_per_sec"], 0);
    assert_eq!(limits(c)["r_mbytes_per_sec"], 10, "a limit not named is kept");
    let e = c.refused(d, &["bdev_set_qos_limit", "Q0"]);
    assert_eq!((e.code, e.message.as_str()), (-22, "No rate limits specified"));
    assert_eq!(c.refused(d, &["bdev_set_qos_limit", "nope", "--rw-ios-per-sec", "1000"]).code, -19);
    // Ferry's extensions.
    let group = json!({"name": "vm", "rw_ios_per_sec": 5000, "rw_ios_burst_per_sec": 10000});
    assert_eq!(c.library_call(d, "bdev_qos_group_create", &group), json!(true));
    c.library_call(d, "bdev_qos_group_set_limit", &json!({"name": "vm", "w_mbytes_per_sec": 20}));
    c.library_call(d, "bdev_qos_group_add_bdev", &json!({"name": "vm", "bdev_name": "Q0"}));
    let got = c.library_call(d, "bdev_qos_group_get", &json!({"name": "vm"}));
    assert_eq!((&got[0]["bdevs"], &got[0]["assigned_rate_limits"]["w_mbytes_per_sec"]), (&json!(["Q0"]), &json!(20)));
    c.library_call(d, "bdev_qos_group_remove_bdev", &json!({"name": "vm", "bdev_name": "Q0"}));
    c.library_call(d, "bdev_qos_group_delete", &json!({"name": "vm"}));
    c.ok(d, &["bdev_malloc_delete", "Q0"]);
}

#[test]
fn every_served_method_works_with_spdk_rpc() {
    let c = SpdkClient::new();
    let d = start(common::scratch_dir("spdk-rpc"), &[]);
    let served: BTreeSet<String> = serde_json::from_value(c.json(&d, &["rpc_get_methods"])).unwrap();
    framework(&c, &d);
    bdevs(&c, &d);
    vhost_and_iostat(&c, &d);
    configs(&c, &d);
    options(&c, &d);
    lvols(&c, &d);
    iscsi(&c, &d);
    nvmf(&c, &d);
    raid(&c, &d);
    vbdevs(&c, &d);
    crypto(&c, &d);
    qos(&c, &d);
    rbd(&c, &d);

    // framework_start_init: only before initialisation, where the start-up-only options go.
    let waiting = start(common::scratch_dir("spdk-wait"), &["--wait-for-rpc"]);
    c.ok(&waiting, &["iscsi_set_options", "-o", "30", "-n", "10", "-c", "1", "-i"]);
    assert!(c.refused(&waiting, &["iscsi_set_options"]).message.contains("more than once"), "as SPDK");
    c.ok(&waiting, &["framework_start_init"]);
    c.ok(&waiting, &["framework_wait_init"]);
    let opts = c.json(&waiting, &["iscsi_get_options"]);
    assert_eq!(
        (&opts["nop_timeout"], &opts["nop_in_interval"], &opts["immediate_data"]),
        (&json!(30), &json!(10), &json!(true))
    );

    // spdk_kill_instance: SIGTERM shuts the daemon down cleanly.
    let mut doomed = start(common::scratch_dir("spdk-kill"), &[]);
    c.ok(&doomed, &["spdk_kill_instance", "SIGTERM"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while doomed.is_running() {
        assert!(Instant::now() < deadline, "ferryd still runs after spdk_kill_instance SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(doomed.log_text().contains("shutting down"), "{}", doomed.log_text());

    let covered = c.covered.borrow();
    let missing: Vec<&String> = served.difference(&covered).collect();
    assert!(missing.is_empty(), "methods Ferry serves that SPDK's client did not drive here: {missing:?}");
}

/// A configuration as SPDK v26.09's `save_config` writes it (options of iobuf, sock, accel,
/// nvmf, iscsi, the scheduler, ...; batches of malloc and null creates; an aio bdev; vhost
/// controllers), with its file path pointed into `dir`.
fn spdk_saved_config(dir: &Path) -> PathBuf {
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spdk_client/spdk_tgt_saved_config.json");
    let text = std::fs::read_to_string(template).unwrap().replace("@SCRATCH@", dir.to_str().unwrap());
    std::fs::File::create(dir.join("aio0.img")).unwrap().set_len(32 << 20).unwrap();
    let path = dir.join("spdk_tgt.json");
    std::fs::write(&path, text).unwrap();
    path
}

/// What loading the saved SPDK configuration must have created.
fn assert_spdk_objects(d: &Ferryd) {
    let bdevs = d.ok("bdev_get_bdevs", Value::Null);
    let found: Vec<(&str, u64, u64)> = bdevs
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap(), b["block_size"].as_u64().unwrap(), b["num_blocks"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        found,
        [("Malloc0", 512, 131072), ("Malloc1", 4096, 8192), ("Null0", 512, 262144), ("AIO0", 512, 65536)]
    );
    assert_eq!(bdevs[0]["uuid"], "2d5c2b34-1f5e-4b7a-9f51-6c6f1b3e8a01");
    let ctrls = d.ok("vhost_get_controllers", Value::Null);
    let names: BTreeSet<&str> = ctrls.as_array().unwrap().iter().map(|c| c["ctrlr"].as_str().unwrap()).collect();
    assert_eq!(names, set(&["vhost.0", "vhost.1"]));
    let blk = d.ok("vhost_get_controllers", json!({"name": "vhost.0"}));
    assert_eq!((&blk[0]["delay_base_us"], &blk[0]["cpumask"]), (&json!(80), &json!("0x1")));
    let scsi = d.ok("vhost_get_controllers", json!({"name": "vhost.1"}));
    assert_eq!(scsi[0]["backend_specific"]["scsi"][0]["luns"][0]["bdev_name"], "Malloc1");
}

#[test]
fn a_configuration_saved_by_spdk_loads_with_rpc_py_and_ferryd_c() {
    let c = SpdkClient::new();
    let dir = common::scratch_dir("spdk-saved");
    let config = spdk_saved_config(&dir);
    let d = start(dir.clone(), &[]);
    let text = std::fs::read(&config).unwrap();
    c.ok_at(&d.sock, &["load_config"], Some(&text), &d);
    assert_spdk_objects(&d);
    drop(d);

    // As with `spdk_tgt --wait-for-rpc`: rpc.py replays what the start-up state allows, calls
    // framework_start_init, then replays the rest.
    let dir_w = common::scratch_dir("spdk-saved-w");
    let config_w = spdk_saved_config(&dir_w);
    let waiting = start(dir_w, &["--wait-for-rpc"]);
    c.ok_at(&waiting.sock, &["load_config"], Some(&std::fs::read(&config_w).unwrap()), &waiting);
    assert_spdk_objects(&waiting);
    assert!(c.covered.borrow().contains("framework_start_init"), "rpc.py's load_config started the framework");
    drop(waiting);

    let dir2 = common::scratch_dir("spdk-saved-c");
    let config2 = spdk_saved_config(&dir2);
    let d2 = start(dir2, &["-c", config2.to_str().unwrap()]);
    assert_spdk_objects(&d2);
    // Options of subsystems Ferry does not have were logged, not silently dropped.
    assert!(d2.log_text().contains("method=\"iobuf_set_options\""), "{}", d2.log_text());
}

#[test]
fn docs_state_the_spdk_version_of_the_installed_client() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/rpc.md")).unwrap();
    let stated = doc
        .split_once("Ferry's RPC matches SPDK v")
        .and_then(|(_, rest)| rest.split_once(", whose client is the `spdk` package "))
        .map(|(release, rest)| (release.to_string(), rest.split_whitespace().next().unwrap_or_default().to_string()))
        .expect("docs/rpc.md says \"Ferry's RPC matches SPDK vX.Y, whose client is the `spdk` package V\"");
    let out = Command::new(spdk_bin().join("python"))
        .args(["-c", "import importlib.metadata as m; print(m.version('spdk'))"])
        .output()
        .unwrap();
    let installed = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(stated.1, installed, "docs/rpc.md names a client version other than the installed one");
    assert_eq!(installed, pinned_version(), "scripts/spdk-client.sh pins another version");
    // The package's version drops the release's leading zero: v26.09 is 26.9.
    let (major, minor) = stated.0.split_once('.').unwrap();
    assert_eq!(format!("{major}.{}", minor.parse::<u32>().unwrap()), installed, "release and package disagree");
}

#[test]
fn spdk_cli_lists_and_creates_bdevs_and_controllers() {
    let d = start(common::scratch_dir("spdk-cli"), &[]);
    let cli = |args: &[&str]| -> String {
        let out = Command::new(spdk_bin().join("spdk-cli")).arg("-s").arg(&d.sock).args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && !text.contains("Traceback"), "spdk-cli {args:?}:\n{text}");
        text
    };
    assert_eq!(cli(&["/bdevs/malloc", "create", "32", "512", "MC0"]).trim(), "MC0");
    cli(&["/vhost/block", "create", "vb0", "MC0"]);
    let tree = cli(&["ls"]);
    for expect in ["malloc", "MC0", "Size=32.0M", "vb0"] {
        assert!(tree.contains(expect), "spdk-cli ls lacks {expect}:\n{tree}");
    }
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "MC0"}))[0]["claimed"], false, "vhost does not claim");
}

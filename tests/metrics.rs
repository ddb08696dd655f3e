//! The metrics endpoint against a real `ferryd`: scraped with curl, the text checked by
//! Prometheus' own `promtool check metrics` and parsed by the reference Python client's parser
//! (`scripts/metrics/parse.py`), with I/O driven through vhost-user-blk by Ferry's initiator;
//! and scrapers that stay silent, trickle, flood or send garbage.
//!
//! Needs `bash scripts/metrics/setup.sh` (run by `scripts/setup.sh`): curl, promtool and
//! prometheus_client in `target/tools`.

mod common;

use common::Ferryd;
use ferry::metrics::connection::CONNECTION_BUDGET;
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::{Client, Options, Request};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where scripts/metrics/setup.sh put the tools (running it first if they are missing: it is
/// idempotent and installs only what is not there).
fn tools() -> PathBuf {
    let dir = std::env::var_os("FERRY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools"));
    if !dir.join("promtool").exists() || !dir.join("venv/bin/python").exists() {
        common::install_tools("scripts/metrics/setup.sh");
    }
    assert!(
        dir.join("promtool").exists() && dir.join("venv/bin/python").exists(),
        "{} lacks promtool or the prometheus_client venv: run `bash scripts/metrics/setup.sh`",
        dir.display()
    );
    dir
}

/// One `curl` call; returns (status code, headers, body).
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-D", "/dev/stderr", "-o", "-"])
        .args(args)
        .output()
        .expect("run curl (scripts/metrics/setup.sh installs it)");
    let headers = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "curl {args:?} failed: {headers}");
    let code = headers
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line from curl {args:?}: {headers}"));
    (code, headers, String::from_utf8(out.stdout).expect("the answer is UTF-8"))
}

/// Where a daemon serves metrics.
enum At<'a> {
    Unix(&'a Path),
    Tcp(u16),
}

/// Scrapes `/metrics`, checks the answer's status and content type, and has promtool check it.
fn scrape(at: &At) -> String {
    let (code, headers, body) = match at {
        At::Unix(sock) => curl(&["--unix-socket", sock.to_str().unwrap(), "http://localhost/metrics"]),
        At::Tcp(port) => curl(&[&format!("http://127.0.0.1:{port}/metrics")]),
    };
    assert_eq!(code, 200, "{headers}{body}");
    assert!(
        headers.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{headers}"
    );
    promtool_check(&body);
    body
}

/// Runs `cmd` with `text` on its standard input.
fn fed(cmd: &mut Command, text: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// `promtool check metrics`: Prometheus' parser and its lint of naming conventions (units,
/// `_total` on counters, help text, ...). Any finding fails.
fn promtool_check(text: &str) {
    let out = fed(Command::new(tools().join("promtool")).args(["check", "metrics"]), text);
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n--- document ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The families of `text` as prometheus_client parses them.
fn parse(text: &str) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/metrics/parse.py");
    let out = fed(Command::new(tools().join("venv/bin/python")).arg(script), text);
    assert!(out.status.success(), "prometheus_client refused the document: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A parsed scrape.
struct Scrape(Vec<Value>);

impl Scrape {
    fn of(at: &At) -> Scrape {
        Scrape(parse(&scrape(at)))
    }

    fn family(&self, name: &str) -> &Value {
        self.0.iter().find(|f| f["name"] == name).unwrap_or_else(|| panic!("no family {name}"))
    }

    /// The value of the one sample `name` with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let found: Vec<f64> = self
            .0
            .iter()
            .flat_map(|f| f["samples"].as_array().unwrap())
            .filter(|s| s["name"] == name && s["labels"].as_object() == Some(&want))
            .map(|s| s["value"].as_f64().unwrap_or(f64::INFINITY))
            .collect();
        assert_eq!(found.len(), 1, "samples {name}{labels:?}: {found:?}");
        found[0]
    }

    /// The sum of every sample `name` (over all labels).
    fn total(&self, name: &str) -> f64 {
        self.0
            .iter()
            .flat_map(|f| f["samples"].as_array().unwrap())
            .filter(|s| s["name"] == name)
            .map(|s| s["value"].as_f64().unwrap())
            .sum()
    }

    /// The cumulative bucket counts of one histogram, in `le` order.
    fn buckets(&self, family: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let name = format!("{family}_bucket");
        let mut out: Vec<(f64, f64)> = self.family(family)["samples"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == name.as_str())
            .filter(|s| labels.iter().all(|(k, v)| s["labels"][k] == *v))
            .map(|s| (s["labels"]["le"].as_str().unwrap().parse::<f64>().unwrap(), s["value"].as_f64().unwrap()))
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

fn start(extra: &[&str]) -> (Ferryd, PathBuf) {
    let dir = common::scratch_dir("metrics");
    let sock = dir.join("metrics.sock");
    let metrics = format!("unix:{}", sock.display());
    let d = Ferryd::start_in(
        dir.clone(),
        &[&["-m", "0x3", "-S", dir.to_str().unwrap(), "--metrics-addr", &metrics], extra].concat(),
    );
    (d, sock)
}

fn connect(sock: &Path, queues: u16) -> Client {
    Client::connect(sock, &Options { num_queues: queues, queue_size: 64, mem_size: 4 << 20, hugetlbfs: None })
        .expect("connect to the controller")
}

const FAMILIES: &[(&str, &str)] = &[
    ("ferry_reactor_busy_seconds", "counter"),
    ("ferry_reactor_idle_seconds", "counter"),
    ("ferry_reactor_pollers", "gauge"),
    ("ferry_bdev_ops", "counter"),
    ("ferry_bdev_bytes", "counter"),
    ("ferry_bdev_io_errors", "counter"),
    ("ferry_bdev_io_duration_seconds", "histogram"),
    ("ferry_vhost_controller_connected", "gauge"),
    ("ferry_vhost_queue_requests", "counter"),
    ("ferry_vhost_queue_inflight", "gauge"),
];

#[test]
fn counters_histograms_and_queues_move_with_vhost_io_and_pass_promtool() {
    let (d, sock) = start(&[]);
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 16384, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "c0", "dev_name": "M"}));
    let at = At::Unix(&sock);
    let before = Scrape::of(&at);
    for (name, kind) in FAMILIES {
        assert_eq!(before.family(name)["type"], *kind, "{name}");
        assert!(!before.family(name)["help"].as_str().unwrap().is_empty(), "{name} has help");
    }
    assert_eq!(before.value("ferry_vhost_controller_connected", &[("ctrlr", "c0")]), 0.0);
    assert_eq!(before.value("ferry_bdev_ops_total", &[("bdev", "M"), ("type", "write")]), 0.0);
    for r in ["0", "1"] {
        before.value("ferry_reactor_busy_seconds_total", &[("reactor", r), ("core", r)]);
    }

    // 5 writes of 4 KiB through queue 0, 3 reads of 8 KiB through queue 1.
    let mut c = connect(&d.dir.join("c0"), 2);
    let mem = c.mem().clone();
    let buf = mem.alloc(8192, 4096).unwrap();
    mem.write(buf, &[0x5a; 8192]);
    for i in 0..5u64 {
        c.queue(0).submit(&Request::Write { sector: 8 * i, bufs: &[(buf, 4096)] }, i).unwrap();
    }
    c.queue(0).kick();
    assert!(common::wait_completions(&mut c, 0, 5).iter().all(|x| x.status == status::OK));
    for i in 0..3u64 {
        c.queue(1).submit(&Request::Read { sector: 16 * i, bufs: &[(buf, 8192)] }, i).unwrap();
    }
    c.queue(1).kick();
    assert!(common::wait_completions(&mut c, 1, 3).iter().all(|x| x.status == status::OK));

    let after = Scrape::of(&at);
    let m = |t| [("bdev", "M"), ("type", t)];
    assert_eq!(after.value("ferry_bdev_ops_total", &m("write")), 5.0);
    assert_eq!(after.value("ferry_bdev_bytes_total", &m("write")), 5.0 * 4096.0);
    assert_eq!(after.value("ferry_bdev_ops_total", &m("read")), 3.0);
    assert_eq!(after.value("ferry_bdev_bytes_total", &m("read")), 3.0 * 8192.0);
    assert_eq!(after.value("ferry_bdev_io_errors_total", &[("bdev", "M")]), 0.0);
    for (kind, n) in [("write", 5.0), ("read", 3.0), ("unmap", 0.0)] {
        let buckets = after.buckets("ferry_bdev_io_duration_seconds", &m(kind));
        assert_eq!(buckets.len(), 26, "{kind}: {buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{kind}: cumulative: {buckets:?}");
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, n), "{kind}: +Inf bucket");
        assert_eq!(after.value("ferry_bdev_io_duration_seconds_count", &m(kind)), n, "{kind}");
        let sum = after.value("ferry_bdev_io_duration_seconds_sum", &m(kind));
        assert_eq!(sum > 0.0, n > 0.0, "{kind}: sum {sum}");
    }
    let q = |i| [("ctrlr", "c0"), ("queue", i)];
    assert_eq!(after.value("ferry_vhost_controller_connected", &[("ctrlr", "c0")]), 1.0);
    assert_eq!(after.value("ferry_vhost_queue_requests_total", &q("0")), 5.0);
    assert_eq!(after.value("ferry_vhost_queue_requests_total", &q("1")), 3.0);
    assert_eq!(after.value("ferry_vhost_queue_inflight", &q("0")), 0.0);
    assert!(
        after.total("ferry_reactor_busy_seconds_total") > before.total("ferry_reactor_busy_seconds_total"),
        "the reactors did work"
    );
    assert!(after.total("ferry_reactor_idle_seconds_total") >= before.total("ferry_reactor_idle_seconds_total"));
    // The queues' poller on each reactor.
    assert!(after.value("ferry_reactor_pollers", &[("reactor", "0"), ("core", "0"), ("kind", "active")]) >= 1.0);

    // A new memory table restarts the queues: their counts go on.
    let extra = c.add_region(64 << 20, 1 << 20).expect("ADD_MEM_REG");
    drop(extra);
    c.queue(0).submit(&Request::Write { sector: 0, bufs: &[(buf, 4096)] }, 9).unwrap();
    c.queue(0).kick();
    common::wait_completions(&mut c, 0, 1);
    let later = Scrape::of(&at);
    assert_eq!(later.value("ferry_vhost_queue_requests_total", &q("0")), 6.0);
    assert_eq!(later.value("ferry_bdev_ops_total", &m("write")), 6.0);
}

#[test]
fn the_inflight_gauge_shows_requests_a_stopped_backend_holds() {
    let (back, back_dir) = common::held_backend("metrics-held");
    let (d, sock) = start(&[]);
    common::attach_held(&d, &back_dir, "V");
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "c1", "dev_name": "V", "cpumask": "0x1"}));
    let mut c = connect(&d.dir.join("c1"), 1);
    let mem = c.mem().clone();
    let buf = mem.alloc(4096, 4096).unwrap();
    common::signal_and_wait(back.pid(), libc::SIGSTOP, true);
    for i in 0..3u64 {
        c.queue(0).submit(&Request::Write { sector: i * 8, bufs: &[(buf, 4096)] }, i).unwrap();
    }
    c.queue(0).kick();
    let at = At::Unix(&sock);
    let q = [("ctrlr", "c1"), ("queue", "0")];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = Scrape::of(&at);
        let inflight = s.value("ferry_vhost_queue_inflight", &q);
        if inflight == 3.0 {
            assert_eq!(s.value("ferry_vhost_queue_requests_total", &q), 0.0);
            break;
        }
        assert!(Instant::now() < deadline, "inflight stayed at {inflight}");
        std::thread::sleep(Duration::from_millis(20));
    }
    common::signal_and_wait(back.pid(), libc::SIGCONT, false);
    common::wait_completions(&mut c, 0, 3);
    let s = Scrape::of(&at);
    assert_eq!(s.value("ferry_vhost_queue_inflight", &q), 0.0);
    assert_eq!(s.value("ferry_vhost_queue_requests_total", &q), 3.0);
    assert_eq!(s.value("ferry_bdev_ops_total", &[("bdev", "V"), ("type", "write")]), 3.0);
}

/// The TCP port a daemon's log says the endpoint took.
fn tcp_port(d: &Ferryd) -> u16 {
    // Answered only once the daemon serves RPC, after the endpoint started.
    d.ok("spdk_get_version", Value::Null);
    let log = d.log_text();
    let line = log.lines().find(|l| l.contains("metrics endpoint listening")).expect("the endpoint's log line");
    line.rsplit("127.0.0.1:").next().unwrap().trim().parse().unwrap_or_else(|_| panic!("no port in {line}"))
}

/// Sends `bytes` on a new connection and returns everything the server says before closing.
fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("the server answers and closes");
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or("")
}

#[test]
fn hostile_scrapers_cost_only_their_own_connection() {
    let dir = common::scratch_dir("metrics-tcp");
    let d = Ferryd::start_in(dir.clone(), &["-S", dir.to_str().unwrap(), "--metrics-addr", "127.0.0.1:0"]);
    let port = tcp_port(&d);
    let at = At::Tcp(port);

    // Silent, trickling and half-sent connections, held open (each until its budget, which
    // starts when the server accepts it, after this).
    let held_since = Instant::now();
    let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut trickle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    trickle.write_all(b"GET /met").unwrap();
    // Meanwhile scrapes and RPC are answered.
    scrape(&at);
    d.ok("bdev_get_bdevs", Value::Null);

    // Refusals, each with its status, then the connection closes.
    assert_eq!(status_of(&raw(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")), "405");
    assert!(raw(port, b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n").contains("Allow: GET, HEAD\r\n"));
    assert_eq!(status_of(&raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")), "404");
    assert_eq!(status_of(&raw(port, b"GET /metrics HTTP/1.1\r\n\r\n")), "400", "no Host");
    assert_eq!(status_of(&raw(port, b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n")), "505");
    let garbage: Vec<u8> = (0..4000u32).map(|i| (i * 7919 % 251) as u8).chain(*b"\r\n\r\n").collect();
    assert_eq!(status_of(&raw(port, &garbage)), "400");
    // A head that does not end within the limit (8 KiB) is answered once it passes it.
    let endless = [&b"GET /metrics HTTP/1.1\r\nX: "[..], &[b'a'; 12 * 1024]].concat();
    assert_eq!(status_of(&raw(port, &endless)), "431");
    assert_eq!(status_of(&raw(port, &[b'\n'; 64])), "400");
    // HEAD: the headers alone.
    let head = raw(port, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"), "{head}");
    // A request followed by more bytes (a body, pipelined requests) gets its whole answer:
    // the server reads what follows until the client closes, so unread bytes do not turn
    // its close into a reset that would destroy the answer in flight.
    let pipelined = [&b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[b'x'; 32 * 1024]].concat();
    let answer = raw(port, &pipelined);
    assert_eq!(status_of(&answer), "200");
    let length: usize = answer
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    assert_eq!(answer.split_once("\r\n\r\n").unwrap().1.len(), length, "the whole body");

    // At the connection limit (32) more are answered 503 at once, and those let in are
    // closed when their time budget runs out: 40 connections where at most 32 fit leave at
    // least 10 refused while the silent and trickling ones hold their places, each either
    // refused or closed unanswered. Those two are sure to hold them when the crowd came well
    // inside their budget; on a machine slow enough to have spent most of it, they may be gone
    // and only the limit's own 8 refusals are sure.
    let crowd: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let holders_in_place = held_since.elapsed() < CONNECTION_BUDGET / 3;
    let answers: Vec<String> = crowd
        .into_iter()
        .map(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).expect("the server closes every connection");
            String::from_utf8_lossy(&answer).into_owned()
        })
        .collect();
    let refused = answers.iter().filter(|a| status_of(a) == "503").count();
    let timed_out = answers.iter().filter(|a| a.is_empty()).count();
    assert_eq!(refused + timed_out, 40, "{answers:?}");
    let least = if holders_in_place { 10 } else { 8 };
    assert!(refused >= least && timed_out > 0, "{refused} refused (at least {least}), {timed_out} closed unanswered");

    // The silent connection was closed the same way; the trickling one too. Scrapes go on.
    let mut silent = silent;
    silent.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut rest = Vec::new();
    silent.read_to_end(&mut rest).expect("the server closes a silent connection");
    assert!(rest.is_empty(), "nothing is said to a silent client: {rest:?}");
    let mut rest = Vec::new();
    trickle.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    trickle.read_to_end(&mut rest).expect("the server closes a trickling connection");
    assert!(rest.is_empty(), "{rest:?}");
    scrape(&at);

    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
    d.ok("spdk_get_version", Value::Null);
}

#[test]
fn metrics_are_off_unless_asked_for() {
    let d = Ferryd::start(&[]);
    let out = Command::new("ss").args(["-Hltnp"]).output().expect("ss (iproute2)");
    let listening = String::from_utf8_lossy(&out.stdout);
    assert!(!listening.contains(&format!("pid={},", d.pid())), "ferryd listens on TCP:\n{listening}");
    assert!(!d.log_text().contains("metrics endpoint"), "{}", d.log_text());
    // And a non-loopback address is refused up front.
    let dir = common::scratch_dir("metrics-remote");
    let out = Command::new(env!("CARGO_BIN_EXE_ferryd"))
        .args(["--no-pin", "-r", dir.join("r.sock").to_str().unwrap(), "--metrics-addr", "0.0.0.0:9100"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}

//! The split, passthru, delay and error-injection bdevs against a real `ferryd`: every RPC
//! with SPDK's parameters, errors and `driver_specific`, stacks several modules deep saved by
//! `save_config` and replayed (in a second daemon and in `ferry-bdevperf`, whose `verify`
//! workload checks the data through every module), creation deferred until the base appears,
//! hot-removal of a base while I/O runs, and error injection seen by a frontend.

mod common;

use common::{Ferryd, RpcErr};
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::{Client, Options, Request};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn start() -> Ferryd {
    let dir = common::scratch_dir("vbdev");
    Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()])
}

fn malloc(d: &Ferryd, name: &str, mib: u64) {
    d.ok("bdev_malloc_create", json!({"name": name, "num_blocks": mib * 256, "block_size": 4096}));
}

fn bdev(d: &Ferryd, name: &str) -> Value {
    d.ok("bdev_get_bdevs", json!({"name": name}))[0].clone()
}

fn names(d: &Ferryd) -> Vec<String> {
    let all = d.ok("bdev_get_bdevs", json!({}));
    all.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap().to_string()).collect()
}

fn exists(d: &Ferryd, name: &str) -> bool {
    names(d).iter().any(|n| n == name)
}

/// The `bdev` subsystem's entries of `save_config`.
fn saved_bdev_config(d: &Ferryd) -> Value {
    let cfg = d.ok("save_config", json!({}));
    let subsystems = cfg["subsystems"].as_array().unwrap();
    subsystems.iter().find(|s| s["subsystem"] == "bdev").unwrap()["config"].clone()
}

/// Runs `ferry-bdevperf -w verify` on the unclaimed bdevs of config `doc` (the tops of its
/// stacks) and returns its JSON summary, after checking every target ran without error.
fn verify(doc: &Value, expect_targets: &[&str]) -> Value {
    let dir = common::scratch_dir("vbdev-verify");
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec(doc).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-bdevperf"))
        .args(["-c", path.to_str().unwrap(), "--no-pin", "-m", "0x3", "-w", "verify", "-q", "32"])
        .args(["-o", "4096", "-t", "1", "--json-summary"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "verify failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["miscompares"], 0, "{stdout}");
    assert_eq!(summary["errors"], 0, "{stdout}");
    for t in expect_targets {
        assert_eq!(stdout.lines().filter(|l| l.starts_with(t)).count(), 2, "{t} ran on both reactors:\n{stdout}");
    }
    assert_eq!(summary["jobs"], 2 * expect_targets.len(), "only the stacks' tops ran:\n{stdout}");
    summary
}

#[test]
fn passthru_on_split_on_malloc_is_saved_replayed_and_verified() {
    let d = start();
    malloc(&d, "Malloc0", 16);
    let parts = d.ok("bdev_split_create", json!({"base_bdev": "Malloc0", "split_count": 4}));
    assert_eq!(parts, json!(["Malloc0p0", "Malloc0p1", "Malloc0p2", "Malloc0p3"]));
    assert_eq!(d.ok("bdev_passthru_create", json!({"name": "PT0", "base_bdev_name": "Malloc0p1"})), json!("PT0"));
    let p1 = bdev(&d, "Malloc0p1");
    assert_eq!(p1["num_blocks"], 1024);
    assert_eq!(p1["product_name"], "Split Disk");
    assert_eq!(p1["driver_specific"]["split"], json!({"base_bdev": "Malloc0", "offset_blocks": 1024}));
    assert_eq!(p1["claimed"], true);
    let pt = bdev(&d, "PT0");
    assert_eq!(pt["driver_specific"]["passthru"], json!({"name": "PT0", "base_bdev_name": "Malloc0p1"}));
    assert_eq!(pt["product_name"], "passthru");
    assert_eq!(pt["num_blocks"], 1024);
    assert_eq!(bdev(&d, "Malloc0")["claimed"], true);

    let saved = saved_bdev_config(&d);
    let methods: Vec<&str> = saved.as_array().unwrap().iter().filter_map(|e| e["method"].as_str()).collect();
    let pos = |m: &str| methods.iter().position(|x| *x == m).unwrap_or_else(|| panic!("{m} saved: {methods:?}"));
    assert!(pos("bdev_malloc_create") < pos("bdev_split_create"));
    assert!(pos("bdev_split_create") < pos("bdev_passthru_create"));
    assert_eq!(methods.iter().filter(|m| **m == "bdev_split_create").count(), 1, "one entry per split base");

    // Replayed in a second daemon: the same bdevs, the same uuid for the passthru bdev.
    let dir = common::scratch_dir("vbdev-replay");
    let file = common::write_config(&dir, "c.json", saved.clone());
    let d2 = Ferryd::start_in(dir.clone(), &["-m", "0x1", "-c", file.to_str().unwrap()]);
    assert_eq!(bdev(&d2, "PT0")["uuid"], pt["uuid"]);
    assert_eq!(bdev(&d2, "Malloc0p3")["driver_specific"]["split"]["offset_blocks"], 3072);

    // And in bdevperf: data written through passthru-on-split and the other parts reads back.
    let doc = json!({"subsystems": [{"subsystem": "bdev", "config": saved}]});
    verify(&doc, &["PT0", "Malloc0p0", "Malloc0p2", "Malloc0p3"]);
}

#[track_caller]
fn expect_err(d: &Ferryd, method: &str, params: Value, code: i64, text: &str) -> RpcErr {
    let e = d.err(method, params.clone());
    assert_eq!(e.code, code, "{method} {params}: {e:?}");
    assert!(e.message.contains(text), "{method} {params}: {:?} lacks {text:?}", e.message);
    e
}

#[test]
fn bad_creates_get_spdk_errors_and_leave_nothing_behind() {
    let d = start();
    malloc(&d, "M0", 4);
    malloc(&d, "M1", 4);
    let before = names(&d);
    // Missing, unknown and wrongly typed parameters.
    for (m, p) in [
        ("bdev_passthru_create", json!({"name": "P"})),
        ("bdev_passthru_create", json!({"base_bdev_name": "M0"})),
        ("bdev_passthru_create", json!({"name": "P", "base_bdev_name": "M0", "bogus": 1})),
        ("bdev_split_create", json!({"base_bdev": "M0"})),
        ("bdev_split_create", json!({"base_bdev": "M0", "split_count": -1})),
        ("bdev_error_create", json!({})),
        ("bdev_error_create", json!({"base_name": "M0", "uuid": "nope"})),
        ("bdev_delay_create", json!({"name": "D", "base_bdev_name": "M0", "avg_read_latency": 1})),
        ("bdev_delay_update_latency", json!({"delay_bdev_name": "D", "latency_type": "median", "latency_us": 1})),
        ("bdev_error_inject_error", json!({"name": "EE_M0", "io_type": "sideways", "error_type": "failure"})),
        ("bdev_error_inject_error", json!({"name": "EE_M0", "io_type": "read", "error_type": "explode"})),
    ] {
        expect_err(&d, m, p, -32602, "");
    }
    // Values SPDK refuses.
    expect_err(
        &d,
        "bdev_split_create",
        json!({"base_bdev": "M0", "split_count": 0}),
        -32602,
        "Failed to create 0 split bdevs from 'M0': Invalid argument",
    );
    expect_err(
        &d,
        "bdev_split_create",
        json!({"base_bdev": "M0", "split_count": 2, "split_size_mb": 5}),
        -32602,
        "Failed to create 2 split bdevs from 'M0'",
    );
    let lat = json!({"name": "D", "base_bdev_name": "M0", "avg_read_latency": 10, "p99_read_latency": 5, "avg_write_latency": 1, "p99_write_latency": 1});
    expect_err(&d, "bdev_delay_create", lat, -22, "p99 latency is less than average latency");
    assert_eq!(names(&d), before, "nothing created");
    assert_eq!(bdev(&d, "M0")["claimed"], false, "no claim left behind");

    // A claimed base: every module refuses it with EPERM, and leaves no configuration.
    d.ok("bdev_passthru_create", json!({"name": "P0", "base_bdev_name": "M0"}));
    expect_err(&d, "bdev_passthru_create", json!({"name": "P1", "base_bdev_name": "M0"}), -1, "claimed");
    expect_err(
        &d,
        "bdev_split_create",
        json!({"base_bdev": "M0", "split_count": 2}),
        -32602,
        "Operation not permitted",
    );
    expect_err(&d, "bdev_error_create", json!({"base_name": "M0"}), -1, "Operation not permitted");
    let lat = json!({"name": "D", "base_bdev_name": "M0", "avg_read_latency": 1, "p99_read_latency": 1, "avg_write_latency": 1, "p99_write_latency": 1});
    expect_err(&d, "bdev_delay_create", lat.clone(), -1, "claimed");
    // Duplicates.
    expect_err(&d, "bdev_passthru_create", json!({"name": "P0", "base_bdev_name": "M1"}), -17, "already exists");
    d.ok("bdev_split_create", json!({"base_bdev": "M1", "split_count": 2}));
    expect_err(&d, "bdev_split_create", json!({"base_bdev": "M1", "split_count": 2}), -32602, "File exists");
    // Unknown names on delete and inject.
    expect_err(&d, "bdev_passthru_delete", json!({"name": "nope"}), -19, "");
    expect_err(&d, "bdev_split_delete", json!({"base_bdev": "nope"}), -32602, "No such file or directory");
    expect_err(&d, "bdev_error_delete", json!({"name": "nope"}), -19, "No such device");
    expect_err(&d, "bdev_delay_delete", json!({"name": "nope"}), -19, "");
    expect_err(
        &d,
        "bdev_error_inject_error",
        json!({"name": "M1p0", "io_type": "read", "error_type": "failure"}),
        -19,
        "No such device",
    );
    expect_err(&d, "bdev_error_resume_pending", json!({"name": "nope"}), -19, "No such device");
    expect_err(
        &d,
        "bdev_delay_update_latency",
        json!({"delay_bdev_name": "P0", "latency_type": "avg_read", "latency_us": 1}),
        -32602,
        "does not exist",
    );
    expect_err(&d, "bdev_passthru_delete", json!({"name": "M1p0"}), -32602, "not a passthru bdev");

    // The refused creations left nothing: after the passthru goes, every module can take M0.
    d.ok("bdev_passthru_delete", json!({"name": "P0"}));
    assert_eq!(bdev(&d, "M0")["claimed"], false, "delete released the claim");
    d.ok("bdev_error_create", json!({"base_name": "M0"}));
    expect_err(
        &d,
        "bdev_error_inject_error",
        json!({"name": "EE_M0", "io_type": "read", "error_type": "corrupt_data"}),
        -22,
        "corrupt_value",
    );
    expect_err(
        &d,
        "bdev_error_inject_error",
        json!({"name": "EE_M0", "io_type": "read", "error_type": "nvme_failure"}),
        -22,
        "nvme_sct",
    );
    expect_err(
        &d,
        "bdev_error_inject_error",
        json!({"name": "EE_M0", "io_type": "read", "error_type": "failure", "nvme_sc": 2}),
        -22,
        "nvme_sct",
    );
    assert_eq!(bdev(&d, "EE_M0")["driver_specific"]["error_disk"], json!({"base_bdev": "M0"}));
    d.ok("bdev_error_delete", json!({"name": "EE_M0"}));
    d.ok("bdev_delay_create", lat);
    d.ok("bdev_delay_delete", json!({"name": "D"}));
    d.ok("bdev_split_delete", json!({"base_bdev": "M1"}));
    assert_eq!(names(&d), before, "everything deleted");
    assert_eq!(bdev(&d, "M1")["claimed"], false);
}

#[test]
fn created_before_their_base_they_appear_with_it_and_return_after_hot_remove() {
    let d = start();
    assert_eq!(d.ok("bdev_passthru_create", json!({"name": "P", "base_bdev_name": "L1"})), json!("P"));
    assert_eq!(d.ok("bdev_split_create", json!({"base_bdev": "L2", "split_count": 2})), json!([]));
    assert_eq!(d.ok("bdev_error_create", json!({"base_name": "L3"})), json!(true));
    let lat = json!({"name": "D", "base_bdev_name": "L4", "avg_read_latency": 1, "p99_read_latency": 2, "avg_write_latency": 3, "p99_write_latency": 4});
    assert_eq!(d.ok("bdev_delay_create", lat), json!("D"));
    assert!(names(&d).is_empty(), "nothing yet: {:?}", names(&d));
    for b in ["L1", "L2", "L3", "L4"] {
        malloc(&d, b, 4);
    }
    for v in ["P", "L2p0", "L2p1", "EE_L3", "D"] {
        assert!(exists(&d, v), "{v} appeared with its base");
    }
    let dl = bdev(&d, "D")["driver_specific"]["delay"].clone();
    assert_eq!(dl["avg_write_latency"], 3);
    assert_eq!(dl["base_bdev_name"], "L4");
    let uuid = bdev(&d, "P")["uuid"].clone();
    // Hot-remove: the virtual bdevs go; passthru, split and delay keep their configuration
    // and come back with the base (as SPDK's), error's goes with it (as SPDK's destruct).
    for b in ["L1", "L2", "L3", "L4"] {
        d.ok("bdev_malloc_delete", json!({"name": b}));
    }
    assert!(names(&d).is_empty(), "unwound: {:?}", names(&d));
    for b in ["L1", "L2", "L3", "L4"] {
        malloc(&d, b, 4);
    }
    for v in ["P", "L2p0", "L2p1", "D"] {
        assert!(exists(&d, v), "{v} came back with its base");
    }
    assert!(!exists(&d, "EE_L3"));
    assert_eq!(bdev(&d, "L3")["claimed"], false);
    // A uuid derived from the base's (SPDK's v5 scheme): a new base, a new uuid.
    assert_ne!(bdev(&d, "P")["uuid"], uuid);
}

#[test]
fn error_on_delay_on_malloc_is_saved_replayed_and_verified() {
    let d = start();
    malloc(&d, "Malloc0", 8);
    let lat = json!({"name": "Delay0", "base_bdev_name": "Malloc0", "avg_read_latency": 20, "p99_read_latency": 200,
                     "avg_write_latency": 30, "p99_write_latency": 300});
    d.ok("bdev_delay_create", lat);
    d.ok("bdev_error_create", json!({"base_name": "Delay0"}));
    d.ok(
        "bdev_delay_update_latency",
        json!({"delay_bdev_name": "Delay0", "latency_type": "p99_write", "latency_us": 400}),
    );
    let dl = bdev(&d, "Delay0")["driver_specific"]["delay"].clone();
    assert_eq!(dl["p99_write_latency"], 400);
    assert_eq!(dl["avg_read_latency"], 20);
    assert_eq!(dl["name"], "Delay0");
    let saved = saved_bdev_config(&d);
    let delay = saved.as_array().unwrap().iter().find(|e| e["method"] == "bdev_delay_create").unwrap();
    assert_eq!(delay["params"]["p99_write_latency"], 400, "the live value is saved");
    let doc = json!({"subsystems": [{"subsystem": "bdev", "config": saved}]});
    verify(&doc, &["EE_Delay0"]);
}

/// A vhost-user-blk frontend on one queue.
struct Blk {
    c: Client,
    buf: u64,
    tag: u64,
}

impl Blk {
    fn open(d: &Ferryd, ctrlr: &str, bdev: &str) -> Blk {
        d.ok("vhost_create_blk_controller", json!({"ctrlr": ctrlr, "dev_name": bdev}));
        Blk::connect(&d.dir.join(ctrlr))
    }

    fn connect(sock: &Path) -> Blk {
        let opts = Options { num_queues: 1, queue_size: 128, mem_size: 8 << 20, hugetlbfs: None };
        let c = Client::connect(sock, &opts).expect("connect to the controller");
        let buf = c.mem().alloc(4 << 20, 4096).unwrap();
        Blk { c, buf, tag: 0 }
    }

    fn submit(&mut self, req: &Request) -> u64 {
        self.tag += 1;
        self.c.queue(0).submit(req, self.tag).unwrap();
        self.c.queue(0).kick();
        self.tag
    }

    fn run(&mut self, req: &Request) -> u8 {
        let tag = self.submit(req);
        let done = common::wait_completions(&mut self.c, 0, 1);
        assert_eq!(done[0].tag, tag);
        done[0].status
    }

    fn write(&mut self, slot: u64, sector: u64, data: &[u8]) -> u8 {
        let buf = self.buf + slot * 4096;
        self.c.mem().write(buf, data);
        self.run(&Request::Write { sector, bufs: &[(buf, data.len() as u32)] })
    }

    fn read(&mut self, slot: u64, sector: u64) -> (u8, Vec<u8>) {
        let buf = self.buf + slot * 4096;
        let st = self.run(&Request::Read { sector, bufs: &[(buf, 4096)] });
        let mut out = vec![0u8; 4096];
        self.c.mem().read(buf, &mut out);
        (st, out)
    }
}

fn pattern(tag: u8) -> Vec<u8> {
    (0..4096u32).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
}

#[test]
fn injected_errors_reach_a_vhost_blk_frontend() {
    let d = start();
    malloc(&d, "M0", 4);
    d.ok("bdev_error_create", json!({"base_name": "M0"}));
    let mut b = Blk::open(&d, "c", "EE_M0");
    let data = pattern(7);
    assert_eq!(b.write(0, 8, &data), status::OK);
    let inject = |p: Value| {
        let mut all = json!({"name": "EE_M0"});
        all.as_object_mut().unwrap().extend(p.as_object().unwrap().clone());
        d.ok("bdev_error_inject_error", all);
    };

    // failure: exactly `num` reads fail, then reads work again; writes are untouched.
    inject(json!({"io_type": "read", "error_type": "failure", "num": 2}));
    assert_eq!(b.read(1, 8).0, status::IOERR);
    assert_eq!(b.write(0, 16, &data), status::OK, "writes have no rule");
    assert_eq!(b.read(1, 8).0, status::IOERR);
    assert_eq!(b.read(1, 8), (status::OK, data.clone()));

    // corrupt_data on a read: byte 100 XORed on the way back, the medium intact.
    inject(json!({"io_type": "read", "error_type": "corrupt_data", "corrupt_offset": 100, "corrupt_value": 255}));
    let (st, got) = b.read(1, 8);
    assert_eq!(st, status::OK);
    let mut want = data.clone();
    want[100] ^= 255;
    assert_eq!(got, want, "only byte 100 differs");
    assert_eq!(b.read(1, 8), (status::OK, data.clone()), "the medium was not changed");

    // corrupt_data on a write: the medium gets the corrupted byte, the guest buffer does not.
    inject(json!({"io_type": "write", "error_type": "corrupt_data", "corrupt_offset": 7, "corrupt_value": 1}));
    assert_eq!(b.write(2, 24, &data), status::OK);
    let mut sent = vec![0u8; 4096];
    b.c.mem().read(b.buf + 2 * 4096, &mut sent);
    assert_eq!(sent, data, "the submitter's buffer is untouched");
    let mut want = data.clone();
    want[7] ^= 1;
    assert_eq!(b.read(1, 24), (status::OK, want));

    // nomem: retried by the module until the count is spent; the frontend sees success.
    inject(json!({"io_type": "read", "error_type": "nomem", "num": 3}));
    assert_eq!(b.read(1, 8), (status::OK, data.clone()));

    // pending: held until resumed. A later read passes it (num 1), then resume releases it.
    inject(json!({"io_type": "read", "error_type": "pending", "num": 1}));
    let held_buf = b.buf + 3 * 4096;
    let held = b.submit(&Request::Read { sector: 8, bufs: &[(held_buf, 4096)] });
    let (st, _) = b.read(1, 16);
    assert_eq!(st, status::OK, "the next read is not held");
    d.ok("bdev_error_resume_pending", json!({"name": "EE_M0"}));
    let done = common::wait_completions(&mut b.c, 0, 1);
    assert_eq!((done[0].tag, done[0].status), (held, status::OK), "the held read completes after resume");
    let mut out = vec![0u8; 4096];
    b.c.mem().read(held_buf, &mut out);
    assert_eq!(out, data);

    // clear: a rule set for all types is dropped.
    inject(json!({"io_type": "all", "error_type": "failure", "num": 100}));
    inject(json!({"io_type": "clear", "error_type": "failure"}));
    assert_eq!(b.read(1, 8), (status::OK, data.clone()));
    assert_eq!(b.write(0, 8, &data), status::OK);
}

#[test]
fn hot_removing_bases_under_io_unwinds_every_stack() {
    let d = start();
    // Four stacks, one per module, each served to a vhost-blk frontend doing I/O.
    malloc(&d, "M1", 4);
    malloc(&d, "M2", 4);
    malloc(&d, "M3", 4);
    malloc(&d, "M4", 4);
    d.ok("bdev_passthru_create", json!({"name": "P", "base_bdev_name": "M1"}));
    d.ok("bdev_split_create", json!({"base_bdev": "M2", "split_count": 2}));
    d.ok("bdev_error_create", json!({"base_name": "M3"}));
    let lat = json!({"name": "D", "base_bdev_name": "M4", "avg_read_latency": 500, "p99_read_latency": 1000, "avg_write_latency": 500, "p99_write_latency": 1000});
    d.ok("bdev_delay_create", lat);
    // A pending read on the error bdev must not be stranded by the removal.
    d.ok("bdev_error_inject_error", json!({"name": "EE_M3", "io_type": "read", "error_type": "pending", "num": 1}));
    let tops = [("M1", "P"), ("M2", "M2p1"), ("M3", "EE_M3"), ("M4", "D")];
    let mut frontends: Vec<Blk> = tops.iter().map(|(_, top)| Blk::open(&d, &format!("c{top}"), top)).collect();
    let mut in_flight = vec![0usize; tops.len()];
    // Keep 32 I/Os in flight on each while the bases go.
    for (i, b) in frontends.iter_mut().enumerate() {
        for k in 0..32u64 {
            let buf = b.buf + k * 4096;
            let req = if k % 2 == 0 {
                Request::Read { sector: k * 8, bufs: &[(buf, 4096)] }
            } else {
                Request::Write { sector: k * 8, bufs: &[(buf, 4096)] }
            };
            b.submit(&req);
            in_flight[i] += 1;
        }
    }
    for (base, top) in tops {
        d.ok("bdev_malloc_delete", json!({"name": base}));
        assert!(!exists(&d, top), "{top} was unregistered with its base");
    }
    // Every I/O submitted completes (successfully or not): nothing hangs.
    for (i, b) in frontends.iter_mut().enumerate() {
        let done = common::wait_completions(&mut b.c, 0, in_flight[i]);
        assert_eq!(done.len(), in_flight[i]);
        // And new I/O fails cleanly.
        assert_eq!(b.read(40, 0).0, status::IOERR, "I/O after the removal fails");
    }
    assert!(names(&d).is_empty(), "{:?}", names(&d));
    drop(frontends);
    d.ok("spdk_get_version", json!({}));
}

/// How many pollers named `name` exist on any reactor (busy or timed).
fn pollers_named(d: &Ferryd, name: &str) -> usize {
    let all = d.ok("thread_get_pollers", Value::Null);
    let threads = all["threads"].as_array().unwrap();
    threads
        .iter()
        .flat_map(|t| ["active_pollers", "timed_pollers", "paused_pollers"].map(|k| t[k].clone()))
        .filter_map(|v| v.as_array().cloned())
        .flatten()
        .filter(|p| p["name"] == name)
        .count()
}

#[track_caller]
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn delay_holds_completions_with_a_poller_only_while_something_is_held() {
    let d = start();
    malloc(&d, "M0", 4);
    let lat = json!({"name": "D", "base_bdev_name": "M0", "avg_read_latency": 300_000, "p99_read_latency": 300_000,
                     "avg_write_latency": 0, "p99_write_latency": 0});
    d.ok("bdev_delay_create", lat);
    let mut b = Blk::open(&d, "c", "D");
    let data = pattern(3);
    assert_eq!(b.write(0, 0, &data), status::OK, "writes are not delayed (0 us)");
    assert_eq!(pollers_named(&d, "bdev_delay"), 0, "no poller while nothing is held");
    let started = Instant::now();
    let tag = b.submit(&Request::Read { sector: 0, bufs: &[(b.buf, 4096)] });
    // The read is held: a poller appears for it ...
    wait_until("the delay poller", || pollers_named(&d, "bdev_delay") == 1);
    let done = common::wait_completions(&mut b.c, 0, 1);
    assert_eq!((done[0].tag, done[0].status), (tag, status::OK));
    // ... the read took at least its latency (the injected delay, not a performance figure) ...
    assert!(started.elapsed() >= Duration::from_millis(300), "completed after {:?}", started.elapsed());
    let mut out = vec![0u8; 4096];
    b.c.mem().read(b.buf, &mut out);
    assert_eq!(out, data);
    // ... and the poller goes with the last held completion.
    wait_until("the delay poller to go", || pollers_named(&d, "bdev_delay") == 0);
    // A lowered latency applies to new I/O.
    d.ok("bdev_delay_update_latency", json!({"delay_bdev_name": "D", "latency_type": "avg_read", "latency_us": 0}));
    d.ok("bdev_delay_update_latency", json!({"delay_bdev_name": "D", "latency_type": "p99_read", "latency_us": 0}));
    assert_eq!(b.read(1, 0), (status::OK, data));
    assert_eq!(pollers_named(&d, "bdev_delay"), 0);
}

/// A held completion due in under a millisecond is waited for by a poller that runs every
/// reactor iteration. A reactor sleeps after 500 µs without work, until a message, an
/// interrupt fd or a timed poller wakes it: while such a completion is held the delay poller
/// must count as work, or the completion is stranded until something else happens to wake
/// the reactor, and a submitter waiting for that one I/O hangs (a guest's partition scan of a
/// delay disk at boot did, in guest-tests/vbdev_hotremove.rs; so did `bdev_delay_create`
/// itself with such latencies, waiting for the examine's read).
#[test]
fn a_sub_millisecond_latency_completes_on_an_otherwise_idle_reactor() {
    let d = start();
    malloc(&d, "M0", 4);
    let lat = json!({"name": "D", "base_bdev_name": "M0", "avg_read_latency": 0, "p99_read_latency": 0,
                     "avg_write_latency": 0, "p99_write_latency": 0});
    d.ok("bdev_delay_create", lat);
    let mut b = Blk::open(&d, "c", "D");
    for t in ["avg_read", "p99_read", "avg_write", "p99_write"] {
        d.ok("bdev_delay_update_latency", json!({"delay_bdev_name": "D", "latency_type": t, "latency_us": 800}));
    }
    let data = pattern(5);
    // One I/O at a time and nothing else going on: each waits alone in the delay bdev, past
    // the reactor's idle time, for a deadline under a millisecond away.
    for i in 0..20 {
        assert_eq!(b.write(0, i * 8, &data), status::OK);
        assert_eq!(b.read(1, i * 8), (status::OK, data.clone()));
    }
}

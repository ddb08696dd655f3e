//! QoS against a real `ferryd`: SPDK's `bdev_set_qos_limit` (parameters, rounding, errors,
//! `assigned_rate_limits`), Ferry's `bdev_qos_group_*`, `save_config` replay, and limits
//! holding for I/O from two vhost-user-blk controllers on two reactors at once.
//!
//! Rates are checked only from above (an upper bound with a generous margin over a measured
//! interval): the machine is shared, so nothing here depends on how fast it is.

mod common;

use common::{write_config, Ferryd};
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::{Client, Completion, Options, Request};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

fn start() -> Ferryd {
    let dir = common::scratch_dir("qos");
    Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()])
}

fn limits(d: &Ferryd, bdev: &str) -> Value {
    d.ok("bdev_get_bdevs", json!({"name": bdev}))[0]["assigned_rate_limits"].clone()
}

fn connect(sock: &Path) -> Client {
    Client::connect(sock, &Options { num_queues: 1, queue_size: 128, mem_size: 16 << 20, hugetlbfs: None })
        .expect("connect to the controller")
}

/// Completed reads of `bdev` (SPDK's `num_read_ops`).
fn reads(d: &Ferryd, bdev: &str) -> u64 {
    d.ok("bdev_get_iostat", json!({"name": bdev}))["bdevs"][0]["num_read_ops"].as_u64().unwrap()
}

/// Names of the timed pollers on every reactor.
fn timed_pollers(d: &Ferryd) -> Vec<String> {
    let all = d.ok("thread_get_pollers", Value::Null);
    all["threads"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["timed_pollers"].as_array().unwrap().iter())
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// Waits (up to `secs`) until `pred` holds.
#[track_caller]
fn wait_until(secs: u64, what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Keeps `depth` 4 KiB reads outstanding on queue 0 of every client until `until`, then
/// drains; returns the completions per client (all must succeed).
fn read_load(clients: &mut [Client], depth: usize, until: Instant) -> Vec<u64> {
    let mut bufs = Vec::new();
    for c in clients.iter_mut() {
        let mem = c.mem().clone();
        let b: Vec<u64> = (0..depth).map(|_| mem.alloc(4096, 4096).unwrap()).collect();
        for (i, &buf) in b.iter().enumerate() {
            c.queue(0).submit(&Request::Read { sector: 8 * i as u64, bufs: &[(buf, 4096)] }, i as u64).unwrap();
        }
        c.queue(0).kick();
        bufs.push(b);
    }
    let mut done = vec![0u64; clients.len()];
    let mut outstanding = vec![depth; clients.len()];
    let drain_deadline = until + Duration::from_secs(30);
    let mut out: Vec<Completion> = Vec::new();
    while outstanding.iter().any(|&o| o > 0) {
        assert!(Instant::now() < drain_deadline, "reads never completed: {outstanding:?} outstanding");
        let mut any = false;
        for (k, c) in clients.iter_mut().enumerate() {
            out.clear();
            c.queue(0).poll(&mut out);
            for comp in &out {
                assert_eq!(comp.status, status::OK, "a read failed");
                done[k] += 1;
                any = true;
                if Instant::now() < until {
                    let i = comp.tag as usize;
                    let req = Request::Read { sector: 8 * i as u64, bufs: &[(bufs[k][i], 4096)] };
                    c.queue(0).submit(&req, comp.tag).unwrap();
                } else {
                    outstanding[k] -= 1;
                }
            }
            if !out.is_empty() {
                c.queue(0).kick();
            }
        }
        if !any {
            clients[0].queue(0).wait(1);
        }
    }
    done
}

#[test]
fn set_qos_limit_takes_spdks_parameters_rounding_and_errors() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 1024, "block_size": 512}));
    assert_eq!(
        limits(&d, "M"),
        json!({"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0})
    );
    assert_eq!(d.ok("bdev_set_qos_limit", json!({"name": "M", "rw_ios_per_sec": 1500, "r_mbytes_per_sec": 10})), true);
    assert_eq!(
        limits(&d, "M"),
        json!({"rw_ios_per_sec": 2000, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 10, "w_mbytes_per_sec": 0}),
        "IOPS rounded up to a multiple of 1000, as SPDK"
    );
    // Absent: unchanged; 0: removed.
    d.ok("bdev_set_qos_limit", json!({"name": "M", "w_mbytes_per_sec": 5}));
    d.ok("bdev_set_qos_limit", json!({"name": "M", "rw_ios_per_sec": 0}));
    assert_eq!(
        limits(&d, "M"),
        json!({"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 10, "w_mbytes_per_sec": 5})
    );
    // SPDK's errors.
    let e = d.err("bdev_set_qos_limit", json!({"name": "nope", "rw_ios_per_sec": 1000}));
    assert_eq!(e.code, -libc::ENODEV as i64, "{e:?}");
    let e = d.err("bdev_set_qos_limit", json!({"name": "M"}));
    assert_eq!((e.code, e.message.as_str()), (-libc::EINVAL as i64, "No rate limits specified"));
    let e = d.err("bdev_set_qos_limit", json!({"name": "M", "rw_ios_per_sec": -1}));
    assert_eq!(e.code, -32602, "{e:?}");
    let e = d.err("bdev_set_qos_limit", json!({"name": "M", "iops": 1000}));
    assert_eq!(e.code, -32602, "unknown parameter: {e:?}");
    let e = d.err("bdev_set_qos_limit", json!({"rw_ios_per_sec": 1000}));
    assert_eq!(e.code, -32602, "missing name: {e:?}");
}

#[test]
fn a_limit_holds_for_two_controllers_on_two_reactors_and_costs_no_poller_when_idle() {
    let d = start();
    d.ok("bdev_null_create", json!({"name": "N", "num_blocks": 65536, "block_size": 4096}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "a", "dev_name": "N", "cpumask": "0x1"}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "b", "dev_name": "N", "cpumask": "0x2"}));
    d.ok("bdev_set_qos_limit", json!({"name": "N", "rw_ios_per_sec": 1000}));
    assert!(!timed_pollers(&d).contains(&"bdev_qos".to_string()), "a limit with no I/O costs no poller");
    let mut clients = vec![connect(&d.dir.join("a")), connect(&d.dir.join("b"))];
    let before = reads(&d, "N");
    let t0 = Instant::now();
    let done = read_load(&mut clients, 32, t0 + Duration::from_secs(2));
    let after = reads(&d, "N");
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(done.iter().all(|&n| n > 0), "both controllers did I/O: {done:?}");
    assert_eq!(done.iter().sum::<u64>(), after - before);
    // At most the rate over the interval, plus the bucket (20 ms of the rate) and a lease
    // per channel, with 10% on top.
    let bound = 1000.0 * elapsed * 1.1 + 20.0 + 2.0;
    assert!(((after - before) as f64) <= bound, "{} reads in {elapsed:.2} s > {bound:.0}", after - before);
    // Nothing waits any more: the release timers are gone.
    wait_until(10, "the bdev_qos timers to go", || !timed_pollers(&d).contains(&"bdev_qos".to_string()));
}

#[test]
fn a_group_limit_is_shared_by_its_bdevs() {
    let d = start();
    for n in ["A", "B", "C"] {
        d.ok("bdev_null_create", json!({"name": n, "num_blocks": 65536, "block_size": 4096}));
    }
    d.ok("bdev_qos_group_create", json!({"name": "vm1", "rw_ios_per_sec": 1000}));
    d.ok("bdev_qos_group_add_bdev", json!({"name": "vm1", "bdev_name": "A"}));
    d.ok("bdev_qos_group_add_bdev", json!({"name": "vm1", "bdev_name": "B"}));
    // Errors: a second group, a bdev in two groups, unknown names, a bad burst.
    let e = d.err("bdev_qos_group_create", json!({"name": "vm1"}));
    assert_eq!(e.code, -libc::EEXIST as i64, "{e:?}");
    d.ok("bdev_qos_group_create", json!({"name": "vm2"}));
    let e = d.err("bdev_qos_group_add_bdev", json!({"name": "vm2", "bdev_name": "A"}));
    assert_eq!(e.code, -libc::EBUSY as i64, "{e:?}");
    let e = d.err("bdev_qos_group_add_bdev", json!({"name": "vm9", "bdev_name": "C"}));
    assert_eq!(e.code, -libc::ENOENT as i64, "{e:?}");
    let e = d.err("bdev_qos_group_add_bdev", json!({"name": "vm2", "bdev_name": "Z"}));
    assert_eq!(e.code, -libc::ENODEV as i64, "{e:?}");
    let e = d.err("bdev_qos_group_remove_bdev", json!({"name": "vm2", "bdev_name": "A"}));
    assert_eq!(e.code, -libc::ENOENT as i64, "{e:?}");
    let e = d.err("bdev_qos_group_set_limit", json!({"name": "vm1", "rw_ios_burst_per_sec": 1000}));
    assert_eq!(e.code, -32602, "a burst must be above its limit: {e:?}");
    let e = d.err("bdev_qos_group_set_limit", json!({"name": "vm1"}));
    assert_eq!(e.code, -libc::EINVAL as i64, "{e:?}");
    let e = d.err("bdev_qos_group_create", json!({"name": "has space"}));
    assert_eq!(e.code, -32602, "{e:?}");
    d.ok("bdev_qos_group_delete", json!({"name": "vm2"}));
    let e = d.err("bdev_qos_group_delete", json!({"name": "vm2"}));
    assert_eq!(e.code, -libc::ENOENT as i64, "{e:?}");

    let g = d.ok("bdev_qos_group_get", json!({"name": "vm1"}));
    assert_eq!(g[0]["bdevs"], json!(["A", "B"]));
    assert_eq!(g[0]["assigned_rate_limits"]["rw_ios_per_sec"], 1000);
    // The group's limit is not the bdev's own.
    assert_eq!(limits(&d, "A")["rw_ios_per_sec"], 0);

    d.ok("vhost_create_blk_controller", json!({"ctrlr": "a", "dev_name": "A", "cpumask": "0x1"}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "b", "dev_name": "B", "cpumask": "0x2"}));
    let mut clients = vec![connect(&d.dir.join("a")), connect(&d.dir.join("b"))];
    let before = reads(&d, "A") + reads(&d, "B");
    let t0 = Instant::now();
    let done = read_load(&mut clients, 32, t0 + Duration::from_secs(2));
    let total = reads(&d, "A") + reads(&d, "B") - before;
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(done.iter().all(|&n| n > 0), "both bdevs did I/O: {done:?}");
    let bound = 1000.0 * elapsed * 1.1 + 20.0 + 2.0;
    assert!((total as f64) <= bound, "{total} reads on the group in {elapsed:.2} s > {bound:.0}");

    // A deleted member leaves the group.
    d.ok("bdev_null_delete", json!({"name": "B"}));
    assert_eq!(d.ok("bdev_qos_group_get", json!({}))[0]["bdevs"], json!(["A"]));
}

#[test]
fn lifting_a_limit_releases_held_io_and_deleting_the_bdev_fails_it() {
    let d = start();
    d.ok("bdev_null_create", json!({"name": "N", "num_blocks": 65536, "block_size": 4096}));
    d.ok("bdev_null_create", json!({"name": "G", "num_blocks": 65536, "block_size": 4096}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "n", "dev_name": "N", "cpumask": "0x1"}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "g", "dev_name": "G", "cpumask": "0x2"}));
    // 1 MiB/s and 8 MiB writes: the first goes at once (in debt), the next waits 8 s.
    d.ok("bdev_set_qos_limit", json!({"name": "N", "w_mbytes_per_sec": 1}));
    d.ok("bdev_set_qos_limit", json!({"name": "G", "w_mbytes_per_sec": 1}));
    let submit = |c: &mut Client| {
        let buf = c.mem().alloc(8 << 20, 4096).unwrap();
        for i in 0..16u64 {
            c.queue(0).submit(&Request::Write { sector: i * 16384, bufs: &[(buf, 8 << 20)] }, i).unwrap();
        }
        c.queue(0).kick();
    };
    let (mut n, mut g) = (connect(&d.dir.join("n")), connect(&d.dir.join("g")));
    submit(&mut n);
    submit(&mut g);
    // Held back: each reactor has armed its release timer.
    wait_until(10, "both channels to hold writes back", || {
        timed_pollers(&d).iter().filter(|p| *p == "bdev_qos").count() == 2
    });
    // Lifting the limit lets them all through at once, not when the timer would fire.
    let lifted = Instant::now();
    d.ok("bdev_set_qos_limit", json!({"name": "N", "w_mbytes_per_sec": 0}));
    let mut got = Vec::new();
    while got.len() < 16 {
        assert!(lifted.elapsed() < Duration::from_secs(5), "held writes not released: {} of 16", got.len());
        if n.queue(0).poll(&mut got) == 0 {
            n.queue(0).wait(10);
        }
    }
    assert!(got.iter().all(|c| c.status == status::OK), "{got:?}");
    // Deleting a bdev fails what its channel holds back, at once.
    d.ok("bdev_null_delete", json!({"name": "G"}));
    let deleted = Instant::now();
    let (mut failed, mut ok) = (0, 0);
    while failed + ok < 16 {
        assert!(deleted.elapsed() < Duration::from_secs(4), "held writes of a deleted bdev never ended");
        let mut batch = Vec::new();
        if g.queue(0).poll(&mut batch) == 0 {
            g.queue(0).wait(10);
        }
        for c in batch {
            if c.status == status::OK {
                ok += 1;
            } else {
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "writes held back when the bdev went failed");
    wait_until(10, "the bdev_qos timers to go", || !timed_pollers(&d).contains(&"bdev_qos".to_string()));
}

#[test]
fn save_config_writes_limits_and_groups_and_replays_them() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M0", "num_blocks": 1024, "block_size": 512}));
    d.ok("bdev_null_create", json!({"name": "N0", "num_blocks": 1024, "block_size": 512}));
    d.ok("bdev_null_create", json!({"name": "N1", "num_blocks": 1024, "block_size": 512}));
    d.ok("bdev_set_qos_limit", json!({"name": "M0", "rw_ios_per_sec": 20000, "w_mbytes_per_sec": 50}));
    d.ok(
        "bdev_qos_group_create",
        json!({"name": "vm", "rw_mbytes_per_sec": 100, "rw_mbytes_burst_per_sec": 400, "burst_length_ms": 500,
               "meter_unmap": true}),
    );
    d.ok("bdev_qos_group_create", json!({"name": "empty", "rw_ios_per_sec": 5000}));
    d.ok("bdev_qos_group_add_bdev", json!({"name": "vm", "bdev_name": "N0"}));
    d.ok("bdev_qos_group_add_bdev", json!({"name": "vm", "bdev_name": "M0"}));
    let config = d.ok("save_config", Value::Null);
    let bdev = config["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "bdev").unwrap();
    let methods: Vec<(String, Value)> = bdev["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["method"].as_str().unwrap().to_string(), e["params"].clone()))
        .filter(|(m, _)| m != "bdev_wait_for_examine")
        .collect();
    let names: Vec<&str> = methods.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        names,
        [
            "bdev_malloc_create",
            "bdev_set_qos_limit",
            "bdev_qos_group_create",
            "bdev_qos_group_add_bdev",
            "bdev_null_create",
            "bdev_qos_group_add_bdev",
            "bdev_null_create",
            "bdev_qos_group_create",
        ],
        "{methods:?}"
    );
    // As SPDK: only the limits that are set.
    assert_eq!(methods[1].1, json!({"name": "M0", "rw_ios_per_sec": 20000, "w_mbytes_per_sec": 50}));
    // Members in any order: replay adds them in registration order.
    let groups = |d: &Ferryd| {
        let mut g = d.ok("bdev_qos_group_get", json!({}));
        for x in g.as_array_mut().unwrap() {
            x["bdevs"].as_array_mut().unwrap().sort_by_key(|v| v.as_str().unwrap().to_string());
        }
        g
    };
    let groups_before = groups(&d);
    assert_eq!(groups_before[0]["burst_rate_limits"]["rw_mbytes_per_sec"], 400);
    let bdevs_before = d.ok("bdev_get_bdevs", json!({}));

    let file = write_config(&d.dir, "qos.json", bdev["config"].clone());
    let dir = common::scratch_dir("qos-replay");
    let e = Ferryd::start_in(dir, &["-m", "0x3", "-c", file.to_str().unwrap()]);
    assert_eq!(groups(&e), groups_before);
    let rates = |v: &Value| v.as_array().unwrap().iter().map(|b| b["assigned_rate_limits"].clone()).collect::<Vec<_>>();
    assert_eq!(rates(&e.ok("bdev_get_bdevs", json!({}))), rates(&bdevs_before));
    assert_eq!(limits(&e, "M0")["w_mbytes_per_sec"], 50);
}

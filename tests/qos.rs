//! QoS against a real `ferryd`: SPDK's `bdev_set_qos_limit` (parameters, rounding, errors,
//! `assigned_rate_limits`), Ferry's `bdev_qos_group_*`, `save_config` replay, and limits
//! holding for I/O from two vhost-user-blk controllers on two reactors at once; Ferry's
//! `vhost_controller_set_qos` (a limit on one controller's guest, over its queues and
//! targets, not on the bdevs it shares with others).
//!
//! Rates are checked only from above (an upper bound with a generous margin over a measured
//! interval): the machine is shared, so nothing here depends on how fast it is.

mod common;

use common::{write_config, Ferryd};
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::scsi::cdb as scsi_cdb;
use ferry_vhost_initiator::{Client, Completion, Options, Request, ScsiClient, ScsiRequest};
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
    read_load_queues(clients, 1, depth, until).into_iter().map(|q| q[0]).collect()
}

/// As `read_load`, on queues `0..queues` of every client; completions per client and queue.
fn read_load_queues(clients: &mut [Client], queues: usize, depth: usize, until: Instant) -> Vec<Vec<u64>> {
    let mut bufs = Vec::new();
    for c in clients.iter_mut() {
        let mem = c.mem().clone();
        let b: Vec<u64> = (0..depth).map(|_| mem.alloc(4096, 4096).unwrap()).collect();
        for q in 0..queues {
            for (i, &buf) in b.iter().enumerate() {
                c.queue(q).submit(&Request::Read { sector: 8 * i as u64, bufs: &[(buf, 4096)] }, i as u64).unwrap();
            }
            c.queue(q).kick();
        }
        bufs.push(b);
    }
    let mut done = vec![vec![0u64; queues]; clients.len()];
    let mut outstanding = vec![vec![depth; queues]; clients.len()];
    let drain_deadline = until + Duration::from_secs(30);
    let mut out: Vec<Completion> = Vec::new();
    while outstanding.iter().flatten().any(|&o| o > 0) {
        assert!(Instant::now() < drain_deadline, "reads never completed: {outstanding:?} outstanding");
        let mut any = false;
        for (k, c) in clients.iter_mut().enumerate() {
            for q in 0..queues {
                out.clear();
                c.queue(q).poll(&mut out);
                for comp in &out {
                    assert_eq!(comp.status, status::OK, "a read failed");
                    done[k][q] += 1;
                    any = true;
                    if Instant::now() < until {
                        let i = comp.tag as usize;
                        let req = Request::Read { sector: 8 * i as u64, bufs: &[(bufs[k][i], 4096)] };
                        c.queue(q).submit(&req, comp.tag).unwrap();
                    } else {
                        outstanding[k][q] -= 1;
                    }
                }
                if !out.is_empty() {
                    c.queue(q).kick();
                }
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

// --- vhost controller QoS (Ferry's `vhost_controller_set_qos`): the VM's view ---

/// The reactors (thread indices) with a timed poller named `name` now.
fn reactors_with_timer(d: &Ferryd, name: &str) -> Vec<usize> {
    let all = d.ok("thread_get_pollers", Value::Null);
    let threads = all["threads"].as_array().unwrap();
    (0..threads.len())
        .filter(|&i| threads[i]["timed_pollers"].as_array().unwrap().iter().any(|p| p["name"] == name))
        .collect()
}

fn ctrlr_qos(d: &Ferryd, ctrlr: &str) -> Value {
    d.ok("vhost_get_controllers", json!({"name": ctrlr}))[0]["qos"].clone()
}

#[test]
fn a_controller_limit_holds_over_two_queues_on_two_reactors() {
    let d = start();
    d.ok("bdev_null_create", json!({"name": "N", "num_blocks": 65536, "block_size": 4096}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vm", "dev_name": "N", "cpumask": "0x3"}));
    // Errors: an unknown controller, nothing to set, bad values; none changes anything.
    let e = d.err("vhost_controller_set_qos", json!({"ctrlr": "nope", "rw_ios_per_sec": 1000}));
    assert_eq!((e.code, e.message.as_str()), (-32602, "No such device"), "as SPDK's vhost methods: {e:?}");
    let e = d.err("vhost_controller_set_qos", json!({"ctrlr": "vm"}));
    assert_eq!((e.code, e.message.as_str()), (-libc::EINVAL as i64, "No rate limits specified"));
    for bad in [
        json!({"ctrlr": "vm", "rw_ios_per_sec": -5}),
        json!({"ctrlr": "vm", "rw_ios_per_sec": "many"}),
        json!({"ctrlr": "vm", "rw_ios_per_sec": 1000, "rw_ios_burst_per_sec": 500}),
        json!({"ctrlr": "vm", "rw_mbytes_burst_per_sec": 500}),
        json!({"ctrlr": "vm", "rw_ios_per_sec": 1000, "burst_length_ms": 0}),
        json!({"ctrlr": "vm", "iops": 1000}),
        json!({"rw_ios_per_sec": 1000}),
    ] {
        let e = d.err("vhost_controller_set_qos", bad.clone());
        assert_eq!(e.code, -32602, "{bad}: {e:?}");
    }
    assert_eq!(ctrlr_qos(&d, "vm")["assigned_rate_limits"]["rw_ios_per_sec"], 0, "nothing half-set");
    // As the bdev limits: IOPS rounded up to a multiple of 1000.
    d.ok("vhost_controller_set_qos", json!({"ctrlr": "vm", "rw_ios_per_sec": 1500}));
    assert_eq!(ctrlr_qos(&d, "vm")["assigned_rate_limits"]["rw_ios_per_sec"], 2000);
    d.ok("vhost_controller_set_qos", json!({"ctrlr": "vm", "rw_ios_per_sec": 1000}));
    assert_eq!(
        ctrlr_qos(&d, "vm"),
        json!({"assigned_rate_limits": {"rw_ios_per_sec": 1000, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0,
               "w_mbytes_per_sec": 0},
               "burst_rate_limits": {"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0,
               "w_mbytes_per_sec": 0},
               "burst_length_ms": 1000, "meter_unmap": false})
    );
    assert_eq!(limits(&d, "N")["rw_ios_per_sec"], 0, "the controller's limit is not the bdev's");
    assert!(reactors_with_timer(&d, "vhost_qos").is_empty(), "a limit with no I/O costs no poller");

    // Two queues: queue i runs on reactor i of the controller's two.
    let opts = Options { num_queues: 2, queue_size: 128, mem_size: 16 << 20, hugetlbfs: None };
    let mut clients = vec![Client::connect(&d.dir.join("vm"), &opts).unwrap()];
    let before = reads(&d, "N");
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(2);
    let (done, waited_on) = std::thread::scope(|s| {
        let load = s.spawn(|| read_load_queues(&mut clients, 2, 32, until));
        // Both queues hold reads back at once: each reactor arms its own release timer.
        let mut seen = std::collections::BTreeSet::new();
        while Instant::now() < until && seen.len() < 2 {
            seen.extend(reactors_with_timer(&d, "vhost_qos"));
        }
        (load.join().unwrap(), seen)
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let total = reads(&d, "N") - before;
    assert_eq!(done[0].iter().sum::<u64>(), total);
    assert!(done[0].iter().all(|&n| n > 0), "both queues did I/O: {done:?}");
    assert_eq!(waited_on.len(), 2, "reads waited on both reactors: {waited_on:?}");
    // The rate over the interval, plus the bucket (20 ms) and a lease per queue, 10% on top.
    let bound = 1000.0 * elapsed * 1.1 + 20.0 + 2.0;
    assert!((total as f64) <= bound, "{total} reads over two queues in {elapsed:.2} s > {bound:.0}");
    wait_until(10, "the vhost_qos timers to go", || reactors_with_timer(&d, "vhost_qos").is_empty());
}

/// Submits `n` 8 MiB writes on queue 0 (16 MiB of memory holds one buffer).
fn big_writes(c: &mut Client, n: u64) {
    let buf = c.mem().alloc(8 << 20, 4096).unwrap();
    for i in 0..n {
        c.queue(0).submit(&Request::Write { sector: i * 16384, bufs: &[(buf, 8 << 20)] }, i).unwrap();
    }
    c.queue(0).kick();
}

/// Collects `n` completions from queue 0 within `secs`.
#[track_caller]
fn collect(c: &mut Client, n: usize, secs: u64, what: &str) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(Instant::now() < deadline, "{what}: {} of {n} completed", got.len());
        if c.queue(0).poll(&mut got) == 0 {
            c.queue(0).wait(10);
        }
    }
    got
}

#[test]
fn a_controller_limit_leaves_other_users_of_the_bdev_alone_and_lifting_it_releases_held_io() {
    let d = start();
    d.ok("bdev_null_create", json!({"name": "N", "num_blocks": 262144, "block_size": 4096}));
    // Both on reactor 0: they share the bdev's channel there, not the limit.
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vm", "dev_name": "N", "cpumask": "0x1"}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "other", "dev_name": "N", "cpumask": "0x1"}));
    // 1 MiB/s and 8 MiB writes: the first goes at once (in debt), each next one waits 8 s.
    d.ok("vhost_controller_set_qos", json!({"ctrlr": "vm", "w_mbytes_per_sec": 1}));
    let (mut vm, mut other) = (connect(&d.dir.join("vm")), connect(&d.dir.join("other")));
    big_writes(&mut vm, 16);
    wait_until(10, "vm's writes to be held back", || reactors_with_timer(&d, "vhost_qos") == [0]);
    big_writes(&mut other, 16);
    let got = collect(&mut other, 16, 10, "the other controller's writes (not limited)");
    assert!(got.iter().all(|c| c.status == status::OK), "{got:?}");
    let mut vm_done = Vec::new();
    vm.queue(0).poll(&mut vm_done);
    assert!(vm_done.len() <= 2, "vm's limit held while the other's 16 writes went: {} done", vm_done.len());
    // Lifting the limit lets vm's held writes through at once (the timer would take 2 min).
    let lifted = Instant::now();
    d.ok("vhost_controller_set_qos", json!({"ctrlr": "vm", "w_mbytes_per_sec": 0}));
    let rest = collect(&mut vm, 16 - vm_done.len(), 5, "vm's held writes after the limit was lifted");
    assert!(lifted.elapsed() < Duration::from_secs(5));
    assert!(rest.iter().chain(&vm_done).all(|c| c.status == status::OK), "{rest:?}");
    assert_eq!(ctrlr_qos(&d, "vm")["assigned_rate_limits"]["w_mbytes_per_sec"], 0);
    wait_until(10, "the vhost_qos timers to go", || reactors_with_timer(&d, "vhost_qos").is_empty());
}

#[test]
fn deleting_a_controller_with_io_held_back_completes_cleanly() {
    let d = start();
    d.ok("bdev_null_create", json!({"name": "N", "num_blocks": 262144, "block_size": 4096}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vm", "dev_name": "N", "cpumask": "0x2"}));
    d.ok("vhost_controller_set_qos", json!({"ctrlr": "vm", "w_mbytes_per_sec": 1}));
    let writes_before = d.ok("bdev_get_iostat", json!({"name": "N"}))["bdevs"][0]["num_write_ops"].as_u64().unwrap();
    let mut vm = connect(&d.dir.join("vm"));
    big_writes(&mut vm, 16);
    wait_until(10, "writes to be held back", || reactors_with_timer(&d, "vhost_qos") == [1]);
    // A connected controller is not deleted (as SPDK); the guest goes, its queues stop.
    assert_eq!(d.err("vhost_delete_controller", json!({"ctrlr": "vm"})).code, -libc::EBUSY as i64);
    drop(vm);
    // Stopping a queue starts what the limit holds (else the stop would drain for 2 min).
    wait_until(10, "the session to end", || {
        d.ok("vhost_get_controllers", json!({"name": "vm"}))[0]["sessions"].as_array().unwrap().is_empty()
    });
    d.ok("vhost_delete_controller", json!({"ctrlr": "vm"}));
    let writes = d.ok("bdev_get_iostat", json!({"name": "N"}))["bdevs"][0]["num_write_ops"].as_u64().unwrap();
    assert_eq!(writes - writes_before, 16, "the held writes were done, not dropped");
    assert!(reactors_with_timer(&d, "vhost_qos").is_empty());
    assert_eq!(d.ok("vhost_get_controllers", Value::Null), json!([]));
    // The daemon goes on: a new controller on the same bdev is not limited.
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vm", "dev_name": "N", "cpumask": "0x2"}));
    assert_eq!(ctrlr_qos(&d, "vm")["assigned_rate_limits"]["w_mbytes_per_sec"], 0, "deleted with the controller");
}

/// Keeps `depth` 4 KiB READ(10)s outstanding on request queue 0, alternating targets 0 and
/// 1, until `until`; returns the completions.
fn scsi_read_load(c: &mut ScsiClient, depth: usize, until: Instant) -> u64 {
    let mem = c.mem().clone();
    let bufs: Vec<u64> = (0..depth).map(|_| mem.alloc(4096, 4096).unwrap()).collect();
    let submit = |c: &mut ScsiClient, i: usize| {
        let cdb = scsi_cdb::read10(i as u32, 1);
        let req = ScsiRequest::Command {
            target: (i % 2) as u8,
            lun: 0,
            cdb: &cdb,
            data_out: &[],
            data_in: &[(bufs[i], 4096)],
        };
        c.request(0).submit(&req, i as u64).unwrap();
    };
    for i in 0..depth {
        submit(c, i);
    }
    c.request(0).kick();
    let (mut done, mut outstanding) = (0u64, depth);
    let drain_deadline = until + Duration::from_secs(30);
    let mut out = Vec::new();
    while outstanding > 0 {
        assert!(Instant::now() < drain_deadline, "reads never completed: {outstanding} outstanding");
        out.clear();
        if c.request(0).poll(&mut out) == 0 {
            c.request(0).wait(1);
        }
        for comp in &out {
            assert!(comp.is_good(), "a read failed: {comp:?}");
            done += 1;
            if Instant::now() < until {
                submit(c, comp.tag() as usize);
            } else {
                outstanding -= 1;
            }
        }
        if !out.is_empty() {
            c.request(0).kick();
        }
    }
    done
}

#[test]
fn a_scsi_controller_limit_is_shared_by_its_targets() {
    let d = start();
    for n in ["A", "B"] {
        d.ok("bdev_null_create", json!({"name": n, "num_blocks": 65536, "block_size": 4096}));
    }
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "s", "cpumask": "0x3"}));
    d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "s", "scsi_target_num": 0, "bdev_name": "A"}));
    d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "s", "scsi_target_num": 1, "bdev_name": "B"}));
    d.ok("vhost_controller_set_qos", json!({"ctrlr": "s", "rw_ios_per_sec": 1000}));
    let opts = Options { num_queues: 1, queue_size: 128, mem_size: 16 << 20, hugetlbfs: None };
    let mut c = ScsiClient::connect(&d.dir.join("s"), &opts).unwrap();
    let before = reads(&d, "A") + reads(&d, "B");
    let (a0, b0) = (reads(&d, "A"), reads(&d, "B"));
    let t0 = Instant::now();
    let done = scsi_read_load(&mut c, 32, t0 + Duration::from_secs(2));
    let elapsed = t0.elapsed().as_secs_f64();
    let total = reads(&d, "A") + reads(&d, "B") - before;
    assert_eq!(done, total);
    assert!(reads(&d, "A") > a0 && reads(&d, "B") > b0, "both targets did I/O");
    let bound = 1000.0 * elapsed * 1.1 + 20.0 + 2.0;
    assert!((total as f64) <= bound, "{total} reads over two targets in {elapsed:.2} s > {bound:.0}");
}

#[test]
fn save_config_replays_controller_limits() {
    let d = start();
    d.ok("bdev_null_create", json!({"name": "N", "num_blocks": 1024, "block_size": 4096}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "b", "dev_name": "N", "cpumask": "0x1"}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "plain", "dev_name": "N", "cpumask": "0x1"}));
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "s", "cpumask": "0x2"}));
    d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "s", "scsi_target_num": 0, "bdev_name": "N"}));
    d.ok(
        "vhost_controller_set_qos",
        json!({"ctrlr": "b", "rw_ios_per_sec": 2000, "w_mbytes_per_sec": 50, "rw_ios_burst_per_sec": 4000,
               "burst_length_ms": 500, "meter_unmap": true}),
    );
    d.ok("vhost_controller_set_qos", json!({"ctrlr": "s", "r_mbytes_per_sec": 10}));
    let saved = d.ok("save_config", Value::Null);
    let methods = |sub: &str| -> Vec<(String, Value)> {
        let s = saved["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == sub).unwrap();
        s["config"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["method"].as_str().unwrap().into(), e["params"].clone()))
            .collect()
    };
    let blk = methods("vhost_blk");
    let names: Vec<&str> = blk.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(names, ["vhost_create_blk_controller", "vhost_controller_set_qos", "vhost_create_blk_controller"]);
    assert_eq!(
        blk[1].1,
        json!({"ctrlr": "b", "rw_ios_per_sec": 2000, "w_mbytes_per_sec": 50, "rw_ios_burst_per_sec": 4000,
               "burst_length_ms": 500, "meter_unmap": true})
    );
    let scsi = methods("vhost_scsi");
    assert_eq!(
        scsi.last().unwrap(),
        &("vhost_controller_set_qos".to_string(), json!({"ctrlr": "s", "r_mbytes_per_sec": 10}))
    );
    // By name: the subsystems replay in their own order (vhost_scsi before vhost_blk).
    let controllers = |d: &Ferryd| {
        let mut all = d.ok("vhost_get_controllers", Value::Null).as_array().unwrap().clone();
        all.sort_by_key(|c| c["ctrlr"].as_str().unwrap().to_string());
        all
    };
    let before = controllers(&d);
    let dir = d.dir.clone();
    assert!(d.stop().success());
    let config = dir.join("saved.json");
    std::fs::write(&config, serde_json::to_vec(&saved).unwrap()).unwrap();
    let d2 = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap(), "-c", config.to_str().unwrap()]);
    assert_eq!(controllers(&d2), before, "the same limits after replay");
    assert_eq!(d2.ok("save_config", Value::Null), saved, "the replayed configuration saves identically");
}

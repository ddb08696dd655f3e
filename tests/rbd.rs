//! The RBD bdev against a real Ceph cluster the test starts itself (`scripts/ceph-dev.sh`:
//! one monitor, one memstore OSD on 127.0.0.1), driven through SPDK's `bdev_rbd_*` methods,
//! with data moved by a vhost-user-blk client and checked with Ceph's own `rbd` tool.

mod common;
#[path = "common/nvme_initiator.rs"]
mod nvme_initiator;

use common::ceph::CephCluster;
use common::{scratch_dir, thread_names, write_config, Ferryd};
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::{Client, Options, Request};
use nvme_initiator::{completions, one};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn ferryd() -> Ferryd {
    let dir = scratch_dir("rbd");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()]);
    d
}

/// `bdev_rbd_register_cluster NAME` with the cluster's ceph.conf and keyring, and librbd's
/// cache in write-back mode from the start (by default it writes through until the first
/// flush): a flush that did not reach librbd would leave writes in its cache.
fn register(d: &Ferryd, c: &CephCluster, name: &str) {
    let p = json!({ "name": name, "config_file": c.conf(), "key_file": c.keyring(),
                    "config_param": { "rbd_cache_policy": "writeback", "rbd_cache_writethrough_until_flush": "false" } });
    assert_eq!(d.ok("bdev_rbd_register_cluster", p), json!(name));
}

/// SPDK's inline form: the monitor and the key as Ceph options.
fn inline_config(c: &CephCluster) -> Value {
    json!({ "mon_host": c.mon_addr(), "key": c.key() })
}

fn vhost(d: &Ferryd, ctrlr: &str, bdev: &str) -> Client {
    d.ok("vhost_create_blk_controller", json!({ "ctrlr": ctrlr, "dev_name": bdev }));
    let opts = Options { num_queues: 1, queue_size: 128, mem_size: 32 << 20, hugetlbfs: None };
    Client::connect(&d.dir.join(ctrlr), &opts).unwrap_or_else(|e| panic!("connect to {ctrlr}: {e}"))
}

/// `common::pat`, seeded by number.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    common::pat(seed as u32, len)
}

/// Writes `data` at byte `offset` through the client (one request), expecting `OK`.
fn write_at(v: &mut Client, offset: u64, data: &[u8]) {
    let mem = v.mem().clone();
    let buf = mem.alloc(data.len(), 4096).unwrap();
    mem.write(buf, data);
    let c = one(v, &Request::Write { sector: offset / 512, bufs: &[(buf, data.len() as u32)] }, 1);
    assert_eq!(c.status, status::OK, "write at {offset}: {c:?}");
}

fn read_at(v: &mut Client, offset: u64, len: usize) -> Vec<u8> {
    let mem = v.mem().clone();
    let buf = mem.alloc(len, 4096).unwrap();
    let c = one(v, &Request::Read { sector: offset / 512, bufs: &[(buf, len as u32)] }, 2);
    assert_eq!(c.status, status::OK, "read at {offset}: {c:?}");
    let mut out = vec![0u8; len];
    mem.read(buf, &mut out);
    out
}

/// The image's bytes as `rbd export` writes them.
fn export(c: &CephCluster, image: &str, dir: &Path) -> Vec<u8> {
    let file = dir.join(format!("{image}.export"));
    let _ = std::fs::remove_file(&file);
    c.rbd_ok(&["export", &format!("rbd/{image}"), file.to_str().unwrap()]);
    std::fs::read(&file).unwrap()
}

fn rbd_json(c: &CephCluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    serde_json::from_str(&c.rbd_ok(&all)).unwrap()
}

fn num_blocks(d: &Ferryd, bdev: &str) -> u64 {
    d.ok("bdev_get_bdevs", json!({ "name": bdev }))[0]["num_blocks"].as_u64().unwrap()
}

/// Waits (bounded) until `probe` holds.
fn wait_for(what: &str, secs: u64, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !probe() {
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connections librados holds in ferryd: each cluster connection runs its own three
/// `msgr-worker-N` threads (the messenger's stack is per connection).
fn messenger_workers(d: &Ferryd) -> usize {
    thread_names(d.pid()).iter().filter(|n| n.starts_with("msgr-worker")).count()
}

#[test]
fn an_image_served_through_every_rbd_method() {
    let c = CephCluster::up("rbd-main");
    c.create_image("disk0", 64);
    let d = ferryd();
    let scratch = scratch_dir("rbd-export");

    // A registered cluster: its description, a duplicate refused.
    register(&d, &c, "c0");
    let e = d.err("bdev_rbd_register_cluster", json!({ "name": "c0", "config_file": c.conf() }));
    assert_eq!(e.code, -libc::EEXIST as i64, "{e:?}");
    let info = d.ok("bdev_rbd_get_clusters_info", json!({ "name": "c0" }));
    let want = json!({ "cluster_name": "c0", "config_file": c.conf(), "key_file": c.keyring(),
                       "config_param": { "rbd_cache_policy": "writeback", "rbd_cache_writethrough_until_flush": "false" } });
    assert_eq!(info, want);
    assert_eq!(d.ok("bdev_rbd_get_clusters_info", json!({})).as_array().unwrap().len(), 1);

    // An image on it, with SPDK's driver_specific fields.
    let p = json!({ "name": "R0", "pool_name": "rbd", "rbd_name": "disk0", "block_size": 512, "cluster_name": "c0" });
    assert_eq!(d.ok("bdev_rbd_create", p), json!("R0"));
    let b = &d.ok("bdev_get_bdevs", json!({ "name": "R0" }))[0];
    assert_eq!((b["product_name"].as_str(), b["num_blocks"].as_u64()), (Some("Ceph Rbd Disk"), Some(64 * MIB / 512)));
    let rbd = &b["driver_specific"]["rbd"];
    assert_eq!(
        (&rbd["pool_name"], &rbd["rbd_name"], &rbd["cluster_name"]),
        (&json!("rbd"), &json!("disk0"), &json!("c0"))
    );
    assert_eq!((&rbd["config_file"], &rbd["features"]), (&json!(c.conf()), &json!(["layering"])), "{rbd}");
    let e = d.err("bdev_rbd_unregister_cluster", json!({ "name": "c0" }));
    assert_eq!(e.code, -libc::EBUSY as i64, "a cluster in use stays: {e:?}");

    // Ferry to Ceph: data written through a vhost-user-blk controller and flushed is in
    // `rbd export` (librbd's cache is write-back: the flush is what sends it to the OSD before
    // librbd's own one-second write-back would).
    let mut v = vhost(&d, "vb0", "R0");
    let spots = [0u64, 5 * MIB + 4096, 63 * MIB];
    for (i, &at) in spots.iter().enumerate() {
        write_at(&mut v, at, &pattern(i as u64, 256 << 10));
    }
    let flush = one(&mut v, &Request::Flush, 3);
    assert_eq!(flush.status, status::OK);
    let image = export(&c, "disk0", &scratch);
    for (i, &at) in spots.iter().enumerate() {
        let at = at as usize;
        assert!(image[at..at + (256 << 10)] == pattern(i as u64, 256 << 10)[..], "rbd export differs at {at}");
    }

    // Ceph to Ferry: an image imported with `rbd import` reads back through an unnamed
    // cluster (SPDK's inline user and config), the key masked in every report.
    let src = scratch.join("import.bin");
    let data = pattern(99, 8 * MIB as usize);
    std::fs::write(&src, &data).unwrap();
    c.rbd_ok(&["import", "--image-feature", "layering", src.to_str().unwrap(), "rbd/imported"]);
    let workers = messenger_workers(&d);
    let p = json!({ "name": "R1", "pool_name": "rbd", "rbd_name": "imported", "block_size": 4096,
                    "user_id": "admin", "config": inline_config(&c) });
    assert_eq!(d.ok("bdev_rbd_create", p), json!("R1"));
    let rbd = d.ok("bdev_get_bdevs", json!({ "name": "R1" }))[0]["driver_specific"]["rbd"].clone();
    assert_eq!((&rbd["user_id"], &rbd["config"]["key"]), (&json!("admin"), &json!("***")), "{rbd}");
    assert_eq!(rbd["config"]["mon_host"], json!(c.mon_addr()));
    let one_more = messenger_workers(&d);
    assert!(one_more > workers, "a new connection for a new cluster spec: {workers} -> {one_more}");
    let mut v1 = vhost(&d, "vb1", "R1");
    assert!(read_at(&mut v1, 0, 4 * MIB as usize) == data[..4 * MIB as usize], "imported data read back");
    assert!(read_at(&mut v1, 6 * MIB, MIB as usize) == data[6 * MIB as usize..7 * MIB as usize]);
    // A second image with the same user and config shares that connection.
    c.create_image("disk2", 16);
    let p = json!({ "name": "R2", "pool_name": "rbd", "rbd_name": "disk2", "block_size": 512,
                    "user_id": "admin", "config": inline_config(&c) });
    d.ok("bdev_rbd_create", p);
    assert_eq!(messenger_workers(&d), one_more, "R2 shares R1's connection");

    // Unmap frees the image's objects: `rbd du` sees 8 MiB written, then none.
    let mut v2 = vhost(&d, "vb2", "R2");
    for i in 0..8u64 {
        write_at(&mut v2, i * MIB, &pattern(i, MIB as usize));
    }
    one(&mut v2, &Request::Flush, 3);
    let used = |c: &CephCluster| rbd_json(c, &["du", "rbd/disk2"])["images"][0]["used_size"].as_u64().unwrap();
    assert!(used(&c) >= 8 * MIB, "8 MiB written: {}", used(&c));
    let trim = one(&mut v2, &Request::Discard { sector: 0, sectors: (8 * MIB / 512) as u32 }, 4);
    assert_eq!(trim.status, status::OK);
    assert_eq!(used(&c), 0, "the discarded objects are gone");
    assert!(read_at(&mut v2, 0, 4096).iter().all(|&b| b == 0), "discarded blocks read as zeroes");

    // A resize by another client reaches the bdev; bdev_rbd_resize grows image and bdev.
    c.rbd_ok(&["resize", "--size", "96", "rbd/disk0"]);
    wait_for("the bdev follows the image's new size", 20, || num_blocks(&d, "R0") == 96 * MIB / 512);
    d.ok("bdev_rbd_resize", json!({ "name": "R0", "new_size": 128 }));
    assert_eq!(rbd_json(&c, &["info", "rbd/disk0"])["size"], json!(128 * MIB));
    assert_eq!(num_blocks(&d, "R0"), 128 * MIB / 512);
    let e = d.err("bdev_rbd_resize", json!({ "name": "R0", "new_size": 64 }));
    assert_eq!(e.code, -32602, "shrinking is refused: {e:?}");

    // save_config replays into a new daemon (`ferryd -c`): the registration first, the data
    // still there.
    let saved = d.ok("save_config", Value::Null);
    let bdev_config =
        saved["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "bdev").unwrap()["config"].clone();
    let methods: Vec<&str> = bdev_config.as_array().unwrap().iter().filter_map(|e| e["method"].as_str()).collect();
    let reg = methods.iter().position(|m| *m == "bdev_rbd_register_cluster").expect("the cluster is saved");
    let create = methods.iter().position(|m| *m == "bdev_rbd_create").unwrap();
    assert!(reg < create, "{methods:?}");
    drop((v, v1, v2));
    drop(d);
    let cfg = write_config(&scratch, "rbd.json", bdev_config);
    let dir = scratch_dir("rbd-replay");
    let d2 = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap(), "-c", cfg.to_str().unwrap()]);
    let mut v = vhost(&d2, "vb0", "R0");
    assert!(read_at(&mut v, 5 * MIB + 4096, 256 << 10) == pattern(1, 256 << 10), "replayed R0 reads its data");
    assert_eq!(num_blocks(&d2, "R0"), 128 * MIB / 512);

    // Deleting the bdevs releases the cluster at once, as SPDK's clients expect (they
    // unregister right after the delete), even while vb0's client still holds R0's channel:
    // the deleted bdev lingers until its controller lets go, holding the connection itself.
    for b in ["R0", "R1", "R2"] {
        d2.ok("bdev_rbd_delete", json!({ "name": b }));
    }
    d2.ok("bdev_rbd_unregister_cluster", json!({ "name": "c0" }));
    assert_eq!(d2.ok("bdev_rbd_get_clusters_info", Value::Null), json!([]));
    let e = d2.err(
        "bdev_rbd_create",
        json!({ "name": "R3", "pool_name": "rbd", "rbd_name": "disk0", "block_size": 512, "cluster_name": "c0" }),
    );
    assert!(e.message.contains("not registered"), "{e:?}");
    drop(v);
    wait_for("vb0 deletable once its client left", 10, || {
        d2.rpc("vhost_delete_controller", json!({ "ctrlr": "vb0" })).is_ok()
    });
}

#[test]
fn a_bad_cluster_pool_image_or_parameter_is_a_clear_error_in_bounded_time() {
    let c = CephCluster::up("rbd-errors");
    c.create_image("disk0", 16);
    let d = ferryd();
    let create = |config: Value, pool: &str, image: &str| {
        let p = json!({ "name": "X", "pool_name": pool, "rbd_name": image, "block_size": 512, "config": config });
        let started = Instant::now();
        let e = d.err("bdev_rbd_create", p);
        (e, started.elapsed())
    };
    // A key the cluster does not know: refused by the monitor, at once. (With a bare
    // `IP:PORT` mon_host librados goes on to the address's other forms after the refusal and
    // reports a timeout; the monitor's msgr2 address, as ceph.conf writes it, is definite.)
    let wrong = c.gen_key();
    let v2 = format!("[v2:{}]", c.mon_addr());
    let (e, took) = create(json!({ "mon_host": v2, "key": wrong }), "rbd", "disk0");
    assert_eq!(e.code, -libc::EACCES as i64, "{e:?}");
    assert!(e.message.contains("refused the user's key"), "{e:?}");
    assert!(!e.message.contains(&wrong), "the key never appears in an error: {e:?}");
    assert!(took < Duration::from_secs(10), "a refused key is known at once: {took:?}");
    // No such pool, no such image.
    let (e, _) = create(inline_config(&c), "nopool", "disk0");
    assert_eq!((e.code, e.message.as_str()), (-libc::ENOENT as i64, "pool nopool does not exist"));
    let (e, _) = create(inline_config(&c), "rbd", "nodisk");
    assert_eq!((e.code, e.message.as_str()), (-libc::ENOENT as i64, "image nodisk does not exist in pool rbd"));
    // Nobody at the monitor's address: ETIMEDOUT after client_mount_timeout (10 s), not a hang.
    let port = common::free_port();
    let (e, took) = create(json!({ "mon_host": format!("127.0.0.1:{port}"), "key": c.key() }), "rbd", "disk0");
    assert_eq!(e.code, -libc::ETIMEDOUT as i64, "{e:?}");
    assert!(took < Duration::from_secs(30), "bounded: {took:?}");
    // Parameters: each refused with -32602 or the errno SPDK gives, nothing half-made.
    for (p, code) in [
        (json!({ "pool_name": "rbd", "rbd_name": "disk0", "block_size": 3, "config": inline_config(&c) }), -32602),
        (json!({ "pool_name": "rbd", "rbd_name": "disk0", "block_size": 0, "config": inline_config(&c) }), -32602),
        (json!({ "pool_name": "rbd", "rbd_name": "disk0", "block_size": 512, "config": { "mon_host": 5 } }), -32602),
        (json!({ "pool_name": "rb\0d", "rbd_name": "disk0", "block_size": 512, "config": inline_config(&c) }), -32602),
        (
            json!({ "pool_name": "rbd", "rbd_name": "disk0", "block_size": 512, "cluster_name": "c0", "user_id": "admin" }),
            -32602,
        ),
        (
            json!({ "pool_name": "rbd", "rbd_name": "disk0", "block_size": 512, "cluster_name": "nope" }),
            -(libc::ENOENT as i64),
        ),
        (json!({ "rbd_name": "disk0", "block_size": 512 }), -32602),
        (json!({ "pool_name": "rbd", "rbd_name": "disk0", "block_size": 512, "bogus": 1 }), -32602),
    ] {
        let e = d.err("bdev_rbd_create", p.clone());
        assert_eq!(e.code, code, "{p}: {e:?}");
    }
    let e = d.err("bdev_rbd_register_cluster", json!({ "name": "c1", "config_param": { "no_such_option": "1" } }));
    assert_eq!(e.code, -libc::ENOENT as i64, "an unknown Ceph option is named: {e:?}");
    assert!(e.message.contains("no_such_option"), "{e:?}");
    let e = d.err("bdev_rbd_register_cluster", json!({ "name": "c1", "core_mask": "0xzz" }));
    assert_eq!(e.code, -32602, "{e:?}");
    for m in ["bdev_rbd_unregister_cluster", "bdev_rbd_delete"] {
        let e = d.err(m, json!({ "name": "nope" }));
        assert!(e.code == -(libc::ENOENT as i64) || e.code == -(libc::ENODEV as i64), "{m}: {e:?}");
    }
    let e = d.err("bdev_rbd_get_clusters_info", json!({ "name": "nope" }));
    assert_eq!(e.code, -libc::ENOENT as i64, "{e:?}");
    assert!(d.ok("bdev_get_bdevs", Value::Null).as_array().unwrap().is_empty(), "nothing half-made");
    // And the daemon serves the right call afterwards.
    let p = json!({ "pool_name": "rbd", "rbd_name": "disk0", "block_size": 512, "config": inline_config(&c) });
    assert_eq!(d.ok("bdev_rbd_create", p), json!("Ceph0"), "SPDK's default name");

    // Without `config`, librados's default configuration is read (here found through
    // $CEPH_CONF, as /etc/ceph/ceph.conf would be): the image opens with nothing else given.
    let dir = scratch_dir("rbd-default-conf");
    let conf = c.conf().to_path_buf();
    let sock_dir = dir.to_str().unwrap().to_string();
    let d2 = Ferryd::start_with(dir, &["--no-pin", "-m", "0x1", "-S", &sock_dir], |cmd| {
        cmd.env("CEPH_CONF", &conf);
    });
    let p = json!({ "name": "D", "pool_name": "rbd", "rbd_name": "disk0", "block_size": 512 });
    assert_eq!(d2.ok("bdev_rbd_create", p), json!("D"));
}

#[test]
fn io_waits_out_a_cluster_restart_and_fails_under_a_set_op_timeout() {
    let c = CephCluster::up("rbd-restart");
    c.create_image("disk0", 16);
    c.create_image("disk1", 16);
    let d = ferryd();
    d.ok("bdev_rbd_create", json!({ "name": "R0", "pool_name": "rbd", "rbd_name": "disk0", "block_size": 512, "config": inline_config(&c) }));
    // The documented way to fail rather than wait: librados's own OSD operation timeout.
    let mut timed = inline_config(&c);
    timed["rados_osd_op_timeout"] = json!("3");
    d.ok(
        "bdev_rbd_create",
        json!({ "name": "R1", "pool_name": "rbd", "rbd_name": "disk1", "block_size": 512, "config": timed }),
    );
    let mut v = vhost(&d, "vb0", "R0");
    let mut v1 = vhost(&d, "vb1", "R1");
    write_at(&mut v, 0, &pattern(7, 4096));

    // The cluster goes away; writes submitted now are in flight while it is gone.
    c.stop();
    let mem = v.mem().clone();
    let n = 32u64;
    let bufs: Vec<u64> = (0..n).map(|_| mem.alloc(4096, 4096).unwrap()).collect();
    for (i, &b) in bufs.iter().enumerate() {
        mem.write(b, &pattern(100 + i as u64, 4096));
        v.queue(0).submit(&Request::Write { sector: 8 + i as u64 * 8, bufs: &[(b, 4096)] }, i as u64).unwrap();
    }
    v.queue(0).kick();
    // R1's write fails once its timeout passes, the cluster still down.
    let mem1 = v1.mem().clone();
    let b1 = mem1.alloc(4096, 4096).unwrap();
    let failed = one(&mut v1, &Request::Write { sector: 0, bufs: &[(b1, 4096)] }, 9);
    assert_eq!(failed.status, status::IOERR, "rados_osd_op_timeout turns the wait into an error");
    // The cluster returns (same data, same address): every write completes and reads back.
    c.start();
    let done = completions(&mut v, n as usize, 120);
    assert!(done.iter().all(|c| c.status == status::OK), "{done:?}");
    for i in 0..n {
        assert!(read_at(&mut v, (8 + i * 8) * 512, 4096) == pattern(100 + i, 4096), "write {i} after the restart");
    }
    assert!(read_at(&mut v, 0, 4096) == pattern(7, 4096), "data from before the restart");
    let w = one(&mut v1, &Request::Write { sector: 0, bufs: &[(b1, 4096)] }, 10);
    assert_eq!(w.status, status::OK, "R1 works again");
}

#[test]
fn an_lvstore_on_rbd_survives_a_restart() {
    let c = CephCluster::up("rbd-lvol");
    c.create_image("pool0", 64);
    let create = json!({ "name": "R0", "pool_name": "rbd", "rbd_name": "pool0", "block_size": 512, "config": inline_config(&c) });
    let d = ferryd();
    d.ok("bdev_rbd_create", create.clone());
    let lvs = d.ok("bdev_lvol_create_lvstore", json!({ "bdev_name": "R0", "lvs_name": "lvs" }));
    let lvol = d.ok(
        "bdev_lvol_create",
        json!({ "lvol_name": "vol", "size_in_mib": 16, "lvs_name": "lvs", "thin_provision": true }),
    );
    let mut v = vhost(&d, "vb0", lvol.as_str().unwrap());
    write_at(&mut v, MIB, &pattern(5, 64 << 10));
    let snap = d.ok("bdev_lvol_snapshot", json!({ "lvol_name": "lvs/vol", "snapshot_name": "snap" }));
    write_at(&mut v, MIB, &pattern(6, 64 << 10));
    // Durable once flushed (the lvol, like the image under it, has a volatile write cache):
    // then even a kill (-9, what dropping the daemon does) keeps it.
    assert_eq!(one(&mut v, &Request::Flush, 3).status, status::OK);
    drop(v);
    drop(d);

    // A new daemon opens the image again: examine finds the store, its volume and snapshot.
    let d = ferryd();
    d.ok("bdev_rbd_create", create);
    d.ok("bdev_wait_for_examine", Value::Null);
    let stores = d.ok("bdev_lvol_get_lvstores", Value::Null);
    assert_eq!(stores[0]["uuid"], lvs, "{stores}");
    let vols = d.ok("bdev_lvol_get_lvols", json!({ "lvs_name": "lvs" }));
    let names: Vec<&str> = vols.as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
    assert!(names.contains(&"vol") && names.contains(&"snap"), "{vols}");
    let mut v = vhost(&d, "vb0", "lvs/vol");
    assert!(read_at(&mut v, MIB, 64 << 10) == pattern(6, 64 << 10), "the volume's data");
    let mut s = vhost(&d, "vb1", snap.as_str().unwrap());
    assert!(read_at(&mut s, MIB, 64 << 10) == pattern(5, 64 << 10), "the snapshot's data");
}

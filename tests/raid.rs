//! RAID bdevs against a real `ferryd -m 0x3`: every `bdev_raid_*` method with SPDK's fields and
//! errors, data verified through raid0, raid1 and concat (ferry-bdevperf verify), a raid1
//! member removed under I/O with no error reaching the frontend, added back and rebuilt online
//! (both members identical), the write-intent bitmap copying only the regions written while a
//! member was away (`rebuilt_bytes`), assembly at examine after a restart, a resync after
//! kill -9, and `save_config` replay.

mod common;

use common::{pat, Ferryd};
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::{Client, Options, Request};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const BLOCK: usize = 4096;
const T: Duration = Duration::from_secs(20);

/// SPDK's `bdev_raid_get_bdevs` members (bdev_raid.c, raid_bdev_write_info_json).
const SPDK_KEYS: &[&str] = &[
    "name",
    "uuid",
    "strip_size_kb",
    "state",
    "raid_level",
    "superblock",
    "num_base_bdevs",
    "num_base_bdevs_discovered",
    "num_base_bdevs_operational",
    "base_bdevs_list",
];

fn start() -> Ferryd {
    let dir = common::scratch_dir("raid");
    Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()])
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap_or_else(|| panic!("{v} is not an object")).keys().map(String::as_str).collect()
}

fn malloc(d: &Ferryd, name: &str, mib: u64) {
    d.ok("bdev_malloc_create", json!({"name": name, "num_blocks": mib * 2048, "block_size": 512}));
}

/// A `len`-byte file served as uring bdev `name` (512-byte blocks); its path.
fn file_bdev(d: &Ferryd, name: &str, len: u64) -> PathBuf {
    let path = d.dir.join(format!("{name}.img"));
    if !path.exists() {
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
    }
    d.ok("bdev_uring_create", json!({"name": name, "filename": path, "block_size": 512}));
    path
}

fn raid(d: &Ferryd, name: &str) -> Value {
    let all = d.ok("bdev_raid_get_bdevs", json!({"category": "all"}));
    all.as_array().unwrap().iter().find(|r| r["name"] == name).cloned().unwrap_or_else(|| panic!("no {name} in {all}"))
}

/// Waits until raid `name` is online with no process running; its info.
#[track_caller]
fn wait_settled(d: &Ferryd, name: &str) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let r = raid(d, name);
        let all_in = r["num_base_bdevs_discovered"] == r["num_base_bdevs"];
        if r["state"] == "online" && r.get("process").is_none() && all_in {
            return r;
        }
        assert!(Instant::now() < deadline, "raid {name} did not settle: {r}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The data area of a member file (past `offset` bytes), up to `len` bytes.
fn area(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let all = std::fs::read(path).unwrap();
    all[offset as usize..(offset + len) as usize].to_vec()
}

struct Blk {
    c: Client,
    buf: u64,
    tag: u64,
}

impl Blk {
    fn open(d: &Ferryd, ctrlr: &str, bdev: &str) -> Blk {
        Blk::open_on(d, ctrlr, bdev, "0x3")
    }

    fn open_on(d: &Ferryd, ctrlr: &str, bdev: &str, cpumask: &str) -> Blk {
        d.ok("vhost_create_blk_controller", json!({"ctrlr": ctrlr, "dev_name": bdev, "cpumask": cpumask}));
        let opts = Options { num_queues: 2, queue_size: 64, mem_size: 8 << 20, hugetlbfs: None };
        let c = Client::connect(&d.dir.join(ctrlr), &opts).expect("connect to the controller");
        let buf = c.mem().alloc(4 * MIB as usize, 4096).unwrap();
        Blk { c, buf, tag: 0 }
    }

    fn run(&mut self, q: usize, req: &Request) -> u8 {
        self.tag += 1;
        self.c.queue(q).submit(req, self.tag).unwrap();
        self.c.queue(q).kick();
        let done = common::wait_completions(&mut self.c, q, 1);
        done[0].status
    }

    #[track_caller]
    fn write_ok(&mut self, q: usize, sector: u64, data: &[u8]) {
        self.c.mem().write(self.buf, data);
        let buf = self.buf;
        let st = self.run(q, &Request::Write { sector, bufs: &[(buf, data.len() as u32)] });
        assert_eq!(st, status::OK, "write at sector {sector}");
    }

    #[track_caller]
    fn read(&mut self, q: usize, sector: u64, len: usize) -> Vec<u8> {
        let buf = self.buf;
        let st = self.run(q, &Request::Read { sector, bufs: &[(buf, len as u32)] });
        assert_eq!(st, status::OK, "read at sector {sector}");
        let mut out = vec![0u8; len];
        self.c.mem().read(buf, &mut out);
        out
    }

    /// `n` 4 KiB writes (then reads) of pattern `tag` at sectors spread over `span` sectors,
    /// 16 in flight per queue on both queues; every status must be OK.
    fn churn(&mut self, tag: u32, span: u64, n: u64) {
        let data = pat(tag, BLOCK);
        self.c.mem().write(self.buf, &data);
        let buf = self.buf;
        let rbuf = self.buf + MIB;
        let mut sent = 0;
        while sent < n {
            for q in 0..2 {
                for i in 0..16u64 {
                    let sector = ((sent + i) * 8 * 7919) % span / 8 * 8;
                    let req = if i % 2 == 0 {
                        Request::Write { sector, bufs: &[(buf, BLOCK as u32)] }
                    } else {
                        Request::Read { sector, bufs: &[(rbuf, BLOCK as u32)] }
                    };
                    self.c.queue(q).submit(&req, 1000 + i).unwrap();
                }
                self.c.queue(q).kick();
            }
            for q in 0..2 {
                let done = common::wait_completions(&mut self.c, q, 16);
                assert!(done.iter().all(|c| c.status == status::OK), "an I/O failed: {done:?}");
            }
            sent += 16;
        }
    }
}

#[test]
fn every_method_answers_with_spdk_fields_and_errors() {
    let d = start();
    for m in ["M0", "M1", "M2", "M3"] {
        malloc(&d, m, 8);
    }
    // raid0 with the string form of base_bdevs, raid1 with the alias "1", concat.
    d.ok("bdev_raid_create", json!({"name": "r0", "raid_level": "0", "strip_size_kb": 64, "base_bdevs": "M0 M1"}));
    let u = "0b7c4a4e-8a47-4f0e-9d4f-2a0b6f1c0d11";
    d.ok("bdev_raid_create", json!({"name": "r1", "raid_level": "1", "base_bdevs": ["M2", "M3"], "uuid": u}));
    let r0 = raid(&d, "r0");
    assert!(keys(&r0).is_superset(&SPDK_KEYS.iter().copied().collect()), "{r0}");
    assert_eq!(r0["state"], "online");
    assert_eq!(r0["raid_level"], "raid0");
    assert_eq!(r0["strip_size_kb"], 64);
    assert_eq!(r0["num_base_bdevs_discovered"], 2);
    assert_eq!(r0["base_bdevs_list"][1]["name"], "M1");
    assert_eq!(r0["base_bdevs_list"][1]["is_configured"], true);
    assert_eq!(keys(&r0["base_bdevs_list"][0]), ["data_offset", "data_size", "is_configured", "name", "uuid"].into());
    let b = d.ok("bdev_get_bdevs", json!({"name": "r0"}))[0].clone();
    assert_eq!(b["product_name"], "Raid Volume");
    assert_eq!(b["num_blocks"], 2 * 8 * 2048);
    assert_eq!(b["driver_specific"]["raid"]["raid_level"], "raid0");
    let b1 = d.ok("bdev_get_bdevs", json!({"name": "r1"}))[0].clone();
    assert_eq!(b1["uuid"], u);
    assert_eq!(b1["num_blocks"], 8 * 2048);
    assert_eq!(raid(&d, "r1")["strip_size_kb"], 0);
    // Members are claimed.
    let m0 = d.ok("bdev_get_bdevs", json!({"name": "M0"}))[0].clone();
    assert_eq!(m0["claimed"], true, "{m0}");

    // SPDK's errors, and nothing half-created.
    malloc(&d, "F0", 8);
    malloc(&d, "F1", 8);
    let bad = [
        (json!({"name": "x", "raid_level": "raid1", "strip_size_kb": 64, "base_bdevs": ["F0", "F1"]}), -22),
        (json!({"name": "x", "raid_level": "raid0", "strip_size_kb": 48, "base_bdevs": ["F0", "F1"]}), -22),
        (json!({"name": "x", "raid_level": "raid0", "base_bdevs": ["F0", "F1"]}), -22),
        (json!({"name": "x", "raid_level": "raid1", "base_bdevs": ["F0"]}), -22),
        (json!({"name": "x", "raid_level": "raid5f", "strip_size_kb": 64, "base_bdevs": ["F0", "F1", "M0"]}), -22),
        (json!({"name": "r0", "raid_level": "raid1", "base_bdevs": ["F0", "F1"]}), -17),
        (json!({"name": "x", "raid_level": "raid1", "base_bdevs": ["F0", "M0"]}), -1),
        (json!({"name": "x", "raid_level": "raid1", "base_bdevs": ["F0", ""]}), -22),
    ];
    for (p, code) in bad {
        let e = d.err("bdev_raid_create", p.clone());
        assert_eq!(e.code, code, "{p}: {e:?}");
        assert!(e.message.starts_with("Failed to create RAID bdev") || e.message.contains("base bdev name"), "{e:?}");
        assert!(raid_names(&d).iter().all(|n| n != "x"), "{p} left an array behind");
    }
    for (p, code) in [
        (json!({"name": "x", "raid_level": "raid7", "base_bdevs": ["F0"]}), -32602),
        (json!({"name": "x", "raid_level": "raid1"}), -32602),
        (json!({"name": "x", "raid_level": "raid1", "base_bdevs": ["F0", "F1"], "bogus": 1}), -32602),
    ] {
        assert_eq!(d.err("bdev_raid_create", p.clone()).code, code, "{p}");
    }
    // F0 and F1 were released by every failed create: a raid takes them now.
    d.ok(
        "bdev_raid_create",
        json!({"name": "c", "raid_level": "concat", "strip_size_kb": 4, "base_bdevs": ["F0", "F1"]}),
    );
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "c"}))[0]["num_blocks"], 2 * 8 * 2048);

    // A missing base: configuring until it appears.
    malloc(&d, "G0", 8);
    d.ok("bdev_raid_create", json!({"name": "g", "raid_level": "raid1", "base_bdevs": ["G0", "G1"]}));
    assert_eq!(raid(&d, "g")["state"], "configuring");
    assert_eq!(d.ok("bdev_raid_get_bdevs", json!({"category": "configuring"})).as_array().unwrap().len(), 1);
    assert!(d.rpc("bdev_get_bdevs", json!({"name": "g"})).is_err());
    malloc(&d, "G1", 8);
    assert_eq!(raid(&d, "g")["state"], "online");
    assert_eq!(d.ok("bdev_raid_get_bdevs", json!({"category": "online"})).as_array().unwrap().len(), 4);
    assert_eq!(d.err("bdev_raid_get_bdevs", json!({"category": "sideways"})).code, -32602);

    // add / remove / delete errors.
    let e = d.err("bdev_raid_add_base_bdev", json!({"raid_bdev": "nope", "base_bdev": "G0"}));
    assert_eq!((e.code, e.message.as_str()), (-19, "raid bdev nope is not found in config"));
    malloc(&d, "H", 8);
    let e = d.err("bdev_raid_add_base_bdev", json!({"raid_bdev": "r0", "base_bdev": "H"}));
    assert_eq!(e.code, -22, "no empty slot: {e:?}");
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "H"}))[0]["claimed"], false, "H not left claimed");
    let e = d.err("bdev_raid_remove_base_bdev", json!({"name": "H"}));
    assert_eq!((e.code, e.message.as_str()), (-19, "Failed to remove base bdev from raid bdev"));
    assert_eq!(d.err("bdev_raid_remove_base_bdev", json!({"name": "nothing"})).code, -19);
    let e = d.err("bdev_raid_delete", json!({"name": "nope"}));
    assert_eq!((e.code, e.message.as_str()), (-19, "raid bdev nope not found"));

    // raid1 remove and add back.
    d.ok("bdev_raid_remove_base_bdev", json!({"name": "M3"}));
    let r1 = raid(&d, "r1");
    assert_eq!(r1["state"], "online");
    assert_eq!(r1["num_base_bdevs_discovered"], 1);
    assert_eq!(r1["base_bdevs_list"][1]["name"], Value::Null);
    d.ok("bdev_raid_add_base_bdev", json!({"raid_bdev": "r1", "base_bdev": "M3"}));
    wait_settled(&d, "r1");
    assert_eq!(raid(&d, "r1")["rebuilt_bytes"], 8 * MIB);
    // raid0 loses a member: offline, its bdev gone.
    d.ok("bdev_raid_remove_base_bdev", json!({"name": "M1"}));
    assert_eq!(raid(&d, "r0")["state"], "offline");
    assert!(d.rpc("bdev_get_bdevs", json!({"name": "r0"})).is_err());
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "M1"}))[0]["claimed"], false);
    for n in ["r0", "r1", "c", "g"] {
        d.ok("bdev_raid_delete", json!({"name": n}));
    }
    assert_eq!(d.ok("bdev_raid_get_bdevs", json!({"category": "all"})), json!([]));
    for m in ["M0", "M1", "M2", "M3", "F0", "F1", "G0", "G1"] {
        assert_eq!(d.ok("bdev_get_bdevs", json!({"name": m}))[0]["claimed"], false, "{m} released");
    }
    assert!(!d.log_text().contains("panicked"));
}

fn raid_names(d: &Ferryd) -> Vec<String> {
    let all = d.ok("bdev_raid_get_bdevs", json!({"category": "all"}));
    all.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn data_is_verified_through_every_level() {
    let dir = common::scratch_dir("raidverify");
    let mut entries = Vec::new();
    for i in 0..6 {
        entries.push(json!({"method": "bdev_malloc_create", "params": {"name": format!("M{i}"), "num_blocks": 16384, "block_size": 512}}));
    }
    entries.push(json!({"method": "bdev_raid_create", "params": {"name": "r0", "raid_level": "raid0", "strip_size_kb": 16, "base_bdevs": ["M0", "M1"]}}));
    entries.push(json!({"method": "bdev_raid_create", "params": {"name": "r1", "raid_level": "raid1", "base_bdevs": ["M2", "M3"]}}));
    entries.push(json!({"method": "bdev_raid_create", "params": {"name": "cc", "raid_level": "concat", "strip_size_kb": 16, "base_bdevs": ["M4", "M5"]}}));
    let config = common::write_config(&dir, "raid.json", Value::Array(entries));
    for io_size in ["4096", "65536"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry-bdevperf"))
            .args(["-c", config.to_str().unwrap(), "--no-pin", "-m", "0x3", "-w", "verify", "-q", "32"])
            .args(["-o", io_size, "-t", "1", "--json-summary", "-T", "r0", "-T", "r1", "-T", "cc"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "verify failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(summary["jobs"], 6);
        assert_eq!(summary["miscompares"], 0);
        assert_eq!(summary["errors"], 0);
        assert!(summary["iops"].as_f64().unwrap() > 0.0);
    }
}

/// raid1 over two files, in use from both queues while a member is removed, added back and
/// rebuilt: no I/O fails, and both members end identical.
#[test]
fn raid1_member_removed_under_io_then_added_back_and_rebuilt_online() {
    let d = start();
    let a = file_bdev(&d, "A", 16 * MIB);
    let b = file_bdev(&d, "B", 16 * MIB);
    d.ok("bdev_raid_create", json!({"name": "r", "raid_level": "raid1", "base_bdevs": ["A", "B"]}));
    let mut v = Blk::open(&d, "v", "r");
    let span = 16 * MIB / 512;
    v.churn(1, span, 64);
    // Removal with I/O in flight on both queues.
    let data = pat(2, BLOCK);
    v.c.mem().write(v.buf, &data);
    let buf = v.buf;
    for q in 0..2 {
        for i in 0..16u64 {
            v.c.queue(q)
                .submit(&Request::Write { sector: 64 * i + 8 * q as u64, bufs: &[(buf, BLOCK as u32)] }, 10 + i)
                .unwrap();
        }
        v.c.queue(q).kick();
    }
    d.ok("bdev_raid_remove_base_bdev", json!({"name": "B"}));
    for q in 0..2 {
        let done = common::wait_completions(&mut v.c, q, 16);
        assert!(done.iter().all(|c| c.status == status::OK), "{done:?}");
    }
    assert_eq!(raid(&d, "r")["num_base_bdevs_discovered"], 1);
    v.churn(3, span, 64);
    // Back in, rebuilt while I/O goes on.
    d.ok("bdev_raid_add_base_bdev", json!({"raid_bdev": "r", "base_bdev": "B"}));
    let mut saw_process = false;
    let deadline = Instant::now() + T;
    loop {
        v.churn(4, span, 32);
        let r = raid(&d, "r");
        if let Some(p) = r.get("process") {
            assert_eq!(p["type"], "rebuild");
            assert_eq!(p["target"], "B");
            saw_process = true;
        } else if r["num_base_bdevs_discovered"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "rebuild did not end: {r}");
    }
    let _ = saw_process; // the rebuild may end before the first look
    let r = wait_settled(&d, "r");
    assert_eq!(r["rebuilt_bytes"], 16 * MIB, "a full rebuild without a superblock");
    // A hot-removed member (its bdev deleted under I/O) degrades the array too.
    v.write_ok(0, 0, &pat(5, BLOCK));
    assert_eq!(v.read(1, 0, BLOCK), pat(5, BLOCK));
    drop(v);
    assert_eq!(area(&a, 0, 16 * MIB), area(&b, 0, 16 * MIB), "members differ after the rebuild");
    let mut v = Blk::open(&d, "v2", "r");
    v.churn(6, span, 16);
    d.ok("bdev_uring_delete", json!({"name": "A"}));
    v.churn(7, span, 32);
    assert_eq!(raid(&d, "r")["base_bdevs_list"][0]["is_configured"], false);
    assert!(!d.log_text().contains("panicked"));
}

/// With a superblock, a member that comes back gets only the regions written while it was
/// away; and the array assembles itself from its members after a restart, resyncing after
/// kill -9 but not after a clean stop.
#[test]
fn superblock_bitmap_rebuilds_only_written_regions_and_arrays_assemble_at_examine() {
    let d = start();
    let a = file_bdev(&d, "A", 32 * MIB);
    let b = file_bdev(&d, "B", 32 * MIB);
    d.ok("bdev_raid_create", json!({"name": "r", "raid_level": "raid1", "base_bdevs": ["A", "B"], "superblock": true}));
    let r = raid(&d, "r");
    assert_eq!(r["superblock"], true);
    assert_eq!(r["base_bdevs_list"][0]["data_offset"], 2048);
    assert_eq!(r["write_intent"]["region_size_kb"], 1024);
    let saved = d.ok("save_config", Value::Null).to_string();
    assert!(!saved.contains("bdev_raid_create"), "superblock arrays come back by examine: {saved}");
    let mut v = Blk::open(&d, "v", "r");
    v.write_ok(0, 0, &pat(1, BLOCK));
    v.write_ok(1, 10 * 2048, &pat(2, BLOCK));
    d.ok("bdev_raid_remove_base_bdev", json!({"name": "B"}));
    // Two regions written while B is away (three writes, two in one region).
    v.write_ok(0, 3 * 2048, &pat(3, BLOCK));
    v.write_ok(1, 3 * 2048 + 16, &pat(4, BLOCK));
    v.write_ok(0, 20 * 2048 + 8, &pat(5, BLOCK));
    assert_eq!(raid(&d, "r")["write_intent"]["degraded_regions"], 2);
    d.ok("bdev_raid_add_base_bdev", json!({"raid_bdev": "r", "base_bdev": "B"}));
    let r = wait_settled(&d, "r");
    assert_eq!(r["rebuilt_bytes"], 2 * MIB, "only the two written regions are copied: {r}");
    assert_eq!(r["write_intent"]["degraded_regions"], 0);
    let data = 30 * MIB; // the data area (32 MiB less the 1 MiB superblock, rounded to regions)
    assert_eq!(area(&a, MIB, data), area(&b, MIB, data), "members' data areas differ after the bitmap rebuild");
    drop(v);

    // Clean stop: the array assembles from its members (known by their uuids, which
    // save_config keeps), with no resync.
    let dir = d.dir.clone();
    let uuid = |n: &str| d.ok("bdev_get_bdevs", json!({"name": n}))[0]["uuid"].clone();
    let config = common::write_config(
        &dir,
        "bases.json",
        json!([
            {"method": "bdev_uring_create", "params": {"name": "A", "filename": a, "block_size": 512, "uuid": uuid("A")}},
            {"method": "bdev_uring_create", "params": {"name": "B", "filename": b, "block_size": 512, "uuid": uuid("B")}}
        ]),
    );
    assert!(d.stop().success());
    let args = ["-m", "0x3", "-S", dir.to_str().unwrap(), "-c", config.to_str().unwrap()];
    let d = Ferryd::start_in(dir.clone(), &args);
    let r = wait_settled(&d, "r");
    assert_eq!(r["rebuilt_bytes"], 0, "no resync after a clean stop: {r}");
    let mut v = Blk::open(&d, "v", "r");
    assert_eq!(v.read(0, 3 * 2048 + 16, BLOCK), pat(4, BLOCK));
    assert_eq!(v.read(1, 20 * 2048 + 8, BLOCK), pat(5, BLOCK));
    v.write_ok(0, 25 * 2048, &pat(6, BLOCK));
    drop(v);
    drop(d); // SIGKILL: not closed cleanly

    // Unclean: the regions written since the array was opened are resynced (one here).
    let d = Ferryd::start_in(dir.clone(), &args);
    let r = wait_settled(&d, "r");
    assert_eq!(r["rebuilt_bytes"], MIB, "resync of the one region written before kill -9: {r}");
    let mut v = Blk::open(&d, "v", "r");
    assert_eq!(v.read(1, 25 * 2048, BLOCK), pat(6, BLOCK));
    assert_eq!(v.read(0, 0, BLOCK), pat(1, BLOCK));
    drop(v);
    assert!(d.stop().success());
    assert_eq!(area(&a, MIB, data), area(&b, MIB, data));
}

#[test]
fn save_config_replays_arrays_without_superblock() {
    let d = start();
    let a = file_bdev(&d, "A", 8 * MIB);
    let b = file_bdev(&d, "B", 8 * MIB);
    d.ok("bdev_raid_create", json!({"name": "r", "raid_level": "raid0", "strip_size_kb": 8, "base_bdevs": ["A", "B"]}));
    let mut v = Blk::open(&d, "v", "r");
    v.write_ok(0, 0, &pat(1, 4 * BLOCK));
    drop(v);
    let saved = d.ok("save_config", Value::Null);
    let bdev = saved["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "bdev").unwrap().clone();
    let raid_entry =
        bdev["config"].as_array().unwrap().iter().find(|e| e["method"] == "bdev_raid_create").unwrap().clone();
    assert_eq!(raid_entry["params"]["base_bdevs"], json!(["A", "B"]));
    assert_eq!(raid_entry["params"]["strip_size_kb"], 8);
    let config = d.dir.join("saved.json");
    std::fs::write(&config, saved.to_string()).unwrap();
    let dir = d.dir.clone();
    assert!(d.stop().success());
    // Striping put the first 8 KiB on A and the next on B.
    assert_eq!(area(&a, 0, 8192), pat(1, 4 * BLOCK)[..8192].to_vec());
    assert_eq!(area(&b, 0, 8192), pat(1, 4 * BLOCK)[8192..].to_vec());
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap(), "-c", config.to_str().unwrap()]);
    assert_eq!(raid(&d, "r")["state"], "online");
    let mut v = Blk::open(&d, "v2", "r");
    assert_eq!(v.read(1, 0, 4 * BLOCK), pat(1, 4 * BLOCK));
}

/// raid1 members whose I/O really fails (error bdevs `EE_M0`, `EE_M1` over mallocs): a read
/// that fails on a member is retried on the other and the failing member leaves the array; a
/// write that fails on one member succeeds through the array, which degrades and records the
/// region in its write-intent bitmap, so adding the member back copies only the regions
/// written since it left (that write's included). Each member alone then serves every block.
#[test]
fn raid1_member_io_failures_degrade_without_error_and_the_bitmap_limits_the_rebuild() {
    let d = start();
    for m in ["M0", "M1"] {
        malloc(&d, m, 32);
        d.ok("bdev_error_create", json!({"base_name": m}));
    }
    let create = json!({"name": "r", "raid_level": "raid1", "base_bdevs": ["EE_M0", "EE_M1"], "superblock": true});
    d.ok("bdev_raid_create", create);
    let r = raid(&d, "r");
    let region_bytes = r["write_intent"]["region_size_kb"].as_u64().unwrap() * 1024;
    assert!(r["write_intent"]["regions"].as_u64().unwrap() >= 6, "{r}");
    let region = region_bytes / 512; // sectors
    let at = |i: u64| i * region + 8;
    let rebuilt = |d: &Ferryd| raid(d, "r")["rebuilt_bytes"].as_u64().unwrap();
    let inject = |name: &str, io_type: &str, num: u32| {
        d.ok("bdev_error_inject_error", json!({"name": name, "io_type": io_type, "error_type": "failure", "num": num}));
    };
    let mut want: Vec<u32> = (0..6).collect();
    let mut v = Blk::open(&d, "v", "r");
    for i in 0..6u64 {
        v.write_ok(0, at(i), &pat(want[i as usize], BLOCK));
    }

    // Reads fail on EE_M0: 12 reads in flight, each one still returns its data.
    inject("EE_M0", "read", 1000);
    let rbase = v.buf + MIB;
    for i in 0..12u64 {
        let req = Request::Read { sector: at(i % 6), bufs: &[(rbase + i * BLOCK as u64, BLOCK as u32)] };
        v.c.queue(0).submit(&req, 100 + i).unwrap();
    }
    v.c.queue(0).kick();
    let done = common::wait_completions(&mut v.c, 0, 12);
    assert!(done.iter().all(|c| c.status == status::OK), "a read failed through the array: {done:?}");
    for i in 0..12u64 {
        let mut got = vec![0u8; BLOCK];
        v.c.mem().read(rbase + i * BLOCK as u64, &mut got);
        assert_eq!(got, pat(want[(i % 6) as usize], BLOCK), "read {i} returned the wrong data");
    }
    let r = raid(&d, "r");
    assert_eq!(r["state"], "online", "{r}");
    assert_eq!(r["num_base_bdevs_discovered"], 1, "the member whose reads fail left the array: {r}");
    assert_eq!(r["base_bdevs_list"][0]["is_configured"], false, "{r}");
    assert!(d.log_text().contains("raid1 read failed"), "the injected read failure was met");
    // Degraded: a write to region 2 is recorded; the member comes back with only it copied.
    inject("EE_M0", "clear", 0);
    want[2] = 102;
    v.write_ok(1, at(2), &pat(102, BLOCK));
    assert_eq!(raid(&d, "r")["write_intent"]["degraded_regions"], 1);
    let before = rebuilt(&d);
    d.ok("bdev_raid_add_base_bdev", json!({"raid_bdev": "r", "base_bdev": "EE_M0"}));
    let r = wait_settled(&d, "r");
    assert_eq!(rebuilt(&d) - before, region_bytes, "only the region written while degraded: {r}");
    assert_eq!(r["write_intent"]["degraded_regions"], 0, "{r}");

    // Writes fail on EE_M1: the write succeeds, the array degrades, its region is marked.
    inject("EE_M1", "write", 1000);
    want[4] = 104;
    v.write_ok(0, at(4), &pat(104, BLOCK));
    let r = raid(&d, "r");
    assert_eq!(r["state"], "online", "{r}");
    assert_eq!(r["num_base_bdevs_discovered"], 1, "the member whose write failed left the array: {r}");
    assert_eq!(r["base_bdevs_list"][1]["is_configured"], false, "{r}");
    assert_eq!(r["write_intent"]["degraded_regions"], 1, "the failed write's region is marked: {r}");
    want[5] = 105;
    v.write_ok(1, at(5), &pat(105, BLOCK));
    assert_eq!(raid(&d, "r")["write_intent"]["degraded_regions"], 2);
    for i in 0..6u64 {
        assert_eq!(v.read(0, at(i), BLOCK), pat(want[i as usize], BLOCK), "degraded read of region {i}");
    }
    inject("EE_M1", "clear", 0);
    let before = rebuilt(&d);
    d.ok("bdev_raid_add_base_bdev", json!({"raid_bdev": "r", "base_bdev": "EE_M1"}));
    let r = wait_settled(&d, "r");
    assert_eq!(rebuilt(&d) - before, 2 * region_bytes, "the two regions written since EE_M1 left: {r}");

    // Each member alone (the other removed) holds every block written.
    for (gone, other) in [("EE_M0", "EE_M1"), ("EE_M1", "EE_M0")] {
        d.ok("bdev_raid_remove_base_bdev", json!({"name": gone}));
        assert_eq!(raid(&d, "r")["num_base_bdevs_discovered"], 1);
        for i in 0..6u64 {
            assert_eq!(v.read(1, at(i), BLOCK), pat(want[i as usize], BLOCK), "region {i} on {other} alone");
        }
        d.ok("bdev_raid_add_base_bdev", json!({"raid_bdev": "r", "base_bdev": gone}));
        wait_settled(&d, "r");
    }
    assert!(!d.log_text().contains("panicked"));
}

/// SPDK's `bdev_raid_set_options`: a rebuild under `process_max_bandwidth_mb_sec` takes at
/// least the time the limit implies, while the array's own I/O is not held to it (24 MiB of
/// writes finish while the 8 MiB rebuild still runs: held to the limit they would take 24 s);
/// both members end identical. Without a limit a rebuild completes; the options replay from
/// `save_config`, and SPDK's errors.
#[test]
fn a_rebuild_runs_under_its_bandwidth_limit_and_the_array_io_does_not() {
    let d = start();
    // Errors: a window of 0 (SPDK's -EINVAL), bad values, unknown names; nothing changes.
    let e = d.err("bdev_raid_set_options", json!({"process_window_size_kb": 0}));
    assert_eq!((e.code, e.message.as_str()), (-22, "Invalid argument"), "{e:?}");
    for bad in [json!({"process_max_bandwidth_mb_sec": -1}), json!({"process_window_size_kb": "big"}), json!({"x": 1})]
    {
        assert_eq!(d.err("bdev_raid_set_options", bad.clone()).code, -32602, "{bad}");
    }
    let bdev_config = |d: &Ferryd| {
        let saved = d.ok("save_config", Value::Null);
        saved["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "bdev").unwrap()["config"].clone()
    };
    assert!(!bdev_config(&d).to_string().contains("bdev_raid_set_options"), "defaults are not saved");
    d.ok("bdev_raid_set_options", json!({"process_max_bandwidth_mb_sec": 1}));

    let a = file_bdev(&d, "A", 8 * MIB);
    let b = file_bdev(&d, "B", 8 * MIB);
    d.ok("bdev_raid_create", json!({"name": "r", "raid_level": "raid1", "base_bdevs": ["A", "B"]}));
    let mut v = Blk::open(&d, "v", "r");
    v.write_ok(0, 0, &pat(1, 4 * BLOCK));
    d.ok("bdev_raid_remove_base_bdev", json!({"name": "B"}));
    v.write_ok(1, 4 * 2048, &pat(2, 4 * BLOCK));
    // 8 MiB in 1 MiB windows at 1 MiB/s: the first window goes at once (the bucket holds
    // 20 ms of the rate, the rest is a debt), each other one waits for its tokens.
    let t0 = Instant::now();
    d.ok("bdev_raid_add_base_bdev", json!({"raid_bdev": "r", "base_bdev": "B"}));
    for i in 0..24u64 {
        v.write_ok((i % 2) as usize, (i % 8) * 2048, &pat(10 + i as u32, MIB as usize));
    }
    let r = raid(&d, "r");
    assert_eq!(r["process"]["type"], "rebuild", "the array's 24 MiB went while the rebuild ran: {r}");
    let r = loop {
        let r = raid(&d, "r");
        if r.get("process").is_none() && r["num_base_bdevs_discovered"] == 2 {
            break r;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "rebuild did not end: {r}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed().as_secs_f64();
    let least = (8.0 - 1.0 - 0.02) / 1.0;
    assert!(took >= least, "8 MiB rebuilt in {took:.2} s at 1 MiB/s (at least {least:.2} s)");
    assert_eq!(r["rebuilt_bytes"], 8 * MIB);
    assert_eq!(v.read(0, 7 * 2048, MIB as usize), pat(10 + 23, MIB as usize));
    drop(v);
    assert_eq!(area(&a, 0, 8 * MIB), area(&b, 0, 8 * MIB), "members differ after the limited rebuild");

    // Saved first in the bdev subsystem (as SPDK), and replayed.
    let config = bdev_config(&d);
    assert_eq!(
        config[0],
        json!({"method": "bdev_raid_set_options",
               "params": {"process_window_size_kb": 1024, "process_max_bandwidth_mb_sec": 1}})
    );
    let dir = common::scratch_dir("raid-options");
    let file = common::write_config(&dir, "opts.json", json!([config[0].clone()]));
    let e = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-c", file.to_str().unwrap()]);
    assert_eq!(bdev_config(&e)[0], config[0]);

    // No limit: the rebuild is not held back (it just completes).
    d.ok("bdev_raid_set_options", json!({"process_max_bandwidth_mb_sec": 0, "process_window_size_kb": 256}));
    d.ok("bdev_raid_remove_base_bdev", json!({"name": "B"}));
    d.ok("bdev_raid_add_base_bdev", json!({"raid_bdev": "r", "base_bdev": "B"}));
    let r = wait_settled(&d, "r");
    assert_eq!(r["rebuilt_bytes"], 16 * MIB);
    assert_eq!(area(&a, 0, 8 * MIB), area(&b, 0, 8 * MIB));
}

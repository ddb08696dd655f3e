//! Logical volumes against a real `ferryd -m 0x3`: every `bdev_lvol_*` method with SPDK's
//! field names, data checked through real frontends (vhost-user-blk and vhost-user-scsi,
//! driven by `ferry-vhost-initiator`, with queues on both reactors so lvol I/O is both served
//! on the metadata reactor and forwarded to it), and the faults of issue 9: a snapshot chain
//! of 10, clone of a clone, inflate, decouple, set_parent, shallow copy, grow, esnap clones,
//! read-only lvols, the base bdev hot-removed and returning, a full store, SPDK's RPC errors,
//! and restarts (`kill -9` and SIGTERM) with `ferryd -c` and no lvol RPC in the configuration.

mod common;

use common::{pat, Ferryd};
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::scsi::cdb;
use ferry_vhost_initiator::{Client, CmdResp, Options, Request, ScsiClient, ScsiCompletion, ScsiRequest};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Sectors (512 bytes) per 1 MiB cluster.
const CL: u64 = 2048;
const BLOCK: usize = 4096;
const T: Duration = Duration::from_secs(10);

/// SPDK's `driver_specific.lvol` members always present (vbdev_lvol.c, dump_info_json).
const DRIVER_KEYS: &[&str] =
    &["lvol_store_uuid", "base_bdev", "thin_provision", "num_allocated_clusters", "snapshot", "clone", "esnap_clone"];

fn start() -> Ferryd {
    let dir = common::scratch_dir("lvol");
    Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()])
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap_or_else(|| panic!("{v} is not an object")).keys().map(String::as_str).collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

fn zeroes(len: usize) -> Vec<u8> {
    vec![0; len]
}

/// An lvstore on `bdev` with 1 MiB clusters; its uuid.
fn lvstore(d: &Ferryd, bdev: &str, name: &str) -> String {
    let uuid = d.ok("bdev_lvol_create_lvstore", json!({"bdev_name": bdev, "lvs_name": name, "cluster_sz": MIB}));
    uuid.as_str().expect("the lvstore's uuid").to_string()
}

fn lvol(d: &Ferryd, lvs: &str, name: &str, mib: u64, thin: bool) -> String {
    let p = json!({"lvs_name": lvs, "lvol_name": name, "size_in_mib": mib, "thin_provision": thin});
    d.ok("bdev_lvol_create", p).as_str().expect("the lvol's uuid").to_string()
}

/// The `bdev_lvol_get_lvols` entry of lvol `name`.
fn lvol_info(d: &Ferryd, name: &str) -> Value {
    let all = d.ok("bdev_lvol_get_lvols", Value::Null);
    all.as_array().unwrap().iter().find(|l| l["name"] == name).cloned().unwrap_or_else(|| panic!("no {name} in {all}"))
}

fn lvstore_info(d: &Ferryd, name: &str) -> Value {
    d.ok("bdev_lvol_get_lvstores", json!({"lvs_name": name}))[0].clone()
}

/// `driver_specific.lvol` of bdev `name`.
fn driver(d: &Ferryd, name: &str) -> Value {
    d.ok("bdev_get_bdevs", json!({"name": name}))[0]["driver_specific"]["lvol"].clone()
}

/// A vhost-user-blk frontend with two queues (queue i on reactor i of the controller's mask).
struct Blk {
    c: Client,
    buf: u64,
    tag: u64,
}

impl Blk {
    /// Creates controller `ctrlr` on `bdev` (with `extra` params) and connects to it.
    fn open(d: &Ferryd, ctrlr: &str, bdev: &str, extra: Value) -> Blk {
        let mut p = json!({"ctrlr": ctrlr, "dev_name": bdev});
        if let Value::Object(m) = extra {
            p.as_object_mut().unwrap().extend(m);
        }
        d.ok("vhost_create_blk_controller", p);
        Blk::connect(&d.dir.join(ctrlr))
    }

    fn connect(sock: &Path) -> Blk {
        let opts = Options { num_queues: 2, queue_size: 64, mem_size: 4 << 20, hugetlbfs: None };
        let c = Client::connect(sock, &opts).expect("connect to the controller");
        let buf = c.mem().alloc(MIB as usize, 4096).unwrap();
        Blk { c, buf, tag: 0 }
    }

    fn run(&mut self, q: usize, req: &Request) -> u8 {
        self.tag += 1;
        self.c.queue(q).submit(req, self.tag).unwrap();
        self.c.queue(q).kick();
        let done = common::wait_completions(&mut self.c, q, 1);
        assert_eq!(done[0].tag, self.tag);
        done[0].status
    }

    fn write(&mut self, q: usize, sector: u64, data: &[u8]) -> u8 {
        self.c.mem().write(self.buf, data);
        let buf = self.buf;
        self.run(q, &Request::Write { sector, bufs: &[(buf, data.len() as u32)] })
    }

    #[track_caller]
    fn write_ok(&mut self, q: usize, sector: u64, data: &[u8]) {
        assert_eq!(self.write(q, sector, data), status::OK, "write at sector {sector}");
    }

    fn try_read(&mut self, q: usize, sector: u64, len: usize) -> (u8, Vec<u8>) {
        let buf = self.buf;
        let st = self.run(q, &Request::Read { sector, bufs: &[(buf, len as u32)] });
        let mut out = vec![0u8; len];
        self.c.mem().read(buf, &mut out);
        (st, out)
    }

    #[track_caller]
    fn read(&mut self, q: usize, sector: u64, len: usize) -> Vec<u8> {
        let (st, data) = self.try_read(q, sector, len);
        assert_eq!(st, status::OK, "read at sector {sector}");
        data
    }

    /// Checks each (sector, expected 4 KiB) through alternate queues.
    #[track_caller]
    fn expect(&mut self, what: &str, blocks: &[(u64, Vec<u8>)]) {
        for (i, (sector, want)) in blocks.iter().enumerate() {
            let got = self.read(i % 2, *sector, want.len());
            assert!(got == *want, "{what}: sector {sector} holds other data (first bytes {:?})", &got[..8]);
        }
    }
}

fn scsi_connect(sock: &Path) -> ScsiClient {
    let opts = Options { num_queues: 2, queue_size: 64, mem_size: 4 << 20, hugetlbfs: None };
    ScsiClient::connect(sock, &opts).expect("connect to the SCSI controller")
}

/// Runs a command for target 0 LUN 0 on request queue `q`.
fn scsi(c: &mut ScsiClient, q: usize, cdb: &[u8], out: &[(u64, u32)], inp: &[(u64, u32)]) -> CmdResp {
    let req = ScsiRequest::Command { target: 0, lun: 0, cdb, data_out: out, data_in: inp };
    match c.request(q).run(&req, T).expect("command answered") {
        ScsiCompletion::Command { resp, .. } => resp,
        other => panic!("not a command completion: {other:?}"),
    }
}

#[test]
fn every_method_answers_with_spdk_field_names() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 64 * CL, "block_size": 512}));
    let uuid = lvstore(&d, "M", "lvs0");
    assert!(uuid.parse::<uuid::Uuid>().is_ok(), "a uuid: {uuid}");
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "M"}))[0]["claimed"], true, "the base bdev is claimed");

    // bdev_lvol_get_lvstores: SPDK's members, by name, by uuid, and all.
    let s = lvstore_info(&d, "lvs0");
    assert_eq!(keys(&s), set(common::LVSTORE_KEYS), "{s}");
    assert_eq!(d.ok("bdev_lvol_get_lvstores", json!({"uuid": uuid}))[0], s);
    assert_eq!(d.ok("bdev_lvol_get_lvstores", Value::Null), json!([s.clone()]));
    assert_eq!((&s["uuid"], &s["name"], &s["base_bdev"]), (&json!(uuid), &json!("lvs0"), &json!("M")));
    assert_eq!((s["block_size"].as_u64(), s["cluster_size"].as_u64()), (Some(512), Some(MIB)));
    let total = s["total_data_clusters"].as_u64().unwrap();
    assert!((50..64).contains(&total), "64 clusters less metadata: {s}");
    assert_eq!(s["free_clusters"].as_u64(), Some(total));
    assert!(s["max_growable_size"].as_u64().unwrap() >= 64 * MIB, "{s}");
    let free = |d: &Ferryd| lvstore_info(d, "lvs0")["free_clusters"].as_u64().unwrap();

    // bdev_lvol_create: thick takes its clusters, thin none.
    let thick = lvol(&d, "lvs0", "thick", 4, false);
    assert_eq!(free(&d), total - 4);
    let thin =
        d.ok("bdev_lvol_create", json!({"uuid": uuid, "lvol_name": "thin", "size_in_mib": 8, "thin_provision": true}));
    assert_eq!(free(&d), total - 4);
    let l = lvol_info(&d, "thick");
    assert_eq!(keys(&l), set(common::LVOL_KEYS), "{l}");
    assert_eq!(keys(&l["lvs"]), set(&["name", "uuid"]));
    assert_eq!(
        l,
        json!({"alias": "lvs0/thick", "uuid": thick, "name": "thick", "is_thin_provisioned": false,
               "is_snapshot": false, "is_clone": false, "is_esnap_clone": false, "is_degraded": false,
               "num_allocated_clusters": 4, "lvs": {"name": "lvs0", "uuid": uuid}})
    );
    assert_eq!(lvol_info(&d, "thin")["is_thin_provisioned"], true);
    assert_eq!(d.ok("bdev_lvol_get_lvols", json!({"lvs_name": "lvs0"})).as_array().unwrap().len(), 2);
    assert_eq!(d.ok("bdev_lvol_get_lvols", json!({"lvs_uuid": uuid})).as_array().unwrap().len(), 2);

    // The lvol bdev: named by uuid, aliased lvs/lvol, SPDK's driver_specific.
    let b = &d.ok("bdev_get_bdevs", json!({"name": "lvs0/thick"}))[0];
    assert_eq!(
        (&b["name"], &b["aliases"], &b["product_name"]),
        (&json!(thick), &json!(["lvs0/thick"]), &json!("Logical Volume"))
    );
    assert_eq!((b["num_blocks"].as_u64(), b["block_size"].as_u64()), (Some(4 * CL), Some(512)));
    let ds = &b["driver_specific"]["lvol"];
    assert_eq!(keys(ds), set(DRIVER_KEYS), "{ds}");
    assert_eq!(
        *ds,
        json!({"lvol_store_uuid": uuid, "base_bdev": "M", "thin_provision": false, "num_allocated_clusters": 4,
               "snapshot": false, "clone": false, "esnap_clone": false})
    );

    // Snapshot and clone: SPDK's base_snapshot and clones.
    let snap = d.ok("bdev_lvol_snapshot", json!({"lvol_name": "lvs0/thin", "snapshot_name": "snap"}));
    let clone = d.ok("bdev_lvol_clone", json!({"snapshot_name": snap, "clone_name": "cl"}));
    let (s_ds, t_ds, c_ds) = (driver(&d, "lvs0/snap"), driver(&d, "lvs0/thin"), driver(&d, clone.as_str().unwrap()));
    assert_eq!(keys(&s_ds), &set(DRIVER_KEYS) | &set(&["clones"]), "{s_ds}");
    assert_eq!(s_ds["snapshot"], true);
    let clones: BTreeSet<&str> = s_ds["clones"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(clones, set(&["thin", "cl"]));
    for ds in [&t_ds, &c_ds] {
        assert_eq!(keys(ds), &set(DRIVER_KEYS) | &set(&["base_snapshot"]), "{ds}");
        assert_eq!(
            (&ds["clone"], &ds["base_snapshot"], &ds["thin_provision"]),
            (&json!(true), &json!("snap"), &json!(true))
        );
    }
    let (ls, lc) = (lvol_info(&d, "snap"), lvol_info(&d, "cl"));
    assert_eq!((&ls["is_snapshot"], &ls["is_clone"], &ls["uuid"]), (&json!(true), &json!(false), &snap));
    assert_eq!((&lc["is_snapshot"], &lc["is_clone"], &lc["uuid"]), (&json!(false), &json!(true), &clone));

    // An external snapshot: any bdev.
    d.ok("bdev_malloc_create", json!({"name": "E", "num_blocks": 4 * CL, "block_size": 512}));
    let e_uuid = d.ok("bdev_get_bdevs", json!({"name": "E"}))[0]["uuid"].clone();
    let ext = d.ok("bdev_lvol_clone_bdev", json!({"bdev": "E", "lvs_name": "lvs0", "clone_name": "ext"}));
    let le = lvol_info(&d, "ext");
    assert_eq!((&le["is_esnap_clone"], &le["is_clone"], &le["uuid"]), (&json!(true), &json!(false), &ext));
    let e_ds = driver(&d, "lvs0/ext");
    assert_eq!(keys(&e_ds), &set(DRIVER_KEYS) | &set(&["external_snapshot_name"]), "{e_ds}");
    assert_eq!(e_ds["esnap_clone"], true);
    // SPDK stores the bdev's uuid as the esnap id and shows it here; Ferry shows the bdev.
    assert_eq!(e_ds["external_snapshot_name"], e_uuid, "SPDK shows the esnap id, the bdev's uuid: {e_ds}");
    d.ok("bdev_lvol_create", json!({"lvs_name": "lvs0", "lvol_name": "t3", "size_in_mib": 4, "thin_provision": true}));
    assert_eq!(d.ok("bdev_lvol_set_parent_bdev", json!({"lvol_name": "lvs0/t3", "parent_name": "E"})), true);
    assert_eq!(lvol_info(&d, "t3")["is_esnap_clone"], true);

    // Renames: an lvol, then the store (aliases follow).
    assert_eq!(d.ok("bdev_lvol_rename", json!({"old_name": "lvs0/thin", "new_name": "thin2"})), true);
    assert_eq!(lvol_info(&d, "thin2")["uuid"], thin);
    assert_eq!(d.err("bdev_get_bdevs", json!({"name": "lvs0/thin"})).code, -19);
    assert_eq!(driver(&d, "lvs0/snap")["clones"].as_array().unwrap().iter().filter(|c| *c == "thin2").count(), 1);
    assert_eq!(d.ok("bdev_lvol_rename_lvstore", json!({"old_name": "lvs0", "new_name": "lvs1"})), true);
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "lvs1/thin2"}))[0]["name"], thin);
    assert_eq!(d.err("bdev_get_bdevs", json!({"name": "lvs0/thick"})).code, -19);
    assert_eq!(lvol_info(&d, "thick")["alias"], "lvs1/thick");
    assert_eq!(lvol_info(&d, "thick")["lvs"]["name"], "lvs1");
    let free = |d: &Ferryd| lvstore_info(d, "lvs1")["free_clusters"].as_u64().unwrap();

    // Resize: the bdev follows, a thick lvol takes its clusters.
    let before = free(&d);
    assert_eq!(d.ok("bdev_lvol_resize", json!({"name": "lvs1/thick", "size_in_mib": 6})), true);
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": thick}))[0]["num_blocks"].as_u64(), Some(6 * CL));
    assert_eq!(free(&d), before - 2);
    assert_eq!(lvol_info(&d, "thick")["num_allocated_clusters"], 6);

    // Read-only, then delete (clusters come back), then the store.
    assert_eq!(d.ok("bdev_lvol_set_read_only", json!({"name": "lvs1/cl"})), true);
    assert_eq!(d.ok("bdev_lvol_delete", json!({"name": thick})), true);
    assert_eq!(free(&d), before + 4);
    assert_eq!(d.err("bdev_get_bdevs", json!({"name": thick})).code, -19);
    assert_eq!(d.ok("bdev_lvol_delete_lvstore", json!({"lvs_name": "lvs1"})), true);
    assert_eq!(d.ok("bdev_lvol_get_lvstores", Value::Null), json!([]));
    assert_eq!(d.ok("bdev_lvol_get_lvols", Value::Null), json!([]));
    let left: Vec<Value> =
        d.ok("bdev_get_bdevs", Value::Null).as_array().unwrap().iter().map(|b| b["name"].clone()).collect();
    assert_eq!(left, [json!("M"), json!("E")], "the lvols are gone with their store");
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "M"}))[0]["claimed"], false, "the base is released");
    // The store was wiped: a new one is created there, empty.
    d.ok("bdev_lvol_create_lvstore", json!({"bdev_name": "M", "lvs_name": "again"}));
    assert_eq!(d.ok("bdev_lvol_get_lvols", Value::Null), json!([]));
    assert_eq!(lvstore_info(&d, "again")["cluster_size"].as_u64(), Some(4 * MIB), "SPDK's default cluster size");
    assert_eq!(d.ok("bdev_lvol_delete_lvstore", json!({"uuid": lvstore_info(&d, "again")["uuid"]})), true);
}

#[test]
fn rpc_errors_are_spdks() {
    let mut d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 32 * CL, "block_size": 512}));
    d.ok("bdev_malloc_create", json!({"name": "M2", "num_blocks": 16 * CL, "block_size": 512}));
    assert_eq!(d.err("bdev_lvol_create_lvstore", json!({"bdev_name": "nope", "lvs_name": "x"})).code, -19);
    let long = "n".repeat(64);
    let e = d.err("bdev_lvol_create_lvstore", json!({"bdev_name": "M", "lvs_name": long}));
    assert_eq!(e.code, -22, "an lvstore name of 64 characters: {e:?}");
    let uuid = lvstore(&d, "M", "lvs");
    let e = d.err("bdev_lvol_create_lvstore", json!({"bdev_name": "M2", "lvs_name": "lvs"}));
    assert_eq!(e.code, -17, "a taken lvstore name: {e:?}");
    let e = d.err("bdev_lvol_create_lvstore", json!({"bdev_name": "M", "lvs_name": "other"}));
    assert!(e.code < 0 && e.code > -200, "a claimed base bdev: {e:?}");

    // Names: 63 characters is the most (SPDK_LVOL_NAME_MAX - 1); taken names.
    let max = "a".repeat(63);
    lvol(&d, "lvs", &max, 1, true);
    assert_eq!(lvol_info(&d, &max)["alias"], format!("lvs/{max}"));
    let e = d.err("bdev_lvol_create", json!({"lvs_name": "lvs", "lvol_name": long, "size_in_mib": 1}));
    assert_eq!(e.code, -22, "an lvol name of 64 characters: {e:?}");
    lvol(&d, "lvs", "vol", 2, false);
    let e = d.err("bdev_lvol_create", json!({"lvs_name": "lvs", "lvol_name": "vol", "size_in_mib": 1}));
    assert_eq!(e.code, -17, "a duplicate lvol name: {e:?}");
    let e = d.err("bdev_lvol_snapshot", json!({"lvol_name": "lvs/vol", "snapshot_name": "vol"}));
    assert_eq!(e.code, -17, "a snapshot with a taken name: {e:?}");
    let e = d.err("bdev_lvol_snapshot", json!({"lvol_name": "lvs/vol", "snapshot_name": long}));
    assert_eq!(e.code, -22, "a snapshot name of 64 characters: {e:?}");
    let e = d.err("bdev_lvol_rename", json!({"old_name": "lvs/vol", "new_name": max}));
    assert_eq!(e.code, -17, "a rename to a taken name: {e:?}");
    let e = d.err("bdev_lvol_rename", json!({"old_name": "lvs/vol", "new_name": long}));
    assert_eq!(e.code, -22, "a rename to 64 characters: {e:?}");
    let e = d.err("bdev_lvol_rename_lvstore", json!({"old_name": "lvs", "new_name": long}));
    assert_eq!(e.code, -22, "an lvstore rename to 64 characters: {e:?}");

    // An unknown lvstore, or none or both of uuid and lvs_name (SPDK: -EINVAL).
    let e = d.err("bdev_lvol_create", json!({"lvs_name": "nope", "lvol_name": "x", "size_in_mib": 1}));
    assert_eq!(e.code, -19, "unknown lvstore name: {e:?}");
    let other = uuid::Uuid::new_v4().to_string();
    let e = d.err("bdev_lvol_create", json!({"uuid": other, "lvol_name": "x", "size_in_mib": 1}));
    assert_eq!(e.code, -19, "unknown lvstore uuid: {e:?}");
    for p in [
        json!({"uuid": uuid, "lvs_name": "lvs", "lvol_name": "x", "size_in_mib": 1}),
        json!({"lvol_name": "x", "size_in_mib": 1}),
    ] {
        assert_eq!(d.err("bdev_lvol_create", p.clone()).code, -22, "{p}");
    }
    assert_eq!(d.err("bdev_lvol_get_lvstores", json!({"lvs_name": "nope"})).code, -19);
    assert_eq!(d.err("bdev_lvol_get_lvols", json!({"lvs_name": "nope"})).code, -19);
    assert_eq!(d.err("bdev_lvol_delete_lvstore", json!({"lvs_name": "nope"})).code, -19);
    assert_eq!(d.err("bdev_lvol_grow_lvstore", json!({"uuid": other})).code, -19);
    assert_eq!(d.err("bdev_lvol_rename_lvstore", json!({"old_name": "nope", "new_name": "x"})).code, -19);
    assert_eq!(d.err("bdev_lvol_clone_bdev", json!({"bdev": "M2", "lvs_name": "nope", "clone_name": "x"})).code, -19);
    // Unknown lvols.
    for (m, p) in [
        ("bdev_lvol_snapshot", json!({"lvol_name": "lvs/nope", "snapshot_name": "s"})),
        ("bdev_lvol_clone", json!({"snapshot_name": "lvs/nope", "clone_name": "c"})),
        ("bdev_lvol_delete", json!({"name": "lvs/nope"})),
        ("bdev_lvol_resize", json!({"name": other, "size_in_mib": 4})),
        ("bdev_lvol_inflate", json!({"name": "nope/vol"})),
    ] {
        assert_eq!(d.err(m, p.clone()).code, -19, "{m} {p}");
    }

    // A clone of something that is not a snapshot (or read-only lvol): -EINVAL.
    let e = d.err("bdev_lvol_clone", json!({"snapshot_name": "lvs/vol", "clone_name": "c"}));
    assert_eq!(e.code, -22, "clone of a writable lvol: {e:?}");
    // set_parent to a non-snapshot; a shallow copy of a writable lvol; size 0.
    lvol(&d, "lvs", "thin", 2, true);
    assert_eq!(d.err("bdev_lvol_set_parent", json!({"lvol_name": "lvs/thin", "parent_name": "lvs/vol"})).code, -22);
    assert_eq!(
        d.err("bdev_lvol_start_shallow_copy", json!({"src_lvol_name": "lvs/vol", "dst_bdev_name": "M2"})).code,
        -22
    );
    assert_eq!(d.err("bdev_lvol_resize", json!({"name": "lvs/vol", "size_in_mib": 0})).code, -22);
    assert_eq!(d.err("bdev_lvol_check_shallow_copy", json!({"operation_id": 4242})).code, -2);

    // A snapshot with 2 clones cannot be deleted (SPDK: -EPERM); with one it can.
    d.ok("bdev_lvol_snapshot", json!({"lvol_name": "lvs/vol", "snapshot_name": "snap"}));
    d.ok("bdev_lvol_clone", json!({"snapshot_name": "lvs/snap", "clone_name": "c2"}));
    let e = d.err("bdev_lvol_delete", json!({"name": "lvs/snap"}));
    assert_eq!(e.code, -1, "delete of a snapshot with 2 clones: {e:?}");
    assert_eq!(lvol_info(&d, "snap")["is_snapshot"], true, "still there");
    let e = d.err("bdev_lvol_clone", json!({"snapshot_name": "lvs/snap", "clone_name": "c2"}));
    assert_eq!(e.code, -17, "a clone with a taken name: {e:?}");
    d.ok("bdev_lvol_delete", json!({"name": "lvs/c2"}));
    d.ok("bdev_lvol_delete", json!({"name": "lvs/snap"}));
    assert_eq!(lvol_info(&d, "vol")["is_clone"], false, "the snapshot merged into its one clone");

    // Parameter names other than SPDK's are refused, naming the parameter (rpc.md: -32602).
    let e = d.err("bdev_lvol_create", json!({"lvs_name": "lvs", "lvol_name": "x", "size": 4}));
    assert_eq!(e.code, -32602, "SPDK's removed `size`: {e:?}");
    assert!(e.message.contains("size"), "{e:?}");
    for m in [
        "bdev_lvol_create_lvstore",
        "bdev_lvol_delete_lvstore",
        "bdev_lvol_get_lvstores",
        "bdev_lvol_rename_lvstore",
        "bdev_lvol_grow_lvstore",
        "bdev_lvol_create",
        "bdev_lvol_snapshot",
        "bdev_lvol_clone",
        "bdev_lvol_clone_bdev",
        "bdev_lvol_rename",
        "bdev_lvol_resize",
        "bdev_lvol_set_read_only",
        "bdev_lvol_delete",
        "bdev_lvol_inflate",
        "bdev_lvol_decouple_parent",
        "bdev_lvol_get_lvols",
        "bdev_lvol_set_parent",
        "bdev_lvol_set_parent_bdev",
        "bdev_lvol_start_shallow_copy",
        "bdev_lvol_check_shallow_copy",
    ] {
        let e = d.err(m, json!({"lvs_nam": "lvs"}));
        assert_eq!(e.code, -32602, "{m}: {e:?}");
    }
    // Nothing of the above changed the store.
    let names: BTreeSet<String> = d
        .ok("bdev_lvol_get_lvols", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, [max.as_str(), "vol", "thin"].iter().map(|s| s.to_string()).collect());
    assert!(d.is_running());
}

/// Sector of the 4 KiB written at chain level `i` in its own cluster.
fn own(i: u64) -> u64 {
    i * CL + 1024
}
/// A cluster every level writes a different 4 KiB of (granule-level copy-on-write).
fn shared(i: u64) -> u64 {
    15 * CL + 8 * i
}
/// One 4 KiB every level overwrites.
const COMMON: u64 = 12 * CL + 40;

/// What an lvol of the chain holds at level `i` (after level i's writes).
fn level(i: u64) -> Vec<(u64, Vec<u8>)> {
    let mut v = Vec::new();
    for j in 0..10 {
        let there = j <= i;
        v.push((own(j), if there { pat(j as u32, BLOCK) } else { zeroes(BLOCK) }));
        v.push((shared(j), if there { pat(200 + j as u32, BLOCK) } else { zeroes(BLOCK) }));
    }
    v.push((COMMON, pat(100 + i as u32, BLOCK)));
    v
}

#[test]
fn a_chain_of_ten_snapshots_clones_of_clones_inflate_decouple_and_set_parent_keep_data() {
    let mut d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 96 * CL, "block_size": 512}));
    lvstore(&d, "M", "lvs");
    lvol(&d, "lvs", "vol", 16, true);
    // Queue 0 on reactor 0 (the metadata reactor), queue 1 on reactor 1 (forwarded).
    let mut vol = Blk::open(&d, "vol", "lvs/vol", json!({}));
    for i in 0..10u64 {
        vol.write_ok((i % 2) as usize, own(i), &pat(i as u32, BLOCK));
        vol.write_ok(((i + 1) % 2) as usize, shared(i), &pat(200 + i as u32, BLOCK));
        vol.write_ok((i % 2) as usize, COMMON, &pat(100 + i as u32, BLOCK));
        d.ok("bdev_lvol_snapshot", json!({"lvol_name": "lvs/vol", "snapshot_name": format!("s{i}")}));
    }
    vol.write_ok(1, COMMON, &pat(110, BLOCK));
    let mut now = level(9);
    now.last_mut().unwrap().1 = pat(110, BLOCK);
    vol.expect("vol after 10 snapshots", &now);
    // Every level reads back as it was, through read-only controllers on either reactor.
    let mut snaps: Vec<Blk> = (0..10u64)
        .map(|i| {
            let mask = if i % 2 == 0 { "0x1" } else { "0x2" };
            Blk::open(&d, &format!("s{i}"), &format!("lvs/s{i}"), json!({"readonly": true, "cpumask": mask}))
        })
        .collect();
    for (i, s) in snaps.iter_mut().enumerate() {
        s.expect(&format!("snapshot s{i}"), &level(i as u64));
    }
    for i in 0..10 {
        let l = lvol_info(&d, &format!("s{i}"));
        assert_eq!((&l["is_snapshot"], &l["is_clone"]), (&json!(true), &json!(i > 0)), "s{i}: {l}");
        let ds = driver(&d, &format!("lvs/s{i}"));
        let next = if i < 9 { format!("s{}", i + 1) } else { "vol".into() };
        assert_eq!(ds["clones"], json!([next]), "s{i}: {ds}");
        if i > 0 {
            assert_eq!(ds["base_snapshot"], format!("s{}", i - 1), "s{i}: {ds}");
        }
    }
    assert_eq!(driver(&d, "lvs/vol")["base_snapshot"], "s9");

    // A clone of a clone: c1 of s4, c1s a snapshot of c1, c2 a clone of c1s.
    d.ok("bdev_lvol_clone", json!({"snapshot_name": "lvs/s4", "clone_name": "c1"}));
    let mut c1 = Blk::open(&d, "c1", "lvs/c1", json!({}));
    c1.write_ok(1, 13 * CL, &pat(300, BLOCK));
    d.ok("bdev_lvol_snapshot", json!({"lvol_name": "lvs/c1", "snapshot_name": "c1s"}));
    d.ok("bdev_lvol_clone", json!({"snapshot_name": "lvs/c1s", "clone_name": "c2"}));
    let mut c2 = Blk::open(&d, "c2", "lvs/c2", json!({}));
    c2.write_ok(1, 14 * CL, &pat(301, BLOCK));
    c2.write_ok(0, own(2), &pat(302, BLOCK));
    let mut want_c2 = level(4);
    want_c2.extend([(13 * CL, pat(300, BLOCK)), (14 * CL, pat(301, BLOCK))]);
    want_c2[4].1 = pat(302, BLOCK); // own(2)
    assert_eq!(want_c2[4].0, own(2));
    c2.expect("c2, a clone of a clone", &want_c2);
    let mut want_c1 = level(4);
    want_c1.extend([(13 * CL, pat(300, BLOCK)), (14 * CL, zeroes(BLOCK))]);
    c1.expect("c1 after c2's writes", &want_c1);
    snaps[4].expect("s4 after its clones' writes", &level(4));
    assert_eq!(driver(&d, "lvs/c2")["base_snapshot"], "c1s");

    // Delete of a snapshot with 2 clones is refused (s4: s5 and c1).
    assert_eq!(d.err("bdev_lvol_delete", json!({"name": "lvs/s4"})).code, -1);

    // Inflate: c2 owns every cluster, has no parent, is thick, and reads the same.
    assert_eq!(d.ok("bdev_lvol_inflate", json!({"name": "lvs/c2"})), true);
    let l = lvol_info(&d, "c2");
    assert_eq!(
        (&l["is_clone"], &l["is_thin_provisioned"], &l["num_allocated_clusters"]),
        (&json!(false), &json!(false), &json!(16))
    );
    c2.expect("c2 inflated", &want_c2);

    // Decouple: vol's parent becomes s8, its data stays.
    assert_eq!(d.ok("bdev_lvol_decouple_parent", json!({"name": "lvs/vol"})), true);
    assert_eq!(driver(&d, "lvs/vol")["base_snapshot"], "s8");
    vol.expect("vol decoupled from s9", &now);
    // s9 has no clone left and goes; s7 (one clone: s8) merges into s8, which reads the same.
    d.ok("bdev_lvol_delete", json!({"name": "lvs/s9"}));
    d.ok("bdev_lvol_delete", json!({"name": "lvs/s7"}));
    assert_eq!(driver(&d, "lvs/s8")["base_snapshot"], "s6");
    snaps[8].expect("s8 after s7 merged into it", &level(8));
    vol.expect("vol after s7 and s9 went", &now);

    // set_parent: an empty thin lvol of the same size reads s3 through its new parent.
    lvol(&d, "lvs", "orphan", 16, true);
    let mut orphan = Blk::open(&d, "orphan", "lvs/orphan", json!({}));
    orphan.expect("orphan before", &[(own(0), zeroes(BLOCK)), (COMMON, zeroes(BLOCK))]);
    assert_eq!(d.ok("bdev_lvol_set_parent", json!({"lvol_name": "lvs/orphan", "parent_name": "lvs/s3"})), true);
    assert_eq!(driver(&d, "lvs/orphan")["base_snapshot"], "s3");
    assert_eq!(lvol_info(&d, "orphan")["is_clone"], true);
    orphan.expect("orphan under s3", &level(3));
    // A parent must be a snapshot of the same size in the store.
    lvol(&d, "lvs", "small", 8, true);
    assert_eq!(d.err("bdev_lvol_set_parent", json!({"lvol_name": "lvs/small", "parent_name": "lvs/s3"})).code, -22);
    assert!(d.is_running());
}

#[test]
fn shallow_copy_writes_only_the_lvols_own_clusters_to_a_second_bdev() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 32 * CL, "block_size": 512}));
    d.ok("bdev_malloc_create", json!({"name": "D", "num_blocks": 4 * CL, "block_size": 512}));
    lvstore(&d, "M", "lvs");
    lvol(&d, "lvs", "src", 4, true);
    let mut src = Blk::open(&d, "src", "lvs/src", json!({}));
    src.write_ok(0, 0, &pat(1, BLOCK));
    d.ok("bdev_lvol_snapshot", json!({"lvol_name": "lvs/src", "snapshot_name": "base"}));
    src.write_ok(1, 2 * CL + 8, &pat(2, BLOCK));
    // The destination starts full of a marker, so what the copy does not write shows.
    let mut dst = Blk::open(&d, "dst", "D", json!({}));
    for c in 0..4 {
        dst.write_ok(0, c * CL, &[0xEE; BLOCK]);
        dst.write_ok(1, c * CL + 8, &[0xEE; BLOCK]);
    }
    let src_uuid = lvol_info(&d, "src")["uuid"].clone();
    d.ok("bdev_lvol_set_read_only", json!({"name": src_uuid}));
    let op = d.ok("bdev_lvol_start_shallow_copy", json!({"src_lvol_name": "lvs/src", "dst_bdev_name": "D"}));
    assert_eq!(keys(&op), set(&["operation_id"]), "{op}");
    let id = op["operation_id"].clone();
    let deadline = Instant::now() + T;
    let done = loop {
        let s = d.ok("bdev_lvol_check_shallow_copy", json!({"operation_id": id}));
        if s["state"] != "in progress" {
            break s;
        }
        assert!(Instant::now() < deadline, "the shallow copy never finished: {s}");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(done, json!({"state": "complete", "copied_clusters": 1, "total_clusters": 1}));
    assert_eq!(d.err("bdev_lvol_check_shallow_copy", json!({"operation_id": id})).code, -2, "read once");
    // Its own cluster (2) arrived whole (zeroes around the written block); the parent's
    // (0) and unallocated ones (1, 3) were not written.
    let mut c2 = zeroes(2 * BLOCK);
    c2[BLOCK..].copy_from_slice(&pat(2, BLOCK));
    assert!(dst.read(0, 2 * CL, 2 * BLOCK) == c2, "cluster 2 copied");
    for c in [0, 1, 3] {
        assert_eq!(dst.read(1, c * CL, BLOCK), [0xEE; BLOCK], "cluster {c} untouched");
    }
    // A destination smaller than the lvol is refused.
    d.ok("bdev_malloc_create", json!({"name": "tiny", "num_blocks": CL, "block_size": 512}));
    assert_eq!(
        d.err("bdev_lvol_start_shallow_copy", json!({"src_lvol_name": "lvs/src", "dst_bdev_name": "tiny"})).code,
        -22
    );
}

#[test]
fn an_esnap_clone_of_a_malloc_bdev_reads_it_writes_apart_and_degrades_without_it() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 32 * CL, "block_size": 512}));
    let e_uuid = uuid::Uuid::new_v4().to_string();
    let golden = json!({"name": "E", "num_blocks": 4 * CL, "block_size": 512, "uuid": e_uuid});
    d.ok("bdev_malloc_create", golden.clone());
    let mut e = Blk::open(&d, "e", "E", json!({}));
    e.write_ok(0, 0, &pat(1, BLOCK));
    e.write_ok(1, 3 * CL, &pat(2, BLOCK));
    lvstore(&d, "M", "lvs");
    d.ok("bdev_lvol_clone_bdev", json!({"bdev": "E", "lvs_name": "lvs", "clone_name": "gold"}));
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "lvs/gold"}))[0]["num_blocks"].as_u64(), Some(4 * CL));
    let mut g = Blk::open(&d, "g", "lvs/gold", json!({}));
    g.expect("the clone reads its external snapshot", &[(0, pat(1, BLOCK)), (3 * CL, pat(2, BLOCK))]);
    assert_eq!(lvol_info(&d, "gold")["num_allocated_clusters"], 0);
    g.write_ok(1, 8, &pat(3, BLOCK));
    g.expect("the clone's own write", &[(0, pat(1, BLOCK)), (8, pat(3, BLOCK)), (3 * CL, pat(2, BLOCK))]);
    e.expect("the external snapshot is untouched", &[(8, zeroes(BLOCK))]);
    assert_eq!(lvol_info(&d, "gold")["num_allocated_clusters"], 1);
    // The external snapshot goes: the clone is degraded and its bdev gone, nothing else.
    drop((e, g));
    d.ok("bdev_malloc_delete", json!({"name": "E"}));
    let deadline = Instant::now() + T;
    while d.rpc("bdev_get_bdevs", json!({"name": "lvs/gold"})).is_ok() {
        assert!(Instant::now() < deadline, "the clone's bdev stayed after its external snapshot went");
        std::thread::sleep(Duration::from_millis(5));
    }
    let l = lvol_info(&d, "gold");
    assert_eq!((&l["is_degraded"], &l["is_esnap_clone"]), (&json!(true), &json!(true)), "{l}");
    // It comes back with the bdev (examine), its own data intact.
    d.ok("bdev_malloc_create", golden);
    assert_eq!(lvol_info(&d, "gold")["is_degraded"], false);
    let mut g = Blk::open(&d, "g2", "lvs/gold", json!({}));
    g.expect("the revived clone", &[(8, pat(3, BLOCK)), (3 * CL, zeroes(BLOCK))]);
    // Decoupled, it no longer needs the external snapshot.
    d.ok("bdev_lvol_decouple_parent", json!({"name": "lvs/gold"}));
    assert_eq!(lvol_info(&d, "gold")["is_esnap_clone"], false);
    d.ok("bdev_malloc_delete", json!({"name": "E"}));
    g.expect("the decoupled clone without E", &[(8, pat(3, BLOCK)), (0, zeroes(BLOCK))]);
    assert_eq!(lvol_info(&d, "gold")["is_degraded"], false);
}

#[test]
fn read_only_lvols_refuse_writes_at_every_frontend() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 32 * CL, "block_size": 512}));
    lvstore(&d, "M", "lvs");
    lvol(&d, "lvs", "ro", 4, false);
    let mut before = Blk::open(&d, "before", "lvs/ro", json!({}));
    before.write_ok(0, 0, &pat(1, BLOCK));
    before.write_ok(1, CL, &pat(2, BLOCK));
    d.ok("bdev_lvol_set_read_only", json!({"name": "lvs/ro"}));
    lvol(&d, "lvs", "vol", 4, true);
    d.ok("bdev_lvol_snapshot", json!({"lvol_name": "lvs/vol", "snapshot_name": "snap"}));
    let data = [(0, pat(1, BLOCK)), (CL, pat(2, BLOCK))];
    // Read first: a read that remembered where its cluster lies must not let writes through.
    before.expect("the read-only lvol", &data);

    // vhost-user-blk: a controller made before, one made after (writable as far as it knows),
    // and one on a snapshot; both reactors.
    let mut after = Blk::open(&d, "after", "lvs/ro", json!({}));
    let mut snap = Blk::open(&d, "snap", "lvs/snap", json!({}));
    for b in [&mut before, &mut after, &mut snap] {
        for q in 0..2 {
            assert_eq!(b.write(q, 8, &pat(9, BLOCK)), status::IOERR, "write on queue {q}");
            assert_eq!(b.run(q, &Request::Discard { sector: 0, sectors: 8 }), status::IOERR, "discard");
            assert_eq!(b.run(q, &Request::WriteZeroes { sector: 0, sectors: 8 }), status::IOERR, "write zeroes");
        }
    }
    before.expect("the read-only lvol, unchanged", &data);
    after.expect("the read-only lvol, unchanged", &data);

    // vhost-user-scsi: WRITE is refused with DATA PROTECT / WRITE PROTECTED on both queues.
    use ferry_vhost_initiator::scsi::status as scsi_status;
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "s"}));
    d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "s", "scsi_target_num": 0, "bdev_name": "lvs/ro"}));
    let mut s = scsi_connect(&d.dir.join("s"));
    let mem = s.mem().clone();
    let buf = mem.alloc(BLOCK, 4096).unwrap();
    let _ = scsi(&mut s, 0, &cdb::test_unit_ready(), &[], &[]);
    mem.write(buf, &pat(9, BLOCK));
    for q in 0..2 {
        for c in [&cdb::write10(16, 8)[..], &cdb::write16(16, 8)[..]] {
            let r = scsi(&mut s, q, c, &[(buf, BLOCK as u32)], &[]);
            assert_eq!(r.status, scsi_status::CHECK_CONDITION, "queue {q}: {r:?}");
            assert_eq!(r.sense_key(), Some((0x7, 0x27, 0x00)), "DATA PROTECT / WRITE PROTECTED: {r:?}");
        }
        let r = scsi(&mut s, q, &cdb::read10(0, 8), &[], &[(buf, BLOCK as u32)]);
        assert!(r.is_good(), "{r:?}");
        let mut got = vec![0u8; BLOCK];
        mem.read(buf, &mut got);
        assert!(got == data[0].1, "reads through SCSI");
    }
    before.expect("the read-only lvol, unchanged", &data);

    // What the frontends tell the driver (needs BdevBackend::read_only() in the frontends):
    // virtio-blk offers VIRTIO_BLK_F_RO, the SCSI unit reports WP in MODE SENSE.
    const VIRTIO_BLK_F_RO: u64 = 1 << 5;
    assert_ne!(after.c.features() & VIRTIO_BLK_F_RO, 0, "VIRTIO_BLK_F_RO offered for a read-only lvol");
    assert_ne!(snap.c.features() & VIRTIO_BLK_F_RO, 0, "VIRTIO_BLK_F_RO offered for a snapshot");
    let mode_sense6 = [0x1A, 0x08, 0x3F, 0, 64, 0];
    let r = scsi(&mut s, 1, &mode_sense6, &[], &[(buf, 64)]);
    assert!(r.is_good(), "MODE SENSE: {r:?}");
    assert_ne!(mem.load_u8(buf + 2) & 0x80, 0, "MODE SENSE reports WP for a read-only lvol");
}

#[test]
fn get_lba_status_of_a_thin_lvol_answers_on_both_reactors() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 32 * CL, "block_size": 512}));
    lvstore(&d, "M", "lvs");
    lvol(&d, "lvs", "thin", 4, true);
    let mut b = Blk::open(&d, "b", "lvs/thin", json!({}));
    b.write_ok(1, CL + 8, &pat(1, BLOCK));
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "s"}));
    d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "s", "scsi_target_num": 0, "bdev_name": "lvs/thin"}));
    let mut s = scsi_connect(&d.dir.join("s"));
    let buf = s.mem().alloc(8 + 16 * 8, 8).unwrap();
    let _ = scsi(&mut s, 0, &cdb::test_unit_ready(), &[], &[]);
    let mut c = [0u8; 16];
    c[0] = 0x9E; // SERVICE ACTION IN (16)
    c[1] = 0x12; // GET LBA STATUS
    c[10..14].copy_from_slice(&(8u32 + 16 * 8).to_be_bytes());
    // Request queue 0 runs on reactor 0 (the metadata reactor), queue 1 on reactor 1.
    for q in 0..2 {
        let r = scsi(&mut s, q, &c, &[], &[(buf, 8 + 16 * 8)]);
        assert!(r.is_good(), "GET LBA STATUS on queue {q}: {r:?}");
        let mut data = vec![0u8; 8 + 16 * 8];
        s.mem().read(buf, &mut data);
        let len = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
        let descs: Vec<(u64, u32, u8)> = data[8..4 + len.min(data.len() - 4)]
            .chunks_exact(16)
            .map(|d| {
                (
                    u64::from_be_bytes(d[0..8].try_into().unwrap()),
                    u32::from_be_bytes(d[8..12].try_into().unwrap()),
                    d[12] & 0xF,
                )
            })
            .collect();
        let cl = CL as u32;
        assert_eq!(
            descs,
            [(0, cl, 1), (CL, cl, 0), (2 * CL, 2 * cl, 1)],
            "queue {q}: deallocated, mapped, deallocated"
        );
    }
}

#[test]
fn a_full_store_fails_thin_writes_with_enospc_and_harms_nothing_else() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 16 * CL, "block_size": 512}));
    lvstore(&d, "M", "lvs");
    lvol(&d, "lvs", "thick", 2, false);
    lvol(&d, "lvs", "thin", 64, true);
    let mut thick = Blk::open(&d, "thick", "lvs/thick", json!({}));
    thick.write_ok(0, 0, &pat(1, BLOCK));
    let mut thin = Blk::open(&d, "thin", "lvs/thin", json!({}));
    let free = lvstore_info(&d, "lvs")["free_clusters"].as_u64().unwrap();
    assert!(free >= 4, "{free} free clusters");
    // Each first write to a cluster takes one, from both reactors, until none is left.
    for k in 0..free {
        thin.write_ok((k % 2) as usize, k * CL + 8, &pat(10 + k as u32, BLOCK));
    }
    assert_eq!(lvstore_info(&d, "lvs")["free_clusters"], 0);
    for q in 0..2 {
        assert_eq!(
            thin.write(q, (free + q as u64) * CL, &pat(99, BLOCK)),
            status::IOERR,
            "a write needing a cluster, queue {q}"
        );
    }
    let errors = d.ok("bdev_get_iostat", json!({"name": "lvs/thin"}))["bdevs"][0]["num_io_errors"].as_u64();
    assert!(errors >= Some(2), "the bdev layer counted the failed writes: {errors:?}");
    // Nothing else is harmed: allocated clusters take writes, data reads back, the thick lvol
    // works, unallocated clusters read zeroes, the store's counts hold.
    thin.write_ok(1, 8, &pat(50, BLOCK));
    let mut want: Vec<(u64, Vec<u8>)> = (1..free).map(|k| (k * CL + 8, pat(10 + k as u32, BLOCK))).collect();
    want.push((8, pat(50, BLOCK)));
    want.push((free * CL, zeroes(BLOCK)));
    thin.expect("the thin lvol of a full store", &want);
    thick.write_ok(1, CL, &pat(2, BLOCK));
    thick.expect("the thick lvol of a full store", &[(0, pat(1, BLOCK)), (CL, pat(2, BLOCK))]);
    assert_eq!(lvol_info(&d, "thin")["num_allocated_clusters"].as_u64(), Some(free));
    assert_eq!(lvstore_info(&d, "lvs")["free_clusters"], 0);
    // Space comes back with a delete, and is taken again.
    drop(thick);
    d.ok("bdev_lvol_delete", json!({"name": "lvs/thick"}));
    assert_eq!(lvstore_info(&d, "lvs")["free_clusters"], 2);
    thin.write_ok(0, free * CL, &pat(60, BLOCK));
    thin.write_ok(1, (free + 1) * CL, &pat(61, BLOCK));
    assert_eq!(thin.write(0, (free + 2) * CL, &pat(99, BLOCK)), status::IOERR);
    thin.expect("after the store filled again", &[(free * CL, pat(60, BLOCK)), ((free + 1) * CL, pat(61, BLOCK))]);

    // SCSI: SPACE ALLOCATION FAILED WRITE PROTECT (07h/27h/07h), SBC-4's answer to a thin
    // unit out of space (needs ENOSPC mapped in the SCSI model).
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "s"}));
    d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "s", "scsi_target_num": 0, "bdev_name": "lvs/thin"}));
    let mut s = scsi_connect(&d.dir.join("s"));
    let buf = s.mem().alloc(BLOCK, 4096).unwrap();
    let _ = scsi(&mut s, 0, &cdb::test_unit_ready(), &[], &[]);
    for q in 0..2 {
        let lba = ((free + 3 + q as u64) * CL) as u32;
        let r = scsi(&mut s, q, &cdb::write10(lba, 8), &[(buf, BLOCK as u32)], &[]);
        assert_eq!(r.sense_key(), Some((0x7, 0x27, 0x07)), "queue {q}: {r:?}");
    }
}

/// Creates a `len`-byte file and an aio bdev `name` (512-byte blocks) on it.
fn file_bdev(d: &Ferryd, name: &str, len: u64) -> std::path::PathBuf {
    let path = d.dir.join(format!("{name}.img"));
    std::fs::File::create(&path).unwrap().set_len(len).unwrap();
    d.ok("bdev_aio_create", json!({"name": name, "filename": path, "block_size": 512}));
    path
}

#[test]
fn hot_removing_the_base_fails_lvol_io_and_its_return_brings_the_store_back() {
    let mut d = start();
    let path = file_bdev(&d, "base", 32 * MIB);
    let uuid = lvstore(&d, "base", "lvs");
    lvol(&d, "lvs", "vol", 4, false);
    lvol(&d, "lvs", "t", 4, true);
    d.ok("bdev_lvol_snapshot", json!({"lvol_name": "lvs/t", "snapshot_name": "ts"}));
    let mut v = Blk::open(&d, "v", "lvs/vol", json!({}));
    v.write_ok(0, 0, &pat(1, BLOCK));
    v.write_ok(1, CL, &pat(2, BLOCK));
    assert_eq!(v.run(0, &Request::Flush), status::OK);
    let lvols = d.ok("bdev_lvol_get_lvols", Value::Null);

    // In use: writes in flight on both reactors while the base bdev goes.
    let buf = v.buf;
    for q in 0..2 {
        for i in 0..16u64 {
            v.c.queue(q)
                .submit(&Request::Write { sector: 2 * CL + 8 * i, bufs: &[(buf, BLOCK as u32)] }, 100 + i)
                .unwrap();
        }
        v.c.queue(q).kick();
    }
    d.ok("bdev_aio_delete", json!({"name": "base"}));
    for q in 0..2 {
        let done = common::wait_completions(&mut v.c, q, 16);
        assert!(done.iter().all(|c| c.status == status::OK || c.status == status::IOERR), "{done:?}");
    }
    // The lvols and their store are gone; the frontend gets errors; nothing panicked.
    let deadline = Instant::now() + T;
    while d.ok("bdev_lvol_get_lvstores", Value::Null) != json!([]) {
        assert!(Instant::now() < deadline, "the lvstore outlived its base bdev");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(d.ok("bdev_lvol_get_lvols", Value::Null), json!([]));
    assert_eq!(d.ok("bdev_get_bdevs", Value::Null), json!([]), "no lvol bdev is left");
    for q in 0..2 {
        assert_eq!(v.try_read(q, 0, BLOCK).0, status::IOERR, "a read after the removal, queue {q}");
        assert_eq!(v.write(q, 0, &pat(3, BLOCK)), status::IOERR, "a write after the removal, queue {q}");
    }
    assert_eq!(d.err("bdev_lvol_create", json!({"lvs_name": "lvs", "lvol_name": "x", "size_in_mib": 1})).code, -19);

    // The base returns: examine finds the store and registers its lvols, data intact.
    d.ok("bdev_aio_create", json!({"name": "base", "filename": path, "block_size": 512}));
    assert_eq!(lvstore_info(&d, "lvs")["uuid"], uuid);
    assert_eq!(d.ok("bdev_lvol_get_lvols", Value::Null), lvols);
    let mut v2 = Blk::open(&d, "v2", "lvs/vol", json!({}));
    v2.expect("vol after its base came back", &[(0, pat(1, BLOCK)), (CL, pat(2, BLOCK))]);
    v2.write_ok(1, 3 * CL, &pat(4, BLOCK));
    assert!(d.is_running());
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
}

#[test]
fn grow_after_the_base_bdev_is_resized() {
    let d = start();
    let path = file_bdev(&d, "base", 16 * MIB);
    lvstore(&d, "base", "lvs");
    let s = lvstore_info(&d, "lvs");
    let total = s["total_data_clusters"].as_u64().unwrap();
    lvol(&d, "lvs", "a", total, false);
    let full = lvstore_info(&d, "lvs");
    assert_eq!(full["free_clusters"], 0);
    let mut a = Blk::open(&d, "a", "lvs/a", json!({}));
    a.write_ok(0, 0, &pat(1, BLOCK));
    a.write_ok(1, (total - 1) * CL, &pat(2, BLOCK));
    let e = d.err("bdev_lvol_create", json!({"lvs_name": "lvs", "lvol_name": "b", "size_in_mib": 8}));
    assert_eq!(e.code, -28, "a full store: {e:?}");
    // Growing without a bigger base changes nothing.
    assert_eq!(d.ok("bdev_lvol_grow_lvstore", json!({"lvs_name": "lvs"})), true);
    assert_eq!(lvstore_info(&d, "lvs"), full);
    std::fs::File::options().write(true).open(&path).unwrap().set_len(48 * MIB).unwrap();
    d.ok("bdev_aio_rescan", json!({"name": "base"}));
    assert_eq!(lvstore_info(&d, "lvs")["total_data_clusters"].as_u64(), Some(total), "not before grow_lvstore");
    assert_eq!(d.ok("bdev_lvol_grow_lvstore", json!({"uuid": s["uuid"]})), true);
    let g = lvstore_info(&d, "lvs");
    assert_eq!((g["total_data_clusters"].as_u64(), g["free_clusters"].as_u64()), (Some(total + 32), Some(32)), "{g}");
    lvol(&d, "lvs", "b", 32, false);
    let mut b = Blk::open(&d, "b", "lvs/b", json!({}));
    b.write_ok(1, 31 * CL, &pat(3, BLOCK));
    a.expect("a after the grow", &[(0, pat(1, BLOCK)), ((total - 1) * CL, pat(2, BLOCK))]);
    b.expect("b in the new space", &[(31 * CL, pat(3, BLOCK)), (0, zeroes(BLOCK))]);
    // The grown size is on disk: the store loads with it after a restart.
    let config = d.dir.join("saved.json");
    std::fs::write(&config, d.ok("save_config", Value::Null).to_string()).unwrap();
    let dir = d.dir.clone();
    drop((a, b));
    assert!(d.stop().success());
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap(), "-c", config.to_str().unwrap()]);
    assert_eq!(lvstore_info(&d, "lvs")["total_data_clusters"].as_u64(), Some(total + 32));
    assert_eq!(lvstore_info(&d, "lvs")["free_clusters"], 0);
    let mut b = Blk::connect(&dir.join("b"));
    b.expect("b after a restart", &[(31 * CL, pat(3, BLOCK))]);
}

/// Every lvol's `bdev_lvol_get_lvols` entry, sorted by name.
fn lvols_sorted(d: &Ferryd) -> Vec<Value> {
    let mut v = d.ok("bdev_lvol_get_lvols", Value::Null).as_array().unwrap().clone();
    v.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    v
}

#[test]
fn restart_with_ferryd_c_after_kill_9_and_sigterm_brings_back_every_lvol_and_its_data() {
    let d = start();
    file_bdev(&d, "base", 64 * MIB);
    lvstore(&d, "base", "lvs");
    lvol(&d, "lvs", "vol", 4, false);
    lvol(&d, "lvs", "t", 8, true);
    let mut vol = Blk::open(&d, "c", "lvs/vol", json!({}));
    vol.write_ok(0, 0, &pat(1, BLOCK));
    vol.write_ok(1, CL + 8, &pat(2, BLOCK));
    d.ok("bdev_lvol_snapshot", json!({"lvol_name": "lvs/vol", "snapshot_name": "snap"}));
    vol.write_ok(1, 0, &pat(3, BLOCK));
    d.ok("bdev_lvol_clone", json!({"snapshot_name": "lvs/snap", "clone_name": "cl"}));
    let mut cl = Blk::open(&d, "k", "lvs/cl", json!({}));
    cl.write_ok(0, 2 * CL, &pat(4, BLOCK));
    let mut t = Blk::open(&d, "tt", "lvs/t", json!({"cpumask": "0x2"}));
    t.write_ok(0, 5 * CL, &pat(5, BLOCK));
    let snap = Blk::open(&d, "sn", "lvs/snap", json!({"readonly": true}));

    let saved = d.ok("save_config", Value::Null);
    let methods: Vec<&str> = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["config"].as_array().into_iter().flatten())
        .filter_map(|e| e["method"].as_str())
        .collect();
    assert!(methods.contains(&"bdev_aio_create") && methods.contains(&"vhost_create_blk_controller"), "{methods:?}");
    assert!(!methods.iter().any(|m| m.starts_with("bdev_lvol")), "no lvol RPC is saved: {methods:?}");
    let config = d.dir.join("saved.json");
    std::fs::write(&config, saved.to_string()).unwrap();

    // Acknowledged writes after the save, then kill -9 (no flush, no clean close).
    vol.write_ok(1, 3 * CL, &pat(6, BLOCK));
    t.write_ok(1, 6 * CL + 8, &pat(7, BLOCK));
    let mut want_vol = vec![(0, pat(3, BLOCK)), (CL + 8, pat(2, BLOCK)), (3 * CL, pat(6, BLOCK))];
    let want_snap = [(0, pat(1, BLOCK)), (CL + 8, pat(2, BLOCK)), (3 * CL, zeroes(BLOCK))];
    let want_cl = [(0, pat(1, BLOCK)), (CL + 8, pat(2, BLOCK)), (2 * CL, pat(4, BLOCK))];
    let mut want_t = vec![(5 * CL, pat(5, BLOCK)), (6 * CL + 8, pat(7, BLOCK)), (0, zeroes(BLOCK))];
    let dir = d.dir.clone();
    let args = ["-m", "0x3", "-S", dir.to_str().unwrap(), "-c", config.to_str().unwrap()];
    let (mut lvols, mut stores) = (lvols_sorted(&d), d.ok("bdev_lvol_get_lvstores", Value::Null));
    drop((vol, cl, t, snap));
    drop(d); // SIGKILL
    for (round, how) in ["kill -9", "SIGTERM"].iter().enumerate() {
        let d = Ferryd::start_in(dir.clone(), &args);
        assert_eq!(lvols_sorted(&d), lvols, "the lvols after {how}");
        assert_eq!(d.ok("bdev_lvol_get_lvstores", Value::Null), stores, "the lvstore after {how}");
        // The controllers of the configuration serve the lvols again.
        let (mut vol, mut cl, mut t, mut snap) = (
            Blk::connect(&dir.join("c")),
            Blk::connect(&dir.join("k")),
            Blk::connect(&dir.join("tt")),
            Blk::connect(&dir.join("sn")),
        );
        vol.expect(&format!("vol after {how}"), &want_vol);
        snap.expect(&format!("snap after {how}"), &want_snap);
        cl.expect(&format!("cl after {how}"), &want_cl);
        t.expect(&format!("t after {how}"), &want_t);
        if round == 0 {
            // More writes, then a clean stop.
            vol.write_ok(0, 3 * CL + 8, &pat(8, BLOCK));
            t.write_ok(0, 7 * CL, &pat(9, BLOCK));
            want_vol.push((3 * CL + 8, pat(8, BLOCK)));
            want_t.push((7 * CL, pat(9, BLOCK)));
            (lvols, stores) = (lvols_sorted(&d), d.ok("bdev_lvol_get_lvstores", Value::Null));
            drop((vol, cl, t, snap));
            assert!(d.stop().success(), "a clean stop");
        }
    }
}

/// Ferry's `bdev_lvol_set_options`: an inflate and a shallow copy under
/// `copy_max_bandwidth_mb_sec` take at least the time the limit implies, while lvol I/O on
/// the store is not held to it (24 MiB of writes to the origin finish while the 8 MiB inflate
/// of its clone still runs: held to the limit they would take 24 s); the data is right;
/// without a limit copies complete; the option replays from `save_config`.
#[test]
fn copies_run_under_their_bandwidth_limit_and_the_lvols_io_does_not() {
    let d = start();
    for bad in [json!({"copy_max_bandwidth_mb_sec": -1}), json!({"copy_max_bandwidth_mb_sec": "x"}), json!({"x": 1})] {
        assert_eq!(d.err("bdev_lvol_set_options", bad.clone()).code, -32602, "{bad}");
    }
    d.ok("bdev_lvol_set_options", json!({"copy_max_bandwidth_mb_sec": 1}));
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 64 * CL, "block_size": 512}));
    d.ok("bdev_malloc_create", json!({"name": "D", "num_blocks": 8 * CL, "block_size": 512}));
    lvstore(&d, "M", "lvs");
    lvol(&d, "lvs", "vol", 8, true);
    let mut vol = Blk::open(&d, "vol", "lvs/vol", json!({}));
    let want: Vec<(u64, Vec<u8>)> = (0..8u64).map(|c| (c * CL + 8, pat(c as u32, BLOCK))).collect();
    for (i, (sector, data)) in want.iter().enumerate() {
        vol.write_ok(i % 2, *sector, data);
    }
    d.ok("bdev_lvol_snapshot", json!({"lvol_name": "lvs/vol", "snapshot_name": "snap"}));
    d.ok("bdev_lvol_clone", json!({"snapshot_name": "lvs/snap", "clone_name": "c"}));
    let mut c = Blk::open(&d, "c", "lvs/c", json!({}));

    // Inflate: 8 clusters of 1 MiB at 1 MiB/s; meanwhile 24 MiB of writes to the origin (to
    // the clone they would leave the inflate less to copy).
    let sock = d.sock.clone();
    let t0 = Instant::now();
    let took = std::thread::scope(|s| {
        let inflate = s.spawn(|| {
            assert_eq!(common::rpc_at(&sock, "bdev_lvol_inflate", json!({"name": "lvs/c"})).unwrap(), true);
            t0.elapsed().as_secs_f64()
        });
        for i in 0..24u64 {
            vol.write_ok((i % 2) as usize, (i % 8) * CL, &pat(100 + i as u32, MIB as usize));
        }
        assert!(!inflate.is_finished(), "the origin's 24 MiB of writes went while the inflate ran");
        inflate.join().unwrap()
    });
    let least = (8.0 - 1.0 - 0.02) / 1.0;
    assert!(took >= least, "8 MiB inflated in {took:.2} s at 1 MiB/s (at least {least:.2} s)");
    let l = lvol_info(&d, "c");
    assert_eq!((&l["is_clone"], &l["num_allocated_clusters"]), (&json!(false), &json!(8)));
    c.expect("the inflated clone", &want);
    let last: Vec<(u64, Vec<u8>)> = (16..24u64).map(|i| ((i % 8) * CL, pat(100 + i as u32, MIB as usize))).collect();
    vol.expect("the origin's last writes", &last);

    // A shallow copy of the 8-cluster snapshot at 4 MiB/s (a change applies to new copies).
    d.ok("bdev_lvol_set_options", json!({"copy_max_bandwidth_mb_sec": 4}));
    let t0 = Instant::now();
    let id = d.ok("bdev_lvol_start_shallow_copy", json!({"src_lvol_name": "lvs/snap", "dst_bdev_name": "D"}))
        ["operation_id"]
        .clone();
    let done = loop {
        let s = d.ok("bdev_lvol_check_shallow_copy", json!({"operation_id": id}));
        if s["state"] != "in progress" {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the shallow copy never finished: {s}");
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = t0.elapsed().as_secs_f64();
    assert_eq!(done, json!({"state": "complete", "copied_clusters": 8, "total_clusters": 8}));
    let least = (8.0 - 1.0 - 0.08) / 4.0;
    assert!(took >= least, "8 MiB shallow-copied in {took:.2} s at 4 MiB/s (at least {least:.2} s)");
    let mut dst = Blk::open(&d, "dst", "D", json!({}));
    dst.expect("the shallow copy", &want);

    // Saved first in the bdev subsystem, and replayed.
    let bdev_config = |d: &Ferryd| {
        let saved = d.ok("save_config", Value::Null);
        saved["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "bdev").unwrap()["config"].clone()
    };
    let entry = bdev_config(&d)[0].clone();
    assert_eq!(entry, json!({"method": "bdev_lvol_set_options", "params": {"copy_max_bandwidth_mb_sec": 4}}));
    let dir = common::scratch_dir("lvol-options");
    let file = common::write_config(&dir, "opts.json", json!([entry.clone()]));
    let e = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-c", file.to_str().unwrap()]);
    assert_eq!(bdev_config(&e)[0], entry);

    // No limit: a decouple completes (not held back).
    d.ok("bdev_lvol_set_options", json!({"copy_max_bandwidth_mb_sec": 0}));
    assert!(!bdev_config(&d).to_string().contains("bdev_lvol_set_options"), "no limit, nothing saved");
    d.ok("bdev_lvol_clone", json!({"snapshot_name": "lvs/snap", "clone_name": "c2"}));
    assert_eq!(d.ok("bdev_lvol_decouple_parent", json!({"name": "lvs/c2"})), true);
    let mut c2 = Blk::open(&d, "c2", "lvs/c2", json!({}));
    c2.expect("the decoupled clone", &want);
}

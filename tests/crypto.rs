//! Encryption at rest against a real `ferryd -m 0x3`: SPDK's `accel_crypto_key_*` with its
//! checks and errors (nothing half-created), `bdev_crypto_create` / `bdev_crypto_delete` on
//! uring files, data written through vhost-user-blk (queues on both reactors) reading back
//! and lying on the base only as the AES-XTS of the data with SPDK's LBA tweak (computed
//! here independently, from the AES block cipher), the caller's buffers untouched, a stack
//! file -> crypto -> lvstore -> lvol replayed by `ferryd -c` with its data, and the base
//! hot-removed under a crypto bdev.

mod common;

use aes::cipher::{BlockCipherEncrypt, KeyInit};
use common::{pat, Ferryd};
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::{Client, Options, Request};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;
const BLOCK: usize = 4096;
/// Data key and tweak key (XTS-AES-256), hex: distinctive, so logs can be searched for them.
const K1: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const K2: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn start(tag: &str) -> Ferryd {
    let dir = common::scratch_dir(tag);
    Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()])
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// XTS-AES-256 of 512-byte blocks from `lba`, written here from the AES block cipher alone
/// (IEEE 1619: T = AES(K2, tweak), C = AES(K1, P ^ T) ^ T, T *= alpha per 16 bytes), with
/// SPDK's software-module tweak: 8 zero bytes, then the LBA little-endian.
fn independent_encrypt(plain: &[u8], lba: u64) -> Vec<u8> {
    let k1 = aes::Aes256::new_from_slice(&unhex(K1)).unwrap();
    let k2 = aes::Aes256::new_from_slice(&unhex(K2)).unwrap();
    let mut out = plain.to_vec();
    for (i, unit) in out.chunks_mut(512).enumerate() {
        let mut iv = [0u8; 16];
        iv[8..].copy_from_slice(&(lba + i as u64).to_le_bytes());
        let mut t = aes::Block::from(iv);
        k2.encrypt_block(&mut t);
        let mut t = u128::from_le_bytes(t.as_slice().try_into().unwrap());
        for b in unit.chunks_mut(16) {
            let x = u128::from_le_bytes((&*b).try_into().unwrap()) ^ t;
            let mut blk = aes::Block::from(x.to_le_bytes());
            k1.encrypt_block(&mut blk);
            let c = u128::from_le_bytes(blk.as_slice().try_into().unwrap()) ^ t;
            b.copy_from_slice(&c.to_le_bytes());
            t = (t << 1) ^ if t >> 127 == 1 { 0x87 } else { 0 };
        }
    }
    out
}

fn file(d: &Ferryd, name: &str, len: u64) -> PathBuf {
    let path = d.dir.join(format!("{name}.img"));
    std::fs::File::create(&path).unwrap().set_len(len).unwrap();
    path
}

fn uring(d: &Ferryd, name: &str, path: &Path) {
    d.ok("bdev_uring_create", json!({"name": name, "filename": path, "block_size": 512}));
}

fn key(d: &Ferryd, name: &str) {
    let p = json!({"name": name, "cipher": "AES_XTS", "key": K1, "key2": K2});
    assert_eq!(d.ok("accel_crypto_key_create", p), true);
}

fn bdev_names(d: &Ferryd) -> Vec<String> {
    d.ok("bdev_get_bdevs", Value::Null).as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap().into()).collect()
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut out = vec![0u8; len];
    std::fs::File::open(path).unwrap().read_exact_at(&mut out, offset).unwrap();
    out
}

/// A vhost-user-blk frontend with two queues (queue i on reactor i).
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

    /// Writes `data` at `sector` from the buffer cut into segments of `cuts` bytes (the
    /// rest in a last one): blocks may straddle segments.
    #[track_caller]
    fn write_cut(&mut self, q: usize, sector: u64, data: &[u8], cuts: &[u32]) {
        self.c.mem().write(self.buf, data);
        let segs = segments(self.buf, data.len() as u32, cuts);
        assert_eq!(self.run(q, &Request::Write { sector, bufs: &segs }), status::OK, "write at {sector}");
        let mut after = vec![0u8; data.len()];
        self.c.mem().read(self.buf, &mut after);
        assert!(after == data, "the caller's buffer was modified by the write");
    }

    #[track_caller]
    fn read_cut(&mut self, q: usize, sector: u64, len: usize, cuts: &[u32]) -> Vec<u8> {
        let segs = segments(self.buf, len as u32, cuts);
        assert_eq!(self.run(q, &Request::Read { sector, bufs: &segs }), status::OK, "read at {sector}");
        let mut out = vec![0u8; len];
        self.c.mem().read(self.buf, &mut out);
        out
    }
}

fn segments(base: u64, len: u32, cuts: &[u32]) -> Vec<(u64, u32)> {
    let mut segs = Vec::new();
    let mut at = 0;
    for &c in cuts {
        segs.push((base + at as u64, c));
        at += c;
    }
    segs.push((base + at as u64, len - at));
    segs
}

fn keys_listed(d: &Ferryd) -> Value {
    d.ok("accel_crypto_keys_get", Value::Null)
}

#[test]
fn keys_take_spdks_parameters_and_refuse_what_spdk_refuses_leaving_nothing() {
    let d = start("crypto-keys");
    key(&d, "k256");
    let k128 = json!({"name": "k128", "cipher": "AES_XTS", "key": &K1[..32], "key2": &K2[..32],
                      "tweak_mode": "SIMPLE_LBA"});
    assert_eq!(d.ok("accel_crypto_key_create", k128), true);
    // SPDK's listing shows the material (and the default tweak mode).
    let all = keys_listed(&d);
    assert_eq!(
        all,
        json!([{"name": "k256", "cipher": "AES_XTS", "key": K1, "key2": K2, "tweak_mode": "SIMPLE_LBA"},
               {"name": "k128", "cipher": "AES_XTS", "key": &K1[..32], "key2": &K2[..32], "tweak_mode": "SIMPLE_LBA"}])
    );
    assert_eq!(d.ok("accel_crypto_keys_get", json!({"key_name": "k128"})), json!([all[1]]));
    let e = d.err("accel_crypto_keys_get", json!({"key_name": "nope"}));
    assert_eq!((e.code, e.message.as_str()), (-32602, "key was not found"));

    let refused = |p: Value, rc: &str| {
        let e = d.err("accel_crypto_key_create", p.clone());
        assert_eq!(e.code, -32602, "{p}: {e:?}");
        assert!(e.message.starts_with(&format!("failed to create DEK, rc {rc}")), "{p}: {e:?}");
        assert!(!e.message.contains(&K1[..16]) && !e.message.contains(&K2[..16]), "no key material: {e:?}");
    };
    let with = |k: &str, k2: Option<&str>, extra: Value| {
        let mut p = json!({"name": "bad", "cipher": "AES_XTS", "key": k});
        if let Some(k2) = k2 {
            p["key2"] = json!(k2);
        }
        p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        p
    };
    refused(with("abc", Some(K2), json!({})), "-22"); // odd number of digits
    refused(with(&format!("zz{}", &K1[2..]), Some(K2), json!({})), "-22"); // not hex
    refused(with("", Some(K2), json!({})), "-22");
    refused(with(&"ab".repeat(129), Some(&"cd".repeat(129)), json!({})), "-22"); // 258 digits
    refused(with(&K1[..48], Some(&K2[..48]), json!({})), "-22"); // AES-192: not for XTS
    refused(with(K1, Some(&K2[..32]), json!({})), "-22"); // key sizes differ
    refused(with(K1, Some(K1), json!({})), "-22"); // identical keys are not secure
    refused(with(K1, None, json!({})), "-22"); // key2 missing
    refused(with(&K1[..32], None, json!({"cipher": "AES_CBC"})), "-22"); // no CBC in software
    refused(with(K1, Some(K2), json!({"cipher": "ROT13"})), "-22");
    refused(with(K1, Some(K2), json!({"tweak_mode": "INCR_512_FULL_LBA"})), "-22");
    refused(with(K1, Some(K2), json!({"name": "k256"})), "-17"); // the name exists
    let e = d.err("accel_crypto_key_create", json!({"name": "bad", "cipher": "AES_XTS", "key2": K2}));
    assert_eq!(e.code, -32602, "key is required: {e:?}");
    assert_eq!(keys_listed(&d), all, "nothing was half-created");

    let e = d.err("accel_crypto_key_destroy", json!({"key_name": "nope"}));
    assert_eq!((e.code, e.message.as_str()), (-32602, "No key object found"));
    assert_eq!(d.ok("accel_crypto_key_destroy", json!({"key_name": "k128"})), true);
    assert_eq!(keys_listed(&d), json!([all[0]]));

    // The log names keys, never their material.
    let log = d.log_text();
    assert!(log.contains("k256"), "the log should mention the key by name");
    for secret in [K1, K2, &K1[..32], &K2[..32]] {
        assert!(!log.contains(secret), "key material in the log");
    }
}

#[test]
fn data_is_encrypted_on_the_base_reads_back_and_errors_are_spdks() {
    let d = start("crypto-data");
    let path = file(&d, "base", 16 * MIB);
    uring(&d, "base", &path);
    key(&d, "k");
    // Wrong parameters first: nothing may be left of them.
    let e = d.err("bdev_crypto_create", json!({"base_bdev_name": "base", "name": "c", "key_name": "nope"}));
    assert_eq!((e.code, e.message.as_str()), (-32602, "Key was not found"));
    let e = d.err("bdev_crypto_create", json!({"base_bdev_name": "nothere", "name": "c", "key_name": "k"}));
    assert_eq!(e.code, -19, "{e:?}");
    let e = d.err("bdev_crypto_create", json!({"base_bdev_name": "base", "name": "base", "key_name": "k"}));
    assert_eq!(e.code, -17, "{e:?}");
    let e = d.err("bdev_crypto_create", json!({"base_bdev_name": "base", "key_name": "k"}));
    assert_eq!(e.code, -32602, "name is required: {e:?}");
    assert_eq!(bdev_names(&d), ["base"]);
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "base"}))[0]["claimed"], false);

    assert_eq!(d.ok("bdev_crypto_create", json!({"base_bdev_name": "base", "name": "c", "key_name": "k"})), "c");
    let info = d.ok("bdev_get_bdevs", json!({"name": "c"}))[0].clone();
    assert_eq!(info["driver_specific"]["crypto"], json!({"base_bdev_name": "base", "name": "c", "key_name": "k"}));
    assert_eq!(
        (&info["product_name"], &info["block_size"], &info["num_blocks"]),
        (&json!("crypto"), &json!(512), &json!(32768))
    );
    assert_eq!(info["supported_io_types"]["unmap"], false);
    let base_uuid: uuid::Uuid =
        d.ok("bdev_get_bdevs", json!({"name": "base"}))[0]["uuid"].as_str().unwrap().parse().unwrap();
    let ns: uuid::Uuid = "078e3cf7-f4b4-4545-b2c3-d40045a64ae2".parse().unwrap();
    let sha = {
        use sha1::{Digest, Sha1};
        let mut h = Sha1::new();
        h.update(ns.as_bytes());
        h.update(base_uuid.as_bytes());
        h.finalize()
    };
    let want_uuid = uuid::Builder::from_sha1_bytes(sha[..16].try_into().unwrap()).into_uuid();
    assert_eq!(info["uuid"], want_uuid.to_string(), "SPDK's uuid: v5 of the base's in its namespace");
    let base = d.ok("bdev_get_bdevs", json!({"name": "base"}))[0].clone();
    assert_eq!((&base["claimed"], &base["claims"][0]["module"]), (&json!(true), &json!("crypto")));
    // A claimed base takes no second crypto bdev; a used key cannot go.
    let e = d.err("bdev_crypto_create", json!({"base_bdev_name": "base", "name": "c2", "key_name": "k"}));
    assert_eq!(e.code, -1, "{e:?}");
    let e = d.err("accel_crypto_key_destroy", json!({"key_name": "k"}));
    assert!(e.message.starts_with("Failed to destroy key, rc -16") && e.message.contains('c'), "{e:?}");
    assert_eq!(bdev_names(&d), ["base", "c"]);

    let mut blk = Blk::open(&d, "vc", "c");
    let one = pat(1, BLOCK);
    let two = pat(2, 8 * BLOCK);
    blk.write_cut(0, 8, &one, &[]);
    // 512-byte blocks straddling segments (1000 + 3096 + ...), from the other reactor.
    blk.write_cut(1, 2048, &two, &[1000, 3096, 700]);
    assert_eq!(blk.read_cut(1, 8, BLOCK, &[]), one);
    assert_eq!(blk.read_cut(0, 2048, two.len(), &[1000, 24, 513]), two, "read through straddling segments");
    // On the base: exactly the XTS of the data with SPDK's LBA tweak, never the data.
    let on_disk = read_at(&path, 8 * 512, BLOCK);
    assert_ne!(on_disk, one);
    assert!(on_disk == independent_encrypt(&one, 8), "the base does not hold SPDK's encryption of the data");
    assert!(read_at(&path, 2048 * 512, two.len()) == independent_encrypt(&two, 2048), "straddling write on the base");
    // Write-zeroes: encrypted zeroes on the base (more than one 1 MiB chunk), zeroes read back.
    let st = blk.run(0, &Request::WriteZeroes { sector: 2048, sectors: 6000 });
    assert_eq!(st, status::OK);
    assert!(blk.read_cut(0, 2048, two.len(), &[]) == vec![0; two.len()], "zeroes read back");
    let zeroes_on_disk = read_at(&path, 2048 * 512, 6000 * 512);
    assert!(zeroes_on_disk == independent_encrypt(&vec![0; 6000 * 512], 2048), "encrypted zeroes on the base");

    // Delete (under the controller, which sees its bdev go): the base is free again, the key
    // can go; a second delete finds nothing.
    assert_eq!(d.ok("bdev_crypto_delete", json!({"name": "c"})), true);
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "base"}))[0]["claimed"], false);
    assert_eq!(d.err("bdev_crypto_delete", json!({"name": "c"})).code, -19);
    assert_eq!(d.err("bdev_crypto_delete", json!({"name": "base"})).code, -19, "not a crypto bdev");
    assert_eq!(d.ok("accel_crypto_key_destroy", json!({"key_name": "k"})), true);
    drop(blk);
}

#[test]
fn spdks_obsolete_inline_key_makes_a_key_that_goes_with_the_bdev() {
    let d = start("crypto-inline");
    let path = file(&d, "base", 4 * MIB);
    uring(&d, "base", &path);
    let p =
        json!({"base_bdev_name": "base", "name": "c", "cipher": "AES_XTS", "key": K1, "key2": K2, "crypto_pmd": "x"});
    assert_eq!(d.ok("bdev_crypto_create", p), "c");
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "c"}))[0]["driver_specific"]["crypto"]["key_name"], "c_AES_XTS");
    assert_eq!(keys_listed(&d)[0]["name"], "c_AES_XTS");
    assert_eq!(d.ok("bdev_crypto_delete", json!({"name": "c"})), true);
    assert_eq!(keys_listed(&d), json!([]), "the bdev's own key went with it");
    // SPDK's default cipher is AES_CBC, which the software module refuses: no key, no bdev.
    let e = d.err("bdev_crypto_create", json!({"base_bdev_name": "base", "name": "c", "key": K1}));
    assert_eq!((e.code, e.message.as_str()), (-32603, "No key was found"));
    let e = d.err("bdev_crypto_create", json!({"base_bdev_name": "base", "name": "c"}));
    assert_eq!((e.code, e.message.as_str()), (-32603, "No key was found"));
    assert_eq!((keys_listed(&d), bdev_names(&d)), (json!([]), vec!["base".to_string()]));
}

#[test]
fn hot_removing_the_base_removes_the_crypto_bdev_and_frees_its_key() {
    let d = start("crypto-hotremove");
    let path = file(&d, "base", 4 * MIB);
    uring(&d, "base", &path);
    key(&d, "k");
    d.ok("bdev_crypto_create", json!({"base_bdev_name": "base", "name": "c", "key_name": "k"}));
    let mut blk = Blk::open(&d, "vc", "c");
    blk.write_cut(0, 0, &pat(3, BLOCK), &[]);
    assert_eq!(d.ok("bdev_uring_delete", json!({"name": "base"})), true);
    assert_eq!(bdev_names(&d), Vec::<String>::new(), "the crypto bdev went with its base");
    let st = blk.run(1, &Request::Read { sector: 0, bufs: &[(blk.buf, BLOCK as u32)] });
    assert_ne!(st, status::OK, "I/O to the removed stack fails");
    assert_eq!(d.ok("accel_crypto_key_destroy", json!({"key_name": "k"})), true, "no bdev uses the key now");
}

#[test]
fn a_file_crypto_lvol_stack_replays_from_save_config_with_its_data() {
    let d = start("crypto-stack");
    let path = file(&d, "base", 32 * MIB);
    uring(&d, "base", &path);
    key(&d, "k");
    d.ok("bdev_crypto_create", json!({"base_bdev_name": "base", "name": "c", "key_name": "k"}));
    d.ok("bdev_lvol_create_lvstore", json!({"bdev_name": "c", "lvs_name": "lvs", "cluster_sz": MIB}));
    d.ok("bdev_lvol_create", json!({"lvs_name": "lvs", "lvol_name": "vol", "size_in_mib": 8}));
    let mut vol = Blk::open(&d, "v", "lvs/vol");
    let (a, b) = (pat(10, BLOCK), pat(11, 2 * BLOCK));
    vol.write_cut(0, 0, &a, &[]);
    vol.write_cut(1, 5 * 2048 + 8, &b, &[512, 1536]);

    let saved = d.ok("save_config", Value::Null);
    let subsystems = saved["subsystems"].as_array().unwrap();
    let at = |name: &str| subsystems.iter().position(|s| s["subsystem"] == name).unwrap();
    assert!(at("accel") < at("bdev"), "keys before the bdevs that use them");
    assert_eq!(
        subsystems[at("accel")]["config"],
        json!([{"method": "accel_crypto_key_create",
                "params": {"name": "k", "cipher": "AES_XTS", "key": K1, "key2": K2, "tweak_mode": "SIMPLE_LBA"}}])
    );
    let bdev_cfg = subsystems[at("bdev")]["config"].as_array().unwrap();
    let create = bdev_cfg.iter().find(|e| e["method"] == "bdev_crypto_create").unwrap();
    assert_eq!(create["params"], json!({"base_bdev_name": "base", "name": "c", "key_name": "k"}));
    let config = d.dir.join("saved.json");
    std::fs::write(&config, serde_json::to_vec_pretty(&saved).unwrap()).unwrap();
    // Nothing of the lvstore is in clear on the file: its super block is encrypted.
    assert!(!std::fs::read(&path).unwrap().windows(3).any(|w| w == b"lvs"), "lvstore name in clear on the base");

    let dir = d.dir.clone();
    drop(vol);
    assert!(d.stop().success());
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap(), "-c", config.to_str().unwrap()]);
    assert_eq!(d.ok("save_config", Value::Null), saved, "the replayed stack saves identically");
    let mut vol = Blk::connect(&dir.join("v"));
    assert_eq!(vol.read_cut(1, 0, BLOCK, &[]), a, "lvol data after a restart");
    assert_eq!(vol.read_cut(0, 5 * 2048 + 8, 2 * BLOCK, &[100]), b);
}

/// A stack four modules deep, as issue 12 names it: an lvol on a raid1 (with superblock) of two
/// crypto bdevs on uring files. Saved, replayed by `ferryd -c` (keys, files and crypto bdevs
/// from the configuration; the array assembles from its superblocks and the lvstore is found
/// on it by examine), with the data read back through the lvol, and then again with each
/// member in turn removed from the array: both mirrors hold it, encrypted, on their files.
#[test]
fn an_lvol_on_raid1_on_two_crypto_bdevs_on_files_replays_with_its_data_on_both_mirrors() {
    let d = start("crypto-raid-lvol");
    let paths = [file(&d, "f0", 32 * MIB), file(&d, "f1", 32 * MIB)];
    key(&d, "k");
    for (i, p) in paths.iter().enumerate() {
        uring(&d, &format!("f{i}"), p);
        d.ok(
            "bdev_crypto_create",
            json!({"base_bdev_name": format!("f{i}"), "name": format!("c{i}"), "key_name": "k"}),
        );
    }
    d.ok(
        "bdev_raid_create",
        json!({"name": "r", "raid_level": "raid1", "base_bdevs": ["c0", "c1"], "superblock": true}),
    );
    d.ok("bdev_lvol_create_lvstore", json!({"bdev_name": "r", "lvs_name": "lvs", "cluster_sz": MIB}));
    d.ok("bdev_lvol_create", json!({"lvs_name": "lvs", "lvol_name": "vol", "size_in_mib": 8}));
    let mut vol = Blk::open(&d, "v", "lvs/vol");
    let (a, b) = (pat(20, BLOCK), pat(21, 3 * BLOCK));
    vol.write_cut(0, 8, &a, &[]);
    vol.write_cut(1, 7 * 2048, &b, &[4096, 512]);
    let config = d.dir.join("saved.json");
    std::fs::write(&config, serde_json::to_vec_pretty(&d.ok("save_config", Value::Null)).unwrap()).unwrap();
    for p in &paths {
        let on_disk = std::fs::read(p).unwrap();
        assert!(!on_disk.windows(a.len()).any(|w| w == &a[..]), "data in clear on {}", p.display());
    }

    let dir = d.dir.clone();
    drop(vol);
    assert!(d.stop().success());
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap(), "-c", config.to_str().unwrap()]);
    // The configuration's vhost controller found the lvol: bdev_wait_for_examine waited for
    // the array to assemble and for the lvstore on it to load. (An RPC is answered only once
    // the configuration is replayed.)
    let ctrlrs = d.ok("vhost_get_controllers", Value::Null);
    assert_eq!(ctrlrs[0]["ctrlr"], "v", "{ctrlrs}");
    let mut vol = Blk::connect(&dir.join("v"));
    assert_eq!(vol.read_cut(0, 8, BLOCK, &[]), a, "lvol data after the replay");
    assert_eq!(vol.read_cut(1, 7 * 2048, 3 * BLOCK, &[1024]), b);
    // Each mirror alone serves the same data.
    for (gone, back) in [("c0", "c1"), ("c1", "c0")] {
        d.ok("bdev_raid_remove_base_bdev", json!({"name": gone}));
        assert_eq!(vol.read_cut(0, 8, BLOCK, &[]), a, "data from {back} alone");
        assert_eq!(vol.read_cut(1, 7 * 2048, 3 * BLOCK, &[]), b, "data from {back} alone");
        d.ok("bdev_raid_add_base_bdev", json!({"raid_bdev": "r", "base_bdev": gone}));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let r = d.ok("bdev_raid_get_bdevs", json!({"category": "all"}));
            let r = r.as_array().unwrap().iter().find(|r| r["name"] == "r").unwrap().clone();
            if r.get("process").is_none() && r["num_base_bdevs_discovered"] == 2 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "rebuild onto {gone} did not end: {r}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

//! `ferry-blobck` on real store images: a store made by the blobstore on reactors over a
//! malloc bdev, copied to a file; then the binary's exit status and reports on it, on the same
//! image with a crafted log record mapping one cluster to two blobs, and on a file with no store.

use ferry::bdev::modules::malloc;
use ferry::blobstore::format::{self, Parent, Record, BLOCK, FLAG_THIN};
use ferry::blobstore::load::{self, MemReader};
use ferry::blobstore::{dev::BaseDev, CreateOpts, Store};
use ferry::framework::{reactor, task::block_on, Cpumask};
use serde_json::Value;
use std::process::{Command, Output};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 32 * MIB;

/// A store with a thick blob, its snapshot and a thin clone, left dirty; its bytes.
fn store_image() -> Vec<u8> {
    reactor::start(&Cpumask::parse("0x1").unwrap(), false).unwrap();
    malloc::create("blobck0", SIZE / 512, 512, None).unwrap();
    block_on(0, || async {
        let desc = ferry::bdev::open("blobck0", true, Box::new(|_, _| {})).unwrap();
        let opts = CreateOpts { cluster_size: MIB, bstype: *b"LVOLSTORE\0\0\0\0\0\0\0", unmap_device: true, growth: 1 };
        let store = Store::create(desc, opts).await.unwrap();
        let a = store.create_blob(3, 0, Parent::None, vec![("name".into(), b"a".to_vec())]).await.unwrap();
        let s = store.snapshot(a, vec![]).await.unwrap();
        store.create_blob(3, FLAG_THIN, Parent::Blob(s), vec![]).await.unwrap();
        store.flush().await.unwrap();
        let dev = BaseDev::new(ferry::bdev::open("blobck0", false, Box::new(|_, _| {})).unwrap()).unwrap();
        dev.read_buf(0, SIZE as usize).await.unwrap().as_slice().to_vec()
    })
    .unwrap()
}

fn blobck(path: &std::path::Path, json: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry-blobck"));
    cmd.arg(path);
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

#[test]
fn blobck_reports_clean_broken_and_missing_stores_by_exit_status() {
    let dir = std::env::temp_dir().join(format!("ferry-blobck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut img = store_image();
    let path = dir.join("store.img");

    std::fs::write(&path, &img).unwrap();
    let out = blobck(&path, false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("no problems") && text.contains("32 total"), "{text}");
    let out = blobck(&path, true);
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["blobs"], 3);
    assert_eq!(j["clusters"]["total"], 32);
    let c = &j["clusters"];
    let sum: u64 = ["free", "allocated", "metadata", "quarantined"].iter().map(|k| c[k].as_u64().unwrap()).sum();
    assert_eq!(sum, 32);
    assert_eq!(c["allocated"], 3);

    // A log record mapping the snapshot's cluster into the clone: one cluster, two owners.
    let loaded = load::run_now(load::load(&MemReader(&img), SIZE)).unwrap();
    let (&snap, sb) = loaded.state.blobs.iter().find(|(_, b)| b.allocated() > 0).unwrap();
    let clone = loaded.state.blobs.keys().copied().max().unwrap();
    let mut payload = Vec::new();
    Record::MapRun { id: clone, cluster: 0, phys: sb.map[0], count: 1 }.encode(&mut payload);
    Record::Commit.encode(&mut payload);
    let block = format::encode_log_block(loaded.sb.epoch, loaded.log_tail, &payload);
    let at = loaded.sb.log_block(loaded.log_tail) as usize * BLOCK;
    img[at..at + BLOCK].copy_from_slice(&block[..]);
    std::fs::write(&path, &img).unwrap();
    let out = blobck(&path, true);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["quarantined_blobs"], serde_json::json!([clone]), "{j}");
    let problems = j["problems"].to_string();
    assert!(problems.contains(&format!("already belongs to blob {snap}")), "{problems}");

    // No store at all, and no file at all.
    std::fs::write(&path, vec![0u8; 4 * MIB as usize]).unwrap();
    assert_eq!(blobck(&path, false).status.code(), Some(2));
    assert_eq!(blobck(&dir.join("missing"), false).status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

//! Fifty `kill -9` of ferryd under I/O to lvols, each followed by a restart from the saved
//! configuration (`ferryd -c`: an aio bdev on a file, the lvstore found again by examine).
//!
//! The first run makes an lvstore with a thin lvol `vol`, fills part of it, flushes, takes
//! snapshot `snap0` and clones it as `clone`; each lvol is served by a vhost-user-blk
//! controller (`vol` from reactor 1, so its I/O is forwarded to the metadata reactor). Every
//! run then drives patterned 4 KiB writes, write-zeroes (whole clusters and spans) and FLUSH
//! into `vol` and `clone` through the project's vhost-user-blk initiator, may start a metadata
//! operation meanwhile (a snapshot of `vol`, deleting the oldest extra snapshot, which merges
//! it into its clone, a clone of `snap0` made or deleted, inflating `clone`), and kills ferryd
//! at a random completion count (a fixed seed).
//!
//! After each kill, with ferryd down, the offline checker (`ferry-blobck`) must pass on the
//! base file; after the restart every lvol must be listed and none degraded, the operation in
//! flight at the kill must be all or nothing, and every 512-byte sector must read back as the
//! last write acknowledged to it or the one in flight (never older: ferryd's acknowledged
//! writes survive a crash of the process; and a write acknowledged before the last completed
//! flush is reported apart). `snap0` must still hold exactly what it held when taken.

mod common;

use common::{scratch_dir, Ferryd, Rng};
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::{Client, Completion, Options, Request};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SECTOR: u64 = 512;
/// The unit of writes and of the in-flight bookkeeping.
const BLOCK: u64 = 4096;
const SECTORS_PER_BLOCK: u64 = BLOCK / SECTOR;
const CLUSTER: u64 = 1 << 20;
const LVOL_MIB: u64 = 8;
const LVOL_SECTORS: u64 = (LVOL_MIB << 20) / SECTOR;
const LVOL_BLOCKS: u64 = (LVOL_MIB << 20) / BLOCK;
const BASE_BYTES: u64 = 128 << 20;
const ITERATIONS: usize = 50;
/// Requests in flight per lvol.
const QD: usize = 16;
const SEED: u64 = 0x6c76_6f6c_6b69_6c6c;
const MAGIC: &[u8; 8] = b"FRYKILL\0";

/// What a sector holds: zeroes, or the pattern of one write generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Zero,
    Gen(u64),
    Garbage,
}

/// The bytes of sector `s` written by generation `gen`: a header naming both, then bytes
/// derived from them.
fn pattern(s: u64, gen: u64) -> [u8; SECTOR as usize] {
    let mut b = [0u8; SECTOR as usize];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&s.to_le_bytes());
    b[16..24].copy_from_slice(&gen.to_le_bytes());
    let mut r = Rng(s.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ gen ^ 1);
    for chunk in b[24..].chunks_mut(8) {
        let v = r.next().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    b
}

fn decode(s: u64, bytes: &[u8]) -> Found {
    if bytes.iter().all(|&b| b == 0) {
        return Found::Zero;
    }
    if &bytes[..8] != MAGIC || bytes[8..16] != s.to_le_bytes() {
        return Found::Garbage;
    }
    let gen = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    if bytes == pattern(s, gen) {
        Found::Gen(gen)
    } else {
        Found::Garbage
    }
}

/// Write generations: unique across the test; those of write-zeroes (and 0, never written)
/// read back as zeroes.
#[derive(Default)]
struct Gens {
    next: u64,
    zero: HashSet<u64>,
}

impl Gens {
    fn fresh(&mut self, zero: bool) -> u64 {
        self.next += 1;
        if zero {
            self.zero.insert(self.next);
        }
        self.next
    }

    fn matches(&self, found: Found, gen: u64) -> bool {
        match found {
            Found::Zero => gen == 0 || self.zero.contains(&gen),
            Found::Gen(g) => g == gen && !self.zero.contains(&gen),
            Found::Garbage => false,
        }
    }
}

/// The test's model of one lvol, per sector.
#[derive(Clone)]
struct Model {
    /// Generation of the last acknowledged write.
    acked: Vec<u64>,
    /// Generation of the write in flight (one per block at a time), 0 if none.
    inflight: Vec<u64>,
    /// `acked` as it was when the last completed flush was submitted.
    durable: Vec<u64>,
}

impl Model {
    fn new() -> Model {
        let n = LVOL_SECTORS as usize;
        Model { acked: vec![0; n], inflight: vec![0; n], durable: vec![0; n] }
    }
}

/// A request in flight on an lvol's queue.
enum Op {
    /// Sectors `[first, first+count)` get generation `gen`.
    Write { first: u64, count: u64, gen: u64, zero: bool },
    /// A flush; `acked` is the model's acknowledged state when it was submitted.
    Flush { acked: Vec<u64> },
}

/// One lvol served by a vhost-user-blk controller, connected.
struct Disk {
    name: &'static str,
    client: Client,
    /// One 4 KiB data buffer per slot.
    bufs: Vec<u64>,
    /// The request in flight in each slot.
    slots: Vec<Option<Op>>,
    model: Model,
    flush_inflight: bool,
    since_flush: u32,
}

fn connect(sock: &Path) -> Client {
    let opts = Options { num_queues: 1, queue_size: 64, mem_size: 4 << 20, hugetlbfs: None };
    Client::connect_timeout(sock, &opts, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("connect to {}: {e}", sock.display()))
}

impl Disk {
    fn open(dir: &Path, name: &'static str, model: Model) -> Disk {
        let client = connect(&dir.join(format!("c-{name}")));
        let mem = client.mem().clone();
        let bufs = (0..QD).map(|_| mem.alloc(BLOCK as usize, 4096).expect("room for buffers")).collect();
        Disk {
            name,
            client,
            bufs,
            slots: (0..QD).map(|_| None).collect(),
            model,
            flush_inflight: false,
            since_flush: 0,
        }
    }

    fn busy(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    fn block_free(&self, b: u64) -> bool {
        self.model.inflight[(b * SECTORS_PER_BLOCK) as usize] == 0
    }

    /// Submits one request of the random mix into a free slot (if one is free and the
    /// chosen blocks are not in flight).
    fn submit_one(&mut self, rng: &mut Rng, gens: &mut Gens) -> bool {
        let Some(slot) = self.slots.iter().position(Option::is_none) else { return false };
        let op = if !self.flush_inflight && self.since_flush >= 48 {
            self.flush_inflight = true;
            self.since_flush = 0;
            self.client.queue(0).submit(&Request::Flush, slot as u64).expect("room on the ring");
            Op::Flush { acked: self.model.acked.clone() }
        } else {
            let roll = rng.below(100);
            let (first_block, blocks, zero) = if roll < 4 {
                // A whole cluster of zeroes (frees it on a thin lvol without a parent there).
                let c = rng.below(LVOL_MIB);
                (c * CLUSTER / BLOCK, CLUSTER / BLOCK, true)
            } else if roll < 8 {
                let n = 1 + rng.below(32);
                (rng.below(LVOL_BLOCKS - n), n, true)
            } else {
                (rng.below(LVOL_BLOCKS), 1, false)
            };
            if !(first_block..first_block + blocks).all(|b| self.block_free(b)) {
                return false;
            }
            let gen = gens.fresh(zero);
            let first = first_block * SECTORS_PER_BLOCK;
            let count = blocks * SECTORS_PER_BLOCK;
            let mem = self.client.mem().clone();
            let q = self.client.queue(0);
            if zero {
                q.submit(&Request::WriteZeroes { sector: first, sectors: count as u32 }, slot as u64)
            } else {
                let buf = self.bufs[slot];
                let mut data = Vec::with_capacity(BLOCK as usize);
                for s in first..first + count {
                    data.extend_from_slice(&pattern(s, gen));
                }
                mem.write(buf, &data);
                q.submit(&Request::Write { sector: first, bufs: &[(buf, BLOCK as u32)] }, slot as u64)
            }
            .expect("room on the ring");
            for s in first..first + count {
                self.model.inflight[s as usize] = gen;
            }
            self.since_flush += 1;
            Op::Write { first, count, gen, zero }
        };
        self.slots[slot] = Some(op);
        true
    }

    /// Takes the completions that arrived; returns how many.
    fn reap(&mut self) -> usize {
        let mut done: Vec<Completion> = Vec::new();
        self.client.queue(0).poll(&mut done);
        for c in &done {
            let op = self.slots[c.tag as usize].take().expect("a request in that slot");
            if c.status != status::OK {
                let what = match &op {
                    Op::Write { first, count, gen, zero } => {
                        format!(
                            "{} of sectors {first}+{count} (gen {gen})",
                            if *zero { "write-zeroes" } else { "write" }
                        )
                    }
                    Op::Flush { .. } => "flush".to_string(),
                };
                panic!("{}: {what} failed before the kill: {c:?}", self.name);
            }
            match op {
                Op::Write { first, count, gen, .. } => {
                    for s in first..first + count {
                        self.model.acked[s as usize] = gen;
                        self.model.inflight[s as usize] = 0;
                    }
                }
                Op::Flush { acked } => {
                    self.model.durable = acked;
                    self.flush_inflight = false;
                }
            }
        }
        done.len()
    }

    /// The model as it stands at a kill: requests still in flight stay "maybe".
    fn into_model(self) -> Model {
        self.model
    }
}

/// Reads all of `name`'s sectors through its controller.
fn read_all(dir: &Path, name: &str) -> Vec<u8> {
    const CHUNK: u64 = 128 << 10;
    let mut client = connect(&dir.join(format!("c-{name}")));
    let mem = client.mem().clone();
    let bufs: Vec<u64> = (0..8).map(|_| mem.alloc(CHUNK as usize, 4096).unwrap()).collect();
    let total = LVOL_SECTORS * SECTOR;
    let mut out = vec![0u8; total as usize];
    let mut next = 0u64;
    let mut inflight: Vec<Option<u64>> = vec![None; bufs.len()];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, slot) in inflight.iter_mut().enumerate() {
            if slot.is_none() && next < total {
                let r = Request::Read { sector: next / SECTOR, bufs: &[(bufs[i], CHUNK as u32)] };
                client.queue(0).submit(&r, i as u64).expect("room on the ring");
                *slot = Some(next);
                next += CHUNK;
            }
        }
        if inflight.iter().all(Option::is_none) {
            return out;
        }
        client.queue(0).kick();
        let mut done = Vec::new();
        if client.queue(0).poll(&mut done) == 0 {
            assert!(Instant::now() < deadline, "reading {name} back timed out");
            client.queue(0).wait(10);
        }
        for c in done {
            assert_eq!(c.status, status::OK, "reading {name} back failed: {c:?}");
            let at = inflight[c.tag as usize].take().unwrap();
            mem.read(bufs[c.tag as usize], &mut out[at as usize..(at + CHUNK) as usize]);
        }
    }
}

/// Checks `name` against its model after a restart; returns the model with what was found
/// taking the place of what was in flight.
fn verify(dir: &Path, name: &str, mut m: Model, gens: &Gens, iteration: usize) -> Model {
    let data = read_all(dir, name);
    let mut lost_flushed = Vec::new();
    let mut lost_acked = Vec::new();
    for s in 0..LVOL_SECTORS {
        let i = s as usize;
        let found = decode(s, &data[i * SECTOR as usize..(i + 1) * SECTOR as usize]);
        if gens.matches(found, m.acked[i]) {
        } else if m.inflight[i] != 0 && gens.matches(found, m.inflight[i]) {
            m.acked[i] = m.inflight[i];
        } else if m.durable[i] == m.acked[i] {
            lost_flushed.push((s, m.acked[i], m.inflight[i], found));
        } else {
            lost_acked.push((s, m.durable[i], m.acked[i], m.inflight[i], found));
        }
        m.inflight[i] = 0;
    }
    assert!(
        lost_flushed.is_empty(),
        "iteration {iteration}: {name}: {} sectors lost a write acknowledged before the last completed \
         flush; first (sector, acked gen, in-flight gen, found): {:?}",
        lost_flushed.len(),
        &lost_flushed[..lost_flushed.len().min(8)]
    );
    assert!(
        lost_acked.is_empty(),
        "iteration {iteration}: {name}: {} sectors lost an acknowledged write across kill -9 (not yet \
         flushed, but a crash of the process must keep it); first (sector, flushed gen, acked gen, \
         in-flight gen, found): {:?}",
        lost_acked.len(),
        &lost_acked[..lost_acked.len().min(8)]
    );
    m.durable = m.acked.clone();
    m
}

/// A JSON-RPC call that reports a dead daemon as `None` instead of panicking (a call the kill
/// interrupts).
fn try_rpc(sock: &Path, method: &str, params: Value) -> Option<Result<Value, String>> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    s.write_all(req.to_string().as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).ok()?;
    let v: Value = serde_json::from_str(&line).ok()?;
    Some(match v.get("error") {
        Some(e) => Err(e.to_string()),
        None => Ok(v["result"].clone()),
    })
}

/// A metadata operation started during the I/O.
#[derive(Debug, Clone)]
enum MdOp {
    /// A snapshot of `vol` (it becomes vol's parent).
    Snapshot(String),
    /// Deleting an lvol: the oldest extra snapshot (merged into its one clone) or a
    /// temporary clone of `snap0`.
    Delete(String),
    /// A clone of `snap0`.
    Clone(String),
    /// Inflating `clone` (it gets all its clusters and leaves `snap0`).
    Inflate,
}

impl MdOp {
    fn rpc(&self, sock: &Path) -> Option<Result<Value, String>> {
        match self {
            MdOp::Snapshot(name) => {
                try_rpc(sock, "bdev_lvol_snapshot", json!({"lvol_name": "lvs/vol", "snapshot_name": name}))
            }
            MdOp::Delete(name) => try_rpc(sock, "bdev_lvol_delete", json!({"name": format!("lvs/{name}")})),
            MdOp::Clone(name) => {
                try_rpc(sock, "bdev_lvol_clone", json!({"snapshot_name": "lvs/snap0", "clone_name": name}))
            }
            MdOp::Inflate => try_rpc(sock, "bdev_lvol_inflate", json!({"name": "lvs/clone"})),
        }
    }
}

/// The offline checker on the base file, with ferryd down.
fn blobck(base: &Path, iteration: usize) {
    let Some(exe) = option_env!("CARGO_BIN_EXE_ferry-blobck") else {
        panic!("ferry-blobck is not built in this tree (src/bin/ferry-blobck.rs): the offline checker is required");
    };
    let out = Command::new(exe).arg(base).output().expect("run ferry-blobck");
    assert!(
        out.status.success(),
        "iteration {iteration}: ferry-blobck {} failed ({}):\n{}{}",
        base.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start(dir: &common::Scratch, config: Option<&Path>) -> Ferryd {
    let mut args = vec!["-m", "0x3", "-S", dir.to_str().unwrap()];
    if let Some(c) = config {
        args.extend(["-c", c.to_str().unwrap()]);
    }
    Ferryd::start_in(dir.clone(), &args)
}

/// The names of the lvols of store `lvs`, checking that none is degraded.
fn lvol_names(d: &Ferryd, iteration: usize) -> BTreeSet<String> {
    let lvols = d.ok("bdev_lvol_get_lvols", json!({"lvs_name": "lvs"}));
    let mut names = BTreeSet::new();
    for l in lvols.as_array().expect("a list") {
        assert_eq!(
            l["is_degraded"],
            false,
            "iteration {iteration}: lvol degraded after the restart: {l}\n{}",
            d.log_text()
        );
        names.insert(l["name"].as_str().expect("a name").to_string());
    }
    names
}

/// The first run: store, lvols, data, snapshot and clone, controllers; the saved configuration.
fn first_run(d: &Ferryd, base: &Path, gens: &mut Gens) -> (Model, std::path::PathBuf) {
    d.ok("bdev_aio_create", json!({"name": "Base", "filename": base, "block_size": 512}));
    d.ok("bdev_lvol_create_lvstore", json!({"bdev_name": "Base", "lvs_name": "lvs", "cluster_sz": CLUSTER}));
    d.ok(
        "bdev_lvol_create",
        json!({"lvs_name": "lvs", "lvol_name": "vol", "size_in_mib": LVOL_MIB, "thin_provision": true}),
    );
    // vol from reactor 1: its I/O is forwarded to the metadata reactor.
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "c-vol", "dev_name": "lvs/vol", "cpumask": "0x2"}));
    // Every other 64 KiB of the first half gets data before the snapshot.
    let mut client = connect(&d.dir.join("c-vol"));
    let mem = client.mem().clone();
    let buf = mem.alloc(64 << 10, 4096).unwrap();
    let mut model = Model::new();
    let sectors = (64 << 10) / SECTOR;
    for k in (0..LVOL_SECTORS / 2).step_by(2 * sectors as usize) {
        let gen = gens.fresh(false);
        let data: Vec<u8> = (k..k + sectors).flat_map(|s| pattern(s, gen)).collect();
        mem.write(buf, &data);
        client.queue(0).submit(&Request::Write { sector: k, bufs: &[(buf, 64 << 10)] }, 0).unwrap();
        client.queue(0).kick();
        assert_eq!(common::wait_completions(&mut client, 0, 1)[0].status, status::OK);
        model.acked[k as usize..(k + sectors) as usize].fill(gen);
    }
    client.queue(0).submit(&Request::Flush, 1).unwrap();
    client.queue(0).kick();
    assert_eq!(common::wait_completions(&mut client, 0, 1)[0].status, status::OK);
    drop(client);
    model.durable = model.acked.clone();
    d.ok("bdev_lvol_snapshot", json!({"lvol_name": "lvs/vol", "snapshot_name": "snap0"}));
    d.ok("bdev_lvol_clone", json!({"snapshot_name": "lvs/snap0", "clone_name": "clone"}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "c-clone", "dev_name": "lvs/clone", "cpumask": "0x1"}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "c-snap0", "dev_name": "lvs/snap0", "cpumask": "0x1"}));
    let config = d.dir.join("config.json");
    std::fs::write(&config, serde_json::to_vec_pretty(&d.ok("save_config", Value::Null)).unwrap()).unwrap();
    (model, config)
}

#[test]
fn fifty_kill_9_under_io_lose_no_acknowledged_write_and_leave_a_consistent_store() {
    let began = Instant::now();
    let dir = scratch_dir("lvol-kill");
    let base = dir.join("base.img");
    std::fs::File::create(&base).unwrap().set_len(BASE_BYTES).unwrap();
    let mut gens = Gens::default();
    let mut rng = Rng(SEED);
    let mut d = start(&dir, None);
    let (snap_model, config) = first_run(&d, &base, &mut gens);
    let mut models = [("vol", snap_model.clone()), ("clone", snap_model.clone())];
    let mut lvols: BTreeSet<String> = ["vol", "snap0", "clone"].map(String::from).into();
    // Snapshots taken during the I/O, oldest first (each the parent of the next, the last
    // the parent of vol).
    let mut extra: Vec<String> = Vec::new();
    // A clone of snap0 made (and deleted) during the I/O; whether `clone` was inflated.
    let (mut tmp, mut inflated): (Option<String>, bool) = (None, false);
    let mut writes_total = 0usize;
    // Operations by kind: (finished, cut by the kill).
    let mut ops: std::collections::BTreeMap<String, (u32, u32)> = Default::default();
    for iteration in 0..ITERATIONS {
        let mut disks: Vec<Disk> = models.iter().map(|(name, m)| Disk::open(&d.dir, name, m.clone())).collect();
        let kill_at = 30 + rng.below(600) as usize;
        // Some runs start a metadata operation at a random point before the kill (at most
        // three extra snapshots: the store has room for every lvol fully allocated).
        let at = rng.below(kill_at as u64) as usize;
        let md: Option<(usize, MdOp)> = match rng.below(20) {
            _ if extra.len() >= 3 => Some((at, MdOp::Delete(extra[0].clone()))),
            0..=7 => Some((at, MdOp::Snapshot(format!("s{iteration}")))),
            8..=12 if !extra.is_empty() => Some((at, MdOp::Delete(extra[0].clone()))),
            13..=14 => Some((at, tmp.clone().map_or_else(|| MdOp::Clone(format!("t{iteration}")), MdOp::Delete))),
            15 if !inflated => Some((at, MdOp::Inflate)),
            _ => None,
        };
        let mut md_thread = None;
        // Half the operations are let finish (a delete merging a snapshot's clusters takes
        // longer than most runs), then the kill comes a few completions later; the others are
        // cut wherever the kill falls.
        let let_finish = md.is_some() && rng.below(2) == 0;
        let tail = rng.below(64) as usize;
        let mut md_done_at = None;
        let mut completed = 0usize;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if md_done_at.is_none() && md_thread.as_ref().is_some_and(|t: &std::thread::JoinHandle<_>| t.is_finished())
            {
                md_done_at = Some(completed);
            }
            let kill_now = match md_done_at {
                _ if !let_finish => completed >= kill_at,
                Some(at) => completed >= at + tail,
                None => false,
            };
            if kill_now {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "iteration {iteration}: I/O stalled at {completed} completions\n{}",
                d.log_text()
            );
            if let Some((at, op)) = &md {
                if md_thread.is_none() && completed >= *at {
                    let (sock, op) = (d.sock.clone(), op.clone());
                    md_thread = Some(std::thread::spawn(move || op.rpc(&sock)));
                }
            }
            // An operation let finish runs under I/O for a while, then the I/O pauses for it
            // (a merge of a snapshot into its clone copies megabytes: time, not coverage).
            let submit = !(let_finish && md_done_at.is_none() && completed >= kill_at + 200);
            let mut progress = 0;
            for disk in &mut disks {
                while submit && disk.busy() < QD && disk.submit_one(&mut rng, &mut gens) {}
                disk.client.queue(0).kick();
                progress += disk.reap();
            }
            completed += progress;
            if progress == 0 {
                disks[0].client.queue(0).wait(1);
            }
        }
        writes_total += completed;
        // SAFETY: kill(2) on our own child; no memory is involved.
        assert_eq!(unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) }, 0);
        // The operation's answer: Some(None) if the kill cut it; None if it never started.
        let md_result = md_thread.map(|t| t.join().expect("the RPC thread does not panic"));
        let md = if md_result.is_some() { md } else { None };
        drop(d); // reaps it
        blobck(&base, iteration);
        d = start(&dir, Some(&config));
        // The metadata operation: all or nothing, and an error only if the kill cut it.
        let names = lvol_names(&d, iteration);
        if let Some((_, op)) = &md {
            let done = match md_result.flatten() {
                Some(Ok(_)) => Some(true),
                Some(Err(e)) => panic!("iteration {iteration}: {op:?} failed before the kill: {e}"),
                None => None, // cut by the kill: either outcome
            };
            let kind = format!("{op:?}");
            let counts = ops.entry(kind.split('(').next().unwrap_or("?").to_string()).or_insert((0, 0));
            if done.is_some() {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
            match op {
                MdOp::Snapshot(name) => {
                    let there = names.contains(name);
                    assert!(
                        done != Some(true) || there,
                        "iteration {iteration}: snapshot {name} acknowledged, then lost"
                    );
                    if there {
                        lvols.insert(name.clone());
                        extra.push(name.clone());
                    }
                }
                MdOp::Delete(name) => {
                    let there = names.contains(name);
                    assert!(
                        done != Some(true) || !there,
                        "iteration {iteration}: delete of {name} acknowledged, then undone"
                    );
                    if !there {
                        lvols.remove(name);
                        extra.retain(|n| n != name);
                        tmp.take_if(|t| t == name);
                    }
                }
                MdOp::Clone(name) => {
                    let there = names.contains(name);
                    assert!(done != Some(true) || there, "iteration {iteration}: clone {name} acknowledged, then lost");
                    if there {
                        lvols.insert(name.clone());
                        tmp = Some(name.clone());
                    }
                }
                MdOp::Inflate => {
                    let b = d.ok("bdev_get_bdevs", json!({"name": "lvs/clone"}));
                    inflated = b[0]["driver_specific"]["lvol"]["clone"] == false;
                    assert!(
                        done != Some(true) || inflated,
                        "iteration {iteration}: inflate acknowledged, then undone: {b}"
                    );
                }
            }
        }
        assert_eq!(names, lvols, "iteration {iteration}: the lvols after the restart\n{}", d.log_text());
        // The parent links as the operations left them.
        let parent = |name: &str| {
            d.ok("bdev_get_bdevs", json!({ "name": format!("lvs/{name}") }))[0]["driver_specific"]["lvol"].clone()
        };
        let newest = extra.last().map_or("snap0", String::as_str);
        assert_eq!(parent("vol")["base_snapshot"], json!(newest), "iteration {iteration}: vol's parent");
        let clone_parent = if inflated { Value::Null } else { json!("snap0") };
        assert_eq!(parent("clone")["base_snapshot"], clone_parent, "iteration {iteration}: clone's parent");
        let finals: Vec<Model> = disks.into_iter().map(Disk::into_model).collect();
        for ((name, m), fin) in models.iter_mut().zip(finals) {
            *m = verify(&d.dir, name, fin, &gens, iteration);
        }
        let snap = verify(&d.dir, "snap0", snap_model.clone(), &gens, iteration);
        assert!(snap.acked == snap_model.acked, "iteration {iteration}: snap0 changed");
    }
    // Two more checks of the last store: it is still fully usable, and a clean shutdown
    // leaves a store the checker passes too.
    let free = d.ok("bdev_lvol_get_lvstores", json!({"lvs_name": "lvs"}))[0]["free_clusters"].as_u64().unwrap();
    assert!(free > 0, "clusters leaked: none free");
    assert!(d.stop().success());
    blobck(&base, ITERATIONS);
    eprintln!(
        "{ITERATIONS} kills: {writes_total} requests completed, metadata operations (finished, cut) {ops:?}, \
         {} extra snapshots at the end, clone inflated: {inflated}, {:.1} s",
        extra.len(),
        began.elapsed().as_secs_f64()
    );
}

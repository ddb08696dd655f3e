//! The VFIOUSER transport (an NVMe PCIe function over vfio-user) against a real `ferryd -m 0x3`,
//! driven by the raw client and small NVMe driver in `common/vfio_user_client.rs`: the PCI
//! function as a VMM sees it, controller bring-up and reset, admin and I/O queues in shared
//! guest memory, PRP lists, MSI-X interrupts, shadow doorbells with event indexes, SPDK's
//! RPCs and `save_config`; and hostile clients (bad DMA maps, doorbells past a queue, queues
//! on memory that was never mapped, PRPs outside it, broken messages), each answered with an
//! errno, an NVMe status or the controller's fatal status, the daemon serving on.

mod common;
#[path = "common/vfio_user_client.rs"]
mod vfio_user_client;

use common::Ferryd;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vfio_user_client::*;

const NQN: &str = "nqn.2016-06.io.spdk:vfio1";
const BS: usize = 512;
const MEM: usize = 4 << 20;
const RW: u32 = 3;

// Guest memory layout.
const IDBUF: u64 = 0x2000;
const SQ1: u64 = 0x10000;
const CQ1: u64 = 0x11000;
const SHADOW: u64 = 0x20000;
const EVENTIDX: u64 = 0x21000;
const PRPLIST: u64 = 0x30000;
const WBUF: u64 = 0x100000;
const RBUF: u64 = 0x200000;

struct Target {
    d: Ferryd,
    dir: PathBuf,
    _scratch: common::Scratch,
}

/// ferryd serving Malloc0 (4 MiB of 512-byte blocks) as namespace 1 of NQN at a VFIOUSER
/// endpoint in the scratch directory, with transport options `opts`.
fn target(opts: Value) -> Target {
    let d = Ferryd::start(&["-m", "0x3"]);
    d.ok("bdev_malloc_create", json!({ "name": "Malloc0", "num_blocks": 8192, "block_size": BS }));
    let mut t = json!({ "trtype": "VFIOUSER" });
    t.as_object_mut().unwrap().extend(opts.as_object().cloned().unwrap_or_default());
    d.ok("nvmf_create_transport", t);
    d.ok("nvmf_create_subsystem", json!({ "nqn": NQN, "allow_any_host": true, "serial_number": "FERRY0001" }));
    d.ok("nvmf_subsystem_add_ns", json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc0" } }));
    // The endpoint's directory outlives the daemon (a replay test restarts it there).
    let scratch = common::scratch_dir("vfu");
    let dir = scratch.to_path_buf();
    let la = json!({ "trtype": "VFIOUSER", "traddr": dir.to_str().unwrap(), "trsvcid": "0" });
    d.ok("nvmf_subsystem_add_listener", json!({ "nqn": NQN, "listen_address": la }));
    Target { d, dir, _scratch: scratch }
}

fn socket(t: &Target) -> PathBuf {
    t.dir.join("cntrl")
}

/// A client with guest memory mapped at 0 and MSI-X vectors 0 and 1, controller enabled.
fn driver(t: &Target) -> (Nvme, Vec<Vector>) {
    let mut c = Client::connect(&socket(t));
    let mem = Mem::new(MEM);
    c.dma_map(Some(mem.fd()), 0, 0, MEM as u64, RW).expect("DMA_MAP");
    let vectors = vec![Vector::new(), Vector::new()];
    let fds: Vec<_> = vectors.iter().map(|v| std::os::fd::AsRawFd::as_raw_fd(&v.0)).collect();
    c.set_msix(0, &fds).expect("SET_IRQS");
    let mut n = Nvme::new(c, mem);
    let csts = n.enable();
    assert_eq!(csts & 3, 1, "CSTS after enable: {csts:#x}\n{}", t.d.log_text());
    (n, vectors)
}

/// One I/O queue pair (qid 1, 64 entries, vector 1) after Set Features Number of Queues.
fn io_queue(n: &mut Nvme) -> Queue {
    assert!(n.set_queues(2).ok());
    let c = n.create_cq(1, CQ1, 64, 1);
    assert!(c.ok(), "Create I/O CQ: {c:?}");
    let c = n.create_sq(1, SQ1, 64, 1);
    assert!(c.ok(), "Create I/O SQ: {c:?}");
    Queue::new(1, SQ1, CQ1, 64)
}

/// Waits until queue `qid` has taken `n` commands (Ferry's counter).
fn wait_fetched(t: &Target, qid: u64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while qpair(t, qid)["vfio_user"]["commands"].as_u64() != Some(n) {
        assert!(Instant::now() < deadline, "queue {qid} never took {n} commands: {}", qpair(t, qid));
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn qpair(t: &Target, qid: u64) -> Value {
    let all = t.d.ok("nvmf_subsystem_get_qpairs", json!({ "nqn": NQN }));
    all.as_array().unwrap().iter().find(|q| q["qid"] == qid).cloned().unwrap_or_else(|| panic!("no qpair {qid}: {all}"))
}

#[test]
fn the_function_a_vmm_sees_and_io_through_prp_lists() {
    let t = target(json!({}));
    let mut c = Client::connect(&socket(&t));
    let (flags, regions, irqs) = c.device_info();
    assert_eq!((flags & 3, regions, irqs), (3, 9, 5), "PCI, resettable, 9 regions, 5 interrupt types");
    let cfg = c.region_read(CONFIG, 0, 64).unwrap();
    assert_eq!(&cfg[0..4], &[0x58, 0x4e, 0x01, 0x00], "vendor/device");
    assert_eq!(&cfg[9..12], &[0x02, 0x08, 0x01], "class code 01/08/02");
    assert_eq!(c.region_info(CONFIG).unwrap().1, 4096);
    assert_eq!(c.region_info(BAR0).unwrap().1, 0x4000);
    assert_eq!(c.irq_info(MSIX).unwrap().1, 128);
    // Capabilities: PM, PCI Express, MSI-X.
    let mut ids = Vec::new();
    let mut at = cfg[0x34] as u64;
    while at != 0 {
        let cap = c.region_read(CONFIG, at, 2).unwrap();
        ids.push(cap[0]);
        at = cap[1] as u64;
    }
    assert_eq!(ids, [0x01, 0x10, 0x11]);
    drop(c);

    let (mut n, mut vectors) = driver(&t);
    let cap = n.c.read64(0);
    assert_eq!(cap & 0xffff, 255, "MQES from max_queue_depth 256");
    assert_eq!((cap >> 16) & 1, 1, "CQR");
    assert_eq!(n.c.read32(0x08), 0x0001_0300, "VS 1.3");
    let id = n.identify(1, 0, IDBUF);
    assert!(id.ok(), "{id:?}");
    let d = n.mem.read(IDBUF, 4096);
    assert_eq!(u16::from_le_bytes([d[0], d[1]]), 0x4e58, "VID");
    assert_eq!(&d[4..13], b"FERRY0001");
    assert_eq!(u16::from_le_bytes([d[256], d[257]]) & (1 << 8), 1 << 8, "OACS: Doorbell Buffer Config");
    assert_eq!(&d[536..540], &[0; 4], "SGLS: PRPs only");
    assert_eq!(d[77], 5, "MDTS 128 KiB in 4 KiB pages");
    assert!(vectors[0].wait_take() > 0, "the admin completion raised MSI-X vector 0");
    assert!(n.identify(0, 1, IDBUF).ok());
    let ns = n.mem.read(IDBUF, 8);
    assert_eq!(u64::from_le_bytes(ns.try_into().unwrap()), 8192, "NSZE");

    let mut q = io_queue(&mut n);
    // 16 KiB from a buffer not page aligned at its start: PRP1 with an offset, a PRP list of
    // four pages.
    let data = pattern(7, 16384);
    n.mem.write(WBUF + 0x200, &data);
    for i in 0..4u64 {
        n.mem.write(PRPLIST + 8 * i, &(WBUF + 0x1000 * (i + 1)).to_le_bytes());
    }
    let w = n.rw(&mut q, 0x01, 100, 32, WBUF + 0x200, PRPLIST);
    assert!(w.ok(), "write: {w:?}");
    assert_eq!(w.sqid, 1);
    for i in 0..4u64 {
        n.mem.write(PRPLIST + 8 * i, &(RBUF + 0x1000 * (i + 1)).to_le_bytes());
    }
    let r = n.rw(&mut q, 0x02, 100, 32, RBUF + 0x200, PRPLIST);
    assert!(r.ok(), "read: {r:?}");
    assert_eq!(n.mem.read(RBUF + 0x200, 16384), data, "data read back through PRP lists");
    // Two pages through PRP1 (with an offset) and PRP2.
    let r = n.rw(&mut q, 0x02, 100, 8, RBUF + 0x10800, RBUF + 0x11000);
    assert!(r.ok(), "{r:?}");
    assert_eq!(n.mem.read(RBUF + 0x10800, 4096), data[..4096]);
    assert!(vectors[1].wait_take() > 0, "I/O completions raised vector 1");

    let qp = qpair(&t, 1);
    assert_eq!(qp["listen_address"]["trtype"], "VFIOUSER");
    assert_eq!(qp["vfio_user"]["commands"], 3, "{qp}");
    assert_eq!(qp["vfio_user"]["sq_doorbell_traps"], 3, "every submission rang its trapped doorbell: {qp}");
    assert_eq!(qp["vfio_user"]["shadow_doorbells"], false);
    let ctrlrs = t.d.ok("nvmf_subsystem_get_controllers", json!({ "nqn": NQN }));
    assert_eq!(ctrlrs[0]["num_io_qpairs"], 1, "{ctrlrs}");

    // A CQ with an SQ on it cannot go; the SQ first, then the CQ.
    let c = n.delete_cq(1);
    assert_eq!((c.sct(), c.sc()), (1, 0x0c), "Invalid Queue Deletion: {c:?}");
    assert!(n.delete_sq(1).ok());
    assert!(n.delete_cq(1).ok());
    assert_eq!(t.d.ok("nvmf_subsystem_get_controllers", json!({ "nqn": NQN }))[0]["num_io_qpairs"], 0);
    // Reset: CSTS.RDY clears, the model's controller goes.
    assert_eq!(n.disable() & 3, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !t.d.ok("nvmf_subsystem_get_controllers", json!({ "nqn": NQN })).as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the controller outlived the reset");
        std::thread::sleep(Duration::from_millis(10));
    }
    // And up again, with a working admin queue.
    assert_eq!(n.enable() & 3, 1);
    assert!(n.identify(1, 0, IDBUF).ok());
}

/// Runs `batches` batches of `depth` writes on queue `q` (all submitted, then all reaped).
fn batches(n: &mut Nvme, q: &mut Queue, batches: usize, depth: usize) {
    for b in 0..batches {
        let mut cids = Vec::new();
        for i in 0..depth {
            let cid = n.next_cid();
            let mut c = cmd(0x01, cid, 1);
            prps(&mut c, WBUF + 0x1000 * i as u64, 0);
            set64(&mut c, 40, ((b * depth + i) % 4096) as u64);
            set32(&mut c, 48, 7);
            n.submit(q, &c);
            cids.push(cid);
        }
        for _ in 0..depth {
            let cqe = n.reap(q);
            assert!(cqe.ok(), "{cqe:?}");
        }
    }
}

#[test]
fn shadow_doorbells_keep_doorbell_writes_off_the_data_path() {
    let t = target(json!({}));
    let (mut n, _vectors) = driver(&t);
    // Linux's order: the I/O queues first, then Doorbell Buffer Config, which moves the
    // existing queues to shadow doorbells too.
    let mut q = io_queue(&mut n);
    batches(&mut n, &mut q, 1, 4);
    let c = n.dbbuf(SHADOW, EVENTIDX);
    assert!(c.ok(), "Doorbell Buffer Config: {c:?}");
    assert_eq!(n.mem.read_u32(SHADOW + 8), 4, "the trapped tail carried into the shadow doorbell");
    q.shadow = Some((SHADOW, EVENTIDX));
    batches(&mut n, &mut q, 20, 32);
    // And a queue created after it.
    assert!(n.create_cq(2, CQ1 + 0x2000, 64, 1).ok());
    assert!(n.create_sq(2, SQ1 + 0x2000, 64, 2).ok());
    let mut q2 = Queue::new(2, SQ1 + 0x2000, CQ1 + 0x2000, 64);
    q2.shadow = Some((SHADOW, EVENTIDX));
    batches(&mut n, &mut q2, 4, 16);
    assert_eq!(qpair(&t, 2)["vfio_user"]["shadow_doorbells"], true);
    let qp = qpair(&t, 1);
    assert_eq!(qp["vfio_user"]["shadow_doorbells"], true, "{qp}");
    assert_eq!(qp["vfio_user"]["commands"], 644);
    let traps = qp["vfio_user"]["sq_doorbell_traps"].as_u64().unwrap() - 4;
    // About one ring per batch (the queue's event index is armed while it is idle between
    // batches; each time this thread is descheduled mid-batch long enough for the queue to
    // idle adds one: on a loaded 2-core machine, several per batch), none for the CQ head.
    // Without shadow doorbells every one of the 640 submissions traps.
    assert!(traps * 4 <= 640, "{traps} SQ doorbell traps for 640 commands: {qp}");
    assert_eq!(qp["vfio_user"]["cq_doorbell_traps"], 4, "the 4 before the Doorbell Buffer Config only: {qp}");
    // Idle long enough for the reactor to sleep: a submission still wakes it (the armed
    // event index makes the host ring).
    std::thread::sleep(Duration::from_millis(50));
    batches(&mut n, &mut q, 1, 1);
}

#[test]
fn without_shadow_doorbells_every_submission_traps() {
    let t = target(json!({ "disable_shadow_doorbells": true }));
    let (mut n, _v) = driver(&t);
    assert!(n.identify(1, 0, IDBUF).ok());
    let oacs = n.mem.read(IDBUF + 256, 2);
    assert_eq!(oacs[1] & 1, 0, "OACS bit 8 off");
    let c = n.dbbuf(SHADOW, EVENTIDX);
    assert_eq!((c.sct(), c.sc()), (0, 0x01), "Doorbell Buffer Config: Invalid Opcode");
    let mut q = io_queue(&mut n);
    batches(&mut n, &mut q, 4, 16);
    let qp = qpair(&t, 1);
    assert_eq!(qp["vfio_user"]["sq_doorbell_traps"], 64, "{qp}");
}

#[test]
fn hostile_queues_prps_and_doorbells_get_statuses_or_a_fatal_controller() {
    let t = target(json!({}));
    let (mut n, _v) = driver(&t);
    assert!(n.set_queues(2).ok());
    // Queue IDs and sizes out of range, no contiguous flag, unknown CQ, unmapped memory.
    let c = n.create_cq(3, CQ1, 64, 1);
    assert_eq!((c.sct(), c.sc()), (1, 0x01), "qid above the granted count: {c:?}");
    let c = n.create_cq(1, CQ1, 1, 1);
    assert_eq!((c.sct(), c.sc()), (1, 0x02), "size 1: {c:?}");
    let c = n.create_cq(1, CQ1, 4096, 1);
    assert_eq!((c.sct(), c.sc()), (1, 0x02), "size above MQES: {c:?}");
    let c = n.create_cq(1, CQ1, 64, 500);
    assert_eq!((c.sct(), c.sc()), (1, 0x08), "vector past the table: {c:?}");
    let c = n.create_cq(1, 1 << 40, 64, 1);
    assert_eq!((c.sct(), c.sc()), (0, 0x02), "a queue on memory never mapped: {c:?}");
    let c = n.create_cq(1, CQ1 + 0x200, 64, 1);
    assert_eq!((c.sct(), c.sc()), (0, 0x13), "a queue not page aligned: {c:?}");
    let c = n.create_sq(1, SQ1, 64, 1);
    assert_eq!((c.sct(), c.sc()), (1, 0x00), "SQ on a CQ that does not exist: {c:?}");
    assert!(n.create_cq(1, CQ1, 64, 1).ok());
    let c = n.create_sq(1, MEM as u64 - 0x1000, 128, 1);
    assert_eq!((c.sct(), c.sc()), (0, 0x02), "a queue running off the end of memory: {c:?}");
    let c = n.create_cq(1, CQ1, 64, 1);
    assert_eq!((c.sct(), c.sc()), (1, 0x01), "the same CQ twice: {c:?}");
    let mut raw = cmd(0x01, n.next_cid(), 0);
    prps(&mut raw, SQ1, 0);
    set32(&mut raw, 40, (63 << 16) | 1);
    set32(&mut raw, 44, 1 << 16); // PC clear
    let c = n.admin(raw);
    assert_eq!((c.sct(), c.sc()), (0, 0x02), "non-contiguous SQ: {c:?}");
    let c = n.delete_sq(5);
    assert_eq!((c.sct(), c.sc()), (1, 0x01), "deleting a queue that does not exist: {c:?}");
    let mut q = Queue::new(1, SQ1, CQ1, 64);
    assert!(n.create_sq(1, SQ1, 64, 1).ok());
    // Fabrics commands and SGLs do not exist on PCIe.
    let cid = n.next_cid();
    let c = n.admin(cmd(0x7f, cid, 0));
    assert_eq!((c.sct(), c.sc()), (0, 0x01), "fabrics opcode: {c:?}");
    // PRPs: outside guest memory, misaligned, a list pointing past memory, too long.
    let r = n.rw(&mut q, 0x02, 0, 8, 1 << 40, 0);
    assert_eq!((r.sct(), r.sc()), (0, 0x04), "PRP1 outside memory: {r:?}");
    let r = n.rw(&mut q, 0x02, 0, 16, RBUF, RBUF + 0x1008);
    assert_eq!((r.sct(), r.sc()), (0, 0x13), "PRP2 with an offset: {r:?}");
    n.mem.write(PRPLIST, &(1u64 << 41).to_le_bytes());
    let r = n.rw(&mut q, 0x02, 0, 24, RBUF, PRPLIST);
    assert_eq!((r.sct(), r.sc()), (0, 0x04), "a list entry outside memory: {r:?}");
    let r = n.rw(&mut q, 0x02, 0, 24, RBUF, 1 << 40);
    assert_eq!((r.sct(), r.sc()), (0, 0x04), "a list outside memory: {r:?}");
    let r = n.rw(&mut q, 0x01, 0, 512, WBUF, PRPLIST);
    assert_eq!((r.sct(), r.sc()), (0, 0x02), "a transfer past MDTS: {r:?}");
    let r = n.rw(&mut q, 0x02, 8190, 8, RBUF, 0);
    assert_eq!((r.sct(), r.sc()), (0, 0x80), "past the namespace: {r:?}");
    // Doorbell Buffer Config outside memory, or twice the same page.
    let c = n.dbbuf(1 << 40, EVENTIDX);
    assert_eq!((c.sct(), c.sc()), (0, 0x02), "{c:?}");
    let c = n.dbbuf(SHADOW, SHADOW);
    assert_eq!((c.sct(), c.sc()), (0, 0x02), "{c:?}");
    // The queue still works.
    assert!(n.rw(&mut q, 0x02, 0, 8, RBUF, 0).ok());
    assert_eq!(n.c.read32(0x1c) & 2, 0, "no fatal status yet");
    // A tail doorbell past the queue's size: controller fatal status.
    n.c.doorbell(2, 64);
    let s = n.wait_csts(|s| s & 2 != 0);
    assert_eq!(s & 2, 2, "CSTS.CFS");
    // The reason is logged right after the status is set: wait for the line.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.d.log_text().contains("beyond its 64 entries") {
        assert!(Instant::now() < deadline, "{}", t.d.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    // The host resets the controller and goes on.
    assert_eq!(n.disable() & 3, 0, "CFS and RDY clear after a reset");
    assert_eq!(n.enable() & 3, 1);
    assert!(n.set_queues(2).ok());
    let c = n.create_cq(1, CQ1, 64, 1);
    assert!(c.ok(), "Create I/O CQ after the reset: {c:?}\n{}", t.d.log_text());
    assert!(n.create_sq(1, SQ1, 64, 1).ok());
    let mut q = Queue::new(1, SQ1, CQ1, 64);
    assert!(n.rw(&mut q, 0x02, 0, 8, RBUF, 0).ok());
    // A CQ head doorbell past the size is fatal too. The controller reads the head when the
    // queue looks full: the 64th completion since the head (1, after the read above) has no
    // room. Like a real host, never more than 63 commands wait in the 64-entry SQ: a 64th
    // tail before the controller took any would make the queue look empty.
    n.c.doorbell(3, 1000);
    let mut read_8_blocks = |n: &mut Nvme| {
        let mut c = cmd(0x02, n.next_cid(), 1);
        prps(&mut c, RBUF, 0);
        set32(&mut c, 48, 7);
        n.mem.write(q.sq + q.tail as u64 * 64, &c);
        q.tail = (q.tail + 1) % q.size;
        n.c.doorbell(2, q.tail as u32);
    };
    for _ in 0..63 {
        read_8_blocks(&mut n);
    }
    wait_fetched(&t, 1, 64);
    read_8_blocks(&mut n);
    assert_eq!(n.wait_csts(|s| s & 2 != 0) & 2, 2, "CFS after a wild CQ head");
    // Still a healthy daemon.
    t.d.ok("spdk_get_version", json!(null));

    // The first command of a fused pair without its second waits in the model; deleting its
    // queue (or resetting the controller) must not wait for it forever.
    assert_eq!(n.disable() & 3, 0);
    assert_eq!(n.enable() & 3, 1);
    let mut q = io_queue(&mut n);
    let cid = n.next_cid();
    let mut c = cmd(0x05, cid, 1);
    c[1] = 1; // FUSE: first of a Compare and Write
    prps(&mut c, RBUF, 0);
    set32(&mut c, 48, 0);
    n.submit(&mut q, &c);
    wait_fetched(&t, 1, 1);
    let del = n.delete_sq(1);
    assert!(del.ok(), "Delete I/O SQ with a fused command held: {del:?}");
    assert!(n.delete_cq(1).ok());
    let mut q = io_queue(&mut n);
    n.submit(&mut q, &c);
    wait_fetched(&t, 1, 1);
    assert_eq!(n.disable() & 3, 0, "a reset with a fused command held completes");
}

#[test]
fn hostile_vfio_user_messages_get_errors_and_the_endpoint_serves_on() {
    let t = target(json!({}));
    let mut c = Client::connect_raw(&socket(&t));
    // Anything before VERSION is refused.
    assert_eq!(
        c.request(GET_INFO, &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).ok().unwrap_err(),
        libc::EINVAL
    );
    // An unknown major.
    assert_eq!(c.request(VERSION, &[1, 0, 0, 0], &[]).ok().unwrap_err(), libc::ENOTSUP);
    drop(c);
    let mut c = Client::connect(&socket(&t));
    let mem = Mem::new(1 << 20);
    // Bad DMA maps: unaligned, no READ, past the file, not a regular file, an unsealed memfd,
    // overlapping, and the same region twice.
    assert_eq!(c.dma_map(Some(mem.fd()), 0, 0x1001, 0x1000, RW), Err(libc::EINVAL));
    assert_eq!(c.dma_map(Some(mem.fd()), 0, 0, 0x1000, 2), Err(libc::EINVAL));
    assert_eq!(c.dma_map(Some(mem.fd()), 0x1000, 0, 1 << 20, RW), Err(libc::EINVAL));
    let null = std::fs::File::open("/dev/null").unwrap();
    assert_eq!(c.dma_map(Some(std::os::fd::AsRawFd::as_raw_fd(&null)), 0, 0, 0x1000, 1), Err(libc::EINVAL));
    let name = std::ffi::CString::new("unsealed").unwrap();
    // SAFETY: a fresh memfd we own.
    let unsealed = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    // SAFETY: ours.
    assert_eq!(unsafe { libc::ftruncate(unsealed, 0x1000) }, 0);
    assert_eq!(c.dma_map(Some(unsealed), 0, 0, 0x1000, RW), Err(libc::EINVAL), "an unsealed memfd can shrink under us");
    // SAFETY: ours.
    unsafe { libc::close(unsealed) };
    c.dma_map(Some(mem.fd()), 0, 0, 1 << 20, RW).unwrap();
    assert_eq!(c.dma_map(Some(mem.fd()), 0, 0x80000, 0x1000, RW), Err(libc::EEXIST));
    assert_eq!(c.dma_unmap(0x1000, 0x1000, 0), Err(libc::ENOENT), "part of a mapping");
    // Region accesses past the end, unknown regions and commands, two fds on a map.
    assert_eq!(c.region_read(CONFIG, 4094, 4).unwrap_err(), libc::EINVAL);
    assert_eq!(c.region_read(BAR0, 0x4000, 4).unwrap_err(), libc::EINVAL);
    assert_eq!(c.region_read(42, 0, 4).unwrap_err(), libc::EINVAL);
    assert_eq!(c.region_read(BAR0, 0, 2 << 20).unwrap_err(), libc::E2BIG);
    assert_eq!(c.request(99, &[], &[]).ok().unwrap_err(), libc::ENOSYS);
    assert_eq!(c.region_info(77).unwrap_err(), libc::EINVAL);
    let fds = [mem.fd(), mem.fd()];
    let mut p = Vec::new();
    for v in [32u64, 0, 0x200000, 0x1000] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p[4..8].copy_from_slice(&RW.to_le_bytes());
    assert_eq!(c.request(DMA_MAP, &p, &fds).ok().unwrap_err(), libc::EINVAL);
    // MSI-X vectors past the table.
    let v = Vector::new();
    assert_eq!(
        c.set_msix(127, &[std::os::fd::AsRawFd::as_raw_fd(&v.0), std::os::fd::AsRawFd::as_raw_fd(&v.0)]),
        Err(libc::EINVAL)
    );
    // A write of the doorbell area at an odd offset.
    assert_eq!(c.region_write(BAR0, 0x1002, &[0; 4]), Err(libc::EINVAL));
    c.dma_unmap(0, 1 << 20, 0).unwrap();
    // A message whose size is below the header's: the stream is not vfio-user; dropped.
    let mut bad = vec![0u8; 16];
    bad[2..4].copy_from_slice(&GET_INFO.to_le_bytes());
    bad[4..8].copy_from_slice(&8u32.to_le_bytes());
    c.send_bytes(&bad, &[]);
    let mut b = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut c.sock, &mut b).unwrap_or(0), 0, "the connection is closed");
    // A huge declared size: dropped too, without allocating it.
    let mut c = Client::connect(&socket(&t));
    let mut bad = vec![0u8; 16];
    bad[2..4].copy_from_slice(&REGION_WRITE.to_le_bytes());
    bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    c.send_bytes(&bad, &[]);
    assert_eq!(std::io::Read::read(&mut c.sock, &mut b).unwrap_or(0), 0);
    // A client that disconnects half way through a message, then a good one.
    let mut c = Client::connect(&socket(&t));
    c.send_bytes(&[1, 0, 4, 0, 32, 0], &[]);
    drop(c);
    let (mut n, _v) = driver(&t);
    assert!(n.identify(1, 0, IDBUF).ok());
}

#[test]
fn save_config_replays_the_transport_subsystem_and_endpoint() {
    let t = target(json!({ "max_queue_depth": 128, "disable_shadow_doorbells": true }));
    let saved = t.d.ok("save_config", json!(null));
    let nvmf = saved["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "nvmf").unwrap().clone();
    let configs = nvmf["config"].as_array().unwrap();
    let transport = configs.iter().find(|c| c["method"] == "nvmf_create_transport").unwrap();
    assert_eq!(transport["params"]["trtype"], "VFIOUSER");
    assert_eq!(transport["params"]["max_queue_depth"], 128);
    assert_eq!(transport["params"]["disable_shadow_doorbells"], true);
    let listener = configs.iter().find(|c| c["method"] == "nvmf_subsystem_add_listener").unwrap();
    assert_eq!(listener["params"]["listen_address"]["traddr"], t.dir.to_str().unwrap());
    let transports = t.d.ok("nvmf_get_transports", json!({ "trtype": "VFIOUSER" }));
    assert_eq!(transports[0]["max_queue_depth"], 128);
    let subs = t.d.ok("nvmf_get_subsystems", json!({ "nqn": NQN }));
    assert_eq!(subs[0]["listen_addresses"][0]["trtype"], "VFIOUSER");
    // A second transport of the type, a listener on a missing directory or a taken one: refused.
    let e = t.d.err("nvmf_create_transport", json!({ "trtype": "VFIOUSER" }));
    assert_eq!(e.code, -32603);
    let missing = json!({ "trtype": "VFIOUSER", "traddr": "/nonexistent/ferry", "trsvcid": "0" });
    let e = t.d.err("nvmf_subsystem_add_listener", json!({ "nqn": NQN, "listen_address": missing }));
    assert_eq!(e.code, -32602, "{e:?}");
    assert!(
        t.d.ok("nvmf_get_subsystems", json!({ "nqn": NQN }))[0]["listen_addresses"].as_array().unwrap().len() == 1,
        "nothing half-made"
    );

    // Replayed into a new daemon (the first one gone, its socket with it).
    let keep = common::scratch_dir("vfu-cfg");
    let cfg = keep.join("saved.json");
    std::fs::write(&cfg, serde_json::to_vec_pretty(&saved).unwrap()).unwrap();
    let Target { d, dir, _scratch } = t;
    drop(d);
    let d2 = Ferryd::start(&["-m", "0x3", "-c", cfg.to_str().unwrap()]);
    let t2 = Target { d: d2, dir, _scratch };
    let (mut n, _v) = driver(&t2);
    assert_eq!(n.c.read64(0) & 0xffff, 127, "MQES of the replayed max_queue_depth");
    assert!(n.identify(1, 0, IDBUF).ok());
    // Removing the listener ends the endpoint.
    let la = json!({ "trtype": "VFIOUSER", "traddr": t2.dir.to_str().unwrap(), "trsvcid": "0" });
    t2.d.ok("nvmf_subsystem_remove_listener", json!({ "nqn": NQN, "listen_address": la }));
    assert!(!socket(&t2).exists(), "the socket went with the listener");
    let _ = saved;
}

/// Set Features on the admin queue: feature `fid`, dword 11 `cdw11`.
fn set_feature(n: &mut Nvme, fid: u32, cdw11: u32) -> Cqe {
    let mut c = cmd(0x09, n.next_cid(), 0);
    set32(&mut c, 40, fid);
    set32(&mut c, 44, cdw11);
    n.admin(c)
}

/// Get Features (current value) of feature `fid`, dword 11 `cdw11`.
fn get_feature(n: &mut Nvme, fid: u32, cdw11: u32) -> Cqe {
    let mut c = cmd(0x0a, n.next_cid(), 0);
    set32(&mut c, 40, fid);
    set32(&mut c, 44, cdw11);
    n.admin(c)
}

/// MSI-X interrupts queue 1 got for `count` reads issued one at a time (each reaped from the
/// completion queue before the next is sent, so each poll of Ferry's has one new entry).
fn interrupts_for_single_reads(t: &Target, n: &mut Nvme, q: &mut Queue, count: usize) -> u64 {
    let before = qpair(t, 1)["vfio_user"]["interrupts"].as_u64().unwrap();
    for i in 0..count {
        let r = n.rw(q, 0x02, i as u64 * 8, 8, RBUF, 0);
        assert!(r.ok(), "{r:?}");
    }
    // Wait for the interrupts Ferry still owes (at most the aggregation time).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let qp = qpair(t, 1);
        let due = qp["vfio_user"]["interrupts"].as_u64().unwrap() - before;
        if due > 0 || Instant::now() > deadline {
            return due;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn interrupt_coalescing_aggregates_io_completions_per_vector() {
    let t = target(json!({}));
    let (mut n, _vectors) = driver(&t);
    let mut q = io_queue(&mut n);
    // Without aggregation: one interrupt per entry.
    assert_eq!(interrupts_for_single_reads(&t, &mut n, &mut q, 8), 8);
    // Threshold 8 entries (0's based 7), time 25.5 ms: 8 single reads make one interrupt, and
    // one more for each 25.5 ms they took (a loaded machine, this thread descheduled).
    assert!(set_feature(&mut n, 0x08, 0xff07).ok());
    let g = get_feature(&mut n, 0x08, 0);
    assert!(g.ok() && g.dw0 == 0xff07, "{g:?}");
    let started = Instant::now();
    let got = interrupts_for_single_reads(&t, &mut n, &mut q, 8);
    let bound = 2 + started.elapsed().as_millis() as u64 / 25;
    assert!((1..=bound).contains(&got), "{got} interrupts for 8 completions with a threshold of 8");
    // Coalescing Disable on vector 1 (queue 1's): one per entry again.
    assert!(set_feature(&mut n, 0x09, 1 | 1 << 16).ok());
    let g = get_feature(&mut n, 0x09, 1);
    assert!(g.ok() && g.dw0 == (1 | 1 << 16), "{g:?}");
    // An interrupt the aggregation may still hold for the reads above goes out with this
    // read's, before the count below starts.
    assert!(n.rw(&mut q, 0x02, 0, 8, RBUF, 0).ok());
    assert_eq!(interrupts_for_single_reads(&t, &mut n, &mut q, 8), 8);
    // A vector the function does not have; a save.
    let bad = set_feature(&mut n, 0x09, 4000);
    assert_eq!((bad.sct(), bad.sc()), (0, 0x02), "{bad:?}");
    let save = set_feature(&mut n, 0x08 | 1 << 31, 0);
    assert_eq!((save.sct(), save.sc()), (1, 0x0d), "{save:?}");
    // A controller reset brings the defaults back.
    assert_eq!(n.disable() & 1, 0);
    assert_eq!(n.enable() & 1, 1);
    let g = get_feature(&mut n, 0x08, 0);
    assert!(g.ok() && g.dw0 == 0, "{g:?}");
}

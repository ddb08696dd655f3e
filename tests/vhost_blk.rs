//! vhost-user-blk over the real socket protocol, driven by the project's initiator
//! (`ferry-vhost-initiator`): data through several queues, config and GET_ID, flush and
//! discard, hostile rings, and a controller that listens again after its frontend leaves.

mod common;

use common::Ferryd;
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::split::flags;
use ferry_vhost_initiator::{Client, Completion, Options, Request};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

fn start() -> Ferryd {
    let dir = common::scratch_dir("vblk");
    Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()])
}

/// Waits for `n` completions on queue `q`.
#[track_caller]
fn wait(client: &mut Client, q: usize, n: usize) -> Vec<Completion> {
    common::wait_completions(client, q, n)
}

fn connect(sock: &Path, queues: u16) -> Client {
    Client::connect(sock, &Options { num_queues: queues, queue_size: 256, mem_size: 16 << 20, hugetlbfs: None })
        .expect("connect to the controller")
}

#[test]
fn data_moves_through_two_queues_with_config_id_flush_and_discard() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 16384, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "c0", "dev_name": "M"}));
    let mut c = connect(&d.dir.join("c0"), 2);
    let cfg = c.config();
    assert_eq!((cfg.capacity, cfg.blk_size, cfg.num_queues), (16384, 512, 256), "SPDK_VHOST_MAX_VQUEUES queues");
    let mem = c.mem().clone();
    let (a, b) = (mem.alloc(8192, 4096).unwrap(), mem.alloc(8192, 4096).unwrap());
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    mem.write(a, &pattern);
    // Written through queue 0 in two segments, read back through queue 1.
    c.queue(0).submit(&Request::Write { sector: 100, bufs: &[(a, 4096), (a + 4096, 4096)] }, 1).unwrap();
    c.queue(0).kick();
    assert_eq!(wait(&mut c, 0, 1)[0], Completion { tag: 1, status: status::OK, len: 1 });
    c.queue(1).submit(&Request::Read { sector: 100, bufs: &[(b, 8192)] }, 2).unwrap();
    c.queue(1).kick();
    assert_eq!(wait(&mut c, 1, 1)[0], Completion { tag: 2, status: status::OK, len: 8193 });
    let mut back = vec![0u8; 8192];
    mem.read(b, &mut back);
    assert!(back == pattern, "data read back through another queue differs");
    // Flush, GET_ID, discard (reads back zeroes).
    c.queue(0).submit(&Request::Flush, 3).unwrap();
    c.queue(0).submit(&Request::GetId { buf: (b, 20) }, 4).unwrap();
    c.queue(0).submit(&Request::Discard { sector: 100, sectors: 8 }, 5).unwrap();
    c.queue(0).kick();
    let done = wait(&mut c, 0, 3);
    assert!(done.iter().all(|x| x.status == status::OK), "{done:?}");
    let uuid = d.ok("bdev_get_bdevs", json!({"name": "M"}))[0]["uuid"].as_str().unwrap().replace('-', "");
    let mut id = vec![0u8; 20];
    mem.read(b, &mut id);
    assert_eq!(String::from_utf8_lossy(&id), uuid[..20]);
    c.queue(1).submit(&Request::Read { sector: 100, bufs: &[(b, 4096)] }, 6).unwrap();
    c.queue(1).kick();
    wait(&mut c, 1, 1);
    mem.read(b, &mut back[..4096]);
    assert!(back[..4096].iter().all(|&x| x == 0), "discarded sectors read back as zeroes");
    let info = d.ok("vhost_get_controllers", json!({"name": "c0"}));
    assert_eq!(info[0]["sessions"][0]["running_queues"], 2);
}

#[test]
fn hostile_rings_over_the_socket_get_errors_and_ferryd_keeps_serving() {
    let mut d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 2048, "block_size": 512}));
    // The hostile controller alone on reactor 1, so its queue's poller is the only one there.
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "bad", "dev_name": "M", "cpumask": "0x2"}));
    d.ok("bdev_null_create", json!({"name": "N", "num_blocks": 2048, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "good", "dev_name": "N"}));
    let mut bad = connect(&d.dir.join("bad"), 1);
    let mem = bad.mem().clone();
    let hdr = mem.alloc(64, 64).unwrap();
    let st = hdr + 32;
    let mut header = [0u8; 16];
    header[8..16].copy_from_slice(&0u64.to_le_bytes()); // IN, sector 0
    mem.write(hdr, &header);
    let outside = mem.len() as u64 + 4096;
    {
        let ring = bad.queue(0).ring();
        // 0: data buffer outside the shared memory.
        ring.write_descriptor(0, hdr, 16, flags::NEXT, 1);
        ring.write_descriptor(1, outside, 512, flags::WRITE | flags::NEXT, 2);
        ring.write_descriptor(2, st, 1, flags::WRITE, 0);
        ring.publish(0);
        // 3: a chain that loops.
        ring.write_descriptor(3, hdr, 16, flags::NEXT, 4);
        ring.write_descriptor(4, hdr, 16, flags::NEXT, 3);
        ring.publish(3);
        // 5: a head index past the ring.
        ring.publish(1000);
        ring.kick_always();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut used = Vec::new();
    while used.len() < 3 {
        assert!(Instant::now() < deadline, "hostile requests were not answered: {used:?}");
        if let Some(u) = bad.queue(0).ring().pop_used() {
            used.push(u);
        }
    }
    assert_eq!(used[0], (0, 1), "out-of-memory data: status only");
    assert_eq!(mem.load_u8(st), status::IOERR);
    assert_eq!(used[1], (3, 0), "looping chain: returned empty");
    assert_eq!(used[2], (1000, 0), "a head past the ring: returned empty");
    // The good controller serves a normal client meanwhile.
    let mut good = connect(&d.dir.join("good"), 1);
    let buf = good.mem().alloc(4096, 4096).unwrap();
    good.queue(0).submit(&Request::Read { sector: 0, bufs: &[(buf, 4096)] }, 9).unwrap();
    good.queue(0).kick();
    assert_eq!(wait(&mut good, 0, 1)[0].status, status::OK);
    // An avail index far ahead breaks only the hostile queue: once its poller has looked at
    // the ring again, nothing has been consumed from it and the device says why.
    bad.queue(0).ring().set_avail_idx(40_000);
    bad.queue(0).ring().kick_always();
    d.wait_polled(1, "vhost_blk_q0");
    assert_eq!(bad.queue(0).ring().pop_used(), None, "nothing is consumed from a broken ring");
    assert!(d.log_text().contains("marked broken"), "the queue is marked broken: {}", d.log_text());
    assert_eq!(d.ok("bdev_get_iostat", json!({"name": "M"}))["bdevs"][0]["num_read_ops"], 0, "no read reached M");
    assert!(d.is_running(), "ferryd died: {}", d.log_text());
    assert_eq!(d.ok("spdk_get_version", Value::Null)["version"].as_str().map(|v| v.starts_with("Ferry")), Some(true));
    good.queue(0).submit(&Request::Read { sector: 8, bufs: &[(buf, 4096)] }, 10).unwrap();
    good.queue(0).kick();
    assert_eq!(wait(&mut good, 0, 1)[0].status, status::OK, "the good controller still serves");
    drop(bad);
    drop(good);
    // Both controllers listen again: a new frontend is served on the formerly hostile one.
    let mut again = connect(&d.dir.join("bad"), 1);
    let buf = again.mem().alloc(4096, 4096).unwrap();
    again.queue(0).submit(&Request::Read { sector: 8, bufs: &[(buf, 4096)] }, 1).unwrap();
    again.queue(0).kick();
    assert_eq!(wait(&mut again, 0, 1)[0].status, status::OK);
}

#[test]
fn bad_controller_requests_are_refused() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 64, "block_size": 512}));
    assert_eq!(d.err("vhost_create_blk_controller", json!({"ctrlr": "x", "dev_name": "Nope"})).code, -19);
    assert_eq!(d.err("vhost_create_blk_controller", json!({"ctrlr": "../evil", "dev_name": "M"})).code, -32602);
    assert_eq!(
        d.err("vhost_create_blk_controller", json!({"ctrlr": "x", "dev_name": "M", "cpumask": "0x4"})).code,
        -32602
    );
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "x", "dev_name": "M", "cpumask": "0x2"}));
    assert_eq!(d.err("vhost_create_blk_controller", json!({"ctrlr": "x", "dev_name": "M"})).code, -17);
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "y", "dev_name": "M", "readonly": true}));
    assert_eq!(d.err("vhost_delete_controller", json!({"ctrlr": "nope"})).code, -19);
    d.ok("vhost_controller_set_coalescing", json!({"ctrlr": "x", "delay_base_us": 50, "iops_threshold": 60000}));
    let saved = d.ok("save_config", Value::Null);
    let vhost = saved["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "vhost_blk").unwrap();
    let methods: Vec<&str> =
        vhost["config"].as_array().unwrap().iter().map(|e| e["method"].as_str().unwrap()).collect();
    assert_eq!(
        methods,
        ["vhost_create_blk_controller", "vhost_controller_set_coalescing", "vhost_create_blk_controller"]
    );
    assert_eq!(vhost["config"][0]["params"]["cpumask"], "0x2");
    d.ok("vhost_delete_controller", json!({"ctrlr": "x"}));
    assert!(!d.dir.join("x").exists());
    // Deleting the bdev under a controller fails its I/O instead of crashing.
    d.ok("bdev_malloc_delete", json!({"name": "M"}));
    let mut c = connect(&d.dir.join("y"), 1);
    let buf = c.mem().alloc(512, 512).unwrap();
    c.queue(0).submit(&Request::Read { sector: 0, bufs: &[(buf, 512)] }, 1).unwrap();
    c.queue(0).kick();
    assert_eq!(wait(&mut c, 0, 1)[0].status, status::IOERR);
}

/// As SPDK (whose vhost controllers open bdevs without claiming them), several writable
/// controllers serve one bdev at once, as the source and destination of a live migration
/// do: what a frontend writes through one, another reads through the other.
#[test]
fn two_writable_controllers_serve_one_bdev() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 4096, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "src", "dev_name": "M"}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "dst", "dev_name": "M"}));
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "M"}))[0]["claimed"], false, "no controller claims");
    let (mut a, mut b) = (connect(&d.dir.join("src"), 1), connect(&d.dir.join("dst"), 1));
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 13 % 253) as u8).collect();
    let wbuf = a.mem().alloc(4096, 4096).unwrap();
    a.mem().write(wbuf, &pattern);
    a.queue(0).submit(&Request::Write { sector: 64, bufs: &[(wbuf, 4096)] }, 1).unwrap();
    a.queue(0).kick();
    assert_eq!(wait(&mut a, 0, 1)[0].status, status::OK);
    let rbuf = b.mem().alloc(4096, 4096).unwrap();
    b.queue(0).submit(&Request::Read { sector: 64, bufs: &[(rbuf, 4096)] }, 2).unwrap();
    b.queue(0).kick();
    assert_eq!(wait(&mut b, 0, 1)[0].status, status::OK);
    let mut back = vec![0u8; 4096];
    b.mem().read(rbuf, &mut back);
    assert!(back == pattern, "the second controller reads what the first wrote");
    let info = d.ok("vhost_get_controllers", Value::Null);
    let sessions: Vec<usize> =
        info.as_array().unwrap().iter().map(|c| c["sessions"].as_array().unwrap().len()).collect();
    assert_eq!(sessions, [1, 1], "both controllers serve a frontend at once: {info}");
}

#[test]
fn memory_is_hot_added_and_removed_under_running_queues() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 4096, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "hp", "dev_name": "M"}));
    let mut c = connect(&d.dir.join("hp"), 2);
    let mem = c.mem().clone();
    let base = mem.alloc(4096, 4096).unwrap();
    mem.write(base, &[0x42; 4096]);
    c.queue(0).submit(&Request::Write { sector: 0, bufs: &[(base, 4096)] }, 1).unwrap();
    c.queue(0).kick();
    assert_eq!(wait(&mut c, 0, 1)[0].status, status::OK);
    // Hot-add 2 MiB at 1 GiB: the queues pause, the table is re-mapped, they resume.
    const HOT: u64 = 1 << 30;
    let extra = c.add_region(HOT, 2 << 20).expect("ADD_MEM_REG");
    let info = d.ok("vhost_get_controllers", json!({"name": "hp"}));
    assert_eq!(info[0]["sessions"][0]["mem_regions"], 2, "{info}\n{}", d.log_text());
    c.queue(1).submit(&Request::Read { sector: 0, bufs: &[(HOT + 4096, 4096)] }, 2).unwrap();
    c.queue(1).kick();
    assert_eq!(wait(&mut c, 1, 1)[0].status, status::OK, "I/O into the new region");
    let mut got = [0u8; 4096];
    extra.read(4096, &mut got);
    assert!(got.iter().all(|&b| b == 0x42), "the device wrote into the hot-added memory");
    // Queue 0 still works in the old region after the re-map.
    c.queue(0).submit(&Request::Read { sector: 0, bufs: &[(base, 4096)] }, 3).unwrap();
    c.queue(0).kick();
    assert_eq!(wait(&mut c, 0, 1)[0].status, status::OK);
    // Removed again: its addresses are no longer guest memory.
    c.remove_region(HOT, &extra).expect("REM_MEM_REG");
    assert_eq!(
        d.ok("vhost_get_controllers", json!({"name": "hp"}))[0]["sessions"][0]["mem_regions"],
        1,
        "{}",
        d.log_text()
    );
    c.queue(1).submit(&Request::Read { sector: 0, bufs: &[(HOT + 4096, 4096)] }, 4).unwrap();
    c.queue(1).kick();
    assert_eq!(wait(&mut c, 1, 1)[0].status, status::IOERR, "I/O into removed memory fails cleanly");
}

/// A queue stopped (GET_VRING_BASE, as at a migration's switch) with a completion whose
/// interrupt coalescing still holds back sends that interrupt before it goes: its poller never
/// runs again, and the frontend (QEMU injects what the call eventfd holds when it stops the
/// device) could otherwise never tell the guest, which would wait for it forever.
#[test]
fn a_stopped_queue_sends_the_interrupt_it_still_owes() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 1024, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "owe", "dev_name": "M", "cpumask": "0x1"}));
    // Every interrupt after the first waits a second behind it.
    d.ok("vhost_controller_set_coalescing", json!({"ctrlr": "owe", "delay_base_us": 1_000_000, "iops_threshold": 0}));
    let mut c = connect(&d.dir.join("owe"), 1);
    let buf = c.mem().alloc(4096, 4096).unwrap();
    let read = |c: &mut Client, tag: u64| {
        c.queue(0).submit(&Request::Read { sector: 0, bufs: &[(buf, 4096)] }, tag).unwrap();
        c.queue(0).kick();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.queue(0).poll(&mut out) == 0 {
            assert!(Instant::now() < deadline, "read {tag} never completed");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(out[0].status, status::OK);
    };
    read(&mut c, 1);
    // A completion whose interrupt is held back: the used ring has it, the call fd not yet
    // (a read done within the second after an interrupt; a stalled test thread tries again).
    let held = (2..20).any(|tag| {
        let _ = c.queue(0).take_interrupts();
        read(&mut c, tag);
        c.queue(0).take_interrupts() == 0
    });
    assert!(held, "coalescing never held an interrupt back");
    c.stop_queue(0).expect("GET_VRING_BASE");
    let mut pfd = libc::pollfd { fd: c.queue(0).call_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(c.queue(0).take_interrupts(), 1, "the interrupt owed when the queue stopped");
}

/// Keeps `depth` reads of 4 KiB (at most 16) in flight until `n` complete, each answered OK
/// once; returns the interrupts received meanwhile. With `pause_every`, the client stops for
/// 12 ms after each `pause_every` reads (as a loaded machine stops it).
fn interrupts_for(c: &mut Client, n: usize, depth: u64, pause_every: Option<usize>) -> u64 {
    let mem = c.mem().clone();
    let buf = mem.alloc(4096 * 16, 4096).unwrap();
    let _ = c.queue(0).take_interrupts();
    for i in 0..depth {
        c.queue(0).submit(&Request::Read { sector: i * 8, bufs: &[(buf + 4096 * i, 4096)] }, i).unwrap();
    }
    c.queue(0).kick();
    let (mut done, mut out) = (0, Vec::new());
    let mut in_flight = [false; 16];
    in_flight[..depth as usize].fill(true);
    let deadline = Instant::now() + Duration::from_secs(60);
    while done < n {
        assert!(Instant::now() < deadline);
        out.clear();
        c.queue(0).poll(&mut out);
        for x in &out {
            assert_eq!((x.status, x.len), (status::OK, 4097), "read {} of {n}: {x:?}", done + 1);
            assert!(std::mem::replace(&mut in_flight[x.tag as usize], false), "tag {} answered twice", x.tag);
            done += 1;
            if pause_every.is_some_and(|every| done % every == 0) {
                std::thread::sleep(Duration::from_millis(12));
            }
            if done + depth as usize <= n {
                c.queue(0)
                    .submit(&Request::Read { sector: x.tag * 8, bufs: &[(buf + 4096 * x.tag, 4096)] }, x.tag)
                    .unwrap();
                in_flight[x.tag as usize] = true;
            }
        }
        if !out.is_empty() {
            c.queue(0).kick();
        }
    }
    c.queue(0).take_interrupts()
}

/// Reads the bdev `name` has completed so far.
fn reads_done(d: &Ferryd, name: &str) -> u64 {
    d.ok("bdev_get_iostat", json!({"name": name}))["bdevs"][0]["num_read_ops"].as_u64().unwrap()
}

#[test]
fn coalescing_sends_fewer_interrupts_for_the_same_io() {
    let d = start();
    d.ok("bdev_null_create", json!({"name": "N", "num_blocks": 4096, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "co", "dev_name": "N", "cpumask": "0x1"}));
    let mut c = connect(&d.dir.join("co"), 1);
    // One read at a time: without coalescing every completion interrupts, however loaded the
    // machine (with more in flight, a slow client sees completions batched by itself).
    let plain = interrupts_for(&mut c, 20_000, 1, None);
    let after_plain = reads_done(&d, "N");
    // A threshold of 1 IOPS keeps coalescing on however slowly a loaded machine runs the reads.
    // At most one interrupt per 20 ms: fewer than half of 20000 for any run inside
    // `interrupts_for`'s 60 s deadline, however loaded the machine.
    d.ok("vhost_controller_set_coalescing", json!({"ctrlr": "co", "delay_base_us": 20_000, "iops_threshold": 1}));
    // The client pauses 10 times, for longer than the device's 10 ms rate window: a pause
    // must not switch coalescing off (it once did, for one window, and then every read
    // interrupted).
    let started = Instant::now();
    let coalesced = interrupts_for(&mut c, 20_000, 1, Some(2_000));
    let elapsed_ms = started.elapsed().as_millis() as u64;
    // The same I/O both times: every answer was a real read on the bdev, none made up or
    // repeated by the device (the bdev counts each read once it completes, before the answer).
    assert_eq!(after_plain, 20_000, "reads the bdev did without coalescing");
    assert_eq!(reads_done(&d, "N") - after_plain, 20_000, "reads the bdev did with coalescing");
    println!("interrupts for 20000 reads: {plain} plain, {coalesced} coalesced");
    assert!(plain > 0, "the device interrupts without coalescing");
    assert!(coalesced * 2 < plain, "coalescing cut interrupts: {coalesced} vs {plain} for the same I/O");
    // The bound coalescing promises (one per delay, the first at once), in the time it took.
    assert!(coalesced <= elapsed_ms / 20 + 2, "{coalesced} interrupts in {elapsed_ms} ms, one per 20 ms at most");
    assert_eq!(d.ok("vhost_get_controllers", json!({"name": "co"}))[0]["delay_base_us"], 20_000);
}

#[test]
fn every_listed_hostile_case_crafted_through_the_initiator() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 2048, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "h", "dev_name": "M"}));
    d.ok("bdev_malloc_create", json!({"name": "R", "num_blocks": 2048, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "ro", "dev_name": "R", "readonly": true}));
    let mut c = connect(&d.dir.join("h"), 1);
    let mem = c.mem().clone();
    let hdr = mem.alloc(4096, 4096).unwrap();
    let st = hdr + 64;
    let data = mem.alloc(128 * 512, 4096).unwrap();
    let table = mem.alloc(16 * 256, 4096).unwrap();
    let header = |kind: u32, sector: u64| {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write(hdr, &h);
    };
    let mut next_head = 0u16;
    // Runs one crafted chain (descriptors written by `build` from index `head`); returns
    // (used len, status byte).
    let mut run = |c: &mut Client, build: &dyn Fn(&ferry_vhost_initiator::SplitQueue, u16) -> u16| {
        mem.store_u8(st, 0xEE);
        let head = next_head;
        let used_descs = build(c.queue(0).ring(), head);
        next_head += used_descs;
        c.queue(0).ring().publish(head);
        c.queue(0).ring().kick_always();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((h, len)) = c.queue(0).ring().pop_used() {
                assert_eq!(h, head);
                return (len, mem.load_u8(st));
            }
            assert!(Instant::now() < deadline, "no answer for the chain at {head}");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // A length that wraps past 2^64 (data address near the top).
    header(0, 0);
    let r = run(&mut c, &|q, h| {
        q.write_descriptor(h, hdr, 16, flags::NEXT, h + 1);
        q.write_descriptor(h + 1, u64::MAX - 255, 512, flags::WRITE | flags::NEXT, h + 2);
        q.write_descriptor(h + 2, st, 1, flags::WRITE, 0);
        3
    });
    assert_eq!(r, (1, status::IOERR), "wrapping length");
    // More segments than SEG_MAX (126), through an indirect table.
    header(0, 0);
    let r = run(&mut c, &|q, h| {
        q.write_descriptor_at(table, 0, hdr, 16, flags::NEXT, 1);
        for i in 1..=127u16 {
            q.write_descriptor_at(table, i, data + 512 * (i as u64 - 1), 512, flags::WRITE | flags::NEXT, i + 1);
        }
        q.write_descriptor_at(table, 128, st, 1, flags::WRITE, 0);
        q.write_descriptor(h, table, 16 * 129, flags::INDIRECT, 0);
        1
    });
    assert_eq!(r, (1, status::IOERR), "more segments than SEG_MAX");
    // A header shorter than 16 bytes.
    let r = run(&mut c, &|q, h| {
        q.write_descriptor(h, hdr, 8, flags::NEXT, h + 1);
        q.write_descriptor(h + 1, st, 1, flags::WRITE, 0);
        2
    });
    assert_eq!(r, (1, status::IOERR), "short header");
    // The header in a device-writable descriptor (wrong direction).
    header(0, 0);
    let r = run(&mut c, &|q, h| {
        q.write_descriptor(h, hdr, 16, flags::WRITE | flags::NEXT, h + 1);
        q.write_descriptor(h + 1, st, 1, flags::WRITE, 0);
        2
    });
    assert_eq!(r, (1, status::IOERR), "writable header");
    // The status byte in a device-readable descriptor: nothing can be reported.
    header(4, 0);
    let r = run(&mut c, &|q, h| {
        q.write_descriptor(h, hdr, 16, flags::NEXT, h + 1);
        q.write_descriptor(h + 1, st, 1, 0, 0);
        2
    });
    assert_eq!(r, (0, 0xEE), "readable status: returned empty, status untouched");
    // A status descriptor larger than one byte: the last byte is the status.
    header(4, 0);
    let r = run(&mut c, &|q, h| {
        q.write_descriptor(h, hdr, 16, flags::NEXT, h + 1);
        q.write_descriptor(h + 1, st - 7, 8, flags::WRITE, 0);
        2
    });
    assert_eq!(r, (1, status::OK), "an 8-byte status descriptor: status in its last byte");
    drop(c);
    // Writes to a read-only controller.
    let mut ro = connect(&d.dir.join("ro"), 1);
    let buf = ro.mem().alloc(4096, 4096).unwrap();
    ro.queue(0).submit(&Request::Write { sector: 0, bufs: &[(buf, 4096)] }, 1).unwrap();
    ro.queue(0).submit(&Request::Discard { sector: 0, sectors: 8 }, 2).unwrap();
    ro.queue(0).submit(&Request::WriteZeroes { sector: 0, sectors: 8 }, 3).unwrap();
    ro.queue(0).kick();
    let done = wait(&mut ro, 0, 3);
    assert!(done.iter().all(|x| x.status == status::IOERR), "{done:?}");
    assert_eq!(d.ok("bdev_get_iostat", json!({"name": "R"}))["bdevs"][0]["num_write_ops"], 0);
    assert_eq!(
        d.ok("bdev_get_iostat", json!({"name": "M"}))["bdevs"][0]["num_read_ops"],
        0,
        "no hostile read reached the bdev"
    );
}

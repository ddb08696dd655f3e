//! vhost-user-scsi over the real socket protocol, driven by the project's initiator: commands
//! and data through two request queues, missing LUNs and targets, hot add and remove with
//! their events, a capacity change, task management (also with commands held in flight on a
//! stopped backend, so they come back ABORTED), the RPC surface and save_config, and a
//! hostile driver (bad LUN fields, short and misdirected buffers, descriptor abuse).

mod common;

use common::Ferryd;
use ferry_vhost_initiator::scsi::{cdb, ctrl, event, feature, response, status};
use ferry_vhost_initiator::split::flags;
use ferry_vhost_initiator::{CmdReq, Options, ScsiClient, ScsiCompletion, ScsiRequest};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

fn start() -> Ferryd {
    let dir = common::scratch_dir("vscsi");
    Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()])
}

fn connect(sock: &Path, request_queues: u16) -> ScsiClient {
    ScsiClient::connect(
        sock,
        &Options { num_queues: request_queues, queue_size: 128, mem_size: 16 << 20, hugetlbfs: None },
    )
    .expect("connect to the controller")
}

/// Runs a command on request queue `q` and returns its response.
fn command(
    c: &mut ScsiClient,
    q: usize,
    target: u8,
    lun: u16,
    cdb: &[u8],
    out: &[(u64, u32)],
    inp: &[(u64, u32)],
) -> (ferry_vhost_initiator::CmdResp, u32) {
    let req = ScsiRequest::Command { target, lun, cdb, data_out: out, data_in: inp };
    match c.request(q).run(&req, T).expect("command answered") {
        ScsiCompletion::Command { resp, len, .. } => (resp, len),
        other => panic!("not a command completion: {other:?}"),
    }
}

fn tmf(c: &mut ScsiClient, subtype: u32, target: u8, lun: u16, id: u64) -> u8 {
    match c.control().run(&ScsiRequest::Tmf { subtype, target, lun, id }, T).expect("TMF answered") {
        ScsiCompletion::Tmf { response, .. } => response,
        other => panic!("not a TMF completion: {other:?}"),
    }
}

/// Waits for the next event the device writes into a posted buffer.
fn next_event(c: &mut ScsiClient) -> ferry_vhost_initiator::scsi::Event {
    let deadline = Instant::now() + T;
    let mut out = Vec::new();
    loop {
        c.event().poll(&mut out);
        if let Some(ScsiCompletion::Event { event, .. }) = out.first() {
            return *event;
        }
        assert!(Instant::now() < deadline, "no event arrived");
        c.event().wait(10);
    }
}

fn sense(resp: &ferry_vhost_initiator::CmdResp) -> (u8, u8, u8) {
    resp.sense_key().unwrap_or_else(|| panic!("no sense data in {resp:?}"))
}

#[test]
fn commands_hot_plug_resize_and_task_management_over_the_socket() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M0", "num_blocks": 16384, "block_size": 512}));
    d.ok("bdev_null_create", json!({"name": "N1", "num_blocks": 4096, "block_size": 4096}));
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "s0"}));
    assert_eq!(
        d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "s0", "scsi_target_num": 0, "bdev_name": "M0"})),
        json!(0)
    );
    let mut c = connect(&d.dir.join("s0"), 2);
    assert_ne!(c.features() & feature::HOTPLUG, 0, "hot-plug events offered");
    assert_ne!(c.features() & feature::CHANGE, 0, "parameter-change events offered");
    for i in 0..4 {
        c.event().submit(&ScsiRequest::EventBuffer, 100 + i).unwrap();
    }
    c.event().kick();
    let mem = c.mem().clone();
    let (a, b) = (mem.alloc(8192, 4096).unwrap(), mem.alloc(8192, 4096).unwrap());

    // Identification and capacity.
    let (r, _) = command(&mut c, 0, 0, 0, &cdb::test_unit_ready(), &[], &[]);
    assert!(r.is_good(), "TEST UNIT READY: {r:?}");
    let (r, len) = command(&mut c, 0, 0, 0, &cdb::inquiry(None, 96), &[], &[(b, 96)]);
    assert!(r.is_good());
    let mut inq = vec![0u8; 96];
    mem.read(b, &mut inq);
    assert_eq!(&inq[8..16], b"FERRY   ", "vendor");
    assert_eq!(len as usize, 108 + 96 - r.resid as usize, "used length covers the data-in");
    let (r, _) = command(&mut c, 1, 0, 0, &cdb::read_capacity16(32), &[], &[(b, 32)]);
    assert!(r.is_good());
    let mut cap = vec![0u8; 32];
    mem.read(b, &mut cap);
    assert_eq!(cdb::parse_read_capacity16(&cap), Some((16383, 512)));

    // Data written through one queue reads back through the other.
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 13 % 251) as u8).collect();
    mem.write(a, &pattern);
    let (r, _) = command(&mut c, 0, 0, 0, &cdb::write16(64, 16), &[(a, 4096), (a + 4096, 4096)], &[]);
    assert!(r.is_good(), "WRITE(16): {r:?}");
    let (r, _) = command(&mut c, 1, 0, 0, &cdb::read10(64, 16), &[], &[(b, 8192)]);
    assert!(r.is_good() && r.resid == 0, "READ(10): {r:?}");
    let mut back = vec![0u8; 8192];
    mem.read(b, &mut back);
    assert!(back == pattern, "data read back through another queue differs");

    // A missing LUN and a missing target.
    let (r, _) = command(&mut c, 0, 0, 1, &cdb::inquiry(None, 36), &[], &[(b, 36)]);
    assert!(r.is_good());
    assert_eq!(mem.load_u8(b), 0x7F, "no unit at LUN 1: peripheral qualifier 3");
    let (r, _) = command(&mut c, 0, 0, 1, &cdb::test_unit_ready(), &[], &[]);
    assert_eq!((r.status, sense(&r)), (status::CHECK_CONDITION, (0x5, 0x25, 0x00)), "LOGICAL UNIT NOT SUPPORTED");
    let (r, _) = command(&mut c, 0, 3, 0, &cdb::test_unit_ready(), &[], &[]);
    assert_eq!(r.response, response::BAD_TARGET);
    let (r, _) = command(&mut c, 0, 0, 0, &cdb::report_luns(64), &[], &[(b, 64)]);
    assert!(r.is_good());
    let mut luns = vec![0u8; 16];
    mem.read(b, &mut luns);
    assert_eq!(&luns[..4], &8u32.to_be_bytes(), "one LUN reported");

    // Hot add: the guest hears of target 2, which then answers.
    d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "s0", "scsi_target_num": 2, "bdev_name": "N1"}));
    let e = next_event(&mut c);
    assert_eq!((e.kind(), e.address(), e.reason), (event::TRANSPORT_RESET, Some((2, 0)), event::RESET_RESCAN));
    let (r, _) = command(&mut c, 0, 2, 0, &cdb::read_capacity10(), &[], &[(b, 8)]);
    assert!(r.is_good(), "new target: {r:?}");
    let mut cap = vec![0u8; 8];
    mem.read(b, &mut cap);
    assert_eq!(cdb::parse_read_capacity10(&cap), Some((4095, 4096)));

    // A resize: PARAM_CHANGE with CAPACITY DATA HAS CHANGED, then a unit attention once.
    d.ok("bdev_null_resize", json!({"name": "N1", "new_size": 32}));
    let e = next_event(&mut c);
    assert_eq!((e.kind(), e.address(), e.reason), (event::PARAM_CHANGE, Some((2, 0)), 0x2A | 0x09 << 8));
    let (r, _) = command(&mut c, 1, 2, 0, &cdb::test_unit_ready(), &[], &[]);
    assert_eq!((r.status, sense(&r)), (status::CHECK_CONDITION, (0x6, 0x2A, 0x09)), "capacity changed UA");
    let (r, _) = command(&mut c, 1, 2, 0, &cdb::read_capacity10(), &[], &[(b, 8)]);
    assert!(r.is_good(), "the attention is reported once: {r:?}");
    mem.read(b, &mut cap);
    assert_eq!(cdb::parse_read_capacity10(&cap), Some((32 * 256 - 1, 4096)));

    // Task management: a LUN reset completes; unsupported functions are rejected; a reset
    // of a missing target is refused.
    assert_eq!(tmf(&mut c, ctrl::TMF_LOGICAL_UNIT_RESET, 0, 0, 0), response::OK);
    assert_eq!(tmf(&mut c, ctrl::TMF_ABORT_TASK, 0, 0, 12345), response::OK);
    assert_eq!(tmf(&mut c, ctrl::TMF_I_T_NEXUS_RESET, 0, 0, 0), response::OK);
    assert_eq!(tmf(&mut c, ctrl::TMF_QUERY_TASK, 0, 0, 1), response::FUNCTION_REJECTED);
    assert_eq!(tmf(&mut c, ctrl::TMF_LOGICAL_UNIT_RESET, 5, 0, 0), response::BAD_TARGET);
    assert_eq!(tmf(&mut c, ctrl::TMF_LOGICAL_UNIT_RESET, 0, 7, 0), response::INCORRECT_LUN);
    match c.control().run(&ScsiRequest::An { kind: ctrl::T_AN_QUERY, target: 0, lun: 0, event_requested: 0xFF }, T) {
        Ok(ScsiCompletion::An { event_actual, response, .. }) => {
            assert_eq!((event_actual, response), (0, response::OK))
        }
        other => panic!("AN query: {other:?}"),
    }

    // The RPC view and the saved configuration.
    let info = d.ok("vhost_get_controllers", json!({"name": "s0"}));
    let targets = &info[0]["backend_specific"]["scsi"];
    assert_eq!(targets.as_array().unwrap().len(), 2);
    assert_eq!(targets[1]["scsi_dev_num"], 2);
    assert_eq!(targets[1]["luns"][0]["bdev_name"], "N1");
    let config = d.ok("save_config", Value::Null);
    let scsi = config["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "vhost_scsi").unwrap();
    let methods: Vec<&str> = scsi["config"].as_array().unwrap().iter().map(|e| e["method"].as_str().unwrap()).collect();
    assert_eq!(
        methods,
        ["vhost_create_scsi_controller", "vhost_scsi_controller_add_target", "vhost_scsi_controller_add_target"]
    );

    // Hot remove: the guest hears of it, and the target is gone.
    d.ok("vhost_scsi_controller_remove_target", json!({"ctrlr": "s0", "scsi_target_num": 2}));
    let e = next_event(&mut c);
    assert_eq!((e.kind(), e.address(), e.reason), (event::TRANSPORT_RESET, Some((2, 0)), event::RESET_REMOVED));
    let (r, _) = command(&mut c, 0, 2, 0, &cdb::test_unit_ready(), &[], &[]);
    assert_eq!(r.response, response::BAD_TARGET);
    // The bdev is free again once its unit is gone.
    d.ok("bdev_null_delete", json!({"name": "N1"}));

    // Deleting: refused while connected, then while targets remain.
    assert_eq!(d.err("vhost_delete_controller", json!({"ctrlr": "s0"})).code, -16);
    drop(c);
    let deadline = Instant::now() + T;
    loop {
        let e = d.err("vhost_delete_controller", json!({"ctrlr": "s0"}));
        if e.message.contains("still present") {
            break;
        }
        assert!(Instant::now() < deadline, "the frontend never went away: {e:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.ok("vhost_scsi_controller_remove_target", json!({"ctrlr": "s0", "scsi_target_num": 0}));
    d.ok("vhost_delete_controller", json!({"ctrlr": "s0"}));
    assert!(!d.dir.join("s0").exists(), "socket removed");
}

/// A READ or WRITE whose bdev I/O fails (an error bdev injects the failure) comes back
/// CHECK CONDITION with the sense the failure maps to (MEDIUM ERROR: UNRECOVERED READ ERROR,
/// WRITE ERROR), the whole buffer as residual and no data-in counted; the unit then serves
/// the same commands again. Plain READs and WRITEs skip the SCSI task on the request queue
/// (`plain_io`), so this is their failure path.
#[test]
fn failed_reads_and_writes_come_back_with_medium_error_sense() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 2048, "block_size": 512}));
    d.ok("bdev_error_create", json!({"base_name": "M"}));
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "e"}));
    d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "e", "scsi_target_num": 0, "bdev_name": "EE_M"}));
    let mut c = connect(&d.dir.join("e"), 1);
    let buf = c.mem().alloc(4096, 4096).unwrap();
    for (io_type, asc) in [("read", 0x11), ("write", 0x0C)] {
        let run = |c: &mut ScsiClient| {
            if io_type == "read" {
                command(c, 0, 0, 0, &cdb::read10(8, 8), &[], &[(buf, 4096)])
            } else {
                command(c, 0, 0, 0, &cdb::write10(8, 8), &[(buf, 4096)], &[])
            }
        };
        d.ok("bdev_error_inject_error", json!({"name": "EE_M", "io_type": io_type, "error_type": "failure", "num": 1}));
        let (r, len) = run(&mut c);
        assert_eq!((r.response, r.status), (response::OK, status::CHECK_CONDITION), "{io_type}: {r:?}");
        assert_eq!(sense(&r), (0x3, asc, 0), "{io_type}: MEDIUM ERROR");
        assert_eq!(r.resid, 4096, "{io_type}: nothing moved");
        assert_eq!(len, 108, "{io_type}: no data-in counted");
        let (r, len) = run(&mut c);
        assert!(r.is_good(), "{io_type} after the injected failure: {r:?}");
        assert_eq!(r.resid, 0);
        assert_eq!(len, if io_type == "read" { 108 + 4096 } else { 108 });
    }
}

#[test]
fn rpc_errors_for_scsi_targets() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 1024, "block_size": 512}));
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "s1", "cpumask": "0x1"}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "b1", "dev_name": "M"}));
    let e = d.err("vhost_scsi_controller_add_target", json!({"ctrlr": "b1", "scsi_target_num": 0, "bdev_name": "M"}));
    assert!(e.message.contains("not a vhost-user-scsi controller"), "{e:?}");
    assert_eq!(
        d.err("vhost_scsi_controller_add_target", json!({"ctrlr": "s1", "scsi_target_num": 8, "bdev_name": "M"})).code,
        -32602
    );
    assert_eq!(
        d.err("vhost_scsi_controller_add_target", json!({"ctrlr": "s1", "scsi_target_num": 0, "bdev_name": "nope"}))
            .code,
        -19
    );
    assert_eq!(
        d.err("vhost_scsi_controller_add_target", json!({"ctrlr": "zz", "scsi_target_num": 0, "bdev_name": "M"})).code,
        -19
    );
    assert_eq!(
        d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "s1", "scsi_target_num": -1, "bdev_name": "M"})),
        json!(0)
    );
    // M is served by blk controller b1 too: as in SPDK, vhost controllers do not claim.
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "M"}))[0]["claimed"], false);
    d.ok("vhost_delete_controller", json!({"ctrlr": "b1"}));
    d.ok("bdev_malloc_create", json!({"name": "M2", "num_blocks": 1024, "block_size": 512}));
    assert_eq!(
        d.err("vhost_scsi_controller_add_target", json!({"ctrlr": "s1", "scsi_target_num": 0, "bdev_name": "M2"})).code,
        -17
    );
    assert_eq!(
        d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "s1", "scsi_target_num": -1, "bdev_name": "M2"})),
        json!(1)
    );
    assert_eq!(d.err("vhost_scsi_controller_remove_target", json!({"ctrlr": "s1", "scsi_target_num": 5})).code, -19);
    assert_eq!(d.err("vhost_scsi_controller_add_target", json!({"ctrlr": "s1", "scsi_target_num": 2})).code, -32602);
    // Deleting the bdev under a target hot-removes the target.
    d.ok("bdev_malloc_delete", json!({"name": "M2"}));
    let info = d.ok("vhost_get_controllers", json!({"name": "s1"}));
    assert_eq!(info[0]["backend_specific"]["scsi"].as_array().unwrap().len(), 1);
}

#[test]
fn a_hostile_driver_gets_errors_and_ferryd_keeps_serving() {
    let mut d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 2048, "block_size": 512}));
    // On reactor 0 only, so its one request queue's poller (vhost_scsi_q2) is found there.
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "h", "cpumask": "0x1"}));
    d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "h", "scsi_target_num": 0, "bdev_name": "M"}));
    let mut c = connect(&d.dir.join("h"), 1);
    let mem = c.mem().clone();
    let buf = mem.alloc(8192, 4096).unwrap();

    // LUN fields: not target addressing, logical-unit addressing, two levels.
    for (lun, want) in [
        ([0u8, 0, 0x40, 0, 0, 0, 0, 0], response::BAD_TARGET),
        ([1, 9, 0x40, 0, 0, 0, 0, 0], response::BAD_TARGET),
        ([1, 0, 0x80, 0, 0, 0, 0, 0], response::INCORRECT_LUN),
        ([1, 0, 0x40, 0, 0x40, 1, 0, 0], response::INCORRECT_LUN),
    ] {
        let mut req = CmdReq::new(0, 0, 1, &cdb::test_unit_ready()).unwrap();
        req.lun = lun;
        match c.request(0).run(&ScsiRequest::RawCommand { req, data_out: &[], data_in: &[] }, T).unwrap() {
            ScsiCompletion::Command { resp, .. } => assert_eq!(resp.response, want, "LUN field {lun:?}"),
            other => panic!("{other:?}"),
        }
    }
    // A transfer longer than the buffer, data the wrong way, a short data-in for INQUIRY
    // (truncated, fine), an unknown opcode, a read past the end.
    let (r, _) = command(&mut c, 0, 0, 0, &cdb::read10(0, 16), &[], &[(buf, 512)]);
    assert_eq!(
        (r.status, sense(&r).0, sense(&r).1),
        (status::CHECK_CONDITION, 0x5, 0x24),
        "buffer shorter than the transfer"
    );
    let (r, _) = command(&mut c, 0, 0, 0, &cdb::write10(0, 1), &[], &[(buf, 512)]);
    assert_eq!((r.status, sense(&r).1), (status::CHECK_CONDITION, 0x24), "write with a data-in buffer");
    let (r, _) = command(&mut c, 0, 0, 0, &cdb::read10(0, 1), &[(buf, 512)], &[]);
    assert_eq!((r.status, sense(&r).1), (status::CHECK_CONDITION, 0x24), "read with a data-out buffer");
    let (r, len) = command(&mut c, 0, 0, 0, &cdb::inquiry(None, 96), &[], &[(buf, 10)]);
    assert!(r.is_good() && len == 108 + 10, "INQUIRY into 10 bytes: {r:?} {len}");
    let (r, _) = command(&mut c, 0, 0, 0, &[0xC5, 0, 0, 0, 0, 0], &[], &[]);
    assert_eq!(sense(&r), (0x5, 0x20, 0x00), "INVALID COMMAND OPERATION CODE");
    let (r, _) = command(&mut c, 0, 0, 0, &cdb::read16(2047, 2), &[], &[(buf, 1024)]);
    assert_eq!(sense(&r), (0x5, 0x21, 0x00), "LBA OUT OF RANGE");
    let (r, _) = command(&mut c, 0, 0, 0, &cdb::read16(u64::MAX, 1), &[], &[(buf, 512)]);
    assert_eq!(sense(&r), (0x5, 0x21, 0x00), "overflowing LBA");

    // Descriptor abuse, written straight into the ring.
    let hdr = mem.alloc(256, 64).unwrap();
    let resp = hdr + 64;
    let good = CmdReq::new(0, 0, 7, &cdb::read10(0, 1)).unwrap().encode();
    mem.write(hdr, &good);
    let outside = mem.len() as u64 + 4096;
    let mut used = Vec::new();
    {
        let ring = c.request(0).ring();
        // 0: data-in buffer outside shared memory -> FAILURE response.
        ring.write_descriptor(0, hdr, 51, flags::NEXT, 1);
        ring.write_descriptor(1, resp, 108, flags::WRITE | flags::NEXT, 2);
        ring.write_descriptor(2, outside, 512, flags::WRITE, 0);
        ring.publish(0);
        // 3: response area too short -> returned with nothing written.
        ring.write_descriptor(3, hdr, 51, flags::NEXT, 4);
        ring.write_descriptor(4, resp, 50, flags::WRITE, 0);
        ring.publish(3);
        // 5: a looping chain.
        ring.write_descriptor(5, hdr, 51, flags::NEXT, 6);
        ring.write_descriptor(6, hdr, 51, flags::NEXT, 5);
        ring.publish(5);
        // 7: header too short -> FAILURE response.
        ring.write_descriptor(7, hdr, 20, flags::NEXT, 8);
        ring.write_descriptor(8, resp, 108, flags::WRITE, 0);
        ring.publish(7);
        // 9: a wrapping data address.
        ring.write_descriptor(9, hdr, 51, flags::NEXT, 10);
        ring.write_descriptor(10, resp, 108, flags::WRITE | flags::NEXT, 11);
        ring.write_descriptor(11, u64::MAX - 100, 512, flags::WRITE, 0);
        ring.publish(9);
        ring.kick_always();
        let deadline = Instant::now() + T;
        while used.len() < 5 {
            assert!(Instant::now() < deadline, "hostile requests were not all answered: {used:?}");
            if let Some(u) = ring.pop_used() {
                used.push(u);
            } else {
                ring.wait(10);
            }
        }
    }
    used.sort();
    assert_eq!(used, [(0, 108), (3, 0), (5, 0), (7, 108), (9, 108)]);
    let mut r = [0u8; 12];
    mem.read(resp, &mut r);
    assert_eq!(r[11], response::FAILURE, "the last FAILURE response");
    assert_eq!(
        d.ok("bdev_get_iostat", json!({"name": "M"}))["bdevs"][0]["num_read_ops"],
        0,
        "no hostile read reached the bdev"
    );

    // An avail index far ahead breaks only this queue: once its poller has looked at the ring
    // again, nothing has been consumed and the device says why. The daemon serves a new
    // frontend.
    c.request(0).ring().set_avail_idx(40_000);
    c.request(0).ring().kick_always();
    d.wait_polled(0, "vhost_scsi_q2");
    assert_eq!(c.request(0).ring().pop_used(), None, "nothing is consumed from a broken ring");
    assert!(d.log_text().contains("marked broken"), "the queue is marked broken: {}", d.log_text());
    assert_eq!(d.ok("bdev_get_iostat", json!({"name": "M"}))["bdevs"][0]["num_read_ops"], 0);
    assert!(d.is_running(), "ferryd died: {}", d.log_text());
    drop(c);
    let mut again = loop {
        if let Ok(c) = ScsiClient::connect(
            &d.dir.join("h"),
            &Options { num_queues: 1, queue_size: 128, mem_size: 16 << 20, hugetlbfs: None },
        ) {
            break c;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let b = again.mem().alloc(512, 512).unwrap();
    let (r, _) = command(&mut again, 0, 0, 0, &cdb::read10(0, 1), &[], &[(b, 512)]);
    assert!(r.is_good(), "served again: {r:?}");
}

#[test]
fn scsi_controllers_replay_from_save_config() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "A", "num_blocks": 2048, "block_size": 512}));
    d.ok("bdev_malloc_create", json!({"name": "B", "num_blocks": 2048, "block_size": 4096}));
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "r0", "cpumask": "0x2"}));
    d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "r0", "scsi_target_num": 1, "bdev_name": "A"}));
    d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "r0", "scsi_target_num": 6, "bdev_name": "B"}));
    d.ok("vhost_controller_set_coalescing", json!({"ctrlr": "r0", "delay_base_us": 50, "iops_threshold": 1000}));
    let saved = d.ok("save_config", Value::Null);
    let before = d.ok("vhost_get_controllers", Value::Null);
    let dir = d.dir.clone();
    assert!(d.stop().success());
    let config = dir.join("saved.json");
    std::fs::write(&config, serde_json::to_vec(&saved).unwrap()).unwrap();
    let d2 = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap(), "-c", config.to_str().unwrap()]);
    assert_eq!(d2.ok("vhost_get_controllers", Value::Null), before, "same controllers and targets after replay");
    assert_eq!(d2.ok("save_config", Value::Null), saved, "the replayed configuration saves identically");
    // And the replayed controller serves: target 6 is the 4 KiB-block bdev.
    let mut c = connect(&dir.join("r0"), 1);
    let b = c.mem().alloc(64, 64).unwrap();
    let (r, _) = command(&mut c, 0, 6, 0, &cdb::read_capacity10(), &[], &[(b, 8)]);
    assert!(r.is_good(), "{r:?}");
    let mut cap = [0u8; 8];
    c.mem().read(b, &mut cap);
    assert_eq!(cdb::parse_read_capacity10(&cap), Some((2047, 4096)));
}

#[test]
fn more_segments_than_seg_max_through_an_indirect_table_fail_cleanly() {
    let d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 4096, "block_size": 512}));
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "seg"}));
    d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "seg", "scsi_target_num": 0, "bdev_name": "M"}));
    let mut c = connect(&d.dir.join("seg"), 1);
    let mem = c.mem().clone();
    let segs: u16 = 300; // SEG_MAX is 254
    let hdr = mem.alloc(256, 64).unwrap();
    let resp = hdr + 64;
    let data = mem.alloc(512 * segs as usize, 4096).unwrap();
    let table = mem.alloc(16 * (segs as usize + 2), 16).unwrap();
    mem.write(hdr, &CmdReq::new(0, 0, 1, &cdb::read16(0, segs as u32)).unwrap().encode());
    let ring = c.request(0).ring();
    ring.write_descriptor_at(table, 0, hdr, 51, flags::NEXT, 1);
    ring.write_descriptor_at(table, 1, resp, 108, flags::WRITE | flags::NEXT, 2);
    for i in 0..segs {
        let last = i + 1 == segs;
        ring.write_descriptor_at(
            table,
            i + 2,
            data + 512 * i as u64,
            512,
            flags::WRITE | if last { 0 } else { flags::NEXT },
            i + 3,
        );
    }
    ring.write_descriptor(0, table, 16 * (segs as u32 + 2), flags::INDIRECT, 0);
    ring.publish(0);
    ring.kick_always();
    let deadline = Instant::now() + T;
    let used = loop {
        if let Some(u) = ring.pop_used() {
            break u;
        }
        assert!(Instant::now() < deadline, "the request was not answered");
        ring.wait(10);
    };
    assert_eq!(used, (0, 108));
    assert_eq!(mem.load_u8(resp + 11), response::FAILURE, "too many segments: FAILURE response");
    assert_eq!(d.ok("bdev_get_iostat", json!({"name": "M"}))["bdevs"][0]["num_read_ops"], 0);
}

#[test]
fn random_requests_over_the_socket_are_all_answered() {
    let mut d = start();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 2048, "block_size": 512}));
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "rnd"}));
    d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "rnd", "scsi_target_num": 0, "bdev_name": "M"}));
    let mut c = connect(&d.dir.join("rnd"), 2);
    let mem = c.mem().clone();
    let buf = mem.alloc(64 << 10, 4096).unwrap();
    // xorshift64*: deterministic, replayable by seed.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut answered = [0usize; 2];
    for i in 0..1500u64 {
        let mut req = CmdReq::new(0, 0, i, &[]).unwrap();
        // Mostly target 0 LUN 0; sometimes any LUN field at all.
        if next() % 4 == 0 {
            req.lun = next().to_le_bytes();
        }
        for b in req.cdb.iter_mut() {
            *b = next() as u8;
        }
        if next() % 2 == 0 {
            // A known READ/WRITE opcode with small LBAs, so data moves too.
            req.cdb[0] = [0x28, 0x2A, 0x88, 0x8A, 0x12, 0x25, 0x00][(next() % 7) as usize];
            req.cdb[2..6].iter_mut().for_each(|b| *b &= 0x01);
        }
        req.task_attr = next() as u8;
        let len = (next() % (64 << 10)) as u32;
        let split = (next() % (len as u64 + 1)) as u32;
        let segs: Vec<(u64, u32)> =
            [(buf, split), (buf + split as u64, len - split)].into_iter().filter(|s| s.1 > 0).collect();
        let none: &[(u64, u32)] = &[];
        let (out, inp) = if next() % 2 == 0 { (&segs[..], none) } else { (none, &segs[..]) };
        let q = (i % 2) as usize;
        match c.request(q).run(&ScsiRequest::RawCommand { req, data_out: out, data_in: inp }, T) {
            Ok(ScsiCompletion::Command { resp, len: used, .. }) => {
                answered[usize::from(resp.response == response::OK)] += 1;
                assert!(
                    used as u64 <= 108 + inp.iter().map(|s| s.1 as u64).sum::<u64>(),
                    "used length within the buffers"
                );
                if resp.response == response::OK && resp.status == status::CHECK_CONDITION {
                    assert!(resp.sense_len >= 18 && resp.sense_len <= 96, "{resp:?}");
                }
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    assert!(answered.iter().all(|&n| n > 0), "transport errors and SCSI answers both happened: {answered:?}");
    assert!(d.is_running(), "ferryd died: {}", d.log_text());
    let (r, _) = command(&mut c, 0, 0, 0, &cdb::read10(0, 1), &[], &[(buf, 512)]);
    assert_eq!(r.response, response::OK, "still serving: {r:?}");
}

/// Submits READ (10)s tagged `tags` on request queue 0 and waits until the queue's poller has
/// run since, so they are in flight: the bdev under them is a virtio bdev whose backend (a
/// second ferryd) is stopped, so none can finish.
fn reads_in_flight(d: &Ferryd, c: &mut ScsiClient, tags: &[u64]) {
    let buf = c.mem().alloc(4096 * tags.len(), 4096).unwrap();
    for (i, &tag) in tags.iter().enumerate() {
        let data_in = [(buf + 4096 * i as u64, 4096)];
        let req = ScsiRequest::Command {
            target: 0,
            lun: 0,
            cdb: &cdb::read10(8 * i as u32, 8),
            data_out: &[],
            data_in: &data_in,
        };
        c.request(0).submit(&req, tag).unwrap();
    }
    c.request(0).kick();
    d.wait_polled(0, "vhost_scsi_q2");
    let mut out = Vec::new();
    assert_eq!(c.request(0).poll(&mut out), 0, "held reads finished: {out:?}");
}

/// Sends a TMF and returns once the control queue's poller has seen it; it must not be
/// answered while the tasks it waits for are held.
fn tmf_pending(d: &Ferryd, c: &mut ScsiClient, subtype: u32, id: u64) {
    c.control().submit(&ScsiRequest::Tmf { subtype, target: 0, lun: 0, id }, 900 + id).unwrap();
    c.control().kick();
    d.wait_polled(0, "vhost_scsi_ctrl0");
    let mut out = Vec::new();
    assert_eq!(c.control().poll(&mut out), 0, "the TMF finished with its tasks held: {out:?}");
}

/// Waits for the TMF's answer; returns its response byte.
fn tmf_answer(c: &mut ScsiClient) -> u8 {
    let deadline = Instant::now() + T;
    let mut out = Vec::new();
    loop {
        c.control().poll(&mut out);
        if let Some(done) = out.first() {
            return done.response().expect("a TMF answer");
        }
        assert!(Instant::now() < deadline, "the TMF was never answered");
        c.control().wait(10);
    }
}

/// Completed commands on request queue 0 as (tag, response, status), sorted by tag; waits
/// (up to `T`) for `n` of them.
fn commands_done(c: &mut ScsiClient, n: usize, wait: bool) -> Vec<(u64, u8, u8)> {
    let deadline = Instant::now() + T;
    let mut out = Vec::new();
    loop {
        c.request(0).poll(&mut out);
        if out.len() >= n || !wait {
            break;
        }
        assert!(Instant::now() < deadline, "only {} of {n} commands finished", out.len());
        c.request(0).wait(10);
    }
    let mut done: Vec<(u64, u8, u8)> = out
        .iter()
        .map(|x| {
            let r = x.command().expect("a command completion");
            (x.tag(), r.response, r.status)
        })
        .collect();
    done.sort();
    done
}

/// Task management over the socket with commands really in flight: the bdev under the LUN is
/// a virtio bdev on a second ferryd, which the test stops (SIGSTOP) to hold their I/O. The
/// TMF is not answered while they are held; once the backend runs again, the covered
/// commands come back ABORTED before the TMF's answer, and the others complete normally.
#[test]
fn task_management_aborts_commands_in_flight_over_the_socket() {
    let (back, back_dir) = common::held_backend("vscsi-back");
    let dir = common::scratch_dir("vscsi-tmf");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x1", "-S", dir.to_str().unwrap()]);
    common::attach_held(&d, &back_dir, "V");
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "s"}));
    d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "s", "scsi_target_num": 0, "bdev_name": "V"}));
    let mut c = connect(&dir.join("s"), 1);
    let b = c.mem().alloc(4096, 4096).unwrap();
    let (r, _) = command(&mut c, 0, 0, 0, &cdb::read10(0, 8), &[], &[(b, 4096)]);
    assert!(r.is_good(), "a read through the virtio bdev: {r:?}");

    // ABORT TASK: only the named command is aborted; it is answered before the TMF.
    common::signal_and_wait(back.pid(), libc::SIGSTOP, true);
    reads_in_flight(&d, &mut c, &[1, 2, 3]);
    tmf_pending(&d, &mut c, ctrl::TMF_ABORT_TASK, 2);
    common::signal_and_wait(back.pid(), libc::SIGCONT, false);
    assert_eq!(tmf_answer(&mut c), response::OK, "ABORT TASK: FUNCTION COMPLETE");
    let first = commands_done(&mut c, 0, false);
    assert!(
        first.contains(&(2, response::ABORTED, status::TASK_ABORTED)),
        "command 2 answered ABORTED before the TMF: {first:?}"
    );
    let mut all = first.clone();
    all.extend(commands_done(&mut c, 3 - first.len(), true));
    all.sort();
    assert_eq!(
        all,
        [
            (1, response::OK, status::GOOD),
            (2, response::ABORTED, status::TASK_ABORTED),
            (3, response::OK, status::GOOD)
        ],
        "only the named command is aborted"
    );

    // LOGICAL UNIT RESET: every command in flight is aborted, all before the TMF's answer.
    common::signal_and_wait(back.pid(), libc::SIGSTOP, true);
    reads_in_flight(&d, &mut c, &[11, 12, 13]);
    tmf_pending(&d, &mut c, ctrl::TMF_LOGICAL_UNIT_RESET, 0);
    common::signal_and_wait(back.pid(), libc::SIGCONT, false);
    assert_eq!(tmf_answer(&mut c), response::OK, "LOGICAL UNIT RESET: FUNCTION COMPLETE");
    assert_eq!(
        commands_done(&mut c, 0, false),
        [
            (11, response::ABORTED, status::TASK_ABORTED),
            (12, response::ABORTED, status::TASK_ABORTED),
            (13, response::ABORTED, status::TASK_ABORTED)
        ],
        "every command in flight answered ABORTED before the reset's answer"
    );
    // The reset is a unit attention for every nexus, the issuer's too (SAM-5 6.3.3); then
    // the unit serves again.
    let (r, _) = command(&mut c, 0, 0, 0, &cdb::read10(0, 8), &[], &[(b, 4096)]);
    assert!(!r.is_good(), "BUS DEVICE RESET unit attention first: {r:?}");
    let (r, _) = command(&mut c, 0, 0, 0, &cdb::read10(0, 8), &[], &[(b, 4096)]);
    assert!(r.is_good(), "after the reset: {r:?}");
}

/// A driver that publishes a task management request's head again while that request waits
/// for held commands breaks only its control queue: the head is not queued twice (the
/// pending list cannot grow without bound), ferryd goes on, and the request queue serves.
#[test]
fn a_control_head_published_twice_breaks_only_the_control_queue() {
    let (back, back_dir) = common::held_backend("vscsi-back2");
    let dir = common::scratch_dir("vscsi-tmf2");
    let mut d = Ferryd::start_in(dir.clone(), &["-m", "0x1", "-S", dir.to_str().unwrap()]);
    common::attach_held(&d, &back_dir, "V");
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "s"}));
    d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": "s", "scsi_target_num": 0, "bdev_name": "V"}));
    let mut c = connect(&dir.join("s"), 1);
    common::signal_and_wait(back.pid(), libc::SIGSTOP, true);
    reads_in_flight(&d, &mut c, &[1, 2]);
    let head = c
        .control()
        .submit(&ScsiRequest::Tmf { subtype: ctrl::TMF_LOGICAL_UNIT_RESET, target: 0, lun: 0, id: 0 }, 900)
        .unwrap();
    c.control().kick();
    d.wait_polled(0, "vhost_scsi_ctrl0");
    // The same head again, while its reset waits for the two held reads.
    c.control().ring().publish(head);
    c.control().ring().kick_always();
    let deadline = Instant::now() + T;
    while !d.log_text().contains("control queue head published again while in flight") {
        assert!(Instant::now() < deadline, "the re-published head was not caught:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(5));
    }
    common::signal_and_wait(back.pid(), libc::SIGCONT, false);
    assert!(d.is_running(), "ferryd died: {}", d.log_text());
    // The held reads finish (ABORTED by the reset), and the request queue serves new ones.
    commands_done(&mut c, 2, true);
    let b = c.mem().alloc(4096, 4096).unwrap();
    let (r, _) = command(&mut c, 0, 0, 0, &cdb::read10(0, 8), &[], &[(b, 4096)]);
    assert!(!r.is_good(), "the reset's unit attention first: {r:?}");
    let (r, _) = command(&mut c, 0, 0, 0, &cdb::read10(0, 8), &[], &[(b, 4096)]);
    assert!(r.is_good(), "the request queue still serves: {r:?}");
    d.ok("spdk_get_version", json!(null));
}

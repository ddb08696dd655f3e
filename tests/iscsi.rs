//! The iSCSI target against a real `ferryd -m 0x3` over real TCP, driven by the small test
//! initiator in `common/iscsi_client.rs`: logins, the data path (immediate data, unsolicited
//! Data-Out, R2Ts, Data-In with status, digests), sequence numbers, task management, session
//! reinstatement, discovery, and what hostile peers send (oversized and damaged PDUs, Data-Out
//! that does not match its R2T, CmdSN outside the window, connection floods, silent peers).

mod common;
#[path = "common/iscsi_client.rs"]
mod iscsi_client;

use common::{free_port, Ferryd};
use iscsi_client::{read10, write10, Initiator, LoginStatus};
use serde_json::json;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const NODE: &str = "iqn.2016-06.io.spdk:disk1";
const INITIATOR: &str = "iqn.2026-12.test:initiator";
const BS: usize = 512;

/// ferryd with Malloc0 (64 MiB, 512-byte blocks) as LUN 0 of `disk1`, portal group 1 on a
/// free port, initiator group 2 admitting anyone.
fn start() -> (Ferryd, SocketAddr) {
    let d = Ferryd::start(&["-m", "0x3"]);
    let addr = serve_disk1(&d, 131072, 64);
    (d, addr)
}

/// Configures `d` to serve a malloc bdev of `blocks` 512-byte blocks as LUN 0 of `disk1`
/// with `queue_depth`, on a free port; returns the portal's address.
fn serve_disk1(d: &Ferryd, blocks: u64, queue_depth: u32) -> SocketAddr {
    let port = free_port();
    d.ok("bdev_malloc_create", json!({ "name": "Malloc0", "num_blocks": blocks, "block_size": BS }));
    d.ok(
        "iscsi_create_portal_group",
        json!({ "tag": 1, "portals": [{ "host": "127.0.0.1", "port": port.to_string() }] }),
    );
    d.ok("iscsi_create_initiator_group", json!({ "tag": 2, "initiators": ["ANY"], "netmasks": ["ANY"] }));
    d.ok(
        "iscsi_create_target_node",
        json!({
            "name": "disk1", "alias_name": "Disk 1", "queue_depth": queue_depth,
            "pg_ig_maps": [{ "pg_tag": 1, "ig_tag": 2 }],
            "luns": [{ "bdev_name": "Malloc0", "lun_id": 0 }],
            "disable_chap": true
        }),
    );
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn logged_in(addr: SocketAddr, extra: &[(&str, &str)]) -> Initiator {
    let mut i = Initiator::connect(addr);
    i.login(INITIATOR, Some(NODE), extra).expect("login");
    i
}

#[test]
fn writes_read_back_through_immediate_data_r2ts_and_unsolicited_data_out() {
    let (_d, addr) = start();
    // R2Ts only (no immediate data), one at a time, bursts smaller than the transfer.
    let mut a = logged_in(addr, &[("ImmediateData", "No"), ("MaxBurstLength", "16384"), ("FirstBurstLength", "8192")]);
    let data = pattern(256 * 1024, 1);
    let w = a.scsi(0, &write10(0, (data.len() / BS) as u16), 0, &data);
    assert_eq!(w.status, 0, "write: {w:?}");
    assert_eq!(w.r2ts, 16, "256 KiB solicited in 16 KiB bursts");
    let r = a.scsi(0, &read10(0, (data.len() / BS) as u16), data.len() as u32, &[]);
    assert_eq!(r.status, 0);
    assert!(r.data == data, "read back what was written");
    assert_eq!(a.logout(), 0);

    // Immediate data plus unsolicited Data-Out up to FirstBurstLength, then R2Ts (several
    // outstanding), with both digests.
    let mut b = logged_in(
        addr,
        &[
            ("InitialR2T", "No"),
            ("HeaderDigest", "CRC32C"),
            ("DataDigest", "CRC32C"),
            ("MaxOutstandingR2T", "4"),
            ("MaxBurstLength", "32768"),
        ],
    );
    assert!(b.hd && b.dd, "digests negotiated: {:?}", b.answered);
    assert!(!b.initial_r2t, "InitialR2T=No negotiated: {:?}", b.answered);
    let data = pattern(512 * 1024, 7);
    let w = b.scsi(0, &write10(2048, (data.len() / BS) as u16), 0, &data);
    assert_eq!(w.status, 0, "write: {w:?}");
    assert!(w.r2ts > 0);
    let r = b.scsi(0, &read10(2048, (data.len() / BS) as u16), data.len() as u32, &[]);
    assert!(r.data == data, "read back what was written");
    // The first session's data is still there, read through the second.
    let r = b.scsi(0, &read10(0, 8), 4096, &[]);
    assert!(r.data == pattern(256 * 1024, 1)[..4096]);
}

#[test]
fn reads_longer_than_the_initiators_segment_limit_come_in_several_data_in_with_residuals() {
    let (_d, addr) = start();
    let mut a = logged_in(addr, &[("MaxRecvDataSegmentLength", "4096")]);
    let data = pattern(64 * 1024, 3);
    assert_eq!(a.scsi(0, &write10(100, 128), 0, &data).status, 0);
    // Reads gather 16 Data-In PDUs (the client checks offsets); the last carries the status.
    let r = a.scsi(0, &read10(100, 128), data.len() as u32, &[]);
    assert_eq!((r.status, r.data.len()), (0, data.len()));
    assert!(r.data == data);
    // Expected length larger than the command's: GOOD with an underflow of the difference.
    let r = a.scsi(0, &read10(100, 1), 10_000, &[]);
    assert_eq!(r.status, 0);
    assert_eq!(r.flags & 0x06, 0x02, "U bit: {r:?}");
    assert_eq!(r.residual, 10_000 - 512);
}

#[test]
fn commands_outside_the_cmdsn_window_are_ignored() {
    let (_d, addr) = start();
    let mut a = logged_in(addr, &[]);
    // A command numbered far ahead: no response to it at all.
    let saved = a.cmd_sn;
    a.cmd_sn = saved.wrapping_add(1000);
    let (b, bad_itt) = a.cmd_bhs(0, &read10(0, 1), true, false, 512, true);
    a.send(b, &[]);
    a.cmd_sn = saved;
    // The NOP-In answering a later ping comes first, and the next response is the next
    // valid command's: the ignored one never answered.
    let nop = a.nop(b"ping");
    assert_eq!(nop.opcode(), 0x20);
    assert_eq!(nop.data, b"ping");
    let (b, good_itt) = a.cmd_bhs(0, &read10(0, 1), true, false, 512, true);
    a.send(b, &[]);
    let p = a.recv();
    assert_eq!(p.itt(), good_itt, "the valid command's Data-In, not {bad_itt}'s");
}

#[test]
fn data_out_that_does_not_match_its_r2t_is_rejected_and_fails_the_command() {
    let (_d, addr) = start();
    let mut a = logged_in(addr, &[("ImmediateData", "No")]);
    let (b, itt) = a.cmd_bhs(0, &write10(0, 16), false, true, 8192, true);
    a.send(b, &[]);
    let r2t = a.recv();
    assert_eq!(r2t.opcode(), 0x31);
    let ttt = r2t.u32_at(20);
    // Data past the end of the solicited range.
    a.send_data_out(itt, ttt, 4096, &[0u8; 8192], 0);
    let rej = a.recv();
    assert_eq!((rej.opcode(), rej.bhs[2]), (0x3f, 0x04), "Reject, protocol error: {rej:?}");
    let rsp = a.recv();
    assert_eq!((rsp.opcode(), rsp.itt(), rsp.bhs[3]), (0x21, itt, 0x02), "CHECK CONDITION for the command");
    // The connection still serves.
    assert_eq!(a.scsi(0, &read10(0, 1), 512, &[]).status, 0);
}

#[test]
fn damaged_digests_get_a_reject_or_drop_the_connection() {
    let (_d, addr) = start();
    let mut a = logged_in(addr, &[("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")]);
    // A NOP-Out whose data digest is wrong: Reject with reason 2, the PDU discarded.
    let mut b = [0u8; 48];
    b[0] = 0x40;
    b[1] = 0x80;
    b[5..8].copy_from_slice(&[0, 0, 4]);
    b[16..20].copy_from_slice(&77u32.to_be_bytes());
    b[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
    b[24..28].copy_from_slice(&a.cmd_sn.to_be_bytes());
    let mut raw = b.to_vec();
    raw.extend_from_slice(&iscsi_client::digest(&[&b]));
    raw.extend_from_slice(b"abcd");
    raw.extend_from_slice(&[0, 0, 0, 0]);
    std::io::Write::write_all(&mut a.s, &raw).unwrap();
    let rej = a.recv();
    assert_eq!((rej.opcode(), rej.bhs[2]), (0x3f, 0x02), "Reject, data digest error: {rej:?}");
    assert_eq!(a.nop(b"").opcode(), 0x20, "the connection goes on");
    // A damaged header digest: nothing in that header can be trusted; the target drops us.
    let mut raw = b.to_vec();
    raw.extend_from_slice(&[1, 2, 3, 4]);
    std::io::Write::write_all(&mut a.s, &raw).unwrap();
    assert!(a.closed_by_target(), "dropped after a header digest error");
}

#[test]
fn oversized_segments_unknown_opcodes_and_early_full_feature_pdus_are_refused() {
    let (d, addr) = start();
    // A data segment longer than the 8 KiB allowed during login: dropped.
    let mut a = Initiator::connect(addr);
    let mut b = a.login_bhs(true, 0, 1);
    b[5..8].copy_from_slice(&[0x01, 0, 0]); // 64 KiB claimed
    a.send_exact(&b, &[]);
    assert!(a.closed_by_target());
    // A SCSI command before login: dropped.
    let mut a = Initiator::connect(addr);
    let (b, _) = a.cmd_bhs(0, &read10(0, 1), true, false, 512, true);
    a.send(b, &[]);
    assert!(a.closed_by_target());
    // An unknown opcode in full feature phase: Reject, command not supported.
    let mut a = logged_in(addr, &[]);
    let mut b = [0u8; 48];
    b[0] = 0x1c;
    a.send(b, &[]);
    let rej = a.recv();
    assert_eq!((rej.opcode(), rej.bhs[2]), (0x3f, 0x05));
    assert_eq!(&rej.data[..48], &b[..], "the Reject carries the offending header");
    // SNACK at ERL 0: rejected cleanly.
    let mut b = [0u8; 48];
    b[0] = 0x10;
    b[1] = 0x80;
    a.send(b, &[]);
    assert_eq!(a.recv().opcode(), 0x3f);
    assert_eq!(a.nop(b"x").data, b"x");
    assert!(d.log_text().contains("iscsi"), "the daemon logged the drops");
}

#[test]
fn a_leading_login_with_the_same_isid_reinstates_the_session() {
    let (d, addr) = start();
    let mut a = logged_in(addr, &[]);
    let old_tsih = a.tsih;
    let mut b = Initiator::connect(addr);
    b.isid = a.isid;
    b.login(INITIATOR, Some(NODE), &[]).expect("the reinstating login succeeds");
    assert_ne!(b.tsih, old_tsih);
    assert!(a.closed_by_target(), "the old session's connection is closed");
    // The nexus was lost with the old session (SAM-5): a unit attention says so first.
    let r = b.scsi(0, &read10(0, 1), 512, &[]);
    assert_eq!(
        (r.status, r.sense[2] & 0x0f, r.sense[12], r.sense[13]),
        (0x02, 0x06, 0x29, 0x07),
        "I_T NEXUS LOSS: {r:?}"
    );
    assert_eq!(b.scsi(0, &read10(0, 1), 512, &[]).status, 0);
    let conns = d.ok("iscsi_get_connections", json!(null));
    assert_eq!(conns.as_array().unwrap().len(), 1, "{conns}");
    // A second connection to the live session (MC/S) is refused: MaxConnections=1.
    let mut c = Initiator::connect(addr);
    c.isid = b.isid;
    c.tsih = b.tsih;
    let mut bhs = c.login_bhs(true, 0, 1);
    bhs[20..22].copy_from_slice(&7u16.to_be_bytes()); // another CID
    c.send(bhs, &iscsi_client::keys(&[("InitiatorName", INITIATOR), ("TargetName", NODE), ("AuthMethod", "None")]));
    let r = c.recv();
    assert_eq!(r.bhs[36], 0x02, "initiator error class: {r:?}");
    // An unknown TSIH: session does not exist.
    let mut e = Initiator::connect(addr);
    e.tsih = 0x7777;
    assert_eq!(e.login(INITIATOR, Some(NODE), &[]), Err(LoginStatus(0x02, 0x0a)));
}

#[test]
fn discovery_lists_what_the_initiator_may_see_and_refuses_scsi() {
    let (d, addr) = start();
    let mut a = Initiator::connect(addr);
    a.login(INITIATOR, None, &[]).expect("discovery login");
    let t = a.text(&[("SendTargets", "All")]);
    assert_eq!(t.iter().find(|(k, _)| k == "TargetName").map(|(_, v)| v.as_str()), Some(NODE), "{t:?}");
    let address = format!("127.0.0.1:{},1", addr.port());
    assert!(t.iter().any(|(k, v)| k == "TargetAddress" && *v == address), "{t:?}");
    let (b, _) = a.cmd_bhs(0, &read10(0, 1), true, false, 512, true);
    a.send(b, &[]);
    assert_eq!(a.recv().opcode(), 0x3f, "SCSI commands are rejected in discovery sessions");
    assert_eq!(a.logout(), 0);
    // An initiator group admitting only someone else hides the node and refuses its login.
    d.ok("iscsi_create_initiator_group", json!({ "tag": 3, "initiators": ["iqn.someone-else"], "netmasks": ["ANY"] }));
    d.ok(
        "iscsi_create_target_node",
        json!({
            "name": "private", "alias_name": "p", "queue_depth": 8,
            "pg_ig_maps": [{ "pg_tag": 1, "ig_tag": 3 }], "luns": [{ "bdev_name": "Malloc0", "lun_id": 0 }]
        }),
    );
    let mut a = Initiator::connect(addr);
    a.login(INITIATOR, None, &[]).unwrap();
    let t = a.text(&[("SendTargets", "All")]);
    assert!(!t.iter().any(|(_, v)| v.contains("private")), "{t:?}");
    let mut b = Initiator::connect(addr);
    assert_eq!(b.login(INITIATOR, Some("iqn.2016-06.io.spdk:private"), &[]), Err(LoginStatus(0x02, 0x02)));
    let mut c = Initiator::connect(addr);
    assert_eq!(c.login(INITIATOR, Some("iqn.2016-06.io.spdk:nosuch"), &[]), Err(LoginStatus(0x02, 0x03)));
}

#[test]
fn abort_task_drops_a_write_waiting_for_its_data() {
    let (_d, addr) = start();
    let mut a = logged_in(addr, &[("ImmediateData", "No")]);
    let (b, itt) = a.cmd_bhs(0, &write10(0, 8), false, true, 4096, true);
    a.send(b, &[]);
    assert_eq!(a.recv().opcode(), 0x31, "R2T");
    assert_eq!(a.tmf(1, 0, itt), 0, "ABORT TASK: function complete");
    // No response ever comes for the aborted task: the next PDU answers the next command.
    let r = a.scsi(0, &read10(0, 1), 512, &[]);
    assert_eq!(r.status, 0);
    assert_eq!(a.tmf(1, 0, 0xdead), 1, "ABORT TASK of an unknown task: task does not exist");
    assert_eq!(a.tmf(5, 0, 0), 0, "LUN RESET");
    assert_eq!(a.tmf(5, 9, 0), 2, "LUN RESET of a missing LUN");
    assert_eq!(a.tmf(6, 0, 0), 0, "TARGET WARM RESET");
    assert_eq!(a.tmf(3, 0, 0), 5, "CLEAR ACA is not supported");
    // TARGET COLD RESET: answered, then every connection to the node closes.
    let mut other = logged_in(addr, &[]);
    assert_eq!(a.tmf(7, 0, 0), 0, "TARGET COLD RESET");
    assert!(a.closed_by_target(), "the requester's connection closes after the response");
    assert!(other.closed_by_target(), "and every other session of the node");
}

#[test]
fn silent_peers_and_connection_floods_do_not_stop_the_target() {
    let (d, addr) = start();
    // Two thousand connections that never speak.
    let silent: Vec<TcpStream> = (0..2000).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // A real initiator is still served at once.
    let mut a = logged_in(addr, &[]);
    assert_eq!(a.scsi(0, &read10(0, 1), 512, &[]).status, 0);
    // The silent ones are dropped after the login timeout (15 s): observe EOF on one.
    let mut s = silent.into_iter().next().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 1];
    let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed by the target");
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(a.nop(b"still here").data, b"still here");
    let stats = d.ok("iscsi_get_stats", json!(null));
    assert!(stats["invalid"].as_u64().unwrap() >= 1, "{stats}");
}

#[test]
fn a_lun_added_or_resized_is_announced_by_an_asynchronous_event() {
    let (d, addr) = start();
    d.ok("bdev_null_create", json!({ "name": "Null0", "num_blocks": 2048, "block_size": 512 }));
    let mut a = logged_in(addr, &[]);
    d.ok("iscsi_target_node_add_lun", json!({ "name": NODE, "bdev_name": "Null0", "lun_id": 1 }));
    let p = a.recv();
    assert_eq!((p.opcode(), p.bhs[36]), (0x32, 0), "an Async Message, SCSI event: {p:?}");
    // Sense length, then fixed sense: UNIT ATTENTION, REPORTED LUNS DATA HAS CHANGED.
    assert_eq!((p.data[2 + 2] & 0x0f, p.data[2 + 12], p.data[2 + 13]), (0x06, 0x3f, 0x0e), "{p:?}");
    a.exp_stat_sn = p.u32_at(24).wrapping_add(1);
    // The new LUN serves.
    let mut r = a.scsi(1, &read10(0, 1), 512, &[]);
    for _ in 0..3 {
        if r.status == 0 {
            break;
        }
        assert_eq!((r.status, r.sense[2] & 0x0f), (0x02, 0x06), "only unit attentions before GOOD: {r:?}");
        r = a.scsi(1, &read10(0, 1), 512, &[]);
    }
    assert_eq!(r.status, 0);
    d.ok("bdev_null_resize", json!({ "name": "Null0", "new_size": 2 }));
    let p = a.recv();
    assert_eq!(p.opcode(), 0x32, "{p:?}");
    assert_eq!(p.bhs[9], 1, "LUN 1's event");
    assert_eq!((p.data[2 + 12], p.data[2 + 13]), (0x2a, 0x09), "CAPACITY DATA HAS CHANGED: {p:?}");
}

#[test]
fn the_target_pings_an_idle_initiator_and_drops_one_that_stays_silent() {
    let d = Ferryd::start(&["-m", "0x3", "--wait-for-rpc"]);
    // A timeout this test thread answers within even when the machine is loaded.
    d.ok("iscsi_set_options", json!({ "nop_in_interval": 1, "nop_timeout": 5 }));
    d.ok("framework_start_init", json!(null));
    let addr = serve_disk1(&d, 2048, 8);
    let mut a = logged_in(addr, &[]);
    // An idle second: the target pings (NOP-In, ITT reserved, a TTT to echo).
    let ping = a.recv();
    assert_eq!((ping.opcode(), ping.itt()), (0x20, u32::MAX), "{ping:?}");
    let ttt = ping.u32_at(20);
    assert_ne!(ttt, u32::MAX);
    // Answered: the connection lives on, and the next ping comes.
    let mut b = [0u8; 48];
    b[0] = 0x40;
    b[1] = 0x80;
    b[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
    b[20..24].copy_from_slice(&ttt.to_be_bytes());
    b[24..28].copy_from_slice(&a.cmd_sn.to_be_bytes());
    a.send(b, &[]);
    assert_eq!(a.recv().opcode(), 0x20, "pinged again after the next idle second");
    // Not answered: dropped once the timeout passes.
    assert!(a.closed_by_target(), "an initiator that stays silent is dropped");
}

#[test]
fn data_out_arriving_in_pieces_lands_whole_with_and_without_digests() {
    let (_d, addr) = start();
    for digests in [false, true] {
        let dg = if digests { "CRC32C" } else { "None" };
        let mut a = logged_in(
            addr,
            &[("ImmediateData", "No"), ("MaxBurstLength", "65536"), ("HeaderDigest", dg), ("DataDigest", dg)],
        );
        let data = pattern(128 * 1024, if digests { 5 } else { 9 });
        let lba = if digests { 4096 } else { 8192 };
        let (b, itt) = a.cmd_bhs(0, &write10(lba, (data.len() / BS) as u16), false, true, data.len() as u32, true);
        a.send(b, &[]);
        let mut r2ts = 0;
        loop {
            let p = a.recv();
            if p.opcode() == 0x21 {
                assert_eq!((p.itt(), p.bhs[3]), (itt, 0), "the write succeeds: {p:?}");
                break;
            }
            assert_eq!(p.opcode(), 0x31, "R2T: {p:?}");
            r2ts += 1;
            let (ttt, off, len) = (p.u32_at(20), p.u32_at(40) as usize, p.u32_at(44) as usize);
            // One Data-Out for the whole burst, its bytes written in three pieces so that the
            // target sees the header long before the end of the segment.
            let mut h = [0u8; 48];
            h[0] = 0x05;
            h[1] = 0x80;
            h[5..8].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
            h[16..20].copy_from_slice(&itt.to_be_bytes());
            h[20..24].copy_from_slice(&ttt.to_be_bytes());
            h[40..44].copy_from_slice(&(off as u32).to_be_bytes());
            let mut wire = h.to_vec();
            if digests {
                wire.extend_from_slice(&iscsi_client::digest(&[&h]));
            }
            let seg = &data[off..off + len];
            wire.extend_from_slice(seg);
            if digests {
                wire.extend_from_slice(&iscsi_client::digest(&[seg]));
            }
            let cut1 = 48 + 100;
            let cut2 = wire.len() - 3;
            for piece in [&wire[..cut1], &wire[cut1..cut2], &wire[cut2..]] {
                std::io::Write::write_all(&mut a.s, piece).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert_eq!(r2ts, 2, "two 64 KiB bursts");
        let r = a.scsi(0, &read10(lba, (data.len() / BS) as u16), data.len() as u32, &[]);
        assert!(r.data == data, "read back what was written (digests: {digests})");
    }
}

#[test]
fn a_login_with_the_sessions_tsih_and_cid_reinstates_the_connection() {
    let (_d, addr) = start();
    let mut a = logged_in(addr, &[("InitialR2T", "No")]);
    let data = pattern(4096, 3);
    assert_eq!(a.scsi(0, &write10(64, 8), 0, &data).status, 0);
    // The same ISID, TSIH and CID on a new connection: connection reinstatement (RFC 7143
    // §6.3.4): the old connection goes, the session goes on with the new one.
    let mut b = Initiator::connect(addr);
    b.isid = a.isid;
    b.tsih = a.tsih;
    b.cmd_sn = a.cmd_sn;
    b.login(INITIATOR, Some(NODE), &[]).expect("connection reinstatement");
    assert_eq!(b.tsih, a.tsih, "the same session");
    assert!(a.closed_by_target(), "the old connection is closed");
    let r = b.scsi(0, &read10(64, 8), 4096, &[]);
    assert!(r.status == 0 && r.data == data, "{r:?}");
    // The session's InitialR2T=No holds on the new connection: unsolicited Data-Out is taken.
    b.initial_r2t = false;
    b.immediate_data = false;
    b.first_burst = a.first_burst;
    let more = pattern(16384, 4);
    let w = b.scsi(0, &write10(128, 32), 0, &more);
    assert_eq!((w.status, w.r2ts), (0, 1), "8 KiB unsolicited (FirstBurstLength), then one R2T: {w:?}");
    assert!(b.scsi(0, &read10(128, 32), 16384, &[]).data == more);
}

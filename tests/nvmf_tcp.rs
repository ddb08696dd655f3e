//! The NVMe/TCP target against a real `ferryd -m 0x3` over real TCP, driven by the raw host in
//! `common/nvmf_client.rs`: the ICReq/ICResp fields Linux checks, with and without digests;
//! Connect; reads and writes in-capsule and by R2T (multi-PDU H2CData, multi-PDU C2HData);
//! C2H SUCCESS; and hostile hosts (PDUs of the wrong type for the state, length lies, bad
//! digests, H2CData outside its R2T, command id reuse, more commands than SQSIZE, floods of
//! connections), each answered as the spec says, with the daemon serving a new host after.

mod common;
#[path = "common/nvmf_client.rs"]
mod nvmf_client;

use common::{free_port, Ferryd};
use ferry_nvme::spec::{io, prop, sc, sct, SglDescriptor, Status};
use ferry_nvme::tcp::{fes, pdu_type, CommonHeader, Digests, IcReq, TermError, TermReq};
use nvmf_client::{connect_cmd, ok, rw_cmd, Host, Pdu};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const BS: usize = 512;
const NONE: Digests = Digests { header: false, data: false };
const BOTH: Digests = Digests { header: true, data: true };

struct Target {
    d: Ferryd,
    addr: SocketAddr,
}

/// ferryd serving Malloc0 (4 MiB, 512-byte blocks) as namespace 1 of NQN on a free port,
/// with the TCP transport's options `opts` over SPDK's defaults.
fn target(opts: Value) -> Target {
    let d = Ferryd::start(&["-m", "0x3"]);
    d.ok("bdev_malloc_create", json!({ "name": "Malloc0", "num_blocks": 8192, "block_size": BS }));
    let mut t = json!({ "trtype": "TCP" });
    t.as_object_mut().unwrap().extend(opts.as_object().cloned().unwrap_or_default());
    d.ok("nvmf_create_transport", t);
    d.ok("nvmf_create_subsystem", json!({ "nqn": NQN, "allow_any_host": true }));
    d.ok("nvmf_subsystem_add_ns", json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc0" } }));
    let port = free_port();
    let la = json!({ "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string() });
    d.ok("nvmf_subsystem_add_listener", json!({ "nqn": NQN, "listen_address": la }));
    Target { d, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
}

/// An admin queue enabled (CC.EN, CSTS.RDY) and an I/O queue of `sqsize + 1` entries on its
/// controller, with `cattr` (bit 2: SQ flow control disabled).
fn session(t: &Target, digests: Digests, sqsize: u16, cattr: u8) -> (Host, Host) {
    let mut a = Host::new(t.addr, digests);
    let c = a.connect(1, NQN, 0, 31, 0xffff, 0);
    assert!(ok(&c), "admin Connect: {c:?}");
    let cntlid = c.dw0 as u16;
    assert!(ok(&a.property_set(2, prop::CC, 0x0046_0001, false)), "CC.EN");
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.property_get(3, prop::CSTS, false).dw0 & 1 == 0 {
        assert!(Instant::now() < deadline, "CSTS.RDY never set");
    }
    let mut q = Host::new(t.addr, digests);
    let c = q.connect(1, NQN, 1, sqsize, cntlid, cattr);
    assert!(ok(&c), "I/O Connect: {c:?}");
    (a, q)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect()
}

/// The daemon still serves a new host: Connect, a write and its read back.
fn still_serving(t: &Target) {
    let (_a, mut q) = session(t, NONE, 15, 0);
    let data = pattern(99, 4096);
    assert!(ok(&q.write_in_capsule(7, 1, 4000, &data, BS)));
    let (back, c, _) = q.read(8, 1, 4000, 8, BS);
    assert!(ok(&c.unwrap()));
    assert_eq!(back, data);
}

#[test]
fn icresp_carries_what_linux_checks_with_and_without_digests() {
    let t = target(json!({}));
    for bits in 0..4u8 {
        let asked = Digests::from_bits(bits);
        let mut h = Host::tcp(t.addr);
        h.send(&IcReq { pfv: 0, hpda: 0, digests: asked, maxr2t: 0 }.build());
        let Pdu::IcResp(r, raw) = h.recv() else { panic!("no ICResp") };
        let ch = CommonHeader::parse(&raw);
        assert_eq!((ch.pdu_type, ch.flags, ch.hlen, ch.pdo, ch.plen), (pdu_type::IC_RESP, 0, 128, 0, 128));
        assert_eq!(r.pfv, 0, "PFV");
        assert_eq!(r.cpda, 0, "CPDA");
        assert_eq!(r.digests, asked, "digests exactly as asked");
        assert!(r.maxh2cdata >= 4096 && r.maxh2cdata % 4 == 0, "MAXH2CDATA {}", r.maxh2cdata);
        assert!(raw[16..].iter().all(|&b| b == 0), "reserved bytes zero");
    }
}

/// Connect, then writes in-capsule and by R2T (several H2CData PDUs), read back in one and in
/// several C2HData PDUs, with every digest combination.
#[test]
fn connect_then_read_and_write_in_capsule_and_by_r2t() {
    // max_io_size 256 KiB: a 256 KiB read goes back in two 128 KiB C2HData PDUs.
    let t = target(json!({ "max_io_size": 262144, "in_capsule_data_size": 8192 }));
    for bits in 0..4u8 {
        let digests = Digests::from_bits(bits);
        let (_a, mut q) = session(&t, digests, 127, 0);
        let base = bits as u64 * 1024;
        // In capsule: 8 KiB (the in-capsule limit).
        let small = pattern(bits, 8192);
        let c = q.write_in_capsule(10, 1, base, &small, BS);
        assert!(ok(&c), "in-capsule write: {c:?}");
        assert_eq!(c.sqid, 1);
        let (back, c, pdus) = q.read(11, 1, base, 16, BS);
        assert!(ok(&c.expect("a response capsule: SQ flow control is on")), "read");
        assert_eq!((back, pdus), (small, 1));
        // By R2T: 256 KiB in H2CData PDUs of 24 KiB (the last one shorter).
        let big = pattern(bits + 50, 262144);
        let c = q.write_r2t(12, 1, base + 16, &big, BS, 24576);
        assert!(ok(&c), "R2T write: {c:?}");
        let (back, c, pdus) = q.read(13, 1, base + 16, 512, BS);
        assert!(ok(&c.unwrap()));
        assert_eq!(pdus, 2, "256 KiB in two C2HData PDUs");
        assert!(back == big, "data written by R2T reads back");
    }
    still_serving(&t);
}

#[test]
fn c2h_success_only_when_the_host_disabled_sq_flow_control() {
    let t = target(json!({}));
    let (_a, mut q) = session(&t, BOTH, 31, 0x4);
    let (data, c, _) = q.read(5, 1, 0, 8, BS);
    assert!(c.is_none(), "no response capsule after a C2HData with SUCCESS");
    assert_eq!(data.len(), 4096);
    // The next command's answer is the next PDU (nothing stray in between).
    assert!(ok(&q.write_in_capsule(6, 1, 0, &data, BS)));
    drop(q);
    let t2 = target(json!({ "c2h_success": false }));
    let (_a, mut q) = session(&t2, NONE, 31, 0x4);
    let (_, c, _) = q.read(5, 1, 0, 8, BS);
    assert!(ok(&c.expect("c2h_success off: always a response capsule")));
}

/// A burst of a whole queue depth of commands in one send: more than the target handles in
/// one poll of a connection, and more bytes than its receive buffer holds. The commands left
/// in the buffer must be served with nothing more arriving on the socket.
#[test]
fn a_burst_beyond_one_poll_is_served_whole() {
    let t = target(json!({}));
    let (_a, mut q) = session(&t, NONE, 127, 0);
    let depth = 128u16;
    let block = |i: u16| pattern(i as u8, BS);
    let mut burst = Vec::new();
    for i in 0..depth {
        let cmd = rw_cmd(io::WRITE, i, 1, i as u64, 1, SglDescriptor::in_capsule(0, BS as u32));
        burst.extend_from_slice(&q.capsule(&cmd, &block(i)));
    }
    q.send(&burst);
    let mut answered = vec![false; depth as usize];
    for _ in 0..depth {
        let c = q.resp();
        assert!(ok(&c), "write {}: {c:?}", c.cid);
        assert!(!std::mem::replace(&mut answered[c.cid as usize], true), "one answer per write");
    }
    let mut burst = Vec::new();
    for i in 0..depth {
        burst.extend_from_slice(
            &q.capsule(&rw_cmd(io::READ, i, 1, i as u64, 1, SglDescriptor::transport(BS as u32)), &[]),
        );
    }
    q.send(&burst);
    let mut done = 0;
    while done < depth {
        match q.recv() {
            Pdu::C2HData(h, _, d) => assert_eq!(d, block(h.cccid), "block {} reads back", h.cccid),
            Pdu::Resp(c) => {
                assert!(ok(&c), "read {}: {c:?}", c.cid);
                done += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn connect_comes_first_and_is_checked() {
    let t = target(json!({}));
    let mut h = Host::new(t.addr, NONE);
    // A command before Connect.
    h.send_cmd(&rw_cmd(io::READ, 3, 1, 0, 1, SglDescriptor::transport(512)), &[]);
    let c = h.resp();
    assert_eq!((c.cid, c.status), (3, Status::generic(sc::COMMAND_SEQUENCE_ERROR).dnr()));
    // An unknown subsystem is refused; the connection may try again.
    let c = h.connect(4, "nqn.2016-06.io.spdk:nope", 0, 31, 0xffff, 0);
    assert_eq!((c.cid, c.status.sct), (4, sct::COMMAND_SPECIFIC));
    let c = h.connect(5, NQN, 0, 31, 0xffff, 0);
    assert!(ok(&c));
    // A second Connect on a connected queue.
    let c = h.connect(6, NQN, 0, 31, 0xffff, 0);
    assert_eq!(c.status.sc, sc::COMMAND_SEQUENCE_ERROR);
}

/// Sends `bytes` on a fresh connection (after ICReq when `ic`) and expects a termination
/// request with `fes` (and `fei` if given), then the close.
fn expect_term(t: &Target, digests: Option<Digests>, bytes: &[u8], fes: u16, fei: Option<u32>) -> TermReq {
    let mut h = match digests {
        Some(d) => Host::new(t.addr, d),
        None => Host::tcp(t.addr),
    };
    h.send(bytes);
    let term = h.expect_term();
    assert_eq!(term.error.fes, fes, "fatal error status of {:?}", &bytes[..8.min(bytes.len())]);
    if let Some(fei) = fei {
        assert_eq!(term.error.fei, fei);
    }
    term
}

#[test]
fn malformed_pdus_are_terminated_and_the_daemon_serves_on() {
    let t = target(json!({}));
    let ic = |pfv, hpda| IcReq { pfv, hpda, digests: NONE, maxr2t: 0 }.build();
    // ICReq fields.
    expect_term(&t, None, &ic(1, 0), fes::INVALID_HEADER_FIELD, Some(8));
    expect_term(&t, None, &ic(0, 32), fes::INVALID_HEADER_FIELD, Some(10));
    // Wrong type for the state: a capsule before ICReq, a second ICReq, a controller's PDU.
    let (cmd, data) = connect_cmd(1, NQN, 0, 31, 0xffff, 0);
    let capsule = nvmf_client::capsule_bytes(&cmd, &data, NONE);
    expect_term(&t, None, &capsule, fes::PDU_SEQUENCE_ERROR, None);
    expect_term(&t, Some(NONE), &ic(0, 0), fes::PDU_SEQUENCE_ERROR, None);
    let mut resp_pdu = ferry_nvme::tcp::capsule_resp(&Default::default(), NONE);
    expect_term(&t, Some(NONE), &resp_pdu, fes::INVALID_HEADER_FIELD, Some(0));
    resp_pdu[0] = 0x0b;
    expect_term(&t, Some(NONE), &resp_pdu, fes::INVALID_HEADER_FIELD, Some(0));
    // Length lies: hlen, pdo, plen below the header, plen far beyond any limit (nothing of
    // that size is allocated: the answer comes at once).
    let mut lie = capsule.clone();
    lie[2] = 80;
    expect_term(&t, Some(NONE), &lie, fes::INVALID_HEADER_FIELD, Some(2));
    let mut lie = capsule.clone();
    lie[3] = 100;
    expect_term(&t, Some(NONE), &lie, fes::INVALID_HEADER_FIELD, Some(3));
    let mut lie = capsule.clone();
    lie[4..8].copy_from_slice(&40u32.to_le_bytes());
    expect_term(&t, Some(NONE), &lie, fes::INVALID_HEADER_FIELD, Some(4));
    let mut lie = capsule.clone();
    lie[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    expect_term(&t, Some(NONE), &lie[..72], fes::DATA_LIMIT_EXCEEDED, None);
    // In-capsule data over the admin queue's 8 KiB.
    let mut w = rw_cmd(io::WRITE, 2, 1, 0, 17, SglDescriptor::in_capsule(0, 8704));
    w.set_cid(2);
    let mut over = ferry_nvme::tcp::capsule_cmd_header(&w, 8704, NONE);
    over.extend_from_slice(&[0u8; 8704]);
    expect_term(&t, Some(NONE), &over, fes::DATA_LIMIT_EXCEEDED, None);
    // Digest flags other than negotiated.
    let with_digests = nvmf_client::capsule_bytes(&cmd, &data, BOTH);
    expect_term(&t, Some(NONE), &with_digests, fes::INVALID_HEADER_FIELD, Some(1));
    // A bad header digest.
    let mut bad = with_digests.clone();
    bad[20] ^= 0x40;
    expect_term(&t, Some(BOTH), &bad, fes::HEADER_DIGEST_ERROR, None);
    // A host's termination request: the target just closes.
    let mut h = Host::new(t.addr, NONE);
    h.send(&TermReq::build(pdu_type::H2C_TERM_REQ, TermError::field(0), &[0; 8]));
    h.expect_closed();
    still_serving(&t);
    let stats = t.d.ok("nvmf_get_stats", json!(null));
    let terms: u64 = stats["poll_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["transports"][0]["terminations"].as_u64().unwrap())
        .sum();
    assert_eq!(terms, 13, "each malformed PDU terminated its connection: {stats}");
}

#[test]
fn bad_data_digests_fail_the_command_not_the_connection() {
    let t = target(json!({}));
    let (_a, mut q) = session(&t, BOTH, 31, 0);
    // In-capsule data with a bad digest.
    let data = pattern(1, 1024);
    let mut b = q.capsule(&rw_cmd(io::WRITE, 1, 1, 100, 2, SglDescriptor::in_capsule(0, 1024)), &data);
    let n = b.len();
    b[n - 1] ^= 1;
    q.send(&b);
    let c = q.resp();
    assert_eq!((c.cid, c.status), (1, Status::generic(sc::TRANSIENT_TRANSPORT_ERROR)));
    // H2CData with a bad digest: the command completes with the error once its data is in.
    q.send_cmd(&rw_cmd(io::WRITE, 2, 1, 100, 16, SglDescriptor::transport(8192)), &[]);
    let r2t = q.r2t();
    let mut first = q.h2c(2, r2t.ttag, 0, &pattern(2, 4096), false);
    let n = first.len();
    first[n - 5] ^= 1;
    q.send(&first);
    let second = q.h2c(2, r2t.ttag, 4096, &pattern(3, 4096), true);
    q.send(&second);
    let c = q.resp();
    assert_eq!((c.cid, c.status), (2, Status::generic(sc::TRANSIENT_TRANSPORT_ERROR)));
    // Neither write reached the namespace; the queue goes on.
    let (back, c, _) = q.read(3, 1, 100, 2, BS);
    assert!(ok(&c.unwrap()));
    assert_ne!(back, data);
    assert!(ok(&q.write_in_capsule(4, 1, 100, &data, BS)));
    let (back, _, _) = q.read(5, 1, 100, 2, BS);
    assert_eq!(back, data);
}

#[test]
fn h2c_data_outside_its_r2t_is_terminated() {
    let t = target(json!({}));
    // Each case: a write of 8 KiB waiting for data, then a bad H2CData.
    // From the command's cid and the R2T's ttag: the H2CData's cccid, ttag, offset, length.
    type Bad = fn(u16, u16) -> (u16, u16, u32, usize);
    let cases: [(&str, Bad, u16, u32); 5] = [
        ("unknown ttag", |cid, ttag| (cid, ttag + 7, 0, 4096), fes::INVALID_HEADER_FIELD, 10),
        ("other cccid", |cid, ttag| (cid + 1, ttag, 0, 4096), fes::INVALID_HEADER_FIELD, 8),
        ("offset skips ahead", |cid, ttag| (cid, ttag, 4096, 4096), fes::DATA_OUT_OF_RANGE, 12),
        ("past the end", |cid, ttag| (cid, ttag, 0, 12288), fes::DATA_OUT_OF_RANGE, 16),
        ("past the end", |cid, ttag| (cid, ttag, 0, 8196), fes::DATA_OUT_OF_RANGE, 16),
    ];
    for (what, bad, want_fes, want_fei) in cases {
        let (_a, mut q) = session(&t, NONE, 31, 0);
        q.send_cmd(&rw_cmd(io::WRITE, 9, 1, 0, 16, SglDescriptor::transport(8192)), &[]);
        let r2t = q.r2t();
        let (cccid, ttag, offset, len) = bad(9, r2t.ttag);
        let b = q.h2c(cccid, ttag, offset, &vec![0u8; len], true);
        q.send(&b);
        let term = q.expect_term();
        assert_eq!((term.error.fes, term.error.fei), (want_fes, want_fei), "{what}");
    }
    // H2CData with no R2T at all, and a DATAL that disagrees with the PDU's data.
    let (_a, mut q) = session(&t, NONE, 31, 0);
    let b = q.h2c(1, 0, 0, &[0u8; 512], true);
    q.send(&b);
    assert_eq!(q.expect_term().error, TermError::field(10));
    let (_a, mut q) = session(&t, NONE, 31, 0);
    q.send_cmd(&rw_cmd(io::WRITE, 9, 1, 0, 16, SglDescriptor::transport(8192)), &[]);
    let r2t = q.r2t();
    let mut b = q.h2c(9, r2t.ttag, 0, &[0u8; 512], false);
    b[16..20].copy_from_slice(&1024u32.to_le_bytes());
    q.send(&b);
    assert_eq!(q.expect_term().error, TermError::field(16));
    still_serving(&t);
}

#[test]
fn command_ids_in_flight_and_queue_depth_are_enforced() {
    let t = target(json!({}));
    let (_a, mut q) = session(&t, NONE, 3, 0);
    // cid 1 waits for its data; cid 1 again is a conflict, answered without harming the first.
    q.send_cmd(&rw_cmd(io::WRITE, 1, 1, 0, 8, SglDescriptor::transport(4096)), &[]);
    let r2t = q.r2t();
    q.send_cmd(&rw_cmd(io::READ, 1, 1, 0, 8, SglDescriptor::transport(4096)), &[]);
    let c = q.resp();
    assert_eq!((c.cid, c.status), (1, Status::generic(sc::CID_CONFLICT).dnr()));
    let data = pattern(5, 4096);
    let b = q.h2c(1, r2t.ttag, 0, &data, true);
    q.send(&b);
    assert!(ok(&q.resp()), "the first command with that id completes");
    let (back, _, _) = q.read(2, 1, 0, 8, BS);
    assert_eq!(back, data);
    // SQSIZE 3: four entries. Four writes wait for data; a fifth command is one too many.
    for cid in 10..14 {
        q.send_cmd(&rw_cmd(io::WRITE, cid, 1, 0, 8, SglDescriptor::transport(4096)), &[]);
        assert_eq!(q.r2t().cccid, cid);
    }
    q.send_cmd(&rw_cmd(io::READ, 14, 1, 0, 1, SglDescriptor::transport(512)), &[]);
    assert_eq!(q.expect_term().error.fes, fes::PDU_SEQUENCE_ERROR);
    still_serving(&t);
}

/// Sums a poll group field of nvmf_get_stats' TCP transport entries.
fn connections(d: &Ferryd) -> u64 {
    let s = d.ok("nvmf_get_stats", json!(null));
    s["poll_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["transports"][0]["current_connections"].as_u64().unwrap())
        .sum()
}

#[test]
fn connections_are_bounded_and_a_freed_place_serves_again() {
    let t = target(json!({}));
    const MAX: usize = 4096;
    let mut held = Vec::with_capacity(MAX);
    for _ in 0..MAX {
        held.push(std::net::TcpStream::connect(t.addr).unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while connections(&t.d) < MAX as u64 {
        assert!(Instant::now() < deadline, "only {} of {MAX} connections placed", connections(&t.d));
        std::thread::sleep(Duration::from_millis(20));
    }
    // One more is closed at once.
    let mut extra = Host::tcp(t.addr);
    extra.expect_closed();
    assert_eq!(connections(&t.d), MAX as u64);
    // A freed place takes a host that connects and does I/O.
    held.truncate(MAX - 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while connections(&t.d) > (MAX - 2) as u64 {
        assert!(Instant::now() < deadline, "closed connections not reaped");
        std::thread::sleep(Duration::from_millis(20));
    }
    still_serving(&t);
    drop(held);
}

//! The queue pair against a scripted target on a real loopback socket: the normal flows
//! (in-capsule write, R2T with H2CData split at MAXH2CDATA, C2HData in pieces, digests) and
//! every kind of hostile input, each of which must fail the queue pair with an error, never a
//! panic or a write outside the command's buffer.

use super::qpair::{TcpConfig, TcpQpair};
use super::{Dir, HostError, QpCompletion, Qpair, Seg};
use crate::spec::{io, Command, Completion, Status};
use crate::tcp::{
    capsule_resp, data_digest, flag, pdu_type, DataHeader, Digests, IcReq, IcResp, Layout, Side, TermError, TermReq,
    CAPSULE_CMD_HLEN, DATA_HLEN,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SQSIZE: u16 = 4;
const CNTLID: u16 = 7;

fn config(addr: SocketAddr, digests: Digests) -> TcpConfig {
    TcpConfig {
        addr,
        qid: 1,
        sqsize: SQSIZE,
        kato_ms: 0,
        cntlid: CNTLID,
        hostid: [1; 16],
        subnqn: "nqn.test:sub".into(),
        hostnqn: "nqn.test:host".into(),
        digests,
        in_capsule: 4096,
        max_transfer: 16384,
        connect_timeout: Duration::from_secs(10),
    }
}

/// Reads one whole PDU the host sent (`digests` as negotiated, none before ICResp).
fn read_pdu(s: &mut TcpStream, digests: Digests) -> Vec<u8> {
    let mut ch = [0u8; 8];
    s.read_exact(&mut ch).unwrap();
    let l = Layout::parse(&ch, Side::Controller, digests, 1 << 20).expect("the host sends valid PDUs");
    let mut pdu = ch.to_vec();
    pdu.resize(l.plen, 0);
    s.read_exact(&mut pdu[8..]).unwrap();
    pdu
}

/// A target that answers ICReq and Connect, then runs `script`.
fn target(
    digests: Digests,
    script: impl FnOnce(&mut TcpStream, Digests) + Send + 'static,
) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let req = IcReq::parse(&read_pdu(&mut s, Digests::default()));
        assert_eq!(req.digests, digests);
        s.write_all(&IcResp { pfv: 0, cpda: 0, digests, maxh2cdata: 4096 }.build()).unwrap();
        // Connect: 1024 bytes of data, within the in-capsule limit.
        let connect = read_pdu(&mut s, digests);
        assert_eq!(connect[8], 0x7f);
        assert_eq!(connect[8 + 46] & 0x4, 0x4, "Connect turns SQ flow control off (CATTR bit 2)");
        let cid = u16::from_le_bytes([connect[10], connect[11]]);
        let cpl = Completion { cid, dw0: CNTLID as u32, ..Default::default() };
        s.write_all(&capsule_resp(&cpl, digests)).unwrap();
        script(&mut s, digests);
    });
    (addr, h)
}

/// Polls until `n` completions or an error (within 10 s).
fn run(qp: &mut TcpQpair, n: usize) -> Result<Vec<QpCompletion>, HostError> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        qp.poll(&mut out)?;
        assert!(Instant::now() < deadline, "no completion and no error");
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(out)
}

fn cid_of(capsule: &[u8]) -> u16 {
    u16::from_le_bytes([capsule[10], capsule[11]])
}

fn c2h(cid: u16, offset: u32, data: &[u8], flags: u8, digests: Digests) -> Vec<u8> {
    let dh = DataHeader { cccid: cid, ttag: 0, offset, length: data.len() as u32 };
    let mut p = dh.data_pdu_header(pdu_type::C2H_DATA, flags, digests);
    p.extend_from_slice(data);
    if digests.data {
        p.extend_from_slice(&data_digest([data]).to_le_bytes());
    }
    p
}

fn resp(cid: u16, digests: Digests) -> Vec<u8> {
    capsule_resp(&Completion { cid, status: Status::SUCCESS, ..Default::default() }, digests)
}

#[test]
fn reads_and_writes_flow_with_and_without_digests() {
    for digests in [Digests::default(), Digests { header: true, data: true }] {
        let payload: Vec<u8> = (0..12288u32).map(|i| (i % 251) as u8).collect();
        let expect = payload.clone();
        let (addr, h) = target(digests, move |s, d| {
            // A small write comes in the capsule.
            let w = read_pdu(s, d);
            let hl = CAPSULE_CMD_HLEN + if d.header { 4 } else { 0 };
            assert_eq!(&w[hl..hl + 512], &expect[..512]);
            s.write_all(&resp(cid_of(&w), d)).unwrap();
            // A large one waits for an R2T and comes as H2CData of at most MAXH2CDATA.
            let w = read_pdu(s, d);
            assert_eq!(w.len(), hl, "no data in the capsule");
            let cid = cid_of(&w);
            s.write_all(&DataHeader { cccid: cid, ttag: 9, offset: 0, length: 12288 }.r2t(d)).unwrap();
            let dl = DATA_HLEN + if d.header { 4 } else { 0 };
            let mut got = Vec::new();
            for i in 0..3 {
                let p = read_pdu(s, d);
                let dh = DataHeader::parse(&p);
                assert_eq!((dh.cccid, dh.ttag, dh.offset, dh.length), (cid, 9, i * 4096, 4096));
                assert_eq!(p[1] & flag::LAST_PDU != 0, i == 2);
                got.extend_from_slice(&p[dl..dl + 4096]);
            }
            assert!(got == expect);
            s.write_all(&resp(cid, d)).unwrap();
            // A read answered in two C2HData PDUs, the last with SUCCESS.
            let r = read_pdu(s, d);
            let cid = cid_of(&r);
            s.write_all(&c2h(cid, 0, &expect[..3000], 0, d)).unwrap();
            s.write_all(&c2h(cid, 3000, &expect[3000..8192], flag::LAST_PDU | flag::SUCCESS, d)).unwrap();
            let _ = s.read_to_end(&mut Vec::new());
        });
        let mut qp = TcpQpair::connect(config(addr, digests)).unwrap();
        qp.submit_owned(Command::new(io::WRITE, 0), Dir::ToCtrlr, payload[..512].to_vec(), 1).unwrap();
        assert_eq!(run(&mut qp, 1).unwrap()[0].tag, 1);
        assert_eq!(qp.cntlid(), CNTLID);
        qp.submit_owned(Command::new(io::WRITE, 0), Dir::ToCtrlr, payload.clone(), 2).unwrap();
        assert_eq!(run(&mut qp, 1).unwrap()[0].tag, 2);
        let mut buf = vec![0u8; 8192 + 16];
        let seg = Seg { ptr: buf.as_mut_ptr(), len: 8192 };
        // SAFETY: `buf` outlives the command, which completes below.
        unsafe { qp.submit_segs(Command::new(io::READ, 0), Dir::FromCtrlr, &[seg], 3).unwrap() };
        let c = run(&mut qp, 1).unwrap();
        assert_eq!((c[0].tag, c[0].cpl.status), (3, Status::SUCCESS));
        assert!(buf[..8192] == payload[..8192]);
        drop(qp);
        h.join().unwrap();
    }
}

/// Every response of several reads in one stream, cut at points that fall inside PDUs (a
/// header, a data segment), twice over: the receive buffer's cursor and the partial PDU it
/// keeps must deliver each read's data whole and in place.
#[test]
fn responses_cut_anywhere_in_one_stream_all_complete() {
    let blocks: Vec<Vec<u8>> =
        (0..3u8).map(|i| (0..4096u32).map(|b| (b as u8).wrapping_mul(7) ^ i).collect()).collect();
    let expect = blocks.clone();
    let (addr, h) = target(Digests::default(), move |s, d| {
        for _round in 0..2 {
            let cids: Vec<u16> = (0..3).map(|_| cid_of(&read_pdu(s, d))).collect();
            let mut stream = Vec::new();
            for (i, &cid) in cids.iter().enumerate() {
                stream.extend_from_slice(&c2h(cid, 0, &expect[i][..1000], 0, d));
                stream.extend_from_slice(&c2h(cid, 1000, &expect[i][1000..], flag::LAST_PDU, d));
                stream.extend_from_slice(&resp(cid, d));
            }
            // Inside the first header, inside a data segment, inside the second C2HData's
            // header, inside the second read's data. The pauses let the host read each piece
            // on its own (more likely, not required: any split must work).
            for cut in [0, 5, 3000, 4200, 9000, stream.len()].windows(2) {
                s.write_all(&stream[cut[0]..cut[1]]).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = s.read_to_end(&mut Vec::new());
    });
    let mut qp = TcpQpair::connect(config(addr, Digests::default())).unwrap();
    for _round in 0..2 {
        let mut bufs: Vec<Vec<u8>> = (0..3).map(|_| vec![0u8; 4096]).collect();
        for (i, b) in bufs.iter_mut().enumerate() {
            let seg = Seg { ptr: b.as_mut_ptr(), len: 4096 };
            // SAFETY: `bufs` outlives the commands, which complete below.
            unsafe { qp.submit_segs(Command::new(io::READ, 0), Dir::FromCtrlr, &[seg], i as u64).unwrap() };
        }
        let mut done = run(&mut qp, 3).unwrap();
        done.sort_by_key(|c| c.tag);
        assert_eq!(
            done.iter().map(|c| (c.tag, c.cpl.status)).collect::<Vec<_>>(),
            (0..3).map(|t| (t, Status::SUCCESS)).collect::<Vec<_>>()
        );
        assert!(bufs == blocks, "every read's data whole and in place");
    }
    drop(qp);
    h.join().unwrap();
}

/// Submits a 4096-byte read, lets the target answer with `hostile` (given the read's CID),
/// and returns the error the queue pair failed with, checking the bytes after the buffer.
fn hostile(digests: Digests, hostile: impl FnOnce(u16, Digests) -> Vec<u8> + Send + 'static) -> HostError {
    let (addr, h) = target(digests, move |s, d| {
        let r = read_pdu(s, d);
        let pdu = hostile(cid_of(&r), d);
        if pdu.is_empty() {
            let _ = s.shutdown(std::net::Shutdown::Both);
            return;
        }
        let _ = s.write_all(&pdu);
        // Whatever the host says next (a termination request, or nothing) then EOF.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let mut qp = TcpQpair::connect(config(addr, digests)).unwrap();
    let mut buf = vec![0xeeu8; 4096 + 4096];
    let seg = Seg { ptr: buf.as_mut_ptr(), len: 4096 };
    // SAFETY: `buf` outlives the queue pair's use of it (the queue pair fails below and is
    // drained before `buf` goes).
    unsafe { qp.submit_segs(Command::new(io::READ, 0), Dir::FromCtrlr, &[seg], 1).unwrap() };
    let e = run(&mut qp, 1).expect_err("hostile input must fail the queue pair");
    assert_eq!(qp.poll(&mut Vec::new()).unwrap_err(), e, "a failed queue pair stays failed");
    assert_eq!(qp.take_unfinished(), [1], "the read is handed back unfinished");
    assert!(buf[4096..].iter().all(|&b| b == 0xee), "written beyond the command's buffer");
    drop(qp);
    h.join().unwrap();
    e
}

#[test]
fn hostile_targets_fail_the_queue_pair() {
    let none = Digests::default();
    let both = Digests { header: true, data: true };
    // Data beyond the buffer, at the wrong offset, for an unknown command.
    let e = hostile(none, |cid, d| c2h(cid, 2048, &[1; 4096], 0, d));
    assert!(matches!(e, HostError::Unexpected(_)), "{e}");
    let e = hostile(none, |cid, d| c2h(cid, 512, &[1; 512], 0, d));
    assert!(matches!(e, HostError::Unexpected(_)), "{e}");
    let e = hostile(none, |cid, d| c2h(cid ^ 1, 0, &[1; 512], 0, d));
    assert!(matches!(e, HostError::Unexpected(_)), "{e}");
    // A response for a command never sent; an R2T for a read; SUCCESS before the end.
    let e = hostile(none, |cid, d| resp(cid + 1, d));
    assert!(matches!(e, HostError::Unexpected(_)), "{e}");
    let e = hostile(none, |cid, d| DataHeader { cccid: cid, ttag: 1, offset: 0, length: 4096 }.r2t(d));
    assert!(matches!(e, HostError::Unexpected(_)), "{e}");
    let e = hostile(none, |cid, d| c2h(cid, 0, &[1; 1024], flag::LAST_PDU | flag::SUCCESS, d));
    assert!(matches!(e, HostError::Unexpected(_)), "{e}");
    // Lengths: a PDU larger than any buffer, a header length that is not the type's, an
    // unknown PDU type, a host-to-controller type.
    let e = hostile(none, |cid, d| {
        let mut p = c2h(cid, 0, &[1; 16], 0, d);
        p[4..8].copy_from_slice(&(1u32 << 30).to_le_bytes());
        p
    });
    assert!(matches!(e, HostError::Protocol(TermError { fes: 5, .. })), "{e}");
    let e = hostile(none, |cid, d| {
        let mut p = resp(cid, d);
        p[2] = 30;
        p
    });
    assert_eq!(e, HostError::Protocol(TermError::field(2)));
    let e = hostile(none, |cid, d| {
        let mut p = resp(cid, d);
        p[0] = 0x0b;
        p
    });
    assert_eq!(e, HostError::Protocol(TermError::field(0)));
    let e = hostile(none, |cid, d| {
        let mut p = c2h(cid, 0, &[1; 16], 0, d);
        p[0] = pdu_type::H2C_DATA;
        p
    });
    assert_eq!(e, HostError::Protocol(TermError::field(0)));
    // Digests: a bad header digest, a bad data digest, a PDU without the negotiated digest.
    let e = hostile(both, |cid, d| {
        let mut p = resp(cid, d);
        p[24] ^= 1;
        p
    });
    assert!(matches!(e, HostError::Protocol(TermError { fes: 3, .. })), "{e}");
    let e = hostile(both, |cid, d| {
        let mut p = c2h(cid, 0, &[1; 512], 0, d);
        let n = p.len();
        p[n - 1] ^= 1;
        p
    });
    assert!(matches!(e, HostError::DataDigest { .. }), "{e}");
    let e = hostile(both, |cid, _| resp(cid, Digests::default()));
    assert_eq!(e, HostError::Protocol(TermError::field(1)));
    // A termination request, and a target that just closes.
    let e = hostile(none, |_, _| TermReq::build(pdu_type::C2H_TERM_REQ, TermError::field(9), &[0; 8]));
    assert_eq!(e, HostError::Terminated { fes: 1, fei: 9 });
    let e = hostile(none, |_, _| Vec::new());
    assert_eq!(e, HostError::Closed);
}

#[test]
fn a_bad_icresp_or_a_refused_connect_fails_the_connection() {
    for (resp, want) in [
        (IcResp { pfv: 0, cpda: 0, digests: Digests { header: true, data: false }, maxh2cdata: 4096 }, "digests"),
        (IcResp { pfv: 1, cpda: 0, digests: Digests::default(), maxh2cdata: 4096 }, "PFV"),
        (IcResp { pfv: 0, cpda: 0, digests: Digests::default(), maxh2cdata: 4094 }, "MAXH2CDATA"),
    ] {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            read_pdu(&mut s, Digests::default());
            s.write_all(&resp.build()).unwrap();
            let _ = s.read_to_end(&mut Vec::new());
        });
        let mut qp = TcpQpair::connect(config(addr, Digests::default())).unwrap();
        match run(&mut qp, 1) {
            Err(HostError::IcResp(m)) => assert!(m.contains(want), "{m}"),
            other => panic!("{other:?}"),
        }
        drop(qp);
        h.join().unwrap();
    }
    // Connect refused (an unknown subsystem): the status comes back as the error.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        read_pdu(&mut s, Digests::default());
        s.write_all(&IcResp { pfv: 0, cpda: 0, digests: Digests::default(), maxh2cdata: 4096 }.build()).unwrap();
        let c = read_pdu(&mut s, Digests::default());
        let st = Status::command(crate::spec::csc::CONNECT_INVALID_PARAMETERS).dnr();
        let cpl = Completion { cid: cid_of(&c), status: st, dw0: 0x10100, ..Default::default() };
        s.write_all(&capsule_resp(&cpl, Digests::default())).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    });
    let mut qp = TcpQpair::connect(config(addr, Digests::default())).unwrap();
    assert!(matches!(run(&mut qp, 1), Err(HostError::ConnectRefused { dw0: 0x10100, .. })));
    drop(qp);
    h.join().unwrap();
}

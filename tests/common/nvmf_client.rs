//! A small raw NVMe/TCP host for tests, on `ferry_nvme::tcp`: ICReq, fabrics Connect,
//! Property Get/Set, Read and Write (in-capsule or by R2T with H2CData of any size), and raw
//! bytes for hostile cases. Every PDU received is checked as a host would (layout, header and
//! data digests).

#![allow(dead_code)]

use ferry_nvme::spec::{admin, fabrics, io, put16, put32, put_nul_padded, Command, Completion, SglDescriptor, Status};
use ferry_nvme::tcp::{
    capsule_cmd_header, capsule_resp_cqe, check_header_digest, data_digest, flag, pdu_type, DataHeader, Digests, IcReq,
    IcResp, Layout, Side, TermReq,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The host NQN tests connect as.
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";

/// A received PDU.
#[derive(Debug)]
pub enum Pdu {
    /// ICResp and its raw 128 bytes.
    IcResp(IcResp, Vec<u8>),
    /// A response capsule.
    Resp(Completion),
    /// C2HData: header, flags, data.
    C2HData(DataHeader, u8, Vec<u8>),
    /// R2T.
    R2T(DataHeader),
    /// C2HTermReq.
    Term(TermReq),
}

/// One host connection.
pub struct Host {
    pub sock: TcpStream,
    pub digests: Digests,
    pub maxh2cdata: u32,
}

impl Host {
    /// Connects to `addr` (no ICReq yet).
    pub fn tcp(addr: SocketAddr) -> Host {
        let sock = TcpStream::connect(addr).expect("connect to the target");
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        sock.set_nodelay(true).unwrap();
        Host { sock, digests: Digests::default(), maxh2cdata: 0 }
    }

    /// Connects and exchanges ICReq/ICResp asking for `digests`.
    pub fn new(addr: SocketAddr, digests: Digests) -> Host {
        let mut h = Host::tcp(addr);
        let resp = h.ic(digests);
        assert_eq!(resp.digests, digests, "the digests granted are those asked");
        h
    }

    /// Sends raw bytes.
    pub fn send(&mut self, b: &[u8]) {
        self.sock.write_all(b).expect("send");
    }

    /// ICReq, ICResp.
    pub fn ic(&mut self, digests: Digests) -> IcResp {
        self.send(&IcReq { pfv: 0, hpda: 0, digests, maxr2t: 0 }.build());
        match self.recv() {
            Pdu::IcResp(r, _) => {
                self.digests = r.digests;
                self.maxh2cdata = r.maxh2cdata;
                r
            }
            other => panic!("expected ICResp, got {other:?}"),
        }
    }

    /// Reads one PDU (panics on EOF, a bad layout or a bad digest).
    pub fn recv(&mut self) -> Pdu {
        self.try_recv().unwrap_or_else(|e| panic!("receiving a PDU: {e}"))
    }

    /// Reads one PDU.
    pub fn try_recv(&mut self) -> std::io::Result<Pdu> {
        let mut ch = [0u8; 8];
        self.sock.read_exact(&mut ch)?;
        // Before ICResp no digests apply; the codec exempts IC and termination PDUs anyway.
        let plen = u32::from_le_bytes(ch[4..8].try_into().unwrap()) as usize;
        let mut pdu = ch.to_vec();
        pdu.resize(plen.max(8), 0);
        self.sock.read_exact(&mut pdu[8..])?;
        let l = Layout::parse(&pdu, Side::Host, self.digests, 16 << 20)
            .unwrap_or_else(|e| panic!("the target sent a bad PDU {:?}: {e}", &pdu[..8]));
        check_header_digest(&pdu, &l).expect("header digest of a PDU from the target");
        let data = pdu[l.data_offset..l.data_offset + l.data_len].to_vec();
        if l.data_digest {
            let want = u32::from_le_bytes(pdu[l.data_offset + l.data_len..][..4].try_into().unwrap());
            assert_eq!(data_digest([&data[..]]), want, "data digest of a PDU from the target");
        }
        Ok(match l.ch.pdu_type {
            pdu_type::IC_RESP => Pdu::IcResp(IcResp::parse(&pdu), pdu),
            pdu_type::CAPSULE_RESP => Pdu::Resp(capsule_resp_cqe(&pdu)),
            pdu_type::C2H_DATA => Pdu::C2HData(DataHeader::parse(&pdu), l.ch.flags, data),
            pdu_type::R2T => Pdu::R2T(DataHeader::parse(&pdu)),
            pdu_type::C2H_TERM_REQ => Pdu::Term(TermReq::parse(&pdu, &l)),
            t => panic!("unexpected PDU type {t}"),
        })
    }

    /// Reads a response capsule.
    pub fn resp(&mut self) -> Completion {
        match self.recv() {
            Pdu::Resp(c) => c,
            other => panic!("expected a response capsule, got {other:?}"),
        }
    }

    /// Reads an R2T.
    pub fn r2t(&mut self) -> DataHeader {
        match self.recv() {
            Pdu::R2T(h) => h,
            other => panic!("expected an R2T, got {other:?}"),
        }
    }

    /// Expects a C2HTermReq and then the connection closed by the target.
    pub fn expect_term(&mut self) -> TermReq {
        let t = loop {
            match self.recv() {
                Pdu::Term(t) => break t,
                // Responses to commands sent before the offending PDU may come first.
                Pdu::Resp(_) | Pdu::R2T(_) | Pdu::C2HData(..) => continue,
                other => panic!("expected a termination request, got {other:?}"),
            }
        };
        self.expect_closed();
        t
    }

    /// Expects the target to close (EOF or reset) within the read timeout.
    pub fn expect_closed(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("waiting for the target to close: {e}"),
            }
            assert!(Instant::now() < deadline, "the target did not close the connection");
        }
    }

    /// The bytes of a command capsule carrying `data` in capsule.
    pub fn capsule(&self, cmd: &Command, data: &[u8]) -> Vec<u8> {
        capsule_bytes(cmd, data, self.digests)
    }

    /// Sends a command capsule with `data` in capsule.
    pub fn send_cmd(&mut self, cmd: &Command, data: &[u8]) {
        let b = self.capsule(cmd, data);
        self.send(&b);
    }

    /// The bytes of an H2CData PDU.
    pub fn h2c(&self, cccid: u16, ttag: u16, offset: u32, data: &[u8], last: bool) -> Vec<u8> {
        let h = DataHeader { cccid, ttag, offset, length: data.len() as u32 };
        let mut b = h.data_pdu_header(pdu_type::H2C_DATA, if last { flag::LAST_PDU } else { 0 }, self.digests);
        b.extend_from_slice(data);
        if self.digests.data {
            b.extend_from_slice(&data_digest([data]).to_le_bytes());
        }
        b
    }

    /// A fabrics Connect: returns its completion.
    pub fn connect(&mut self, cid: u16, subnqn: &str, qid: u16, sqsize: u16, cntlid: u16, cattr: u8) -> Completion {
        let (cmd, data) = connect_cmd(cid, subnqn, qid, sqsize, cntlid, cattr);
        self.send_cmd(&cmd, &data);
        self.resp()
    }

    /// Property Set.
    pub fn property_set(&mut self, cid: u16, offset: u32, value: u64, size8: bool) -> Completion {
        let mut cmd = Command::new(admin::FABRICS, cid);
        cmd.0[4] = fabrics::PROPERTY_SET;
        cmd.0[fabrics::PROPERTY_ATTRIB] = size8 as u8;
        put32(&mut cmd.0, fabrics::PROPERTY_OFFSET, offset);
        cmd.0[fabrics::PROPERTY_VALUE..fabrics::PROPERTY_VALUE + 8].copy_from_slice(&value.to_le_bytes());
        self.send_cmd(&cmd, &[]);
        self.resp()
    }

    /// Property Get.
    pub fn property_get(&mut self, cid: u16, offset: u32, size8: bool) -> Completion {
        let mut cmd = Command::new(admin::FABRICS, cid);
        cmd.0[4] = fabrics::PROPERTY_GET;
        cmd.0[fabrics::PROPERTY_ATTRIB] = size8 as u8;
        put32(&mut cmd.0, fabrics::PROPERTY_OFFSET, offset);
        self.send_cmd(&cmd, &[]);
        self.resp()
    }

    /// Reads `nlb` blocks; returns the data (all C2HData PDUs, checked in order) and the
    /// completion (None when the last C2HData carried SUCCESS), and how many C2HData PDUs.
    pub fn read(
        &mut self,
        cid: u16,
        nsid: u32,
        slba: u64,
        nlb: u32,
        bs: usize,
    ) -> (Vec<u8>, Option<Completion>, usize) {
        self.send_cmd(&rw_cmd(io::READ, cid, nsid, slba, nlb, SglDescriptor::transport(nlb * bs as u32)), &[]);
        let mut data = Vec::new();
        let mut pdus = 0;
        loop {
            match self.recv() {
                Pdu::C2HData(h, flags, d) => {
                    assert_eq!(h.cccid, cid);
                    assert_eq!(h.offset as usize, data.len(), "C2HData in order");
                    data.extend_from_slice(&d);
                    pdus += 1;
                    if flags & flag::SUCCESS != 0 {
                        assert!(flags & flag::LAST_PDU != 0, "SUCCESS only on the last PDU");
                        return (data, None, pdus);
                    }
                }
                Pdu::Resp(c) => {
                    assert_eq!(c.cid, cid);
                    return (data, Some(c), pdus);
                }
                other => panic!("unexpected {other:?} during a read"),
            }
        }
    }

    /// Writes `data` in the capsule.
    pub fn write_in_capsule(&mut self, cid: u16, nsid: u32, slba: u64, data: &[u8], bs: usize) -> Completion {
        let nlb = (data.len() / bs) as u32;
        self.send_cmd(&rw_cmd(io::WRITE, cid, nsid, slba, nlb, SglDescriptor::in_capsule(0, data.len() as u32)), data);
        self.resp()
    }

    /// Writes `data` by R2T, sending H2CData PDUs of at most `chunk` bytes.
    pub fn write_r2t(&mut self, cid: u16, nsid: u32, slba: u64, data: &[u8], bs: usize, chunk: usize) -> Completion {
        let nlb = (data.len() / bs) as u32;
        self.send_cmd(&rw_cmd(io::WRITE, cid, nsid, slba, nlb, SglDescriptor::transport(data.len() as u32)), &[]);
        let r2t = self.r2t();
        assert_eq!((r2t.cccid, r2t.offset, r2t.length as usize), (cid, 0, data.len()));
        let chunk = chunk.min(self.maxh2cdata as usize);
        let mut off = 0;
        while off < data.len() {
            let n = chunk.min(data.len() - off);
            let b = self.h2c(cid, r2t.ttag, off as u32, &data[off..off + n], off + n == data.len());
            self.send(&b);
            off += n;
        }
        self.resp()
    }
}

/// The bytes of a command capsule carrying `data` in capsule, with `digests`.
pub fn capsule_bytes(cmd: &Command, data: &[u8], digests: Digests) -> Vec<u8> {
    let mut b = capsule_cmd_header(cmd, data.len(), digests);
    b.extend_from_slice(data);
    if digests.data && !data.is_empty() {
        b.extend_from_slice(&data_digest([data]).to_le_bytes());
    }
    b
}

/// A Connect command and its data.
pub fn connect_cmd(cid: u16, subnqn: &str, qid: u16, sqsize: u16, cntlid: u16, cattr: u8) -> (Command, Vec<u8>) {
    let mut cmd = Command::new(admin::FABRICS, cid);
    cmd.0[4] = fabrics::CONNECT;
    put16(&mut cmd.0, fabrics::CONNECT_QID, qid);
    put16(&mut cmd.0, fabrics::CONNECT_SQSIZE, sqsize);
    cmd.0[fabrics::CONNECT_CATTR] = cattr;
    put32(&mut cmd.0, fabrics::CONNECT_KATO, if qid == 0 { 30_000 } else { 0 });
    cmd.set_sgl(&SglDescriptor::in_capsule(0, fabrics::CONNECT_DATA_LEN as u32));
    let mut data = vec![0u8; fabrics::CONNECT_DATA_LEN];
    data[..16].copy_from_slice(&[0x11; 16]);
    put16(&mut data, fabrics::CONNECT_DATA_CNTLID, cntlid);
    put_nul_padded(&mut data[fabrics::CONNECT_DATA_SUBNQN..fabrics::CONNECT_DATA_SUBNQN + 256], subnqn);
    put_nul_padded(&mut data[fabrics::CONNECT_DATA_HOSTNQN..fabrics::CONNECT_DATA_HOSTNQN + 256], HOSTNQN);
    (cmd, data)
}

/// A Read or Write command.
pub fn rw_cmd(opcode: u8, cid: u16, nsid: u32, slba: u64, nlb: u32, sgl: SglDescriptor) -> Command {
    let mut cmd = Command::new(opcode, cid);
    cmd.set_nsid(nsid);
    cmd.set_slba(slba);
    cmd.set_cdw12(nlb - 1);
    cmd.set_sgl(&sgl);
    cmd
}

/// Whether a completion succeeded.
pub fn ok(c: &Completion) -> bool {
    c.status == Status::SUCCESS
}

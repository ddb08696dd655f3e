//! A small iSCSI initiator for tests: real TCP, real PDUs, every field in reach, so tests can
//! both drive the target the way initiators do and send it what no sane initiator would.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A PDU as received: the 48-byte header and the data segment (digests checked, padding cut).
#[derive(Debug, Clone)]
pub struct Pdu {
    /// The basic header segment.
    pub bhs: [u8; 48],
    /// The data segment.
    pub data: Vec<u8>,
}

impl Pdu {
    /// The opcode.
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    /// The big-endian u32 at `off`.
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes(self.bhs[off..off + 4].try_into().unwrap())
    }
    /// ITT.
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
    /// Byte 1.
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }
}

/// CRC32C as iSCSI sends it.
pub fn digest(parts: &[&[u8]]) -> [u8; 4] {
    let mut crc = 0;
    for p in parts {
        crc = crc32c::crc32c_append(crc, p);
    }
    crc.to_le_bytes()
}

/// The outcome of a SCSI command.
#[derive(Debug, Clone, Default)]
pub struct ScsiResult {
    /// SCSI status.
    pub status: u8,
    /// Sense data (without the 2-byte length).
    pub sense: Vec<u8>,
    /// Data-In received, in buffer order.
    pub data: Vec<u8>,
    /// Response flags (O/U bits).
    pub flags: u8,
    /// Residual count.
    pub residual: u32,
    /// R2Ts received.
    pub r2ts: u32,
}

/// One connection.
pub struct Initiator {
    /// The socket.
    pub s: TcpStream,
    /// Header digests on, after login.
    pub hd: bool,
    /// Data digests on, after login.
    pub dd: bool,
    /// Next CmdSN.
    pub cmd_sn: u32,
    /// Next expected StatSN.
    pub exp_stat_sn: u32,
    /// Next ITT.
    pub itt: u32,
    /// The target's MaxRecvDataSegmentLength (what we may send per PDU).
    pub target_mrdsl: usize,
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH after login.
    pub tsih: u16,
    /// Keys the target answered in the last login.
    pub answered: Vec<(String, String)>,
    /// FirstBurstLength / ImmediateData / InitialR2T as negotiated.
    pub first_burst: usize,
    /// Immediate data allowed.
    pub immediate_data: bool,
    /// Unsolicited Data-Out not allowed.
    pub initial_r2t: bool,
}

/// Login failure: status class and detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginStatus(pub u8, pub u8);

/// Builds `key=value\0...`.
pub fn keys(kv: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in kv {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// Parses `key=value\0...`.
pub fn parse_keys(data: &[u8]) -> Vec<(String, String)> {
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let t = String::from_utf8_lossy(s);
            match t.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (t.to_string(), String::new()),
            }
        })
        .collect()
}

impl Initiator {
    /// Connects.
    pub fn connect(addr: SocketAddr) -> Initiator {
        let s = TcpStream::connect(addr).expect("connect to the portal");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Initiator {
            s,
            hd: false,
            dd: false,
            cmd_sn: 1,
            exp_stat_sn: 0,
            itt: 1,
            target_mrdsl: 8192,
            // A new ISID per connection (a new I_T nexus), as libiscsi does; tests that
            // reinstate a session copy the old one's.
            isid: {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_be_bytes();
                [0x80, 0x12, n[0], n[1], n[2], n[3]]
            },
            tsih: 0,
            answered: Vec::new(),
            first_burst: 65536,
            immediate_data: true,
            initial_r2t: true,
        }
    }

    /// Sends a raw PDU (header as given; DataSegmentLength set from `data`; digests as on).
    pub fn send(&mut self, mut bhs: [u8; 48], data: &[u8]) {
        let len = (data.len() as u32).to_be_bytes();
        bhs[5..8].copy_from_slice(&len[1..4]);
        self.send_exact(&bhs, data);
    }

    /// Sends a header as given (even a lying DataSegmentLength) and `data`, with digests.
    pub fn send_exact(&mut self, bhs: &[u8; 48], data: &[u8]) {
        let mut v = bhs.to_vec();
        if self.hd {
            v.extend_from_slice(&digest(&[bhs]));
        }
        let start = v.len();
        v.extend_from_slice(data);
        v.resize(v.len() + (4 - data.len() % 4) % 4, 0);
        if self.dd && !data.is_empty() {
            let d = digest(&[&v[start..]]);
            v.extend_from_slice(&d);
        }
        self.s.write_all(&v).expect("send a PDU");
    }

    /// Receives one PDU (panics on a digest mismatch or a closed connection).
    pub fn recv(&mut self) -> Pdu {
        self.try_recv().expect("a PDU from the target")
    }

    /// Receives one PDU, or the error that stopped it (EOF, timeout).
    pub fn try_recv(&mut self) -> std::io::Result<Pdu> {
        let mut bhs = [0u8; 48];
        self.s.read_exact(&mut bhs)?;
        let ahs = bhs[4] as usize * 4;
        let mut skip = vec![0u8; ahs];
        self.s.read_exact(&mut skip)?;
        if self.hd {
            let mut d = [0u8; 4];
            self.s.read_exact(&mut d)?;
            assert_eq!(d, digest(&[&bhs, &skip]), "header digest from the target");
        }
        let len = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        let mut data = vec![0u8; len + (4 - len % 4) % 4];
        self.s.read_exact(&mut data)?;
        if self.dd && len > 0 {
            let mut d = [0u8; 4];
            self.s.read_exact(&mut d)?;
            assert_eq!(d, digest(&[&data]), "data digest from the target");
        }
        data.truncate(len);
        Ok(Pdu { bhs, data })
    }

    fn next_itt(&mut self) -> u32 {
        let i = self.itt;
        self.itt += 1;
        i
    }

    /// A login request header.
    pub fn login_bhs(&mut self, transit: bool, csg: u8, nsg: u8) -> [u8; 48] {
        let mut b = [0u8; 48];
        b[0] = 0x43; // immediate + login
        b[1] = if transit { 0x80 } else { 0 } | (csg << 2) | nsg;
        b[8..14].copy_from_slice(&self.isid);
        b[14..16].copy_from_slice(&self.tsih.to_be_bytes());
        b[16..20].copy_from_slice(&1u32.to_be_bytes()); // ITT
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        b
    }

    /// One login exchange; returns the response.
    pub fn login_step(&mut self, transit: bool, csg: u8, nsg: u8, kv: &[(&str, &str)]) -> Pdu {
        let b = self.login_bhs(transit, csg, nsg);
        self.send(b, &keys(kv));
        let r = self.recv();
        self.exp_stat_sn = r.u32_at(24).wrapping_add(1);
        r
    }

    /// A whole login without authentication, straight to full feature phase, offering
    /// `extra` keys besides the basics. Ok with the negotiated keys or the failure status.
    pub fn login(&mut self, initiator: &str, target: Option<&str>, extra: &[(&str, &str)]) -> Result<(), LoginStatus> {
        let mut kv: Vec<(&str, &str)> = vec![("InitiatorName", initiator)];
        match target {
            Some(t) => {
                kv.push(("SessionType", "Normal"));
                kv.push(("TargetName", t));
            }
            None => kv.push(("SessionType", "Discovery")),
        }
        kv.push(("AuthMethod", "None"));
        let r = self.login_step(true, 0, 1, &kv);
        if r.bhs[36] != 0 {
            return Err(LoginStatus(r.bhs[36], r.bhs[37]));
        }
        let mut answered = parse_keys(&r.data);
        // Operational stage.
        let mut op: Vec<(&str, &str)> = vec![
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "65536"),
            ("ImmediateData", "Yes"),
            ("InitialR2T", "Yes"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "65536"),
            ("MaxOutstandingR2T", "1"),
            ("ErrorRecoveryLevel", "0"),
        ];
        for (k, v) in extra {
            op.retain(|(ok, _)| ok != k);
            op.push((k, v));
        }
        let (cur, next) = if r.bhs[1] & 0x80 != 0 && r.bhs[1] & 3 == 1 { (1, 3) } else { (0, 1) };
        let r = self.login_step(true, cur, next, &op);
        if r.bhs[36] != 0 {
            return Err(LoginStatus(r.bhs[36], r.bhs[37]));
        }
        answered.extend(parse_keys(&r.data));
        let mut r = r;
        // Some targets take one more round to reach full feature phase.
        while r.bhs[1] & 0x83 != 0x83 {
            r = self.login_step(true, 1, 3, &[]);
            if r.bhs[36] != 0 {
                return Err(LoginStatus(r.bhs[36], r.bhs[37]));
            }
            answered.extend(parse_keys(&r.data));
        }
        self.tsih = u16::from_be_bytes([r.bhs[14], r.bhs[15]]);
        let get = |k: &str| answered.iter().rev().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        self.hd = get("HeaderDigest").as_deref() == Some("CRC32C");
        self.dd = get("DataDigest").as_deref() == Some("CRC32C");
        // (Session-wide keys answered "Irrelevant" on a connection joining a session keep
        // their values.)
        if let Some(v) = get("MaxRecvDataSegmentLength").and_then(|v| v.parse().ok()) {
            self.target_mrdsl = v;
        }
        if let Some(v) = get("FirstBurstLength").and_then(|v| v.parse().ok()) {
            self.first_burst = v;
        }
        self.immediate_data = get("ImmediateData").as_deref() != Some("No");
        self.initial_r2t = get("InitialR2T").as_deref() != Some("No");
        self.answered = answered;
        Ok(())
    }

    /// A SCSI command header.
    pub fn cmd_bhs(
        &mut self,
        lun: u64,
        cdb: &[u8],
        read: bool,
        write: bool,
        edtl: u32,
        final_: bool,
    ) -> ([u8; 48], u32) {
        let itt = self.next_itt();
        let mut b = [0u8; 48];
        b[0] = 0x01;
        b[1] = if final_ { 0x80 } else { 0 } | if read { 0x40 } else { 0 } | if write { 0x20 } else { 0 } | 1;
        b[8..16].copy_from_slice(&((lun & 0xff) << 48).to_be_bytes());
        b[16..20].copy_from_slice(&itt.to_be_bytes());
        b[20..24].copy_from_slice(&edtl.to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        b[32..32 + cdb.len().min(16)].copy_from_slice(&cdb[..cdb.len().min(16)]);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        (b, itt)
    }

    /// Runs one SCSI command to completion: immediate data, unsolicited Data-Out, R2Ts
    /// answered with Data-Out, Data-In gathered.
    pub fn scsi(&mut self, lun: u64, cdb: &[u8], read_len: u32, write: &[u8]) -> ScsiResult {
        let is_write = !write.is_empty();
        let edtl = if is_write { write.len() as u32 } else { read_len };
        let imm =
            if is_write && self.immediate_data { write.len().min(self.first_burst).min(self.target_mrdsl) } else { 0 };
        let unsolicited = is_write && !self.initial_r2t && imm < write.len().min(self.first_burst);
        let (b, itt) = self.cmd_bhs(lun, cdb, !is_write && read_len > 0, is_write, edtl, !unsolicited);
        self.send(b, &write[..imm]);
        if unsolicited {
            let end = write.len().min(self.first_burst);
            self.send_data_out(itt, 0xffff_ffff, imm, &write[imm..end], 0);
        }
        self.finish_command(itt, write)
    }

    /// Sends one burst as Data-Out PDUs of at most the target's MRDSL, F on the last.
    pub fn send_data_out(&mut self, itt: u32, ttt: u32, offset: usize, data: &[u8], first_datasn: u32) {
        let mut sn = first_datasn;
        let mut off = 0;
        while off < data.len() {
            let len = (data.len() - off).min(self.target_mrdsl);
            let mut b = [0u8; 48];
            b[0] = 0x05;
            b[1] = if off + len == data.len() { 0x80 } else { 0 };
            b[16..20].copy_from_slice(&itt.to_be_bytes());
            b[20..24].copy_from_slice(&ttt.to_be_bytes());
            b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
            b[36..40].copy_from_slice(&sn.to_be_bytes());
            b[40..44].copy_from_slice(&((offset + off) as u32).to_be_bytes());
            self.send(b, &data[off..off + len]);
            sn += 1;
            off += len;
        }
    }

    /// Waits for the end of command `itt`, answering R2Ts from `write`.
    pub fn finish_command(&mut self, itt: u32, write: &[u8]) -> ScsiResult {
        let mut res = ScsiResult::default();
        loop {
            let p = self.recv();
            match p.opcode() {
                0x31 if p.itt() == itt => {
                    let (ttt, off, len) = (p.u32_at(20), p.u32_at(40) as usize, p.u32_at(44) as usize);
                    res.r2ts += 1;
                    let chunk = write[off..off + len].to_vec();
                    self.send_data_out(itt, ttt, off, &chunk, 0);
                }
                0x25 if p.itt() == itt => {
                    let off = p.u32_at(40) as usize;
                    if res.data.len() < off + p.data.len() {
                        res.data.resize(off + p.data.len(), 0);
                    }
                    res.data[off..off + p.data.len()].copy_from_slice(&p.data);
                    if p.flags() & 0x01 != 0 {
                        res.status = p.bhs[3];
                        res.flags = p.flags();
                        res.residual = p.u32_at(44);
                        self.exp_stat_sn = p.u32_at(24).wrapping_add(1);
                        return res;
                    }
                }
                0x21 if p.itt() == itt => {
                    res.status = p.bhs[3];
                    res.flags = p.flags();
                    res.residual = p.u32_at(44);
                    if p.data.len() >= 2 {
                        let n = u16::from_be_bytes([p.data[0], p.data[1]]) as usize;
                        res.sense = p.data[2..2 + n.min(p.data.len() - 2)].to_vec();
                    }
                    self.exp_stat_sn = p.u32_at(24).wrapping_add(1);
                    return res;
                }
                0x20 => {} // a ping from the target; tests answer explicitly when they care
                other => panic!("unexpected PDU {other:#x} while waiting for task {itt}: {p:?}"),
            }
        }
    }

    /// NOP-Out ping with `data`; returns the NOP-In.
    pub fn nop(&mut self, data: &[u8]) -> Pdu {
        let itt = self.next_itt();
        let mut b = [0u8; 48];
        b[0] = 0x40; // immediate NOP-Out
        b[1] = 0x80;
        b[16..20].copy_from_slice(&itt.to_be_bytes());
        b[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        self.send(b, data);
        let p = self.recv();
        self.exp_stat_sn = p.u32_at(24).wrapping_add(1);
        p
    }

    /// A text request; returns the whole answer (following C-bit continuations).
    pub fn text(&mut self, kv: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut all = Vec::new();
        let mut ttt = 0xffff_ffffu32;
        let itt = self.next_itt();
        let mut first = true;
        loop {
            let mut b = [0u8; 48];
            b[0] = 0x04;
            b[1] = 0x80;
            b[16..20].copy_from_slice(&itt.to_be_bytes());
            b[20..24].copy_from_slice(&ttt.to_be_bytes());
            b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
            b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
            self.send(b, &if first { keys(kv) } else { Vec::new() });
            first = false;
            let p = self.recv();
            assert_eq!(p.opcode(), 0x24, "a text response");
            self.exp_stat_sn = p.u32_at(24).wrapping_add(1);
            all.extend_from_slice(&p.data);
            if p.flags() & 0x40 == 0 {
                return parse_keys(&all);
            }
            ttt = p.u32_at(20);
        }
    }

    /// Logout (close the session); returns the response code.
    pub fn logout(&mut self) -> u8 {
        let itt = self.next_itt();
        let mut b = [0u8; 48];
        b[0] = 0x46;
        b[1] = 0x80;
        b[16..20].copy_from_slice(&itt.to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        self.send(b, &[]);
        let p = self.recv();
        assert_eq!(p.opcode(), 0x26, "a logout response");
        p.bhs[2]
    }

    /// A task management request; returns the response code.
    pub fn tmf(&mut self, function: u8, lun: u64, ref_itt: u32) -> u8 {
        let itt = self.next_itt();
        let mut b = [0u8; 48];
        b[0] = 0x42;
        b[1] = 0x80 | function;
        b[8..16].copy_from_slice(&((lun & 0xff) << 48).to_be_bytes());
        b[16..20].copy_from_slice(&itt.to_be_bytes());
        b[20..24].copy_from_slice(&ref_itt.to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        self.send(b, &[]);
        loop {
            let p = self.recv();
            if p.opcode() == 0x22 && p.itt() == itt {
                self.exp_stat_sn = p.u32_at(24).wrapping_add(1);
                return p.bhs[2];
            }
        }
    }

    /// Whether the target closed the connection (EOF within the read timeout).
    pub fn closed_by_target(&mut self) -> bool {
        loop {
            match self.try_recv() {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return true,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// READ(10) of `blocks` at `lba`.
pub fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// WRITE(10) of `blocks` at `lba`.
pub fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

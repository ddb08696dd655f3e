//! The NVMe/TCP target's receive path as a connection runs it: the fuzzer's bytes as a TCP
//! stream cut into PDUs by `nvmf::tcp::pdu::next` under the limits of the connection's state
//! (ICReq first, then the digests it asked for; limits the input picks), each PDU checked to
//! lie inside its bytes and its limits, its data digest checked, and what the connection
//! decodes from it decoded: ICReq fields, a capsule's command and SGL plan, an H2CData header
//! against an R2T window (the one a previous write capsule opened).

use super::Input;
use crate::nvme::DataDir;
use crate::nvmf::tcp::pdu::{self, Next, RecvLimits};
use crate::nvmf::tcp::{decode_sgl, SglPlan, Window};
use ferry_nvme::tcp::{capsule_cmd, pdu_type, DataHeader, Digests, IcReq, TermReq};

/// Input: a u16 in-capsule limit and a u16 MAXH2CDATA (both in units of 16 bytes), then the
/// stream. Returns the number of PDUs decoded past their framing.
pub fn nvmf_tcp_pdu(data: &[u8]) -> u64 {
    let mut input = Input(data);
    let capsule_data = input.u16() as usize * 16;
    let h2c_data = input.u16() as usize * 16;
    let stream = input.rest();
    let mut limits = RecvLimits { ic_done: false, digests: Digests::default(), capsule_data, h2c_data };
    let mut window: Option<Window> = None;
    let mut off = 0;
    let mut decoded = 0;
    while off < stream.len() {
        let buf = &stream[off..];
        let l = match pdu::next(buf, &limits) {
            Ok(Next::Pdu(l)) => l,
            Ok(Next::NeedMore(n)) => {
                assert!(n > buf.len() && n <= pdu::max_pdu(&limits), "a bounded wait for more");
                break;
            }
            // Terminated: the connection reads no more.
            Err(_) => break,
        };
        assert!(l.plen <= buf.len() && l.data_offset + l.data_len <= l.plen);
        let max = match l.ch.pdu_type {
            pdu_type::CAPSULE_CMD => capsule_data,
            pdu_type::H2C_DATA => h2c_data,
            pdu_type::H2C_TERM_REQ => ferry_nvme::tcp::TERM_REQ_MAX_DATA,
            _ => 0,
        };
        assert!(l.data_len <= max, "no data beyond the state's limit");
        let pdu = &buf[..l.plen];
        let _ = pdu::data_digest_ok(pdu, &l);
        match l.ch.pdu_type {
            pdu_type::IC_REQ => {
                let r = IcReq::parse(pdu);
                limits.ic_done = true;
                limits.digests = r.digests;
            }
            pdu_type::CAPSULE_CMD => {
                let cmd = capsule_cmd(pdu);
                let dir = DataDir::of(&cmd);
                if let Ok(plan) = decode_sgl(&cmd, dir, l.data_len, capsule_data, 1 << 20) {
                    match plan {
                        SglPlan::InCapsule(n) => assert_eq!(n as usize, l.data_len),
                        SglPlan::Transport(n) if dir == DataDir::ToController && n > 0 => {
                            assert!(n <= 1 << 20);
                            window = Some(Window { cccid: cmd.cid(), ttag: 0, total: n, received: 0 });
                        }
                        _ => {}
                    }
                }
            }
            pdu_type::H2C_DATA => {
                let h = DataHeader::parse(pdu);
                if let Some(w) = window.as_mut().filter(|w| w.ttag == h.ttag) {
                    if w.check(&h, l.data_len).is_ok() {
                        assert!(h.offset + h.length <= w.total, "accepted data inside the window");
                        w.received += h.length;
                        if w.received == w.total {
                            window = None;
                        }
                    }
                }
            }
            pdu_type::H2C_TERM_REQ => {
                let t = TermReq::parse(pdu, &l);
                assert!(t.header.len() <= ferry_nvme::tcp::TERM_REQ_MAX_DATA);
            }
            t => panic!("PDU type {t} got past the framing"),
        }
        off += l.plen;
        decoded += 1;
    }
    decoded
}

#[cfg(test)]
mod tests {
    /// Every PDU of each seed gets past the framing and is decoded (a seed that stops early
    /// means the fuzzer starts from a refused stream).
    #[test]
    fn seeds_decode_every_pdu() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/nvmf_tcp_pdu");
        for (name, want) in [("plain", 6), ("digests", 5)] {
            let data = std::fs::read(dir.join(name)).unwrap();
            assert_eq!(super::nvmf_tcp_pdu(&data), want, "seed {name}");
        }
    }
}

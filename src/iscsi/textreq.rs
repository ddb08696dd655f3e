//! Text Requests in full feature phase (RFC 7143 §11.10-11.11): SendTargets (§13.3,
//! Appendix C), answered with `TargetName=`/`TargetAddress=` lines from
//! `config::send_targets`, and the continuation of texts in both directions:
//!
//! - an answer longer than the initiator's MaxRecvDataSegmentLength goes out in pieces of
//!   exactly that size, each with C=1, F=0 and a Target Transfer Tag; the initiator asks for
//!   the next piece with an empty request carrying that tag; the last piece has F=1 and the
//!   reserved tag (SPDK once crashed here: https://github.com/spdk/spdk/issues/1442);
//! - a request sent with C=1 is acknowledged by an empty response with a tag, which the
//!   initiator's next part carries; the parts are joined (bounded by `text::MAX_TEXT_LEN`).
//!
//! A request with the reserved tag always starts over, dropping any pending continuation.
//! Malformed requests get a Reject PDU (protocol error / invalid PDU field) instead of a
//! Text Response; the session goes on.

use super::config;
use super::login::Response;
use super::negotiate;
use super::pdu::{at, flag, op, Bhs, RESERVED_TAG};
use super::text;
use std::net::SocketAddr;

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    /// Protocol error (a malformed or overlong text, F and C both set).
    pub const PROTOCOL_ERROR: u8 = 0x04;
    /// Invalid PDU field (an unknown Target Transfer Tag).
    pub const INVALID_PDU_FIELD: u8 = 0x09;
}

/// The least MaxRecvDataSegmentLength an initiator may declare (RFC 7143 §13.12).
const MIN_MRDSL: usize = 512;

/// What the session knows that a Text Request's answer depends on.
#[derive(Debug, Clone, Copy)]
pub struct TextContext<'a> {
    /// A discovery session.
    pub discovery: bool,
    /// The session's target (normal sessions): what `SendTargets=` (empty) lists.
    pub target_name: Option<&'a str>,
    /// The initiator's name (what it may see depends on it).
    pub initiator_name: &'a str,
    /// The initiator's address (likewise).
    pub peer: SocketAddr,
    /// The portal group of the connection.
    pub pg_tag: u32,
    /// The initiator's MaxRecvDataSegmentLength: the most data one response may carry.
    pub initiator_max_recv_data_segment: u32,
}

/// A continuation in progress.
#[derive(Debug)]
enum Pending {
    /// Gathering a request sent with C=1.
    Receiving { itt: u32, ttt: u32 },
    /// Sending an answer in pieces: `data[off..]` is still to go.
    Sending { itt: u32, ttt: u32, data: Vec<u8>, off: usize },
}

/// The Text Request state of one connection.
#[derive(Debug, Default)]
pub struct TextState {
    text: text::Accumulator,
    pending: Option<Pending>,
    last_ttt: u32,
}

/// A Reject PDU for `req` with `reason`; its data segment is the rejected header.
pub fn reject(req: &Bhs, reason: u8) -> Response {
    let mut b = Bhs::new(op::REJECT);
    b.set_flags(flag::FINAL);
    b.set_byte(2, reason);
    b.set_itt(RESERVED_TAG);
    b.set_data_len(req.0.len() as u32);
    Response { bhs: b, data: req.0.to_vec() }
}

impl TextState {
    /// No text exchange under way.
    pub fn new() -> TextState {
        TextState::default()
    }

    /// One Text Request; `kind`, initiator name/address and portal group come from the session.
    /// Response data never exceeds `initiator_max_recv_data_segment` (longer answers continue
    /// with C=1 and a TTT).
    pub fn on_request(&mut self, bhs: &Bhs, data: &[u8], ctx: &TextContext) -> Response {
        if bhs.opcode() != op::TEXT_REQ {
            return reject(bhs, reject::INVALID_PDU_FIELD);
        }
        let (fin, cont) = (bhs.flags() & flag::FINAL != 0, bhs.flags() & flag::CONTINUE != 0);
        if fin && cont {
            self.reset();
            return reject(bhs, reject::PROTOCOL_ERROR);
        }
        let (itt, ttt) = (bhs.itt(), bhs.u32_at(at::TTT));
        if ttt == RESERVED_TAG {
            // A new request: whatever was under way is abandoned (RFC 7143 §11.10.4).
            self.reset();
        } else {
            match self.pending.take() {
                Some(Pending::Sending { itt: i, ttt: t, data: answer, off }) if i == itt && t == ttt => {
                    return self.send(bhs, answer, off, fin, ctx);
                }
                Some(Pending::Receiving { itt: i, ttt: t }) if i == itt && t == ttt => {}
                other => {
                    self.pending = other;
                    return reject(bhs, reject::INVALID_PDU_FIELD);
                }
            }
        }
        let whole = match self.text.push(data, cont) {
            Ok(Some(t)) => t,
            Ok(None) => {
                let ttt = self.next_ttt();
                self.pending = Some(Pending::Receiving { itt, ttt });
                return response(bhs, 0, ttt, Vec::new());
            }
            Err(e) => {
                tracing::info!(peer = %ctx.peer, "iscsi text request refused: {e}");
                self.reset();
                return reject(bhs, reject::PROTOCOL_ERROR);
            }
        };
        let pairs = match text::parse(&whole) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(peer = %ctx.peer, "iscsi text request refused: {e}");
                return reject(bhs, reject::PROTOCOL_ERROR);
            }
        };
        let answer = answer(&pairs, ctx);
        self.send(bhs, answer, 0, fin, ctx)
    }

    /// The piece of `answer` from `off`; the rest is kept for the next request.
    fn send(&mut self, req: &Bhs, answer: Vec<u8>, off: usize, fin: bool, ctx: &TextContext) -> Response {
        let max = (ctx.initiator_max_recv_data_segment as usize).max(MIN_MRDSL);
        let end = answer.len().min(off + max);
        let piece = answer[off..end].to_vec();
        if end == answer.len() && fin {
            self.pending = None;
            return response(req, flag::FINAL, RESERVED_TAG, piece);
        }
        // More to send, or the initiator's F=0 (it is not done): the exchange goes on with a tag.
        let ttt = self.next_ttt();
        let more = end < answer.len();
        self.pending = Some(Pending::Sending { itt: req.itt(), ttt, data: answer, off: end });
        response(req, if more { flag::CONTINUE } else { 0 }, ttt, piece)
    }

    fn reset(&mut self) {
        self.pending = None;
        self.text.reset();
    }

    /// A fresh Target Transfer Tag (never the reserved one).
    fn next_ttt(&mut self) -> u32 {
        self.last_ttt = self.last_ttt.wrapping_add(1);
        if self.last_ttt == RESERVED_TAG {
            self.last_ttt = 1;
        }
        self.last_ttt
    }
}

/// A Text Response to `req`.
fn response(req: &Bhs, flags: u8, ttt: u32, data: Vec<u8>) -> Response {
    let mut b = Bhs::new(op::TEXT_RSP);
    b.set_flags(flags);
    b.set_lun_field(req.lun_field());
    b.set_itt(req.itt());
    b.set_u32_at(at::TTT, ttt);
    b.set_data_len(data.len() as u32);
    Response { bhs: b, data }
}

/// The whole answer to a complete request.
fn answer(pairs: &[(&str, &str)], ctx: &TextContext) -> Vec<u8> {
    let mut out = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for &(k, v) in pairs {
        if k == "SendTargets" && !seen.contains(&k) {
            seen.push(k);
            send_targets(v, ctx, &mut out);
        } else if negotiate::is_known(k) {
            // Every other RFC key is for login only (or, MaxRecvDataSegmentLength, would need
            // the engine to change its limit mid-session): not negotiable here.
            text::push(&mut out, k, "Reject");
        } else {
            text::push(&mut out, k, "NotUnderstood");
        }
    }
    out
}

/// `TargetName=`/`TargetAddress=` lines for `which` (All, empty = the session's own target,
/// or a target name); a value that is none of these is answered Reject.
fn send_targets(which: &str, ctx: &TextContext, out: &mut Vec<u8>) {
    let lower = which.to_ascii_lowercase();
    let is_name = ["iqn.", "eui.", "naa."].iter().any(|p| lower.starts_with(p));
    if which != "All" && !which.is_empty() && !is_name {
        text::push(out, "SendTargets", "Reject");
        return;
    }
    let targets = config::lock().send_targets(which, ctx.target_name, ctx.initiator_name, ctx.peer.ip());
    for (name, addrs) in targets {
        text::push(out, "TargetName", &name);
        for a in addrs {
            text::push(out, "TargetAddress", &a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::ChapPolicy;
    use super::super::testkit::{add_node, kv, pairs, text_req};
    use super::*;

    fn ctx<'a>(initiator: &'a str, pg: u32, mrdsl: u32) -> TextContext<'a> {
        TextContext {
            discovery: true,
            target_name: None,
            initiator_name: initiator,
            peer: "127.0.0.1:40000".parse().unwrap(),
            pg_tag: pg,
            initiator_max_recv_data_segment: mrdsl,
        }
    }

    /// Registers `n` nodes visible to `initiator` through portal group `pg`.
    fn nodes(prefix: &str, n: usize, pg: u32, ig: u32, initiator: &str) -> Vec<String> {
        (0..n)
            .map(|i| {
                let name = format!("iqn.2016-06.io.spdk:{prefix}-{i:03}");
                add_node(&name, pg, ig, &[initiator], ChapPolicy::default(), (false, false));
                name
            })
            .collect()
    }

    #[test]
    fn send_targets_all_lists_what_the_initiator_may_see() {
        let ini = "iqn.test:textreq-all";
        let names = nodes("tr-all", 2, 7101, 7101, ini);
        nodes("tr-other", 1, 7101, 7102, "iqn.test:someone-else");
        let mut st = TextState::new();
        let r = st.on_request(
            &text_req(true, false, 5, RESERVED_TAG),
            &kv(&[("SendTargets", "All")]),
            &ctx(ini, 7101, 8192),
        );
        assert_eq!(r.bhs.opcode(), op::TEXT_RSP);
        assert_eq!(r.bhs.flags(), flag::FINAL);
        assert_eq!(r.bhs.itt(), 5);
        assert_eq!(r.bhs.u32_at(at::TTT), RESERVED_TAG);
        let p = pairs(&r.data);
        let listed: Vec<&str> = p.iter().filter(|(k, _)| k == "TargetName").map(|(_, v)| v.as_str()).collect();
        for n in &names {
            assert!(listed.contains(&n.as_str()), "{n} in {listed:?}");
        }
        assert!(!listed.iter().any(|n| n.contains("tr-other")), "a node of another initiator group is hidden");
        assert!(p.iter().any(|(k, v)| k == "TargetAddress" && v == "127.0.0.1:3260,7101"));

        // One name, and the session's own target with an empty value.
        let r = st.on_request(
            &text_req(true, false, 6, RESERVED_TAG),
            &kv(&[("SendTargets", &names[1])]),
            &ctx(ini, 7101, 8192),
        );
        assert_eq!(pairs(&r.data)[0], ("TargetName".to_string(), names[1].clone()));
        let mut normal = ctx(ini, 7101, 8192);
        normal.discovery = false;
        normal.target_name = Some(&names[0]);
        let r = st.on_request(&text_req(true, false, 7, RESERVED_TAG), &kv(&[("SendTargets", "")]), &normal);
        let p = pairs(&r.data);
        assert_eq!(p[0], ("TargetName".to_string(), names[0].clone()));
        assert_eq!(p.iter().filter(|(k, _)| k == "TargetName").count(), 1);
    }

    #[test]
    fn invalid_requests_as_libiscsi_sends_them() {
        // test_iscsi_sendtargets_invalid: each must get something other than a target list.
        let mut st = TextState::new();
        let c = ctx("iqn.test:textreq-invalid", 7103, 8192);
        for (k, v, want) in [
            ("SendTargetsPlease", "All", "NotUnderstood"),
            ("SendTargets", "Alle", "Reject"),
            ("SendTargets", "A", "Reject"),
            ("sENDtARGETS", "aLL", "NotUnderstood"),
            ("MaxBurstLength", "4096", "Reject"),
            ("X-vendor.key", "1", "NotUnderstood"),
        ] {
            let r = st.on_request(&text_req(true, false, 1, RESERVED_TAG), &kv(&[(k, v)]), &c);
            assert_eq!(pairs(&r.data), vec![(k.to_string(), want.to_string())], "{k}={v}");
        }
    }

    /// Collects a whole answer by following continuations; returns the pieces' lengths.
    fn follow(st: &mut TextState, first: Response, c: &TextContext) -> (Vec<u8>, Vec<usize>) {
        let (mut all, mut lens, mut r) = (Vec::new(), Vec::new(), first);
        for _ in 0..10_000 {
            assert_eq!(r.bhs.opcode(), op::TEXT_RSP);
            assert!(r.data.len() <= c.initiator_max_recv_data_segment as usize);
            all.extend_from_slice(&r.data);
            lens.push(r.data.len());
            if r.bhs.flags() & flag::FINAL != 0 {
                assert_eq!(r.bhs.u32_at(at::TTT), RESERVED_TAG);
                return (all, lens);
            }
            assert_eq!(r.bhs.flags(), flag::CONTINUE);
            let ttt = r.bhs.u32_at(at::TTT);
            assert_ne!(ttt, RESERVED_TAG);
            r = st.on_request(&text_req(true, false, r.bhs.itt(), ttt), &[], c);
        }
        panic!("no end");
    }

    #[test]
    fn long_answers_split_exactly_at_the_initiators_limit() {
        let ini = "iqn.test:textreq-long";
        nodes("tr-long-with-a-rather-long-name-to-fill-pdus", 40, 7104, 7104, ini);
        let mut st = TextState::new();
        let c = ctx(ini, 7104, 512);
        let r = st.on_request(&text_req(true, false, 9, RESERVED_TAG), &kv(&[("SendTargets", "All")]), &c);
        let (all, lens) = follow(&mut st, r, &c);
        assert!(lens.len() > 3, "{lens:?}");
        assert!(lens[..lens.len() - 1].iter().all(|&l| l == 512), "every piece but the last is full: {lens:?}");
        let p = pairs(&all);
        assert!(p.iter().filter(|(k, _)| k == "TargetName").count() >= 40);

        // The same answer in one piece with a big enough limit.
        let big = ctx(ini, 7104, 1 << 20);
        let r = st.on_request(&text_req(true, false, 10, RESERVED_TAG), &kv(&[("SendTargets", "All")]), &big);
        assert_eq!(r.bhs.flags(), flag::FINAL);
        assert_eq!(r.data, all);
    }

    #[test]
    fn a_new_request_resets_and_a_stale_tag_is_rejected() {
        let ini = "iqn.test:textreq-reset";
        nodes("tr-reset-with-a-rather-long-name-to-fill-pdus", 20, 7105, 7105, ini);
        let mut st = TextState::new();
        let c = ctx(ini, 7105, 512);
        let r = st.on_request(&text_req(true, false, 1, RESERVED_TAG), &kv(&[("SendTargets", "All")]), &c);
        let ttt = r.bhs.u32_at(at::TTT);
        assert_eq!(r.bhs.flags(), flag::CONTINUE);
        // A new request instead of the continuation.
        let r2 = st.on_request(&text_req(true, false, 2, RESERVED_TAG), &kv(&[("SendTargets", "All")]), &c);
        assert_eq!(r2.data, r.data, "starts from the beginning");
        // The old tag is gone.
        let rej = st.on_request(&text_req(true, false, 1, ttt), &[], &c);
        assert_eq!(rej.bhs.opcode(), op::REJECT);
        assert_eq!(rej.bhs.byte(2), reject::INVALID_PDU_FIELD);
        assert_eq!(rej.data.len(), 48);
        // The new exchange still continues.
        let (all, _) = follow(&mut st, r2, &c);
        assert!(pairs(&all).len() >= 40);
    }

    #[test]
    fn continued_requests_are_joined() {
        let ini = "iqn.test:textreq-cont";
        let names = nodes("tr-cont", 1, 7106, 7106, ini);
        let mut st = TextState::new();
        let c = ctx(ini, 7106, 8192);
        let req = kv(&[("SendTargets", &names[0])]);
        let (a, b) = req.split_at(7);
        let r = st.on_request(&text_req(false, true, 3, RESERVED_TAG), a, &c);
        assert!(r.data.is_empty());
        assert_eq!(r.bhs.flags(), 0);
        let ttt = r.bhs.u32_at(at::TTT);
        assert_ne!(ttt, RESERVED_TAG);
        let r = st.on_request(&text_req(true, false, 3, ttt), b, &c);
        assert_eq!(r.bhs.flags(), flag::FINAL);
        assert_eq!(pairs(&r.data)[0].1, names[0]);

        // A part, then a new request instead of the rest: the part is forgotten.
        let r = st.on_request(&text_req(false, true, 4, RESERVED_TAG), a, &c);
        assert_eq!(r.bhs.flags(), 0);
        let r = st.on_request(&text_req(true, false, 5, RESERVED_TAG), &req, &c);
        assert_eq!(r.bhs.flags(), flag::FINAL);
        assert_eq!(pairs(&r.data)[0].1, names[0]);
    }

    #[test]
    fn malformed_requests_are_rejected() {
        let mut st = TextState::new();
        let c = ctx("iqn.test:textreq-bad", 7107, 8192);
        for (bhs, data) in [
            (text_req(true, false, 1, RESERVED_TAG), b"SendTargets".to_vec()),
            (text_req(true, true, 1, RESERVED_TAG), b"SendTargets=All\0".to_vec()),
            (text_req(true, false, 1, RESERVED_TAG), vec![b'a'; text::MAX_TEXT_LEN + 1]),
        ] {
            let r = st.on_request(&bhs, &data, &c);
            assert_eq!(r.bhs.opcode(), op::REJECT);
            assert_eq!(r.bhs.byte(2), reject::PROTOCOL_ERROR);
            assert_eq!(r.data, bhs.0.to_vec());
        }
        let r = st.on_request(&text_req(true, false, 1, 77), &[], &c);
        assert_eq!(r.bhs.byte(2), reject::INVALID_PDU_FIELD);
    }
}

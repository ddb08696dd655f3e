//! The iSCSI login/text target: the fuzzer's bytes parsed by `text::parse`, then driven as a
//! sequence of Login Requests through a `Login` and, once it is done, of Text Requests through
//! a `TextState`. Every answer must be within its bounds: a Login Response of the right
//! opcode echoing the ITT, at most 8192 bytes of well-formed text, a failure with class 2/3
//! and T=0, a success only through T=1/NSG=3; a Text Response never longer than the
//! initiator's MaxRecvDataSegmentLength, F and C never both, the reserved tag exactly on
//! F=1; a Reject carrying the rejected header. When asked to, the driver answers the
//! target's CHAP challenge with the configured secret (so the fuzzer gets past
//! authentication) and checks the target's mutual CHAP response.

use super::Input;
use crate::iscsi::chap::{decode_binary, encode_hex, Algorithm};
use crate::iscsi::config::{AuthSecret, ChapPolicy};
use crate::iscsi::login::{Login, LoginEnv, LoginStep, Response};
use crate::iscsi::negotiate::LOGIN_MAX_RECV_DATA_SEGMENT;
use crate::iscsi::pdu::{at, flag, op, Bhs, RESERVED_TAG};
use crate::iscsi::testkit;
use crate::iscsi::text;
use crate::iscsi::textreq::{TextContext, TextState};

/// The portal group and initiator group the fuzz nodes use.
const PG: u32 = 9001;
/// The CHAP secrets of the auth group.
const USER: &str = "user";
const SECRET: &str = "secretsecret12";
const MUSER: &str = "tgt";
const MSECRET: &str = "tsecret1234567";
/// The initiator's challenge for mutual CHAP (and its identifier).
const MUTUAL_ID: u8 = 7;
const MUTUAL_C: [u8; 16] = [9; 16];

/// Request option bits (the third byte of a record).
mod opt {
    /// Not a Login/Text Request opcode.
    pub const WRONG_OPCODE: u8 = 1;
    /// Flip a bit of the ISID (login) / use the last response's TTT (text).
    pub const ISID_OR_TTT: u8 = 2;
    /// Append CHAP_N/CHAP_R answering the last challenge.
    pub const ANSWER_CHAP: u8 = 4;
    /// With ANSWER_CHAP: also CHAP_I/CHAP_C asking for mutual CHAP.
    pub const MUTUAL: u8 = 8;
}

/// The nodes (none, CHAP, mutual CHAP, digests required) and the auth group, once.
fn configure() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        testkit::add_auth_group(
            PG,
            vec![AuthSecret {
                user: USER.into(),
                secret: SECRET.into(),
                muser: Some(MUSER.into()),
                msecret: Some(MSECRET.into()),
            }],
        );
        let chap = ChapPolicy { require: true, group: PG, ..Default::default() };
        for (name, auth, digests) in [
            ("none", ChapPolicy::default(), (false, false)),
            ("chap", chap, (false, false)),
            ("mutual", ChapPolicy { mutual: true, ..chap }, (false, false)),
            ("digest", ChapPolicy::default(), (true, true)),
        ] {
            testkit::add_node(&format!("iqn.2016-06.io.spdk:fuzz-{name}"), PG, PG, &["ANY"], auth, digests);
        }
    });
}

/// Checks that `data` is well-formed response text and returns its pairs (unbounded count:
/// a SendTargets answer may have more pairs than a request may).
fn check_text(data: &[u8]) -> Vec<(String, String)> {
    assert!(data.is_empty() || data.ends_with(&[0]), "response text not NUL-terminated");
    data.split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let s = std::str::from_utf8(p).expect("response text is UTF-8");
            let (k, v) = s.split_once('=').expect("response pair has '='");
            assert!(!k.is_empty() && k.len() <= text::MAX_KEY_LEN, "response key {k:?}");
            assert!(v.len() <= text::MAX_VALUE_LEN, "response value of {k}");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Checks one text against the parser's bounds, and that what parses rebuilds to the same pairs.
fn parse_checked(data: &[u8]) {
    if let Ok(pairs) = text::parse(data) {
        assert!(pairs.len() <= text::MAX_KEYS);
        let mut rebuilt = Vec::new();
        for (k, v) in &pairs {
            assert!(k.len() <= text::MAX_KEY_LEN && v.len() <= text::MAX_VALUE_LEN);
            text::push(&mut rebuilt, k, v);
        }
        assert_eq!(text::parse(&rebuilt).expect("rebuilt text parses"), pairs);
    }
}

/// Input: records of [flags, version-min, options, ITT, length (u16 LE), data], first login
/// requests until the login ends, then text requests. Returns 1 for a completed login plus
/// the number of text responses checked.
pub fn iscsi_login(data: &[u8]) -> u64 {
    configure();
    parse_checked(data);
    let mut input = Input(data);
    let env = LoginEnv {
        pg_tag: PG,
        peer: "127.0.0.1:50000".parse().expect("addr"),
        local: "127.0.0.1:3260".parse().expect("addr"),
    };
    let mut login = Login::new(env);
    let mut last = Vec::new();
    let mut reached = 0;
    let outcome = loop {
        if input.0.is_empty() {
            return reached;
        }
        let (flags, vmin, opts, itt) = (input.u8(), input.u8(), input.u8(), input.u8() as u32);
        let len = input.u16() as usize;
        let mut body = input.bytes(len).to_vec();
        parse_checked(&body);
        let mut bhs = testkit::login_req(false, false, 0, 0, itt, 0);
        bhs.set_flags(flags);
        bhs.set_byte(3, vmin);
        if opts & opt::WRONG_OPCODE != 0 {
            bhs.0[0] = op::TEXT_REQ;
        }
        if opts & opt::ISID_OR_TTT != 0 {
            bhs.0[at::ISID + 5] ^= 1;
        }
        if opts & opt::ANSWER_CHAP != 0 {
            answer_chap(&last, opts & opt::MUTUAL != 0, &mut body);
        }
        bhs.set_data_len(body.len().min((1 << 24) - 1) as u32);
        let step = login.on_request(&bhs, &body);
        let (rsp, done) = match step {
            LoginStep::Continue(r) => {
                check_login_rsp(&r, &bhs, false);
                (r, None)
            }
            LoginStep::Done(r, o) => {
                check_login_rsp(&r, &bhs, false);
                assert_eq!(r.bhs.flags() & (flag::TRANSIT | 3), flag::TRANSIT | 3, "Done without T=1/NSG=3");
                (r, Some(o))
            }
            LoginStep::Fail(r) => {
                check_login_rsp(&r, &bhs, true);
                return reached;
            }
        };
        let pairs = check_text(&rsp.data);
        if opts & opt::ANSWER_CHAP != 0 && opts & opt::MUTUAL != 0 {
            // The target's mutual response, if it gave one, proves the configured secret.
            if let (Some(r), Some(alg)) = (value(&pairs, "CHAP_R"), chap_alg(&last)) {
                assert_eq!(value(&pairs, "CHAP_N"), Some(MUSER));
                assert_eq!(r, encode_hex(&alg.response(MUTUAL_ID, MSECRET.as_bytes(), &MUTUAL_C)));
            }
        }
        // Keep the challenge in view: the record after it may answer it.
        if value(&pairs, "CHAP_C").is_some() {
            last = pairs;
        }
        if let Some(o) = done {
            break o;
        }
    };
    reached += 1;
    assert!(outcome.params.first_burst_length <= outcome.params.max_burst_length);
    assert!((512..1 << 24).contains(&outcome.params.initiator_max_recv_data_segment));

    // Full feature phase: Text Requests, with a small limit so that answers split.
    let (discovery, target) = match &outcome.kind {
        crate::iscsi::login::SessionKind::Discovery => (true, None),
        crate::iscsi::login::SessionKind::Normal(n) => (false, Some(n.name.clone())),
    };
    let ctx = TextContext {
        discovery,
        target_name: target.as_deref(),
        initiator_name: &outcome.initiator_name,
        peer: env.peer,
        pg_tag: PG,
        initiator_max_recv_data_segment: 512,
    };
    let mut texts = TextState::new();
    let mut last_ttt = RESERVED_TAG;
    while !input.0.is_empty() {
        let (flags, _, opts, itt) = (input.u8(), input.u8(), input.u8(), input.u8() as u32);
        let len = input.u16() as usize;
        let body = input.bytes(len);
        let ttt = if opts & opt::ISID_OR_TTT != 0 { last_ttt } else { RESERVED_TAG };
        let mut bhs = testkit::text_req(false, false, itt, ttt);
        bhs.set_flags(flags);
        if opts & opt::WRONG_OPCODE != 0 {
            bhs.0[0] = op::LOGIN_REQ;
        }
        let r = texts.on_request(&bhs, body, &ctx);
        assert_eq!(r.bhs.data_len() as usize, r.data.len());
        match r.bhs.opcode() {
            op::TEXT_RSP => {
                assert!(r.data.len() <= 512, "text response of {} bytes", r.data.len());
                assert_eq!(r.bhs.itt(), itt);
                let (fin, cont) = (r.bhs.flags() & flag::FINAL != 0, r.bhs.flags() & flag::CONTINUE != 0);
                assert!(!(fin && cont), "F and C both set");
                assert_eq!(fin, r.bhs.u32_at(at::TTT) == RESERVED_TAG, "reserved TTT exactly on F=1");
                last_ttt = r.bhs.u32_at(at::TTT);
            }
            op::REJECT => assert_eq!(r.data, bhs.0.to_vec(), "a Reject carries the rejected header"),
            other => panic!("text answered with opcode {other:#x}"),
        }
        reached += 1;
    }
    reached
}

/// Checks the invariants of every Login Response to `req`.
fn check_login_rsp(r: &Response, req: &Bhs, failed: bool) {
    assert_eq!(r.bhs.opcode(), op::LOGIN_RSP);
    assert_eq!(r.bhs.itt(), req.itt(), "ITT echoed");
    assert_eq!(r.bhs.data_len() as usize, r.data.len());
    assert!(r.data.len() <= LOGIN_MAX_RECV_DATA_SEGMENT as usize, "login response of {} bytes", r.data.len());
    let class = r.bhs.byte(36);
    if failed {
        assert!(class == 2 || class == 3, "failure with class {class}");
        assert_eq!(r.bhs.flags() & flag::TRANSIT, 0, "failure with T=1");
        assert!(r.data.is_empty());
    } else {
        assert_eq!((class, r.bhs.byte(37)), (0, 0));
        assert_eq!(r.bhs.flags() & flag::CONTINUE, 0, "the target never continues a login response");
    }
}

fn value<'a>(p: &'a [(String, String)], key: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn chap_alg(challenge: &[(String, String)]) -> Option<Algorithm> {
    Algorithm::from_code(value(challenge, "CHAP_A")?.parse().ok()?)
}

/// Appends CHAP_N/CHAP_R answering the challenge in `challenge` (and CHAP_I/CHAP_C for
/// mutual CHAP) to `body`.
fn answer_chap(challenge: &[(String, String)], mutual: bool, body: &mut Vec<u8>) {
    let (Some(alg), Some(id), Some(c)) = (
        chap_alg(challenge),
        value(challenge, "CHAP_I").and_then(|i| i.parse::<u8>().ok()),
        value(challenge, "CHAP_C").and_then(decode_binary),
    ) else {
        return;
    };
    text::push(body, "CHAP_N", USER);
    text::push(body, "CHAP_R", &encode_hex(&alg.response(id, SECRET.as_bytes(), &c)));
    if mutual {
        text::push(body, "CHAP_I", &MUTUAL_ID.to_string());
        text::push(body, "CHAP_C", &encode_hex(&MUTUAL_C));
    }
}

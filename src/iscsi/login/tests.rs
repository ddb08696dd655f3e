//! The login state machine against the configuration table: each test uses its own names
//! and tags (the table is process-wide and the tests run in parallel).

use super::*;
use crate::iscsi::chap::{decode_binary, encode_hex, Algorithm};
use crate::iscsi::config::AuthSecret;
use crate::iscsi::pdu::at;
use crate::iscsi::testkit::{add_auth_group, add_node, kv, login_req, pairs, set_discovery_auth, value};

const INI: &str = "iqn.1993-08.org.debian:01:login-test";

fn env(pg: u32) -> LoginEnv {
    LoginEnv { pg_tag: pg, peer: "127.0.0.1:40000".parse().unwrap(), local: "127.0.0.1:3260".parse().unwrap() }
}

fn node(suffix: &str, pg: u32, auth: ChapPolicy, digests: (bool, bool)) -> String {
    let name = format!("iqn.2016-06.io.spdk:login-{suffix}");
    add_node(&name, pg, pg, &[INI], auth, digests);
    name
}

fn cont(step: LoginStep) -> Response {
    match step {
        LoginStep::Continue(r) => r,
        LoginStep::Done(r, _) => panic!("done early: {:?} {:?}", r.bhs, pairs(&r.data)),
        LoginStep::Fail(r) => panic!("failed: {:#04x}/{:#04x}", r.bhs.byte(36), r.bhs.byte(37)),
    }
}

fn done(step: LoginStep) -> (Response, Box<LoginOutcome>) {
    match step {
        LoginStep::Done(r, o) => (r, o),
        LoginStep::Continue(r) => panic!("not done: {:?} {:?}", r.bhs, pairs(&r.data)),
        LoginStep::Fail(r) => panic!("failed: {:#04x}/{:#04x}", r.bhs.byte(36), r.bhs.byte(37)),
    }
}

/// The status (class, detail) of a failed step.
fn fail(step: LoginStep) -> (u8, u8) {
    match step {
        LoginStep::Fail(r) => {
            assert_eq!(r.bhs.opcode(), op::LOGIN_RSP);
            assert_eq!(r.bhs.flags() & flag::TRANSIT, 0);
            (r.bhs.byte(36), r.bhs.byte(37))
        }
        LoginStep::Continue(r) | LoginStep::Done(r, _) => panic!("not refused: {:?}", pairs(&r.data)),
    }
}

fn first_keys(target: &str) -> Vec<(&'static str, &str)> {
    vec![("InitiatorName", INI), ("SessionType", "Normal"), ("TargetName", target)]
}

#[test]
fn auth_none_then_operational_then_full_feature() {
    let t = node("none013", 7001, ChapPolicy::default(), (false, false));
    let mut l = Login::new(env(7001));
    let mut keys = first_keys(&t);
    keys.push(("AuthMethod", "None"));
    let r = cont(l.on_request(&login_req(true, false, 0, 1, 0x11, 0), &kv(&keys)));
    assert_eq!(r.bhs.opcode(), op::LOGIN_RSP);
    assert_eq!(r.bhs.flags(), flag::TRANSIT | 1, "T=1 CSG=0 NSG=1");
    assert_eq!(r.bhs.itt(), 0x11);
    assert_eq!(&r.bhs.0[8..14], &[0x80, 0x12, 0x34, 0x56, 0x78, 0x9a], "ISID echoed");
    assert_eq!((r.bhs.byte(2), r.bhs.byte(3)), (0, 0), "version max/active");
    assert_eq!((r.bhs.byte(36), r.bhs.byte(37)), (0, 0));
    assert_eq!(r.bhs.data_len() as usize, r.data.len());
    let p = pairs(&r.data);
    assert_eq!(value(&p, "TargetPortalGroupTag"), Some("7001"));
    assert_eq!(value(&p, "AuthMethod"), Some("None"));
    assert_eq!(value(&p, "TargetAlias"), Some(format!("alias of {t}").as_str()));

    let ops = kv(&[
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxRecvDataSegmentLength", "262144"),
        ("ImmediateData", "Yes"),
        ("FirstBurstLength", "65536"),
        ("MaxBurstLength", "1048576"),
        ("InitiatorAlias", "debian"),
    ]);
    let (r, o) = done(l.on_request(&login_req(true, false, 1, 3, 0x12, 0), &ops));
    assert_eq!(r.bhs.flags(), flag::TRANSIT | 1 << 2 | 3, "T=1 CSG=1 NSG=3");
    assert_eq!(r.bhs.itt(), 0x12);
    let p = pairs(&r.data);
    assert_eq!(value(&p, "MaxRecvDataSegmentLength"), Some("65536"));
    assert_eq!(value(&p, "FirstBurstLength"), Some("8192"));
    assert_eq!(value(&p, "TargetPortalGroupTag"), None, "only in the first response");
    assert_eq!(o.initiator_name, INI);
    assert_eq!(o.initiator_alias.as_deref(), Some("debian"));
    assert_eq!(o.isid, [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a]);
    assert_eq!((o.tsih, o.cid), (0, 1));
    assert!(matches!(&o.kind, SessionKind::Normal(n) if n.name == t));
    assert_eq!(o.params.initiator_max_recv_data_segment, 262144);
    assert_eq!(o.params.target_max_recv_data_segment, 65536);
    assert_eq!(o.params.max_burst_length, 262144);
    assert_eq!(o.params.first_burst_length, 8192);
    // Over: another request is refused.
    assert_eq!(fail(l.on_request(&login_req(true, false, 1, 3, 0x13, 0), &[])), (2, status::INVALID_DURING_LOGIN));
}

#[test]
fn operational_stage_first_and_security_straight_to_full_feature() {
    let t = node("op13", 7002, ChapPolicy::default(), (false, false));
    let mut l = Login::new(env(7002));
    let (r, o) = done(l.on_request(&login_req(true, false, 1, 3, 1, 0), &kv(&first_keys(&t))));
    assert_eq!(r.bhs.flags(), flag::TRANSIT | 1 << 2 | 3);
    let p = pairs(&r.data);
    assert_eq!(value(&p, "TargetPortalGroupTag"), Some("7002"));
    assert_eq!(value(&p, "MaxRecvDataSegmentLength"), Some("65536"), "declared in the operational stage");
    assert_eq!(o.params.first_burst_length, 65536, "RFC default: not negotiated");

    let mut l = Login::new(env(7002));
    let mut keys = first_keys(&t);
    keys.push(("AuthMethod", "CHAP,None"));
    let (r, o) = done(l.on_request(&login_req(true, false, 0, 3, 1, 0), &kv(&keys)));
    assert_eq!(r.bhs.flags(), flag::TRANSIT | 3);
    assert_eq!(value(&pairs(&r.data), "AuthMethod"), Some("None"), "no auth group: CHAP is not offered");
    assert_eq!(o.params.target_max_recv_data_segment, 65536);
}

#[test]
fn discovery_sessions_need_no_target() {
    let _ = node("disc", 7003, ChapPolicy::default(), (false, false));
    let mut l = Login::new(env(7003));
    let keys = kv(&[("InitiatorName", INI), ("SessionType", "Discovery"), ("AuthMethod", "None")]);
    let r = cont(l.on_request(&login_req(true, false, 0, 1, 1, 0), &keys));
    assert_eq!(value(&pairs(&r.data), "TargetPortalGroupTag"), None);
    let (_, o) = done(l.on_request(&login_req(true, false, 1, 3, 2, 0), &kv(&[("MaxRecvDataSegmentLength", "32768")])));
    assert!(matches!(o.kind, SessionKind::Discovery));
    assert_eq!(o.params.initiator_max_recv_data_segment, 32768);
}

#[test]
fn target_lookup_failures() {
    let t = node("lookup", 7004, ChapPolicy::default(), (false, false));
    let run = |pg: u32, keys: &[(&str, &str)]| {
        fail(Login::new(env(pg)).on_request(&login_req(true, false, 1, 3, 1, 0), &kv(keys)))
    };
    assert_eq!(
        run(7004, &[("InitiatorName", INI), ("TargetName", "iqn.2016-06.io.spdk:login-nonexistent")]),
        (2, status::NOT_FOUND)
    );
    assert_eq!(run(7099, &[("InitiatorName", INI), ("TargetName", &t)]), (2, status::FORBIDDEN), "other portal group");
    assert_eq!(
        run(7004, &[("InitiatorName", "iqn.someone:else"), ("TargetName", &t)]),
        (2, status::FORBIDDEN),
        "initiator not in the group"
    );
    assert_eq!(run(7004, &[("TargetName", &t)]), (2, status::MISSING_PARAMETER));
    assert_eq!(run(7004, &[("InitiatorName", INI)]), (2, status::MISSING_PARAMETER));
    assert_eq!(
        run(7004, &[("InitiatorName", INI), ("SessionType", "Bogus"), ("TargetName", &t)]),
        (2, status::SESSION_TYPE_NOT_SUPPORTED)
    );
}

#[test]
fn versions_stages_and_flags_are_checked() {
    let t = node("stages", 7005, ChapPolicy::default(), (false, false));
    let keys = kv(&first_keys(&t));
    let one = |b: Bhs| fail(Login::new(env(7005)).on_request(&b, &keys));
    let mut b = login_req(true, false, 1, 3, 1, 0);
    b.set_byte(3, 1); // Version-min 1: nothing in common
    assert_eq!(one(b), (2, status::UNSUPPORTED_VERSION));
    assert_eq!(one(login_req(true, true, 1, 3, 1, 0)), (2, status::MISC), "T and C");
    assert_eq!(one(login_req(true, false, 3, 3, 1, 0)), (2, status::MISC), "CSG 3");
    assert_eq!(one(login_req(false, false, 2, 0, 1, 0)), (2, status::MISC), "CSG 2");
    assert_eq!(one(login_req(true, false, 1, 2, 1, 0)), (2, status::MISC), "NSG 2");
    assert_eq!(one(login_req(true, false, 1, 0, 1, 0)), (2, status::MISC), "backwards");
    let mut nop = login_req(true, false, 1, 3, 1, 0);
    nop.0[0] = op::NOP_OUT;
    assert_eq!(one(nop), (2, status::INVALID_DURING_LOGIN));

    // Stage regressions and a changed ISID in a running login.
    let mut l = Login::new(env(7005));
    let mut k0 = first_keys(&t);
    k0.push(("AuthMethod", "None"));
    cont(l.on_request(&login_req(true, false, 0, 1, 1, 0), &kv(&k0)));
    assert_eq!(fail(l.on_request(&login_req(true, false, 0, 1, 2, 0), &[])), (2, status::MISC), "back to CSG 0");
    let mut l = Login::new(env(7005));
    cont(l.on_request(&login_req(false, false, 1, 0, 1, 0), &keys));
    let mut b = login_req(true, false, 1, 3, 2, 0);
    b.0[13] ^= 1;
    assert_eq!(fail(l.on_request(&b, &[])), (2, status::MISC), "ISID changed");
}

#[test]
fn duplicate_and_changed_keys_and_floods() {
    let t = node("dup", 7006, ChapPolicy::default(), (false, false));
    let mut k = first_keys(&t);
    k.push(("MaxBurstLength", "4096"));
    k.push(("MaxBurstLength", "4096"));
    assert_eq!(fail(Login::new(env(7006)).on_request(&login_req(true, false, 1, 3, 1, 0), &kv(&k))), (2, status::MISC));

    // Re-declaring the identity with the same values is fine; changing it is not.
    let mut l = Login::new(env(7006));
    cont(l.on_request(&login_req(false, false, 1, 0, 1, 0), &kv(&first_keys(&t))));
    cont(l.on_request(&login_req(false, false, 1, 0, 2, 0), &kv(&[("InitiatorName", INI)])));
    assert_eq!(
        fail(l.on_request(&login_req(true, false, 1, 3, 3, 0), &kv(&[("TargetName", "iqn.x:y")]))),
        (2, status::MISC)
    );

    // The most keys allowed, all unknown: every one answered, within the login PDU limit.
    let mut l = Login::new(env(7006));
    let mut k = first_keys(&t);
    let names: Vec<String> = (0..text::MAX_KEYS - 3).map(|i| format!("X-{i:060}")).collect();
    k.extend(names.iter().map(|n| (n.as_str(), "1")));
    let r = cont(l.on_request(&login_req(false, false, 1, 0, 1, 0), &kv(&k)));
    assert!(r.data.len() <= LOGIN_MAX_RECV_DATA_SEGMENT as usize);
    assert_eq!(pairs(&r.data).iter().filter(|(_, v)| v == "NotUnderstood").count(), names.len());
    // One more key is a flood.
    k.push(("X-one-too-many", "1"));
    assert_eq!(
        fail(Login::new(env(7006)).on_request(&login_req(false, false, 1, 0, 1, 0), &kv(&k))),
        (2, status::MISC)
    );
}

#[test]
fn continued_login_text_is_joined() {
    let t = node("cbit", 7007, ChapPolicy::default(), (false, false));
    let text = kv(&first_keys(&t));
    let (a, b) = text.split_at(10);
    let mut l = Login::new(env(7007));
    let r = cont(l.on_request(&login_req(false, true, 1, 0, 1, 0), a));
    assert!(r.data.is_empty());
    assert_eq!(r.bhs.flags(), 1 << 2, "T=0 C=0 CSG=1");
    let (_, o) = done(l.on_request(&login_req(true, false, 1, 3, 1, 0), b));
    assert_eq!(o.initiator_name, INI);
}

#[test]
fn required_digests() {
    let t = node("digest", 7008, ChapPolicy::default(), (true, true));
    let mut k = first_keys(&t);
    k.push(("HeaderDigest", "None"));
    assert_eq!(fail(Login::new(env(7008)).on_request(&login_req(true, false, 1, 3, 1, 0), &kv(&k))), (2, status::MISC));
    let mut k = first_keys(&t);
    k.push(("HeaderDigest", "None,CRC32C"));
    k.push(("DataDigest", "CRC32C,None"));
    let (r, o) = done(Login::new(env(7008)).on_request(&login_req(true, false, 1, 3, 1, 0), &kv(&k)));
    assert_eq!(value(&pairs(&r.data), "HeaderDigest"), Some("CRC32C"));
    assert!(o.params.header_digest && o.params.data_digest);
}

/// Runs a CHAP login to the end of the security stage; returns the target's final pairs.
fn chap_login(
    pg: u32,
    target: &str,
    user: &str,
    secret: &[u8],
    mutual: Option<(u8, Vec<u8>)>,
) -> Result<Vec<(String, String)>, (u8, u8)> {
    let mut l = Login::new(env(pg));
    let mut k = first_keys(target);
    k.push(("AuthMethod", "CHAP,None"));
    let r = cont(l.on_request(&login_req(false, false, 0, 0, 1, 0), &kv(&k)));
    assert_eq!(value(&pairs(&r.data), "AuthMethod"), Some("CHAP"));
    assert_eq!(r.bhs.flags(), 0, "no transit while CHAP is pending");
    let r = cont(l.on_request(&login_req(false, false, 0, 0, 2, 0), &kv(&[("CHAP_A", "5")])));
    let p = pairs(&r.data);
    assert_eq!(value(&p, "CHAP_A"), Some("5"));
    let id: u8 = value(&p, "CHAP_I").unwrap().parse().unwrap();
    let c = decode_binary(value(&p, "CHAP_C").unwrap()).unwrap();
    let resp = encode_hex(&Algorithm::Md5.response(id, secret, &c));
    let mut k = vec![("CHAP_N", user.to_string()), ("CHAP_R", resp)];
    if let Some((i, c)) = &mutual {
        k.push(("CHAP_I", i.to_string()));
        k.push(("CHAP_C", encode_hex(c)));
    }
    let k: Vec<(&str, &str)> = k.iter().map(|(a, b)| (*a, b.as_str())).collect();
    match l.on_request(&login_req(true, false, 0, 1, 3, 0), &kv(&k)) {
        LoginStep::Continue(r) => {
            assert_eq!(r.bhs.flags(), flag::TRANSIT | 1);
            Ok(pairs(&r.data))
        }
        LoginStep::Fail(r) => Err((r.bhs.byte(36), r.bhs.byte(37))),
        LoginStep::Done(..) => panic!("done in security stage"),
    }
}

#[test]
fn chap_one_way_and_mutual_through_the_auth_group() {
    add_auth_group(
        7010,
        vec![
            AuthSecret { user: "u1".into(), secret: "secretsecret".into(), muser: None, msecret: None },
            AuthSecret {
                user: "u2".into(),
                secret: "secretsecret".into(),
                muser: Some("tgt".into()),
                msecret: Some("tsecrettsecret".into()),
            },
        ],
    );
    let t = node("chap", 7010, ChapPolicy { require: true, group: 7010, ..Default::default() }, (false, false));
    assert!(chap_login(7010, &t, "u1", b"secretsecret", None).unwrap().is_empty());
    assert_eq!(chap_login(7010, &t, "u1", b"wrongsecret", None), Err((2, status::AUTH_FAILED)));
    assert_eq!(chap_login(7010, &t, "nobody", b"secretsecret", None), Err((2, status::AUTH_FAILED)));

    let their_c: Vec<u8> = (1..=16).collect();
    let p = chap_login(7010, &t, "u2", b"secretsecret", Some((9, their_c.clone()))).unwrap();
    assert_eq!(value(&p, "CHAP_N"), Some("tgt"));
    // python3: hashlib.md5(bytes([9]) + b"tsecrettsecret" + bytes(range(1, 17))).hexdigest()
    assert_eq!(value(&p, "CHAP_R"), Some("0x0a6212f79647a3e581ff22918b589cb7"));
    assert_eq!(
        chap_login(7010, &t, "u1", b"secretsecret", Some((9, their_c))),
        Err((2, status::AUTH_FAILED)),
        "no msecret"
    );

    // CHAP required: skipping the security stage, or offering None only, fails.
    let f = fail(Login::new(env(7010)).on_request(&login_req(true, false, 1, 3, 1, 0), &kv(&first_keys(&t))));
    assert_eq!(f, (2, status::AUTH_FAILED));
    let mut k = first_keys(&t);
    k.push(("AuthMethod", "None"));
    assert_eq!(
        fail(Login::new(env(7010)).on_request(&login_req(true, false, 0, 1, 1, 0), &kv(&k))),
        (2, status::AUTH_FAILED)
    );
}

#[test]
fn mutual_policy_needs_the_initiators_challenge() {
    add_auth_group(
        7011,
        vec![AuthSecret {
            user: "u".into(),
            secret: "secretsecret".into(),
            muser: Some("tgt".into()),
            msecret: Some("tsecrettsecret".into()),
        }],
    );
    let t = node(
        "mutual",
        7011,
        ChapPolicy { require: true, mutual: true, group: 7011, ..Default::default() },
        (false, false),
    );
    assert_eq!(chap_login(7011, &t, "u", b"secretsecret", None), Err((2, status::AUTH_FAILED)));
    assert!(chap_login(7011, &t, "u", b"secretsecret", Some((3, vec![7; 16]))).is_ok());
}

#[test]
fn discovery_chap_follows_the_portal_groups_policy() {
    add_auth_group(
        7012,
        vec![AuthSecret { user: "d".into(), secret: "discsecret12".into(), muser: None, msecret: None }],
    );
    let _ = node("disc-chap", 7012, ChapPolicy::default(), (false, false));
    set_discovery_auth(7012, ChapPolicy { require: true, group: 7012, ..Default::default() });
    let keys = kv(&[("InitiatorName", INI), ("SessionType", "Discovery"), ("AuthMethod", "None")]);
    assert_eq!(
        fail(Login::new(env(7012)).on_request(&login_req(true, false, 0, 1, 1, 0), &keys)),
        (2, status::AUTH_FAILED)
    );
    let keys = kv(&[("InitiatorName", INI), ("SessionType", "Discovery"), ("AuthMethod", "CHAP")]);
    let r = cont(Login::new(env(7012)).on_request(&login_req(true, false, 0, 1, 1, 0), &keys));
    assert_eq!(value(&pairs(&r.data), "AuthMethod"), Some("CHAP"));
}

#[test]
fn chap_keys_out_of_place() {
    let t = node("chap-misplaced", 7013, ChapPolicy::default(), (false, false));
    let mut k = first_keys(&t);
    k.push(("CHAP_A", "5"));
    assert_eq!(
        fail(Login::new(env(7013)).on_request(&login_req(false, false, 0, 0, 1, 0), &kv(&k))),
        (2, status::MISC)
    );
    let mut k = first_keys(&t);
    k.push(("AuthMethod", "None"));
    assert_eq!(
        fail(Login::new(env(7013)).on_request(&login_req(false, false, 1, 0, 1, 0), &kv(&k))),
        (2, status::MISC)
    );
}

#[test]
fn failure_echoes_the_request() {
    let mut req = login_req(true, false, 1, 3, 0xabcd, 0x22);
    req.set_u16_at(at::CID, 5);
    let r = failure(&req, 2, status::SESSION_DOES_NOT_EXIST);
    assert_eq!(r.bhs.opcode(), op::LOGIN_RSP);
    assert_eq!(r.bhs.itt(), 0xabcd);
    assert_eq!(r.bhs.u16_at(at::TSIH), 0x22);
    assert_eq!((r.bhs.byte(36), r.bhs.byte(37)), (2, 0x0a));
    assert!(r.data.is_empty());
}

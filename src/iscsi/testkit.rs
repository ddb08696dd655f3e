//! Building blocks of the login/text tests and the `iscsi_login` fuzz target: configuration
//! entries in the process-wide table (unique names and tags per test, as the unit tests run
//! in parallel on one table) and Login/Text Request headers.

use super::config::{self, AuthGroup, AuthSecret, ChapPolicy, InitiatorGroup, Portal, PortalGroup, TargetNode};
use super::pdu::{at, flag, op, Bhs};
use crate::scsi::target::ScsiTarget;
use std::sync::{Arc, Mutex};

/// Adds initiator group `ig_tag` admitting `initiators` from anywhere, portal group `pg_tag`
/// on 127.0.0.1:3260 and a node `name` mapped through them.
pub fn add_node(name: &str, pg_tag: u32, ig_tag: u32, initiators: &[&str], auth: ChapPolicy, digests: (bool, bool)) {
    let mut cfg = config::lock();
    cfg.initiator_groups.retain(|g| g.tag != ig_tag);
    cfg.initiator_groups.push(InitiatorGroup {
        tag: ig_tag,
        initiators: initiators.iter().map(|s| s.to_string()).collect(),
        netmasks: vec!["ANY".into()],
    });
    if cfg.portal_group(pg_tag).is_none() {
        cfg.portal_groups.push(PortalGroup {
            tag: pg_tag,
            portals: vec![Portal { host: "127.0.0.1".into(), port: "3260".into() }],
            private: false,
            discovery_auth: None,
            listener: None,
        });
    }
    cfg.nodes.retain(|n| n.name != name);
    cfg.nodes.push(Arc::new(TargetNode {
        name: name.into(),
        alias: format!("alias of {name}"),
        pg_ig_maps: vec![(pg_tag, ig_tag)],
        luns: Vec::new(),
        queue_depth: 64,
        auth,
        header_digest: digests.0,
        data_digest: digests.1,
        scsi: Mutex::new(Arc::new(ScsiTarget::new(0, name, Vec::new()))),
        generation: Default::default(),
    }));
}

/// Sets the discovery CHAP policy of portal group `pg_tag` (which must exist).
pub fn set_discovery_auth(pg_tag: u32, auth: ChapPolicy) {
    let mut cfg = config::lock();
    if let Some(g) = cfg.portal_groups.iter_mut().find(|g| g.tag == pg_tag) {
        g.discovery_auth = Some(auth);
    }
}

/// Adds (replaces) auth group `tag` with `secrets`.
pub fn add_auth_group(tag: u32, secrets: Vec<AuthSecret>) {
    let mut cfg = config::lock();
    cfg.auth_groups.retain(|g| g.tag != tag);
    cfg.auth_groups.push(AuthGroup { tag, secrets });
}

/// A Login Request header: T/C bits, CSG, NSG, ITT, ISID 0x80..., TSIH, CID 1.
pub fn login_req(transit: bool, cont: bool, csg: u8, nsg: u8, itt: u32, tsih: u16) -> Bhs {
    let mut b = Bhs::new(op::LOGIN_REQ);
    b.0[0] |= flag::IMMEDIATE;
    let mut f = (csg & 3) << 2 | (nsg & 3);
    if transit {
        f |= flag::TRANSIT;
    }
    if cont {
        f |= flag::CONTINUE;
    }
    b.set_flags(f);
    b.0[at::ISID..at::ISID + 6].copy_from_slice(&[0x80, 0x12, 0x34, 0x56, 0x78, 0x9a]);
    b.set_u16_at(at::TSIH, tsih);
    b.set_itt(itt);
    b.set_u16_at(at::CID, 1);
    b
}

/// A Text Request header: F/C bits, ITT, TTT.
pub fn text_req(fin: bool, cont: bool, itt: u32, ttt: u32) -> Bhs {
    let mut b = Bhs::new(op::TEXT_REQ);
    let mut f = 0;
    if fin {
        f |= flag::FINAL;
    }
    if cont {
        f |= flag::CONTINUE;
    }
    b.set_flags(f);
    b.set_itt(itt);
    b.set_u32_at(at::TTT, ttt);
    b
}

/// `key=value\0` text of `pairs`.
pub fn kv(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        super::text::push(&mut out, k, v);
    }
    out
}

/// The pairs of a response's text, owned (not bounded by `text::MAX_KEYS`: a SendTargets
/// answer may be longer than any request).
pub fn pairs(data: &[u8]) -> Vec<(String, String)> {
    assert!(data.is_empty() || data.ends_with(&[0]), "response text ends with NUL");
    data.split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let s = std::str::from_utf8(p).expect("response text is UTF-8");
            let (k, v) = s.split_once('=').expect("key=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The value of `key` in `p`.
pub fn value<'a>(p: &'a [(String, String)], key: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

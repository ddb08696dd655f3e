//! The login phase of one connection (RFC 7143 §6.3, §11.12-11.13) as a state machine without
//! sockets: the engine feeds it each Login Request and sends what it answers.
//!
//! Stages (CSG/NSG): 0 security negotiation, 1 operational negotiation, 3 full feature
//! phase; an initiator goes 0→1→3, 0→3 or 1→3 (skipping security only where the CHAP
//! policy accepts AuthMethod=None). The first complete request names the initiator, the
//! session type and (normal sessions) the target, which is looked up with
//! `config::target_for_login` (0x0203 not found, 0x0202 not authorised). Security keys go
//! to `chap.rs`, operational keys to `negotiate.rs`. Every refusal is a Login Response with
//! status class 2 (initiator error) and its detail, after which the engine closes.

use super::chap::ChapTarget;
use super::config::{self, ChapPolicy, Refusal};
pub use super::negotiate::SessionParams;
use super::negotiate::{Negotiation, TargetOffer, LOGIN_MAX_RECV_DATA_SEGMENT};
use super::pdu::{flag, op, Bhs};
use super::text;
use std::net::SocketAddr;
use std::sync::Arc;

/// Login status classes and details (RFC 7143 §11.13.5).
pub mod status {
    /// Class: success.
    pub const SUCCESS: u8 = 0;
    /// Class: initiator error.
    pub const INITIATOR_ERROR: u8 = 2;
    /// Class: target error.
    pub const TARGET_ERROR: u8 = 3;
    /// 0x0200: initiator error, miscellaneous (protocol errors).
    pub const MISC: u8 = 0x00;
    /// 0x0201: authentication failed.
    pub const AUTH_FAILED: u8 = 0x01;
    /// 0x0202: the initiator may not access the target.
    pub const FORBIDDEN: u8 = 0x02;
    /// 0x0203: no such target.
    pub const NOT_FOUND: u8 = 0x03;
    /// 0x0204: the target was removed.
    pub const TARGET_REMOVED: u8 = 0x04;
    /// 0x0205: no common version.
    pub const UNSUPPORTED_VERSION: u8 = 0x05;
    /// 0x0206: too many connections.
    pub const TOO_MANY_CONNECTIONS: u8 = 0x06;
    /// 0x0207: a required key is missing.
    pub const MISSING_PARAMETER: u8 = 0x07;
    /// 0x0208: the connection cannot be added to the session.
    pub const CANT_INCLUDE_IN_SESSION: u8 = 0x08;
    /// 0x0209: session type not supported.
    pub const SESSION_TYPE_NOT_SUPPORTED: u8 = 0x09;
    /// 0x020a: the session (TSIH) does not exist.
    pub const SESSION_DOES_NOT_EXIST: u8 = 0x0a;
    /// 0x020b: a request that is not valid during login.
    pub const INVALID_DURING_LOGIN: u8 = 0x0b;
}

/// Login stage numbers (CSG/NSG).
const SECURITY: u8 = 0;
const OPERATIONAL: u8 = 1;
const FULL_FEATURE: u8 = 3;
/// The only protocol version (RFC 7143 §11.12.4).
const VERSION: u8 = 0;
/// Byte offsets of the Login Request/Response fields not in `pdu::at`.
const VERSION_MAX: usize = 2;
const VERSION_MIN: usize = 3;
const STATUS_CLASS: usize = 36;
const STATUS_DETAIL: usize = 37;
/// Longest TargetAlias sent (RFC 7143 §13.6: a UTF-8 string of at most 255 bytes).
const MAX_ALIAS: usize = 255;
/// Longest iSCSI name accepted (RFC 3722: 223 bytes).
const MAX_NAME: usize = 223;

/// Fixed facts about the connection a login runs on.
#[derive(Debug, Clone, Copy)]
pub struct LoginEnv {
    /// The portal group the connection arrived on.
    pub pg_tag: u32,
    /// The initiator's address.
    pub peer: SocketAddr,
    /// The local address.
    pub local: SocketAddr,
}

/// A response PDU: the engine fills StatSN (at::STATSN), ExpCmdSN, MaxCmdSN and the
/// DataSegmentLength (from data.len()) before sending; everything else is set here.
#[derive(Debug, Clone)]
pub struct Response {
    /// The header.
    pub bhs: Bhs,
    /// The data segment (unpadded).
    pub data: Vec<u8>,
}

/// What to do with a Login Request's answer.
pub enum LoginStep {
    /// Send and wait for the next Login Request.
    Continue(Response),
    /// Send (T=1, NSG=3); then the connection is in full feature phase with these results.
    /// The engine writes the TSIH it assigns into the response (at::TSIH) before sending.
    Done(Response, Box<LoginOutcome>),
    /// Send (status class 1/2/3 with its detail) and close.
    Fail(Response),
}

/// Discovery or normal session.
pub enum SessionKind {
    /// SessionType=Discovery: Text (SendTargets), NOP and Logout only.
    Discovery,
    /// A normal session with this target node.
    Normal(Arc<config::TargetNode>),
}

/// The results of a successful login.
pub struct LoginOutcome {
    /// InitiatorName.
    pub initiator_name: String,
    /// InitiatorAlias, if declared.
    pub initiator_alias: Option<String>,
    /// The ISID.
    pub isid: [u8; 6],
    /// The TSIH the initiator sent (0 = a new session).
    pub tsih: u16,
    /// The connection id.
    pub cid: u16,
    /// Discovery or normal.
    pub kind: SessionKind,
    /// Negotiated values.
    pub params: SessionParams,
}

/// How far authentication is.
enum Auth {
    /// Nothing chosen yet.
    Pending,
    /// CHAP under way.
    Chap(Box<ChapTarget>),
    /// Authenticated, or AuthMethod=None accepted.
    Done,
}

/// What the first request established.
struct Identity {
    initiator_name: String,
    initiator_alias: Option<String>,
    discovery: bool,
    target_name: Option<String>,
    kind: SessionKind,
    policy: ChapPolicy,
    neg: Negotiation,
}

/// The login state of one connection.
pub struct Login {
    env: LoginEnv,
    /// The current stage; None before the first request.
    stage: Option<u8>,
    /// ISID+TSIH (bytes 8..16) and CID of the first request; later requests must repeat them.
    nexus: Option<(u64, u16)>,
    text: text::Accumulator,
    id: Option<Identity>,
    auth: Auth,
    /// The login ended (Done or Fail): further requests are refused.
    over: bool,
}

/// A Login Response to `req` with the given flags and status.
fn response(req: &Bhs, flags: u8, class: u8, detail: u8, data: Vec<u8>) -> Response {
    let mut b = Bhs::new(op::LOGIN_RSP);
    b.set_flags(flags);
    b.set_byte(VERSION_MAX, VERSION);
    b.set_byte(VERSION_MIN, VERSION);
    b.set_lun_field(req.lun_field()); // ISID and TSIH echoed
    b.set_itt(req.itt());
    b.set_byte(STATUS_CLASS, class);
    b.set_byte(STATUS_DETAIL, detail);
    b.set_data_len(data.len() as u32);
    Response { bhs: b, data }
}

/// A Login Response refusing `req` with status class/detail (used by the engine for
/// refusals it decides itself, e.g. connection add to an unknown session).
pub fn failure(req: &Bhs, class: u8, detail: u8) -> Response {
    // T=0, the stages as the request had them (RFC 7143 §11.13: reserved on failure).
    let csg = req.flags() & 0x0c;
    response(req, csg, class, detail, Vec::new())
}

/// A refusal with an initiator error, logged with its reason.
fn refuse(req: &Bhs, env: &LoginEnv, detail: u8, why: impl std::fmt::Display) -> LoginStep {
    tracing::info!(peer = %env.peer, detail = format_args!("{:#04x}", detail), "iscsi login refused: {why}");
    LoginStep::Fail(failure(req, status::INITIATOR_ERROR, detail))
}

impl Login {
    /// A login on a fresh connection.
    pub fn new(env: LoginEnv) -> Login {
        Login {
            env,
            stage: None,
            nexus: None,
            text: text::Accumulator::new(),
            id: None,
            auth: Auth::Pending,
            over: false,
        }
    }

    /// One Login Request (header + data segment; digests are not used during login). Takes
    /// `config::lock()` briefly when it needs a target node or a secret.
    pub fn on_request(&mut self, bhs: &Bhs, data: &[u8]) -> LoginStep {
        let step = self.request(bhs, data);
        if !matches!(step, LoginStep::Continue(_)) {
            self.over = true;
        }
        step
    }

    fn request(&mut self, req: &Bhs, data: &[u8]) -> LoginStep {
        let env = self.env;
        if self.over || req.opcode() != op::LOGIN_REQ {
            return refuse(req, &env, status::INVALID_DURING_LOGIN, "not a login request, or login over");
        }
        let (vmax, vmin) = (req.byte(VERSION_MAX), req.byte(VERSION_MIN));
        if vmin > VERSION || vmax < vmin {
            return refuse(req, &env, status::UNSUPPORTED_VERSION, format_args!("versions {vmin}..{vmax}"));
        }
        let f = req.flags();
        let (transit, cont) = (f & flag::TRANSIT != 0, f & flag::CONTINUE != 0);
        let (csg, nsg) = ((f >> 2) & 3, f & 3);
        if transit && cont {
            return refuse(req, &env, status::MISC, "T and C both set");
        }
        let stage = *self.stage.get_or_insert(csg);
        if csg != stage || csg > OPERATIONAL {
            return refuse(req, &env, status::MISC, format_args!("CSG {csg} in stage {stage}"));
        }
        if transit && (nsg <= csg || nsg == 2) {
            return refuse(req, &env, status::MISC, format_args!("transit from {csg} to {nsg}"));
        }
        let nexus = (req.lun_field(), req.u16_at(super::pdu::at::CID));
        if *self.nexus.get_or_insert(nexus) != nexus {
            return refuse(req, &env, status::MISC, "ISID, TSIH or CID changed during login");
        }

        let text = match self.text.push(data, cont) {
            Ok(Some(t)) => t,
            // More to come: an empty response acknowledges the part (RFC 7143 §6.3.2... C bit).
            Ok(None) => return LoginStep::Continue(response(req, csg << 2, status::SUCCESS, 0, Vec::new())),
            Err(e) => return refuse(req, &env, status::MISC, e),
        };
        let pairs = match text::parse(&text) {
            Ok(p) => p,
            Err(e) => return refuse(req, &env, status::MISC, e),
        };

        let mut out = Vec::new();
        if self.id.is_none() {
            match self.identify(&pairs, req, &mut out) {
                Ok(()) => {}
                Err(step) => return step,
            }
        }
        let Some(id) = self.id.as_mut() else {
            return refuse(req, &env, status::MISC, "no identity");
        };

        // Security keys gathered for the auth step; everything else is negotiated in order.
        let mut auth_method = None;
        let mut chap = Vec::new();
        let mut ops = Vec::new();
        for &(k, v) in &pairs {
            match k {
                "InitiatorName" | "TargetName" | "SessionType" => {
                    let same = match k {
                        "InitiatorName" => v == id.initiator_name,
                        "TargetName" => id.discovery || id.target_name.as_deref() == Some(v),
                        _ => (v == "Discovery") == id.discovery,
                    };
                    if !same {
                        return refuse(req, &env, status::MISC, format_args!("{k} changed during login"));
                    }
                }
                "InitiatorAlias" => id.initiator_alias = Some(v.to_string()),
                "AuthMethod" | "CHAP_A" | "CHAP_I" | "CHAP_C" | "CHAP_N" | "CHAP_R" => {
                    if stage != SECURITY {
                        return refuse(req, &env, status::MISC, format_args!("{k} outside the security stage"));
                    }
                    if k == "AuthMethod" {
                        if let Err(e) = id.neg.first_offer(k) {
                            return refuse(req, &env, status::MISC, e);
                        }
                        auth_method = Some(v);
                    } else {
                        chap.push((k, v));
                    }
                }
                _ => {
                    if let Err(e) = id.neg.key(k, v, &mut ops) {
                        return refuse(req, &env, status::MISC, e);
                    }
                }
            }
        }

        // Authentication.
        let methods = methods(&id.policy);
        if stage == OPERATIONAL && matches!(self.auth, Auth::Pending) {
            // The initiator skipped the security stage: only allowed without authentication.
            if !methods.contains(&"None") {
                return refuse(req, &env, status::AUTH_FAILED, "security stage skipped, CHAP required");
            }
            self.auth = Auth::Done;
        }
        if let Some(offered) = auth_method {
            if !matches!(self.auth, Auth::Pending) {
                return refuse(req, &env, status::MISC, "AuthMethod after authentication began");
            }
            let Some(chosen) = offered.split(',').find(|m| methods.contains(m)) else {
                return refuse(
                    req,
                    &env,
                    status::AUTH_FAILED,
                    format_args!("AuthMethod={offered}, accepted {methods:?}"),
                );
            };
            text::push(&mut out, "AuthMethod", chosen);
            self.auth = if chosen == "CHAP" { Auth::Chap(Box::new(ChapTarget::new(id.policy))) } else { Auth::Done };
        }
        if !chap.is_empty() {
            let Auth::Chap(c) = &mut self.auth else {
                return refuse(req, &env, status::MISC, "CHAP keys without AuthMethod=CHAP");
            };
            let group = id.policy.group;
            let mut lookup = |user: &str| config::lock().secret(group, user);
            match c.step(&chap, &mut lookup, &mut out) {
                Ok(true) => self.auth = Auth::Done,
                Ok(false) => {}
                Err(e) => return refuse(req, &env, status::AUTH_FAILED, e),
            }
        }
        if stage == SECURITY && transit && matches!(self.auth, Auth::Pending) && auth_method.is_none() {
            // Leaving security without having offered AuthMethod: as AuthMethod=None.
            if !methods.contains(&"None") {
                return refuse(req, &env, status::AUTH_FAILED, "no AuthMethod offered, CHAP required");
            }
            self.auth = Auth::Done;
        }

        out.extend_from_slice(&ops);
        // The target may transit only once authentication is complete.
        let go = transit && matches!(self.auth, Auth::Done);
        // The target declares what it receives in the operational stage, or at the latest in
        // the response that ends the login (an initiator going 0→3 would otherwise assume 8192).
        if (go && nsg == FULL_FEATURE) || stage == OPERATIONAL {
            id.neg.declare(&mut out);
        }
        if out.len() > LOGIN_MAX_RECV_DATA_SEGMENT as usize {
            // Only reachable with configured names near their limits (the requests' own
            // answers are bounded by text.rs): refuse rather than send an oversized PDU.
            return LoginStep::Fail(failure(req, status::TARGET_ERROR, 0));
        }
        if !go {
            return LoginStep::Continue(response(req, csg << 2, status::SUCCESS, 0, out));
        }
        let flags = flag::TRANSIT | csg << 2 | nsg;
        let rsp = response(req, flags, status::SUCCESS, 0, out);
        if nsg != FULL_FEATURE {
            self.stage = Some(nsg);
            return LoginStep::Continue(rsp);
        }
        let params = match id.neg.finish() {
            Ok(p) => p,
            Err(e) => return refuse(req, &env, status::MISC, e),
        };
        let Some(id) = self.id.take() else {
            return refuse(req, &env, status::MISC, "no identity");
        };
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&req.0[super::pdu::at::ISID..super::pdu::at::ISID + 6]);
        tracing::info!(
            peer = %env.peer, initiator = %id.initiator_name, target = id.target_name.as_deref().unwrap_or("(discovery)"),
            "iscsi login complete"
        );
        LoginStep::Done(
            rsp,
            Box::new(LoginOutcome {
                initiator_name: id.initiator_name,
                initiator_alias: id.initiator_alias,
                isid,
                tsih: req.u16_at(super::pdu::at::TSIH),
                cid: req.u16_at(super::pdu::at::CID),
                kind: id.kind,
                params,
            }),
        )
    }

    /// Reads the identity keys of the first complete request, finds the target and its CHAP
    /// policy, and adds the target's declarations (TargetPortalGroupTag, TargetAlias) to `out`.
    fn identify(&mut self, pairs: &[(&str, &str)], req: &Bhs, out: &mut Vec<u8>) -> Result<(), LoginStep> {
        let env = self.env;
        let get = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let Some(initiator) = get("InitiatorName").filter(|n| !n.is_empty()) else {
            return Err(refuse(req, &env, status::MISSING_PARAMETER, "no InitiatorName"));
        };
        if initiator.len() > MAX_NAME {
            return Err(refuse(req, &env, status::MISC, "InitiatorName too long"));
        }
        let discovery = match get("SessionType").unwrap_or("Normal") {
            "Normal" => false,
            "Discovery" => true,
            other => {
                return Err(refuse(req, &env, status::SESSION_TYPE_NOT_SUPPORTED, format_args!("SessionType={other}")))
            }
        };
        let leading = req.u16_at(super::pdu::at::TSIH) == 0;
        let cfg = config::lock();
        let (kind, policy, target_name, node) = if discovery {
            (SessionKind::Discovery, cfg.discovery_auth(env.pg_tag), None, None)
        } else {
            let Some(target) = get("TargetName").filter(|n| !n.is_empty()) else {
                return Err(refuse(req, &env, status::MISSING_PARAMETER, "no TargetName"));
            };
            match cfg.target_for_login(target, env.pg_tag, initiator, env.peer.ip()) {
                Ok(node) => (SessionKind::Normal(node.clone()), node.auth, Some(target.to_string()), Some(node)),
                Err(Refusal::NotFound) => {
                    return Err(refuse(req, &env, status::NOT_FOUND, format_args!("no target {target}")))
                }
                Err(Refusal::NotAllowed) => {
                    return Err(refuse(
                        req,
                        &env,
                        status::FORBIDDEN,
                        format_args!("{initiator} may not use {target} through portal group {}", env.pg_tag),
                    ))
                }
            }
        };
        let offer = TargetOffer::new(&cfg.options, node.as_deref());
        drop(cfg);
        if let Some(node) = &node {
            // RFC 7143 §13.9: returned in the first Login Response of a normal session.
            text::push(out, "TargetPortalGroupTag", &env.pg_tag.to_string());
            if !node.alias.is_empty() && node.alias.len() <= MAX_ALIAS {
                text::push(out, "TargetAlias", &node.alias);
            }
        }
        self.id = Some(Identity {
            initiator_name: initiator.to_string(),
            initiator_alias: None,
            discovery,
            target_name,
            kind,
            policy,
            neg: Negotiation::new(offer, leading),
        });
        Ok(())
    }
}

/// The AuthMethods a policy accepts. Without an auth group no CHAP secret could verify, so
/// CHAP is only offered then if the policy requires it (and then fails: 0x0201).
fn methods(p: &ChapPolicy) -> &'static [&'static str] {
    if !p.disable && !p.require && p.group == 0 {
        &["None"]
    } else {
        p.methods()
    }
}

#[cfg(test)]
mod tests;

//! Operational key negotiation (RFC 7143 §6.2, §13): each key the initiator offers gets the
//! target's answer by the key's result rule, and the results accumulate into
//! [`SessionParams`]. The identity keys (InitiatorName, TargetName, SessionType,
//! InitiatorAlias) and the security keys (AuthMethod, CHAP_*) are the login's own business
//! (`login.rs`, `chap.rs`); everything else comes here.
//!
//! The target only answers: it never proposes a key itself, so a key the initiator does not
//! offer keeps its RFC default (e.g. FirstBurstLength 65536 even though the target would
//! offer less). A node that *requires* a digest therefore needs the initiator to offer
//! CRC32C; if it does not, [`Negotiation::finish`] refuses the login.

use super::config::{IscsiOptions, TargetNode};
use super::text;
use thiserror::Error;

/// The MaxRecvDataSegmentLength the target declares for full feature phase.
pub const TARGET_MAX_RECV_DATA_SEGMENT: u32 = 65536;
/// What each side may send during login, whatever was declared (RFC 7143 §13.12: the
/// declared values take effect after login).
pub const LOGIN_MAX_RECV_DATA_SEGMENT: u32 = 8192;
/// The RFC default of MaxRecvDataSegmentLength, assumed for a side that declares nothing.
pub const DEFAULT_MAX_RECV_DATA_SEGMENT: u32 = 8192;
/// The largest value a 24-bit length key may take (RFC 7143: 512 to 2^24 - 1).
const MAX_LEN_KEY: u64 = (1 << 24) - 1;

/// Negotiated results (RFC 7143 §13), in bytes/counts/seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionParams {
    /// HeaderDigest=CRC32C.
    pub header_digest: bool,
    /// DataDigest=CRC32C.
    pub data_digest: bool,
    /// What the target declared it receives (its MaxRecvDataSegmentLength).
    pub target_max_recv_data_segment: u32,
    /// What the initiator declared it receives: the most the target may put in one PDU's data.
    pub initiator_max_recv_data_segment: u32,
    /// MaxBurstLength.
    pub max_burst_length: u32,
    /// FirstBurstLength (never above MaxBurstLength).
    pub first_burst_length: u32,
    /// ImmediateData.
    pub immediate_data: bool,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// MaxConnections.
    pub max_connections: u32,
    /// ErrorRecoveryLevel.
    pub error_recovery_level: u32,
    /// DefaultTime2Wait.
    pub default_time2wait: u32,
    /// DefaultTime2Retain.
    pub default_time2retain: u32,
    /// DataPDUInOrder.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder.
    pub data_sequence_in_order: bool,
}

impl Default for SessionParams {
    /// The RFC 7143 defaults: what holds for every key nobody negotiated.
    fn default() -> Self {
        SessionParams {
            header_digest: false,
            data_digest: false,
            target_max_recv_data_segment: DEFAULT_MAX_RECV_DATA_SEGMENT,
            initiator_max_recv_data_segment: DEFAULT_MAX_RECV_DATA_SEGMENT,
            max_burst_length: 262144,
            first_burst_length: 65536,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            max_connections: 1,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 20,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
        }
    }
}

/// What the target offers: the global options, a node's digest requirements, and what Ferry
/// implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetOffer {
    /// HeaderDigest=CRC32C required (the node's `header_digest`).
    pub header_digest_required: bool,
    /// DataDigest=CRC32C required (the node's `data_digest`).
    pub data_digest_required: bool,
    /// MaxConnections.
    pub max_connections: u32,
    /// InitialR2T (Yes: no unsolicited Data-Out unless the initiator's OR says otherwise).
    pub initial_r2t: bool,
    /// ImmediateData.
    pub immediate_data: bool,
    /// MaxBurstLength.
    pub max_burst_length: u32,
    /// FirstBurstLength.
    pub first_burst_length: u32,
    /// DefaultTime2Wait.
    pub default_time2wait: u32,
    /// DefaultTime2Retain.
    pub default_time2retain: u32,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// ErrorRecoveryLevel.
    pub error_recovery_level: u32,
}

impl TargetOffer {
    /// The offer for a login to `node` (None: discovery) under `opts`, clamped to the RFC's
    /// ranges. ErrorRecoveryLevel is 0 whatever the option says: Ferry implements ERL 0 only.
    pub fn new(opts: &IscsiOptions, node: Option<&TargetNode>) -> TargetOffer {
        TargetOffer {
            header_digest_required: node.is_some_and(|n| n.header_digest),
            data_digest_required: node.is_some_and(|n| n.data_digest),
            // One connection per session: MC/S is refused by negotiating MaxConnections=1
            // (RFC 7143 §13.2), whatever `max_connections_per_session` says.
            max_connections: 1,
            // Offering No lets the initiator's choice stand (the result is an OR): unsolicited
            // Data-Out up to FirstBurstLength saves a round trip per write when it wants that.
            initial_r2t: false,
            immediate_data: opts.immediate_data,
            max_burst_length: 262144,
            first_burst_length: opts.first_burst_length.clamp(512, 262144),
            default_time2wait: opts.default_time2wait.min(3600),
            default_time2retain: opts.default_time2retain.min(3600),
            max_outstanding_r2t: opts.max_r2t_per_connection.clamp(1, 65535),
            error_recovery_level: 0,
        }
    }
}

/// A negotiation that must end the login (initiator error, status 0x0200).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NegotiationError {
    /// A key offered twice in one login (RFC 7143 §6.2).
    #[error("key {0} negotiated twice")]
    Duplicate(String),
    /// The node requires a digest the initiator did not agree to.
    #[error("{0}=CRC32C is required by the target and was not negotiated")]
    DigestRequired(&'static str),
}

/// How a numerical key's result is formed.
#[derive(Clone, Copy)]
enum Rule {
    Min,
    Max,
}

/// How a boolean key's result is formed.
#[derive(Clone, Copy)]
enum BoolRule {
    And,
    Or,
}

/// The operational negotiation of one login.
#[derive(Debug)]
pub struct Negotiation {
    offer: TargetOffer,
    leading: bool,
    params: SessionParams,
    seen: Vec<String>,
    declared_mrdsl: bool,
}

impl Negotiation {
    /// A negotiation for a leading login (TSIH 0; it negotiates the session-wide keys) or a
    /// connection added to a session (session-wide keys are then Irrelevant).
    pub fn new(offer: TargetOffer, leading: bool) -> Negotiation {
        Negotiation { offer, leading, params: SessionParams::default(), seen: Vec::new(), declared_mrdsl: false }
    }

    /// Records that `key` was offered; a second offer is an error. The login uses this for
    /// its own keys (AuthMethod) too.
    pub fn first_offer(&mut self, key: &str) -> Result<(), NegotiationError> {
        if self.seen.iter().any(|k| k == key) {
            return Err(NegotiationError::Duplicate(key.to_string()));
        }
        self.seen.push(key.to_string());
        Ok(())
    }

    /// Answers one key the initiator offered, appending the answer (if any) to `out`.
    pub fn key(&mut self, key: &str, value: &str, out: &mut Vec<u8>) -> Result<(), NegotiationError> {
        if key.starts_with("X-") || key.starts_with("X#") {
            text::push(out, key, "NotUnderstood");
            return Ok(());
        }
        let o = self.offer;
        match key {
            "HeaderDigest" | "DataDigest" => {
                self.first_offer(key)?;
                let required = if key == "HeaderDigest" { o.header_digest_required } else { o.data_digest_required };
                let answer = digest(value, required);
                if let Some(crc) = answer {
                    if key == "HeaderDigest" {
                        self.params.header_digest = crc;
                    } else {
                        self.params.data_digest = crc;
                    }
                }
                let v = match answer {
                    Some(true) => "CRC32C",
                    Some(false) => "None",
                    None => "Reject",
                };
                text::push(out, key, v);
            }
            "MaxRecvDataSegmentLength" => {
                // Declarative, per direction: may be declared again (RFC 7143 §6.2 allows it).
                match number(value).filter(|v| (512..=MAX_LEN_KEY).contains(v)) {
                    Some(v) => self.params.initiator_max_recv_data_segment = v as u32,
                    None => {
                        text::push(out, key, "Reject");
                        return Ok(());
                    }
                }
                self.declare(out);
            }
            "MaxConnections" => self.numeric(key, value, 1, 65535, Rule::Min, o.max_connections, out)?,
            "MaxBurstLength" => self.numeric(key, value, 512, MAX_LEN_KEY, Rule::Min, o.max_burst_length, out)?,
            "FirstBurstLength" => self.numeric(key, value, 512, MAX_LEN_KEY, Rule::Min, o.first_burst_length, out)?,
            "DefaultTime2Wait" => self.numeric(key, value, 0, 3600, Rule::Max, o.default_time2wait, out)?,
            "DefaultTime2Retain" => self.numeric(key, value, 0, 3600, Rule::Min, o.default_time2retain, out)?,
            "MaxOutstandingR2T" => self.numeric(key, value, 1, 65535, Rule::Min, o.max_outstanding_r2t, out)?,
            "ErrorRecoveryLevel" => self.numeric(key, value, 0, 2, Rule::Min, o.error_recovery_level, out)?,
            // RFC 7144: the protocol level; Ferry speaks RFC 7143, level 1.
            "iSCSIProtocolLevel" => self.numeric(key, value, 0, 31, Rule::Min, 1, out)?,
            "InitialR2T" => self.boolean(key, value, BoolRule::Or, o.initial_r2t, out)?,
            "ImmediateData" => self.boolean(key, value, BoolRule::And, o.immediate_data, out)?,
            "DataPDUInOrder" | "DataSequenceInOrder" => self.boolean(key, value, BoolRule::Or, true, out)?,
            "TaskReporter" => {
                self.first_offer(key)?;
                if !self.leading {
                    text::push(out, key, "Irrelevant");
                } else if value.split(',').any(|v| v == "RFC3720") {
                    text::push(out, key, "RFC3720");
                } else {
                    text::push(out, key, "Reject");
                }
            }
            // RFC 7143 §13.26 (obsoleted keys): a responder SHOULD answer the marker switches
            // with Reject and MAY answer No; RFC 3720 initiators understand No. The intervals
            // MUST be answered Reject.
            "OFMarker" | "IFMarker" => {
                self.first_offer(key)?;
                text::push(out, key, "No");
            }
            "OFMarkInt" | "IFMarkInt" => {
                self.first_offer(key)?;
                text::push(out, key, "Reject");
            }
            // Keys only the target sends, and SendTargets (full feature phase only).
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" | "SendTargets" => {
                self.first_offer(key)?;
                text::push(out, key, "Reject");
            }
            _ => text::push(out, key, "NotUnderstood"),
        }
        Ok(())
    }

    /// Declares the target's MaxRecvDataSegmentLength in `out`, once per login.
    pub fn declare(&mut self, out: &mut Vec<u8>) {
        if !self.declared_mrdsl {
            self.declared_mrdsl = true;
            self.params.target_max_recv_data_segment = TARGET_MAX_RECV_DATA_SEGMENT;
            text::push(out, "MaxRecvDataSegmentLength", &TARGET_MAX_RECV_DATA_SEGMENT.to_string());
        }
    }

    /// The results at the end of the login, checked against the node's requirements.
    pub fn finish(&self) -> Result<SessionParams, NegotiationError> {
        if self.offer.header_digest_required && !self.params.header_digest {
            return Err(NegotiationError::DigestRequired("HeaderDigest"));
        }
        if self.offer.data_digest_required && !self.params.data_digest {
            return Err(NegotiationError::DigestRequired("DataDigest"));
        }
        let mut p = self.params;
        // RFC 7143 §13.14: FirstBurstLength MUST NOT exceed MaxBurstLength.
        p.first_burst_length = p.first_burst_length.min(p.max_burst_length);
        Ok(p)
    }

    /// The results so far (tests, and the fuzz target's bounds).
    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    #[allow(clippy::too_many_arguments)]
    fn numeric(
        &mut self,
        key: &str,
        value: &str,
        min: u64,
        max: u64,
        rule: Rule,
        ours: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), NegotiationError> {
        self.first_offer(key)?;
        if !self.leading {
            text::push(out, key, "Irrelevant");
            return Ok(());
        }
        let Some(theirs) = number(value).filter(|v| (min..=max).contains(v)) else {
            text::push(out, key, "Reject");
            return Ok(());
        };
        let result = match rule {
            Rule::Min => theirs.min(ours as u64),
            Rule::Max => theirs.max(ours as u64),
        } as u32;
        let p = &mut self.params;
        match key {
            "MaxConnections" => p.max_connections = result,
            "MaxBurstLength" => p.max_burst_length = result,
            "FirstBurstLength" => p.first_burst_length = result,
            "DefaultTime2Wait" => p.default_time2wait = result,
            "DefaultTime2Retain" => p.default_time2retain = result,
            "MaxOutstandingR2T" => p.max_outstanding_r2t = result,
            "ErrorRecoveryLevel" => p.error_recovery_level = result,
            _ => {}
        }
        text::push(out, key, &result.to_string());
        Ok(())
    }

    fn boolean(
        &mut self,
        key: &str,
        value: &str,
        rule: BoolRule,
        ours: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), NegotiationError> {
        self.first_offer(key)?;
        if !self.leading {
            text::push(out, key, "Irrelevant");
            return Ok(());
        }
        let theirs = match value {
            "Yes" => true,
            "No" => false,
            _ => {
                text::push(out, key, "Reject");
                return Ok(());
            }
        };
        let result = match rule {
            BoolRule::And => theirs && ours,
            BoolRule::Or => theirs || ours,
        };
        let p = &mut self.params;
        match key {
            "InitialR2T" => p.initial_r2t = result,
            "ImmediateData" => p.immediate_data = result,
            "DataPDUInOrder" => p.data_pdu_in_order = result,
            "DataSequenceInOrder" => p.data_sequence_in_order = result,
            _ => {}
        }
        text::push(out, key, if result { "Yes" } else { "No" });
        Ok(())
    }
}

/// The digest chosen from the initiator's list (the first the target supports): Some(true)
/// CRC32C, Some(false) None, None when nothing in the list is acceptable.
fn digest(list: &str, required: bool) -> Option<bool> {
    list.split(',').find_map(|v| match v {
        "CRC32C" => Some(true),
        "None" if !required => Some(false),
        _ => None,
    })
}

/// The keys RFC 7143 defines (§12, §13) and RFC 7144's, as opposed to private (X-, X#) and
/// unknown ones.
pub fn is_known(key: &str) -> bool {
    matches!(
        key,
        "HeaderDigest"
            | "DataDigest"
            | "MaxConnections"
            | "SendTargets"
            | "TargetName"
            | "InitiatorName"
            | "TargetAlias"
            | "InitiatorAlias"
            | "TargetAddress"
            | "TargetPortalGroupTag"
            | "InitialR2T"
            | "ImmediateData"
            | "MaxRecvDataSegmentLength"
            | "MaxBurstLength"
            | "FirstBurstLength"
            | "DefaultTime2Wait"
            | "DefaultTime2Retain"
            | "MaxOutstandingR2T"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
            | "ErrorRecoveryLevel"
            | "SessionType"
            | "TaskReporter"
            | "iSCSIProtocolLevel"
            | "OFMarker"
            | "IFMarker"
            | "OFMarkInt"
            | "IFMarkInt"
            | "AuthMethod"
            | "CHAP_A"
            | "CHAP_I"
            | "CHAP_C"
            | "CHAP_N"
            | "CHAP_R"
    )
}

/// A numerical value (RFC 7143 §6.1: decimal, or hexadecimal with `0x`), None if malformed
/// or beyond u64.
pub fn number(v: &str) -> Option<u64> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> TargetOffer {
        TargetOffer::new(&IscsiOptions::default(), None)
    }

    /// Runs `req` (key=value\0 text) through a fresh leading negotiation.
    fn negotiate(offer: TargetOffer, req: &str) -> (Result<(), NegotiationError>, Vec<(String, String)>, Negotiation) {
        let mut n = Negotiation::new(offer, true);
        let mut out = Vec::new();
        let mut r = Ok(());
        for (k, v) in text::parse(req.as_bytes()).unwrap() {
            r = n.key(k, v, &mut out);
            if r.is_err() {
                break;
            }
        }
        let answers = text::parse(&out).unwrap().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        (r, answers, n)
    }

    fn answer<'a>(a: &'a [(String, String)], key: &str) -> Option<&'a str> {
        a.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn open_iscsi_operational_offer_gets_the_rfc_results() {
        // What open-iscsi 2.1 sends in its operational stage (iscsid.conf defaults).
        let req = "HeaderDigest=None\0DataDigest=None\0DefaultTime2Wait=2\0DefaultTime2Retain=0\0\
                   IFMarker=No\0OFMarker=No\0ErrorRecoveryLevel=0\0InitialR2T=No\0ImmediateData=Yes\0\
                   MaxBurstLength=16776192\0FirstBurstLength=262144\0MaxOutstandingR2T=1\0\
                   MaxConnections=1\0DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0\
                   MaxRecvDataSegmentLength=262144\0";
        let (r, a, n) = negotiate(offer(), req);
        r.unwrap();
        assert_eq!(answer(&a, "HeaderDigest"), Some("None"));
        assert_eq!(answer(&a, "DefaultTime2Wait"), Some("2"), "Max(2, 2)");
        assert_eq!(answer(&a, "DefaultTime2Retain"), Some("0"), "Min(0, 20)");
        assert_eq!(answer(&a, "IFMarker"), Some("No"));
        assert_eq!(answer(&a, "InitialR2T"), Some("No"), "OR with the target's No: the initiator's choice");
        assert_eq!(answer(&a, "ImmediateData"), Some("Yes"));
        assert_eq!(answer(&a, "MaxBurstLength"), Some("262144"));
        assert_eq!(answer(&a, "FirstBurstLength"), Some("8192"), "Min with SPDK's default offer");
        assert_eq!(answer(&a, "MaxConnections"), Some("1"));
        assert_eq!(answer(&a, "MaxRecvDataSegmentLength"), Some("65536"), "the target declares its own");
        let p = n.finish().unwrap();
        assert_eq!(p.initiator_max_recv_data_segment, 262144);
        assert_eq!(p.target_max_recv_data_segment, 65536);
        assert_eq!(p.first_burst_length, 8192);
        assert_eq!(p.default_time2retain, 0);
        assert!(!p.initial_r2t && p.immediate_data && !p.header_digest);
    }

    #[test]
    fn unnegotiated_keys_keep_the_rfc_defaults() {
        let (r, a, n) = negotiate(offer(), "");
        r.unwrap();
        assert!(a.is_empty());
        let p = n.finish().unwrap();
        assert_eq!(p, SessionParams::default());
        assert_eq!(p.first_burst_length, 65536);
        assert_eq!(p.target_max_recv_data_segment, 8192, "nothing declared: the default holds");
    }

    #[test]
    fn digests_pick_the_first_acceptable_and_requirements_hold() {
        let (_, a, n) = negotiate(offer(), "HeaderDigest=CRC32C,None\0DataDigest=None,CRC32C\0");
        assert_eq!(answer(&a, "HeaderDigest"), Some("CRC32C"));
        assert_eq!(answer(&a, "DataDigest"), Some("None"));
        assert!(n.params().header_digest && !n.params().data_digest);

        let mut required = offer();
        required.header_digest_required = true;
        required.data_digest_required = true;
        let (_, a, n) = negotiate(required, "HeaderDigest=None,CRC32C\0DataDigest=None\0");
        assert_eq!(answer(&a, "HeaderDigest"), Some("CRC32C"), "None is not acceptable when required");
        assert_eq!(answer(&a, "DataDigest"), Some("Reject"));
        assert_eq!(n.finish(), Err(NegotiationError::DigestRequired("DataDigest")));
        let (_, _, n) = negotiate(required, "");
        assert_eq!(n.finish(), Err(NegotiationError::DigestRequired("HeaderDigest")));
        let (_, a, _) = negotiate(offer(), "HeaderDigest=MD5\0");
        assert_eq!(answer(&a, "HeaderDigest"), Some("Reject"));
    }

    #[test]
    fn out_of_range_and_malformed_values_are_rejected() {
        let (r, a, n) = negotiate(
            offer(),
            "MaxBurstLength=511\0FirstBurstLength=16777216\0ErrorRecoveryLevel=3\0MaxConnections=0\0\
             DefaultTime2Wait=3601\0InitialR2T=maybe\0MaxOutstandingR2T=1e3\0MaxRecvDataSegmentLength=100\0\
             DataPDUInOrder=\0",
        );
        r.unwrap();
        for k in [
            "MaxBurstLength",
            "FirstBurstLength",
            "ErrorRecoveryLevel",
            "MaxConnections",
            "DefaultTime2Wait",
            "InitialR2T",
            "MaxOutstandingR2T",
            "MaxRecvDataSegmentLength",
            "DataPDUInOrder",
        ] {
            assert_eq!(answer(&a, k), Some("Reject"), "{k}");
        }
        assert_eq!(n.finish().unwrap(), SessionParams::default(), "rejected values change nothing");
    }

    #[test]
    fn hex_numbers_and_the_min_max_rules() {
        let (_, a, n) = negotiate(offer(), "MaxBurstLength=0x1000\0DefaultTime2Wait=0\0ErrorRecoveryLevel=2\0");
        assert_eq!(answer(&a, "MaxBurstLength"), Some("4096"));
        assert_eq!(answer(&a, "DefaultTime2Wait"), Some("2"), "Max(0, 2)");
        assert_eq!(answer(&a, "ErrorRecoveryLevel"), Some("0"), "Ferry offers ERL 0 only");
        assert_eq!(n.finish().unwrap().first_burst_length, 4096, "FirstBurstLength <= MaxBurstLength");
        let opts = IscsiOptions { error_recovery_level: 2, ..Default::default() };
        let (_, a, _) = negotiate(TargetOffer::new(&opts, None), "ErrorRecoveryLevel=2\0");
        assert_eq!(answer(&a, "ErrorRecoveryLevel"), Some("0"), "whatever the option says");
        assert_eq!(number("18446744073709551616"), None);
        assert_eq!(number("0x"), None);
        assert_eq!(number("0XfF"), Some(255));
    }

    #[test]
    fn private_unknown_obsolete_and_target_keys() {
        let (r, a, _) = negotiate(
            offer(),
            "X-com.example.Foo=1\0X#bar=2\0FooBar=3\0OFMarkInt=2048~8192\0IFMarker=Yes\0\
             TargetPortalGroupTag=1\0SendTargets=All\0TaskReporter=ResponseFence,RFC3720\0iSCSIProtocolLevel=2\0",
        );
        r.unwrap();
        assert_eq!(answer(&a, "X-com.example.Foo"), Some("NotUnderstood"));
        assert_eq!(answer(&a, "X#bar"), Some("NotUnderstood"));
        assert_eq!(answer(&a, "FooBar"), Some("NotUnderstood"));
        assert_eq!(answer(&a, "OFMarkInt"), Some("Reject"));
        assert_eq!(answer(&a, "IFMarker"), Some("No"));
        assert_eq!(answer(&a, "TargetPortalGroupTag"), Some("Reject"));
        assert_eq!(answer(&a, "SendTargets"), Some("Reject"));
        assert_eq!(answer(&a, "TaskReporter"), Some("RFC3720"));
        assert_eq!(answer(&a, "iSCSIProtocolLevel"), Some("1"));
    }

    #[test]
    fn a_key_twice_is_an_error_but_declaratives_may_repeat() {
        let (r, _, _) = negotiate(offer(), "MaxBurstLength=4096\0MaxBurstLength=8192\0");
        assert_eq!(r, Err(NegotiationError::Duplicate("MaxBurstLength".into())));
        let (r, a, n) = negotiate(offer(), "MaxRecvDataSegmentLength=4096\0MaxRecvDataSegmentLength=16384\0");
        r.unwrap();
        assert_eq!(a.iter().filter(|(k, _)| k == "MaxRecvDataSegmentLength").count(), 1, "declared once");
        assert_eq!(n.params().initiator_max_recv_data_segment, 16384);
        let (r, _, _) = negotiate(offer(), "X-a=1\0X-a=1\0");
        r.unwrap();
    }

    #[test]
    fn session_keys_are_irrelevant_on_an_added_connection() {
        let mut n = Negotiation::new(offer(), false);
        let mut out = Vec::new();
        n.key("MaxBurstLength", "4096", &mut out).unwrap();
        n.key("HeaderDigest", "CRC32C", &mut out).unwrap();
        assert_eq!(out, b"MaxBurstLength=Irrelevant\0HeaderDigest=CRC32C\0");
        assert_eq!(n.params().max_burst_length, 262144);
    }
}

//! CHAP authentication of the target side (RFC 7143 §12.1.3, RFC 1994), one-way and mutual.
//!
//! The exchange: the initiator offers `CHAP_A=<algorithms>`; the target picks one and sends
//! `CHAP_A`, an identifier `CHAP_I` and a random challenge `CHAP_C`; the initiator answers
//! `CHAP_N=<name> CHAP_R=H(I ‖ secret ‖ C)` and, for mutual CHAP, its own `CHAP_I`/`CHAP_C`,
//! which the target answers with `CHAP_N=<muser> CHAP_R=H(I' ‖ msecret ‖ C')`.
//!
//! Algorithms: MD5 (5, RFC 1994 and open-iscsi's default), and SHA1 (6), SHA-256 (7),
//! SHA3-256 (8) as Linux LIO offers them. Binary values are accepted in hex (`0x`) and base64
//! (`0b`) and sent in hex.
//!
//! Refused (each a [`ChapError`], a login failure 0x0201): no common algorithm, an unknown
//! name or a wrong response, a reflected challenge (the initiator's `CHAP_C` equal to the
//! target's: an attacker relaying the target's own challenge back to it), an empty or overlong
//! initiator challenge, a CHAP key repeated or sent out of turn (a second `CHAP_A` would
//! restart the exchange and let the initiator see a fresh identifier/challenge for the same
//! response), mutual CHAP without `muser`/`msecret` or with the same secret both ways.

use super::config::{AuthSecret, ChapPolicy};
use super::negotiate::number;
use super::text;
use thiserror::Error;

/// Most bytes of an initiator's challenge (as open-iscsi's `AUTH_LARGE_BINARY_MAX_LEN`).
pub const MAX_CHALLENGE_LEN: usize = 1024;

/// Why CHAP failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChapError {
    /// CHAP_A names no algorithm the target implements.
    #[error("no supported CHAP algorithm in CHAP_A={0}")]
    NoAlgorithm(String),
    /// A key that is not expected at this point of the exchange (or repeated).
    #[error("unexpected CHAP key {0}")]
    Unexpected(String),
    /// A key the step needs is missing.
    #[error("missing CHAP key {0}")]
    Missing(&'static str),
    /// A value that does not decode.
    #[error("malformed value of {0}")]
    Malformed(&'static str),
    /// CHAP_N names no secret in the auth group.
    #[error("unknown CHAP name {0:?}")]
    UnknownUser(String),
    /// CHAP_R is not the expected response.
    #[error("wrong CHAP response for {0:?}")]
    BadResponse(String),
    /// The initiator's challenge is the target's own.
    #[error("reflected challenge: the initiator's CHAP_C equals the target's")]
    Reflected,
    /// The initiator's challenge is empty or longer than [`MAX_CHALLENGE_LEN`].
    #[error("initiator challenge of {0} bytes (1 to {MAX_CHALLENGE_LEN})")]
    ChallengeLength(usize),
    /// The policy requires mutual CHAP and the initiator did not ask for it.
    #[error("mutual CHAP required, the initiator sent no CHAP_I/CHAP_C")]
    MutualRequired,
    /// Mutual CHAP asked for, and the secret has no muser/msecret.
    #[error("mutual CHAP asked for, and {0:?} has no muser/msecret")]
    MutualNotConfigured(String),
    /// Mutual CHAP with the same secret in both directions.
    #[error("mutual CHAP with the same secret in both directions for {0:?}")]
    SameSecret(String),
    /// The exchange already ended (successfully or not).
    #[error("CHAP exchange already finished")]
    Finished,
    /// The OS random source failed.
    #[error("no random bytes for the challenge: {0}")]
    Random(String),
}

/// A CHAP hash algorithm (the CHAP_A numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5 (5).
    Md5 = 5,
    /// SHA1 (6).
    Sha1 = 6,
    /// SHA-256 (7).
    Sha256 = 7,
    /// SHA3-256 (8).
    Sha3_256 = 8,
}

impl Algorithm {
    /// The algorithm with CHAP_A number `n`.
    pub fn from_code(n: u64) -> Option<Algorithm> {
        match n {
            5 => Some(Algorithm::Md5),
            6 => Some(Algorithm::Sha1),
            7 => Some(Algorithm::Sha256),
            8 => Some(Algorithm::Sha3_256),
            _ => None,
        }
    }

    /// The digest length in bytes (also the length of the target's challenges).
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 | Algorithm::Sha3_256 => 32,
        }
    }

    /// The CHAP response H(id ‖ secret ‖ challenge) (RFC 1994 §4.1).
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        fn h<D: sha2::Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            d.update([id]);
            d.update(secret);
            d.update(challenge);
            d.finalize().to_vec()
        }
        match self {
            Algorithm::Md5 => h::<md5::Md5>(id, secret, challenge),
            Algorithm::Sha1 => h::<sha1::Sha1>(id, secret, challenge),
            Algorithm::Sha256 => h::<sha2::Sha256>(id, secret, challenge),
            Algorithm::Sha3_256 => h::<sha3::Sha3_256>(id, secret, challenge),
        }
    }
}

/// Where the exchange is.
#[derive(Debug)]
enum State {
    /// Waiting for CHAP_A.
    Algorithm,
    /// Challenge sent, waiting for CHAP_N/CHAP_R.
    Response { alg: Algorithm, id: u8, challenge: Vec<u8> },
    /// Over.
    Finished,
}

/// The target's side of one CHAP exchange.
#[derive(Debug)]
pub struct ChapTarget {
    policy: ChapPolicy,
    state: State,
}

impl ChapTarget {
    /// An exchange under `policy` (its `mutual` flag makes mutual CHAP compulsory).
    pub fn new(policy: ChapPolicy) -> ChapTarget {
        ChapTarget { policy, state: State::Algorithm }
    }

    /// The CHAP keys of one Login Request, in order. Appends the target's keys to `out`;
    /// `lookup` finds the secret of a CHAP name. Returns true once the initiator (and, for
    /// mutual CHAP, the target) is authenticated. Any error ends the exchange.
    pub fn step(
        &mut self,
        keys: &[(&str, &str)],
        lookup: &mut dyn FnMut(&str) -> Option<AuthSecret>,
        out: &mut Vec<u8>,
    ) -> Result<bool, ChapError> {
        let state = std::mem::replace(&mut self.state, State::Finished);
        match state {
            State::Algorithm => {
                let mut algs = None;
                for &(k, v) in keys {
                    match k {
                        "CHAP_A" if algs.is_none() => algs = Some(v),
                        _ => return Err(ChapError::Unexpected(k.to_string())),
                    }
                }
                let algs = algs.ok_or(ChapError::Missing("CHAP_A"))?;
                // The first of the initiator's list the target implements.
                let alg = algs
                    .split(',')
                    .find_map(|a| number(a).and_then(Algorithm::from_code))
                    .ok_or_else(|| ChapError::NoAlgorithm(algs.chars().take(64).collect()))?;
                let mut rnd = vec![0u8; 1 + alg.digest_len()];
                getrandom::fill(&mut rnd).map_err(|e| ChapError::Random(e.to_string()))?;
                let (id, challenge) = (rnd[0], rnd[1..].to_vec());
                text::push(out, "CHAP_A", &(alg as u8).to_string());
                text::push(out, "CHAP_I", &id.to_string());
                text::push(out, "CHAP_C", &encode_hex(&challenge));
                self.state = State::Response { alg, id, challenge };
                Ok(false)
            }
            State::Response { alg, id, challenge } => {
                let (mut name, mut resp, mut their_id, mut their_c) = (None, None, None, None);
                for &(k, v) in keys {
                    let slot = match k {
                        "CHAP_N" => &mut name,
                        "CHAP_R" => &mut resp,
                        "CHAP_I" => &mut their_id,
                        "CHAP_C" => &mut their_c,
                        _ => return Err(ChapError::Unexpected(k.to_string())),
                    };
                    if slot.replace(v).is_some() {
                        return Err(ChapError::Unexpected(k.to_string()));
                    }
                }
                let name = name.ok_or(ChapError::Missing("CHAP_N"))?;
                let resp =
                    decode_binary(resp.ok_or(ChapError::Missing("CHAP_R"))?).ok_or(ChapError::Malformed("CHAP_R"))?;
                let secret = lookup(name).ok_or_else(|| ChapError::UnknownUser(name.to_string()))?;
                let expected = alg.response(id, secret.secret.as_bytes(), &challenge);
                if !constant_time_eq(&resp, &expected) {
                    return Err(ChapError::BadResponse(name.to_string()));
                }
                match (their_id, their_c) {
                    (None, None) if self.policy.mutual => Err(ChapError::MutualRequired),
                    (None, None) => Ok(true),
                    (Some(i), Some(c)) => {
                        let i = number(i).filter(|&i| i <= 255).ok_or(ChapError::Malformed("CHAP_I"))? as u8;
                        let c = decode_binary(c).ok_or(ChapError::Malformed("CHAP_C"))?;
                        if c.is_empty() || c.len() > MAX_CHALLENGE_LEN {
                            return Err(ChapError::ChallengeLength(c.len()));
                        }
                        if c == challenge {
                            return Err(ChapError::Reflected);
                        }
                        let (Some(muser), Some(msecret)) = (&secret.muser, &secret.msecret) else {
                            return Err(ChapError::MutualNotConfigured(name.to_string()));
                        };
                        if msecret == &secret.secret {
                            return Err(ChapError::SameSecret(name.to_string()));
                        }
                        text::push(out, "CHAP_N", muser);
                        text::push(out, "CHAP_R", &encode_hex(&alg.response(i, msecret.as_bytes(), &c)));
                        Ok(true)
                    }
                    (None, Some(_)) => Err(ChapError::Missing("CHAP_I")),
                    (Some(_), None) => Err(ChapError::Missing("CHAP_C")),
                }
            }
            State::Finished => Err(ChapError::Finished),
        }
    }
}

/// Equality that takes the same time wherever the first difference is (a response check
/// must not tell an attacker how many leading bytes were right).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `0x` followed by lowercase hex digits.
pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// A binary value (RFC 7143 §6.1): `0x`/`0X` + hex digits (an odd count has an implied leading
/// zero) or `0b`/`0B` + base64 (padding optional). None if malformed or empty after the prefix.
/// Hand-written: a dozen lines each, not worth two dependencies.
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    let (prefix, body) = (v.get(..2)?, v.get(2..)?);
    if body.is_empty() {
        return None;
    }
    match prefix {
        "0x" | "0X" => decode_hex(body),
        "0b" | "0B" => decode_base64(body),
        _ => None,
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len().div_ceil(2));
    let (head, rest) = b.split_at(b.len() % 2);
    if let Some(&c) = head.first() {
        out.push(digit(c)?);
    }
    for pair in rest.chunks_exact(2) {
        out.push(digit(pair[0])? << 4 | digit(pair[1])?);
    }
    Some(out)
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let body = s.trim_end_matches('=');
    if s.len() - body.len() > 2 || body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.as_bytes().chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = acc << 6 | sextet(c)?;
        }
        // A chunk of n sextets holds n*6/8 whole bytes, left-aligned after shifting.
        acc <<= 6 * (4 - chunk.len() as u32);
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(user: &str, secret: &str, m: Option<(&str, &str)>) -> AuthSecret {
        AuthSecret {
            user: user.into(),
            secret: secret.into(),
            muser: m.map(|m| m.0.into()),
            msecret: m.map(|m| m.1.into()),
        }
    }

    /// Runs `keys` through `t` with one secret configured; returns the answer pairs.
    fn step(
        t: &mut ChapTarget,
        keys: &[(&str, &str)],
        s: &AuthSecret,
    ) -> Result<(bool, Vec<(String, String)>), ChapError> {
        let mut out = Vec::new();
        let done = t.step(keys, &mut |u| (u == s.user).then(|| s.clone()), &mut out)?;
        let pairs = text::parse(&out).unwrap().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Ok((done, pairs))
    }

    fn get<'a>(p: &'a [(String, String)], k: &str) -> &'a str {
        &p.iter().find(|(x, _)| x == k).unwrap_or_else(|| panic!("no {k} in {p:?}")).1
    }

    /// The challenge: algorithm, identifier and challenge bytes.
    fn challenge(t: &mut ChapTarget, algs: &str, s: &AuthSecret) -> (Algorithm, u8, Vec<u8>) {
        let (done, p) = step(t, &[("CHAP_A", algs)], s).unwrap();
        assert!(!done);
        let alg = Algorithm::from_code(get(&p, "CHAP_A").parse().unwrap()).unwrap();
        let id: u8 = get(&p, "CHAP_I").parse().unwrap();
        let c = decode_binary(get(&p, "CHAP_C")).unwrap();
        assert_eq!(c.len(), alg.digest_len());
        assert!(c.len() >= 16);
        (alg, id, c)
    }

    #[test]
    fn digests_match_vectors_computed_with_python_hashlib() {
        // python3 -c 'import hashlib; print(hashlib.md5(bytes([1])+b"secretsecret"+bytes(range(16))).hexdigest())'
        // (and sha1, sha256, sha3_256 likewise)
        let c: Vec<u8> = (0..16).collect();
        let vectors = [
            (Algorithm::Md5, "226dc576c33f04ff9c3a200ffe35f442"),
            (Algorithm::Sha1, "ae35ac1694de2cf7e68e790fbface9a28501fed7"),
            (Algorithm::Sha256, "024aef34e176668b34ec2bf7f5525e3bf7f0e94d7cec77cb07d08c3d5a8e23ca"),
            (Algorithm::Sha3_256, "e2bd0aba5f885a39aa4fbebccc63203c2f728f034cbaf009b44c2f0c5544f172"),
        ];
        for (alg, hex) in vectors {
            assert_eq!(encode_hex(&alg.response(1, b"secretsecret", &c)), format!("0x{hex}"), "{alg:?}");
        }
    }

    #[test]
    fn binary_encodings_decode() {
        assert_eq!(decode_binary("0x00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_binary("0XABC"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAAECAw=="), Some(vec![0, 1, 2, 3]));
        assert_eq!(decode_binary("0bAAECAw"), Some(vec![0, 1, 2, 3]));
        assert_eq!(decode_binary("0BAAEC"), Some(vec![0, 1, 2]));
        assert_eq!(decode_binary("0b+/8="), Some(vec![0xfb, 0xff]));
        for bad in ["", "0x", "0b", "ff00", "0xfg", "0bA", "0b!!!!", "0bAA===", "é"] {
            assert_eq!(decode_binary(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn one_way_chap_with_md5() {
        let s = secret("user1", "secretsecret", None);
        let mut t = ChapTarget::new(ChapPolicy { require: true, group: 1, ..Default::default() });
        let (alg, id, c) = challenge(&mut t, "7,5", &s);
        assert_eq!(alg, Algorithm::Sha256, "the initiator's first supported choice");
        let _ = (alg, id, c);

        let mut t = ChapTarget::new(ChapPolicy { require: true, group: 1, ..Default::default() });
        let (alg, id, c) = challenge(&mut t, "5", &s);
        assert_eq!(alg, Algorithm::Md5);
        let r = encode_hex(&alg.response(id, b"secretsecret", &c));
        let (done, p) = step(&mut t, &[("CHAP_N", "user1"), ("CHAP_R", &r)], &s).unwrap();
        assert!(done);
        assert!(p.is_empty(), "one-way: the target sends nothing back");
        assert_eq!(step(&mut t, &[("CHAP_N", "user1")], &s), Err(ChapError::Finished));
    }

    #[test]
    fn base64_response_is_accepted_and_a_wrong_one_refused() {
        let s = secret("user1", "secretsecret", None);
        let mut t = ChapTarget::new(ChapPolicy::default());
        let (alg, id, c) = challenge(&mut t, "6", &s);
        let r = alg.response(id, b"secretsecret", &c);
        let b64 = base64_for_test(&r);
        assert!(step(&mut t, &[("CHAP_N", "user1"), ("CHAP_R", &b64)], &s).unwrap().0);

        let mut t = ChapTarget::new(ChapPolicy::default());
        let (alg, id, c) = challenge(&mut t, "5", &s);
        let wrong = encode_hex(&alg.response(id, b"secretsecreT", &c));
        assert_eq!(
            step(&mut t, &[("CHAP_N", "user1"), ("CHAP_R", &wrong)], &s),
            Err(ChapError::BadResponse("user1".into()))
        );
        let mut t = ChapTarget::new(ChapPolicy::default());
        let (alg, id, c) = challenge(&mut t, "5", &s);
        let r = encode_hex(&alg.response(id, b"secretsecret", &c));
        assert_eq!(
            step(&mut t, &[("CHAP_N", "nobody"), ("CHAP_R", &r)], &s),
            Err(ChapError::UnknownUser("nobody".into()))
        );
    }

    fn base64_for_test(b: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::from("0b");
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..=c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
            for _ in c.len()..3 {
                s.push('=');
            }
        }
        s
    }

    #[test]
    fn mutual_chap_answers_the_initiators_challenge() {
        let s = secret("user1", "secretsecret", Some(("target1", "tsecrettsecret")));
        let mut t = ChapTarget::new(ChapPolicy { require: true, mutual: true, group: 1, ..Default::default() });
        let (alg, id, c) = challenge(&mut t, "5", &s);
        let r = encode_hex(&alg.response(id, b"secretsecret", &c));
        let their_c: Vec<u8> = (100..132).collect();
        let (done, p) = step(
            &mut t,
            &[("CHAP_N", "user1"), ("CHAP_R", &r), ("CHAP_I", "77"), ("CHAP_C", &encode_hex(&their_c))],
            &s,
        )
        .unwrap();
        assert!(done);
        assert_eq!(get(&p, "CHAP_N"), "target1");
        assert_eq!(get(&p, "CHAP_R"), encode_hex(&Algorithm::Md5.response(77, b"tsecrettsecret", &their_c)));
    }

    #[test]
    fn mutual_chap_refusals() {
        let policy = ChapPolicy { require: true, mutual: true, group: 1, ..Default::default() };
        let run = |s: &AuthSecret, extra: &[(&str, &str)], reflect: bool| {
            let mut t = ChapTarget::new(policy);
            let (alg, id, c) = challenge(&mut t, "5", s);
            let r = encode_hex(&alg.response(id, s.secret.as_bytes(), &c));
            let reflected = encode_hex(&c);
            let mut keys = vec![("CHAP_N", s.user.as_str()), ("CHAP_R", r.as_str())];
            keys.extend_from_slice(extra);
            if reflect {
                keys.push(("CHAP_I", "1"));
                keys.push(("CHAP_C", reflected.as_str()));
            }
            step(&mut t, &keys, s).map(|r| r.0)
        };
        let good = secret("u", "secretsecret", Some(("t", "othersecret1")));
        assert_eq!(run(&good, &[], true), Err(ChapError::Reflected));
        assert_eq!(run(&good, &[], false), Err(ChapError::MutualRequired));
        assert_eq!(run(&good, &[("CHAP_I", "1"), ("CHAP_C", "0x")], false), Err(ChapError::Malformed("CHAP_C")));
        let long = format!("0x{}", "ab".repeat(MAX_CHALLENGE_LEN + 1));
        assert_eq!(
            run(&good, &[("CHAP_I", "1"), ("CHAP_C", &long)], false),
            Err(ChapError::ChallengeLength(MAX_CHALLENGE_LEN + 1))
        );
        assert_eq!(run(&good, &[("CHAP_I", "256"), ("CHAP_C", "0x0102")], false), Err(ChapError::Malformed("CHAP_I")));
        assert_eq!(run(&good, &[("CHAP_C", "0x0102")], false), Err(ChapError::Missing("CHAP_I")));
        assert_eq!(run(&good, &[("CHAP_I", "1"), ("CHAP_C", "0x0102")], false), Ok(true));
        let same = secret("u", "secretsecret", Some(("t", "secretsecret")));
        assert_eq!(run(&same, &[("CHAP_I", "1"), ("CHAP_C", "0x0102")], false), Err(ChapError::SameSecret("u".into())));
        let none = secret("u", "secretsecret", None);
        assert_eq!(
            run(&none, &[("CHAP_I", "1"), ("CHAP_C", "0x0102")], false),
            Err(ChapError::MutualNotConfigured("u".into()))
        );
    }

    #[test]
    fn out_of_turn_and_repeated_keys_are_refused() {
        let s = secret("user1", "secretsecret", None);
        let mut t = ChapTarget::new(ChapPolicy::default());
        assert_eq!(step(&mut t, &[("CHAP_A", "")], &s), Err(ChapError::NoAlgorithm("".into())));
        let mut t = ChapTarget::new(ChapPolicy::default());
        assert_eq!(step(&mut t, &[("CHAP_A", "1,2,99")], &s), Err(ChapError::NoAlgorithm("1,2,99".into())));
        let mut t = ChapTarget::new(ChapPolicy::default());
        assert_eq!(step(&mut t, &[("CHAP_N", "user1")], &s), Err(ChapError::Unexpected("CHAP_N".into())));
        let mut t = ChapTarget::new(ChapPolicy::default());
        assert_eq!(step(&mut t, &[("CHAP_A", "5"), ("CHAP_A", "5")], &s), Err(ChapError::Unexpected("CHAP_A".into())));
        // A second CHAP_A (a restart, fresh identifier and challenge) is refused.
        let mut t = ChapTarget::new(ChapPolicy::default());
        challenge(&mut t, "5", &s);
        assert_eq!(step(&mut t, &[("CHAP_A", "5")], &s), Err(ChapError::Unexpected("CHAP_A".into())));
        let mut t = ChapTarget::new(ChapPolicy::default());
        let (alg, id, c) = challenge(&mut t, "5", &s);
        let r = encode_hex(&alg.response(id, b"secretsecret", &c));
        assert_eq!(
            step(&mut t, &[("CHAP_N", "user1"), ("CHAP_R", &r), ("CHAP_R", &r)], &s),
            Err(ChapError::Unexpected("CHAP_R".into()))
        );
    }

    #[test]
    fn challenges_are_fresh() {
        let s = secret("user1", "secretsecret", None);
        let a = challenge(&mut ChapTarget::new(ChapPolicy::default()), "5", &s);
        let b = challenge(&mut ChapTarget::new(ChapPolicy::default()), "5", &s);
        assert_ne!(a.2, b.2);
    }
}

//! The text of Login and Text PDUs (RFC 7143 §6.1): `key=value` pairs, each followed by one
//! NUL, possibly continued over several PDUs with the C bit. Everything here is bounded: a
//! request has at most [`MAX_KEYS`] pairs, key names at most [`MAX_KEY_LEN`] bytes, values at
//! most [`MAX_VALUE_LEN`] bytes, and a continued text at most [`MAX_TEXT_LEN`] bytes in all.
//! A violation is a [`TextError`] (the caller answers with a login failure or a Reject).

use thiserror::Error;

/// Most `key=value` pairs in one (possibly continued) text. A login needs about 25; the bound
/// also keeps a response of `NotUnderstood` answers under the 8192 bytes an initiator
/// accepts during login (64 × (63 + 14) < 5000).
pub const MAX_KEYS: usize = 64;
/// Longest key name (RFC 7143 §6.1: "A key name ... MUST NOT exceed 63 bytes").
pub const MAX_KEY_LEN: usize = 63;
/// Longest value (RFC 7143 §6.1: 255 bytes in general, up to 8192 for binary values such as
/// CHAP challenges and responses).
pub const MAX_VALUE_LEN: usize = 8192;
/// Most bytes of one text, all its continuation PDUs together.
pub const MAX_TEXT_LEN: usize = 65536;

/// Why a text was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TextError {
    /// More than [`MAX_KEYS`] pairs.
    #[error("more than {MAX_KEYS} keys")]
    TooManyKeys,
    /// A key name longer than [`MAX_KEY_LEN`].
    #[error("key name of {0} bytes (at most {MAX_KEY_LEN})")]
    KeyTooLong(usize),
    /// A value longer than [`MAX_VALUE_LEN`].
    #[error("value of key {key} has {len} bytes (at most {MAX_VALUE_LEN})")]
    ValueTooLong {
        /// The key.
        key: String,
        /// The value's length.
        len: usize,
    },
    /// A pair without `=`.
    #[error("pair without '=' at byte {0}")]
    NoEquals(usize),
    /// An empty key name.
    #[error("empty key name at byte {0}")]
    EmptyKey(usize),
    /// A key name with a byte outside RFC 7143's key alphabet.
    #[error("key name with byte {0:#04x} outside [A-Za-z0-9.-+@_#]")]
    BadKeyChar(u8),
    /// A value that is not UTF-8.
    #[error("value of key {0} is not UTF-8")]
    NotUtf8(String),
    /// The last pair is not followed by a NUL.
    #[error("last pair not terminated by NUL")]
    Unterminated,
    /// The continued text passed [`MAX_TEXT_LEN`].
    #[error("text continued past {MAX_TEXT_LEN} bytes")]
    TooLong,
}

/// Parses a complete text into its pairs, in order. Empty pairs (two NULs in a row, or NUL
/// padding some initiators add) are skipped; duplicates are left for the negotiation to judge.
pub fn parse(data: &[u8]) -> Result<Vec<(&str, &str)>, TextError> {
    if data.len() > MAX_TEXT_LEN {
        return Err(TextError::TooLong);
    }
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return Err(TextError::Unterminated);
        };
        let pair = &rest[..end];
        let start = pos;
        pos += end + 1;
        if pair.is_empty() {
            continue;
        }
        if out.len() == MAX_KEYS {
            return Err(TextError::TooManyKeys);
        }
        // The key ends at the first '=' (values may contain '=', base64 does).
        let eq = pair.iter().position(|&b| b == b'=').ok_or(TextError::NoEquals(start))?;
        let (key, value) = (&pair[..eq], &pair[eq + 1..]);
        if key.is_empty() {
            return Err(TextError::EmptyKey(start));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(TextError::KeyTooLong(key.len()));
        }
        if let Some(&b) = key.iter().find(|&&b| !is_key_char(b)) {
            return Err(TextError::BadKeyChar(b));
        }
        // Checked above: the key's bytes are ASCII.
        let key = std::str::from_utf8(key).map_err(|_| TextError::BadKeyChar(key[0]))?;
        if value.len() > MAX_VALUE_LEN {
            return Err(TextError::ValueTooLong { key: key.to_string(), len: value.len() });
        }
        let value = std::str::from_utf8(value).map_err(|_| TextError::NotUtf8(key.to_string()))?;
        out.push((key, value));
    }
    Ok(out)
}

/// RFC 7143 §6.1: key names are made of letters, digits, '.', '-', '+', '@', '_' (and '#'
/// of the `X#` prefix of registered private keys, §13.22).
fn is_key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'@' | b'_' | b'#')
}

/// Appends `key=value\0` to `out`.
pub fn push(out: &mut Vec<u8>, key: &str, value: &str) {
    out.reserve(key.len() + value.len() + 2);
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}

/// Gathers a text sent over several PDUs (C bit set on all but the last), bounded by
/// [`MAX_TEXT_LEN`].
#[derive(Debug, Default)]
pub struct Accumulator {
    buf: Vec<u8>,
}

impl Accumulator {
    /// An empty accumulator.
    pub fn new() -> Accumulator {
        Accumulator::default()
    }

    /// Adds one PDU's data segment. Returns the whole text once a PDU without the C bit
    /// completes it (and starts over), `None` while more is to come.
    pub fn push(&mut self, data: &[u8], more: bool) -> Result<Option<Vec<u8>>, TextError> {
        if self.buf.len() + data.len() > MAX_TEXT_LEN {
            self.buf = Vec::new();
            return Err(TextError::TooLong);
        }
        self.buf.extend_from_slice(data);
        if more {
            Ok(None)
        } else {
            Ok(Some(std::mem::take(&mut self.buf)))
        }
    }

    /// Whether part of a text is held (a continuation is expected).
    pub fn pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Drops what was gathered.
    pub fn reset(&mut self) {
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_in_order_with_equals_in_values() {
        let t = b"InitiatorName=iqn.1993-08.org.debian:01:abc\0CHAP_C=0bAAB=\0\0SessionType=Normal\0";
        let p = parse(t).unwrap();
        assert_eq!(
            p,
            vec![("InitiatorName", "iqn.1993-08.org.debian:01:abc"), ("CHAP_C", "0bAAB="), ("SessionType", "Normal")]
        );
        assert_eq!(parse(b"").unwrap(), vec![]);
        assert_eq!(parse(b"K=\0").unwrap(), vec![("K", "")]);
    }

    #[test]
    fn push_builds_what_parse_reads() {
        let mut out = Vec::new();
        push(&mut out, "HeaderDigest", "None");
        push(&mut out, "MaxRecvDataSegmentLength", "65536");
        assert_eq!(out, b"HeaderDigest=None\0MaxRecvDataSegmentLength=65536\0");
        assert_eq!(parse(&out).unwrap().len(), 2);
    }

    #[test]
    fn malformed_texts_are_errors() {
        assert_eq!(parse(b"A=b"), Err(TextError::Unterminated));
        assert_eq!(parse(b"Ab\0"), Err(TextError::NoEquals(0)));
        assert_eq!(parse(b"=b\0"), Err(TextError::EmptyKey(0)));
        assert_eq!(parse(b"A b=c\0"), Err(TextError::BadKeyChar(b' ')));
        assert_eq!(parse(b"A=\xff\0"), Err(TextError::NotUtf8("A".into())));
    }

    #[test]
    fn bounds_are_exact() {
        let key = "K".repeat(MAX_KEY_LEN);
        let ok = format!("{key}=v\0");
        assert_eq!(parse(ok.as_bytes()).unwrap()[0].0, key);
        let long = format!("{key}K=v\0");
        assert_eq!(parse(long.as_bytes()), Err(TextError::KeyTooLong(64)));

        let v = "a".repeat(MAX_VALUE_LEN);
        assert_eq!(parse(format!("C={v}\0").as_bytes()).unwrap()[0].1.len(), MAX_VALUE_LEN);
        assert_eq!(
            parse(format!("C={v}a\0").as_bytes()),
            Err(TextError::ValueTooLong { key: "C".into(), len: MAX_VALUE_LEN + 1 })
        );

        let many: String = (0..MAX_KEYS).map(|i| format!("X-{i}=1\0")).collect();
        assert_eq!(parse(many.as_bytes()).unwrap().len(), MAX_KEYS);
        let more = format!("{many}X-last=1\0");
        assert_eq!(parse(more.as_bytes()), Err(TextError::TooManyKeys));
    }

    #[test]
    fn continuation_joins_pdus_and_is_bounded() {
        let mut a = Accumulator::new();
        assert_eq!(a.push(b"Initiator", true), Ok(None));
        assert!(a.pending());
        assert_eq!(a.push(b"Name=iqn.x\0", false), Ok(Some(b"InitiatorName=iqn.x\0".to_vec())));
        assert!(!a.pending());

        let chunk = vec![b'a'; 8192];
        for _ in 0..MAX_TEXT_LEN / 8192 {
            assert_eq!(a.push(&chunk, true), Ok(None));
        }
        assert_eq!(a.push(b"x", false), Err(TextError::TooLong));
        assert!(!a.pending(), "an overlong text is dropped, not kept");
    }
}

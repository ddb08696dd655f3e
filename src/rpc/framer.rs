//! Incremental framing of a JSON-RPC byte stream into complete JSON texts.
//!
//! A client may split a request across many reads or send several in one. Re-parsing the whole
//! buffer after every read costs O(n²) on a long request (an unterminated 16 MiB request once
//! cost 51 s of CPU). The [`Framer`] instead scans each byte once, tracking nesting depth,
//! strings and escapes across reads, and only hands a *complete* top-level value to serde_json.
//!
//! The scanner checks structure only (brackets match, nesting is bounded, a request starts
//! with `{` or `[`); everything else (numbers, literals, UTF-8, commas) is serde_json's job
//! once the frame is complete.
//!
//! Size limit: a frame may hold at most [`Limits::small`] bytes, unless it is a top-level
//! object whose `"method"` member names one of [`Limits::large_methods`] (`load_config` carries
//! a whole configuration); then up to [`Limits::large`]. The scanner notices the method name as
//! it streams by, so the small limit still applies to everything before the method is known:
//! a large request must put `"method"` before its big `"params"` (rpc.py, ferryctl and
//! serde_json's sorted maps all do). A name written with escapes is not recognised.

use thiserror::Error;

/// serde_json's own recursion limit: deeper texts would fail there anyway.
pub const MAX_DEPTH: usize = 128;
/// Longest member name we remember (only `method` matters).
const KEY_CAP: usize = 16;
/// Longest method name we remember.
const METHOD_CAP: usize = 64;

/// Size limits for one frame.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes in a request whose method is not in `large_methods`.
    pub small: usize,
    /// Most bytes in a request for one of `large_methods`.
    pub large: usize,
    /// Methods whose requests may be up to `large` bytes.
    pub large_methods: &'static [&'static str],
}

/// Why the stream cannot be framed; the connection cannot be resynchronised after any of them.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// A top-level text that is not an object or an array (a JSON-RPC request is one of them).
    #[error("a request must be a JSON object or array, found {0:?}")]
    NotARequest(char),
    /// Bytes that cannot start or close a value where they stand.
    #[error("unexpected byte {byte:#04x} at offset {offset} of the request")]
    Unexpected {
        /// The byte.
        byte: u8,
        /// Its offset from the start of the request.
        offset: usize,
    },
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// The request grew past its limit before it was complete.
    #[error("request exceeds {limit} bytes{hint}")]
    TooLarge {
        /// The limit that applied.
        limit: usize,
        /// How to send a bigger one, if that is possible.
        hint: &'static str,
    },
}

/// Where the scanner is inside a member of the top-level object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    /// Somewhere a member name may start (after `{` or `,`).
    ExpectKey,
    /// Inside a member name.
    Key,
    /// After a member name, before its value.
    AfterKey,
    /// Inside the value of a member.
    Value,
}

/// Splits a byte stream into complete top-level JSON texts, in O(bytes) total.
///
/// Feed it with [`Framer::push`] and take every complete frame with [`Framer::next_frame`]
/// before pushing again (frames stay in order either way). After an error the framer is
/// spent: it returns the same error forever.
#[derive(Debug)]
pub struct Framer {
    limits: Limits,
    buf: Vec<u8>,
    /// First byte of the current frame (bytes before it are consumed).
    start: usize,
    /// Next byte to scan.
    pos: usize,
    /// Inside a frame (its first byte has been seen).
    in_frame: bool,
    depth: usize,
    /// Bit i set: the container at depth i+1 is an array.
    arrays: u128,
    in_string: bool,
    escaped: bool,
    /// The frame is a top-level object (method detection applies).
    object: bool,
    member: Member,
    /// The name of the member being scanned (up to KEY_CAP bytes; longer or escaped: None).
    key: Option<Vec<u8>>,
    /// The member's value is the method name being scanned.
    in_method: bool,
    method: Option<Vec<u8>>,
    limit: usize,
    scanned: u64,
    failed: Option<FrameError>,
}

impl Framer {
    /// A framer with these limits.
    pub fn new(limits: Limits) -> Framer {
        Framer {
            limits,
            buf: Vec::new(),
            start: 0,
            pos: 0,
            in_frame: false,
            depth: 0,
            arrays: 0,
            in_string: false,
            escaped: false,
            object: false,
            member: Member::Value,
            key: None,
            in_method: false,
            method: None,
            limit: limits.small,
            scanned: 0,
            failed: None,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 {
            // Forget consumed frames once per push: a partial frame is moved at most once.
            self.buf.drain(..self.start);
            self.pos -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame (one JSON text, surrounding white space excluded), `None` when
    /// more bytes are needed, or why the stream cannot be framed.
    pub fn next_frame(&mut self) -> Option<Result<&[u8], FrameError>> {
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        match self.scan() {
            Ok(Some(end)) => {
                let begin = self.start;
                self.start = end;
                Some(Ok(&self.buf[begin..end]))
            }
            Ok(None) => None,
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = Vec::new();
                Some(Err(e))
            }
        }
    }

    /// Bytes of an incomplete frame held (0 between frames).
    pub fn pending(&self) -> usize {
        if self.in_frame {
            self.buf.len() - self.start
        } else {
            0
        }
    }

    /// Bytes scanned since creation: each byte pushed is scanned at most once.
    pub fn bytes_scanned(&self) -> u64 {
        self.scanned
    }

    fn begin_frame(&mut self, open: u8) {
        self.in_frame = true;
        self.depth = 0;
        self.arrays = 0;
        self.in_string = false;
        self.escaped = false;
        self.object = open == b'{';
        self.member = Member::ExpectKey;
        self.key = None;
        self.in_method = false;
        self.method = None;
        self.limit = self.limits.small;
    }

    /// Scans new bytes; the end offset (exclusive) of a frame completed by them.
    fn scan(&mut self) -> Result<Option<usize>, FrameError> {
        while self.pos < self.buf.len() {
            let b = self.buf[self.pos];
            self.pos += 1;
            self.scanned += 1;
            if !self.in_frame {
                match b {
                    b' ' | b'\t' | b'\n' | b'\r' => {
                        self.start = self.pos;
                        continue;
                    }
                    b'{' | b'[' => {
                        self.start = self.pos - 1;
                        self.begin_frame(b);
                    }
                    b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => return Err(FrameError::NotARequest(b as char)),
                    _ => return Err(FrameError::Unexpected { byte: b, offset: 0 }),
                }
            }
            let size = self.pos - self.start;
            if size > self.limit {
                let hint = if self.method.is_none() && self.limit < self.limits.large {
                    " (a larger request must name a method that allows it before its params)"
                } else {
                    ""
                };
                return Err(FrameError::TooLarge { limit: self.limit, hint });
            }
            if self.in_string {
                self.string_byte(b);
                continue;
            }
            match b {
                b'{' | b'[' => {
                    if self.depth == MAX_DEPTH {
                        return Err(FrameError::TooDeep);
                    }
                    if b == b'[' {
                        self.arrays |= 1 << self.depth;
                    } else {
                        self.arrays &= !(1 << self.depth);
                    }
                    self.depth += 1;
                }
                b'}' | b']' => {
                    let is_array = self.depth > 0 && self.arrays & (1 << (self.depth - 1)) != 0;
                    if self.depth == 0 || is_array != (b == b']') {
                        return Err(FrameError::Unexpected { byte: b, offset: size - 1 });
                    }
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.in_frame = false;
                        return Ok(Some(self.pos));
                    }
                }
                b'"' => {
                    self.in_string = true;
                    if self.object && self.depth == 1 {
                        match self.member {
                            Member::ExpectKey => {
                                self.member = Member::Key;
                                self.key = Some(Vec::new());
                            }
                            Member::AfterKey => {
                                self.member = Member::Value;
                                self.in_method = self.key.as_deref() == Some(b"method");
                                if self.in_method {
                                    self.method = Some(Vec::new());
                                }
                            }
                            _ => {}
                        }
                    }
                }
                b',' if self.object && self.depth == 1 => self.member = Member::ExpectKey,
                b' ' | b'\t' | b'\n' | b'\r' | b':' => {}
                _ if self.object && self.depth == 1 && self.member == Member::AfterKey => {
                    self.member = Member::Value;
                }
                _ => {}
            }
        }
        Ok(None)
    }

    fn string_byte(&mut self, b: u8) {
        let top_member = self.object && self.depth == 1;
        if self.escaped {
            self.escaped = false;
            // An escaped name is never one we recognise.
            self.forget_capture();
            return;
        }
        match b {
            b'\\' => self.escaped = true,
            b'"' => {
                self.in_string = false;
                if self.object && self.depth == 1 {
                    match self.member {
                        Member::Key => self.member = Member::AfterKey,
                        Member::Value if self.in_method => {
                            self.in_method = false;
                            self.method_known();
                        }
                        _ => {}
                    }
                }
            }
            _ if top_member => {
                let capture = match (self.member, self.in_method) {
                    (Member::Key, _) => self.key.as_mut().map(|k| (k, KEY_CAP)),
                    (Member::Value, true) => self.method.as_mut().map(|m| (m, METHOD_CAP)),
                    _ => None,
                };
                if let Some((buf, cap)) = capture {
                    if buf.len() < cap {
                        buf.push(b);
                    } else {
                        self.forget_capture();
                    }
                }
            }
            _ => {}
        }
    }

    fn forget_capture(&mut self) {
        if self.depth != 1 || !self.object {
            return;
        }
        match self.member {
            Member::Key => self.key = None,
            Member::Value if self.in_method => self.method = None,
            _ => {}
        }
    }

    fn method_known(&mut self) {
        let Some(name) = self.method.as_deref() else { return };
        if self.limits.large_methods.iter().any(|m| m.as_bytes() == name) {
            self.limit = self.limits.large;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { small: 1024, large: 1 << 20, large_methods: &["load_config"] };

    /// Every frame and the final error (if any) from `input` fed in `piece`-byte pieces.
    fn frames(input: &[u8], piece: usize) -> (Vec<String>, Option<FrameError>) {
        let mut f = Framer::new(LIMITS);
        let mut out = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            f.push(chunk);
            while let Some(r) = f.next_frame() {
                match r {
                    Ok(bytes) => out.push(String::from_utf8(bytes.to_vec()).unwrap()),
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    #[test]
    fn frames_values_split_anywhere_and_batched() {
        let input = br#" {"a":"x}]{\"","b":[1,{"c":2}]} [1,2]
{"jsonrpc":"2.0","method":"m"}"#;
        for piece in [1, 2, 3, 7, 1000] {
            let (got, err) = frames(input, piece);
            assert_eq!(err, None);
            assert_eq!(got, [r#"{"a":"x}]{\"","b":[1,{"c":2}]}"#, "[1,2]", r#"{"jsonrpc":"2.0","method":"m"}"#]);
        }
        let (got, err) = frames(br#"{"a":1"#, 1);
        assert!(got.is_empty() && err.is_none(), "a prefix waits for more");
    }

    #[test]
    fn rejects_what_cannot_be_a_request_at_once() {
        assert_eq!(frames(b"42", 1).1, Some(FrameError::NotARequest('4')));
        assert_eq!(frames(b"\"s\"", 1).1, Some(FrameError::NotARequest('"')));
        assert!(matches!(frames(b"\xff{}", 1).1, Some(FrameError::Unexpected { byte: 0xff, .. })));
        assert!(matches!(frames(b"{]", 1).1, Some(FrameError::Unexpected { byte: b']', offset: 1 })));
        assert!(matches!(frames(b"[}", 1).1, Some(FrameError::Unexpected { byte: b'}', .. })));
        assert!(matches!(frames(b"}", 1).1, Some(FrameError::Unexpected { .. })));
        assert_eq!(frames(&[b'['; 129], 64).1, Some(FrameError::TooDeep));
        let (got, err) = frames(&[[b'['; 128], [b']'; 128]].concat(), 64);
        assert_eq!((got.len(), err), (1, None), "128 levels are still framed");
        // Frames before the bad byte are still delivered.
        let (got, err) = frames(b"{} {} ]", 100);
        assert_eq!(got.len(), 2);
        assert!(err.is_some());
    }

    #[test]
    fn small_limit_unless_the_method_allows_more() {
        let pad = "y".repeat(2000);
        let small = format!(r#"{{"method":"bdev_get_bdevs","params":{{"name":"{pad}"}}}}"#);
        assert!(matches!(frames(small.as_bytes(), 100).1, Some(FrameError::TooLarge { limit: 1024, .. })));
        let large = format!(r#"{{"id":1,"method":"load_config","params":{{"x":"{pad}"}}}}"#);
        let (got, err) = frames(large.as_bytes(), 100);
        assert_eq!((got.len(), err), (1, None));
        // The method must come before the bulk; an escaped or nested "method" does not count.
        let late = format!(r#"{{"params":{{"x":"{pad}"}},"method":"load_config"}}"#);
        assert!(matches!(frames(late.as_bytes(), 100).1, Some(FrameError::TooLarge { limit: 1024, .. })));
        let escaped = format!(r#"{{"method":"load\u005fconfig","params":"{pad}"}}"#);
        assert!(matches!(frames(escaped.as_bytes(), 100).1, Some(FrameError::TooLarge { .. })));
        let nested = format!(r#"{{"p":{{"method":"load_config"}},"x":"{pad}"}}"#);
        assert!(matches!(frames(nested.as_bytes(), 100).1, Some(FrameError::TooLarge { .. })));
        let value_not_key = format!(r#"{{"x":"method","y":"load_config","z":"{pad}"}}"#);
        assert!(matches!(frames(value_not_key.as_bytes(), 100).1, Some(FrameError::TooLarge { .. })));
        // The limit resets for the next frame.
        let two = format!("{large}{small}");
        let (got, err) = frames(two.as_bytes(), 100);
        assert_eq!(got.len(), 1);
        assert!(matches!(err, Some(FrameError::TooLarge { limit: 1024, .. })));
        // A large method still has a limit.
        let huge = format!(r#"{{"method":"load_config","params":"{}"}}"#, "z".repeat(2 << 20));
        assert!(matches!(frames(huge.as_bytes(), 65536).1, Some(FrameError::TooLarge { limit: 1048576, .. })));
    }

    /// The quadratic parser's defect, measured without a clock: however a long unterminated
    /// request is split, each byte is scanned once and a partial frame is moved at most once
    /// per push.
    #[test]
    fn each_byte_is_scanned_once() {
        let limits = Limits { small: 64, large: 64 << 20, large_methods: &["load_config"] };
        let mut input = br#"{"method":"load_config","params":{"x":""#.to_vec();
        input.resize(4 << 20, b'a');
        for piece in [1usize, 100, 65536] {
            let mut f = Framer::new(limits);
            for chunk in input.chunks(piece) {
                f.push(chunk);
                assert!(f.next_frame().is_none());
            }
            assert_eq!(f.bytes_scanned(), input.len() as u64, "piece {piece}");
            assert_eq!(f.pending(), input.len());
        }
    }

    #[test]
    fn spent_after_an_error() {
        let mut f = Framer::new(LIMITS);
        f.push(b"]");
        assert!(matches!(f.next_frame(), Some(Err(_))));
        f.push(b"{}");
        assert!(matches!(f.next_frame(), Some(Err(_))));
    }
}

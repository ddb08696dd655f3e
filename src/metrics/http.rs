//! The little HTTP/1.x the metrics endpoint speaks: gather one request head (bounded), route
//! it, and write one response with `Connection: close`.
//!
//! Why not an HTTP server crate: the ones on crates.io (hyper, axum, tiny_http, ...) bring an
//! async runtime or threads of their own, and the endpoint must live on the control plane's
//! event loop, never blocking it, like every other socket of ferryd. What is hand-written is
//! only the framing around a well-kept parser: the head is found incrementally (each byte
//! scanned once, at most [`MAX_HEAD`] bytes kept) and then parsed once by `httparse` (hyper's
//! parser: request line and header syntax). One request per connection, answered and closed,
//! keeps the state machine small; Prometheus and curl both take that.

use thiserror::Error;

/// Largest request head accepted (request line and headers); more is answered 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header lines accepted; more is answered 431.
pub const MAX_HEADERS: usize = 64;
/// The path served.
pub const METRICS_PATH: &str = "/metrics";
/// The exposition format's content type (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why a request is refused, with its status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HttpError {
    /// The head is not HTTP/1.x (or lacks what HTTP/1.1 requires).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Another path than [`METRICS_PATH`].
    #[error("not found: only {METRICS_PATH} is served")]
    NotFound,
    /// A method other than GET or HEAD.
    #[error("method not allowed: only GET and HEAD")]
    MethodNotAllowed,
    /// The head passed [`MAX_HEAD`] bytes or [`MAX_HEADERS`] lines.
    #[error("request header fields too large")]
    HeadTooLarge,
    /// HTTP/2 or another version.
    #[error("HTTP version not supported: HTTP/1.0 and HTTP/1.1 only")]
    VersionNotSupported,
}

impl HttpError {
    /// The status code and reason phrase.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            HttpError::BadRequest(_) => (400, "Bad Request"),
            HttpError::NotFound => (404, "Not Found"),
            HttpError::MethodNotAllowed => (405, "Method Not Allowed"),
            HttpError::HeadTooLarge => (431, "Request Header Fields Too Large"),
            HttpError::VersionNotSupported => (505, "HTTP Version Not Supported"),
        }
    }

    /// The whole response: status line, headers and a one-line explanation.
    pub fn response(&self) -> Vec<u8> {
        let (code, reason) = self.status();
        let allow: &[(&str, &str)] = match self {
            HttpError::MethodNotAllowed => &[("Allow", "GET, HEAD")],
            _ => &[],
        };
        response(code, reason, allow, "text/plain; charset=utf-8", format!("{self}\n").as_bytes(), false)
    }
}

/// A request the endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// HEAD: the headers of the answer without its body.
    pub head_only: bool,
}

/// Gathers a request head from a connection's reads.
#[derive(Debug, Default)]
pub struct RequestReader {
    buf: Vec<u8>,
    /// Bytes already scanned for the end of the head.
    scanned: usize,
}

impl RequestReader {
    /// Bytes kept so far (at most [`MAX_HEAD`] and the few that may end a head at it).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next bytes read and says whether the request is decided: `None` while the
    /// head is incomplete, else the request or why it is refused. Bytes past the head (a
    /// body, a pipelined request) are ignored: the connection closes after one answer.
    pub fn push(&mut self, bytes: &[u8]) -> Option<Result<Request, HttpError>> {
        // Never keep more than the limit (and a little to see the head end inside it).
        let room = (MAX_HEAD + 4).saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        // An empty line ends the head: "\n\n" or "\n\r\n" (LF alone is tolerated, RFC 9112 2.2).
        // Re-scan the last two bytes, which may start an ending split across reads.
        let start = self.scanned.saturating_sub(2);
        let end = self.buf[start..].windows(2).enumerate().find_map(|(i, w)| {
            let at = start + i;
            match w {
                [b'\n', b'\n'] => Some(at + 2),
                [b'\n', b'\r'] if self.buf.get(at + 2) == Some(&b'\n') => Some(at + 3),
                _ => None,
            }
        });
        self.scanned = self.buf.len();
        match end {
            Some(end) if end <= MAX_HEAD => Some(parse(&self.buf[..end])),
            Some(_) => Some(Err(HttpError::HeadTooLarge)),
            None if self.buf.len() >= MAX_HEAD => Some(Err(HttpError::HeadTooLarge)),
            None => None,
        }
    }
}

/// Parses and routes one complete head.
fn parse(head: &[u8]) -> Result<Request, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HttpError::BadRequest("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(httparse::Error::Version) if version_token(head).is_some_and(|v| v.starts_with(b"HTTP/")) => {
            return Err(HttpError::VersionNotSupported)
        }
        Err(e) => return Err(HttpError::BadRequest(parse_error(e))),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HttpError::BadRequest("incomplete request line"));
    };
    // HTTP/1.1 requires exactly one Host header (RFC 9112 3.2); 1.0 has none to require.
    let hosts = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host")).count();
    if (minor == 1 && hosts != 1) || hosts > 1 {
        return Err(HttpError::BadRequest("an HTTP/1.1 request needs exactly one Host header"));
    }
    if path_of(target)? != METRICS_PATH {
        return Err(HttpError::NotFound);
    }
    match method {
        "GET" => Ok(Request { head_only: false }),
        "HEAD" => Ok(Request { head_only: true }),
        _ => Err(HttpError::MethodNotAllowed),
    }
}

/// The path of a request target: origin form (`/metrics?x`) or absolute form
/// (`http://host:port/metrics`), without its query.
fn path_of(target: &str) -> Result<&str, HttpError> {
    let path = if target.starts_with('/') {
        target
    } else if let Some((scheme, rest)) = target.split_once("://") {
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(HttpError::BadRequest("unknown scheme in the request target"));
        }
        rest.find('/').map_or("/", |i| &rest[i..])
    } else if target == "*" {
        return Err(HttpError::NotFound);
    } else {
        return Err(HttpError::BadRequest("the request target is not a path"));
    };
    Ok(path.split_once('?').map_or(path, |(p, _)| p))
}

/// The third token of the request line, if any.
fn version_token(head: &[u8]) -> Option<&[u8]> {
    let line = head.split(|&b| b == b'\n').find(|l| !l.is_empty() && *l != b"\r")?;
    line.split(|&b| b == b' ').filter(|t| !t.is_empty()).nth(2)
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Token => "invalid method or request target",
        _ => "malformed request",
    }
}

/// One response: status line, `extra` headers, the content headers, then `body` (left out
/// for HEAD, where Content-Length still gives the body's size).
pub fn response(
    code: u16,
    reason: &str,
    extra: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {code} {reason}\r\n");
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(text: &[u8]) -> Option<Result<Request, HttpError>> {
        RequestReader::default().push(text)
    }

    const GET: Result<Request, HttpError> = Ok(Request { head_only: false });

    #[test]
    fn prometheus_and_curl_requests_are_served() {
        let prometheus = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9100\r\nUser-Agent: Prometheus/2.42.0\r\n\
            Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n\
            Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n";
        assert_eq!(whole(prometheus), Some(GET));
        assert_eq!(
            whole(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"),
            Some(GET)
        );
        assert_eq!(whole(b"HEAD /metrics?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"), Some(Ok(Request { head_only: true })));
        assert_eq!(whole(b"GET http://h:1/metrics HTTP/1.1\r\nHost: h\r\n\r\n"), Some(GET));
        // HTTP/1.0 needs no Host; bare LF line endings are tolerated.
        assert_eq!(whole(b"GET /metrics HTTP/1.0\n\n"), Some(GET));
    }

    #[test]
    fn a_head_split_anywhere_is_the_same_head() {
        let text = b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n";
        for cut in 0..text.len() {
            let mut r = RequestReader::default();
            let first = r.push(&text[..cut]);
            assert_eq!(first, None, "decided after {cut} bytes");
            assert_eq!(r.push(&text[cut..]), Some(GET), "cut at {cut}");
        }
        // One byte at a time.
        let mut r = RequestReader::default();
        let decided: Vec<_> = text.iter().filter_map(|b| r.push(&[*b])).collect();
        assert_eq!(decided, vec![GET]);
    }

    #[test]
    fn refusals_carry_their_status() {
        let status = |t: &[u8]| whole(t).unwrap().unwrap_err().status().0;
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 404);
        assert_eq!(status(b"GET /metricsx HTTP/1.1\r\nHost: h\r\n\r\n"), 404);
        assert_eq!(status(b"GET * HTTP/1.1\r\nHost: h\r\n\r\n"), 404);
        assert_eq!(status(b"POST /metrics HTTP/1.1\r\nHost: h\r\n\r\n"), 405);
        assert_eq!(status(b"get /metrics HTTP/1.1\r\nHost: h\r\n\r\n"), 405);
        assert_eq!(status(b"GET /metrics HTTP/1.1\r\n\r\n"), 400, "no Host");
        assert_eq!(status(b"GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(status(b"GET /metrics HTTP/2.0\r\nHost: h\r\n\r\n"), 505);
        assert_eq!(status(b"GET /metrics FOO\r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n"), 400, "a TLS hello");
        assert_eq!(status(b"GET /metrics HTTP/1.1\r\nHost : h\r\n\r\n"), 400, "space before the colon");
        assert_eq!(status(b"GET /metrics HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n"), 400, "obsolete line folding");
        assert_eq!(status(b"GET ftp://h/metrics HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b"\r\n\r\n"), 400);
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(status(format!("GET /metrics HTTP/1.1\r\nHost: h\r\n{many}\r\n").as_bytes()), 431);
    }

    #[test]
    fn an_endless_head_is_refused_at_the_limit_without_keeping_more() {
        let mut r = RequestReader::default();
        r.push(b"GET /metrics HTTP/1.1\r\nX: ");
        let mut decided = None;
        let mut fed = 0;
        while decided.is_none() {
            decided = r.push(&[b'a'; 1000]);
            fed += 1000;
            assert!(fed <= MAX_HEAD + 1000, "still undecided after {fed} bytes");
        }
        assert_eq!(decided, Some(Err(HttpError::HeadTooLarge)));
        assert!(r.buf.len() <= MAX_HEAD + 4);
        // No newline at all.
        assert_eq!(RequestReader::default().push(&[b'G'; MAX_HEAD]), Some(Err(HttpError::HeadTooLarge)));
    }

    #[test]
    fn responses_are_well_formed() {
        let r = HttpError::MethodNotAllowed.response();
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = parsed.parse(&r).unwrap() else { panic!("partial") };
        assert_eq!(parsed.code, Some(405));
        let allow = parsed.headers.iter().find(|h| h.name == "Allow").unwrap();
        assert_eq!(allow.value, b"GET, HEAD");
        let cl = parsed.headers.iter().find(|h| h.name == "Content-Length").unwrap();
        assert_eq!(std::str::from_utf8(cl.value).unwrap().parse::<usize>().unwrap(), r.len() - len);
        let head = response(200, "OK", &[], CONTENT_TYPE, b"abc", true);
        assert!(head.ends_with(b"Content-Length: 3\r\nConnection: close\r\n\r\n"));
    }
}

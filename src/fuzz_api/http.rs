//! The metrics endpoint's HTTP target: the fuzzer's bytes read by `metrics::http`'s
//! `RequestReader` as a connection's reads deliver them, once whole and once cut into the
//! pieces the first byte picks (as `metrics::connection` feeds it). The outcome must not
//! depend on the cuts; the reader must decide by the head limit and never keep more; a served
//! request must be a GET or HEAD of /metrics; and every answer the connection would write
//! must parse as an HTTP/1.1 response whose Content-Length is its body's.

use super::Input;
use crate::metrics::http::{self, HttpError, Request, RequestReader, CONTENT_TYPE, MAX_HEAD};

/// Feeds `bytes` in pieces of `cuts` bytes (the rest in one read) until the reader decides.
fn read(bytes: &[u8], cuts: &[usize]) -> Option<Result<Request, HttpError>> {
    let mut reader = RequestReader::default();
    let mut rest = bytes;
    let mut cuts = cuts.iter();
    while !rest.is_empty() {
        let n = cuts.next().copied().unwrap_or(rest.len()).clamp(1, rest.len());
        let decided = reader.push(&rest[..n]);
        assert!(reader.buffered() <= MAX_HEAD + 4, "the reader kept {} bytes", reader.buffered());
        if decided.is_some() {
            return decided;
        }
        rest = &rest[n..];
    }
    None
}

/// Checks that `response` is one well-formed HTTP/1.1 response with status `code`.
#[track_caller]
fn check_response(response: &[u8], code: u16, head_only: bool) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = parsed.parse(response) else {
        panic!("not a complete response: {:?}", String::from_utf8_lossy(response))
    };
    assert_eq!((parsed.version, parsed.code), (Some(1), Some(code)));
    let length = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
        .expect("a Content-Length");
    let body = response.len() - head;
    assert_eq!(if head_only { 0 } else { length }, body, "Content-Length and body");
}

/// Input: one byte choosing how the rest is cut into reads, then the bytes of a connection.
/// Returns 1 when the bytes make a request the endpoint serves.
pub fn http(data: &[u8]) -> u64 {
    let mut input = Input(data);
    let seed = input.u8() as usize;
    let bytes = input.rest();
    let cuts: Vec<usize> = (0..bytes.len()).map(|i| 1 + (i * 13 + seed) % (seed % 32 + 1)).collect();
    let whole = read(bytes, &[]);
    assert_eq!(whole, read(bytes, &cuts), "the outcome depends on how the bytes were cut ({cuts:?})");
    if bytes.len() >= MAX_HEAD + 4 {
        assert!(whole.is_some(), "undecided after {} bytes", bytes.len());
    }
    match whole {
        None => 0,
        Some(Err(e)) => {
            check_response(&e.response(), e.status().0, false);
            0
        }
        Some(Ok(request)) => {
            // Only GET and HEAD (of /metrics, which the router checked) are served.
            let line = bytes.split(|&b| b == b'\n').find(|l| !l.is_empty() && *l != b"\r").unwrap_or_default();
            let method = if request.head_only { &b"HEAD "[..] } else { b"GET " };
            assert!(line.starts_with(method), "{request:?} from {:?}", String::from_utf8_lossy(line));
            let answer = http::response(200, "OK", &[], CONTENT_TYPE, b"ferry_x 1\n", request.head_only);
            check_response(&answer, 200, request.head_only);
            1
        }
    }
}

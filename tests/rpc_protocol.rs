//! Hostile and odd JSON-RPC input against a real `ferryd`: every case gets the right error
//! code (or the right answer), and the daemon keeps serving afterwards.

mod common;

use common::{connect, exchange, Ferryd};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Asserts the daemon still answers a normal request.
fn still_serving(d: &mut Ferryd) {
    assert!(d.is_running(), "ferryd died; log:\n{}", d.log_text());
    assert!(d.ok("spdk_get_version", Value::Null)["version"].is_string());
}

fn code(v: &Value) -> i64 {
    v["error"]["code"].as_i64().unwrap_or_else(|| panic!("expected an error, got {v}"))
}

/// Reads `n` newline-separated JSON answers through one buffered reader.
fn read_answers(s: &UnixStream, n: usize) -> Vec<Value> {
    let mut r = BufReader::new(s);
    (0..n)
        .map(|_| {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            serde_json::from_str(&line).unwrap()
        })
        .collect()
}

#[test]
fn malformed_json_gets_parse_error_and_the_connection_closes() {
    let mut d = Ferryd::start(&[]);
    let mut s = connect(&d.sock);
    s.write_all(br#"{"jsonrpc":"2.0","id":1,]]]"#).unwrap();
    let answer = read_answers(&s, 1).remove(0);
    assert_eq!(code(&answer), -32700);
    assert_eq!(answer["id"], Value::Null);
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "connection closed after a parse error");
    for garbage in [&b"\xff\xfe\x00garbage"[..], b"{\"a\":\"\xc3\x28\"}", b"nul"] {
        let mut s = connect(&d.sock);
        s.write_all(garbage).unwrap();
        if garbage == b"nul" {
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            continue; // an incomplete literal then EOF: nothing to answer
        }
        assert_eq!(code(&read_answers(&s, 1)[0]), -32700, "{garbage:?}");
    }
    // 100000 nested arrays: serde_json's recursion limit turns this into a parse error.
    let nested = "[".repeat(100_000);
    assert_eq!(code(&exchange(&d.sock, nested.as_bytes())), -32700);
    still_serving(&mut d);
}

#[test]
fn split_and_batched_writes_are_answered_in_order() {
    let mut d = Ferryd::start(&[]);
    // One request, one byte per write.
    let req = br#"{"jsonrpc":"2.0","id":"slow","method":"spdk_get_version"}"#;
    let mut s = connect(&d.sock);
    for b in req.iter() {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    let a = read_answers(&s, 1).remove(0);
    assert_eq!(a["id"], "slow");
    assert!(a["result"]["version"].is_string());
    // Three requests in one write, with and without white space between them.
    let mut s = connect(&d.sock);
    s.write_all(
        br#"{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"}{"jsonrpc":"2.0","id":2,"method":"nope"}
  {"jsonrpc":"2.0","id":3,"method":"bdev_get_bdevs"}"#,
    )
    .unwrap();
    let answers = read_answers(&s, 3);
    assert_eq!(answers.iter().map(|a| a["id"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(answers[0]["result"].is_object());
    assert_eq!(code(&answers[1]), -32601);
    assert_eq!(answers[2]["result"], json!([]));
    // A notification gets no answer: the only line is the next request's.
    let mut s = connect(&d.sock);
    s.write_all(
        br#"{"jsonrpc":"2.0","method":"spdk_get_version"}{"jsonrpc":"2.0","id":9,"method":"spdk_get_version"}"#,
    )
    .unwrap();
    assert_eq!(read_answers(&s, 1)[0]["id"], 9);
    // A batch gets an array of answers.
    let batch = exchange(
        &d.sock,
        br#"[{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"},{"jsonrpc":"2.0","id":2,"method":"x"}]"#,
    );
    assert_eq!(batch.as_array().unwrap().len(), 2);
    assert_eq!(code(&batch[1]), -32601);
    still_serving(&mut d);
}

#[test]
fn invalid_requests_get_invalid_request() {
    let mut d = Ferryd::start(&[]);
    for bad in [
        &b"42"[..],
        b"[]",
        br#"{"id":1,"method":"spdk_get_version"}"#,
        br#"{"jsonrpc":"1.0","id":1,"method":"spdk_get_version"}"#,
        br#"{"jsonrpc":"2.0","id":1,"method":7}"#,
        br#"{"jsonrpc":"2.0","id":{"x":1},"method":"spdk_get_version"}"#,
        br#"{"jsonrpc":"2.0","id":1}"#,
    ] {
        assert_eq!(code(&exchange(&d.sock, bad)), -32600, "{}", String::from_utf8_lossy(bad));
    }
    assert_eq!(code(&exchange(&d.sock, br#"{"jsonrpc":"2.0","id":1,"method":"bdev_nope"}"#)), -32601);
    still_serving(&mut d);
}

#[test]
fn bad_parameters_get_invalid_params_naming_the_parameter() {
    let mut d = Ferryd::start(&[]);
    let e = d.err("bdev_malloc_create", json!({"name": "M", "num_blocks": 8}));
    assert!(e.code == -32602 && e.message.contains("block_size"), "{e:?}");
    let e = d.err("bdev_malloc_create", json!({"name": "M", "num_blocks": "8", "block_size": 512}));
    assert!(e.code == -32602 && e.message.contains("invalid type"), "{e:?}");
    let e = d.err("bdev_malloc_create", json!({"name": "M", "num_blocks": 8, "block_size": 512, "bogus": 1}));
    assert!(e.code == -32602 && e.message.contains("bogus"), "{e:?}");
    let e = d.err("bdev_malloc_create", json!([8, 512]));
    assert_eq!(e.code, -32602);
    let e = d.err("spdk_get_version", json!({"x": 1}));
    assert!(e.code == -32602 && e.message.contains('x'), "{e:?}");
    let e = d.err("bdev_malloc_create", json!({"name": "M", "num_blocks": -1, "block_size": 512}));
    assert_eq!(e.code, -32602);
    still_serving(&mut d);
}

#[test]
fn duplicates_and_absurd_sizes_are_refused() {
    let mut d = Ferryd::start(&[]);
    d.ok("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 64, "block_size": 512}));
    let e = d.err("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 64, "block_size": 512}));
    assert!(e.code == -17 && e.message.contains("already exists"), "{e:?}");
    let e = d.err("bdev_null_create", json!({"name": "Malloc0", "num_blocks": 64, "block_size": 512}));
    assert_eq!(e.code, -17);
    assert_eq!(d.err("bdev_malloc_delete", json!({"name": "Nope"})).code, -19);
    let e = d.err("bdev_null_delete", json!({"name": "Malloc0"}));
    assert!(e.message.contains("malloc"), "a null delete does not remove a malloc bdev: {e:?}");
    let e = d.err("bdev_malloc_create", json!({"name": "Huge", "num_blocks": 1u64 << 62, "block_size": 512}));
    assert!(e.code == -12 || e.code == -32602, "{e:?}");
    let e = d.err("bdev_malloc_create", json!({"name": "Huge", "num_blocks": u64::MAX, "block_size": 4096}));
    assert!(e.code == -12 || e.code == -32602, "{e:?}");
    for bs in [0u64, 3, 1000, 1 << 20, 1 << 40] {
        let e = d.err("bdev_null_create", json!({"name": "B", "num_blocks": 8, "block_size": bs}));
        assert_eq!(e.code, -32602, "block_size {bs}: {e:?}");
    }
    assert_eq!(d.err("bdev_null_create", json!({"name": "Z", "num_blocks": 0, "block_size": 512})).code, -32602);
    let long = "x".repeat(300);
    assert_eq!(d.err("bdev_null_create", json!({"name": long, "num_blocks": 8, "block_size": 512})).code, -32602);
    assert_eq!(d.err("bdev_null_create", json!({"name": "a b", "num_blocks": 8, "block_size": 512})).code, -32602);
    let e = d.err("bdev_uring_create", json!({"name": "U", "filename": "/nonexistent/disk.img"}));
    assert!(e.code == -2 && e.message.contains("/nonexistent/disk.img"), "{e:?}");
    let e = d.err("bdev_uring_create", json!({"name": "U", "filename": "/tmp"}));
    assert!(e.code < 0, "{e:?}");
    let empty = d.dir.join("empty.img");
    std::fs::File::create(&empty).unwrap();
    let e = d.err("bdev_uring_create", json!({"name": "U", "filename": empty}));
    assert_eq!(e.code, -32602, "a file smaller than one block: {e:?}");
    // A 900 kB request with a huge string parameter gets a proper answer; 2 MB is past the
    // limit of a method other than load_config.
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "bdev_get_bdevs", "params": {"name": "y".repeat(900 << 10)}});
    assert_eq!(code(&exchange(&d.sock, big.to_string().as_bytes())), -19);
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "bdev_get_bdevs", "params": {"name": "y".repeat(2 << 20)}});
    let mut s = connect(&d.sock);
    let _ = s.write_all(big.to_string().as_bytes()); // the server stops reading at the limit
    let a = read_answers(&s, 1).remove(0);
    assert_eq!(code(&a), -32700);
    assert!(a["error"]["message"].as_str().unwrap().contains("exceeds 1048576 bytes"), "{a}");
    still_serving(&mut d);
}

#[test]
fn disconnects_and_many_clients_leave_the_daemon_serving() {
    let mut d = Ferryd::start(&[]);
    {
        let mut s = connect(&d.sock);
        s.write_all(br#"{"jsonrpc":"2.0","id":1,"method":"spdk_get_"#).unwrap();
    }
    drop(connect(&d.sock));
    still_serving(&mut d);
    for i in 0..1000 {
        let mut s = connect(&d.sock);
        write!(s, r#"{{"jsonrpc":"2.0","id":{i},"method":"spdk_get_version"}}"#).unwrap();
        let a = read_answers(&s, 1).remove(0);
        assert_eq!(a["id"], i);
    }
    // 64 idle clients fill the server; the 65th is told so instead of hanging.
    let idle: Vec<UnixStream> = (0..64).map(|_| connect(&d.sock)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let extra = connect(&d.sock);
    let a = read_answers(&extra, 1).remove(0);
    assert_eq!(code(&a), -16);
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));
    still_serving(&mut d);
}

/// The CPU time (user + system) `pid` has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// A connection to `sock` whose answers must come within `secs`.
fn connect_within(sock: &std::path::Path, secs: u64) -> UnixStream {
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
    s
}

#[test]
fn a_long_unterminated_request_is_cut_off_at_its_limit_and_others_are_served() {
    let mut d = Ferryd::start(&[]);
    let mut slow = connect(&d.sock);
    slow.write_all(br#"{"jsonrpc":"2.0","id":1,"method":"bdev_get_bdevs","params":{"name":""#).unwrap();
    let piece = vec![b'y'; 64 << 10];
    let mut sent = 0;
    // Up to 4 MiB in pieces; the server gives up after 1 MiB, so later writes may fail.
    while sent < 4 << 20 && slow.write_all(&piece).is_ok() {
        sent += piece.len();
        if sent % (512 << 10) == 0 {
            // Another client is answered while the long request is pending.
            let mut other = connect_within(&d.sock, 5);
            other.write_all(br#"{"jsonrpc":"2.0","id":2,"method":"spdk_get_version"}"#).unwrap();
            assert_eq!(read_answers(&other, 1)[0]["id"], 2);
        }
    }
    assert!(sent > 1 << 20, "the server stopped reading before the limit ({sent} bytes)");
    let a = read_answers(&slow, 1).remove(0);
    assert_eq!(code(&a), -32700, "{a}");
    assert!(a["error"]["message"].as_str().unwrap().contains("exceeds 1048576 bytes"), "{a}");
    let mut rest = Vec::new();
    assert_eq!(slow.read_to_end(&mut rest).unwrap_or(0), 0, "the connection is closed after the error");
    still_serving(&mut d);
}

/// Figures only (no timing assertion): the CPU ferryd spends framing a 16 MiB load_config
/// sent in 64 KiB pieces, which the old re-parse-everything server made quadratic (51 s).
#[test]
fn cpu_cost_of_a_16_mib_request_fed_in_pieces() {
    let mut d = Ferryd::start(&[]);
    let before = cpu_time(d.pid());
    let mut s = connect(&d.sock);
    s.write_all(br#"{"jsonrpc":"2.0","id":1,"method":"load_config","params":{"subsystems":[],"x":""#).unwrap();
    let piece = vec![b'a'; 64 << 10];
    for _ in 0..256 {
        s.write_all(&piece).unwrap();
    }
    s.write_all(br#""}}"#).unwrap();
    // The answer comes once every byte has been framed and parsed.
    let a = read_answers(&s, 1).remove(0);
    assert_eq!(a["result"], true, "an empty configuration loads: {a}");
    let used = cpu_time(d.pid()) - before;
    println!("ferryd CPU time for a 16 MiB request in 64 KiB pieces: {used:?}");
    still_serving(&mut d);
}

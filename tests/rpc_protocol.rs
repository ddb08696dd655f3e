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
    // 64 clients that have each been answered once fill the server; the 65th is told so
    // instead of hanging. (A client above that has hung up still counts until the server
    // sees it go: a newcomer refused meanwhile is simply replaced.)
    let mut idle: Vec<UnixStream> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while idle.len() < 64 {
        assert!(std::time::Instant::now() < deadline, "closed clients kept their slots");
        let mut s = connect(&d.sock);
        s.write_all(br#"{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"}"#).unwrap();
        let a = read_answers(&s, 1).remove(0);
        if a.get("result").is_some() {
            idle.push(s);
        } else {
            assert_eq!(code(&a), -16, "{a}");
        }
    }
    let extra = connect(&d.sock);
    let a = read_answers(&extra, 1).remove(0);
    assert_eq!(code(&a), -16);
    // Once they hang up, their slots come back.
    drop(idle);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while common::rpc_at(&d.sock, "spdk_get_version", Value::Null).is_err() {
        assert!(std::time::Instant::now() < deadline, "the idle clients' slots never came back");
        std::thread::sleep(Duration::from_millis(10));
    }
    still_serving(&mut d);
}

/// Bytes `s` has sent that its peer has not read yet (SIOCOUTQ).
fn unread_bytes(s: &UnixStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int into `n`, which outlives the call.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(rc, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
    n
}

/// A client that sends requests and never reads the answers costs its own connection only:
/// the server stops reading from it once an answer cannot be delivered (its socket fills up,
/// rather than the daemon's memory), other clients are served, and no thread is added.
#[test]
fn a_client_that_never_reads_its_answers_holds_only_its_own_connection() {
    let mut d = Ferryd::start(&[]);
    for i in 0..8 {
        d.ok("bdev_null_create", json!({"name": format!("N{i}"), "num_blocks": 1024, "block_size": 512}));
    }
    let before = common::thread_names(d.pid());
    let hog = connect(&d.sock);
    hog.set_nonblocking(true).unwrap();
    // Requests padded to 32 KiB, so the server holds few of them unread in its own buffer:
    // while it is reading, the hog's socket drains request by request.
    let mut request = br#"{"jsonrpc":"2.0","id":1,"method":"bdev_get_bdevs""#.to_vec();
    request.resize(32 << 10, b' ');
    request.push(b'}');
    let request = &request[..];
    let (mut sent, mut full) = (0usize, false);
    // Write until the server stops reading: the hog's unsent bytes (SIOCOUTQ) stay put while
    // other clients are served, each of their requests taking the event loop round again
    // with the hog's socket readable all along.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let at = sent % request.len();
        match (&hog).write(&request[at..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let unread = unread_bytes(&hog);
                for _ in 0..50 {
                    still_serving(&mut d);
                }
                if unread > 0 && unread_bytes(&hog) == unread {
                    full = true;
                    break;
                }
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(full, "the server kept reading from a client that never reads ({sent} bytes sent)");
    // RPC workers come and go with calls running at once (two clients here: at most two);
    // every other thread is fixed.
    let after = common::threads_settle_to(d.pid(), &before);
    assert!(after.iter().filter(|n| n.starts_with("rpc_worker")).count() <= 2, "{after:?}");
    // The stalled client is answered in order once it reads.
    hog.set_nonblocking(false).unwrap();
    hog.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let answers = read_answers(&hog, 5);
    assert!(answers.iter().all(|a| a["result"].as_array().map(Vec::len) == Some(8)), "{:?}", answers[0]);
}

/// Calls that wait run on workers that grow with them: clients waiting in
/// `framework_wait_init` (more than any fixed pool would hold) do not keep another client's
/// `framework_start_init` from running, and all of them are answered.
#[test]
fn waiting_calls_do_not_starve_the_call_they_wait_for() {
    const WAITERS: usize = 16;
    let mut d = Ferryd::start(&["--wait-for-rpc"]);
    let waiters: Vec<UnixStream> = (0..WAITERS)
        .map(|i| {
            let mut s = connect(&d.sock);
            write!(s, r#"{{"jsonrpc":"2.0","id":{i},"method":"framework_wait_init"}}"#).unwrap();
            s
        })
        .collect();
    // Every waiter is in its handler (the daemon logs each wait) before the start comes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while d.log_text().matches("framework_wait_init: waiting").count() < WAITERS {
        assert!(std::time::Instant::now() < deadline, "not every waiter is waiting; log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(d.ok("framework_start_init", Value::Null).as_bool().unwrap());
    for (i, w) in waiters.iter().enumerate() {
        let a = read_answers(w, 1).remove(0);
        assert_eq!(a["id"], i, "{a}");
        assert_eq!(a["result"], true, "{a}");
    }
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
    assert!(sent >= 1 << 20, "the server stopped reading before the limit ({sent} bytes)");
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

//! The backend-request channel a frontend hands over (SET_BACKEND_REQ_FD) is the frontend's
//! socket: one that never reads must not freeze the RPC that sends a config-change notice.

mod common;

use common::Ferryd;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

const VERSION_1: u64 = 1 << 32;

/// One call on a fresh connection whose answer must come within 5 s.
fn call_within_5s(sock: &std::path::Path, method: &str, params: Value) -> Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    s.write_all(req.to_string().as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap_or_else(|e| panic!("{method} not answered within 5 s: {e}"));
    serde_json::from_str(&line).unwrap()
}

fn notices_possible(d: &Ferryd) -> Option<bool> {
    let c = d.ok("vhost_get_controllers", json!({"name": "c0"}));
    c[0]["sessions"].get(0).map(|s| s["config_change_notifications"].as_bool().unwrap())
}

#[test]
fn a_backend_channel_that_never_reads_does_not_freeze_resize() {
    let dir = common::scratch_dir("backend-channel");
    let d = Ferryd::start_in(dir.clone(), &["-S", dir.to_str().unwrap()]);
    d.ok("bdev_null_create", json!({"name": "N", "num_blocks": 2048, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "c0", "dev_name": "N"}));
    let mut fe = Frontend::connect(dir.join("c0"), 1).unwrap();
    fe.set_owner().unwrap();
    let offered = fe.get_features().unwrap();
    fe.set_features(offered & (VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())).unwrap();
    let pf = fe.get_protocol_features().unwrap();
    assert!(pf.contains(VhostUserProtocolFeatures::BACKEND_REQ));
    fe.set_protocol_features(VhostUserProtocolFeatures::BACKEND_REQ).unwrap();
    let (ours, _never_read) = UnixStream::pair().unwrap();
    fe.set_backend_request_fd(&ours).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while notices_possible(&d) != Some(true) {
        assert!(Instant::now() < deadline, "ferryd never took the backend-request channel");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Fill the channel: ferryd's copy is the same socket, so its sends would block now.
    let chunk = [0u8; 4096];
    loop {
        // SAFETY: `chunk` is valid for its length; MSG_DONTWAIT leaves the fd's flags alone.
        let n = unsafe { libc::send(ours.as_raw_fd(), chunk.as_ptr().cast(), chunk.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN));
            break;
        }
    }
    for size in [2, 3, 4, 5, 6] {
        let a = call_within_5s(&d.sock, "bdev_null_resize", json!({"name": "N", "new_size": size}));
        assert_eq!(a["result"], true, "{a}");
    }
    assert_eq!(notices_possible(&d), Some(false), "the stuck channel was dropped");
    assert!(d.log_text().contains("does not take messages"), "and that was logged");
    // The session itself still answers, and so does every RPC.
    assert_eq!(fe.get_features().unwrap(), offered);
    assert!(call_within_5s(&d.sock, "spdk_get_version", Value::Null)["result"]["version"].is_string());
}

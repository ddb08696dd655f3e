//! Debian's tgtd (package tgt) as a reference iSCSI target for the conformance harness: one
//! private tgtd per use, on its own portal and management port, serving one target whose
//! LUN 1 is a file in /dev/shm (tgtd's LUN 0 is its controller). Needs root (tgtd's
//! management socket lives in /var/run/tgtd); `scripts/iscsi/setup.sh` installs it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The target's name.
pub const IQN: &str = "iqn.2016-06.io.ferry:tgtd-reference";

/// A running tgtd, killed (and its backing file removed) when dropped.
pub struct Tgtd {
    child: Child,
    /// The iSCSI portal's port on 127.0.0.1.
    pub port: u16,
    control: u16,
    backing: PathBuf,
    log: PathBuf,
}

impl Tgtd {
    /// Starts tgtd on 127.0.0.1:`port`, with target [`IQN`] and, as LUN 1, a `size_mib` MiB
    /// file in /dev/shm with `block_size`-byte blocks (tgtd's `rdwr` backing store), open to
    /// every initiator. `log_dir` receives tgtd's output.
    pub fn start(port: u16, size_mib: u64, block_size: u32, log_dir: &std::path::Path) -> Tgtd {
        // The management port only names tgtd's Unix socket (tgtd takes it below 32768): one
        // derived from the portal's port is unique among the tgtds of concurrent tests.
        let control = port % 30000 + 1024;
        let log = log_dir.join("tgtd.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("tgtd")
            .args(["-f", "-C", &control.to_string(), "--iscsi", &format!("portal=127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("run tgtd (scripts/iscsi/setup.sh installs tgt)");
        let backing = PathBuf::from(format!("/dev/shm/ferry-tgtd-{}-{port}.img", std::process::id()));
        let mut t = Tgtd { child, port, control, backing, log };
        t.wait_listening();
        let f = std::fs::File::create(&t.backing).unwrap();
        f.set_len(size_mib << 20).unwrap();
        t.adm(&["--mode", "target", "--op", "new", "--tid", "1", "--targetname", IQN]);
        let bs = block_size.to_string();
        t.adm(
            &["--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--bstype", "rdwr"]
                .iter()
                .copied()
                .chain(["--backing-store", t.backing.to_str().unwrap(), "--blocksize", &bs])
                .collect::<Vec<_>>(),
        );
        t.adm(&["--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL"]);
        t
    }

    /// Requires CHAP: an account `user`/`secret` bound to the target.
    pub fn require_chap(&self, user: &str, secret: &str) {
        self.adm(&["--mode", "account", "--op", "new", "--user", user, "--password", secret]);
        self.adm(&["--mode", "account", "--op", "bind", "--tid", "1", "--user", user]);
    }

    /// The URL of the disk LUN, with `user%secret@` when given.
    pub fn url(&self, chap: Option<(&str, &str)>) -> String {
        let cred = chap.map(|(u, s)| format!("{u}%{s}@")).unwrap_or_default();
        format!("iscsi://{cred}127.0.0.1:{}/{IQN}/1", self.port)
    }

    /// The daemon's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `tgtadm --lld iscsi ARGS` against this daemon; panics if it fails.
    pub fn adm(&self, args: &[&str]) {
        let out = Command::new("tgtadm")
            .args(["-C", &self.control.to_string(), "--lld", "iscsi"])
            .args(args)
            .output()
            .expect("run tgtadm");
        assert!(
            out.status.success(),
            "tgtadm {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn wait_listening(&mut self) {
        let sock = PathBuf::from(format!("/var/run/tgtd/socket.{}", self.control));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("tgtd exited with {status} (it needs root); output:\n{}", self.log_text());
            }
            if sock.exists() && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "tgtd did not listen in time; output:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.backing);
        let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}", self.control));
        let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}.lock", self.control));
    }
}

//! A real Ceph cluster for a test: `scripts/ceph-dev.sh` (one monitor on 127.0.0.1, one
//! memstore OSD, pool `rbd`) in the test's scratch directory, torn down when dropped.
//!
//! The first [`CephCluster::up`] of a process runs `scripts/ceph-dev.sh install` (Debian's
//! ceph-mon, ceph-osd, ceph-common, librbd1, librados2; needs root the first time).

use super::{scratch_dir, Scratch};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;

/// The pool every cluster has, initialised for RBD.
pub const POOL: &str = "rbd";

/// The cluster script.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph-dev.sh")
}

/// A running development cluster; `scripts/ceph-dev.sh down` when dropped.
pub struct CephCluster {
    dir: PathBuf,
    conf: PathBuf,
    keyring: PathBuf,
    mon: String,
    key: String,
    // Last: removed after `down` has stopped the daemons writing into it.
    _scratch: Scratch,
}

impl CephCluster {
    /// A fresh cluster in a new scratch directory tagged `name` (which appears in its path).
    /// Panics, with the script's error and log tails, if it does not come up.
    pub fn up(name: &str) -> CephCluster {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            let out = script_cmd().arg("install").stdout(Stdio::null()).output().expect("run bash");
            assert!(out.status.success(), "ceph-dev.sh install failed:\n{}", String::from_utf8_lossy(&out.stderr));
        });
        let scratch = scratch_dir(&format!("ceph-{name}"));
        // A directory of its own inside the scratch one: `down` removes it.
        let dir = scratch.join("cluster");
        let out = script_cmd().arg("up").arg(&dir).output().expect("run bash");
        if !out.status.success() {
            panic!("ceph-dev.sh up {} failed:\n{}", dir.display(), String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8(out.stdout).expect("ceph-dev.sh prints UTF-8");
        let var = |k: &str| -> String {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .unwrap_or_else(|| panic!("ceph-dev.sh up printed no {k}=: {stdout}"))
                .to_string()
        };
        CephCluster {
            conf: PathBuf::from(var("CEPH_CONF")),
            keyring: PathBuf::from(var("CEPH_KEYRING")),
            mon: var("CEPH_MON"),
            key: var("CEPH_KEY"),
            dir,
            _scratch: scratch,
        }
    }

    /// The cluster's directory (ceph.conf, keyring, log/, run/, data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its ceph.conf, for `ceph -c` / `rbd -c` (it names the keyring).
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The client.admin keyring.
    pub fn keyring(&self) -> &Path {
        &self.keyring
    }

    /// The monitor's address, `127.0.0.1:PORT` (librados' `mon_host`).
    pub fn mon_addr(&self) -> &str {
        &self.mon
    }

    /// client.admin's secret, base64 (librados' `key`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `rbd ARGS` against this cluster. Gives up connecting after 30 s; an argument
    /// `--client-mount-timeout N` in `args` overrides that.
    pub fn rbd(&self, args: &[&str]) -> Output {
        Command::new("rbd")
            .arg("-c")
            .arg(&self.conf)
            .arg("--keyring")
            .arg(&self.keyring)
            .args(["--client-mount-timeout", "30"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run rbd")
    }

    /// `rbd ARGS`, which must succeed; its standard output.
    #[track_caller]
    pub fn rbd_ok(&self, args: &[&str]) -> String {
        let out = self.rbd(args);
        assert!(
            out.status.success(),
            "rbd {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("rbd prints UTF-8")
    }

    /// A `size_mib` MiB image `name` in [`POOL`], with only the layering feature: with the
    /// default features a killed client keeps the exclusive lock and the next writer stalls
    /// about 30 s.
    #[track_caller]
    pub fn create_image(&self, name: &str, size_mib: u64) {
        let size = format!("{size_mib}M");
        let spec = format!("{POOL}/{name}");
        self.rbd_ok(&["create", "--size", &size, "--image-feature", "layering", &spec]);
    }

    /// Stops the monitor and the OSD (the OSD keeps its data); returns once both are gone.
    #[track_caller]
    pub fn stop(&self) {
        self.script_ok("stop");
    }

    /// Starts a stopped cluster again, same address, same data; returns once it serves I/O.
    #[track_caller]
    pub fn start(&self) {
        self.script_ok("start");
    }

    /// A fresh secret no user of the cluster has (`ceph-authtool --gen-print-key`).
    pub fn gen_key(&self) -> String {
        let out = Command::new("ceph-authtool").arg("--gen-print-key").output().expect("run ceph-authtool");
        assert!(out.status.success(), "ceph-authtool --gen-print-key failed");
        String::from_utf8(out.stdout).expect("a base64 key").trim().to_string()
    }

    /// The OSD's pid, from DIR/pids (the last `osd.0` line: `start` appends one).
    fn osd_pid(&self) -> u32 {
        let pids = std::fs::read_to_string(self.dir.join("pids")).expect("DIR/pids");
        pids.lines()
            .rev()
            .filter_map(|l| l.strip_prefix("osd.0 "))
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no osd.0 in DIR/pids: {pids}"))
    }

    /// Freezes the OSD (SIGSTOP): operations sent to it wait until [`Self::resume_osd`].
    pub fn pause_osd(&self) {
        super::signal_and_wait(self.osd_pid(), libc::SIGSTOP, true);
    }

    /// Lets a paused OSD run again.
    pub fn resume_osd(&self) {
        super::signal_and_wait(self.osd_pid(), libc::SIGCONT, false);
    }

    #[track_caller]
    fn script_ok(&self, cmd: &str) {
        let out = script_cmd().arg(cmd).arg(&self.dir).stdout(Stdio::null()).output().expect("run bash");
        assert!(
            out.status.success(),
            "ceph-dev.sh {cmd} {} failed:\n{}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for CephCluster {
    fn drop(&mut self) {
        // A failing test with FERRY_KEEP_SCRATCH keeps the directory (and the scratch one keeps
        // itself): stopped, for its logs and data.
        let keep = std::thread::panicking() && std::env::var_os("FERRY_KEEP_SCRATCH").is_some();
        let cmd = if keep { "stop" } else { "down" };
        match script_cmd().arg(cmd).arg(&self.dir).stdout(Stdio::null()).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                eprintln!("ceph-dev.sh {cmd} {} failed: {}", self.dir.display(), String::from_utf8_lossy(&out.stderr))
            }
            Err(e) => eprintln!("ceph-dev.sh {cmd} {}: {e}", self.dir.display()),
        }
    }
}

fn script_cmd() -> Command {
    let mut c = Command::new("bash");
    c.arg(script()).stdin(Stdio::null());
    c
}

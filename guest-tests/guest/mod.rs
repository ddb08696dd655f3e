//! What every guest test needs: booting the cached Linux guest under QEMU with a script
//! (`scripts/guest/run.sh`), reading its console, and the QEMU arguments of a vhost-user
//! device. Included by each guest test binary with `#[path]`.

#![allow(dead_code)] // each binary uses its own subset

use crate::common::Ferryd;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Guests are heavy under TCG on two cores: one at a time.
pub static ONE_GUEST: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The QEMU arguments attaching controller socket `sock` as `device` (e.g.
/// `vhost-user-blk-pci,num-queues=2`) on chardev `c0`, redialling a restarted backend when
/// `reconnect` is set.
pub fn vhost_user_device(sock: &Path, device: &str, reconnect: bool) -> Vec<String> {
    let reconnect = if reconnect { ",reconnect-ms=500" } else { "" };
    vec![
        "-chardev".into(),
        format!("socket,id=c0,path={}{reconnect}", sock.display()),
        "-device".into(),
        format!("{device},chardev=c0"),
    ]
}

/// Starts the guest (`memory`: `--memfd` or `--hugepages`) with `script`; its console goes to
/// `log`.
pub fn spawn_guest(script: &str, dir: &Path, memory: &str, qemu_args: &[String], log: &Path) -> Child {
    let script_path = dir.join("guest.sh");
    std::fs::write(&script_path, format!("#!/bin/sh\n{script}")).unwrap();
    Command::new("bash")
        .arg(root().join("scripts/guest/run.sh"))
        .args(["--timeout", "400", memory, "--script"])
        .arg(&script_path)
        .arg("--log")
        .arg(log)
        .arg("--")
        .args(qemu_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a failing test can stop the guest (see `stop_guest`).
        .process_group(0)
        .spawn()
        .expect("run scripts/guest/run.sh")
}

/// Stops a guest started by `spawn_guest`: SIGTERM to run.sh's process group and to the
/// groups of its children (`timeout` in run.sh runs QEMU in a group of its own and passes the
/// signal on to it).
pub fn stop_guest(guest: &Child) {
    let pid = guest.id();
    let children: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: the fields after the last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then(|| e.file_name().to_str()?.parse().ok()).flatten()
        })
        .collect();
    for p in children.iter().chain([&pid]) {
        let _ = Command::new("kill").args(["-TERM", "--", &format!("-{p}")]).status();
        let _ = Command::new("kill").args(["-TERM", &p.to_string()]).status();
    }
}

/// A running guest whose script reports on its console: a QEMU started by [`spawn_guest`], or
/// a libvirt domain.
pub trait Guest {
    /// Stops it, script finished or not.
    fn stop(&self);
    /// Waits (bounded) for it to end: whether its script succeeded, and its console.
    fn finish(self) -> (bool, String);
}

impl Guest for Child {
    fn stop(&self) {
        stop_guest(self);
    }

    /// run.sh's exit status is the script's; its output is the console.
    fn finish(self) -> (bool, String) {
        let out = self.wait_with_output().unwrap();
        (out.status.success(), console_of(&out))
    }
}

/// Runs `script` in a guest and returns its console text; panics if the script failed (with
/// the console and ferryd's log from `dir`).
pub fn run_guest(script: &str, dir: &Path, memory: &str, qemu_args: &[String]) -> String {
    let mut out = spawn_guest(script, dir, memory, qemu_args, &dir.join("console.log")).wait_with_output().unwrap();
    let mut console = console_of(&out);
    if let Some(assertion) = qemu_tcg_abort(&console) {
        // QEMU's own TCG aborted, not the guest or Ferry: run the script once more.
        eprintln!("QEMU aborted on its own assertion ({assertion}); running the guest again");
        out = spawn_guest(script, dir, memory, qemu_args, &dir.join("console.log")).wait_with_output().unwrap();
        console = console_of(&out);
    }
    let ferryd = std::fs::read_to_string(dir.join("ferryd.log")).unwrap_or_default();
    assert!(out.status.success(), "guest script failed ({}):\n{console}\nferryd:\n{ferryd}", out.status);
    console
}

/// What the guest printed (the serial console ends lines with CR LF).
pub fn console_of(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).replace("\r\n", "\n")
}

/// The assertion, if QEMU aborted on one of its softmmu/TCG internal assertions. Under TCG on
/// these loaded two-core machines, QEMU 10 occasionally aborts with `system/physmem.c:
/// iotlb_to_section: Assertion 'section_index < d->map.sections_nb' failed` (a stale TLB entry
/// after the guest changed its memory map: a race inside QEMU's multi-threaded TCG that no
/// vhost-user backend can cause or prevent). Only these QEMU source files count; any other
/// failure is the test's.
pub fn qemu_tcg_abort(console: &str) -> Option<&str> {
    const QEMU_INTERNALS: [&str; 3] = ["system/physmem.c:", "accel/tcg/", "tcg/tcg.c:"];
    console.lines().find(|l| {
        l.starts_with("qemu-system-x86_64: ") && l.contains("Assertion") && QEMU_INTERNALS.iter().any(|f| l.contains(f))
    })
}

/// Whether fio reported an I/O error or a verify failure ("fio: pid=N, err=..." or "verify: ...").
pub fn fio_failed(console: &str) -> bool {
    console.lines().any(|l| l.starts_with("verify:") || (l.starts_with("fio: pid=") && l.contains("err=")))
}

/// Waits (bounded) until the console log at `log` contains `marker`.
pub fn wait_for_console(log: &Path, marker: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(marker) {
            return;
        }
        assert!(Instant::now() < deadline, "the guest never printed {marker:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The rest of the first console line starting with `name `.
pub fn field<'a>(console: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name} ");
    console
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name:?} line:\n{console}"))
        .trim_end()
}

/// An ext4 file system on a loop device under the test's directory whose writes the test
/// can hold in the kernel (`fsfreeze`): a uring bdev on a file in it keeps the guest's writes
/// in flight in ferryd for as long as the test wants, so a kill provably interrupts I/O.
pub struct HeldDisk {
    img: PathBuf,
    mnt: PathBuf,
    frozen: bool,
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl HeldDisk {
    /// Makes and mounts the file system (guest tests run as root) with `size_mb` of room.
    pub fn new(dir: &Path, size_mb: u64) -> HeldDisk {
        let img = dir.join("held.ext4");
        let mnt = dir.join("held");
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::File::create(&img).unwrap().set_len(size_mb << 20).unwrap();
        run("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]);
        run("mount", &["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()]);
        HeldDisk { img, mnt, frozen: false }
    }

    /// A path inside the file system.
    pub fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    /// From now on writes to the file system block in the kernel.
    pub fn hold(&mut self) {
        run("fsfreeze", &["-f", self.mnt.to_str().unwrap()]);
        self.frozen = true;
    }

    /// Lets held writes finish.
    pub fn release(&mut self) {
        if self.frozen {
            run("fsfreeze", &["-u", self.mnt.to_str().unwrap()]);
            self.frozen = false;
        }
    }
}

impl Drop for HeldDisk {
    fn drop(&mut self) {
        self.release();
        // Lazy: a process still holding a file there must not leave the mount behind.
        let _ = Command::new("umount").args(["-l", self.mnt.to_str().unwrap()]).status();
        let _ = std::fs::remove_file(&self.img);
    }
}

/// The first session of controller `ctrlr` as `vhost_get_controllers` shows it (Null if none).
fn session(d: &Ferryd, ctrlr: &str) -> Value {
    d.rpc("vhost_get_controllers", json!({ "name": ctrlr })).map(|v| v[0]["sessions"][0].clone()).unwrap_or(Value::Null)
}

/// Polls `probe` every 50 ms until it returns Some, or panics with `what` after `secs`.
pub fn wait_until<T>(secs: u64, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The restart check, proving each step: once the guest printed FIO-START and the bdev
/// `bdev` (a uring file on `disk`) saw writes, the disk's writes are held until ferryd's
/// inflight area for controller `ctrlr` shows requests in flight; ferryd is then killed with
/// SIGKILL and restarted as it was started, from `config`. The new ferryd must report
/// requests resubmitted from the inflight area, and the guest's fio must finish (FIO-END)
/// with no error, no verify failure and no I/O error in the guest kernel's log.
pub fn kill_and_restart_under_fio(
    d: Ferryd,
    guest: impl Guest,
    log: &Path,
    config: &Path,
    ctrlr: &str,
    bdev: &str,
    disk: &mut HeldDisk,
) {
    wait_for_console(log, "FIO-START", 120);
    wait_until(120, "fio's writes never reached the bdev", || {
        let stats = d.rpc("bdev_get_iostat", json!({ "name": bdev })).ok()?;
        (stats["bdevs"][0]["num_write_ops"].as_u64()? >= 500).then_some(())
    });
    assert_eq!(session(&d, ctrlr)["inflight_tracking"], true, "QEMU set up an inflight area");
    disk.hold();
    let held = wait_until(60, "no request was ever marked in flight while writes were held", || {
        session(&d, ctrlr)["inflight_requests"].as_u64().filter(|&n| n > 0)
    });
    let dir = d.dir.clone();
    // Started again the same way (socket directory, owner and mode, ...), from the configuration.
    let mut args = d.args.clone();
    args.extend(["-c".into(), config.to_str().unwrap().into()]);
    let _ = Command::new("kill").args(["-9", &d.pid().to_string()]).status();
    // The dead process's held writes must finish before it can be reaped.
    disk.release();
    drop(d);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d2 = Ferryd::start_with(dir.clone(), &args, |_| {});
    let resubmitted = wait_until(120, "the restarted ferryd resubmitted nothing from the inflight area", || {
        session(&d2, ctrlr)["resubmitted"].as_u64().filter(|&n| n > 0)
    });
    let finished = {
        let deadline = Instant::now() + Duration::from_secs(150);
        loop {
            if std::fs::read_to_string(log).unwrap_or_default().contains("FIO-END") {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    if !finished {
        guest.stop();
    }
    let (succeeded, console) = guest.finish();
    assert!(finished, "fio never finished after the restart (lost requests?):\n{console}\nferryd:\n{}", d2.log_text());
    assert!(succeeded, "guest failed:\n{console}\nferryd:\n{}", d2.log_text());
    assert!(console.contains("err= 0"), "fio saw an error across the restart:\n{console}");
    assert!(!fio_failed(&console), "{console}");
    assert!(!console.contains("I/O error"), "the guest kernel logged an I/O error:\n{console}");
    assert!(d2.log_text().contains("resubmitting in-flight requests"), "{}", d2.log_text());
    let resubmitted = session(&d2, ctrlr)["resubmitted"].as_u64().unwrap_or(resubmitted);
    eprintln!("killed with {held} requests marked in flight; {resubmitted} resubmitted after the restart");
}

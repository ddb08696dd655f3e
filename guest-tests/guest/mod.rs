//! What every guest test needs: booting the cached Linux guest under QEMU with a script
//! (`scripts/guest/run.sh`), reading its console, the QEMU arguments of a vhost-user
//! device, QMP, and the restart and live-migration scenarios the blk and scsi tests share.
//! Included by each guest test binary with `#[path]`.

#![allow(dead_code)] // each binary uses its own subset

use crate::common::{signal_and_wait, Ferryd};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
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

/// Shell functions for guest scripts (prepend them): `uptime_s`, seconds since boot without a
/// fork (under TCG a fork costs tens of milliseconds, so loop counts say nothing about time),
/// and `wait_until SECS WHAT CMD...`, which polls CMD quietly until it succeeds and fails the
/// script after SECS on the guest's clock.
pub const SHELL_WAIT: &str = r#"
uptime_s() { local up rest; read -r up rest </proc/uptime; echo "${up%.*}"; }
wait_until() {
    local end=$(($(uptime_s) + $1)) what=$2
    shift 2
    while ! "$@" >/dev/null 2>&1; do
        [ "$(uptime_s)" -lt $end ] || { echo "TIMEOUT waiting for $what"; exit 1; }
        sleep 0.1
    done
}
"#;

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

/// QEMU is killed this long after it started, whatever happens: a last resort for a guest
/// nobody stops (every test bounds its own waits and stops its guest when it fails). Not a
/// budget for the test: the longest guest test (vbdev_hotremove) ran past 400 s under a slower
/// TCG and its guest was killed mid-test.
pub const GUEST_DEADLINE_SECS: u64 = 900;

/// Starts the guest (`memory`: `--memfd` or `--hugepages`) with `script`; its console goes to
/// `log`; QEMU stops after [`GUEST_DEADLINE_SECS`] at the latest.
pub fn spawn_guest(script: &str, dir: &Path, memory: &str, qemu_args: &[String], log: &Path) -> Child {
    spawn_guest_with(script, dir, &[memory], qemu_args, log)
}

/// As [`spawn_guest`] under the QEMU >= 10.1 of the cached Debian 13 tree (`run.sh --qemu11`:
/// `vfio-user-pci`).
pub fn spawn_guest_qemu11(script: &str, dir: &Path, qemu_args: &[String], log: &Path) -> Child {
    spawn_guest_with(script, dir, &["--memfd", "--qemu11"], qemu_args, log)
}

/// As [`spawn_guest`] with `run.sh` options `opts`.
pub fn spawn_guest_with(script: &str, dir: &Path, opts: &[&str], qemu_args: &[String], log: &Path) -> Child {
    let script_path = dir.join("guest.sh");
    std::fs::write(&script_path, format!("#!/bin/sh\n{script}")).unwrap();
    Command::new("bash")
        .arg(root().join("scripts/guest/run.sh"))
        .args(["--timeout", &GUEST_DEADLINE_SECS.to_string()])
        .args(opts)
        .arg("--script")
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
    if !console_within(log, marker, secs) {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        panic!("the guest never printed {marker:?}:\n{text}");
    }
}

/// Whether the console log at `log` shows `marker` within `secs`.
pub fn console_within(log: &Path, marker: &str, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if std::fs::read_to_string(log).unwrap_or_default().contains(marker) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
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

/// Something that can keep a target's writes from completing while a test kills it: a file
/// system frozen under a file bdev ([`HeldDisk`]), a Ceph OSD stopped under an RBD bdev.
pub trait HoldWrites {
    /// From now on writes reaching the backing store do not complete.
    fn hold(&mut self);
    /// Lets held writes finish.
    fn release(&mut self);
}

impl HoldWrites for HeldDisk {
    fn hold(&mut self) {
        HeldDisk::hold(self)
    }

    fn release(&mut self) {
        HeldDisk::release(self)
    }
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
/// A guest stopped with its QEMU if the test fails while it runs.
pub struct Running(pub Option<Child>);

impl Running {
    /// Waits up to `secs` for the guest's script to end (its `FERRY-GUEST-EXIT=` console line),
    /// stops it if it did not, and returns whether it ended with its output.
    pub fn finish(&mut self, log: &Path, secs: u64) -> (bool, Output) {
        let finished = console_within(log, "FERRY-GUEST-EXIT=", secs);
        let child = self.0.take().expect("the guest is running");
        if !finished {
            stop_guest(&child);
        }
        (finished, child.wait_with_output().expect("the guest's output"))
    }
}

/// The JSON a guest script printed on a `JSON WHAT <json>` console line.
pub fn json_line(console: &str, what: &str) -> serde_json::Value {
    let prefix = format!("JSON {what} ");
    let line = console
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {what} output:\n{console}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{what}: {e}: {line}"))
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(guest) = self.0.take() {
            stop_guest(&guest);
            let _ = guest.wait_with_output();
        }
    }
}

/// When `path` was last written.
pub fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).and_then(|m| m.modified()).unwrap()
}

/// How many of `pid`'s threads are in uninterruptible sleep (`D`): blocked in the kernel on
/// a held file system, each with a write of the guest's that the target received and has
/// not completed.
pub fn blocked_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            stat.rfind(')').is_some_and(|i| stat[i + 1..].trim_start().starts_with('D'))
        })
        .count()
}

/// Waits (bounded) until the console at `log` shows `marker`; panics with the console (and
/// what `context` says, e.g. the target's log) if the guest ended first (its script failed)
/// or the deadline passed.
pub fn wait_for_marker(log: &Path, marker: &str, secs: u64, context: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(marker) {
            return;
        }
        assert!(
            !text.contains("FERRY-GUEST-EXIT=") && Instant::now() < deadline,
            "the guest never printed {marker:?}:\n{text}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

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
/// `bdev` (on `disk`: a uring file on a freezable file system, or an RBD image whose OSD can
/// be stopped) saw writes, the disk's writes are held until ferryd's inflight area for
/// controller `ctrlr` shows requests in flight; ferryd is then killed with SIGKILL and
/// restarted as it was started, from `config`. The new ferryd must report requests
/// resubmitted from the inflight area, and the guest's fio must finish (FIO-END) with no
/// error, no verify failure and no I/O error in the guest kernel's log. Returns the guest's
/// console.
pub fn kill_and_restart_under_fio(
    d: Ferryd,
    guest: impl Guest,
    log: &Path,
    config: &Path,
    ctrlr: &str,
    bdev: &str,
    disk: &mut impl HoldWrites,
) -> String {
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
    let finished = console_within(log, "FIO-END", 150);
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
    console
}

/// A QMP connection to a QEMU started with `-qmp unix:PATH,server=on,wait=off`. Commands
/// carry ids, so an answer that comes after its caller gave up is skipped, never taken for
/// the next command's.
pub struct Qmp {
    sock: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
}

impl Qmp {
    /// Connects (waiting up to `secs` for QEMU to make the socket), reads the greeting and
    /// leaves capabilities negotiation.
    pub fn connect(path: &Path, secs: u64) -> Qmp {
        let sock = wait_until(secs, &format!("no QMP socket at {}", path.display()), || UnixStream::connect(path).ok());
        let mut qmp = Qmp { sock, buf: Vec::new(), next_id: 1 };
        let deadline = Instant::now() + Duration::from_secs(secs);
        let greeting = qmp.message(deadline).expect("QMP greeting");
        assert!(greeting.get("QMP").is_some(), "not a QMP greeting: {greeting}");
        qmp.execute("qmp_capabilities", json!({})).expect("qmp_capabilities");
        qmp
    }

    /// The next message (a reply or an event) before `deadline`, or None.
    fn message(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(serde_json::from_slice(&line).unwrap_or_else(|e| panic!("QMP sent bad JSON ({e})")));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match self.sock.read(&mut chunk) {
                Ok(0) => panic!("QEMU closed its QMP socket"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None
                }
                Err(e) => panic!("reading QMP: {e}"),
            }
        }
    }

    /// Runs `command`: Some(its return value, or QMP's error description), or None if QEMU
    /// did not answer within `timeout` (its main loop is busy: a migration stopping the VM
    /// waits there for the vhost-user backend).
    pub fn try_execute(&mut self, command: &str, arguments: Value, timeout: Duration) -> Option<Result<Value, String>> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = serde_json::to_vec(&json!({"execute": command, "arguments": arguments, "id": id})).unwrap();
        msg.push(b'\n');
        self.sock.write_all(&msg).unwrap_or_else(|e| panic!("QMP {command}: {e}"));
        let deadline = Instant::now() + timeout;
        loop {
            let reply = self.message(deadline)?;
            if reply["id"] != json!(id) {
                continue; // an event, or the late answer to a command given up on
            }
            return Some(match reply.get("return") {
                Some(v) => Ok(v.clone()),
                None => Err(reply["error"]["desc"].as_str().unwrap_or("no description").to_string()),
            });
        }
    }

    /// Runs `command`, waiting up to 60 s for its answer.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        self.try_execute(command, arguments, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("QEMU did not answer QMP {command} in 60 s"))
    }
}

/// The requests fio keeps in flight in the migration tests' guest.
const MIGRATION_IODEPTH: u64 = 16;

/// The guest script of the migration tests, on disk `/dev/{disk}` (`setup`: device-specific
/// lines run first). It writes a 4 MiB pattern at 60 MiB and 32 MiB of fio blocks with
/// checksummed headers, then reads them back twice with fio verifying every block
/// (`READ-PHASE n` ... `READ-END n`), then writes and verifies 16 MiB more, and reads the
/// pattern back (`PATTERN` and `PATTERN-AFTER`). The test migrates the guest while the reads
/// of phase 1 are held, so that phase starts on the source and ends on the destination.
pub fn migration_script(disk: &str, setup: &str) -> String {
    format!(
        r#"
set -e
{setup}
# The held backend's virtio bdev bounces at most 128 KiB per request.
echo 128 > /sys/block/{disk}/queue/max_sectors_kb
dd if=/dev/urandom of=/tmp/pat bs=1M count=4 2>/dev/null
dd if=/tmp/pat of=/dev/{disk} bs=1M seek=60 oflag=direct 2>/dev/null
echo "PATTERN $(md5sum </tmp/pat | cut -c1-32)"
J="--name=m --filename=/dev/{disk} --bs=4k --size=32M --iodepth={MIGRATION_IODEPTH} --ioengine=libaio --direct=1 --verify=crc32c"
fio $J --rw=write --do_verify=0 2>&1 | grep -E "err=|fio:|verify:"
for i in 1 2; do
    echo "READ-PHASE $i"
    fio $J --rw=write --verify_only 2>&1 | grep -E "err=|fio:|verify:"
    echo "READ-END $i"
done
fio $J --rw=randwrite --size=16M 2>&1 | grep -E "err=|fio:|verify:"
echo "PATTERN-AFTER $(dd if=/dev/{disk} bs=1M skip=60 count=4 iflag=direct 2>/dev/null | md5sum | cut -c1-32)"
"#
    )
}

/// A guest that is stopped (with its QEMU) if the test fails before it is taken back, so
/// that no QEMU outlives a failed test until run.sh's own timeout.
struct Stopped(Option<Child>);

impl Stopped {
    fn take(mut self) -> Child {
        self.0.take().expect("taken once")
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(guest) = self.0.take() {
            stop_guest(&guest);
            let _ = guest.wait_with_output();
        }
    }
}

/// What a migration left to check.
pub struct Migrated {
    /// The source guest's console (up to the switch).
    pub src_console: String,
    /// The destination guest's console (from the switch on), whether the guest got past the
    /// read phase that straddled the switch, and whether its script passed.
    pub dst_console: String,
    pub dst_progressed: bool,
    pub dst_passed: bool,
    /// Requests the source's vhost queue drained while QEMU stopped it.
    pub drained: u64,
    /// QEMU's `query-migrate` answer once completed.
    pub stats: Value,
    /// The destination controller's session (`vhost_get_controllers`) once its queues ran.
    pub dst_session: Value,
}

/// Live migration of a guest mid-I/O between two controllers of ferryd `d` on one bdev.
/// The bdev is a virtio bdev on ferryd `back` (see `common::held_backend`), whose process
/// the test stops to hold I/O. A source QEMU (`src_device` arguments) boots and runs
/// `script` ([`migration_script`]); a destination QEMU (`dst_device`) waits with
/// `-incoming defer` and `migrate-incoming` on a local socket. Once the guest printed
/// READ-PHASE 1, `back` is stopped, so all of fio's reads stay in flight in `d`; QEMU migrates
/// (`migrate` over QMP) and, at the switch, stops the source's vhost device
/// (GET_VRING_BASE), which `d` answers only when its in-flight requests are done: when `d`
/// logs that its queue is draining, `back` is continued. The reads then complete into the
/// source's guest memory after its vCPUs stopped, so only the dirty log carries their data
/// to the destination. Returns once QEMU reports the migration completed and the guest,
/// now on the destination, finished its script.
pub fn migrate_mid_io(
    d: &Ferryd,
    back: &Ferryd,
    script: &str,
    src_ctrlr: &str,
    src_device: &[String],
    dst_ctrlr: &str,
    dst_device: &[String],
) -> Migrated {
    let dir = &d.dir;
    let (src_log, dst_log) = (dir.join("src-console.log"), dir.join("dst-console.log"));
    let (src_qmp, dst_qmp) = (dir.join("src.qmp"), dir.join("dst.qmp"));
    let uri = format!("unix:{}", dir.join("migrate.sock").display());
    let qmp_arg = |p: &Path| vec!["-qmp".to_string(), format!("unix:{},server=on,wait=off", p.display())];
    let src_args = [qmp_arg(&src_qmp), src_device.to_vec()].concat();
    let src = Stopped(Some(spawn_guest(script, dir, "--memfd", &src_args, &src_log)));
    let dst_args = [qmp_arg(&dst_qmp), dst_device.to_vec(), vec!["-incoming".into(), "defer".into()]].concat();
    let dst = Stopped(Some(spawn_guest(script, dir, "--memfd", &dst_args, &dst_log)));
    let mut dst_q = Qmp::connect(&dst_qmp, 60);
    dst_q.execute("migrate-incoming", json!({ "uri": uri })).expect("migrate-incoming");
    assert_eq!(dst_q.execute("query-status", json!({})).unwrap()["status"], "inmigrate");
    let mut src_q = Qmp::connect(&src_qmp, 60);

    wait_for_console(&src_log, "READ-PHASE 1", 180);
    signal_and_wait(back.pid(), libc::SIGSTOP, true);
    // All of fio's requests held: from now on the guest writes nothing to its rings, so the
    // pages the source's device writes at the switch reach the destination only if logged
    // (the guest would otherwise dirty them again itself, and QEMU resend them).
    wait_until(60, "fio's requests were not all held in flight", || {
        session(d, src_ctrlr)["inflight_task_cnt"].as_u64().filter(|&n| n >= MIGRATION_IODEPTH)
    });
    let log_before = d.log_text().len();
    src_q.execute("migrate", json!({ "uri": uri })).expect("migrate");
    // The source's QMP does not answer while its vhost device drains (QEMU's main loop
    // waits for GET_VRING_BASE), so each look at the migration gives up after a second.
    let drain_line = {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let log = d.log_text();
            if let Some(l) = log[log_before..].lines().find(|l| l.contains("virtqueue draining in-flight I/O")) {
                break l.to_string();
            }
            let state = src_q.try_execute("query-migrate", json!({}), Duration::from_secs(1));
            let failed = matches!(&state, Some(Ok(m)) if m["status"] == "failed");
            if failed || Instant::now() > deadline {
                signal_and_wait(back.pid(), libc::SIGCONT, false);
                panic!("the source never stopped its vhost device mid-I/O: {state:?}\nferryd:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    signal_and_wait(back.pid(), libc::SIGCONT, false);
    let drained = drain_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("inflight=")?.parse().ok())
        .unwrap_or_else(|| panic!("no count in {drain_line:?}"));
    let stats = wait_until(180, "the migration did not complete", || {
        let m = src_q.try_execute("query-migrate", json!({}), Duration::from_secs(5))?.expect("query-migrate");
        assert_ne!(m["status"], "failed", "migration failed: {m}");
        (m["status"] == "completed").then_some(m)
    });
    wait_until(60, "the destination never ran the guest", || {
        let s = dst_q.execute("query-status", json!({})).unwrap();
        (s["status"] == "running").then_some(())
    });
    let dst_session = wait_until(60, "the destination's controller never started its queues", || {
        Some(session(d, dst_ctrlr)).filter(|s| s["started"] == true)
    });
    // The source stays paused (postmigrate) until told to quit; its run.sh then finds no
    // exit code on its console, which is expected: the guest finishes on the destination.
    src_q.execute("quit", json!({})).expect("quit");
    let src_console = console_of(&src.take().wait_with_output().unwrap());
    // The held reads finish phase 1 within seconds of the switch; a guest that never gets
    // their completions (a used ring the destination never received) stalls there for good.
    let progressed = console_within(&dst_log, "READ-END 1", 120);
    let finished = progressed && console_within(&dst_log, "FERRY-GUEST-EXIT=", 300);
    if !finished {
        stop_guest(dst.0.as_ref().expect("not taken yet"));
    }
    let out = dst.take().wait_with_output().unwrap();
    Migrated {
        src_console,
        dst_console: console_of(&out),
        dst_progressed: progressed,
        dst_passed: out.status.success(),
        drained,
        stats,
        dst_session,
    }
}

/// The PCI address of the emulated NVMe controller in the userspace NVMe driver's guest
/// ([`spawn_guest_vfio_nvme`]).
pub const VFIO_NVME_BDF: &str = "0000:00:04.0";

/// Starts the userspace NVMe driver's guest (`run.sh --vfio-nvme`): q35 with an emulated
/// Intel IOMMU (interrupt remapping on), QEMU's NVMe controller on the raw image `img` at
/// [`VFIO_NVME_BDF`], the guest kernel booted with `intel_iommu=on`, 2 GiB of RAM. `files`
/// (the build's ferryd, ferryctl, ferry-bdevperf) and `scripts/vfio-bind.sh` are in the
/// guest's /usr/bin; the VFIO modules are in the image, not loaded (vfio-bind.sh loads them).
/// `qemu_args` go to QEMU as they are (e.g. `-trace` events and `-D FILE`).
pub fn spawn_guest_vfio_nvme(
    script: &str,
    dir: &Path,
    img: &Path,
    files: &[&str],
    qemu_args: &[String],
    log: &Path,
) -> Child {
    let bind = root().join("scripts/vfio-bind.sh");
    let mut opts = vec!["--vfio-nvme", img.to_str().unwrap(), "--add-bin", bind.to_str().unwrap()];
    for f in files {
        opts.extend(["--add-bin", f]);
    }
    spawn_guest_with(script, dir, &opts, qemu_args, log)
}

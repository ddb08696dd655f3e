//! What every guest test needs: booting the cached Linux guest under QEMU with a script
//! (`scripts/guest/run.sh`), reading its console, and the QEMU arguments of a vhost-user
//! device. Included by each guest test binary with `#[path]`.

#![allow(dead_code)] // each binary uses its own subset

use crate::common::Ferryd;
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
        .spawn()
        .expect("run scripts/guest/run.sh")
}

/// Runs `script` in a guest and returns its console text; panics if the script failed (with
/// the console and ferryd's log from `dir`).
pub fn run_guest(script: &str, dir: &Path, memory: &str, qemu_args: &[String]) -> String {
    let out = spawn_guest(script, dir, memory, qemu_args, &dir.join("console.log")).wait_with_output().unwrap();
    let console = console_of(&out);
    let ferryd = std::fs::read_to_string(dir.join("ferryd.log")).unwrap_or_default();
    assert!(out.status.success(), "guest script failed ({}):\n{console}\nferryd:\n{ferryd}", out.status);
    console
}

/// What the guest printed (the serial console ends lines with CR LF).
pub fn console_of(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).replace("\r\n", "\n")
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

/// The restart check: once the guest printed FIO-START (and fio has run a few seconds),
/// ferryd is killed with SIGKILL, I/O in flight, and restarted from `config` in the same
/// directory; the guest's fio must then finish (FIO-END) with no error, no verify failure
/// and no I/O error in the guest kernel's log, and QEMU must have reconnected.
pub fn kill_and_restart_under_fio(d: Ferryd, guest: Child, log: &Path, config: &Path) {
    wait_for_console(log, "FIO-START", 120);
    std::thread::sleep(Duration::from_secs(6));
    let dir = d.dir.clone();
    let _ = Command::new("kill").args(["-9", &d.pid().to_string()]).status();
    drop(d);
    std::thread::sleep(Duration::from_secs(2));
    let d2 = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap(), "-c", config.to_str().unwrap()]);
    let out = guest.wait_with_output().unwrap();
    let console = console_of(&out);
    assert!(out.status.success(), "guest failed:\n{console}\nferryd:\n{}", d2.log_text());
    assert!(console.contains("FIO-END"), "{console}");
    assert!(console.contains("err= 0"), "fio saw an error across the restart:\n{console}");
    assert!(!fio_failed(&console), "{console}");
    assert!(!console.contains("I/O error"), "the guest kernel logged an I/O error:\n{console}");
    assert!(d2.log_text().contains("frontend connected"), "QEMU reconnected to the new ferryd");
}

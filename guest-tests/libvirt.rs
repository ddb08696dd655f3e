//! Guest tests under a real libvirtd: the example domains in `qemu/` validate and define, and
//! boot the project's Linux guest with a Ferry vhost-user-blk disk (`<disk type='vhostuser'>`)
//! or vhost-user-scsi controller (`<qemu:commandline>`). libvirt runs QEMU as its own
//! unprivileged user, which reaches ferryd's sockets through `--vhost-socket-owner` alone;
//! ferryd is killed and restarted under the guest's verified I/O, and QEMU's reconnect hides
//! it from the guest.
//!
//! Needs root, QEMU and the cached guest (`scripts/guest/setup.sh`); installs libvirt itself
//! (`scripts/libvirt/setup.sh`) and starts a private libvirtd for each test
//! (`scripts/libvirt/libvirtd.sh`), stopped at its end.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "guest/mod.rs"]
mod guest;

use common::{scratch_dir, Ferryd, Scratch};
use guest::{field, kill_and_restart_under_fio, wait_for_console, wait_until, Guest, HeldDisk, ONE_GUEST};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// ferryd's options that let libvirt's QEMU open the controller sockets, which are otherwise
/// root's with mode 0600. Debian's libvirt runs QEMU as user libvirt-qemu, group libvirt-qemu,
/// with the supplementary group kvm: either the owner or the group would do alone.
const SOCKET_FOR_QEMU: [&str; 4] = ["--vhost-socket-owner", "libvirt-qemu:kvm", "--vhost-socket-mode", "0660"];

/// The name of the example domains, and the controller socket they point at.
const EXAMPLE_NAME: &str = "vm1";
const EXAMPLE_SOCKET: &str = "/var/tmp/vhost.vm1";

/// The guest kernel's command line (as scripts/guest/run.sh's).
const CMDLINE: &str = "console=ttyS0 panic=-1 loglevel=4 quiet";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs libvirt (scripts/libvirt/setup.sh, idempotent) once per test binary.
fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = Command::new("bash").arg(root().join("scripts/libvirt/setup.sh")).output().unwrap();
        assert!(out.status.success(), "scripts/libvirt/setup.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
    });
}

/// What every test here starts with: the one-guest lock, libvirt installed, a scratch
/// directory and a private libvirtd in it. Dropped in that order backwards: libvirtd stops
/// before the directory goes.
struct LibvirtTest {
    lv: Libvirtd,
    /// Searchable by QEMU's user: the controller sockets are made in it.
    dir: Scratch,
    _one: MutexGuard<'static, ()>,
}

impl LibvirtTest {
    fn new() -> LibvirtTest {
        let one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
        setup();
        let dir = scratch_dir("libvirt");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        LibvirtTest { lv: Libvirtd::start(&dir.join("libvirt")), dir, _one: one }
    }
}

/// A private libvirtd (`scripts/libvirt/libvirtd.sh`) with its state under `dir`, stopped
/// when dropped.
struct Libvirtd {
    child: Child,
    dir: PathBuf,
}

impl Libvirtd {
    /// Starts it and waits (five minutes at most) until it answers. The first start on a
    /// machine probes QEMU's capabilities (two QEMU binaries: 15 s on an idle machine, over a
    /// minute on a loaded one); later ones read them from libvirt's cache.
    fn start(dir: &Path) -> Libvirtd {
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::File::create(dir.join("libvirtd.log")).unwrap();
        let child = Command::new("bash")
            .arg(root().join("scripts/libvirt/libvirtd.sh"))
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run scripts/libvirt/libvirtd.sh");
        let mut lv = Libvirtd { child, dir: dir.to_path_buf() };
        wait_until(300, "libvirtd never answered virsh version", || {
            if let Some(status) = lv.child.try_wait().unwrap() {
                panic!("libvirtd exited with {status}:\n{}", lv.log_text());
            }
            lv.virsh(&["version"]).status.success().then_some(())
        });
        lv
    }

    /// Its own log (warnings and errors).
    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("libvirtd.log")).unwrap_or_default()
    }

    /// virsh on this libvirtd, killed after `secs`.
    fn virsh_command(&self, secs: u64, args: &[&str]) -> Command {
        let uri = format!("qemu:///system?socket={}", self.dir.join("run/libvirt-sock").display());
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", &secs.to_string(), "virsh", "-c", &uri]).args(args).stdin(Stdio::null());
        cmd
    }

    /// Runs virsh (at most a minute).
    fn virsh(&self, args: &[&str]) -> Output {
        self.virsh_command(60, args).output().expect("run virsh")
    }

    /// Runs virsh and returns its output; panics if it failed.
    fn virsh_ok(&self, args: &[&str]) -> String {
        let out = self.virsh(args);
        assert!(
            out.status.success(),
            "virsh {args:?} failed ({}): {}\nlibvirtd:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                eprintln!("libvirtd did not stop on SIGTERM; killing it");
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A domain defined on a [`Libvirtd`]; destroyed and undefined when dropped.
struct Domain<'a> {
    lv: &'a Libvirtd,
    name: String,
    /// Its serial console's file.
    console: PathBuf,
}

impl<'a> Domain<'a> {
    /// `virsh define --validate` of the XML file `xml` (a domain named `name` whose serial
    /// port writes to `console`).
    fn define(lv: &'a Libvirtd, xml: &Path, name: &str, console: &Path) -> Domain<'a> {
        lv.virsh_ok(&["define", "--validate", xml.to_str().unwrap()]);
        Domain { lv, name: name.to_string(), console: console.to_path_buf() }
    }

    /// The QEMU command line and stderr libvirt logged for it.
    fn qemu_log(&self) -> String {
        std::fs::read_to_string(self.lv.dir.join(format!("log/qemu/{}.log", self.name))).unwrap_or_default()
    }

    /// `virsh domstate`.
    fn state(&self) -> String {
        self.lv.virsh_ok(&["domstate", &self.name]).trim().to_string()
    }

    /// `virsh start`, watching QEMU's log: QEMU that cannot reach a socket it redials never
    /// finishes starting (libvirt would wait for it for minutes), so the first such error
    /// fails the start at once. Bounded by two minutes in any case.
    fn start(&self) -> Result<(), String> {
        let mut virsh = self
            .lv
            .virsh_command(120, &["start", &self.name])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        loop {
            if virsh.try_wait().unwrap().is_some() {
                let out = virsh.wait_with_output().unwrap();
                if out.status.success() {
                    return Ok(());
                }
                let err = String::from_utf8_lossy(&out.stderr);
                return Err(format!("virsh start failed ({}): {err}\nQEMU log:\n{}", out.status, self.qemu_log()));
            }
            let log = self.qemu_log();
            if let Some(line) = log.lines().find(|l| l.contains("Unable to connect character device")) {
                let _ = virsh.kill();
                let _ = virsh.wait();
                return Err(format!("QEMU cannot reach a socket: {line}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Domain<'_> {
    fn drop(&mut self) {
        let _ = self.lv.virsh(&["destroy", &self.name]);
        let _ = self.lv.virsh(&["undefine", &self.name]);
    }
}

impl Guest for Domain<'_> {
    fn stop(&self) {
        let _ = self.lv.virsh(&["destroy", &self.name]);
    }

    /// The guest powers off when its script ends (`on_poweroff`: the domain shuts off); its
    /// script's status is the `FERRY-GUEST-EXIT=` line on the console.
    fn finish(self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while self.state() != "shut off" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut console = std::fs::read_to_string(&self.console).unwrap_or_default().replace("\r\n", "\n");
        if self.state() != "shut off" {
            console.push_str("\n(the guest did not power off in 300 s)");
        }
        (console.contains("FERRY-GUEST-EXIT=0"), console)
    }
}

/// Replaces the one span of `xml` from `start` up to the first `end` after it (both
/// included) by `with`.
fn replace_span(xml: &mut String, start: &str, end: &str, with: &str) {
    assert_eq!(xml.matches(start).count(), 1, "{start:?} once in:\n{xml}");
    let from = xml.find(start).unwrap();
    let after = from + start.len();
    let to = after + xml[after..].find(end).unwrap_or_else(|| panic!("no {end:?} after {start:?}")) + end.len();
    xml.replace_range(from..to, with);
}

/// The example domain `qemu/EXAMPLE` made to boot the project's guest with `script` here,
/// on the controller socket `sock`. Only what is this machine's changes: TCG instead of KVM,
/// 512 MiB, the guest kernel and an initrd running `script` instead of the boot disk (the
/// domain is destroyed when the guest powers off or reboots), the serial port to a file and
/// the socket's path. Returns the XML file and the console file.
fn bootable_example(example: &str, dir: &Path, sock: &Path, script: &str) -> (PathBuf, PathBuf) {
    let cache = PathBuf::from(std::env::var("FERRY_GUEST_CACHE").unwrap_or("/var/cache/ferry-guest".into()));
    let kernel = dir.join("vmlinuz");
    std::fs::copy(cache.join("vmlinuz"), &kernel).expect("the guest kernel (run scripts/guest/setup.sh)");
    let script_path = dir.join("guest.sh");
    std::fs::write(&script_path, format!("#!/bin/sh\n{script}")).unwrap();
    let initrd = dir.join("initrd");
    let out = Command::new("bash")
        .arg(root().join("scripts/guest/initrd.sh"))
        .arg(&script_path)
        .arg(&initrd)
        .output()
        .unwrap();
    assert!(out.status.success(), "initrd.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let console = dir.join("console.log");

    let mut xml = std::fs::read_to_string(root().join("qemu").join(example)).unwrap();
    assert!(xml.contains(EXAMPLE_SOCKET) && xml.contains(&format!("<name>{EXAMPLE_NAME}</name>")), "{xml}");
    xml = xml.replace(EXAMPLE_SOCKET, sock.to_str().unwrap());
    replace_span(&mut xml, "<domain type='kvm'", "", "<domain type='qemu'");
    replace_span(&mut xml, "<memory unit=", "</memory>", "<memory unit='MiB'>512</memory>");
    let os = format!(
        "<os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n    <kernel>{}</kernel>\n    \
         <initrd>{}</initrd>\n    <cmdline>{CMDLINE}</cmdline>\n  </os>\n  \
         <on_reboot>destroy</on_reboot>\n  <on_crash>destroy</on_crash>",
        kernel.display(),
        initrd.display()
    );
    replace_span(&mut xml, "<os>", "</os>", &os);
    replace_span(&mut xml, "<disk type='file'", "</disk>", "");
    let serial = format!("<serial type='file'><source path='{}'/></serial>", console.display());
    replace_span(&mut xml, "<serial type='pty'/>", "<console type='pty'/>", &serial);
    let path = dir.join(example);
    std::fs::write(&path, xml).unwrap();
    (path, console)
}

#[test]
fn the_example_domains_validate_and_define() {
    let t = LibvirtTest::new();
    let examples = [
        ("libvirt-vhostuser-disk.xml", ["<disk type='vhostuser'", "<reconnect enabled='yes' timeout='1'/>"]),
        ("libvirt-vhost-user-scsi.xml", ["<qemu:commandline>", "reconnect-ms=1000"]),
    ];
    for (example, wanted) in examples {
        let file = root().join("qemu").join(example);
        let out = Command::new("virt-xml-validate").arg(&file).arg("domain").output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.contains("validates"), "virt-xml-validate {example}:\n{said}");
        let domain = Domain::define(&t.lv, &file, EXAMPLE_NAME, Path::new("/dev/null"));
        let defined = t.lv.virsh_ok(&["dumpxml", "--inactive", EXAMPLE_NAME]);
        for w in wanted.iter().chain(&["<source type='memfd'/>", "<access mode='shared'/>", "<acpi/>"]) {
            assert!(defined.contains(w), "libvirt kept {w:?} of {example}:\n{defined}");
        }
        assert_eq!(domain.state(), "shut off");
    }
}

/// The domain is started by libvirt as it would be on any host; with ferryd's sockets left
/// to root (no `--vhost-socket-owner`), libvirt's QEMU cannot open them and the domain
/// does not start: the owner option is what makes the other tests work.
#[test]
fn without_the_socket_owner_option_the_domain_cannot_start() {
    let t = LibvirtTest::new();
    let d = Ferryd::start_in(t.dir.clone(), &["-m", "0x3", "-S", t.dir.to_str().unwrap()]);
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 32768, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vhost.vm1", "dev_name": "M"}));
    let (xml, console) = bootable_example("libvirt-vhostuser-disk.xml", &t.dir, &t.dir.join("vhost.vm1"), "true");
    let domain = Domain::define(&t.lv, &xml, EXAMPLE_NAME, &console);
    let err = domain.start().expect_err("the domain started on a socket only root may open");
    assert!(err.contains("Permission denied"), "{err}");
    let sessions = d.ok("vhost_get_controllers", json!({"name": "vhost.vm1"}))[0]["sessions"].clone();
    assert_eq!(sessions, json!([]), "no QEMU connected");
}

/// The restart test under libvirt: the example domain `example` boots with ferryd's
/// controller `vhost.vm1` on a uring bdev (made by `controller`), the guest runs fio with
/// verification on `dev` while ferryd is killed with requests in flight and restarted the
/// same way (so with the same socket options), and the guest sees no error
/// (`kill_and_restart_under_fio`).
fn killed_and_restarted_under_a_libvirt_guest(example: &str, dev: &str, controller: impl FnOnce(&Ferryd)) {
    // libvirtd starts before the held disk is mounted, so its namespace never holds the mount.
    let t = LibvirtTest::new();
    let args = [&["-m", "0x3", "-S", t.dir.to_str().unwrap()], &SOCKET_FOR_QEMU[..]].concat();
    let d = Ferryd::start_in(t.dir.clone(), &args);
    let mut disk = HeldDisk::new(&t.dir, 128);
    let file = disk.path("disk.img");
    std::fs::File::create(&file).unwrap().set_len(64 << 20).unwrap();
    d.ok("bdev_uring_create", json!({"name": "Disk", "filename": file}));
    controller(&d);
    let config = t.dir.join("config.json");
    std::fs::write(&config, serde_json::to_vec(&d.ok("save_config", Value::Null)).unwrap()).unwrap();
    let script = format!(
        r#"
echo "queues $(ls /sys/block/{dev}/mq | wc -l)"
echo FIO-START
fio --name=l --filename=/dev/{dev} --rw=randwrite --bs=4k --size=16M --offset_increment=16M --numjobs=2 \
    --iodepth=8 --ioengine=libaio --direct=1 --verify=crc32c --verify_backlog=64 --time_based --runtime=20 \
    --group_reporting 2>&1 | grep -E "err=|fio:|verify:"
echo FIO-END
"#
    );
    let (xml, console) = bootable_example(example, &t.dir, &t.dir.join("vhost.vm1"), &script);
    let domain = Domain::define(&t.lv, &xml, EXAMPLE_NAME, &console);
    domain.start().unwrap_or_else(|e| panic!("{example} did not start: {e}"));
    wait_for_console(&console, "FIO-START", 120);
    let text = std::fs::read_to_string(&console).unwrap().replace("\r\n", "\n");
    assert_eq!(field(&text, "queues"), "2", "the domain's queue count reached the guest:\n{text}");
    kill_and_restart_under_fio(d, domain, &console, &config, "vhost.vm1", "Disk", &mut disk);
}

#[test]
fn a_vhostuser_disk_survives_ferryd_restarting_under_it() {
    killed_and_restarted_under_a_libvirt_guest("libvirt-vhostuser-disk.xml", "vda", |d| {
        d.ok("vhost_create_blk_controller", json!({"ctrlr": "vhost.vm1", "dev_name": "Disk"}));
    });
}

#[test]
fn a_vhost_user_scsi_controller_survives_ferryd_restarting_under_it() {
    killed_and_restarted_under_a_libvirt_guest("libvirt-vhost-user-scsi.xml", "sda", |d| {
        d.ok("vhost_create_scsi_controller", json!({"ctrlr": "vhost.vm1"}));
        d.ok(
            "vhost_scsi_controller_add_target",
            json!({"ctrlr": "vhost.vm1", "scsi_target_num": 0, "bdev_name": "Disk"}),
        );
    });
}

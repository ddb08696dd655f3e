//! The Debian package and its systemd unit, with the real tools: scripts/deb.sh builds the .deb
//! from this build's binaries; dpkg-deb shows what it holds; dpkg installs it into a scratch
//! root (its maintainer scripts run chrootless and leave the host alone), and removes and purges
//! it; systemd-analyze verifies the unit as installed; and a real systemd (a user manager, as
//! PID 1 here is not systemd: scripts/systemd-user-manager.sh) runs the installed ferryd through
//! the installed unit: not active before ferryd is ready, a failed start failing `systemctl
//! start`, active and answering once it returns, sandboxed as the unit says while it serves a
//! vhost-user frontend from an io_uring bdev, and stopped cleanly.

mod common;

use common::notify::NotifySocket;
use common::{rpc_at, scratch_dir, write_config, Scratch};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs `cmd`, panics with its output unless it succeeds, returns its stdout.
#[track_caller]
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Held while a test may install Debian packages: two apt-gets at once would fight over dpkg's
/// lock (deb.sh installs its tools too).
static APT: Mutex<()> = Mutex::new(());

/// Installs Debian packages through the project's scripts (idempotent: a no-op when present).
fn apt_install(packages: &str) {
    let _apt = APT.lock().unwrap_or_else(|e| e.into_inner());
    run(Command::new("bash")
        .arg("-c")
        .arg(format!("source scripts/lib.sh && apt_install {packages}"))
        .current_dir(MANIFEST));
}

/// The package built from this build's binaries and installed into `dir/root`.
struct Installed {
    dir: Scratch,
    deb: PathBuf,
    root: PathBuf,
}

impl Installed {
    fn new(tag: &str) -> Installed {
        let dir = scratch_dir(tag);
        let bin = Path::new(env!("CARGO_BIN_EXE_ferryd")).parent().unwrap();
        let apt = APT.lock().unwrap_or_else(|e| e.into_inner());
        let out = run(Command::new("bash")
            .args(["scripts/deb.sh", "--fast", "--bin-dir", bin.to_str().unwrap(), "--out", dir.to_str().unwrap()])
            .current_dir(MANIFEST));
        drop(apt);
        let deb = PathBuf::from(out.lines().last().expect("deb.sh prints the package's path"));
        assert!(deb.starts_with(&*dir) && deb.is_file(), "{deb:?}");
        let root = dir.join("root");
        for d in ["info", "updates", "triggers"] {
            std::fs::create_dir_all(root.join("var/lib/dpkg").join(d)).unwrap();
        }
        for f in ["status", "available"] {
            std::fs::write(root.join("var/lib/dpkg").join(f), "").unwrap();
        }
        let i = Installed { dir, deb, root };
        i.dpkg(&["--install", i.deb.to_str().unwrap()]);
        i
    }

    /// dpkg on the scratch root. Maintainer scripts run without chroot (the root has no shell),
    /// with $DPKG_ROOT set, as on a real host; the root has no libc6 package to satisfy Depends.
    fn dpkg(&self, args: &[&str]) -> String {
        run(Command::new("dpkg")
            .arg(format!("--root={}", self.root.display()))
            .args(["--force-script-chrootless", "--force-depends", "--log=/dev/null"])
            .args(args))
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }
}

/// `dpkg-deb -f`: the control fields.
fn control_fields(deb: &Path) -> HashMap<String, String> {
    let out = run(Command::new("dpkg-deb").arg("-f").arg(deb));
    let mut fields = HashMap::new();
    let mut last = String::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix(' ') {
            fields.entry(last.clone()).and_modify(|v: &mut String| *v = format!("{v}\n{rest}"));
        } else if let Some((k, v)) = line.split_once(": ") {
            last = k.to_string();
            fields.insert(k.to_string(), v.to_string());
        }
    }
    fields
}

#[test]
fn the_package_holds_installs_and_removes_what_it_says() {
    let pkg = Installed::new("deb");
    let version = env!("CARGO_PKG_VERSION");

    // Control fields from Cargo.toml, dependencies from dpkg-shlibdeps.
    let f = control_fields(&pkg.deb);
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(f["Package"], "ferry");
    assert_eq!(f["Version"], version.replace('-', "~"));
    assert_eq!(f["Architecture"], arch.trim());
    assert!(f["Depends"].contains("libc6 (>= "), "{f:?}");
    assert!(!f["Maintainer"].is_empty());
    assert_eq!(f["Description"].lines().next(), Some(env!("CARGO_PKG_DESCRIPTION")));
    // Its Depends are met on this Debian (apt resolves them without installing anything).
    let sim = run(Command::new("apt-get").args(["install", "--simulate", "--no-install-recommends"]).arg(&pkg.deb));
    assert!(sim.lines().any(|l| l.starts_with("Inst ferry ")), "{sim}");
    let conffiles = run(Command::new("dpkg-deb").arg("--info").arg(&pkg.deb).arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/default/ferryd");

    // Contents: path -> (mode, owner).
    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(&pkg.deb));
    let entries: HashMap<&str, (&str, &str)> = listing
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[5], (w[0], w[1]))
        })
        .collect();
    assert!(entries.values().all(|(_, owner)| *owner == "root/root"), "{listing}");
    for b in ["ferryd", "ferryctl", "ferry-bdevperf"] {
        assert_eq!(entries.get(format!("./usr/bin/{b}").as_str()), Some(&("-rwxr-xr-x", "root/root")), "{listing}");
    }
    for file in [
        "./lib/systemd/system/ferryd.service",
        "./etc/default/ferryd",
        "./usr/share/doc/ferry/README.md",
        "./usr/share/doc/ferry/vhost.md",
        "./usr/share/doc/ferry/rpc.md",
        "./usr/share/doc/ferry/security.md",
        "./usr/share/doc/ferry/copyright",
        "./usr/share/doc/ferry/changelog.gz",
    ] {
        assert_eq!(entries.get(file), Some(&("-rw-r--r--", "root/root")), "{file} in\n{listing}");
    }

    // The license: Cargo.toml's, its text in LICENSE and named in the copyright file.
    assert_eq!(env!("CARGO_PKG_LICENSE"), "Apache-2.0");
    let license = std::fs::read_to_string(Path::new(MANIFEST).join("LICENSE")).unwrap();
    assert_eq!(license, std::fs::read_to_string("/usr/share/common-licenses/Apache-2.0").unwrap());
    let copyright = std::fs::read_to_string(pkg.path("/usr/share/doc/ferry/copyright")).unwrap();
    assert!(copyright.contains("License: Apache-2.0"), "{copyright}");

    // Installed: dpkg knows it, every file matches its checksum, the unit is the project's.
    assert!(pkg.dpkg(&["--status", "ferry"]).contains("Status: install ok installed"));
    assert_eq!(pkg.dpkg(&["--verify", "ferry"]), "", "installed files differ from the package's");
    for (installed, source) in [
        ("/lib/systemd/system/ferryd.service", "packaging/ferryd.service"),
        ("/etc/default/ferryd", "packaging/ferryd.default"),
    ] {
        assert_eq!(
            std::fs::read(pkg.path(installed)).unwrap(),
            std::fs::read(Path::new(MANIFEST).join(source)).unwrap()
        );
    }
    for b in ["ferryd", "ferryctl", "ferry-bdevperf"] {
        let out = run(Command::new(pkg.path(&format!("/usr/bin/{b}"))).arg("--version"));
        assert!(out.trim_end().ends_with(&format!(" {version}")), "{b} --version: {out}");
    }

    // Removed, the configuration stays (a conffile); purged, it goes too.
    pkg.dpkg(&["--remove", "ferry"]);
    assert!(!pkg.path("/usr/bin/ferryd").exists() && !pkg.path("/lib/systemd/system/ferryd.service").exists());
    assert!(pkg.path("/etc/default/ferryd").exists(), "remove keeps the conffile");
    pkg.dpkg(&["--purge", "ferry"]);
    assert!(!pkg.path("/etc/default/ferryd").exists(), "purge removes the conffile");
}

#[test]
fn the_installed_unit_passes_systemd_analyze_verify() {
    apt_install("systemd");
    let pkg = Installed::new("unit-verify");
    // The units it depends on (sysinit.target, multi-user.target, ...) as this host has them.
    run(Command::new("cp").arg("-an").arg("/lib/systemd/system/.").arg(pkg.path("/lib/systemd/system")));
    let out = Command::new("systemd-analyze")
        .arg(format!("--root={}", pkg.root.display()))
        .args(["--man=no", "verify", "/lib/systemd/system/ferryd.service"])
        .output()
        .unwrap();
    // verify exits 0 on unknown keys and bad values too, only saying so: no output is the pass.
    assert!(out.status.success() && text(&out).is_empty(), "systemd-analyze verify:\n{}", text(&out));
}

/// A systemd user manager (scripts/systemd-user-manager.sh), stopped and its cgroups removed
/// when dropped.
struct UserManager {
    child: Child,
    cgroup: String,
    home: PathBuf,
    runtime: PathBuf,
    /// ferryd's pid while the unit runs, killed on drop if the manager left it behind.
    main_pid: Option<u32>,
}

impl UserManager {
    fn start(dir: &Path) -> UserManager {
        static N: AtomicU32 = AtomicU32::new(0);
        let cgroup = format!("ferry-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let (home, runtime) = (dir.join("home"), dir.join("run"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        let ready = NotifySocket::at_path(&dir.join("manager.notify"));
        let log = std::fs::File::create(dir.join("manager.log")).unwrap();
        let child = Command::new("bash")
            .args(["scripts/systemd-user-manager.sh", "start", &cgroup])
            .current_dir(MANIFEST)
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("NOTIFY_SOCKET", &ready.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let m = UserManager { child, cgroup, home, runtime, main_pid: None };
        // The manager's own readiness, by the same protocol.
        let said = ready.next(|| std::fs::read_to_string(dir.join("manager.log")).unwrap_or_default());
        assert!(said.lines().any(|l| l == "READY=1"), "{said:?}");
        m
    }

    fn user_units(&self) -> PathBuf {
        self.home.join(".config/systemd/user")
    }

    /// `systemctl --user ARGS` inside the manager's mount namespace.
    fn systemctl(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.child.id().to_string(), "-m", "--", "systemctl", "--user"])
            .args(args)
            .env("HOME", &self.home)
            .env("XDG_RUNTIME_DIR", &self.runtime)
            .output()
            .unwrap()
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) {
        let out = self.systemctl(args);
        assert!(out.status.success(), "systemctl --user {args:?}:\n{}", text(&out));
    }

    /// Properties of a unit (`systemctl show -p`).
    fn show(&self, unit: &str, props: &[&str]) -> HashMap<String, String> {
        let mut args = vec!["show", unit];
        for p in props {
            args.extend(["-p", p]);
        }
        let out = self.systemctl(&args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        // SIGTERM: the manager stops its units and exits.
        // SAFETY: kill(2) on our own child; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = self.main_pid {
            // SAFETY: as above; the ferryd this test's manager started, if it outlived it.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = Command::new("bash")
            .args(["scripts/systemd-user-manager.sh", "cleanup", &self.cgroup])
            .current_dir(MANIFEST)
            .status();
    }
}

#[test]
fn the_unit_runs_ferryd_under_systemd_ready_sandboxed_and_stopped_cleanly() {
    apt_install("systemd util-linux python3");
    let pkg = Installed::new("unit-run");
    let dir = pkg.dir.clone();
    let pid1_cgroups = std::fs::read_to_string("/proc/1/cgroup").unwrap();
    let mut manager = UserManager::start(&dir);

    // The unit as installed; a drop-in points it at the scratch root instead of /usr and /etc
    // (as an operator's drop-in would), and at a log file (no journal here).
    let units = manager.user_units();
    std::fs::copy(pkg.path("/lib/systemd/system/ferryd.service"), units.join("ferryd.service")).unwrap();
    std::fs::create_dir_all(units.join("ferryd.service.d")).unwrap();
    let (env_file, log) = (dir.join("ferryd.env"), dir.join("ferryd.log"));
    std::fs::write(
        units.join("ferryd.service.d/scratch-root.conf"),
        format!(
            "[Service]\nExecStart=\nExecStart={} $FERRYD_OPTS\nEnvironmentFile=\nEnvironmentFile={}\n\
             StandardOutput=append:{log}\nStandardError=append:{log}\n",
            pkg.path("/usr/bin/ferryd").display(),
            env_file.display(),
            log = log.display()
        ),
    )
    .unwrap();
    // /etc/default/ferryd as installed, with the operator's options after it: a pinned core
    // (claimed in the scratch directory) and vhost sockets owned by another user, which needs
    // the capabilities the unit keeps.
    let defaults = std::fs::read_to_string(pkg.path("/etc/default/ferryd")).unwrap();
    let write_env = |opts: &str| {
        let extra = format!("FERRYD_OPTS=\"{opts}\"\nFERRY_CPU_LOCK_DIR={}\n", dir.display());
        std::fs::write(&env_file, format!("{defaults}{extra}")).unwrap();
    };
    let opts = "-m 0x1 --log-level INFO --vhost-socket-owner nobody:nogroup --vhost-socket-mode 0660";
    manager.ok(&["daemon-reload"]);

    // 1. The configuration replay is held at a peer the test controls: systemd must still see
    //    the service activating (Type=notify, no READY=1 yet); when the replay then fails,
    //    `systemctl start` fails with it.
    let gate = UnixListener::bind(dir.join("gate")).unwrap();
    let held = write_config(
        &dir,
        "held.json",
        json!([{"method": "bdev_virtio_attach_controller",
                "params": {"name": "V", "trtype": "user", "traddr": dir.join("gate"), "dev_type": "blk",
                           "timeout_ms": 60000}}]),
    );
    write_env(&format!("{opts} -c {}", held.display()));
    let (tx, accepted) = mpsc::channel();
    std::thread::spawn(move || tx.send(gate.accept().map(|(conn, _)| conn)));
    std::thread::scope(|s| {
        let start = s.spawn(|| manager.systemctl(&["start", "ferryd.service"]));
        let conn = accepted
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!("ferryd never reached the gate; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
            })
            .unwrap();
        let state = manager.show("ferryd.service", &["ActiveState", "StatusText"]);
        assert_eq!(state["ActiveState"], "activating", "ready before its configuration is in: {state:?}");
        drop(conn);
        let out = start.join().unwrap();
        assert!(!out.status.success(), "a ferryd that failed to start did not fail `systemctl start`");
    });
    manager.ok(&["stop", "ferryd.service"]); // no restart (Restart=on-failure) of the failed configuration

    // 2. A good start: once `systemctl start` returns, the daemon is active and answers.
    write_env(opts);
    manager.ok(&["start", "ferryd.service"]);
    let sock = manager.runtime.join("ferry/ferry.sock");
    let state = manager.show("ferryd.service", &["ActiveState", "SubState", "StatusText", "MainPID"]);
    assert_eq!((state["ActiveState"].as_str(), state["SubState"].as_str()), ("active", "running"), "{state:?}");
    assert_eq!(state["StatusText"], format!("serving RPC on {}", sock.display()));
    assert!(rpc_at(&sock, "spdk_get_version", Value::Null).unwrap()["version"].is_string());
    let pid: u32 = state["MainPID"].parse().unwrap();
    manager.main_pid = Some(pid);

    // 3. Sandboxed as the unit says: three capabilities (CHOWN 0, DAC_OVERRIDE 1, FOWNER 3), no
    //    new privileges, a seccomp filter, /usr and /etc read-only in its mount namespace.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for want in ["CapBnd:\t000000000000000b", "NoNewPrivs:\t1", "Seccomp:\t2"] {
        assert!(status.lines().any(|l| l == want), "{want:?} not in\n{status}");
    }
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    for ro in ["/usr", "/etc"] {
        assert!(
            mounts.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w[4] == ro && w[5].split(',').any(|o| o == "ro")
            }),
            "{ro} is not read-only for ferryd:\n{mounts}"
        );
    }
    let rundir = std::fs::metadata(manager.runtime.join("ferry")).unwrap();
    assert_eq!(rundir.permissions().mode() & 0o7777, 0o755);

    // 4. ...and still does its job: an io_uring bdev on a file, a vhost-user-blk controller
    //    whose socket it hands to another user, and a frontend (ferry-bdevperf's virtio-user
    //    initiator, sharing its memory as a VMM does) verifying data through it.
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    rpc_at(&sock, "bdev_uring_create", json!({"name": "Disk0", "filename": disk, "block_size": 512})).unwrap();
    rpc_at(&sock, "vhost_create_blk_controller", json!({"ctrlr": "vhost.0", "dev_name": "Disk0"})).unwrap();
    let vhost = manager.runtime.join("ferry/vhost.0");
    let meta = std::fs::metadata(&vhost).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777), (65534, 65534, 0o660));
    let frontend = write_config(
        &dir,
        "frontend.json",
        json!([{"method": "bdev_virtio_attach_controller",
                "params": {"name": "VirtioBlk0", "trtype": "user", "traddr": vhost, "dev_type": "blk"}}]),
    );
    run(Command::new(env!("CARGO_BIN_EXE_ferry-bdevperf")).args([
        "-c",
        frontend.to_str().unwrap(),
        "--no-pin",
        "-w",
        "verify",
        "-q",
        "16",
        "-t",
        "1",
    ]));

    // 5. Stopped: SIGTERM, a clean exit, the runtime directory gone.
    manager.ok(&["stop", "ferryd.service"]);
    let state = manager.show("ferryd.service", &["ActiveState", "Result", "ExecMainCode", "ExecMainStatus"]);
    assert_eq!(state["ActiveState"], "inactive", "{state:?}");
    assert_eq!((state["Result"].as_str(), state["ExecMainStatus"].as_str()), ("success", "0"), "{state:?}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("ferryd stopped"));
    assert!(!manager.runtime.join("ferry").exists(), "RuntimeDirectory= is removed on stop");
    manager.main_pid = None;
    drop(manager);
    assert_eq!(std::fs::read_to_string("/proc/1/cgroup").unwrap(), pid1_cgroups, "the host's cgroups were touched");
}

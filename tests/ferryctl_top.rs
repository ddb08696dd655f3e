//! `ferryctl top` in a real terminal: tmux runs it in a detached session of a fixed size
//! against a real `ferryd`; the test reads the screen with `capture-pane`, switches views with
//! keys and quits, waiting each time for what the screen must show (never for a fixed time).
//!
//! Needs tmux (`scripts/setup.sh` installs it).

mod common;

use common::{Ferryd, Scratch};
use ferry_vhost_initiator::{Client, Options, Request};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A private tmux server (its own socket name) running one session, killed when dropped.
struct Tmux {
    server: String,
    dir: Scratch,
}

impl Tmux {
    /// Runs `command` in a detached `width` x `height` session; the pane stays after the
    /// command exits, so its exit status can be read.
    fn start(dir: Scratch, width: u16, height: u16, command: &str) -> Tmux {
        static TMUX: std::sync::Once = std::sync::Once::new();
        TMUX.call_once(|| {
            if Command::new("tmux").arg("-V").output().is_err() {
                common::install_tools("scripts/metrics/setup.sh");
            }
        });
        let server = format!("ferry-top-{}-{}", std::process::id(), dir.file_name().unwrap().to_string_lossy());
        let conf = dir.join("tmux.conf");
        std::fs::write(&conf, "set -g remain-on-exit on\nset -g status off\n").unwrap();
        // The shell records the command's exit status for `wait_exit`.
        let command = format!("{command}; echo $? > {}", dir.join("exit-status").display());
        let t = Tmux { server, dir };
        let (w, h) = (width.to_string(), height.to_string());
        let out =
            t.run_with(&["-f", conf.to_str().unwrap(), "new-session", "-d", "-s", "top", "-x", &w, "-y", &h, &command]);
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        t
    }

    fn run_with(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.server])
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .expect("run tmux (scripts/metrics/setup.sh installs it)")
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.run_with(args);
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    fn keys(&self, keys: &str) {
        self.run(&["send-keys", "-t", "top", keys]);
    }

    /// Waits (up to 20 s) until the screen shows every one of `texts`; returns it.
    #[track_caller]
    fn wait_for(&self, texts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if texts.iter().all(|t| screen.contains(t)) {
                return screen;
            }
            assert!(Instant::now() < deadline, "the screen never showed {texts:?}:\n{screen}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to 20 s) for the command to exit; returns its exit status. Read from the file
    /// the wrapping shell writes ([`Tmux::start`]), not from tmux's `pane_dead_status`: tmux
    /// marks a pane dead when its terminal closes and may reap the process much later, and
    /// until then the status is empty.
    #[track_caller]
    fn wait_exit(&self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        let file = self.dir.join("exit-status");
        loop {
            if let Some(status) = std::fs::read_to_string(&file).ok().filter(|s| s.ends_with('\n')) {
                return status.trim().parse().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "ferryctl top did not exit:\n{}", self.screen());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run_with(&["kill-server"]);
    }
}

fn top_command(sock: &Path) -> String {
    format!("{} -s {} top --interval 0.2", env!("CARGO_BIN_EXE_ferryctl"), sock.display())
}

/// The line of `screen` that holds `text`.
fn line_with<'a>(screen: &'a str, text: &str) -> &'a str {
    screen.lines().find(|l| l.contains(text)).unwrap_or_else(|| panic!("no line with {text}:\n{screen}"))
}

#[test]
fn top_shows_reactors_threads_pollers_bdevs_and_controllers_and_quits_on_q() {
    let dir = common::scratch_dir("top");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()]);
    d.ok("bdev_malloc_create", json!({"name": "TopDisk0", "num_blocks": 8192, "block_size": 512}));
    d.ok("bdev_null_create", json!({"name": "TopNull1", "num_blocks": 8192, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "top.blk", "dev_name": "TopDisk0", "cpumask": "0x2"}));
    // A frontend with one queue, and some reads through it.
    let opts = Options { num_queues: 1, queue_size: 64, mem_size: 4 << 20, hugetlbfs: None };
    let mut c = Client::connect(&dir.join("top.blk"), &opts).expect("connect");
    let buf = c.mem().alloc(4096, 4096).unwrap();
    for i in 0..4 {
        c.queue(0).submit(&Request::Read { sector: 0, bufs: &[(buf, 4096)] }, i).unwrap();
    }
    c.queue(0).kick();
    common::wait_completions(&mut c, 0, 4);

    let tmux = Tmux::start(common::scratch_dir("top-tmux"), 150, 40, &top_command(&d.sock));
    // The first view: one row per reactor, with its thread.
    let screen = tmux.wait_for(&["1 Reactors", "Busy %", "reactor_0", "reactor_1"]);
    assert!(line_with(&screen, "reactor_1").trim_start_matches('│').starts_with('1'), "{screen}");

    tmux.keys("4");
    let screen = tmux.wait_for(&["Read IOPS", "TopDisk0", "TopNull1"]);
    // Reads column: the 4 reads through the controller.
    let disk = line_with(&screen, "TopDisk0");
    assert_eq!(disk.split_whitespace().filter(|c| *c == "4").count(), 1, "{disk}");

    tmux.keys("Tab");
    let screen = tmux.wait_for(&["Controller", "top.blk"]);
    let row: Vec<&str> = line_with(&screen, "top.blk").trim_matches('│').split_whitespace().collect();
    assert_eq!(row[..6], ["top.blk", "blk", "TopDisk0", "0x2", "1", "1"], "{screen}");

    tmux.keys("3");
    let screen = tmux.wait_for(&["Period µs", "vhost_blk_q0", "bdev_completions"]);
    assert!(line_with(&screen, "vhost_blk_q0").contains("reactor_1"), "the queue runs on core 1: {screen}");

    tmux.keys("BTab");
    tmux.wait_for(&["Active pollers", "Cpumask", "reactor_0"]);

    tmux.keys("q");
    assert_eq!(tmux.wait_exit(), 0, "{}", tmux.screen());
    drop(c);
}

#[test]
fn top_says_when_ferryd_does_not_answer_and_still_quits() {
    let dir = common::scratch_dir("top-absent");
    let tmux = Tmux::start(common::scratch_dir("top-absent-tmux"), 120, 20, &top_command(&dir.join("none.sock")));
    let screen = tmux.wait_for(&["cannot connect to", "none.sock"]);
    assert!(screen.contains("1 Reactors"), "{screen}");
    tmux.keys("C-c");
    assert_eq!(tmux.wait_exit(), 0, "{}", tmux.screen());
}

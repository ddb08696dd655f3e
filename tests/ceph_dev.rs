//! The development Ceph cluster (`scripts/ceph-dev.sh`) through its harness
//! (tests/common/ceph.rs): it comes up serving RBD images, reachable both with its ceph.conf
//! and with only the monitor's address and key (what librados is given); a stop and start
//! keeps the data and, in between, clients find it gone; two run side by side, and `down`
//! leaves nothing behind. Needs root the first time (the script installs Debian's Ceph).

mod common;

use common::ceph::{CephCluster, POOL};
use std::path::Path;
use std::process::Command;

/// The images of the cluster's pool.
fn images(c: &CephCluster) -> Vec<String> {
    let mut v: Vec<String> = c.rbd_ok(&["ls", POOL]).lines().map(str::to_string).collect();
    v.sort();
    v
}

/// Imports `data` as image `name` (layering only) through a file in `dir`.
fn import(c: &CephCluster, dir: &Path, name: &str, data: &[u8]) {
    let src = dir.join(format!("{name}.in"));
    std::fs::write(&src, data).unwrap();
    c.rbd_ok(&[
        "import",
        "--no-progress",
        "--image-feature",
        "layering",
        src.to_str().unwrap(),
        &format!("{POOL}/{name}"),
    ]);
}

/// Image `name`'s contents, through `rbd export` to a file in `dir`.
fn export(c: &CephCluster, dir: &Path, name: &str) -> Vec<u8> {
    let dst = dir.join(format!("{name}.out"));
    let _ = std::fs::remove_file(&dst);
    c.rbd_ok(&["export", "--no-progress", &format!("{POOL}/{name}"), dst.to_str().unwrap()]);
    std::fs::read(&dst).unwrap()
}

/// Three 4 MiB objects, the last one partial, and not a whole number of sectors.
const DATA_LEN: usize = (9 << 20) + 12 * 1024 + 100;

#[test]
fn images_round_trip() {
    let c = CephCluster::up("roundtrip");
    let files = common::scratch_dir("ceph-roundtrip-files");

    c.create_image("disk0", 64);
    let info = c.rbd_ok(&["info", "--format", "json", &format!("{POOL}/disk0")]);
    assert!(info.contains(r#""size":67108864"#), "{info}");
    assert!(info.contains(r#""features":["layering"]"#), "only layering: {info}");

    let data = common::pat(1, DATA_LEN);
    import(&c, &files, "imported", &data);
    let back = export(&c, &files, "imported");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "rbd export differs from what rbd import wrote");

    // Without ceph.conf or keyring: the monitor's address and client.admin's key.
    let out = Command::new("rbd")
        .args(["-c", "/dev/null", "-m", c.mon_addr(), "--id", "admin", "--key", c.key()])
        .args(["--client-mount-timeout", "10", "ls", POOL])
        .output()
        .unwrap();
    assert!(out.status.success(), "rbd -m {} --key: {}", c.mon_addr(), String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "disk0\nimported\n");
}

#[test]
fn stop_and_start_keep_the_data() {
    let c = CephCluster::up("restart");
    let files = common::scratch_dir("ceph-restart-files");
    let data = common::pat(2, DATA_LEN);
    import(&c, &files, "kept", &data);
    c.create_image("empty", 8);

    c.stop();
    let out = c.rbd(&["--client-mount-timeout", "1", "ls", POOL]);
    assert!(!out.status.success(), "rbd ls succeeded on a stopped cluster");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("couldn't connect to the cluster"), "{err}");

    c.start();
    assert_eq!(images(&c), ["empty", "kept"]);
    assert!(export(&c, &files, "kept") == data, "the image changed across stop and start");
    // And it takes writes again.
    c.create_image("after", 8);
    assert_eq!(images(&c), ["after", "empty", "kept"]);
}

#[test]
fn two_clusters_side_by_side() {
    let a = CephCluster::up("side-a");
    let b = CephCluster::up("side-b");
    assert_ne!(a.mon_addr(), b.mon_addr());
    a.create_image("only-a", 8);
    b.create_image("only-b", 8);
    assert_eq!(images(&a), ["only-a"]);
    assert_eq!(images(&b), ["only-b"]);

    // Two clusters, not two names of one: a's key does not open b.
    let out = Command::new("rbd")
        .args(["-c", "/dev/null", "-m", b.mon_addr(), "--id", "admin", "--key", a.key()])
        .args(["--client-mount-timeout", "1", "ls", POOL])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a's key opened b");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("handle_auth_bad_method"), "b's monitor did not turn a's key down: {err}");

    // `down` (a's drop) kills a's daemons and removes its directory; b goes on.
    let dir = a.dir().to_path_buf();
    let pids: Vec<u32> = std::fs::read_to_string(dir.join("pids"))
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "a monitor and an OSD");
    drop(a);
    assert!(!dir.exists(), "{} left behind", dir.display());
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie its new parent has not reaped yet.
        let state = stat.rsplit_once(") ").map(|(_, s)| &s[..1]).unwrap_or("gone");
        assert!(state == "gone" || state == "Z", "pid {pid} still runs: {stat}");
    }
    b.create_image("still-b", 8);
    assert_eq!(images(&b), ["only-b", "still-b"]);
}

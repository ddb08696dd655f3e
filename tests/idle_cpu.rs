//! An idle `ferryd -m 0x3` with bdevs sleeps in interrupt mode: under 2% of one core over 10 s.

mod common;

use common::Ferryd;
use serde_json::json;
use std::time::{Duration, Instant};

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100)
}

#[test]
fn idle_ferryd_uses_under_two_percent_of_a_core() {
    let d = Ferryd::start(&["-m", "0x3"]);
    let file = d.dir.join("idle.img");
    std::fs::File::create(&file).unwrap().set_len(4 << 20).unwrap();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 2048, "block_size": 512}));
    d.ok("bdev_null_create", json!({"name": "N", "num_blocks": 2048, "block_size": 512}));
    d.ok("bdev_uring_create", json!({"name": "U", "filename": file.to_str().unwrap()}));
    std::thread::sleep(Duration::from_millis(500));
    let start_ticks = cpu_ticks(d.pid());
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let used = (cpu_ticks(d.pid()) - start_ticks) as f64 / clock_ticks_per_second() as f64;
    let share = used / start.elapsed().as_secs_f64() * 100.0;
    println!("idle ferryd -m 0x3: {share:.3}% of one core over 10 s");
    assert!(share < 2.0, "idle ferryd used {share:.2}% of a core");
    let reactors = d.ok("framework_get_reactors", json!(null));
    for r in reactors["reactors"].as_array().unwrap() {
        assert_eq!(r["in_interrupt"], true, "idle reactor {} is asleep", r["lcore"]);
    }
}

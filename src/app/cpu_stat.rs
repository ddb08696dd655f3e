//! What the host knows about a core and a thread, as SPDK's `framework_get_reactors` reports
//! it: user, system and interrupt time from `/proc/stat` since the daemon started (clock
//! ticks, as the kernel counts them), the core's NUMA node, and threads' kernel ids.

use std::collections::HashMap;
use std::sync::OnceLock;

/// One core's time in clock ticks (`USER_HZ`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// User time (`user`).
    pub usr: u64,
    /// System time (`system`).
    pub sys: u64,
    /// Interrupt time (`irq` + `softirq`).
    pub irq: u64,
}

static BASELINE: OnceLock<HashMap<u32, CpuTimes>> = OnceLock::new();

/// Parses `/proc/stat` text into per-core times.
fn parse(text: &str) -> HashMap<u32, CpuTimes> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let core: u32 = fields.next()?.strip_prefix("cpu")?.parse().ok()?;
            // cpuN user nice system idle iowait irq softirq ...
            let v: Vec<u64> = fields.take(7).map(|f| f.parse().ok()).collect::<Option<_>>()?;
            (v.len() == 7).then(|| (core, CpuTimes { usr: v[0], sys: v[2], irq: v[5] + v[6] }))
        })
        .collect()
}

fn read_all() -> HashMap<u32, CpuTimes> {
    std::fs::read_to_string("/proc/stat").map(|t| parse(&t)).unwrap_or_default()
}

/// Records the starting point the times are counted from (the first call wins).
pub fn init_baseline() {
    BASELINE.get_or_init(read_all);
}

/// `core`'s times since [`init_baseline`] (zeroes when the kernel does not say).
pub fn times(core: u32) -> CpuTimes {
    let base = BASELINE.get_or_init(read_all).get(&core).copied().unwrap_or_default();
    let now = read_all().get(&core).copied().unwrap_or_default();
    CpuTimes {
        usr: now.usr.saturating_sub(base.usr),
        sys: now.sys.saturating_sub(base.sys),
        irq: now.irq.saturating_sub(base.irq),
    }
}

/// The NUMA node of `core`, or -1 (SPDK's "any") when sysfs does not say.
pub fn numa_node(core: u32) -> i32 {
    let Ok(dir) = std::fs::read_dir(format!("/sys/devices/system/cpu/cpu{core}")) else { return -1 };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("node")?.parse().ok()).next().unwrap_or(-1)
}

/// This process's threads by name (`/proc/self/task/*/comm`) with their kernel thread ids.
pub fn thread_ids() -> HashMap<String, u64> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return HashMap::new() };
    tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let tid: u64 = t.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
            Some((name.trim_end().to_string(), tid))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_lines_give_user_system_and_interrupt_time() {
        let text = "cpu  10 1 20 300 4 5 6 0 0 0\ncpu0 7 1 8 100 2 3 4 0 0 0\ncpu1 1 2 3 4 5 6 7 0 0 0\nintr 1 2\n";
        let t = parse(text);
        assert_eq!(t.len(), 2, "the all-cpu line and other lines are skipped");
        assert_eq!(t[&0], CpuTimes { usr: 7, sys: 8, irq: 7 });
        assert_eq!(t[&1], CpuTimes { usr: 1, sys: 3, irq: 13 });
    }

    #[test]
    fn this_machine_reports_core_zero() {
        assert!(read_all().contains_key(&0));
        assert!(numa_node(0) >= -1);
        let me = std::thread::current().name().unwrap_or_default().chars().take(15).collect::<String>();
        assert!(thread_ids().contains_key(&me), "{me} in {:?}", thread_ids());
    }
}

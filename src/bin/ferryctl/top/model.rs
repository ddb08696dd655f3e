//! The five views as rows of text, computed from the last two samples (rates and busy shares
//! over the interval between them, totals from the first sample alone). Every field is read
//! by name and shown as "-" when absent, so older and newer daemons (SPDK's field names, such
//! as `lw_threads` or `inflight_task_cnt`, beside Ferry's own) display what they have.

use super::fetch::Sample;
use serde_json::Value;

/// The views, in tab order.
pub const VIEWS: [&str; 5] = ["Reactors", "Threads", "Pollers", "Bdevs", "Controllers"];

/// One view's table.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Column titles.
    pub header: Vec<&'static str>,
    /// Cells, row by row.
    pub rows: Vec<Vec<String>>,
}

/// The table of view `view` (an index into [`VIEWS`]).
pub fn table(view: usize, prev: Option<&Sample>, cur: &Sample) -> Table {
    let pair = Pair { prev, cur };
    match view {
        0 => reactors(&pair),
        1 => threads(&pair),
        2 => pollers(&pair),
        3 => bdevs(&pair),
        _ => controllers(&pair),
    }
}

struct Pair<'a> {
    prev: Option<&'a Sample>,
    cur: &'a Sample,
}

impl Pair<'_> {
    /// `method`'s list `key` now, and the same list in the previous sample.
    fn lists(&self, method: &str, key: Option<&str>) -> (Vec<Value>, Vec<Value>) {
        let list = |s: &Sample| {
            let v = s.get(method);
            let v = match key {
                Some(k) => v.and_then(|v| v.get(k)),
                None => v,
            };
            v.and_then(Value::as_array).cloned().unwrap_or_default()
        };
        (list(self.cur), self.prev.map(list).unwrap_or_default())
    }

    fn tick_rate(&self, method: &str) -> Option<f64> {
        self.cur.get(method)?.get("tick_rate")?.as_f64().filter(|r| *r > 0.0)
    }

    /// Seconds between the two samples, if there are two.
    fn seconds(&self) -> Option<f64> {
        let prev = self.prev?;
        Some(self.cur.at.duration_since(prev.at).as_secs_f64()).filter(|s| *s > 0.0)
    }
}

/// The first of `keys` present in `v`.
fn field<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| v.get(k).filter(|x| !x.is_null()))
}

fn u64_of(v: &Value, keys: &[&str]) -> Option<u64> {
    field(v, keys)?.as_u64()
}

/// A field as text: strings bare, numbers and booleans as JSON spells them, "-" if absent.
fn text(v: &Value, keys: &[&str]) -> String {
    match field(v, keys) {
        Some(Value::String(s)) => s.clone(),
        Some(other) if !other.is_object() && !other.is_array() => other.to_string(),
        _ => "-".into(),
    }
}

/// The entry of `list` matching `item` by `key` (the same reactor, thread, bdev...).
fn same<'a>(list: &'a [Value], item: &Value, key: &str) -> Option<&'a Value> {
    let id = item.get(key)?;
    list.iter().find(|p| p.get(key) == Some(id))
}

/// Growth of counter `keys` between `old` (if any) and `new`.
fn delta(new: &Value, old: Option<&Value>, keys: &[&str]) -> Option<u64> {
    Some(u64_of(new, keys)?.saturating_sub(old.map_or(Some(0), |o| u64_of(o, keys))?))
}

/// Busy share in percent: over the interval with a previous sample, else since start.
fn busy_percent(new: &Value, old: Option<&Value>) -> String {
    match (delta(new, old, &["busy"]), delta(new, old, &["idle"])) {
        (Some(b), Some(i)) if b + i > 0 => format!("{:.1}", b as f64 * 100.0 / (b + i) as f64),
        (Some(_), Some(_)) => "0.0".into(),
        _ => "-".into(),
    }
}

/// A per-second rate of counter `keys`, or "-" without an interval.
fn rate(new: &Value, old: Option<&Value>, keys: &[&str], seconds: Option<f64>, scale: f64) -> String {
    match (old, seconds, delta(new, old, keys)) {
        (Some(_), Some(s), Some(d)) => format!("{:.1}", d as f64 / s / scale),
        _ => "-".into(),
    }
}

fn reactors(p: &Pair) -> Table {
    let (now, before) = p.lists("framework_get_reactors", Some("reactors"));
    let rows = now
        .iter()
        .map(|r| {
            let old = same(&before, r, "lcore");
            let threads = field(r, &["lw_threads", "threads"])
                .and_then(Value::as_array)
                .map(|ts| ts.iter().map(|t| text(t, &["name"])).collect::<Vec<_>>().join(","))
                .unwrap_or_else(|| "-".into());
            let mode = match field(r, &["in_interrupt"]).and_then(Value::as_bool) {
                Some(true) => "interrupt",
                Some(false) => "poll",
                None => "-",
            };
            vec![
                text(r, &["lcore"]),
                threads,
                busy_percent(r, old),
                mode.into(),
                text(r, &["irq"]),
                text(r, &["sys"]),
                text(r, &["usr"]),
            ]
        })
        .collect();
    Table { header: vec!["Core", "Threads", "Busy %", "Mode", "IRQ", "Sys", "Usr"], rows }
}

fn threads(p: &Pair) -> Table {
    let (now, before) = p.lists("thread_get_stats", Some("threads"));
    let rows = now
        .iter()
        .map(|t| {
            let old = same(&before, t, "id");
            vec![
                text(t, &["name"]),
                text(t, &["id"]),
                text(t, &["cpumask"]),
                text(t, &["active_pollers_count"]),
                text(t, &["timed_pollers_count"]),
                text(t, &["paused_pollers_count"]),
                busy_percent(t, old),
            ]
        })
        .collect();
    Table { header: vec!["Thread", "ID", "Cpumask", "Active pollers", "Timed pollers", "Paused", "Busy %"], rows }
}

fn pollers(p: &Pair) -> Table {
    let (now, before) = p.lists("thread_get_pollers", Some("threads"));
    let tick_rate = p.tick_rate("thread_get_pollers");
    let mut rows = Vec::new();
    for t in &now {
        let old_thread = same(&before, t, "id");
        for (kind, key) in [("active", "active_pollers"), ("timed", "timed_pollers"), ("paused", "paused_pollers")] {
            let list = t.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
            let old_list = old_thread.and_then(|o| o.get(key)).and_then(Value::as_array).cloned().unwrap_or_default();
            for poller in &list {
                let old = same(&old_list, poller, "name");
                let period = match (u64_of(poller, &["period_ticks"]), tick_rate) {
                    (Some(0), _) => "-".to_string(),
                    (Some(ticks), Some(rate)) => format!("{:.0}", ticks as f64 * 1e6 / rate),
                    _ => "-".to_string(),
                };
                rows.push(vec![
                    text(t, &["name"]),
                    text(poller, &["name"]),
                    kind.to_string(),
                    text(poller, &["run_count"]),
                    rate(poller, old, &["run_count"], p.seconds().filter(|_| old.is_some()), 1.0),
                    text(poller, &["busy_count"]),
                    period,
                ]);
            }
        }
    }
    Table { header: vec!["Thread", "Poller", "Type", "Runs", "Runs/s", "Busy runs", "Period µs"], rows }
}

fn bdevs(p: &Pair) -> Table {
    let (now, before) = p.lists("bdev_get_iostat", Some("bdevs"));
    let tick_rate = p.tick_rate("bdev_get_iostat");
    let seconds = p.seconds();
    let mib = 1024.0 * 1024.0;
    let rows = now
        .iter()
        .map(|b| {
            let old = same(&before, b, "name");
            let has_old = seconds.filter(|_| old.is_some());
            // Mean latency over the interval (or since start): latency ticks per operation.
            let latency = |ops: &str, ticks: &str| match (delta(b, old, &[ticks]), delta(b, old, &[ops]), tick_rate) {
                (Some(t), Some(n), Some(rate)) if n > 0 => format!("{:.1}", t as f64 * 1e6 / rate / n as f64),
                _ => "-".into(),
            };
            vec![
                text(b, &["name"]),
                rate(b, old, &["num_read_ops"], has_old, 1.0),
                rate(b, old, &["num_write_ops"], has_old, 1.0),
                rate(b, old, &["bytes_read"], has_old, mib),
                rate(b, old, &["bytes_written"], has_old, mib),
                latency("num_read_ops", "read_latency_ticks"),
                latency("num_write_ops", "write_latency_ticks"),
                text(b, &["num_read_ops"]),
                text(b, &["num_write_ops"]),
            ]
        })
        .collect();
    Table {
        header: vec![
            "Bdev",
            "Read IOPS",
            "Write IOPS",
            "Read MiB/s",
            "Write MiB/s",
            "Read lat µs",
            "Write lat µs",
            "Reads",
            "Writes",
        ],
        rows,
    }
}

fn controllers(p: &Pair) -> Table {
    let (now, _) = p.lists("vhost_get_controllers", None);
    let rows = now
        .iter()
        .map(|c| {
            let specific = c.get("backend_specific");
            let (kind, bdevs) = match specific {
                Some(s) if s.get("block").is_some() => ("blk", text(&s["block"], &["bdev"])),
                Some(s) if s.get("scsi").is_some() => {
                    let luns: Vec<String> = s["scsi"]
                        .as_array()
                        .map(|targets| {
                            targets
                                .iter()
                                .flat_map(|t| t.get("luns").and_then(Value::as_array).cloned().unwrap_or_default())
                                .map(|l| text(&l, &["bdev_name"]))
                                .collect()
                        })
                        .unwrap_or_default();
                    ("scsi", if luns.is_empty() { "-".into() } else { luns.join(",") })
                }
                _ => ("-", "-".into()),
            };
            let sessions = c.get("sessions").and_then(Value::as_array).cloned().unwrap_or_default();
            let sum = |keys: &[&str]| -> String {
                let values: Vec<u64> = sessions.iter().filter_map(|s| u64_of(s, keys)).collect();
                if values.is_empty() && sessions.is_empty() {
                    "0".into()
                } else if values.is_empty() {
                    "-".into()
                } else {
                    values.iter().sum::<u64>().to_string()
                }
            };
            vec![
                text(c, &["ctrlr"]),
                kind.into(),
                bdevs,
                text(c, &["cpumask"]),
                sessions.len().to_string(),
                sum(&["running_queues"]),
                sum(&["inflight_task_cnt", "inflight_requests"]),
                text(c, &["socket"]),
            ]
        })
        .collect();
    Table { header: vec!["Controller", "Type", "Bdevs", "Cpumask", "Sessions", "Queues", "Inflight", "Socket"], rows }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    fn sample(at: Instant, answers: [Value; 5]) -> Sample {
        Sample { at, answers: answers.map(|v| (!v.is_null()).then_some(v)), errors: vec![] }
    }

    #[test]
    fn rates_and_shares_come_from_the_interval_between_samples() {
        let t0 = Instant::now();
        let iostat = |reads: u64, ticks: u64| {
            json!({"tick_rate": 1_000_000, "bdevs": [{"name": "M", "num_read_ops": reads, "bytes_read": reads * 4096,
                   "read_latency_ticks": ticks, "num_write_ops": 0}]})
        };
        let reactors = |busy: u64, idle: u64| {
            json!({"reactors": [{"lcore": 0, "busy": busy, "idle": idle, "in_interrupt": false,
                                  "threads": [{"name": "reactor_0"}]}]})
        };
        let a = sample(t0, [reactors(100, 100), Value::Null, Value::Null, iostat(10, 100), Value::Null]);
        let b = sample(
            t0 + Duration::from_secs(2),
            [reactors(400, 200), Value::Null, Value::Null, iostat(1010, 2100), Value::Null],
        );
        let r = table(0, Some(&a), &b);
        assert_eq!(r.rows, vec![vec!["0", "reactor_0", "75.0", "poll", "-", "-", "-"]]);
        // Without a previous sample: the share since start, no rates.
        assert_eq!(table(0, None, &a).rows[0][2], "50.0");
        let d = table(3, Some(&a), &b);
        // 1000 reads in 2 s, 4000 KB; 2000 ticks of 1 µs over 1000 reads.
        assert_eq!(d.rows[0][..6], ["M", "500.0", "0.0", "2.0", "-", "2.0"]);
        assert_eq!(table(3, None, &a).rows[0][1], "-");
    }

    #[test]
    fn spdk_field_names_and_missing_fields_are_tolerated() {
        let reactors = json!({"reactors": [{"lcore": 1, "lw_threads": [{"name": "app_thread"}], "irq": 5, "sys": 6,
                                            "usr": 7, "in_interrupt": true}]});
        let controllers = json!([
            {"ctrlr": "vhost.0", "cpumask": "0x1", "socket": "/s/vhost.0",
             "backend_specific": {"block": {"bdev": "Malloc0"}},
             "sessions": [{"vid": 0, "running_queues": 2, "inflight_task_cnt": 3}]},
            {"ctrlr": "vhost.1", "backend_specific": {"scsi": [{"luns": [{"bdev_name": "Malloc1"}]}]}, "sessions": []},
            {"ctrlr": "odd"}
        ]);
        let s = sample(Instant::now(), [reactors, json!({}), json!({"threads": 3}), Value::Null, controllers]);
        assert_eq!(table(0, None, &s).rows[0], vec!["1", "app_thread", "-", "interrupt", "5", "6", "7"]);
        assert!(table(1, None, &s).rows.is_empty());
        assert!(table(2, None, &s).rows.is_empty());
        assert!(table(3, None, &s).rows.is_empty());
        let c = table(4, None, &s).rows;
        assert_eq!(c[0], vec!["vhost.0", "blk", "Malloc0", "0x1", "1", "2", "3", "/s/vhost.0"]);
        assert_eq!(c[1][..7], ["vhost.1", "scsi", "Malloc1", "-", "0", "0", "0"]);
        assert_eq!(c[2][..3], ["odd", "-", "-"]);
    }

    #[test]
    fn pollers_of_every_kind_are_listed_with_their_thread() {
        let pollers = |runs: u64| {
            json!({"tick_rate": 2_000_000, "threads": [{"name": "reactor_0", "id": 1,
                "active_pollers": [{"name": "vq", "run_count": runs, "busy_count": 1, "period_ticks": 0}],
                "timed_pollers": [{"name": "t", "run_count": 1, "busy_count": 0, "period_ticks": 2000}]}]})
        };
        let t0 = Instant::now();
        let a = sample(t0, [Value::Null, Value::Null, pollers(10), Value::Null, Value::Null]);
        let b = sample(t0 + Duration::from_secs(1), [Value::Null, Value::Null, pollers(110), Value::Null, Value::Null]);
        let t = table(2, Some(&a), &b);
        assert_eq!(t.rows[0], vec!["reactor_0", "vq", "active", "110", "100.0", "1", "-"]);
        assert_eq!(t.rows[1], vec!["reactor_0", "t", "timed", "1", "0.0", "0", "1000"]);
    }
}

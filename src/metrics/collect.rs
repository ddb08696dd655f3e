//! What the endpoint reports, and gathering it: run on a metrics worker, never on the event
//! loop. Everything a reactor owns (its busy and idle time, the counters of the virtqueues it
//! serves) is read on the reactor itself, by one message each ([`framework::call_on_each`]);
//! bdev counters are per-channel single-writer cells that any thread may read, summed here as
//! `bdev_get_iostat` sums them. Nothing on the I/O path is shared or locked for this.

use super::text::{Exposition, Kind};
use crate::bdev::histogram::{self, BUCKETS};
use crate::bdev::registry;
use crate::bdev::stats::{IoStats, OpStats};
use crate::framework::reactor::ReactorStats;
use crate::framework::{self, ticks, FrameworkError};
use crate::vhost::controllers;
use crate::vhost::session::{self, QueueStats};

/// The numbers of one scrape.
#[derive(Debug)]
pub struct Snapshot {
    tick_rate: u64,
    reactors: Vec<ReactorStats>,
    bdevs: Vec<(String, IoStats)>,
    controllers: Vec<ControllerSample>,
}

#[derive(Debug)]
struct ControllerSample {
    name: String,
    connected: bool,
    /// The connected session's queues, by index.
    queues: Vec<QueueStats>,
}

/// Gathers a snapshot. Waits for each reactor in turn: call it on a worker.
pub fn gather() -> Result<Snapshot, FrameworkError> {
    let per_reactor = framework::call_on_each(|| {
        let stats = framework::current_index().and_then(|i| framework::reactors().get(i)).map(|r| r.stats());
        (stats, session::queue_stats_here())
    })?;
    let mut reactors = Vec::new();
    let mut queues = Vec::new();
    for (stats, q) in per_reactor {
        reactors.extend(stats);
        queues.extend(q);
    }
    let bdevs = registry::list().iter().map(|b| (b.name().to_string(), b.stats())).collect();
    let controllers = controllers::list()
        .iter()
        .map(|c| {
            let mut own: Vec<QueueStats> = c
                .session_info()
                .map(|info| queues.iter().filter(|q| q.session_id == info.session_id).copied().collect())
                .unwrap_or_default();
            own.sort_by_key(|q| q.queue);
            ControllerSample { name: c.name.clone(), connected: c.is_connected(), queues: own }
        })
        .collect();
    Ok(Snapshot { tick_rate: ticks::tick_rate().max(1), reactors, bdevs, controllers })
}

/// The I/O types a bdev's counters are kept for, as the `type` label names them.
fn ops(s: &IoStats) -> [(&'static str, &OpStats); 4] {
    [("read", &s.read), ("write", &s.write), ("unmap", &s.unmap), ("other", &s.other)]
}

impl Snapshot {
    fn seconds(&self, ticks: u64) -> f64 {
        ticks as f64 / self.tick_rate as f64
    }

    /// The snapshot in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut e = Exposition::default();
        self.render_reactors(&mut e);
        self.render_bdevs(&mut e);
        self.render_vhost(&mut e);
        e.finish()
    }

    fn render_reactors(&self, e: &mut Exposition) {
        let labels: Vec<[String; 2]> =
            self.reactors.iter().map(|r| [r.index.to_string(), r.core.to_string()]).collect();
        let each = |e: &mut Exposition, name: &str, value: &dyn Fn(&ReactorStats) -> f64| {
            for (r, [index, core]) in self.reactors.iter().zip(&labels) {
                e.sample(name, &[("reactor", index), ("core", core)], value(r));
            }
        };
        e.family(
            "ferry_reactor_busy_seconds_total",
            Kind::Counter,
            "Time the reactor spent in loop iterations that did work.",
        );
        each(e, "ferry_reactor_busy_seconds_total", &|r| self.seconds(r.busy_ticks));
        e.family(
            "ferry_reactor_idle_seconds_total",
            Kind::Counter,
            "Time the reactor spent polling with nothing to do or asleep.",
        );
        each(e, "ferry_reactor_idle_seconds_total", &|r| self.seconds(r.idle_ticks));
        e.family("ferry_reactor_pollers", Kind::Gauge, "Pollers registered on the reactor, by kind (active or timed).");
        for (r, [index, core]) in self.reactors.iter().zip(&labels) {
            for (kind, n) in [("active", r.active_pollers), ("timed", r.timed_pollers)] {
                e.sample("ferry_reactor_pollers", &[("reactor", index), ("core", core), ("kind", kind)], n as u64);
            }
        }
    }

    fn render_bdevs(&self, e: &mut Exposition) {
        let per_op = |e: &mut Exposition, name: &str, value: fn(&OpStats) -> u64| {
            for (bdev, s) in &self.bdevs {
                for (kind, op) in ops(s) {
                    e.sample(name, &[("bdev", bdev), ("type", kind)], value(op));
                }
            }
        };
        e.family("ferry_bdev_ops_total", Kind::Counter, "I/O operations completed successfully, by type.");
        per_op(e, "ferry_bdev_ops_total", |op| op.ops.get());
        e.family(
            "ferry_bdev_bytes_total",
            Kind::Counter,
            "Bytes read, written or unmapped by successful I/O, by type.",
        );
        per_op(e, "ferry_bdev_bytes_total", |op| op.bytes.get());
        e.family("ferry_bdev_io_errors_total", Kind::Counter, "I/O operations that failed.");
        for (bdev, s) in &self.bdevs {
            e.sample("ferry_bdev_io_errors_total", &[("bdev", bdev)], s.errors.get());
        }
        e.family(
            "ferry_bdev_io_duration_seconds",
            Kind::Histogram,
            "Time from submission to completion of successful I/O, by type.",
        );
        for (bdev, s) in &self.bdevs {
            for (kind, op) in ops(s) {
                let counts = op.latency.counts();
                let buckets: Vec<(Option<f64>, u64)> =
                    (0..BUCKETS).map(|i| (histogram::upper_bound_seconds(i), counts[i])).collect();
                let sum = self.seconds(op.latency_ticks.get());
                e.histogram("ferry_bdev_io_duration_seconds", &[("bdev", bdev), ("type", kind)], &buckets, sum);
            }
        }
    }

    fn render_vhost(&self, e: &mut Exposition) {
        e.family("ferry_vhost_controller_connected", Kind::Gauge, "Whether a frontend is connected to the controller.");
        for c in &self.controllers {
            e.sample("ferry_vhost_controller_connected", &[("ctrlr", &c.name)], u64::from(c.connected));
        }
        let per_queue = |e: &mut Exposition, name: &str, value: fn(&QueueStats) -> u64| {
            for c in &self.controllers {
                for q in &c.queues {
                    e.sample(name, &[("ctrlr", &c.name), ("queue", &q.queue.to_string())], value(q));
                }
            }
        };
        e.family(
            "ferry_vhost_queue_requests_total",
            Kind::Counter,
            "Requests the virtqueue completed since the frontend connected.",
        );
        per_queue(e, "ferry_vhost_queue_requests_total", |q| q.requests);
        e.family("ferry_vhost_queue_inflight", Kind::Gauge, "Requests the virtqueue has in flight.");
        per_queue(e, "ferry_vhost_queue_inflight", |q| q.inflight as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_written_once_with_its_samples_after_it() {
        crate::framework::testing::reactors();
        let text = gather().expect("reactors answer").render();
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(current.clone()), "{current} twice");
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&current), "{line} outside its family {current}");
            }
        }
        for family in ["ferry_reactor_busy_seconds_total", "ferry_bdev_ops_total", "ferry_vhost_queue_inflight"] {
            assert!(seen.contains(family), "{family} missing:\n{text}");
        }
        assert!(text.contains("ferry_reactor_idle_seconds_total{reactor=\"1\",core=\"1\"}"), "{text}");
    }
}

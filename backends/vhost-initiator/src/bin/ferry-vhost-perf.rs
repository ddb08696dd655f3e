//! `ferry-vhost-perf`: drives any vhost-user-blk socket (Ferry, qemu-storage-daemon, SPDK)
//! from one pinned thread, keeping a queue depth of requests in flight on each virtqueue, and
//! reports IOPS, bandwidth and latency.

use clap::Parser;
use ferry_vhost_initiator::{Client, Completion, Options, Request};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// vhost-user-blk benchmark initiator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The backend's vhost-user socket.
    #[arg(short = 's', long)]
    socket: PathBuf,
    /// Requests in flight per queue.
    #[arg(short = 'q', default_value_t = 128)]
    queue_depth: u16,
    /// Bytes per request.
    #[arg(short = 'o', default_value_t = 4096)]
    io_size: u32,
    /// read, write, randread, randwrite or randrw.
    #[arg(short = 'w', default_value = "randread")]
    workload: String,
    /// Percent reads for randrw.
    #[arg(short = 'M', default_value_t = 50)]
    read_percent: u64,
    /// Seconds to run.
    #[arg(short = 't', default_value_t = 5.0)]
    seconds: f64,
    /// Virtqueues.
    #[arg(short = 'n', default_value_t = 1)]
    queues: u16,
    /// Core to pin this process to.
    #[arg(long)]
    cpu: Option<usize>,
    /// Take shared memory from this hugetlbfs directory.
    #[arg(long)]
    hugetlbfs: Option<PathBuf>,
    /// Print one JSON line with the totals at the end.
    #[arg(long)]
    json_summary: bool,
}

/// Latencies in 100 ns buckets up to 100 ms (the last bucket takes everything slower).
struct Latencies {
    buckets: Vec<u64>,
    count: u64,
    sum_ns: u128,
}

impl Latencies {
    const STEP_NS: u64 = 100;

    fn new() -> Self {
        Latencies { buckets: vec![0; 1_000_000], count: 0, sum_ns: 0 }
    }

    fn add(&mut self, d: Duration) {
        let ns = d.as_nanos() as u64;
        let i = ((ns / Self::STEP_NS) as usize).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_ns += ns as u128;
    }

    fn percentile_us(&self, pct: f64) -> f64 {
        let want = ((self.count as f64) * pct / 100.0).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= want.max(1) {
                return (i as u64 * Self::STEP_NS) as f64 / 1000.0;
            }
        }
        0.0
    }
}

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays inside it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

fn main() -> ExitCode {
    let a = Args::parse();
    let (random, reads) = match a.workload.as_str() {
        "read" => (false, 100),
        "write" => (false, 0),
        "randread" => (true, 100),
        "randwrite" => (true, 0),
        "randrw" => (true, a.read_percent.min(100)),
        w => {
            eprintln!("ferry-vhost-perf: unknown workload {w}");
            return ExitCode::from(2);
        }
    };
    if a.io_size == 0 || a.io_size % 512 != 0 || a.queue_depth == 0 || a.queues == 0 {
        eprintln!("ferry-vhost-perf: -o must be a positive multiple of 512; -q and -n positive");
        return ExitCode::from(2);
    }
    if let Some(cpu) = a.cpu {
        pin(cpu);
    }
    let ring = (a.queue_depth as u32 * 3).next_power_of_two().clamp(64, 1024) as u16;
    let data_bytes = a.queues as usize * a.queue_depth as usize * a.io_size as usize;
    let opts = Options {
        num_queues: a.queues,
        queue_size: ring,
        mem_size: (data_bytes + (8 << 20)).next_multiple_of(2 << 20),
        hugetlbfs: a.hugetlbfs.clone(),
    };
    let mut client = match Client::connect(&a.socket, &opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry-vhost-perf: {}: {e}", a.socket.display());
            return ExitCode::FAILURE;
        }
    };
    let sectors = client.config().capacity;
    let per_io = a.io_size as u64 / 512;
    if sectors < per_io {
        eprintln!("ferry-vhost-perf: the device is smaller than one request ({sectors} sectors)");
        return ExitCode::FAILURE;
    }
    let slots_total = sectors / per_io;
    let mem = client.mem().clone();
    let mut queues = client.take_queues();
    let mut bufs = Vec::new();
    for _ in 0..a.queues as usize * a.queue_depth as usize {
        bufs.push(mem.alloc(a.io_size as usize, 4096).expect("shared memory sized for the buffers"));
    }
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut seq = 0u64;
    let mut next_request = |slot: usize| -> (bool, u64) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let read = rng % 100 < reads;
        let index = if random {
            (rng >> 8) % slots_total
        } else {
            seq = (seq + 1) % slots_total;
            seq
        };
        let _ = slot;
        (read, index * per_io)
    };
    let started: Vec<Vec<Instant>> = (0..a.queues).map(|_| vec![Instant::now(); a.queue_depth as usize]).collect();
    let mut started = started;
    let submit =
        |q: &mut ferry_vhost_initiator::BlkQueue, buf: u64, slot: usize, read: bool, sector: u64, size: u32| {
            let bufs = [(buf, size)];
            let req = if read { Request::Read { sector, bufs: &bufs } } else { Request::Write { sector, bufs: &bufs } };
            q.submit(&req, slot as u64).is_ok()
        };
    for (qi, q) in queues.iter_mut().enumerate() {
        for slot in 0..a.queue_depth as usize {
            let (read, sector) = next_request(slot);
            started[qi][slot] = Instant::now();
            if !submit(q, bufs[qi * a.queue_depth as usize + slot], slot, read, sector, a.io_size) {
                eprintln!("ferry-vhost-perf: the ring is too small for the queue depth");
                return ExitCode::FAILURE;
            }
        }
        q.kick();
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.seconds);
    let mut lat = Latencies::new();
    let (mut ios, mut errors) = (0u64, 0u64);
    let mut done: Vec<Completion> = Vec::with_capacity(1024);
    let mut outstanding = a.queues as u64 * a.queue_depth as u64;
    let mut stopping = false;
    let mut last_progress = Instant::now();
    while outstanding > 0 {
        let now = Instant::now();
        stopping |= now >= deadline;
        for (qi, q) in queues.iter_mut().enumerate() {
            done.clear();
            if q.poll(&mut done) == 0 {
                continue;
            }
            last_progress = now;
            let mut resubmitted = false;
            for c in &done {
                let slot = c.tag as usize;
                if c.status == 0 {
                    ios += 1;
                    lat.add(now - started[qi][slot]);
                } else {
                    errors += 1;
                }
                if stopping {
                    outstanding -= 1;
                    continue;
                }
                let (read, sector) = next_request(slot);
                started[qi][slot] = now;
                resubmitted |= submit(q, bufs[qi * a.queue_depth as usize + slot], slot, read, sector, a.io_size);
            }
            if resubmitted {
                q.kick();
            }
        }
        if now - last_progress > Duration::from_secs(30) {
            eprintln!("ferry-vhost-perf: no completion for 30 s; {outstanding} requests stuck");
            return ExitCode::FAILURE;
        }
    }
    let secs = (Instant::now() - start).as_secs_f64();
    let iops = ios as f64 / secs;
    let mibps = iops * a.io_size as f64 / (1 << 20) as f64;
    let avg_us = if lat.count > 0 { lat.sum_ns as f64 / lat.count as f64 / 1000.0 } else { 0.0 };
    let p99_us = lat.percentile_us(99.0);
    println!(
        "{}: {} QD{} x{} queue(s), {} B: {:.0} IOPS, {:.1} MiB/s, avg {:.2} us, p99 {:.2} us, {} errors",
        a.socket.display(),
        a.workload,
        a.queue_depth,
        a.queues,
        a.io_size,
        iops,
        mibps,
        avg_us,
        p99_us,
        errors
    );
    if a.json_summary {
        println!(
            "{}",
            serde_json::json!({"iops": iops, "mibps": mibps, "avg_us": avg_us, "p99_us": p99_us, "errors": errors})
        );
    }
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

//! `ferry-vhost-perf`: drives any vhost-user-blk or vhost-user-scsi socket (Ferry,
//! qemu-storage-daemon, SPDK) from one pinned thread, keeping a queue depth of requests in
//! flight on each virtqueue, and reports IOPS, bandwidth and latency. For scsi it drives one
//! LUN with READ (16)/WRITE (16) on the request queues (virtqueues 2..).

use clap::{Parser, ValueEnum};
use ferry_vhost_initiator::scsi::{cdb, ScsiCompletion, ScsiRequest};
use ferry_vhost_initiator::{BlkQueue, Client, Completion, Options, Request, ScsiClient, ScsiQueue};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The device type behind the socket.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DevType {
    /// vhost-user-blk.
    Blk,
    /// vhost-user-scsi.
    Scsi,
}

/// vhost-user-blk and vhost-user-scsi benchmark initiator.
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
    /// Leave the device's interrupts on (every completion signals the call eventfd, which
    /// this initiator never reads); by default it asks for none, as a polling driver does.
    #[arg(long)]
    interrupts: bool,
    /// The device type: blk or scsi.
    #[arg(long, value_enum, default_value_t = DevType::Blk)]
    dev_type: DevType,
    /// scsi: the target.
    #[arg(long, default_value_t = 0)]
    target: u8,
    /// scsi: the LUN (below 16384).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..16384))]
    lun: u16,
}

/// Failures printed in detail before going quiet.
const ERRORS_SHOWN: u64 = 5;

/// One virtqueue of either device type, with its completion scratch vector.
enum Queue {
    Blk(BlkQueue, Vec<Completion>),
    Scsi { q: ScsiQueue, done: Vec<ScsiCompletion>, target: u8, lun: u16, errors_shown: u64 },
}

impl Queue {
    /// Submits a read or write of `size` bytes at `pos` (a 512-byte sector for blk, an LBA of
    /// `blocks` blocks for scsi) into or from `buf`.
    fn submit(&mut self, buf: u64, slot: usize, read: bool, pos: u64, size: u32, blocks: u32) -> bool {
        let bufs = [(buf, size)];
        match self {
            Queue::Blk(q, _) => {
                let req = if read {
                    Request::Read { sector: pos, bufs: &bufs }
                } else {
                    Request::Write { sector: pos, bufs: &bufs }
                };
                q.submit(&req, slot as u64).is_ok()
            }
            Queue::Scsi { q, target, lun, .. } => {
                let req = if read {
                    ScsiRequest::Command {
                        target: *target,
                        lun: *lun,
                        cdb: &cdb::read16(pos, blocks),
                        data_out: &[],
                        data_in: &bufs,
                    }
                } else {
                    ScsiRequest::Command {
                        target: *target,
                        lun: *lun,
                        cdb: &cdb::write16(pos, blocks),
                        data_out: &bufs,
                        data_in: &[],
                    }
                };
                q.submit(&req, slot as u64).is_ok()
            }
        }
    }

    /// Polls only: asks the device for no interrupts.
    fn disable_interrupts(&mut self) {
        match self {
            Queue::Blk(q, _) => q.ring().disable_interrupts(),
            Queue::Scsi { q, .. } => q.ring().disable_interrupts(),
        }
    }

    fn kick(&self) {
        match self {
            Queue::Blk(q, _) => q.kick(),
            Queue::Scsi { q, .. } => q.kick(),
        }
    }

    /// Collects (tag, success) of completions into `out`.
    fn poll(&mut self, out: &mut Vec<(u64, bool)>) -> usize {
        match self {
            Queue::Blk(q, done) => {
                done.clear();
                q.poll(done);
                out.extend(done.iter().map(|c| (c.tag, c.status == 0)));
            }
            Queue::Scsi { q, done, errors_shown, .. } => {
                done.clear();
                q.poll(done);
                for c in done.iter() {
                    let ok = c.is_good();
                    if !ok && *errors_shown < ERRORS_SHOWN {
                        *errors_shown += 1;
                        eprintln!("ferry-vhost-perf: failed: {}", describe(c));
                    }
                    out.push((c.tag(), ok));
                }
            }
        }
        out.len()
    }
}

/// A scsi completion in words (response, status, sense key/ASC/ASCQ).
fn describe(c: &ScsiCompletion) -> String {
    match c.command() {
        Some(r) => {
            format!("response {}, status {:#04x}, sense {:x?}, resid {}", r.response, r.status, r.sense_key(), r.resid)
        }
        None => format!("{c:?}"),
    }
}

/// Runs one command synchronously on `q` (setup only).
fn command(q: &mut ScsiQueue, target: u8, lun: u16, cdb: &[u8], data_in: &[(u64, u32)]) -> Result<(), String> {
    let req = ScsiRequest::Command { target, lun, cdb, data_out: &[], data_in };
    match q.run(&req, Duration::from_secs(10)) {
        Ok(c) if c.is_good() => Ok(()),
        Ok(c) => Err(describe(&c)),
        Err(e) => Err(e.to_string()),
    }
}

/// The LUN's (block count, block length): TEST UNIT READY until any unit attention is
/// consumed, then READ CAPACITY (16), or (10) if that fails.
fn scsi_capacity(
    q: &mut ScsiQueue,
    mem: &ferry_vhost_initiator::SharedMemory,
    target: u8,
    lun: u16,
) -> Result<(u64, u32), String> {
    let mut last = Ok(());
    for _ in 0..5 {
        last = command(q, target, lun, &cdb::test_unit_ready(), &[]);
        if last.is_ok() {
            break;
        }
    }
    last.map_err(|e| format!("TEST UNIT READY: {e}"))?;
    let buf = mem.alloc(32, 64).ok_or("shared memory too small")?;
    let mut data = [0u8; 32];
    match command(q, target, lun, &cdb::read_capacity16(32), &[(buf, 32)]) {
        Ok(()) => {
            mem.read(buf, &mut data);
            let (last_lba, len) = cdb::parse_read_capacity16(&data).expect("32 bytes");
            Ok((last_lba + 1, len))
        }
        Err(e16) => {
            command(q, target, lun, &cdb::read_capacity10(), &[(buf, 8)])
                .map_err(|e| format!("READ CAPACITY (16): {e16}; READ CAPACITY (10): {e}"))?;
            mem.read(buf, &mut data[..8]);
            let (last_lba, len) = cdb::parse_read_capacity10(&data).expect("8 bytes");
            Ok((last_lba as u64 + 1, len))
        }
    }
}

/// A connection, held for as long as the queues run: dropping it closes the vhost-user socket,
/// and the backend stops the device.
#[allow(dead_code)]
enum Connection {
    Blk(Client),
    Scsi(ScsiClient),
}

/// What [`connect`] sets up.
struct Device {
    conn: Connection,
    queues: Vec<Queue>,
    /// Size in units.
    units: u64,
    /// Bytes per unit (512-byte sectors for blk, the block length for scsi).
    unit: u32,
    mem: std::sync::Arc<ferry_vhost_initiator::SharedMemory>,
}

/// Connects and takes the queues.
fn connect(a: &Args, opts: &Options) -> Result<Device, String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", a.socket.display());
    match a.dev_type {
        DevType::Blk => {
            let mut client = Client::connect(&a.socket, opts).map_err(|e| at(&e))?;
            let sectors = client.config().capacity;
            let mem = client.mem().clone();
            let queues = client.take_queues().into_iter().map(|q| Queue::Blk(q, Vec::with_capacity(1024))).collect();
            Ok(Device { conn: Connection::Blk(client), queues, units: sectors, unit: 512, mem })
        }
        DevType::Scsi => {
            let mut client = ScsiClient::connect(&a.socket, opts)
                .map_err(|e| at(&format!("{e} (scsi: {} request queues + control and event queues)", a.queues)))?;
            let mem = client.mem().clone();
            let (blocks, block_len) = scsi_capacity(client.request(0), &mem, a.target, a.lun)
                .map_err(|e| at(&format!("{}:{}: {e}", a.target, a.lun)))?;
            let queues = client
                .take_request_queues()
                .into_iter()
                .map(|q| Queue::Scsi {
                    q,
                    done: Vec::with_capacity(1024),
                    target: a.target,
                    lun: a.lun,
                    errors_shown: 0,
                })
                .collect();
            Ok(Device { conn: Connection::Scsi(client), queues, units: blocks, unit: block_len, mem })
        }
    }
}

/// What the output line calls the device.
fn label(a: &Args, socket: &Path) -> String {
    match a.dev_type {
        DevType::Blk => socket.display().to_string(),
        DevType::Scsi => format!("{} (scsi {}:{})", socket.display(), a.target, a.lun),
    }
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
    let Device { conn: _conn, mut queues, units, unit, mem } = match connect(&a, &opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry-vhost-perf: {e}");
            return ExitCode::FAILURE;
        }
    };
    if unit == 0 || a.io_size % unit != 0 {
        eprintln!("ferry-vhost-perf: -o must be a multiple of the block size ({unit})");
        return ExitCode::from(2);
    }
    let per_io = (a.io_size / unit) as u64;
    if units < per_io {
        eprintln!("ferry-vhost-perf: the device is smaller than one request ({units} blocks of {unit} B)");
        return ExitCode::FAILURE;
    }
    let slots_total = units / per_io;
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
    let submit = |q: &mut Queue, buf: u64, slot: usize, read: bool, pos: u64, size: u32| {
        q.submit(buf, slot, read, pos, size, per_io as u32)
    };
    for (qi, q) in queues.iter_mut().enumerate() {
        // This initiator polls its used rings and never waits for an interrupt.
        if !a.interrupts {
            q.disable_interrupts();
        }
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
    let mut done: Vec<(u64, bool)> = Vec::with_capacity(1024);
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
            for &(tag, ok) in &done {
                let slot = tag as usize;
                if ok {
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
        label(&a, &a.socket),
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

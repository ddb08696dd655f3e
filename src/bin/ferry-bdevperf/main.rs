//! `ferry-bdevperf`: drives bdevs from the reactors and reports IOPS, bandwidth and latency
//! (SPDK bdevperf's job). By default every bdev gets one job per reactor, each job on its own
//! slice of the bdev, so `-m 0x3` exercises the bdev from two threads at once.

mod config;
mod histogram;
mod job;

use clap::Parser;
use ferry::app;
use ferry::bdev::registry;
use ferry::framework::{self, ticks, Cpumask};
use histogram::Histogram;
use job::{JobResult, JobSpec, Workload};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

/// Block-device benchmark and data checker for Ferry's bdevs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration to take the bdevs from (as written by save_config; its vhost
    /// controllers are skipped).
    #[arg(short = 'c', long = "json")]
    config: PathBuf,
    /// Queue depth per job.
    #[arg(short = 'q', default_value_t = 32)]
    queue_depth: usize,
    /// I/O size in bytes.
    #[arg(short = 'o', default_value_t = 4096)]
    io_size: usize,
    /// Workload: read, write, randread, randwrite, randrw, verify, fill (one pass writing a
    /// pattern set by offset and --seed, then a flush), check (one pass checking it).
    #[arg(short = 'w', default_value = "randread")]
    workload: String,
    /// Percent reads for randrw.
    #[arg(short = 'M', default_value_t = 50)]
    read_percent: u32,
    /// Run time in seconds.
    #[arg(short = 't', default_value_t = 5.0)]
    seconds: f64,
    /// Reactor cores.
    #[arg(short = 'm', default_value = "0x1")]
    cpumask: String,
    /// Only these bdevs (repeatable); default: every bdev in the configuration.
    #[arg(short = 'T', long = "target")]
    targets: Vec<String>,
    /// One job per bdev (on the first reactor) instead of one per bdev per reactor.
    #[arg(long)]
    single_core: bool,
    /// Do not pin reactors (unpinned reactors claim no cores either).
    #[arg(long)]
    no_pin: bool,
    /// Do not claim the cores (lock files, as ferryd's) when pinned.
    #[arg(long)]
    disable_cpumask_locks: bool,
    /// Directory of the core lock files `ferry_cpu_lock_NNN`.
    #[arg(long, env = "FERRY_CPU_LOCK_DIR", default_value = framework::cpu_lock::DEFAULT_DIR)]
    cpu_lock_dir: PathBuf,
    /// Pattern seed for fill and check.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also print the totals as one JSON line (for scripts), with the I/Os and bytes of each
    /// second of the run (`per_second_ios`, `per_second_bytes`).
    #[arg(long)]
    json_summary: bool,
    /// Before the measured run, write every block of each target once (a `fill` pass of
    /// `--prefill-io-size` I/Os): the run then meets allocated, written data (steady state of
    /// a thin volume; real pages under a RAM disk whose zeroed pages went back to the kernel).
    #[arg(long)]
    prefill: bool,
    /// I/O size of the prefill pass, in bytes.
    #[arg(long, default_value_t = 128 * 1024)]
    prefill_io_size: usize,
    /// A configuration document (entries are RPC calls, as for -c) replayed after the prefill
    /// and before the measured run: a snapshot between the two, say.
    #[arg(long, value_name = "FILE")]
    after_prefill: Option<PathBuf>,
    /// The targets take turns on the first reactor instead of running together: each keeps
    /// its queue full for MS milliseconds, drains, and hands over to the next. Each job's
    /// IOPS (and `--json-summary`'s `per_job` figures) are over its own turns, so targets
    /// compared this way meet the machine at the same moments.
    #[arg(long, value_name = "MS")]
    interleave: Option<f64>,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("ferry-bdevperf: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args = Args::parse();
    app::log::init("WARNING");
    let Some(workload) = Workload::parse(&args.workload) else {
        return fail(format!("unknown workload {:?}", args.workload));
    };
    if args.queue_depth == 0 || args.queue_depth > 4096 {
        return fail("queue depth must be 1 to 4096");
    }
    if args.read_percent > 100 {
        return fail("-M must be 0 to 100");
    }
    if !(args.seconds > 0.0 && args.seconds <= 86_400.0) {
        return fail("-t must be more than 0 and at most a day");
    }
    if let Some(ms) = args.interleave {
        if !(ms > 0.0 && ms <= args.seconds * 1000.0) {
            return fail("--interleave must be more than 0 and at most the run time");
        }
        if workload.one_pass() {
            return fail("--interleave needs a timed workload");
        }
    }
    let mask = match Cpumask::parse(&args.cpumask) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let doc = match ferry::daemon::read_config(&args.config) {
        Ok(d) => config::bdevs_only(&d),
        Err(e) => return fail(e),
    };
    let _cpu_locks = if args.no_pin || args.disable_cpumask_locks {
        None
    } else {
        match framework::cpu_lock::claim(&mask, &args.cpu_lock_dir) {
            Ok(l) => Some(l),
            Err(e) => return fail(e),
        }
    };
    if let Err(e) = framework::reactor::start(&mask, !args.no_pin) {
        return fail(e);
    }
    app::mark_initialised();
    // As SPDK's bdevperf: lvstores on the configuration's bdevs are found and their lvols run.
    ferry::bdev::modules::lvol::init();
    let code = match app::config::load(&doc) {
        Ok(()) => prepare(&args).unwrap_or_else(|| run(&args, workload)),
        Err(e) => fail(format!("configuration: {}", e.message)),
    };
    // Lvstores close cleanly (a final checkpoint) before their base bdevs go, as in ferryd.
    ferry::bdev::modules::lvol::shutdown();
    registry::unregister_all();
    framework::reactor::shutdown();
    code
}

/// The bdevs to run on: `-T`'s, or every unclaimed one.
fn targets(args: &Args) -> Vec<String> {
    if args.targets.is_empty() {
        registry::list().iter().filter(|b| b.claimed_by().is_none()).map(|b| b.name().to_string()).collect()
    } else {
        args.targets.clone()
    }
}

/// [`targets`], failing when there is none.
fn targets_to_run(args: &Args) -> Result<Vec<String>, ExitCode> {
    let bdevs = targets(args);
    if bdevs.is_empty() {
        return Err(fail("no bdev to run on"));
    }
    Ok(bdevs)
}

/// The prefill pass and the `--after-prefill` document, if asked for; `Some` is a failure.
fn prepare(args: &Args) -> Option<ExitCode> {
    if args.prefill {
        let started = std::time::Instant::now();
        let results = match start_jobs(args, Workload::Fill, 32, args.prefill_io_size, 0) {
            Ok(r) => r,
            Err(code) => return Some(code),
        };
        if let Some(r) = results.iter().find(|r| r.setup_error.is_some() || r.errors > 0) {
            let why = r.setup_error.clone().unwrap_or_else(|| format!("{} I/O errors", r.errors));
            return Some(fail(format!("prefill of {}: {why}", r.bdev)));
        }
        let bytes: u64 = results.iter().map(|r| r.bytes).sum();
        println!("Prefill: {} MiB written in {:.2} s", bytes >> 20, started.elapsed().as_secs_f64());
    } else if args.after_prefill.is_some() {
        return Some(fail("--after-prefill needs --prefill"));
    }
    if let Some(path) = &args.after_prefill {
        let doc = match ferry::daemon::read_config(path) {
            Ok(d) => config::bdevs_only(&d),
            Err(e) => return Some(fail(e)),
        };
        if let Err(e) = app::config::load(&doc) {
            return Some(fail(format!("{}: {}", path.display(), e.message)));
        }
    }
    None
}

fn run(args: &Args, workload: Workload) -> ExitCode {
    let run_ticks = ticks::from_duration(Duration::from_secs_f64(args.seconds));
    let results = match args.interleave {
        Some(ms) => {
            start_interleaved(args, workload, run_ticks, ticks::from_duration(Duration::from_secs_f64(ms / 1e3)))
        }
        None => start_jobs(args, workload, args.queue_depth, args.io_size, run_ticks),
    };
    match results {
        Ok(r) => report(args, &r),
        Err(code) => code,
    }
}

/// Runs `workload` on every target, one job each, taking turns of `slice_ticks` on the first
/// reactor, and waits for the results.
fn start_interleaved(
    args: &Args,
    workload: Workload,
    run_ticks: u64,
    slice_ticks: u64,
) -> Result<Vec<JobResult>, ExitCode> {
    let bdevs = targets_to_run(args)?;
    let specs: Vec<(JobSpec, u64)> = bdevs
        .iter()
        .enumerate()
        .map(|(b, name)| {
            let spec = JobSpec {
                bdev: name.clone(),
                index_on_bdev: 0,
                jobs_on_bdev: 1,
                queue_depth: args.queue_depth,
                io_size: args.io_size,
                workload,
                read_percent: args.read_percent,
                run_ticks,
                seed: args.seed,
            };
            (spec, (b as u64) << 16)
        })
        .collect();
    let reactor = &framework::reactors()[0];
    let (core, (tx, rx)) = (reactor.core(), mpsc::channel());
    let jobs = specs.len();
    if let Err(e) = reactor.send(move || job::start_interleaved(specs, core, slice_ticks, tx)) {
        return Err(fail(e));
    }
    println!(
        "Running {} for {:.1} s: queue depth {}, I/O size {} bytes, {jobs} job(s) taking turns of {:.1} ms",
        args.workload,
        args.seconds,
        args.queue_depth,
        args.io_size,
        args.interleave.unwrap_or_default()
    );
    collect(&rx, jobs, Duration::from_secs_f64(args.seconds + 60.0))
}

/// Waits for `jobs` results, each within `wait`.
fn collect(rx: &mpsc::Receiver<JobResult>, jobs: usize, wait: Duration) -> Result<Vec<JobResult>, ExitCode> {
    let mut results: Vec<JobResult> = Vec::new();
    for _ in 0..jobs {
        match rx.recv_timeout(wait) {
            Ok(r) => results.push(r),
            Err(_) => return Err(fail("a job did not finish in time: I/O is stuck")),
        }
    }
    Ok(results)
}

/// Runs `workload` on every target (a job per reactor, or one with `--single-core`) and
/// waits for the results.
fn start_jobs(
    args: &Args,
    workload: Workload,
    queue_depth: usize,
    io_size: usize,
    run_ticks: u64,
) -> Result<Vec<JobResult>, ExitCode> {
    let bdevs = targets_to_run(args)?;
    let reactors = framework::reactors();
    let per_bdev = if args.single_core { 1 } else { reactors.len() as u64 };
    let (tx, rx) = mpsc::channel();
    let mut jobs = 0;
    for (b, name) in bdevs.iter().enumerate() {
        for i in 0..per_bdev {
            let spec = JobSpec {
                bdev: name.clone(),
                index_on_bdev: i,
                jobs_on_bdev: per_bdev,
                queue_depth,
                io_size,
                workload,
                read_percent: args.read_percent,
                run_ticks,
                seed: args.seed,
            };
            let reactor = &reactors[i as usize % reactors.len()];
            let (core, tx) = (reactor.core(), tx.clone());
            let seed = (b as u64) << 16 | i;
            if let Err(e) = reactor.send(move || job::start(spec, core, seed, tx)) {
                return Err(fail(e));
            }
            jobs += 1;
        }
    }
    drop(tx);
    if workload.one_pass() {
        println!("Running a {workload:?} pass: queue depth {queue_depth}, I/O size {io_size} bytes, {jobs} job(s)");
    } else {
        println!(
            "Running {} for {:.1} s: queue depth {}, I/O size {} bytes, {} job(s) on {} reactor(s)",
            args.workload,
            args.seconds,
            queue_depth,
            io_size,
            jobs,
            reactors.len()
        );
    }
    // A pass has no run time: it may take as long as the bdev is large (an hour at most).
    let wait =
        if workload.one_pass() { Duration::from_secs(3600) } else { Duration::from_secs_f64(args.seconds + 60.0) };
    collect(&rx, jobs, wait)
}

fn report(args: &Args, results: &[JobResult]) -> ExitCode {
    let us = ticks::to_micros;
    println!(
        "{:<24} {:>5} {:>12} {:>10} {:>10} {:>10} {:>8} {:>10}",
        "Job", "core", "IOPS", "MiB/s", "avg us", "p99 us", "errors", "miscompare"
    );
    let mut total = Histogram::new();
    let (mut iops, mut mibps, mut errors, mut miscompares, mut lat_sum, mut ios) = (0.0, 0.0, 0, 0, 0u64, 0u64);
    let mut cpu_ns = 0u64;
    let mut bad = false;
    for r in results {
        if let Some(why) = &r.setup_error {
            println!("{:<24} {:>5} job could not start: {why}", r.bdev, r.core);
            bad = true;
            continue;
        }
        let secs = us(r.elapsed_ticks) / 1e6;
        let job_iops = r.ios as f64 / secs.max(1e-9);
        let job_mibps = r.bytes as f64 / (1 << 20) as f64 / secs.max(1e-9);
        let avg = r.latency_sum.checked_div(r.ios).map_or(0.0, us);
        println!(
            "{:<24} {:>5} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>8} {:>10}",
            r.bdev,
            r.core,
            job_iops,
            job_mibps,
            avg,
            us(r.latency.percentile(99.0)),
            r.errors,
            r.miscompares
        );
        iops += job_iops;
        mibps += job_mibps;
        errors += r.errors;
        miscompares += r.miscompares;
        lat_sum += r.latency_sum;
        ios += r.ios;
        cpu_ns += r.cpu_ns;
        total.merge(&r.latency);
        bad |= r.ios == 0 && r.queue_depth > 0;
    }
    let avg = lat_sum.checked_div(ios).map_or(0.0, us);
    let p99 = us(total.percentile(99.0));
    println!(
        "{:<24} {:>5} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>8} {:>10}",
        "Total", "", iops, mibps, avg, p99, errors, miscompares
    );
    if args.json_summary {
        // Each second of the run summed over the jobs (jobs start within microseconds of
        // each other); the last entry is the partial second in which the run ended.
        let seconds = results.iter().map(|r| r.per_second.len()).max().unwrap_or(0);
        let sum = |k: fn(&(u64, u64)) -> u64| -> Vec<u64> {
            (0..seconds).map(|i| results.iter().filter_map(|r| r.per_second.get(i)).map(k).sum()).collect()
        };
        // Each job's own figures, in the order of the targets (their turns when interleaved).
        let mut ordered: Vec<&JobResult> = results.iter().filter(|r| r.setup_error.is_none()).collect();
        let targets = targets(args);
        ordered.sort_by_key(|r| targets.iter().position(|t| *t == r.bdev));
        let per_job: Vec<_> = ordered
            .iter()
            .map(|r| {
                // Interleaved: each turn's IOPS, for ratios between jobs turn by turn.
                let turn_iops: Vec<f64> =
                    r.turns.iter().map(|&(n, t)| (n as f64 / (us(t) / 1e6).max(1e-9)).round()).collect();
                serde_json::json!({"bdev": r.bdev, "core": r.core, "ios": r.ios,
                    "seconds": us(r.elapsed_ticks) / 1e6, "cpu_s": r.cpu_ns as f64 / 1e9, "turn_iops": turn_iops})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"workload": args.workload, "iops": iops, "mibps": mibps, "avg_us": avg,
                "p99_us": p99, "errors": errors, "miscompares": miscompares, "jobs": results.len(),
                "ios": ios, "cpu_s": cpu_ns as f64 / 1e9,
                "per_second_ios": sum(|s| s.0), "per_second_bytes": sum(|s| s.1), "per_job": per_job})
        );
    }
    if bad || errors > 0 || miscompares > 0 {
        eprintln!("ferry-bdevperf: FAILED ({errors} I/O errors, {miscompares} miscompares)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

//! One bdevperf job: a queue of I/Os kept full against one bdev region from one reactor.
//!
//! Every slot owns its buffers and one `BdevIo`. A completion records latency, checks data
//! (verify mode: each slot writes a fresh pattern, reads it back and compares), picks the
//! next offset and resubmits the same `BdevIo`, until the run time is up.
//!
//! With `--interleave` the jobs of one reactor take turns instead of running together: one
//! job keeps its queue full for a slice, lets it drain, and hands the reactor to the next
//! ([`TurnRing`]). Each job reports its rate over its own slices, so jobs compared this way
//! meet the same machine at the same moments (the speed of a shared machine drifts by more
//! than the difference a benchmark is after).

use super::histogram::Histogram;
use ferry::bdev::buf::DmaBuf;
use ferry::bdev::{self, BdevChannel, BdevDesc, BdevIo, IoCallback, IoType};
use ferry::framework::ticks;
use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::mpsc::Sender;

/// What the job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Random mix of reads and writes (`-M` percent reads).
    RandRw,
    /// Write a pattern, read it back, compare.
    Verify,
    /// One sequential pass writing a pattern set by offset and seed, then a flush.
    Fill,
    /// One sequential pass reading and checking the pattern `Fill` wrote.
    Check,
}

impl Workload {
    /// Parses bdevperf's `-w` names.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => Workload::Read,
            "write" => Workload::Write,
            "randread" => Workload::RandRead,
            "randwrite" => Workload::RandWrite,
            "randrw" | "rw" => Workload::RandRw,
            "verify" => Workload::Verify,
            "fill" => Workload::Fill,
            "check" => Workload::Check,
            _ => return None,
        })
    }

    fn writes(self) -> bool {
        !matches!(self, Workload::Read | Workload::RandRead | Workload::Check)
    }

    /// Whether the job is one pass over its region rather than a timed run.
    pub fn one_pass(self) -> bool {
        matches!(self, Workload::Fill | Workload::Check)
    }

    fn random(self) -> bool {
        matches!(self, Workload::RandRead | Workload::RandWrite | Workload::RandRw)
    }
}

/// What a job is asked to do.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The bdev.
    pub bdev: String,
    /// Which of `jobs_on_bdev` jobs this is (selects the region).
    pub index_on_bdev: u64,
    /// Jobs sharing the bdev, each on its own region.
    pub jobs_on_bdev: u64,
    /// Queue depth.
    pub queue_depth: usize,
    /// Bytes per I/O.
    pub io_size: usize,
    /// The workload.
    pub workload: Workload,
    /// Percent reads for `RandRw`.
    pub read_percent: u32,
    /// Run time in ticks.
    pub run_ticks: u64,
    /// Pattern seed of `Fill` and `Check`.
    pub seed: u64,
}

/// Jobs taking turns on one reactor, a slice each in ring order. Weak: the jobs live as long
/// as their I/Os (parked ones included), and a finished job leaves the ring by going.
struct TurnRing {
    jobs: RefCell<Vec<Weak<RefCell<Job>>>>,
    slice_ticks: u64,
}

impl TurnRing {
    /// A ring whose jobs run `slice_ticks` at a time.
    fn new(slice_ticks: u64) -> Rc<Self> {
        Rc::new(TurnRing { jobs: RefCell::new(Vec::new()), slice_ticks: slice_ticks.max(1) })
    }

    fn len(&self) -> usize {
        self.jobs.borrow().len()
    }

    /// Gives the reactor to the job at `index` (wrapping), if it is still running.
    fn begin(self: &Rc<Self>, index: usize, now: u64) {
        let Some(job) = ({
            let jobs = self.jobs.borrow();
            jobs.get(index % jobs.len().max(1)).and_then(Weak::upgrade)
        }) else {
            return;
        };
        // Taken out under the borrow and submitted after it: a submission may complete (and
        // call back into the job) at once.
        let (channel, ios, pass) = job.borrow_mut().begin_slice(now);
        for io in ios {
            channel.submit(io);
        }
        if pass {
            self.begin(index + 1, now);
        }
    }
}

/// A job's part in a [`TurnRing`].
struct Turn {
    ring: Rc<TurnRing>,
    index: usize,
    slice_start: u64,
    slice_start_cpu_ns: u64,
    slice_end: u64,
    active_cpu_ns: u64,
    /// The job's I/O count when its current turn began.
    slice_start_ios: u64,
    /// Each turn's I/Os and ticks.
    done_turns: Vec<(u64, u64)>,
    /// Its I/Os while another job has the reactor.
    #[allow(clippy::vec_box)] // the I/Os' own boxes, resubmitted as they are
    parked: Vec<Box<BdevIo>>,
}

/// What a completion leads to.
enum Next {
    Resubmit,
    Stop,
    /// Interleaved: the slice (or the run) is over for this I/O.
    Park,
}

/// What a finished job reports.
pub struct JobResult {
    /// The bdev.
    pub bdev: String,
    /// The reactor's core.
    pub core: u32,
    /// I/Os completed successfully.
    pub ios: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// I/Os that failed.
    pub errors: u64,
    /// Read-backs that did not match.
    pub miscompares: u64,
    /// Elapsed ticks.
    pub elapsed_ticks: u64,
    /// Latency histogram (ticks).
    pub latency: Histogram,
    /// Sum of latencies (ticks).
    pub latency_sum: u64,
    /// Why it could not run, if it could not.
    pub setup_error: Option<String>,
    /// Effective queue depth.
    pub queue_depth: usize,
    /// CPU time its reactor thread got during the run, in nanoseconds (with one job per
    /// reactor: the run's CPU cost, whatever other processes took from the core meanwhile).
    pub cpu_ns: u64,
    /// I/Os and bytes completed in each second of the run (the last one partial).
    pub per_second: Vec<(u64, u64)>,
    /// Interleaved: the I/Os completed and the ticks taken in each of its turns, in order.
    pub turns: Vec<(u64, u64)>,
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Io,
    VerifyWrite,
    VerifyRead,
}

struct Slot {
    data: DmaBuf,
    readback: Option<DmaBuf>,
    phase: Phase,
}

struct Job {
    spec: JobSpec,
    core: u32,
    _desc: BdevDesc,
    region_start: u64,
    region_ios: u64,
    io_blocks: u64,
    next_seq: u64,
    rng: u64,
    generation: u64,
    retains_data: bool,
    slots: Vec<Slot>,
    start_tick: u64,
    start_cpu_ns: u64,
    end_tick: u64,
    outstanding: usize,
    ios: u64,
    bytes: u64,
    errors: u64,
    miscompares: u64,
    latency: Histogram,
    latency_sum: u64,
    /// Completions per whole second since the start, and the tick the current second ends.
    per_second: Vec<(u64, u64)>,
    second_end: u64,
    flushed: bool,
    done: Option<Sender<JobResult>>,
    channel: BdevChannel,
    turn: Option<Turn>,
}

/// A fast PRNG for offsets and patterns (xorshift64*). Hand-written: one line on the hot
/// path is not worth a dependency.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Fills `buf` with a pattern unique to (offset, generation).
fn fill_pattern(buf: &mut [u8], offset_blocks: u64, generation: u64) {
    // Both inputs are multiplied by odd constants before mixing, so every bit of each
    // matters; xorshift needs a non-zero state.
    let mixed = offset_blocks.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ generation.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let mut state = if mixed == 0 { 0x2545_F491_4F6C_DD1D } else { mixed };
    for chunk in buf.chunks_exact_mut(8) {
        chunk.copy_from_slice(&next_random(&mut state).to_le_bytes());
    }
}

impl Job {
    fn next_offset(&mut self) -> u64 {
        let n = if self.spec.workload.random() {
            next_random(&mut self.rng) % self.region_ios
        } else {
            let n = self.next_seq;
            self.next_seq = (self.next_seq + 1) % self.region_ios;
            n
        };
        self.region_start + n * self.io_blocks
    }

    /// Points `io` at slot `slot`'s buffer for the next request; returns false when time is up.
    fn prepare(&mut self, io: &mut BdevIo, slot: usize, now: u64) -> bool {
        if self.spec.workload.one_pass() {
            if self.next_seq >= self.region_ios {
                return false;
            }
        } else if now >= self.end_tick {
            return false;
        }
        let (io_type, offset, buf) = match self.spec.workload {
            Workload::Fill | Workload::Check => {
                let offset = self.region_start + self.next_seq * self.io_blocks;
                self.next_seq += 1;
                let s = &mut self.slots[slot];
                if self.spec.workload == Workload::Fill {
                    fill_pattern(s.data.as_mut_slice(), offset, self.spec.seed);
                    (IoType::Write, offset, s.data.as_ptr())
                } else {
                    (IoType::Read, offset, s.data.as_ptr())
                }
            }
            Workload::Verify => match self.slots[slot].phase {
                Phase::VerifyRead | Phase::Io => {
                    let offset = self.next_offset();
                    self.generation += 1;
                    let generation = self.generation;
                    let s = &mut self.slots[slot];
                    fill_pattern(s.data.as_mut_slice(), offset, generation);
                    s.phase = Phase::VerifyWrite;
                    (IoType::Write, offset, s.data.as_ptr())
                }
                Phase::VerifyWrite => {
                    let s = &mut self.slots[slot];
                    s.phase = Phase::VerifyRead;
                    let rb = s.readback.as_mut().expect("verify slots have a read-back buffer");
                    rb.as_mut_slice().fill(0xA5);
                    (IoType::Read, io.offset_blocks, rb.as_ptr())
                }
            },
            w => {
                let is_read = match w {
                    Workload::Read | Workload::RandRead => true,
                    Workload::Write | Workload::RandWrite => false,
                    _ => (next_random(&mut self.rng) % 100) < self.spec.read_percent as u64,
                };
                let offset = self.next_offset();
                (if is_read { IoType::Read } else { IoType::Write }, offset, self.slots[slot].data.as_ptr())
            }
        };
        io.prepare(io_type, offset, self.io_blocks);
        io.clear_iovs();
        // SAFETY: the buffer belongs to this slot, which lives as long as the job; the job
        // lives until every I/O completed (each I/O's callback holds it), and the slot's
        // buffer is not touched while its I/O is in flight.
        unsafe { io.push_iov(buf, self.spec.io_size) };
        true
    }

    /// Handles a completion; says what becomes of `io`.
    fn on_complete(&mut self, io: &mut BdevIo) -> Next {
        let slot = io.ctx as usize;
        if io.succeeded() {
            let lat = io.latency_ticks();
            self.latency.add(lat);
            self.latency_sum += lat;
            self.ios += 1;
            self.bytes += self.spec.io_size as u64;
            // A comparison per completion, no division: seconds roll over as ticks pass.
            let now = io.complete_tick();
            while now >= self.second_end {
                self.second_end += ticks::tick_rate();
                self.per_second.push((0, 0));
            }
            if let Some(s) = self.per_second.last_mut() {
                s.0 += 1;
                s.1 += self.spec.io_size as u64;
            }
            if self.spec.workload == Workload::Check && io.io_type == IoType::Read {
                let s = &mut self.slots[slot];
                let expected = s.readback.as_mut().expect("check slots have a pattern buffer");
                fill_pattern(expected.as_mut_slice(), io.offset_blocks, self.spec.seed);
                if s.data.as_slice() != expected.as_slice() {
                    self.miscompares += 1;
                    if self.miscompares <= 5 {
                        tracing::error!(bdev = %self.spec.bdev, offset = io.offset_blocks, "check miscompare");
                    }
                }
            }
            if self.spec.workload == Workload::Verify && self.slots[slot].phase == Phase::VerifyRead {
                let s = &self.slots[slot];
                let got = s.readback.as_ref().map(|b| b.as_slice()).unwrap_or_default();
                let ok = if self.retains_data { got == s.data.as_slice() } else { got.iter().all(|&b| b == 0) };
                if !ok {
                    self.miscompares += 1;
                }
                if !ok && self.miscompares <= 5 {
                    tracing::error!(bdev = %self.spec.bdev, offset = io.offset_blocks, "verify miscompare");
                }
            }
        } else {
            self.errors += 1;
            if self.errors <= 5 {
                tracing::error!(bdev = %self.spec.bdev, errno = io.errno(), io_type = ?io.io_type, "I/O failed");
            }
            // A failed write leaves nothing to read back: start the slot over.
            self.slots[slot].phase = Phase::Io;
        }
        let now = io.complete_tick();
        if let Some(t) = &self.turn {
            if now >= t.slice_end || now >= self.end_tick {
                return Next::Park;
            }
        }
        if self.prepare(io, slot, now) {
            return Next::Resubmit;
        }
        // The last write of a fill becomes a flush, so the pattern is durable when we report.
        if self.spec.workload == Workload::Fill && self.outstanding == 1 && !self.flushed {
            self.flushed = true;
            io.prepare(IoType::Flush, 0, 0);
            io.clear_iovs();
            return Next::Resubmit;
        }
        self.outstanding -= 1;
        if self.outstanding == 0 {
            self.finish(now);
        }
        Next::Stop
    }

    /// Parks `io` until this job's next slice. When it was the last one out, the slice ends:
    /// returns the ring and the index to hand the reactor to.
    fn park(&mut self, io: Box<BdevIo>) -> Option<(Rc<TurnRing>, usize)> {
        let now = io.complete_tick();
        let t = self.turn.as_mut().expect("only interleaved jobs park");
        t.parked.push(io);
        self.outstanding -= 1;
        if self.outstanding > 0 {
            return None;
        }
        t.active_cpu_ns += thread_cpu_ns().saturating_sub(t.slice_start_cpu_ns);
        t.done_turns.push((self.ios - t.slice_start_ios, now.saturating_sub(t.slice_start)));
        let next = (t.ring.clone(), t.index + 1);
        if now >= self.end_tick {
            self.finish(now);
        }
        Some(next)
    }

    /// Starts this job's slice: its parked I/Os, prepared, to submit on the returned channel.
    /// With the run over it finishes instead, and says to pass the turn on (true) so that the
    /// others finish too.
    #[allow(clippy::vec_box)] // the I/Os' own boxes, submitted as they are
    fn begin_slice(&mut self, now: u64) -> (BdevChannel, Vec<Box<BdevIo>>, bool) {
        let mut parked = {
            let t = self.turn.as_mut().expect("only interleaved jobs take turns");
            std::mem::take(&mut t.parked)
        };
        if self.done.is_none() {
            // Finished already, and the turn has come round to it again: the ring is done.
            return (self.channel.clone(), Vec::new(), false);
        }
        if now >= self.end_tick {
            // Dropping the parked I/Os lets the job go (they hold it through their callback).
            self.finish(now);
            return (self.channel.clone(), Vec::new(), true);
        }
        let t = self.turn.as_mut().expect("only interleaved jobs take turns");
        t.slice_start = now;
        t.slice_start_cpu_ns = thread_cpu_ns();
        t.slice_start_ios = self.ios;
        t.slice_end = now + t.ring.slice_ticks;
        let mut ready = Vec::with_capacity(parked.len());
        for mut io in parked.drain(..) {
            let slot = io.ctx as usize;
            if self.prepare(&mut io, slot, now) {
                ready.push(io);
            }
        }
        self.outstanding = ready.len();
        (self.channel.clone(), ready, false)
    }

    fn finish(&mut self, now: u64) {
        if let Some(done) = self.done.take() {
            // Interleaved, a job's time is its slices'.
            let (elapsed_ticks, cpu_ns, turns) = match &mut self.turn {
                Some(t) => {
                    t.parked.clear();
                    let active_ticks = t.done_turns.iter().map(|&(_, ticks)| ticks).sum();
                    (active_ticks, t.active_cpu_ns, std::mem::take(&mut t.done_turns))
                }
                None => {
                    (now.saturating_sub(self.start_tick), thread_cpu_ns().saturating_sub(self.start_cpu_ns), Vec::new())
                }
            };
            let _ = done.send(JobResult {
                bdev: self.spec.bdev.clone(),
                core: self.core,
                ios: self.ios,
                bytes: self.bytes,
                errors: self.errors,
                miscompares: self.miscompares,
                elapsed_ticks,
                latency: std::mem::replace(&mut self.latency, Histogram::new()),
                latency_sum: self.latency_sum,
                setup_error: None,
                queue_depth: self.slots.len(),
                cpu_ns,
                per_second: std::mem::take(&mut self.per_second),
                turns,
            });
        }
    }
}

fn failed(spec: &JobSpec, core: u32, why: String) -> JobResult {
    JobResult {
        bdev: spec.bdev.clone(),
        core,
        ios: 0,
        bytes: 0,
        errors: 0,
        miscompares: 0,
        elapsed_ticks: 0,
        latency: Histogram::new(),
        latency_sum: 0,
        setup_error: Some(why),
        queue_depth: 0,
        cpu_ns: 0,
        per_second: Vec::new(),
        turns: Vec::new(),
    }
}

/// Starts `spec` on the current reactor; the result arrives on `done`.
pub fn start(spec: JobSpec, core: u32, seed: u64, done: Sender<JobResult>) {
    if let Err(why) = build(spec.clone(), core, seed, done.clone(), None) {
        let _ = done.send(failed(&spec, core, why));
    }
}

/// Starts `specs` on the current reactor taking turns, `slice_ticks` each, in order; each
/// result arrives on `done`.
pub fn start_interleaved(specs: Vec<(JobSpec, u64)>, core: u32, slice_ticks: u64, done: Sender<JobResult>) {
    let ring = TurnRing::new(slice_ticks);
    for (spec, seed) in specs {
        match build(spec.clone(), core, seed, done.clone(), Some(ring.clone())) {
            Ok(Some(job)) => ring.jobs.borrow_mut().push(Rc::downgrade(&job)),
            Ok(None) => {}
            Err(why) => {
                let _ = done.send(failed(&spec, core, why));
            }
        }
    }
    ring.begin(0, ticks::now());
}

/// Makes the job and submits its queue, or, with a `ring`, parks it for its first turn.
fn build(
    spec: JobSpec,
    core: u32,
    seed: u64,
    done: Sender<JobResult>,
    ring: Option<Rc<TurnRing>>,
) -> Result<Option<Rc<RefCell<Job>>>, String> {
    let desc = bdev::open(&spec.bdev, spec.workload.writes(), Box::new(|_, _| {})).map_err(|e| e.to_string())?;
    let bdev = desc.bdev().clone();
    let bs = bdev.block_size() as usize;
    if spec.io_size == 0 || !spec.io_size.is_multiple_of(bs) {
        return Err(format!("I/O size {} is not a multiple of {}'s block size {bs}", spec.io_size, bdev.name()));
    }
    let io_blocks = (spec.io_size / bs) as u64;
    let region_blocks = bdev.num_blocks() / spec.jobs_on_bdev.max(1);
    let region_ios = region_blocks / io_blocks;
    if region_ios == 0 {
        return Err(format!(
            "{} is too small for {} jobs of {}-byte I/O",
            bdev.name(),
            spec.jobs_on_bdev,
            spec.io_size
        ));
    }
    // Verify slots must never share an offset, so the depth is at most the region's I/Os.
    let depth =
        if spec.workload == Workload::Verify { spec.queue_depth.min(region_ios as usize) } else { spec.queue_depth };
    let channel: BdevChannel = desc.channel().map_err(|e| e.to_string())?;
    let align = bdev.backend().buf_align().max(4096);
    let mut slots = Vec::with_capacity(depth);
    for _ in 0..depth {
        let data = DmaBuf::new(spec.io_size, align).ok_or("out of memory for I/O buffers")?;
        let readback = if matches!(spec.workload, Workload::Verify | Workload::Check) {
            Some(DmaBuf::new(spec.io_size, align).ok_or("out of memory for I/O buffers")?)
        } else {
            None
        };
        slots.push(Slot { data, readback, phase: Phase::Io });
    }
    let start_tick = ticks::now();
    let job = Rc::new(RefCell::new(Job {
        region_start: spec.index_on_bdev * region_blocks,
        region_ios,
        io_blocks,
        next_seq: 0,
        rng: seed | 1,
        generation: seed << 32,
        retains_data: bdev.backend().retains_data(),
        slots,
        start_tick,
        start_cpu_ns: thread_cpu_ns(),
        end_tick: start_tick + spec.run_ticks,
        outstanding: depth,
        ios: 0,
        bytes: 0,
        errors: 0,
        miscompares: 0,
        latency: Histogram::new(),
        latency_sum: 0,
        per_second: vec![(0, 0)],
        second_end: start_tick + ticks::tick_rate(),
        flushed: false,
        done: Some(done),
        core,
        _desc: desc,
        channel: channel.clone(),
        turn: ring.map(|ring| Turn {
            index: ring.len(),
            ring,
            slice_start: 0,
            slice_start_cpu_ns: 0,
            slice_end: 0,
            active_cpu_ns: 0,
            slice_start_ios: 0,
            done_turns: Vec::new(),
            parked: Vec::with_capacity(depth),
        }),
        spec,
    }));
    let cb_job = job.clone();
    let cb_channel = channel.clone();
    let callback: IoCallback = Rc::new(move |mut io: Box<BdevIo>| {
        let next = cb_job.borrow_mut().on_complete(&mut io);
        match next {
            Next::Resubmit => cb_channel.submit(io),
            Next::Stop => {}
            Next::Park => {
                // The borrow ends before the next job starts: its I/O may complete at once.
                let pass = cb_job.borrow_mut().park(io);
                if let Some((ring, index)) = pass {
                    ring.begin(index, ticks::now());
                }
            }
        }
    });
    let interleaved = job.borrow().turn.is_some();
    for slot in 0..depth {
        let mut io = BdevIo::new(callback.clone());
        io.ctx = slot as u64;
        if interleaved {
            let mut j = job.borrow_mut();
            j.turn.as_mut().expect("interleaved").parked.push(io);
        } else if job.borrow_mut().prepare(&mut io, slot, start_tick) {
            channel.submit(io);
        }
    }
    Ok(interleaved.then_some(job))
}

#[cfg(test)]
mod tests {
    use super::fill_pattern;

    #[test]
    fn patterns_differ_for_every_seed_and_offset() {
        let mut seen = std::collections::HashSet::new();
        for offset in 0..64u64 {
            for generation in 0..64u64 {
                let mut buf = [0u8; 64];
                fill_pattern(&mut buf, offset, generation);
                assert!(seen.insert(buf), "pattern repeats at offset {offset} generation {generation}");
            }
        }
    }
}

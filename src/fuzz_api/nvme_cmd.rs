//! The NVMe controller model's command decoder: commands made of the fuzzer's bytes executed
//! on a real controller, as a transport runs them. Each run makes a fresh subsystem with a
//! malloc namespace, connects one host's admin queue (and enables it: Property Set CC.EN) and
//! one I/O queue through `nvme::fabrics::connect` on reactor 0, as `nvme/tests.rs` does, then
//! executes the input's commands on them. Every command must complete (at once or through
//! `finish()`) within a deadline, exactly once, with a known status code type, no more data
//! moved than its buffer holds, and a successful Read exactly NLB blocks long. AERs and the
//! first half of a fused pair may stay pending (the queue holds them); closing the queues at
//! the end drops them.

use super::Input;
use crate::bdev::modules::malloc;
use crate::bdev::registry;
use crate::framework;
use crate::nvme::controller::cc;
use crate::nvme::subsystem::{self, ListenAddress, NamespaceConfig, SubsystemConfig};
use crate::nvme::{connect, DataDir, NvmeRequest, QueuePair, TransportLimits};
use ferry_nvme::spec::{
    admin, fabrics as f, fuse, io as iop, prop, put16, put32, put64, put_nul_padded, Command, Status,
};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

const BLOCK: u32 = 512;
const BLOCKS: u64 = 256;
/// Longer than any command on a malloc bdev can take; a command that never finishes is a bug.
const DEADLINE: Duration = Duration::from_secs(10);
/// Commands per input (CIDs 1..=MAX_COMMANDS, so each is unique while in flight).
const MAX_COMMANDS: usize = 64;
const HOST: &str = "nqn.2024-01.io.ferry.fuzz:host";
const HOSTID: [u8; 16] = [0x46; 16];

/// Each run's subsystem, bdev and connections get their own names: runs do not share state,
/// and the unit tests replaying seeds may run side by side.
static RUN: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Each run's (admin, I/O) queue pairs, on reactor 0.
    static QUEUES: RefCell<HashMap<u64, [Rc<QueuePair>; 2]>> = RefCell::new(HashMap::new());
}

/// What came back for the command with this CID.
struct Outcome {
    cid: u16,
    status: Status,
    transferred: u64,
    data_len: u64,
}

/// What the harness remembers of a command it submitted.
struct Sent {
    qid: u16,
    cmd: Command,
}

/// Input: a sequence of records `[flags][buffer length u16 LE][64-byte command][data]`; flags
/// bit 0: the I/O queue (else admin), bit 1: the buffer in two iovecs. The CID is replaced by
/// the record's number (1-based). Commands that move data to the controller take their
/// buffer's bytes from the input (zero past its end); commands without data get no buffer.
/// Returns the number of commands that completed successfully.
pub fn nvme_cmd(data: &[u8]) -> u64 {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(super::reactor);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let (nqn, bdev) = (format!("nqn.2024-01.io.ferry.fuzz:nvme{run}"), format!("FuzzNvme{run}"));
    let listen = ListenAddress {
        trtype: "TCP".into(),
        adrfam: "IPv4".into(),
        traddr: "127.0.0.1".into(),
        trsvcid: "4420".into(),
    };
    malloc::create(&bdev, BLOCKS, BLOCK, None).expect("the fuzz bdev");
    let sub = subsystem::create_subsystem(SubsystemConfig::new(&nqn)).expect("the fuzz subsystem");
    sub.add_listener(listen.clone()).expect("listener");
    sub.add_host(HOST).expect("host");
    sub.add_namespace(NamespaceConfig { bdev_name: bdev.clone(), ..Default::default() }).expect("namespace 1");
    let limits = TransportLimits {
        max_queue_depth: 128,
        max_aq_depth: 32,
        max_io_qpairs_per_ctrlr: 4,
        in_capsule_data_size: 4096,
        max_io_size: 131072,
        listen,
        host_addr: "127.0.0.1:50000".into(),
        pcie: None,
    };
    let (tx, rx) = mpsc::channel::<Outcome>();
    framework::call(0, move || connect_queues(run, &nqn, &limits)).expect("reactor 0 answers");

    let mut input = Input(data);
    let mut sent: HashMap<u16, Sent> = HashMap::new();
    // Submitted, not yet completed, and due within the deadline.
    let mut due: HashSet<u16> = HashSet::new();
    // Held by the model until something happens: AERs, the first of a fused pair.
    let mut held: HashSet<u16> = HashSet::new();
    let mut fused_first: Option<u16> = None;
    let mut ok = 0;
    for n in 1..=MAX_COMMANDS as u16 {
        if input.0.is_empty() {
            break;
        }
        let flags = input.u8();
        let buf_len = input.u16() as usize;
        let raw = input.bytes(64);
        if raw.len() < 64 {
            break;
        }
        let mut cmd = Command::from_bytes(raw);
        cmd.set_cid(n);
        let dir = DataDir::of(&cmd);
        let mut buf = vec![0u8; if dir == DataDir::None { 0 } else { buf_len }];
        if matches!(dir, DataDir::ToController | DataDir::Both) {
            let src = input.bytes(buf.len());
            buf[..src.len()].copy_from_slice(src);
        }
        let io = flags & 1 != 0;
        let (tx, split) = (tx.clone(), flags & 2 != 0);
        let sub = framework::call(0, move || submit(run, io, cmd, buf, split, tx)).expect("reactor 0 answers");
        sent.insert(n, Sent { qid: sub.qid, cmd });
        if io {
            // The held first half of a fused pair is settled by the next I/O command: paired
            // or aborted (due now), or dropped with its queue if that was closed meanwhile.
            if let Some(first) = fused_first.take() {
                if held.remove(&first) && !sub.was_closed {
                    due.insert(first);
                }
            }
        }
        let aer = !io && cmd.opcode() == admin::ASYNC_EVENT_REQUEST;
        if !sub.done_at_once && (aer || (io && cmd.fuse() == fuse::FIRST)) {
            held.insert(n);
            if io {
                fused_first = Some(n);
            }
        } else {
            due.insert(n);
        }
        // Wait for everything due; check every completion, including held ones that came.
        let deadline = Instant::now() + DEADLINE;
        while let Ok(o) = rx.try_recv() {
            ok += check(&sent, &mut due, &mut held, o);
        }
        while !due.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(o) => ok += check(&sent, &mut due, &mut held, o),
                Err(_) => panic!("commands {due:?} did not complete within {DEADLINE:?}"),
            }
        }
    }
    // Close the queues as a transport whose connection went away (held commands are
    // dropped), then remove the subsystem and its bdev.
    framework::call(0, move || {
        if let Some(qps) = QUEUES.with(|q| q.borrow_mut().remove(&run)) {
            qps[1].close();
            qps[0].close();
        }
    })
    .expect("reactor 0 answers");
    let _ = subsystem::delete_subsystem(&format!("nqn.2024-01.io.ferry.fuzz:nvme{run}"));
    let _ = registry::unregister(&bdev, None);
    drop(tx);
    ok
}

/// Checks one completion against the command it answers; 1 if it succeeded.
fn check(sent: &HashMap<u16, Sent>, due: &mut HashSet<u16>, held: &mut HashSet<u16>, o: Outcome) -> u64 {
    let s = sent.get(&o.cid).unwrap_or_else(|| panic!("completion for an unknown CID {}", o.cid));
    let why = format!("qid {} command {:02x?}", s.qid, &s.cmd.0[..16]);
    assert!(due.remove(&o.cid) || held.remove(&o.cid), "{why}: completed twice");
    assert!(matches!(o.status.sct, 0..=3 | 7), "{why}: status code type {}", o.status.sct);
    assert!(o.transferred <= o.data_len, "{why}: {} bytes moved, buffer {}", o.transferred, o.data_len);
    let read = s.qid != 0 && s.cmd.opcode() == iop::READ && s.cmd.fuse() == fuse::NONE;
    if read && o.status.is_success() {
        let want = s.cmd.nlb() as u64 * BLOCK as u64;
        assert_eq!(o.transferred, want, "{why}: a successful read moves NLB blocks");
    }
    o.status.is_success() as u64
}

/// Connects this run's admin queue, enables its controller, and connects I/O queue 1 (on
/// reactor 0). Any refusal is a bug: the subsystem was made for this host.
fn connect_queues(run: u64, nqn: &str, limits: &TransportLimits) {
    let connect_cmd = |qid: u16, sqsize: u16, cntlid: u16| {
        let mut cmd = Command::new(admin::FABRICS, 0);
        cmd.0[4] = f::CONNECT;
        put16(&mut cmd.0, f::CONNECT_QID, qid);
        put16(&mut cmd.0, f::CONNECT_SQSIZE, sqsize);
        let mut data = vec![0u8; f::CONNECT_DATA_LEN];
        data[..16].copy_from_slice(&HOSTID);
        put16(&mut data, f::CONNECT_DATA_CNTLID, cntlid);
        put_nul_padded(&mut data[f::CONNECT_DATA_SUBNQN..f::CONNECT_DATA_SUBNQN + 256], nqn);
        put_nul_padded(&mut data[f::CONNECT_DATA_HOSTNQN..f::CONNECT_DATA_HOSTNQN + 256], HOST);
        (cmd, data)
    };
    // Nothing to tell: the harness closes the queues itself, and a queue the model ended
    // answers ABORTED_SQ_DELETION to what comes after.
    let on_disconnect: Rc<dyn Fn()> = Rc::new(|| {});
    let (cmd, data) = connect_cmd(0, 31, 0xffff);
    let (admin_q, cpl) = connect(&cmd, &data, limits, on_disconnect.clone())
        .unwrap_or_else(|c| panic!("admin Connect refused: {:?}", c.status));
    let mut en = Command::new(admin::FABRICS, 0);
    en.0[4] = f::PROPERTY_SET;
    put32(&mut en.0, f::PROPERTY_OFFSET, prop::CC);
    put64(&mut en.0, f::PROPERTY_VALUE, ((6 << cc::IOSQES_SHIFT) | (4 << cc::IOCQES_SHIFT) | cc::EN) as u64);
    let mut req = NvmeRequest::new();
    req.cmd = en;
    let r = admin_q.execute(req).expect("Property Set completes at once");
    assert!(r.cpl.status.is_success(), "CC.EN refused: {:?}", r.cpl.status);
    let (cmd, data) = connect_cmd(1, 127, cpl.dw0 as u16);
    let (io_q, _) =
        connect(&cmd, &data, limits, on_disconnect).unwrap_or_else(|c| panic!("I/O Connect refused: {:?}", c.status));
    QUEUES.with(|q| q.borrow_mut().insert(run, [admin_q, io_q]));
}

/// What `submit` saw.
struct Submitted {
    qid: u16,
    /// The queue had been closed (by the model) before this command.
    was_closed: bool,
    /// `execute` returned the request.
    done_at_once: bool,
}

/// Builds the request on reactor 0 and executes it on this run's admin or I/O queue.
fn submit(run: u64, io: bool, cmd: Command, buf: Vec<u8>, split: bool, tx: Sender<Outcome>) -> Submitted {
    let qp = QUEUES.with(|q| q.borrow()[&run][io as usize].clone());
    let mut req = NvmeRequest::new();
    req.cmd = cmd;
    req.qid = qp.qid();
    let mut buf = buf.into_boxed_slice();
    let base = buf.as_mut_ptr();
    let cut = if split && buf.len() > 1 { buf.len() / 3 + 1 } else { buf.len() };
    for (at, len) in [(0, cut), (cut, buf.len() - cut)] {
        if len > 0 {
            // SAFETY: `at..at+len` lies inside `buf`, a heap allocation that moves into the
            // completion callback below (its contents stay put) and is freed only after the
            // request finished or was dropped with it; nothing else touches it meanwhile.
            unsafe { req.push_iov(base.add(at), len) };
        }
    }
    let held = RefCell::new(Some(buf));
    let done: Rc<dyn Fn(Box<NvmeRequest>)> = Rc::new(move |r: Box<NvmeRequest>| {
        drop(held.borrow_mut().take());
        let _ = tx.send(Outcome {
            cid: r.cmd.cid(),
            status: r.cpl.status,
            transferred: r.transferred(),
            data_len: r.data_len(),
        });
    });
    req.set_done(done.clone());
    let was_closed = qp.is_closed();
    let out = qp.execute(req);
    let done_at_once = out.is_some();
    if let Some(r) = out {
        done(r);
    }
    Submitted { qid: qp.qid(), was_closed, done_at_once }
}

#[cfg(test)]
mod tests {
    /// Each seed's commands succeed as often as it was written for (a seed that stops short
    /// means the fuzzer starts from refused commands): all but the held AER (admin: Set
    /// Features Number of Queues after an I/O queue connected is a Command Sequence Error),
    /// the held fused first and the pair whose compare fails (fused).
    #[test]
    fn seeds_run_their_commands() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/nvme_cmd");
        let want = [("admin", 17), ("io", 9), ("fused", 4), ("reservations", 6)];
        let got: Vec<(&str, u64)> =
            want.iter().map(|&(name, _)| (name, super::nvme_cmd(&std::fs::read(dir.join(name)).unwrap()))).collect();
        assert_eq!(got, want, "successful commands per seed");
    }
}

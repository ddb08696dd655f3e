//! The SCSI target: commands made of the fuzzer's bytes executed on a logical unit over a
//! malloc bdev, from two initiators, as `scsi/tests.rs`'s hostile-CDB test does with random
//! ones. Every outcome must be well formed (a known status, fixed-format sense exactly with
//! CHECK CONDITION, nothing moved past the buffer) and arrive within a deadline.

use super::Input;
use crate::bdev::modules::malloc;
use crate::framework;
use crate::scsi::lun::{self, ScsiLun};
use crate::scsi::sense::status;
use crate::scsi::{DataDir, Nexus, ScsiTask, TaskDone};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

const BDEV: &str = "FuzzScsi0";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 256;
/// Longer than any command on a malloc bdev can take; a command that never finishes is a bug.
const DEADLINE: Duration = Duration::from_secs(10);

/// What came back.
struct Outcome {
    status: u8,
    sense: Vec<u8>,
    transferred: u64,
    residual: u64,
    aborted: bool,
}

/// Input: a sequence of commands, each `[cdb length][flags][buffer length u16][cdb][data]`;
/// flags bit 0-1: direction (none, to device, from device), bit 2: second initiator, bit 3:
/// buffer in two segments. Data-out bytes come from the input (zero past its end). A fresh
/// unit each run, so reservations and unit attentions do not leak between inputs.
pub fn scsi(data: &[u8]) -> u64 {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        super::reactor();
        malloc::create(BDEV, BLOCKS, BLOCK, None).expect("the fuzz bdev");
    });
    let desc = crate::bdev::open(BDEV, true, Box::new(|_, _| {})).expect("open the fuzz bdev");
    let lun = Arc::new(ScsiLun::new(0, desc, "fuzz.Target0", 1, false));
    let nexus = [
        Arc::new(Nexus { initiator: "iqn.2024-01.io.ferry.fuzz:a".into(), target_port: 1 }),
        Arc::new(Nexus { initiator: "iqn.2024-01.io.ferry.fuzz:b".into(), target_port: 1 }),
    ];
    let mut input = Input(data);
    let mut done = 0;
    while !input.0.is_empty() && done < 64 {
        let cdb_len = (input.u8() % 32 + 1) as usize;
        let flags = input.u8();
        let buf_len = (input.u16() % 16384) as usize;
        let cdb = input.bytes(cdb_len).to_vec();
        if cdb.is_empty() {
            break;
        }
        let dir = match (buf_len, flags & 3) {
            (0, _) | (_, 0) => DataDir::None,
            (_, 1) => DataDir::ToDevice,
            _ => DataDir::FromDevice,
        };
        let mut buf = vec![0u8; if dir == DataDir::None { 0 } else { buf_len }];
        if dir == DataDir::ToDevice {
            let src = input.bytes(buf.len());
            buf[..src.len()].copy_from_slice(src);
        }
        let who = nexus[(flags >> 2 & 1) as usize].clone();
        let o = run(&lun, who, &cdb, dir, buf, flags & 8 != 0);
        let why = format!("cdb {cdb:02x?}, {dir:?} {buf_len} bytes");
        match o.status {
            status::GOOD | status::RESERVATION_CONFLICT | status::BUSY => {
                assert!(o.sense.is_empty(), "{why}: sense data only with CHECK CONDITION");
            }
            status::CHECK_CONDITION => {
                assert_eq!(o.sense.len(), 18, "{why}: fixed-format sense with CHECK CONDITION");
                assert_eq!(o.sense[0] & 0x7F, 0x70, "{why}: response code");
                assert_eq!(o.sense[7], 10, "{why}: additional length");
            }
            other => panic!("{why}: unexpected status {other:#x}"),
        }
        assert!(!o.aborted, "{why}: nothing aborts here");
        let len = if dir == DataDir::None { 0 } else { buf_len as u64 };
        assert_eq!(o.transferred + o.residual, len, "{why}: transferred + residual = buffer");
        done += 1;
    }
    // The unit's channels live on the reactor; drop them there.
    let _ = framework::call(0, move || CHANNELS.with(|c| c.borrow_mut().clear()));
    done
}

thread_local! {
    /// This run's channels, on the reactor (a channel belongs to the thread that made it).
    static CHANNELS: RefCell<Vec<(Arc<Nexus>, Rc<lun::LunChannel>)>> = const { RefCell::new(Vec::new()) };
}

fn run(lun: &Arc<ScsiLun>, who: Arc<Nexus>, cdb: &[u8], dir: DataDir, buf: Vec<u8>, split: bool) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let (lun, cdb) = (lun.clone(), cdb.to_vec());
    framework::call(0, move || {
        let lc = CHANNELS.with(|c| {
            let mut c = c.borrow_mut();
            if let Some((_, lc)) = c.iter().find(|(n, _)| *n == who) {
                return lc.clone();
            }
            let lc = lun.open_channel(who.clone()).expect("on reactor 0");
            c.push((who.clone(), lc.clone()));
            lc
        });
        let mut task = ScsiTask::new(who);
        assert!(task.set_cdb(&cdb), "1..=32 CDB bytes");
        task.dir = dir;
        let mut buf = buf.into_boxed_slice();
        let base = buf.as_mut_ptr();
        let cut = if split && buf.len() > 1 { buf.len() / 3 + 1 } else { buf.len() };
        for (at, len) in [(0, cut), (cut, buf.len() - cut)] {
            if len > 0 {
                // SAFETY: `at..at+len` lies inside `buf`, a heap allocation that moves into the
                // completion callback below and is freed only after the task finished.
                unsafe { task.push_iov(base.add(at), len) };
            }
        }
        let held = RefCell::new(Some(buf));
        let finish = move |t: &ScsiTask| {
            drop(held.borrow_mut().take());
            let _ = tx.send(Outcome {
                status: t.status,
                sense: t.sense().to_vec(),
                transferred: t.transferred(),
                residual: t.residual(),
                aborted: t.aborted,
            });
        };
        let finish = Rc::new(finish);
        let later = finish.clone();
        let done: TaskDone = Rc::new(move |t: Box<ScsiTask>| later(&t));
        task.set_done(done);
        if let Some(t) = lun::execute(&lc, task) {
            finish(&t);
        }
    })
    .expect("the reactor runs the command");
    rx.recv_timeout(DEADLINE).expect("the command finished within the deadline")
}

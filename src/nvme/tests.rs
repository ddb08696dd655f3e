//! Tests of the controller model as a transport drives it: Connect on a real reactor, then
//! commands on the queue pairs it returns, against real malloc (data) and null (resize)
//! bdevs. Each test uses its own subsystem NQNs, hosts and bdev names: the registry is
//! process-wide and tests run in parallel.
//!
//! Queue pairs live on the reactor that connected them (reactor 0 here, reactor 1 where a
//! test spreads queues) in a thread-local table; commands are submitted there with
//! `framework::call` and their outcome comes back on a channel, whether the command finished
//! at once or later through `finish()`.

use super::controller::cc;
use super::fabrics::{connect, TransportLimits};
use super::queue::QueuePair;
use super::request::NvmeRequest;
use super::subsystem::{self, AnaState, ListenAddress, NamespaceConfig, SubsystemConfig};
use crate::bdev::modules::{malloc, null};
use crate::bdev::registry;
use crate::framework::{self, testing};
use ferry_nvme::spec::{
    admin, csc, fabrics as f, fuse, io as iop, le16, le32, le64, prop, put16, put32, put64, put_nul_padded, sc, sct,
    Command, Completion, Status, DISCOVERY_NQN,
};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long any one outcome may take before the test fails (instead of hanging).
const WAIT: Duration = Duration::from_secs(20);
/// Block size of the test namespaces.
const BS: u32 = 512;
/// Blocks of the malloc namespaces.
const BLOCKS: u64 = 2048;

thread_local! {
    /// The queue pairs connected on this reactor, by test connection id.
    static CONNS: RefCell<HashMap<u64, Rc<QueuePair>>> = RefCell::new(HashMap::new());
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// One queue connection of a test host.
struct Conn {
    reactor: usize,
    id: u64,
    /// Hears each `on_disconnect` the model calls.
    disconnected: Receiver<()>,
    cntlid: u16,
}

/// What came back for a command.
#[derive(Debug)]
#[must_use]
struct Outcome {
    cpl: Completion,
    /// The data buffer after the command.
    data: Vec<u8>,
    transferred: u64,
}

impl Outcome {
    #[track_caller]
    fn ok(&self, why: &str) -> &Outcome {
        assert!(self.cpl.status.is_success(), "{why}: status {:?}", self.cpl.status);
        self
    }

    #[track_caller]
    fn status(&self, sct_: u8, sc_: u8, why: &str) -> &Outcome {
        assert_eq!((self.cpl.status.sct, self.cpl.status.sc), (sct_, sc_), "{why}: status {:?}", self.cpl.status);
        self
    }

    #[track_caller]
    fn invalid_field(&self, why: &str) -> &Outcome {
        self.status(sct::GENERIC, sc::INVALID_FIELD, why)
    }
}

/// A listen address unique to `tag`.
fn addr(tag: &str) -> ListenAddress {
    ListenAddress {
        trtype: "TCP".into(),
        adrfam: "IPv4".into(),
        traddr: "127.0.0.1".into(),
        trsvcid: {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            tag.hash(&mut h);
            format!("{}", 10000 + h.finish() % 50000)
        },
    }
}

fn limits(listen: &ListenAddress) -> TransportLimits {
    TransportLimits {
        max_queue_depth: 128,
        max_aq_depth: 128,
        max_io_qpairs_per_ctrlr: 8,
        in_capsule_data_size: 4096,
        max_io_size: 131072,
        listen: listen.clone(),
        host_addr: "127.0.0.1:50000".into(),
        pcie: None,
    }
}

fn nqn(tag: &str) -> String {
    format!("nqn.2024-01.io.ferry.test:{tag}")
}

fn hostnqn(tag: &str) -> String {
    format!("nqn.2024-01.io.ferry.host:{tag}")
}

/// Connect parameters.
#[derive(Clone)]
struct ConnectArgs {
    subnqn: String,
    hostnqn: String,
    hostid: [u8; 16],
    qid: u16,
    sqsize: u16,
    cntlid: u16,
    kato: u32,
    recfmt: u16,
    listen: ListenAddress,
    data_len: usize,
    reactor: usize,
    /// The 256-byte NQN field at this offset of the data filled to its end, no NUL.
    unterminated: Option<usize>,
}

impl ConnectArgs {
    fn admin(subnqn: &str, host: &str, listen: &ListenAddress) -> ConnectArgs {
        ConnectArgs {
            subnqn: subnqn.into(),
            hostnqn: host.into(),
            hostid: hostid_of(host),
            qid: 0,
            sqsize: 31,
            cntlid: 0xffff,
            kato: 0,
            recfmt: 0,
            listen: listen.clone(),
            data_len: 1024,
            reactor: 0,
            unterminated: None,
        }
    }

    fn io(&self, qid: u16, cntlid: u16) -> ConnectArgs {
        ConnectArgs { qid, cntlid, sqsize: 127, ..self.clone() }
    }

    fn command(&self) -> (Command, Vec<u8>) {
        let mut cmd = Command::new(admin::FABRICS, 1);
        cmd.0[4] = f::CONNECT;
        put16(&mut cmd.0, f::CONNECT_RECFMT, self.recfmt);
        put16(&mut cmd.0, f::CONNECT_QID, self.qid);
        put16(&mut cmd.0, f::CONNECT_SQSIZE, self.sqsize);
        put32(&mut cmd.0, f::CONNECT_KATO, self.kato);
        let mut data = vec![0u8; 1024];
        data[..16].copy_from_slice(&self.hostid);
        put16(&mut data, f::CONNECT_DATA_CNTLID, self.cntlid);
        put_nul_padded(&mut data[256..512], &self.subnqn);
        put_nul_padded(&mut data[512..768], &self.hostnqn);
        if let Some(at) = self.unterminated {
            data[at..at + 256].fill(b'x');
        }
        data.truncate(self.data_len);
        (cmd, data)
    }

    /// Connects; Err is the refusal's completion.
    fn connect(&self) -> Result<Conn, Completion> {
        let (cmd, data) = self.command();
        let lim = limits(&self.listen);
        let (tx, rx) = mpsc::channel::<()>();
        let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let got = framework::call(self.reactor, move || {
            let on_disconnect: Rc<dyn Fn()> = Rc::new(move || {
                let _ = tx.send(());
            });
            match connect(&cmd, &data, &lim, on_disconnect) {
                Ok((qp, cpl)) => {
                    assert_eq!(cpl.dw0 as u16, qp.cntlid(), "Connect dw0 is the CNTLID");
                    CONNS.with(|c| c.borrow_mut().insert(id, qp));
                    Ok(cpl)
                }
                Err(cpl) => Err(cpl),
            }
        })
        .expect("reactor answers")?;
        Ok(Conn { reactor: self.reactor, id, disconnected: rx, cntlid: got.dw0 as u16 })
    }

    #[track_caller]
    fn refused(&self, why: &str) -> Completion {
        match self.connect() {
            Ok(_) => panic!("{why}: connect accepted"),
            Err(cpl) => {
                assert!(cpl.status.dnr, "{why}: refusal has DNR");
                cpl
            }
        }
    }
}

/// A host identifier derived from the host NQN (stable, never zero).
fn hostid_of(host: &str) -> [u8; 16] {
    let mut id = [0x11u8; 16];
    for (i, b) in host.bytes().enumerate() {
        id[i % 16] = id[i % 16].wrapping_mul(31).wrapping_add(b);
    }
    id
}

#[track_caller]
fn assert_invalid_param(cpl: &Completion, iattr: u32, ipo: u32, why: &str) {
    assert_eq!((cpl.status.sct, cpl.status.sc), (sct::COMMAND_SPECIFIC, csc::CONNECT_INVALID_PARAMETERS), "{why}");
    assert_eq!(cpl.dw0, ipo | (iattr << 16), "{why}: IATTR/IPO");
}

impl Conn {
    /// Submits `cmd` with a data buffer (`data` to the controller, or `din` zero bytes to the
    /// host); the outcome arrives on the receiver.
    fn submit(&self, cmd: Command, data: Vec<u8>) -> Receiver<Outcome> {
        let (tx, rx) = mpsc::channel();
        let id = self.id;
        framework::call(self.reactor, move || submit_here(id, cmd, data, tx)).expect("reactor answers");
        rx
    }

    #[track_caller]
    fn run(&self, cmd: Command, data: Vec<u8>) -> Outcome {
        self.submit(cmd, data).recv_timeout(WAIT).expect("the command completed")
    }

    /// A command with a `len`-byte buffer to the host.
    #[track_caller]
    fn din(&self, cmd: Command, len: usize) -> Outcome {
        self.run(cmd, vec![0xee; len])
    }

    #[track_caller]
    fn none(&self, cmd: Command) -> Outcome {
        self.run(cmd, Vec::new())
    }

    fn prop_get(&self, offset: u32, eight: bool) -> Outcome {
        let mut c = Command::new(admin::FABRICS, 2);
        c.0[4] = f::PROPERTY_GET;
        c.0[f::PROPERTY_ATTRIB] = eight as u8;
        put32(&mut c.0, f::PROPERTY_OFFSET, offset);
        self.none(c)
    }

    fn prop_set(&self, offset: u32, value: u64) -> Outcome {
        let mut c = Command::new(admin::FABRICS, 3);
        c.0[4] = f::PROPERTY_SET;
        put32(&mut c.0, f::PROPERTY_OFFSET, offset);
        put64(&mut c.0, f::PROPERTY_VALUE, value);
        self.none(c)
    }

    /// Enables the controller as Linux does: CC with IOSQES 6, IOCQES 4 and EN.
    #[track_caller]
    fn enable(&self) {
        let v = (6 << cc::IOSQES_SHIFT) | (4 << cc::IOCQES_SHIFT) | cc::EN;
        self.prop_set(prop::CC, v as u64).ok("CC.EN=1");
        assert_eq!(self.prop_get(prop::CSTS, false).ok("CSTS").cpl.dw0 & 1, 1, "CSTS.RDY after CC.EN");
    }

    fn identify(&self, cns: u8, nsid: u32, cdw11: u32) -> Outcome {
        let mut c = Command::new(admin::IDENTIFY, 4);
        c.set_nsid(nsid);
        c.set_cdw10(cns as u32);
        c.set_cdw11(cdw11);
        self.din(c, 4096)
    }

    fn get_log(&self, lid: u8, nsid: u32, len: usize, offset: u64, rae: bool) -> Outcome {
        let numd = (len / 4 - 1) as u32;
        let mut c = Command::new(admin::GET_LOG_PAGE, 5);
        c.set_nsid(nsid);
        c.set_cdw10(lid as u32 | ((rae as u32) << 15) | ((numd & 0xffff) << 16));
        c.set_cdw11(numd >> 16);
        c.set_cdw12(offset as u32);
        c.set_cdw13((offset >> 32) as u32);
        self.din(c, len)
    }

    fn get_feature(&self, fid: u8, sel: u32, cdw11: u32) -> Outcome {
        let mut c = Command::new(admin::GET_FEATURES, 6);
        c.set_cdw10(fid as u32 | (sel << 8));
        c.set_cdw11(cdw11);
        self.din(c, 16)
    }

    fn set_feature(&self, fid: u8, cdw11: u32) -> Outcome {
        let mut c = Command::new(admin::SET_FEATURES, 7);
        c.set_cdw10(fid as u32);
        c.set_cdw11(cdw11);
        self.none(c)
    }

    fn aer(&self) -> Receiver<Outcome> {
        self.submit(Command::new(admin::ASYNC_EVENT_REQUEST, 8), Vec::new())
    }

    fn write(&self, nsid: u32, lba: u64, data: &[u8]) -> Outcome {
        let mut c = Command::new(iop::WRITE, 9);
        c.set_nsid(nsid);
        c.set_slba(lba);
        c.set_cdw12((data.len() as u32 / BS) - 1);
        self.run(c, data.to_vec())
    }

    fn read(&self, nsid: u32, lba: u64, blocks: u32) -> Outcome {
        let mut c = Command::new(iop::READ, 10);
        c.set_nsid(nsid);
        c.set_slba(lba);
        c.set_cdw12(blocks - 1);
        self.din(c, (blocks * BS) as usize)
    }

    /// Closes the queue as a transport whose connection went away.
    fn close(&self) {
        let id = self.id;
        framework::call(self.reactor, move || {
            if let Some(qp) = CONNS.with(|c| c.borrow_mut().remove(&id)) {
                qp.close();
            }
        })
        .expect("reactor answers");
    }

    /// Waits for the model to end this queue (its `on_disconnect`).
    #[track_caller]
    fn wait_disconnected(&self, why: &str) {
        self.disconnected.recv_timeout(WAIT).unwrap_or_else(|_| panic!("{why}: on_disconnect never came"));
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.close();
    }
}

/// Builds the request on this reactor and executes it on connection `id`.
fn submit_here(id: u64, cmd: Command, data: Vec<u8>, tx: Sender<Outcome>) {
    let qp = CONNS.with(|c| c.borrow().get(&id).cloned()).expect("connection on this reactor");
    let mut req = NvmeRequest::new();
    req.cmd = cmd;
    req.qid = qp.qid();
    let mut buf = data.into_boxed_slice();
    if !buf.is_empty() {
        // SAFETY: `buf` is a heap allocation moved (its contents stay put) into the completion
        // callback below, which frees it only once the request has finished; nothing else
        // touches it meanwhile.
        unsafe { req.push_iov(buf.as_mut_ptr(), buf.len()) };
    }
    let held = RefCell::new(Some(buf));
    let done: Rc<dyn Fn(Box<NvmeRequest>)> = Rc::new(move |r: Box<NvmeRequest>| {
        let data = held.borrow_mut().take().map(Vec::from).expect("a request completes once");
        let _ = tx.send(Outcome { cpl: r.cpl, data, transferred: r.transferred() });
    });
    req.set_done(done.clone());
    if let Some(r) = qp.execute(req) {
        done(r);
    }
}

/// A test subsystem with one malloc namespace, a listener, and one allowed host.
struct Fixture {
    nqn: String,
    host: String,
    listen: ListenAddress,
    bdev: String,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        Fixture::with(tag, |_| {})
    }

    fn with(tag: &str, tweak: impl FnOnce(&mut SubsystemConfig)) -> Fixture {
        testing::reactors();
        let fx = Fixture { nqn: nqn(tag), host: hostnqn(tag), listen: addr(tag), bdev: format!("nvme_{tag}") };
        malloc::create(&fx.bdev, BLOCKS, BS, None).unwrap();
        let mut cfg = SubsystemConfig::new(&fx.nqn);
        cfg.serial_number = "SN-FERRY-1".into();
        cfg.model_number = "Ferry test".into();
        tweak(&mut cfg);
        let sub = subsystem::create_subsystem(cfg).unwrap();
        sub.add_listener(fx.listen.clone()).unwrap();
        sub.add_host(&fx.host).unwrap();
        let nsid = sub
            .add_namespace(NamespaceConfig {
                bdev_name: fx.bdev.clone(),
                nguid: Some([0x5a; 16]),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(nsid, 1, "first namespace gets NSID 1");
        fx
    }

    fn args(&self) -> ConnectArgs {
        ConnectArgs::admin(&self.nqn, &self.host, &self.listen)
    }

    /// An enabled admin queue.
    fn admin(&self) -> Conn {
        let a = self.args().connect().expect("admin connect");
        a.enable();
        a
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = subsystem::delete_subsystem(&self.nqn);
        let _ = registry::unregister(&self.bdev, None);
    }
}

#[track_caller]
fn wait_until(why: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "{why}: never happened");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn connect_admin_and_io_queues_and_move_data() {
    let fx = Fixture::new("conn");
    let admin = fx.admin();
    assert!(admin.cntlid >= 1 && admin.cntlid <= 0xffef, "dynamic cntlid in range");
    let granted = admin.set_feature(0x07, 3 | (3 << 16));
    granted.ok("number of queues");
    assert_eq!(granted.cpl.dw0, 3 | (3 << 16), "4 I/O queues granted (0's based)");
    let io1 = fx.args().io(1, admin.cntlid).connect().expect("I/O queue 1");
    let io2 = ConnectArgs { reactor: 1, ..fx.args().io(2, admin.cntlid) }.connect().expect("I/O queue 2 on reactor 1");
    assert_eq!((io1.cntlid, io2.cntlid), (admin.cntlid, admin.cntlid), "I/O Connect answers the same CNTLID");
    let pattern: Vec<u8> = (0..4 * BS as usize).map(|i| (i * 7 % 251) as u8).collect();
    io1.write(1, 8, &pattern).ok("write");
    let r = io2.read(1, 8, 4);
    r.ok("read on another reactor");
    assert_eq!(r.data, pattern, "data read back");
    assert_eq!(r.transferred, pattern.len() as u64);
    let info = subsystem::subsystem(&fx.nqn).unwrap().controllers();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].cntlid, admin.cntlid);
    assert_eq!(info[0].hostnqn, fx.host);
    assert_eq!(info[0].num_io_qpairs, 2);
    assert_eq!(info[0].hostid, Uuid::from_bytes(fx.args().hostid).to_string());
    // I/O to an inactive or broadcast NSID.
    io1.read(2, 0, 1).status(sct::GENERIC, sc::INVALID_NS, "inactive NSID");
    io1.read(0xffff_ffff, 0, 1).status(sct::GENERIC, sc::INVALID_NS, "broadcast NSID on a read");
    io1.read(1, BLOCKS - 1, 2).status(sct::GENERIC, sc::LBA_OUT_OF_RANGE, "past the end");
    // Closing an I/O queue leaves the controller; closing the admin queue ends it and tells
    // the I/O queues.
    io1.close();
    wait_until("I/O queue count drops", || subsystem::subsystem(&fx.nqn).unwrap().controllers()[0].num_io_qpairs == 1);
    admin.close();
    io2.wait_disconnected("admin queue closed");
    assert!(subsystem::subsystem(&fx.nqn).unwrap().controllers().is_empty(), "controller gone");
}

#[test]
fn connect_refusals_say_which_field() {
    let fx = Fixture::new("refuse");
    let a = fx.args();
    let c = ConnectArgs { subnqn: nqn("nosuch"), ..a.clone() }.refused("unknown subsystem");
    assert_invalid_param(&c, 1, 256, "unknown subsystem");
    let c = ConnectArgs { hostnqn: hostnqn("stranger"), ..a.clone() }.refused("host not allowed");
    assert_eq!((c.status.sct, c.status.sc), (sct::COMMAND_SPECIFIC, csc::CONNECT_INVALID_HOST));
    let c = ConnectArgs { listen: addr("elsewhere-x"), ..a.clone() }.refused("not listening there");
    assert_eq!((c.status.sct, c.status.sc), (sct::COMMAND_SPECIFIC, csc::CONNECT_INVALID_HOST));
    let c = ConnectArgs { cntlid: 5, ..a.clone() }.refused("static cntlid on the admin queue");
    assert_invalid_param(&c, 1, 16, "admin cntlid");
    let c = ConnectArgs { sqsize: 0, ..a.clone() }.refused("sqsize 0");
    assert_invalid_param(&c, 0, 44, "sqsize 0");
    let c = ConnectArgs { sqsize: 128, ..a.clone() }.refused("admin sqsize above max_aq_depth");
    assert_invalid_param(&c, 0, 44, "sqsize too big");
    let c = ConnectArgs { recfmt: 1, ..a.clone() }.refused("record format 1");
    assert_eq!((c.status.sct, c.status.sc), (sct::COMMAND_SPECIFIC, csc::CONNECT_INCOMPATIBLE_FORMAT));
    let c = ConnectArgs { hostid: [0; 16], ..a.clone() }.refused("zero host id");
    assert_invalid_param(&c, 1, 0, "host id");
    let c = ConnectArgs { data_len: 512, ..a.clone() }.refused("short data");
    assert_eq!(c.status.sc, sc::DATA_SGL_LENGTH_INVALID);
    let c = ConnectArgs { unterminated: Some(256), ..a.clone() }.refused("unterminated subsystem NQN");
    assert_invalid_param(&c, 1, 256, "unterminated NQN");
    let c = ConnectArgs { subnqn: String::new(), ..a.clone() }.refused("empty subsystem NQN");
    assert_invalid_param(&c, 1, 256, "empty subsystem NQN");
    let c = ConnectArgs { unterminated: Some(512), ..a.clone() }.refused("unterminated host NQN");
    assert_invalid_param(&c, 1, 512, "unterminated host NQN");
    let c = ConnectArgs { hostnqn: String::new(), ..a.clone() }.refused("empty host NQN, host list");
    assert_eq!((c.status.sct, c.status.sc), (sct::COMMAND_SPECIFIC, csc::CONNECT_INVALID_HOST), "empty host NQN");
    // A subsystem open to any host takes an empty host NQN, as SPDK's and Linux's targets do
    // (SPDK's perf tool sends one by default).
    subsystem::subsystem(&fx.nqn).unwrap().set_allow_any_host(true);
    let anon = ConnectArgs { hostnqn: String::new(), ..a.clone() }.connect().expect("empty host NQN, any host");
    anon.close();
    subsystem::subsystem(&fx.nqn).unwrap().set_allow_any_host(false);

    let admin = a.connect().expect("admin connect");
    // I/O queues: before the controller is enabled.
    let c = a.io(1, admin.cntlid).refused("I/O connect before CC.EN");
    assert_eq!((c.status.sct, c.status.sc), (sct::GENERIC, sc::COMMAND_SEQUENCE_ERROR));
    admin.enable();
    admin.set_feature(0x07, 1 | (1 << 16)).ok("two I/O queues");
    let c = a.io(3, admin.cntlid).refused("qid beyond the granted count");
    assert_invalid_param(&c, 0, 42, "qid");
    let c = a.io(1, admin.cntlid.wrapping_add(100)).refused("unknown cntlid");
    assert_invalid_param(&c, 1, 16, "I/O cntlid");
    subsystem::subsystem(&fx.nqn).unwrap().add_host(&hostnqn("other")).unwrap();
    let c = ConnectArgs { hostnqn: hostnqn("other"), ..a.io(1, admin.cntlid) }.refused("another host's controller");
    assert_invalid_param(&c, 1, 512, "hostnqn of I/O connect");
    let c = ConnectArgs { hostid: [9; 16], ..a.io(1, admin.cntlid) }.refused("another host id");
    assert_invalid_param(&c, 1, 0, "hostid of I/O connect");
    let c = ConnectArgs { sqsize: 128, ..a.io(1, admin.cntlid) }.refused("I/O sqsize above max_queue_depth");
    assert_invalid_param(&c, 0, 44, "I/O sqsize");
    let _io1 = a.io(1, admin.cntlid).connect().expect("qid 1");
    let c = a.io(1, admin.cntlid).refused("qid 1 twice");
    assert_invalid_param(&c, 0, 42, "duplicate qid");
    // Number of queues is fixed once I/O queues exist.
    admin.set_feature(0x07, 0).status(sct::GENERIC, sc::COMMAND_SEQUENCE_ERROR, "set queues after I/O connect");
    // A Connect on a connected queue is out of sequence.
    let (cmd, _) = a.command();
    admin.none(cmd).status(sct::GENERIC, sc::COMMAND_SEQUENCE_ERROR, "Connect on a live queue");
    // The discovery subsystem has no I/O queues.
    let d = ConnectArgs::admin(DISCOVERY_NQN, &fx.host, &fx.listen).connect().expect("discovery");
    d.enable();
    let c = ConnectArgs::admin(DISCOVERY_NQN, &fx.host, &fx.listen).io(1, d.cntlid).refused("discovery I/O queue");
    assert_invalid_param(&c, 0, 42, "discovery qid");
}

#[test]
fn properties_enable_reset_and_shutdown() {
    let fx = Fixture::new("props");
    let a = fx.args().connect().unwrap();
    let cap = a.prop_get(prop::CAP, true);
    cap.ok("CAP");
    let capv = cap.cpl.dw0 as u64 | ((cap.cpl.dw1 as u64) << 32);
    assert_eq!(capv & 0xffff, 127, "MQES = max_queue_depth - 1");
    assert_ne!(capv & (1 << 37), 0, "NVM command set");
    a.prop_get(prop::CAP, false).invalid_field("CAP read as 4 bytes");
    assert_eq!(a.prop_get(prop::VS, false).ok("VS").cpl.dw0, 0x0001_0300);
    a.prop_get(0x500, false).invalid_field("unknown property");
    a.prop_set(prop::CAP, 0).invalid_field("CAP is read-only");
    assert_eq!(a.prop_get(prop::CSTS, false).cpl.dw0, 0, "not ready before CC.EN");
    a.identify(1, 0, 0).status(sct::GENERIC, sc::COMMAND_SEQUENCE_ERROR, "admin command before enable");
    a.enable();
    a.identify(1, 0, 0).ok("admin command after enable");
    let io = fx.args().io(1, a.cntlid).connect().unwrap();
    // An AER outstanding across a reset completes aborted.
    a.set_feature(0x0b, 1 << 8).ok("AEC");
    let aer = a.aer();
    let v = (6 << cc::IOSQES_SHIFT) | (4 << cc::IOCQES_SHIFT);
    a.prop_set(prop::CC, v as u64).ok("CC.EN=0");
    assert_eq!(a.prop_get(prop::CSTS, false).cpl.dw0 & 1, 0, "RDY clears on reset");
    io.wait_disconnected("reset ends the I/O queues");
    aer.recv_timeout(WAIT).expect("AER completes on reset").status(
        sct::GENERIC,
        sc::ABORTED_SQ_DELETION,
        "AER aborted",
    );
    a.enable();
    let io = fx.args().io(1, a.cntlid).connect().expect("I/O queue again after re-enable");
    // Shutdown: SHN normal -> SHST complete; I/O queues end.
    let v = (6 << cc::IOSQES_SHIFT) | (4 << cc::IOCQES_SHIFT) | cc::EN | (1 << cc::SHN_SHIFT);
    a.prop_set(prop::CC, v as u64).ok("CC.SHN");
    assert_eq!((a.prop_get(prop::CSTS, false).cpl.dw0 >> 2) & 3, 2, "SHST complete");
    io.wait_disconnected("shutdown ends the I/O queues");
    let c = fx.args().io(2, a.cntlid).refused("I/O connect after shutdown");
    assert_eq!(c.status.sc, sc::COMMAND_SEQUENCE_ERROR);
}

#[test]
fn identify_controller_has_what_linux_checks() {
    let fx = Fixture::with("idctrl", |c| c.ana_reporting = true);
    let a = fx.admin();
    let o = a.identify(1, 0, 0);
    o.ok("identify controller");
    let d = &o.data;
    assert_eq!(o.transferred, 4096);
    assert_eq!(&d[4..14], b"SN-FERRY-1");
    assert_eq!(&d[24..34], b"Ferry test");
    assert_eq!(d[77], 5, "MDTS: 128 KiB in 4 KiB pages");
    assert_eq!(le16(d, 78), a.cntlid, "CNTLID equals Connect's");
    assert_eq!(le32(d, 80), 0x0001_0300, "VER");
    assert_eq!(le32(d, 92) & (1 << 8), 1 << 8, "OAES namespace attribute notices");
    assert_eq!(le32(d, 92) & (1 << 11), 1 << 11, "OAES ANA change notices");
    assert_eq!(d[76] & 0x8, 0x8, "CMIC ANA reporting");
    assert_eq!(d[111], 1, "I/O controller");
    assert_eq!(d[259], 3, "AERL");
    assert_eq!(d[261] & 0x2, 0x2, "LPA commands supported and effects");
    assert_eq!(le16(d, 320), 10, "KAS");
    assert_eq!(le32(d, 344), 32, "ANAGRPMAX");
    assert_eq!((d[512], d[513]), (0x66, 0x44), "SQES/CQES");
    assert_eq!(le16(d, 514), 128, "MAXCMD");
    assert_eq!(le32(d, 516), 32, "NN");
    assert_eq!(d[525] & 1, 1, "VWC present");
    assert_ne!(le32(d, 536), 0, "SGLS non-zero");
    assert_eq!(ferry_nvme::spec::nul_terminated(&d[768..1024]), Some(fx.nqn.as_str()), "SUBNQN");
    assert!(le32(d, 1792) >= 4, "IOCCSZ >= 4");
    assert_eq!(le32(d, 1792), (64 + 4096) / 16, "IOCCSZ");
    assert_eq!(le32(d, 1796), 1, "IORCSZ");
    assert_eq!(le16(d, 1800), 0, "ICDOFF");
    // The discovery controller says it is one.
    let disc = ConnectArgs::admin(DISCOVERY_NQN, &fx.host, &fx.listen).connect().unwrap();
    disc.enable();
    let d = disc.identify(1, 0, 0);
    d.ok("discovery identify");
    assert_eq!(d.data[111], 2, "discovery controller");
    assert_eq!(d.data[261] & 0x2, 0, "no effects log on discovery");
    assert_eq!(le32(&d.data, 92), 1 << 31, "discovery log change notices");
    disc.identify(0, 1, 0).invalid_field("discovery has no namespaces");
}

#[test]
fn identify_namespace_descriptors_and_lists() {
    let fx = Fixture::new("idns");
    let sub = subsystem::subsystem(&fx.nqn).unwrap();
    let big = format!("{}_4k", fx.bdev);
    malloc::create(&big, 256, 4096, None).unwrap();
    let u = Uuid::new_v4();
    let nsid = sub
        .add_namespace(NamespaceConfig { nsid: Some(7), bdev_name: big.clone(), uuid: Some(u), ..Default::default() })
        .unwrap();
    assert_eq!(nsid, 7);
    let a = fx.admin();
    let o = a.identify(0, 1, 0);
    o.ok("identify ns 1");
    assert_eq!(le64(&o.data, 0), BLOCKS, "NSZE");
    assert_eq!((le32(&o.data, 128) >> 16) & 0xff, 9, "LBADS 512");
    assert_eq!(&o.data[104..120], &[0x5a; 16], "NGUID as given");
    let o = a.identify(0, 7, 0);
    assert_eq!(le64(&o.data, 0), 256, "NSZE of ns 7");
    assert_eq!((le32(&o.data, 128) >> 16) & 0xff, 12, "LBADS 4096");
    assert_eq!(&o.data[104..120], u.as_bytes(), "NGUID from the UUID");
    let o = a.identify(0, 3, 0);
    o.ok("inactive NSID within NN");
    assert!(o.data.iter().all(|b| *b == 0), "inactive namespace is zero-filled");
    a.identify(0, 0, 0).status(sct::GENERIC, sc::INVALID_NS, "NSID 0");
    a.identify(0, 0xffff_ffff, 0).status(sct::GENERIC, sc::INVALID_NS, "broadcast NSID");
    a.identify(0, 33, 0).status(sct::GENERIC, sc::INVALID_NS, "NSID above NN");
    // Descriptors: NGUID (type 2), UUID (type 3), CSI (type 4).
    let o = a.identify(3, 7, 0);
    o.ok("descriptors");
    let d = &o.data;
    assert_eq!((d[0], d[1]), (2, 16));
    assert_eq!(&d[4..20], u.as_bytes());
    assert_eq!((d[20], d[21]), (3, 16));
    assert_eq!(&d[24..40], u.as_bytes());
    assert_eq!((d[40], d[41], d[44]), (4, 1, 0));
    a.identify(3, 3, 0).status(sct::GENERIC, sc::INVALID_NS, "descriptors of an inactive NSID");
    // Active namespace list, from an NSID on.
    let o = a.identify(2, 0, 0);
    assert_eq!((le32(&o.data, 0), le32(&o.data, 4), le32(&o.data, 8)), (1, 7, 0));
    let o = a.identify(2, 1, 0);
    assert_eq!((le32(&o.data, 0), le32(&o.data, 4)), (7, 0));
    a.identify(2, 0xffff_fffe, 0).status(sct::GENERIC, sc::INVALID_NS, "list after FFFFFFFEh");
    // CNS 06h for the NVM command set; other CSIs and unknown CNS values are Invalid Field.
    a.identify(6, 0, 0).ok("CSI controller, NVM");
    a.identify(6, 0, 2 << 24).invalid_field("CSI 2");
    a.identify(8, 1, 0).invalid_field("CNS 08h");
    a.identify(0xff, 0, 0).invalid_field("CNS FFh");
    sub.remove_namespace(7).unwrap();
    let _ = registry::unregister(&big, None);
}

#[test]
fn features_answer_the_probe_set() {
    let fx = Fixture::new("feat");
    let a = fx.admin();
    assert_eq!(a.get_feature(0x07, 0, 0).ok("queues").cpl.dw0, 7 | (7 << 16), "max before set");
    assert_eq!(a.set_feature(0x07, 20 | (20 << 16)).ok("set").cpl.dw0, 7 | (7 << 16), "capped at 8");
    a.set_feature(0x07, 0xffff).invalid_field("NSQR FFFFh");
    assert_eq!(a.get_feature(0x04, 0, 0).ok("temperature").cpl.dw0 & 0xffff, 343, "over threshold default");
    a.set_feature(0x04, 300).ok("set over threshold");
    assert_eq!(a.get_feature(0x04, 0, 0).cpl.dw0 & 0xffff, 300);
    assert_eq!(a.get_feature(0x04, 1, 0).cpl.dw0 & 0xffff, 343, "default stays");
    a.get_feature(0x04, 0, 5 << 16).invalid_field("temperature sensor 5");
    assert_eq!(a.get_feature(0x06, 0, 0).cpl.dw0, 1, "write cache on");
    a.set_feature(0x06, 0).ok("write cache off");
    assert_eq!(a.get_feature(0x06, 0, 0).cpl.dw0, 0);
    a.set_feature(0x02, 1).invalid_field("power state 1 does not exist");
    a.set_feature(0x01, 0x0303).ok("arbitration");
    assert_eq!(a.get_feature(0x01, 0, 0).cpl.dw0, 0x0303);
    assert_eq!(a.get_feature(0x06, 3, 0).cpl.dw0 & 0x4, 0x4, "changeable");
    let mut c = Command::new(admin::SET_FEATURES, 1);
    c.set_cdw10(0x06 | (1 << 31));
    a.none(c).status(sct::COMMAND_SPECIFIC, csc::FEATURE_NOT_SAVEABLE, "save");
    a.set_feature(0x0b, 0xffff_ffff).ok("AEC");
    assert_eq!(a.get_feature(0x0b, 0, 0).cpl.dw0, (1 << 8) | (1 << 11) | (1 << 31), "AEC keeps supported bits");
    a.get_feature(0x55, 0, 0).invalid_field("unknown feature");
    a.get_feature(0x06, 7, 0).invalid_field("SEL 7");
    let o = a.get_feature(0x81, 0, 1);
    o.ok("host identifier");
    assert_eq!(&o.data[..16], &fx.args().hostid);
    a.get_feature(0x81, 0, 0).invalid_field("64-bit host identifier");
    a.set_feature(0x81, 1).status(sct::GENERIC, sc::COMMAND_SEQUENCE_ERROR, "host id set on fabrics");
    a.set_feature(0x0f, 0).status(sct::GENERIC, sc::KEEP_ALIVE_INVALID, "KATO 0");
    let mut c = Command::new(admin::GET_FEATURES, 1);
    c.set_cdw10(0x82);
    c.set_nsid(9);
    a.din(c, 16).status(sct::GENERIC, sc::INVALID_NS, "reservation mask of an inactive NSID");
    c.set_nsid(1);
    a.din(c, 16).ok("reservation mask of NSID 1");
    a.set_feature(0x0f, 1500).ok("KATO");
    assert_eq!(a.get_feature(0x0f, 0, 0).cpl.dw0, 2000, "KATO rounded up to the KAS granularity");
}

#[test]
fn log_pages_smart_firmware_effects_and_errors() {
    let fx = Fixture::new("logs");
    let a = fx.admin();
    let io = fx.args().io(1, a.cntlid).connect().unwrap();
    io.write(1, 0, &vec![1u8; 4 * BS as usize]).ok("write");
    let s = a.get_log(0x02, 0xffff_ffff, 512, 0, false);
    s.ok("SMART");
    assert_eq!(le16(&s.data, 1), 311, "plausible composite temperature");
    assert_eq!(s.data[3], 100, "available spare");
    assert_eq!(s.data[0], 0, "no critical warning");
    assert!(le64(&s.data, 48) >= 1, "data units written counts the write");
    assert!(le64(&s.data, 80) >= 1, "host write commands");
    // A lower over-temperature threshold raises the temperature warning.
    a.set_feature(0x04, 300).ok("threshold");
    assert_eq!(a.get_log(0x02, 0, 512, 0, false).data[0] & 0x2, 0x2, "temperature warning");
    a.get_log(0x02, 1, 512, 0, false).invalid_field("per-namespace SMART");
    let fw = a.get_log(0x03, 0, 512, 0, false);
    assert_eq!(fw.ok("firmware").data[0], 1, "slot 1 active");
    let e = a.get_log(0x05, 0, 4096, 0, false);
    e.ok("effects");
    assert_eq!(le32(&e.data, admin::IDENTIFY as usize * 4) & 1, 1, "Identify supported");
    assert_eq!(le32(&e.data, 1024 + iop::WRITE as usize * 4), 0x3, "Write supported, changes content");
    // A failed command lands in the error log.
    a.identify(0x42, 0, 0).invalid_field("bad CNS");
    let el = a.get_log(0x01, 0, 64, 0, false);
    el.ok("error log");
    assert!(le64(&el.data, 0) >= 1, "error count");
    assert_eq!(le16(&el.data, 10), 4, "command id of the identify");
    assert_eq!(Status::from_field(le16(&el.data, 12)).sc, sc::INVALID_FIELD);
    a.get_log(0x0c, 0, 4096, 0, false).status(sct::COMMAND_SPECIFIC, csc::INVALID_LOG_PAGE, "ANA off");
    a.get_log(0x70, 0, 1024, 0, false).status(sct::COMMAND_SPECIFIC, csc::INVALID_LOG_PAGE, "discovery log on NVM");
}

#[test]
fn ana_log_lists_groups_and_changes_raise_an_event() {
    let fx = Fixture::with("ana", |c| c.ana_reporting = true);
    let a = fx.admin();
    a.set_feature(0x0b, 1 << 11).ok("AEC ANA");
    let l = a.get_log(0x0c, 0, 4096, 0, false);
    l.ok("ANA log");
    assert_eq!(le16(&l.data, 8), 1, "one group");
    assert_eq!((le32(&l.data, 16), le32(&l.data, 20), l.data[32]), (1, 1, 1), "group 1, one NSID, optimized");
    assert_eq!(le32(&l.data, 48), 1, "NSID 1");
    let io = fx.args().io(1, a.cntlid).connect().unwrap();
    io.read(1, 0, 1).ok("read while optimized");
    let aer = a.aer();
    let sub = subsystem::subsystem(&fx.nqn).unwrap();
    sub.set_ana_state(&fx.listen, AnaState::Inaccessible).unwrap();
    let o = aer.recv_timeout(WAIT).expect("ANA change completes the AER");
    assert_eq!(o.ok("AER").cpl.dw0, 0x000c_0302, "notice, ANA change, log 0Ch");
    let l = a.get_log(0x0c, 0, 4096, 0, false);
    assert_eq!((le64(&l.data, 0), l.data[32]), (1, 3), "change count 1, inaccessible");
    io.read(1, 0, 1).status(sct::PATH, ferry_nvme::spec::psc::ANA_INACCESSIBLE, "I/O through an inaccessible path");
    sub.set_ana_state(&fx.listen, AnaState::Optimized).unwrap();
    io.read(1, 0, 1).ok("read when optimized again");
}

#[test]
fn namespace_add_remove_resize_raise_changed_ns_events() {
    let fx = Fixture::new("aen");
    let sub = subsystem::subsystem(&fx.nqn).unwrap();
    let a = fx.admin();
    a.set_feature(0x0b, 1 << 8).ok("AEC namespace attribute");
    let aers: Vec<Receiver<Outcome>> = (0..4).map(|_| a.aer()).collect();
    let over = a.aer().recv_timeout(WAIT).expect("fifth AER answered at once");
    over.status(sct::COMMAND_SPECIFIC, csc::ASYNC_EVENT_LIMIT_EXCEEDED, "AERL+1 outstanding");
    // Add: one AER completes, the changed list holds the new NSID, reading clears it.
    let extra = format!("{}_r", fx.bdev);
    null::create(&extra, 1000, BS, None).unwrap();
    let nsid = sub.add_namespace(NamespaceConfig { bdev_name: extra.clone(), ..Default::default() }).unwrap();
    let mut waiting = aers.into_iter();
    let first = waiting.next().unwrap().recv_timeout(WAIT).expect("AER after namespace add");
    assert_eq!(first.ok("AER").cpl.dw0, 0x0004_0002, "notice, NS attribute changed, log 04h");
    let l = a.get_log(0x04, 0, 4096, 0, false);
    assert_eq!((le32(&l.data, 0), le32(&l.data, 4)), (nsid, 0), "changed list");
    let l = a.get_log(0x04, 0, 4096, 0, false);
    assert_eq!(le32(&l.data, 0), 0, "cleared by reading");
    // Resize: the next AER.
    registry::get(&extra).unwrap().resize(2000).unwrap();
    let second = waiting.next().unwrap().recv_timeout(WAIT).expect("AER after resize");
    assert_eq!(second.cpl.dw0, 0x0004_0002);
    let o = a.identify(0, nsid, 0);
    assert_eq!(le64(&o.data, 0), 2000, "new size");
    assert_eq!(le32(&a.get_log(0x04, 0, 4096, 0, false).data, 0), nsid, "resized NSID listed");
    // Hot-remove of the bdev: the namespace goes, with an event.
    registry::unregister(&extra, None).unwrap();
    let third = waiting.next().unwrap().recv_timeout(WAIT).expect("AER after hot remove");
    assert_eq!(third.cpl.dw0, 0x0004_0002);
    assert!(sub.namespace(nsid).is_none(), "namespace removed with its bdev");
    assert_eq!(le32(&a.get_log(0x04, 0, 4096, 0, false).data, 0), nsid);
    let o = a.identify(2, 0, 0);
    assert_eq!((le32(&o.data, 0), le32(&o.data, 4)), (1, 0), "active list without it");
    // Remove by RPC: the last AER.
    sub.remove_namespace(1).unwrap();
    let fourth = waiting.next().unwrap().recv_timeout(WAIT).expect("AER after remove");
    assert_eq!(fourth.cpl.dw0, 0x0004_0002);
    assert_eq!(le32(&a.get_log(0x04, 0, 4096, 0, false).data, 0), 1);
}

/// Reads the discovery log as a host does: the header, then the entries, and again if the
/// generation changed in between (other tests change the registry concurrently).
fn discovery_entries(d: &Conn) -> (Vec<u8>, Vec<(String, String, u8)>) {
    loop {
        let h = d.get_log(0x70, 0, 1024, 0, false);
        h.ok("discovery header");
        let (gen, n) = (le64(&h.data, 0), le64(&h.data, 8) as usize);
        let full = d.get_log(0x70, 0, 1024 * (n + 1), 0, false);
        full.ok("discovery log");
        if le64(&full.data, 0) != gen {
            continue;
        }
        let entries = (0..n)
            .map(|i| {
                let e = &full.data[1024 * (i + 1)..1024 * (i + 2)];
                let subnqn = ferry_nvme::spec::nul_terminated(&e[256..512]).unwrap().to_string();
                let svc = ferry_nvme::spec::nul_terminated(&e[32..64]).unwrap().to_string();
                (subnqn, svc, e[2])
            })
            .collect();
        return (full.data, entries);
    }
}

#[test]
fn discovery_log_lists_only_what_the_host_may_see() {
    let fx = Fixture::new("disc-a");
    let open_nqn = nqn("disc-open");
    let mut cfg = SubsystemConfig::new(&open_nqn);
    cfg.allow_any_host = true;
    let open = subsystem::create_subsystem(cfg).unwrap();
    open.add_listener(addr("disc-open")).unwrap();
    let disc_listen = addr("disc-service");
    let d = ConnectArgs::admin(DISCOVERY_NQN, &fx.host, &disc_listen).connect().unwrap();
    d.enable();
    let (_, seen) = discovery_entries(&d);
    assert!(seen.iter().any(|(n, s, t)| n == &fx.nqn && s == &fx.listen.trsvcid && *t == 2), "own subsystem: {seen:?}");
    assert!(seen.iter().any(|(n, _, _)| n == &open_nqn), "open subsystem");
    // Another host sees the open subsystem but not ours.
    let other = ConnectArgs::admin(DISCOVERY_NQN, &hostnqn("disc-b"), &disc_listen).connect().unwrap();
    other.enable();
    let (_, seen_b) = discovery_entries(&other);
    assert!(seen_b.iter().any(|(n, _, _)| n == &open_nqn), "open subsystem for host b");
    assert!(!seen_b.iter().any(|(n, _, _)| n == &fx.nqn), "host b does not see a subsystem it may not use");
    // A partial read at an offset returns the same bytes as the whole page there.
    loop {
        let (full, _) = discovery_entries(&d);
        let part = d.get_log(0x70, 0, 1024, 1024, false);
        part.ok("one entry at offset 1024");
        let again = d.get_log(0x70, 0, 16, 0, false);
        if le64(&again.data, 0) != le64(&full, 0) {
            continue; // the registry changed meanwhile: read again, as a host does
        }
        assert_eq!(&part.data[..], &full[1024..2048], "entry 0 read at its offset");
        let past = full.len() as u64 + 4;
        d.get_log(0x70, 0, 1024, past, false).invalid_field("offset past the page");
        break;
    }
    d.get_log(0x70, 0, 1024, 2, false).invalid_field("offset not dword aligned");
    // A discovery log change completes an AER with its notice.
    d.set_feature(0x0b, 1 << 31).ok("AEC discovery");
    d.get_log(0x70, 0, 16, 0, false).ok("clear any earlier notice");
    let aer = d.aer();
    open.add_listener(addr("disc-open-2")).unwrap();
    let o = aer.recv_timeout(WAIT).expect("discovery change AER");
    assert_eq!(o.ok("AER").cpl.dw0, 0x0070_f002, "notice, discovery log change, log 70h");
    subsystem::delete_subsystem(&open_nqn).unwrap();
}

#[test]
fn keep_alive_expiry_ends_the_controller() {
    let fx = Fixture::new("kato");
    let a = ConnectArgs { kato: 1000, ..fx.args() }.connect().unwrap();
    a.enable();
    let io = fx.args().io(1, a.cntlid).connect().unwrap();
    assert_eq!(a.get_feature(0x0f, 0, 0).cpl.dw0, 1000, "KATO from Connect");
    a.none(Command::new(admin::KEEP_ALIVE, 1)).ok("keep alive");
    // No more keep-alives: the timer ends the controller and both queues hear of it.
    a.wait_disconnected("keep alive timeout");
    io.wait_disconnected("the controller's I/O queue");
    assert!(subsystem::subsystem(&fx.nqn).unwrap().controllers().is_empty(), "controller gone");
    a.identify(1, 0, 0).status(sct::GENERIC, sc::ABORTED_SQ_DELETION, "ended queue takes no commands");
}

#[test]
fn hostile_fields_get_errors() {
    let fx = Fixture::new("hostile");
    let a = fx.admin();
    // NUMD of 2^32 dwords, and more than the buffer.
    let mut c = Command::new(admin::GET_LOG_PAGE, 1);
    c.set_cdw10(0x02 | (0xffff << 16));
    c.set_cdw11(0xffff);
    a.din(c, 4096).invalid_field("huge NUMD");
    a.get_log(0x02, 0, 512, 4096, false).invalid_field("offset beyond the SMART page");
    a.get_log(0x02, 0, 512, u64::MAX - 3, false).invalid_field("offset at 2^64");
    a.get_log(0x99, 0, 512, 0, false).status(sct::COMMAND_SPECIFIC, csc::INVALID_LOG_PAGE, "unknown log");
    a.none(Command::new(0xc5, 1)).status(sct::GENERIC, sc::INVALID_OPCODE, "vendor opcode");
    a.none(Command::new(admin::DOORBELL_BUFFER_CONFIG, 1)).status(sct::GENERIC, sc::INVALID_OPCODE, "DBBUF");
    a.none(Command::new(admin::CREATE_IO_SQ, 1)).status(sct::GENERIC, sc::INVALID_OPCODE, "create SQ on fabrics");
    assert_eq!(a.none(Command::new(admin::ABORT, 1)).ok("abort").cpl.dw0 & 1, 1, "not aborted");
    let mut disc = Command::new(admin::FABRICS, 1);
    disc.0[4] = f::DISCONNECT;
    a.none(disc).invalid_field("Disconnect on the admin queue");
    let mut auth = Command::new(admin::FABRICS, 1);
    auth.0[4] = 0x33;
    a.none(auth).status(sct::GENERIC, sc::INVALID_OPCODE, "unknown fctype");
    let io = fx.args().io(1, a.cntlid).connect().unwrap();
    let mut c = Command::new(iop::WRITE, 1);
    c.set_nsid(1);
    c.set_fuse(fuse::SECOND);
    io.run(c, vec![0; BS as usize]).status(sct::GENERIC, sc::ABORTED_MISSING_FUSED, "second without first");
    let mut c = Command::new(iop::READ, 1);
    c.set_nsid(1);
    c.set_fuse(fuse::FIRST);
    io.din(c, BS as usize).invalid_field("a Read cannot start a fused pair");
    let mut c = Command::new(iop::READ, 1);
    c.set_nsid(1);
    c.set_slba(u64::MAX);
    io.din(c, BS as usize).status(sct::GENERIC, sc::LBA_OUT_OF_RANGE, "LBA wrapping");
    let mut c = Command::new(0xee, 1);
    c.set_nsid(1);
    io.none(c).status(sct::GENERIC, sc::INVALID_OPCODE, "unknown I/O opcode");
    // Property Get on an I/O queue.
    let mut pg = Command::new(admin::FABRICS, 1);
    pg.0[4] = f::PROPERTY_GET;
    io.none(pg).status(sct::GENERIC, sc::INVALID_OPCODE, "property get on an I/O queue");
    // Disconnect of an I/O queue: completed, then the transport is told.
    let mut disc = Command::new(admin::FABRICS, 1);
    disc.0[4] = f::DISCONNECT;
    io.none(disc).ok("disconnect");
    io.wait_disconnected("disconnect ends the queue");
}

#[test]
fn registry_rules() {
    testing::reactors();
    let subs = subsystem::subsystems();
    assert_eq!(subs[0].nqn(), DISCOVERY_NQN, "discovery first");
    assert!(subsystem::subsystem(DISCOVERY_NQN).is_some());
    assert!(subsystem::delete_subsystem(DISCOVERY_NQN).is_err(), "discovery stays");
    for bad in [
        "",
        "nqn",
        "nqn.2024.io.x",
        "iqn.2024-01.io.x:y",
        "nqn.2024-01.-bad:x",
        &format!("nqn.2024-01.io.x:{}", "a".repeat(230)),
    ] {
        assert!(subsystem::create_subsystem(SubsystemConfig::new(bad)).is_err(), "NQN {bad:?} refused");
    }
    let uuid_nqn = format!("nqn.2014-08.org.nvmexpress:uuid:{}", Uuid::new_v4());
    assert!(subsystem::create_subsystem(SubsystemConfig::new(&uuid_nqn)).is_ok(), "UUID NQN");
    subsystem::delete_subsystem(&uuid_nqn).unwrap();
    let fx = Fixture::new("registry");
    assert!(matches!(subsystem::create_subsystem(SubsystemConfig::new(&fx.nqn)), Err(super::NvmeError::Exists(_))));
    let mut cfg = SubsystemConfig::new(&nqn("registry-cnt"));
    cfg.min_cntlid = 10;
    cfg.max_cntlid = 5;
    assert!(subsystem::create_subsystem(cfg).is_err(), "min above max");
    let sub = subsystem::subsystem(&fx.nqn).unwrap();
    let ns = |nsid, bdev: &str| NamespaceConfig { nsid, bdev_name: bdev.into(), ..Default::default() };
    assert!(matches!(sub.add_namespace(ns(Some(1), &fx.bdev)), Err(super::NvmeError::Exists(_))), "NSID taken");
    assert!(sub.add_namespace(ns(Some(33), &fx.bdev)).is_err(), "NSID above max");
    assert!(matches!(sub.add_namespace(ns(None, "no_such_bdev")), Err(super::NvmeError::Bdev(_))));
    assert!(sub.add_namespace(ns(None, &fx.bdev)).is_err(), "same bdev twice: same UUID");
    assert!(sub.add_host(&fx.host).is_err(), "host twice");
    assert!(sub.add_listener(fx.listen.clone()).is_err(), "listener twice");
    assert!(sub.remove_namespace(9).is_err());
    assert!(subsystem::subsystem(DISCOVERY_NQN).unwrap().add_namespace(ns(None, &fx.bdev)).is_err());
    // Deleting a subsystem ends its controllers.
    let a = fx.admin();
    subsystem::delete_subsystem(&fx.nqn).unwrap();
    a.wait_disconnected("subsystem deleted");
    // Removing a host ends its controllers.
    let fx2 = Fixture::new("registry-host");
    let b = fx2.admin();
    subsystem::subsystem(&fx2.nqn).unwrap().remove_host(&fx2.host).unwrap();
    b.wait_disconnected("host removed");
    // Any host allowed: a stranger may connect; removing the listener ends its controller.
    let sub2 = subsystem::subsystem(&fx2.nqn).unwrap();
    let stranger = ConnectArgs { hostnqn: hostnqn("registry-stranger"), ..fx2.args() };
    stranger.refused("not allowed yet");
    sub2.set_allow_any_host(true);
    assert!(sub2.host_allowed(&hostnqn("registry-stranger")));
    let s = stranger.connect().expect("any host allowed");
    sub2.remove_listener(&fx2.listen).unwrap();
    s.wait_disconnected("listener removed");
    assert!(sub2.remove_listener(&fx2.listen).is_err(), "listener gone");
}

#[test]
fn fused_pairs_complete_both_halves() {
    let fx = Fixture::new("fused");
    let a = fx.admin();
    let io = fx.args().io(1, a.cntlid).connect().unwrap();
    let old = vec![0x11u8; BS as usize];
    io.write(1, 5, &old).ok("initial data");
    let fused = |op: u8, f_: u8, cid: u16| {
        let mut c = Command::new(op, cid);
        c.set_nsid(1);
        c.set_slba(5);
        c.set_fuse(f_);
        c
    };
    // A compare that does not match: the write half is not done and says why.
    let cmp = io.submit(fused(iop::COMPARE, fuse::FIRST, 21), vec![0x22; BS as usize]);
    let wr = io.submit(fused(iop::WRITE, fuse::SECOND, 22), vec![0x33; BS as usize]);
    let w = wr.recv_timeout(WAIT).expect("write half completes");
    let c = cmp.recv_timeout(WAIT).expect("compare half completes");
    assert!(!c.cpl.status.is_success(), "compare of different data fails: {:?}", c.cpl.status);
    w.status(sct::GENERIC, sc::ABORTED_FAILED_FUSED, "write of a failed pair");
    assert_eq!(io.read(1, 5, 1).data, old, "nothing written");
    // A first half followed by anything but its second: aborted, and the other command runs.
    let lone = io.submit(fused(iop::COMPARE, fuse::FIRST, 23), vec![0x11; BS as usize]);
    let r = io.read(1, 5, 1);
    r.ok("the command after a lone first half");
    lone.recv_timeout(WAIT).expect("lone first half completes").status(
        sct::GENERIC,
        sc::ABORTED_MISSING_FUSED,
        "lone first half",
    );
    // A queue closed with a first half held drops it without a completion or a panic.
    let _held = io.submit(fused(iop::COMPARE, fuse::FIRST, 24), vec![0x11; BS as usize]);
    io.close();
    a.identify(1, 0, 0).ok("the controller carries on");
}

//! One iSCSI connection on its reactor: bytes in, PDUs cut out (`frame`), the login phase
//! (`login`), then the full feature phase: SCSI commands (`command`), task management
//! (`tmf`), NOP, text, logout; responses out through the `outbox`. With MaxConnections=1 the
//! connection also holds its session's state (CmdSN window, LUN channels, nexus).

use super::command::CmdTask;
use super::config::{self, TargetNode};
use super::frame::{self, FrameError, Limits};
use super::group;
use super::login::{self, Login, LoginEnv, LoginOutcome, LoginStep, Response, SessionKind, SessionParams};
use super::outbox::{OutData, Outbox, PushPdu};
use super::pdu::{at, flag, op, Bhs, BHS_LEN, RESERVED_TAG};
use super::session::{self, SessionEntry};
use super::textreq::{TextContext, TextState};
use super::tmf::PendingTmf;
use crate::framework::id_hash::IdMap;
use crate::framework::{self, ticks};
use crate::scsi::lun::LunChannel;
use crate::scsi::{Nexus, ScsiTarget, ScsiTask, TaskDone};
use serde::Serialize;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The MaxRecvDataSegmentLength in force during login (RFC 7143 §13.12).
const LOGIN_MAX_DATA: u32 = 8192;
/// A connection that has not completed its login by then is dropped.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Reading stops while this much is queued to send (a peer that does not read its responses
/// cannot make us queue without bound).
const OUTBOX_HIGH_WATER: usize = 8 << 20;
/// Reject reasons (RFC 7143 §11.17.1).
pub(super) mod reject {
    /// Data (payload) digest error.
    pub const DATA_DIGEST: u8 = 0x02;
    /// Protocol error.
    pub const PROTOCOL: u8 = 0x04;
    /// Command not supported.
    pub const NOT_SUPPORTED: u8 = 0x05;
    /// Invalid PDU field.
    pub const INVALID_FIELD: u8 = 0x09;
}

/// Connection counters for `iscsi_get_stats`.
static INVALID: AtomicU64 = AtomicU64::new(0);
static EXITED: AtomicU64 = AtomicU64::new(0);

pub(super) enum Phase {
    Login(Box<Login>),
    /// The final login response waits for reinstated sessions to be torn down.
    LoginWaiting {
        response: Response,
        outcome: Box<LoginOutcome>,
        waits: Vec<Arc<AtomicBool>>,
    },
    Full,
    /// Closing: the socket is shut; waiting for commands in flight and nexus resets.
    Closing,
}

/// The session this connection carries, once logged in.
pub(super) struct Sess {
    pub tsih: u16,
    pub cid: u16,
    pub initiator: String,
    pub node: Option<Arc<TargetNode>>,
    pub params: SessionParams,
    pub nexus: Arc<Nexus>,
    pub queue_depth: u32,
}

pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) sock: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) local: SocketAddr,
    pub(super) pg_tag: u32,
    pub(super) reactor: usize,
    pub(super) rbuf: Vec<u8>,
    pub(super) rstart: usize,
    pub(super) rend: usize,
    pub(super) limits: Limits,
    pub(super) phase: Phase,
    pub(super) out: Outbox,
    /// Digests on what we send (set with the receive side after login).
    pub(super) send_hd: bool,
    pub(super) send_dd: bool,
    pub(super) stat_sn: u32,
    pub(super) exp_cmd_sn: u32,
    pub(super) sess: Option<Sess>,
    pub(super) tasks: Vec<Option<CmdTask>>,
    pub(super) free_slots: Vec<usize>,
    pub(super) by_itt: IdMap<u32, usize>,
    /// Commands holding a place in the CmdSN window.
    pub(super) window_used: u32,
    /// Tasks the SCSI model has (their buffers must outlive the connection's close).
    pub(super) executing: u32,
    pub(super) target: Option<Arc<ScsiTarget>>,
    pub(super) target_gen: u64,
    pub(super) luns: Vec<(u64, Rc<LunChannel>)>,
    /// Each LUN's capacity as last announced (asynchronous events on a change).
    pub(super) capacities: Vec<(u64, u64)>,
    /// The node generation the initiator was last told about.
    pub(super) announced_gen: u64,
    pub(super) text: TextState,
    pub(super) tmfs: Vec<PendingTmf>,
    pub(super) tmf_waiting: Vec<super::tmf::TmfRequest>,
    pub(super) next_tmf_key: u64,
    pub(super) nexus_resets: Vec<PendingTmf>,
    /// Set when this connection's session is torn down (a reinstating login waits on it).
    /// Flags of reinstating logins, set once this connection's session is torn down.
    pub(super) on_gone: Vec<Arc<AtomicBool>>,
    /// Close once the outbox is empty.
    close_pending: bool,
    /// The logout response, sent once the nexus is released.
    logout_response: Option<Bhs>,
    nexus_released: bool,
    login_started: bool,
    /// Bytes of command buffers held (bounded per connection).
    pub(super) buffered: usize,
    pub(super) done_cb: Option<TaskDone>,
    pub(super) me: Weak<std::cell::RefCell<Conn>>,
    dirty: bool,
    last_rx: u64,
    started: u64,
    ping: Option<(u32, u64)>,
    next_ttt: u32,
    pub(super) next_r2t_tag: u32,
    /// Finished tasks for reuse: boxed because the SCSI model takes and returns them boxed.
    #[allow(clippy::vec_box)]
    pub(super) spare_tasks: Vec<Box<ScsiTask>>,
    pub(super) reading_paused: bool,
    /// A Data-Out being received straight into its command's buffer.
    pub(super) direct: Option<Box<super::direct::DirectRecv>>,
}

impl Conn {
    pub(super) fn new(
        id: u64,
        sock: TcpStream,
        peer: SocketAddr,
        pg_tag: u32,
        reactor: usize,
    ) -> std::io::Result<Conn> {
        sock.set_nonblocking(true)?;
        sock.set_nodelay(true)?;
        let local = sock.local_addr()?;
        let limits = Limits { header_digest: false, data_digest: false, max_data: LOGIN_MAX_DATA };
        let now = ticks::now();
        Ok(Conn {
            id,
            sock,
            peer,
            local,
            pg_tag,
            reactor,
            rbuf: vec![0; frame::max_pdu(&limits)],
            rstart: 0,
            rend: 0,
            limits,
            phase: Phase::Login(Box::new(Login::new(LoginEnv { pg_tag, peer, local }))),
            out: Outbox::default(),
            send_hd: false,
            send_dd: false,
            stat_sn: 0,
            exp_cmd_sn: 0,
            sess: None,
            tasks: Vec::new(),
            free_slots: Vec::new(),
            by_itt: IdMap::default(),
            window_used: 0,
            executing: 0,
            target: None,
            target_gen: 0,
            luns: Vec::new(),
            capacities: Vec::new(),
            announced_gen: 0,
            text: TextState::new(),
            tmfs: Vec::new(),
            tmf_waiting: Vec::new(),
            next_tmf_key: 1,
            nexus_resets: Vec::new(),
            on_gone: Vec::new(),
            close_pending: false,
            logout_response: None,
            nexus_released: false,
            login_started: false,
            buffered: 0,
            done_cb: None,
            me: Weak::new(),
            dirty: false,
            last_rx: now,
            started: now,
            ping: None,
            next_ttt: 1,
            next_r2t_tag: 0,
            spare_tasks: Vec::new(),
            reading_paused: false,
            direct: None,
        })
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    pub(super) fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    pub(super) fn set_self(&mut self, me: Weak<std::cell::RefCell<Conn>>) {
        let weak = me.clone();
        self.me = me;
        self.done_cb = Some(Rc::new(move |task: Box<ScsiTask>| {
            if let Some(c) = weak.upgrade() {
                c.borrow_mut().task_done(task);
            }
        }));
    }

    /// Whether the connection is closed and owes nothing to anyone.
    pub(super) fn finished(&self) -> bool {
        matches!(self.phase, Phase::Closing) && self.executing == 0 && self.nexus_resets.is_empty()
    }

    pub(super) fn has_background_work(&self) -> bool {
        self.logout_response.is_some()
            || !self.tmfs.is_empty()
            || !self.nexus_resets.is_empty()
            || matches!(self.phase, Phase::LoginWaiting { .. })
    }

    // ---- bytes in ------------------------------------------------------------------------

    pub(super) fn on_readable(&mut self) {
        if matches!(self.phase, Phase::Closing) {
            return;
        }
        // Bounded per call (fairness between connections of a reactor).
        for _ in 0..8 {
            if self.reading_paused || matches!(self.phase, Phase::Closing) {
                break;
            }
            if self.direct.is_some() {
                match self.read_direct() {
                    Ok(true) => {
                        self.last_rx = ticks::now();
                        self.ping = None;
                        self.process_input();
                        continue;
                    }
                    Ok(false) => break,
                    Err(e) => {
                        tracing::debug!(peer = %self.peer, error = %e, "iscsi: read failed");
                        self.close();
                        return;
                    }
                }
            }
            if self.rstart > 0 && (self.rend == self.rbuf.len() || self.rstart == self.rend) {
                self.rbuf.copy_within(self.rstart..self.rend, 0);
                self.rend -= self.rstart;
                self.rstart = 0;
            }
            let r = self.sock.read(&mut self.rbuf[self.rend..]);
            match r {
                Ok(0) => {
                    tracing::debug!(peer = %self.peer, "iscsi: peer closed the connection");
                    self.close();
                    return;
                }
                Ok(n) => {
                    let filled = self.rend + n == self.rbuf.len();
                    self.rend += n;
                    self.last_rx = ticks::now();
                    self.ping = None;
                    self.process_input();
                    if !filled {
                        // A short read emptied the socket: another would only say EAGAIN
                        // (a syscall per poll); epoll reports what comes next.
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "iscsi: read failed");
                    self.close();
                    return;
                }
            }
        }
        self.flush();
    }

    fn process_input(&mut self) {
        loop {
            if matches!(self.phase, Phase::Closing | Phase::LoginWaiting { .. }) || self.reading_paused {
                return;
            }
            if self.direct.is_some() {
                return;
            }
            let buf = &self.rbuf[self.rstart..self.rend];
            let layout = match frame::parse_header(buf, &self.limits) {
                Ok(Some(l)) if buf.len() >= l.total => l,
                Ok(Some(l)) => {
                    // A large Data-Out whose segment is still coming: straight into its buffer.
                    self.try_start_direct(&l);
                    return;
                }
                Ok(None) => return,
                Err(e) => {
                    self.protocol_failure(e);
                    return;
                }
            };
            let start = self.rstart;
            self.rstart += layout.total;
            let pdu = &self.rbuf[start..start + layout.total];
            let bhs = Bhs(pdu[..BHS_LEN].try_into().expect("48 bytes"));
            if !frame::check_data_digest(pdu, &layout) {
                // RFC 7143 §7.8: reject and discard; at ERL 0 the initiator recovers the session.
                self.send_reject(&bhs, reject::DATA_DIGEST);
                continue;
            }
            // The PDU's bytes stay in place until the next read compacts the buffer, which
            // only happens in on_readable: copy the few slices the handlers need as ranges.
            let ahs = (start + BHS_LEN, start + BHS_LEN + layout.ahs_len);
            let data = (start + layout.data_off, start + layout.data_off + layout.data_len);
            self.handle_pdu(bhs, ahs, data);
        }
    }

    /// A framing error: the stream cannot be trusted any more.
    fn protocol_failure(&mut self, e: FrameError) {
        tracing::warn!(peer = %self.peer, error = %e, "iscsi: dropping the connection");
        INVALID.fetch_add(1, Ordering::Relaxed);
        self.close();
    }

    fn handle_pdu(&mut self, bhs: Bhs, ahs: (usize, usize), data: (usize, usize)) {
        match &mut self.phase {
            Phase::Login(login) => {
                if bhs.opcode() != op::LOGIN_REQ {
                    tracing::warn!(peer = %self.peer, opcode = bhs.opcode(), "iscsi: not a login request during login");
                    INVALID.fetch_add(1, Ordering::Relaxed);
                    self.close();
                    return;
                }
                if !self.login_started {
                    if let Some((class, detail)) = refuse_session_join(&bhs) {
                        self.login_started = true;
                        self.stat_sn = bhs.u32_at(at::EXP_STATSN);
                        self.send_login(login::failure(&bhs, class, detail));
                        INVALID.fetch_add(1, Ordering::Relaxed);
                        self.close_after_flush();
                        return;
                    }
                }
                let step = login.on_request(&bhs, &self.rbuf[data.0..data.1]);
                self.on_login_step(&bhs, step);
            }
            Phase::Full => self.full_feature(bhs, ahs, data),
            Phase::LoginWaiting { .. } | Phase::Closing => {}
        }
    }

    /// The data segment bytes of the PDU being handled.
    pub(super) fn data(&self, range: (usize, usize)) -> &[u8] {
        &self.rbuf[range.0..range.1]
    }

    // ---- login ---------------------------------------------------------------------------

    fn on_login_step(&mut self, req: &Bhs, step: LoginStep) {
        if !self.login_started {
            // The first response's StatSN: what the initiator expects (SPDK does the same).
            self.login_started = true;
            self.stat_sn = req.u32_at(at::EXP_STATSN);
        }
        self.exp_cmd_sn = req.u32_at(at::CMDSN);
        match step {
            LoginStep::Continue(r) => self.send_login(r),
            LoginStep::Fail(r) => {
                self.send_login(r);
                INVALID.fetch_add(1, Ordering::Relaxed);
                self.close_after_flush();
            }
            LoginStep::Done(r, outcome) => self.finish_login(req, r, outcome),
        }
    }

    fn send_login(&mut self, mut r: Response) {
        self.seq_numbers(&mut r.bhs, true);
        self.out.push(r.bhs, OutData::Owned(r.data), false, false);
    }

    /// Fills StatSN (advancing it when `advance`), ExpCmdSN and MaxCmdSN.
    pub(super) fn seq_numbers(&mut self, bhs: &mut Bhs, advance: bool) {
        bhs.set_u32_at(at::STATSN, self.stat_sn);
        if advance {
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        bhs.set_u32_at(at::EXP_CMDSN, self.exp_cmd_sn);
        bhs.set_u32_at(at::MAX_CMDSN, self.max_cmd_sn());
    }

    pub(super) fn max_cmd_sn(&self) -> u32 {
        let depth = self.sess.as_ref().map(|s| s.queue_depth).unwrap_or(1);
        // A full window is MaxCmdSN = ExpCmdSN - 1 (RFC 7143 §4.2.2.1): nothing more may come.
        let room = depth.saturating_sub(self.window_used);
        self.exp_cmd_sn.wrapping_add(room).wrapping_sub(1)
    }

    fn finish_login(&mut self, req: &Bhs, r: Response, mut outcome: Box<LoginOutcome>) {
        let target = match &outcome.kind {
            SessionKind::Normal(n) => n.name.clone(),
            SessionKind::Discovery => String::new(),
        };
        let mut waits = Vec::new();
        if outcome.tsih != 0 {
            // Connection reinstatement (same CID) or, refused, a second connection (MC/S).
            match session::get(outcome.tsih) {
                Some(e)
                    if e.initiator.eq_ignore_ascii_case(&outcome.initiator_name)
                        && e.isid == outcome.isid
                        && e.cid == outcome.cid =>
                {
                    if let Some(old) = session::move_to(outcome.tsih, self.reactor, self.id, outcome.cid) {
                        // The session goes on: its nexus stays (no nexus loss, no reset), and
                        // so do its session-wide parameters; only the digests and segment
                        // lengths are this connection's (RFC 7143 §13: "LO" keys).
                        if let Some(p) = old.params {
                            let mine = outcome.params;
                            outcome.params = p;
                            outcome.params.header_digest = mine.header_digest;
                            outcome.params.data_digest = mine.data_digest;
                            outcome.params.target_max_recv_data_segment = mine.target_max_recv_data_segment;
                            outcome.params.initiator_max_recv_data_segment = mine.initiator_max_recv_data_segment;
                        }
                        waits.push(stop_remote(&old, true));
                    }
                }
                Some(_) => {
                    // 0x0206: too many connections (MaxConnections=1).
                    self.send_login(login::failure(req, 0x02, 0x06));
                    self.close_after_flush();
                    return;
                }
                None => {
                    // 0x020a: session does not exist (e.g. the target restarted); the
                    // initiator starts a new session.
                    self.send_login(login::failure(req, 0x02, 0x0a));
                    self.close_after_flush();
                    return;
                }
            }
        } else if !target.is_empty() && !config::lock().options.allow_duplicated_isid {
            // Session reinstatement (RFC 7143 §6.3.5): the old session is torn down first,
            // its tasks aborted and its nexus lost, before this one may act.
            for old in session::take_same_nexus(&outcome.initiator_name, &outcome.isid, &target) {
                tracing::info!(initiator = %old.initiator, tsih = old.tsih, "iscsi: reinstating a session");
                waits.push(stop_remote(&old, false));
            }
            // A session of this initiator that already ended may still be releasing its nexus
            // (its connection dropped just before): this one starts after that, not during it.
            waits.extend(session::pending_releases(&outcome.initiator_name, &target));
            // Its other sessions there may have dropped their connection a moment ago, the
            // close not yet seen by their reactor: each reads its socket now, and one found
            // closed is released before this session starts (libiscsi PreventAllow.ITNexusLoss:
            // close, then log in at once with a new ISID and expect the PREVENT gone).
            for other in session::of_initiator(&outcome.initiator_name, &target) {
                waits.push(probe_remote(&other));
            }
        }
        self.phase = Phase::LoginWaiting { response: r, outcome, waits };
        self.note_background();
        self.background();
    }

    /// Completes a login whose reinstatement waits are over.
    fn enter_full_feature(&mut self, mut r: Response, outcome: LoginOutcome) {
        let target_name = match &outcome.kind {
            SessionKind::Normal(n) => n.name.clone(),
            SessionKind::Discovery => String::new(),
        };
        let tsih = if outcome.tsih != 0 {
            outcome.tsih
        } else {
            let entry = SessionEntry {
                tsih: 0,
                initiator: outcome.initiator_name.clone(),
                isid: outcome.isid,
                target: target_name.clone(),
                reactor: self.reactor,
                conn_id: self.id,
                cid: outcome.cid,
                params: Some(outcome.params),
            };
            let max = config::lock().options.max_sessions as usize;
            let tsih = if session::count() >= max { None } else { session::add(entry) };
            match tsih {
                Some(t) => t,
                None => {
                    // 0x0301... out of resources: too many sessions.
                    let mut f = login::failure(&r.bhs, 0x03, 0x02);
                    f.bhs.set_itt(r.bhs.itt());
                    self.send_login(f);
                    self.close_after_flush();
                    return;
                }
            }
        };
        r.bhs.set_u16_at(at::TSIH, tsih);
        self.send_login(r);
        let isid_hex: String = outcome.isid.iter().map(|b| format!("{b:02x}")).collect();
        let nexus =
            Arc::new(Nexus { initiator: format!("{},i,0x{}", outcome.initiator_name, isid_hex), target_port: 1 });
        let (node, queue_depth) = match outcome.kind {
            SessionKind::Normal(n) => {
                let depth = n.queue_depth.min(config::lock().options.max_queue_depth).max(1);
                (Some(n), depth)
            }
            SessionKind::Discovery => (None, 1),
        };
        let p = outcome.params;
        self.limits = Limits {
            header_digest: p.header_digest,
            data_digest: p.data_digest,
            max_data: p.target_max_recv_data_segment,
        };
        self.send_hd = p.header_digest;
        self.send_dd = p.data_digest;
        let need = frame::max_pdu(&self.limits);
        if self.rbuf.len() < need {
            self.rbuf.resize(need, 0);
        }
        tracing::info!(
            peer = %self.peer, initiator = %outcome.initiator_name, target = %target_name, tsih,
            header_digest = p.header_digest, data_digest = p.data_digest, "iscsi: logged in"
        );
        self.sess = Some(Sess {
            tsih,
            cid: outcome.cid,
            initiator: outcome.initiator_name,
            node,
            params: p,
            nexus,
            queue_depth,
        });
        self.phase = Phase::Full;
        self.refresh_luns();
        self.announced_gen = self.target_gen;
        self.mark_dirty();
        // Anything the initiator pipelined behind its last login request.
        self.process_input();
    }

    /// Re-reads the node's SCSI target when it changed (a LUN added or removed) and opens
    /// this reactor's channel of each LUN.
    pub(super) fn refresh_luns(&mut self) {
        let Some(s) = &self.sess else { return };
        let Some(node) = &s.node else { return };
        let gen = node.generation.load(Ordering::Acquire);
        if self.target.is_some() && gen == self.target_gen {
            return;
        }
        let target = node.scsi_target();
        let mut luns = Vec::new();
        for l in target.luns() {
            if let Some((_, ch)) = self.luns.iter().find(|(id, c)| *id == l.id && Arc::ptr_eq(&c.lun, l)) {
                luns.push((l.id, ch.clone()));
            } else if let Ok(ch) = l.open_channel(s.nexus.clone()) {
                luns.push((l.id, ch));
            }
        }
        self.luns = luns;
        self.target = Some(target);
        self.target_gen = gen;
    }

    // ---- full feature phase --------------------------------------------------------------

    fn full_feature(&mut self, bhs: Bhs, ahs: (usize, usize), data: (usize, usize)) {
        let discovery = self.sess.as_ref().is_some_and(|s| s.node.is_none());
        match bhs.opcode() {
            op::NOP_OUT => self.nop_out(bhs, data),
            op::TEXT_REQ => self.text_request(bhs, data),
            op::LOGOUT_REQ => self.logout(bhs),
            op::SCSI_CMD if !discovery => self.scsi_command(bhs, ahs, data),
            op::DATA_OUT if !discovery => self.data_out(bhs, data),
            op::TMF_REQ if !discovery => self.tmf_request(bhs),
            // A discovery session takes no SCSI or task management PDUs; their CmdSN still
            // counts as received, so the session goes on in sequence.
            op::SCSI_CMD | op::TMF_REQ => {
                if self.accept_cmd_sn(&bhs) {
                    self.send_reject(&bhs, reject::PROTOCOL);
                }
            }
            op::SNACK => self.send_reject(&bhs, reject::PROTOCOL),
            op::LOGIN_REQ => self.send_reject(&bhs, reject::PROTOCOL),
            _ => self.send_reject(&bhs, reject::NOT_SUPPORTED),
        }
    }

    /// Checks and advances the CmdSN of a request: false if it is outside the window (the PDU
    /// is then ignored, RFC 7143 §4.2.2.1).
    pub(super) fn accept_cmd_sn(&mut self, bhs: &Bhs) -> bool {
        let sn = bhs.u32_at(at::CMDSN);
        if bhs.immediate() {
            // Immediate PDUs carry the next CmdSN without taking it.
            return sn == self.exp_cmd_sn;
        }
        if sn != self.exp_cmd_sn {
            tracing::debug!(cmdsn = sn, expected = self.exp_cmd_sn, "iscsi: CmdSN outside the window, ignored");
            return false;
        }
        self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        true
    }

    fn nop_out(&mut self, bhs: Bhs, data: (usize, usize)) {
        let itt = bhs.itt();
        if itt == RESERVED_TAG {
            // An answer to our ping (or a ping wanting no answer); it must be immediate.
            return;
        }
        if !self.accept_cmd_sn(&bhs) {
            return;
        }
        let mut r = Bhs::new(op::NOP_IN);
        r.set_flags(flag::FINAL);
        r.set_lun_field(bhs.lun_field());
        r.set_itt(itt);
        r.set_u32_at(at::TTT, RESERVED_TAG);
        self.seq_numbers(&mut r, true);
        let max =
            self.sess.as_ref().map(|s| s.params.initiator_max_recv_data_segment).unwrap_or(LOGIN_MAX_DATA) as usize;
        let echo = self.data(data);
        let echo = echo[..echo.len().min(max)].to_vec();
        self.push(r, OutData::Owned(echo));
    }

    fn text_request(&mut self, bhs: Bhs, data: (usize, usize)) {
        if !self.accept_cmd_sn(&bhs) {
            return;
        }
        let Some(s) = &self.sess else { return };
        let target_name = s.node.as_ref().map(|n| n.name.clone());
        let ctx = TextContext {
            discovery: s.node.is_none(),
            target_name: target_name.as_deref(),
            initiator_name: &s.initiator,
            peer: self.peer,
            pg_tag: self.pg_tag,
            initiator_max_recv_data_segment: s.params.initiator_max_recv_data_segment,
        };
        let mut r = self.text.on_request(&bhs, &self.rbuf[data.0..data.1], &ctx);
        self.seq_numbers(&mut r.bhs, true);
        self.push(r.bhs, OutData::Owned(r.data));
    }

    fn logout(&mut self, bhs: Bhs) {
        // Logout may be immediate; its CmdSN is checked as any other.
        if !self.accept_cmd_sn(&bhs) {
            return;
        }
        let reason = bhs.flags() & 0x7f;
        let cid = bhs.u16_at(at::CID);
        let my_cid = self.sess.as_ref().map(|s| s.cid).unwrap_or(0);
        let response = match reason {
            // Close the session, or this connection (the only one).
            0 | 1 if reason == 0 || cid == my_cid => 0,
            1 => 1, // CID not found
            _ => 2, // connection recovery is not supported (ERL 0)
        };
        let (wait, retain) = {
            let c = config::lock();
            (c.options.default_time2wait, c.options.default_time2retain)
        };
        let mut r = Bhs::new(op::LOGOUT_RSP);
        r.set_flags(flag::FINAL);
        r.set_byte(2, response);
        r.set_itt(bhs.itt());
        self.seq_numbers(&mut r, true);
        if response == 0 {
            r.set_u16_at(40, wait.min(3600) as u16);
            r.set_u16_at(42, retain.min(3600) as u16);
        }
        if response != 0 {
            self.push(r, OutData::None);
            return;
        }
        tracing::info!(peer = %self.peer, "iscsi: logging out");
        // The session ends before the response goes: its nexus is released (RESERVE(6)
        // dropped, SAM-5's nexus loss) so that whatever the initiator does next, the logout
        // has taken effect (libiscsi's Reserve6.Logout reserves from another nexus at once).
        self.logout_response = Some(r);
        self.release_nexus();
        self.note_background();
        self.poll_nexus_resets();
    }

    /// Ends the session's hold on its units: out of the session table, and an I_T nexus
    /// loss on every unit (polled in `nexus_resets`). Once only.
    fn release_nexus(&mut self) {
        if self.nexus_released {
            return;
        }
        self.nexus_released = true;
        if let Some(s) = &self.sess {
            session::remove(s.tsih, self.id);
            if let Some(t) = &self.target {
                for lun in t.luns() {
                    self.nexus_resets.push(PendingTmf::nexus_reset(lun.clone(), (*s.nexus).clone()));
                }
                if !self.nexus_resets.is_empty() {
                    let target = s.node.as_ref().map(|n| n.name.as_str()).unwrap_or("");
                    // A new session of this nexus (the initiator reconnecting) waits for this.
                    self.on_gone.push(session::begin_release(&s.initiator, target));
                }
            }
        }
    }

    pub(super) fn awaiting_logout(&self) -> bool {
        self.logout_response.is_some()
    }

    /// The nexus is released: send a pending logout response, then close.
    pub(super) fn nexus_released(&mut self) {
        self.mark_gone();
        if let Some(mut r) = self.logout_response.take() {
            self.seq_numbers(&mut r, true);
            self.push(r, OutData::None);
            self.close_after_flush();
        }
    }

    /// Sends a Reject carrying the offending header.
    pub(super) fn send_reject(&mut self, bad: &Bhs, reason: u8) {
        tracing::debug!(peer = %self.peer, opcode = bad.opcode(), reason, "iscsi: rejecting a PDU");
        let mut r = Bhs::new(op::REJECT);
        r.set_flags(flag::FINAL);
        r.set_byte(2, reason);
        r.set_itt(RESERVED_TAG);
        self.seq_numbers(&mut r, true);
        self.push(r, OutData::Owned(bad.0.to_vec()));
    }

    /// Queues a PDU with the connection's digests.
    pub(super) fn push(&mut self, bhs: Bhs, data: OutData) {
        self.out.push(bhs, data, self.send_hd, self.send_dd);
        self.mark_dirty();
    }

    /// Tells the group this connection has background work to poll.
    pub(super) fn note_background(&self) {
        if let Some(g) = group::existing() {
            g.note_background();
        }
    }

    pub(super) fn mark_dirty(&mut self) {
        if !self.dirty {
            self.dirty = true;
            if let Some(g) = group::existing() {
                g.mark_dirty(self.id);
            }
        }
    }

    // ---- bytes out -----------------------------------------------------------------------

    pub(super) fn flush(&mut self) {
        self.dirty = false;
        if self.out.is_empty() {
            return;
        }
        match self.out.flush(self.fd()) {
            Ok(true) => {
                if let Some(g) = group::existing() {
                    g.want_writable(self.id, self.fd(), false, !matches!(self.phase, Phase::Closing));
                }
                if self.reading_paused {
                    self.reading_paused = false;
                    self.process_input();
                }
                if self.close_pending {
                    self.close();
                }
            }
            Ok(false) => {
                let pause = self.out.bytes() > OUTBOX_HIGH_WATER;
                self.reading_paused = pause;
                if let Some(g) = group::existing() {
                    g.want_writable(self.id, self.fd(), true, !pause);
                }
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "iscsi: write failed");
                self.close();
            }
        }
    }

    pub(super) fn on_writable(&mut self) {
        self.flush();
        if !self.reading_paused {
            self.on_readable();
        }
    }

    // ---- timers and background work ------------------------------------------------------

    pub(super) fn tick(&mut self) {
        let now = ticks::now();
        match &self.phase {
            Phase::Login(_) if now.saturating_sub(self.started) > ticks::from_duration(LOGIN_TIMEOUT) => {
                tracing::info!(peer = %self.peer, "iscsi: login timed out");
                INVALID.fetch_add(1, Ordering::Relaxed);
                self.close();
            }
            Phase::Full => {
                self.async_events();
                self.nop_ping(now);
            }
            _ => {}
        }
    }

    /// Pings an idle initiator (NOP-In, RFC 7143 §11.19) and drops it if it stays silent.
    fn nop_ping(&mut self, now: u64) {
        let (interval, timeout) = {
            let c = config::lock();
            (c.options.nop_in_interval, c.options.nop_timeout)
        };
        if let Some((_, sent)) = self.ping {
            if timeout > 0 && now.saturating_sub(sent) > ticks::from_duration(Duration::from_secs(timeout as u64)) {
                tracing::warn!(peer = %self.peer, "iscsi: no answer to a NOP-In ping, dropping the connection");
                self.close();
            }
            return;
        }
        if interval == 0
            || now.saturating_sub(self.last_rx) < ticks::from_duration(Duration::from_secs(interval as u64))
        {
            return;
        }
        let ttt = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        let mut r = Bhs::new(op::NOP_IN);
        r.set_flags(flag::FINAL);
        r.set_itt(RESERVED_TAG);
        r.set_u32_at(at::TTT, ttt);
        self.seq_numbers(&mut r, false);
        self.push(r, OutData::None);
        self.ping = Some((ttt, now));
    }

    /// Runs what waits on something other than the socket; true if anything moved.
    pub(super) fn background(&mut self) -> bool {
        let mut moved = self.poll_tmfs();
        moved |= self.poll_nexus_resets();
        if let Phase::LoginWaiting { waits, .. } = &self.phase {
            if waits.iter().all(|w| w.load(Ordering::Acquire)) {
                let Phase::LoginWaiting { response, outcome, .. } = std::mem::replace(&mut self.phase, Phase::Full)
                else {
                    unreachable!()
                };
                self.enter_full_feature(response, *outcome);
                self.flush();
                moved = true;
            }
        }
        if moved {
            self.flush();
        }
        moved
    }

    // ---- closing -------------------------------------------------------------------------

    /// Closes once what is queued has been sent (after a logout or a login failure).
    pub(super) fn close_after_flush(&mut self) {
        self.close_pending = true;
        self.mark_dirty();
    }

    /// Closes now: the socket goes, commands still collecting data are dropped, the session
    /// ends (its nexus is lost: RESERVE(6) released, tasks aborted) once commands executing
    /// have come back.
    pub(super) fn close(&mut self) {
        if matches!(self.phase, Phase::Closing) {
            return;
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(g) = group::existing() {
            g.want_writable(self.id, self.fd(), false, false);
        }
        self.out.clear();
        self.phase = Phase::Closing;
        self.drop_collecting_tasks();
        self.logout_response = None;
        self.release_nexus();
        EXITED.fetch_add(1, Ordering::Relaxed);
        if let Some(g) = group::existing() {
            g.note_closed();
            g.note_background();
        }
        if self.nexus_resets.is_empty() {
            self.mark_gone();
        }
    }

    /// The session is fully torn down: release reinstating logins waiting for it.
    pub(super) fn mark_gone(&mut self) {
        for f in self.on_gone.drain(..) {
            f.store(true, Ordering::Release);
        }
    }

    /// Describes the connection for `iscsi_get_connections`.
    pub(super) fn info(&self) -> Option<ConnInfo> {
        let s = self.sess.as_ref()?;
        if matches!(self.phase, Phase::Closing) {
            return None;
        }
        Some(ConnInfo {
            id: self.id,
            cid: s.cid,
            tsih: s.tsih,
            lcore_id: framework::reactors().get(self.reactor).map(|r| r.core()).unwrap_or(0),
            initiator_addr: self.peer.ip().to_string(),
            target_addr: self.local.ip().to_string(),
            target_node_name: s.node.as_ref().map(|n| n.name.clone()).unwrap_or_default(),
        })
    }
}

/// A first login request naming an existing session (TSIH not 0): refused at once unless it
/// reinstates that session's one connection (same ISID and CID). Some(status class, detail).
fn refuse_session_join(req: &Bhs) -> Option<(u8, u8)> {
    let tsih = req.u16_at(at::TSIH);
    if tsih == 0 {
        return None;
    }
    let isid: [u8; 6] = req.0[at::ISID..at::ISID + 6].try_into().expect("6 bytes");
    match session::get(tsih) {
        // 0x020a: session does not exist (e.g. the target restarted): the initiator starts anew.
        None => Some((0x02, 0x0a)),
        Some(e) if e.isid != isid => Some((0x02, 0x0a)),
        // 0x0206: too many connections (MaxConnections=1: no MC/S).
        Some(e) if e.cid != req.u16_at(at::CID) => Some((0x02, 0x06)),
        Some(_) => None,
    }
}

/// Tells the connection of `old` (on whatever reactor) to close; the flag is set once its
/// session is fully torn down (or at once if the connection is already gone). With
/// `keep_nexus` (connection reinstatement) the session lives on elsewhere: its nexus is not
/// released.
fn stop_remote(old: &SessionEntry, keep_nexus: bool) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let id = old.conn_id;
    let sent = framework::send(old.reactor, move || {
        let conn = group::existing().and_then(|g| g.conns.borrow().get(&id).cloned());
        match conn {
            Some(c) => {
                let mut c = c.borrow_mut();
                c.on_gone.push(f);
                if keep_nexus {
                    c.nexus_released = true;
                }
                c.close();
                if c.finished() {
                    c.mark_gone();
                }
            }
            None => f.store(true, Ordering::Release),
        }
    });
    if sent.is_err() {
        flag.store(true, Ordering::Release);
    }
    flag
}

/// Has the connection of session `other` read what its socket holds now; the returned flag is
/// set at once if the connection lives on, or once its nexus is released if the read found it
/// closed (so a new login of the same initiator acts after an I_T nexus loss it caused).
fn probe_remote(other: &SessionEntry) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let id = other.conn_id;
    let sent = framework::send(other.reactor, move || {
        let conn = group::existing().and_then(|g| g.conns.borrow().get(&id).cloned());
        let Some(c) = conn else { return f.store(true, Ordering::Release) };
        let mut c = c.borrow_mut();
        if !matches!(c.phase, Phase::Closing) {
            c.on_readable();
        }
        if matches!(c.phase, Phase::Closing) && !c.nexus_resets.is_empty() {
            // Released when its nexus resets finish (`mark_gone`).
            c.on_gone.push(f);
        } else {
            f.store(true, Ordering::Release);
        }
    });
    if sent.is_err() {
        flag.store(true, Ordering::Release);
    }
    flag
}

/// One connection as `iscsi_get_connections` lists it (SPDK's keys).
#[derive(Debug, Clone, Serialize)]
pub struct ConnInfo {
    /// Ferry's connection id.
    pub id: u64,
    /// The iSCSI connection id (CID).
    pub cid: u16,
    /// The session's TSIH.
    pub tsih: u16,
    /// The core of the reactor polling it.
    pub lcore_id: u32,
    /// The initiator's address.
    pub initiator_addr: String,
    /// The local address.
    pub target_addr: String,
    /// The target node's name (empty for discovery).
    pub target_node_name: String,
}

/// Connection counts as `iscsi_get_stats` reports them.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stats {
    /// Connections that failed (bad login, protocol errors).
    pub invalid: u64,
    /// Connections running.
    pub running: u64,
    /// Connections closing.
    pub exiting: u64,
    /// Connections closed.
    pub exited: u64,
}

/// Takes over a connection accepted on portal group `pg_tag` (on reactor 0).
pub fn adopt(stream: TcpStream, peer: SocketAddr, pg_tag: u32) {
    group::place(stream, peer, pg_tag);
}

/// Every logged-in connection now.
pub fn connections() -> Vec<ConnInfo> {
    group::each_conn(|c| c.info())
}

/// Connection counts.
pub fn stats() -> Stats {
    let states = group::each_conn(|c| Some(matches!(c.phase, Phase::Closing)));
    Stats {
        invalid: INVALID.load(Ordering::Relaxed),
        running: states.iter().filter(|closing| !**closing).count() as u64,
        exiting: states.iter().filter(|closing| **closing).count() as u64,
        exited: EXITED.load(Ordering::Relaxed),
    }
}

/// Drops every session logged in to target `name` (its node is being deleted).
pub fn drop_target_sessions(name: &str) {
    drop_target_sessions_except(name, 0);
}

/// Drops every session logged in to target `name` but connection `keep`'s.
pub(super) fn drop_target_sessions_except(name: &str, keep: u64) {
    for s in session::of_target(name).into_iter().filter(|s| s.conn_id != keep) {
        group::with_conn(s.reactor, s.conn_id, |c| c.close());
    }
}

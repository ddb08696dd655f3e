//! Persistent reservations (PERSISTENT RESERVE IN/OUT, SPC-4 5.13, 6.15, 6.16) and SPC-2
//! RESERVE/RELEASE (6/10), kept per logical unit.
//!
//! What is offered: registrations per I_T nexus, the six reservation types at LU scope,
//! READ KEYS, READ RESERVATION, REPORT CAPABILITIES and READ FULL STATUS. What is not:
//! SPEC_I_PT, ALL_TG_PT, APTPL (nothing survives a restart) and REGISTER AND MOVE; each is
//! refused with the sense SPC-4 prescribes, and REPORT CAPABILITIES says so.
//!
//! SPC-2 and persistent reservations exclude each other as SPC-2/SPC-3 specify for a device
//! server with CRH=0: while a RESERVE holds the unit every PERSISTENT RESERVE IN/OUT
//! conflicts, and while any registration exists every RESERVE and RELEASE conflicts.

use super::cdb::{be32, be64, op};
use super::sense::{asc, key, Failure, Sense};
use super::Nexus;

/// PERSISTENT RESERVE IN service actions (SPC-4 6.15.1).
pub mod in_sa {
    /// Every registered reservation key.
    pub const READ_KEYS: u8 = 0x00;
    /// The persistent reservation, if any.
    pub const READ_RESERVATION: u8 = 0x01;
    /// What the device server supports.
    pub const REPORT_CAPABILITIES: u8 = 0x02;
    /// Every registration with its TransportID and whether it holds the reservation.
    pub const READ_FULL_STATUS: u8 = 0x03;
}

/// PERSISTENT RESERVE OUT service actions (SPC-4 6.16.1).
pub mod out_sa {
    /// Register, change or remove a key (checking the current one).
    pub const REGISTER: u8 = 0x00;
    /// Establish a persistent reservation.
    pub const RESERVE: u8 = 0x01;
    /// Release the persistent reservation.
    pub const RELEASE: u8 = 0x02;
    /// Remove every registration and the reservation.
    pub const CLEAR: u8 = 0x03;
    /// Remove other registrations and/or take over the reservation.
    pub const PREEMPT: u8 = 0x04;
    /// PREEMPT, and abort the preempted nexuses' tasks.
    pub const PREEMPT_AND_ABORT: u8 = 0x05;
    /// REGISTER without checking the current key.
    pub const REGISTER_AND_IGNORE_EXISTING_KEY: u8 = 0x06;
    /// Not supported: refused as an invalid field in the CDB.
    pub const REGISTER_AND_MOVE: u8 = 0x07;
}

/// Persistent reservation types (SPC-4 6.15.3.4, TYPE field).
pub mod pr_type {
    /// Write Exclusive: only the holder writes.
    pub const WRITE_EXCLUSIVE: u8 = 0x1;
    /// Exclusive Access: only the holder reads or writes.
    pub const EXCLUSIVE_ACCESS: u8 = 0x3;
    /// Write Exclusive, Registrants Only.
    pub const WRITE_EXCLUSIVE_RO: u8 = 0x5;
    /// Exclusive Access, Registrants Only.
    pub const EXCLUSIVE_ACCESS_RO: u8 = 0x6;
    /// Write Exclusive, All Registrants: every registrant is a holder.
    pub const WRITE_EXCLUSIVE_AR: u8 = 0x7;
    /// Exclusive Access, All Registrants: every registrant is a holder.
    pub const EXCLUSIVE_ACCESS_AR: u8 = 0x8;
}

/// ILLEGAL REQUEST additional sense for a holder's RELEASE whose type does not match.
pub const INVALID_RELEASE_OF_PR: asc::Code = (0x26, 0x04);

/// The only PERSISTENT RESERVE OUT parameter list length accepted (no SPEC_I_PT).
const PARAM_LIST_LEN: usize = 24;
/// Parameter list byte 20: SPEC_I_PT, ALL_TG_PT and APTPL bits.
const SPEC_I_PT: u8 = 0x08;
const ALL_TG_PT: u8 = 0x04;
const APTPL: u8 = 0x01;
/// Longest initiator name reported in a TransportID: iSCSI names are at most 223 bytes, and
/// ",i,0x" plus an ISID adds 17; the cap keeps the TransportID within 256 bytes.
const MAX_TRANSPORT_NAME: usize = 251;
/// SCSI protocol identifier for iSCSI (SPC-4 7.6.1).
const PROTOCOL_ISCSI: u8 = 0x5;

fn valid_type(t: u8) -> bool {
    matches!(t, 1 | 3 | 5..=8)
}

fn write_exclusive_type(t: u8) -> bool {
    matches!(t, pr_type::WRITE_EXCLUSIVE | pr_type::WRITE_EXCLUSIVE_RO | pr_type::WRITE_EXCLUSIVE_AR)
}

/// Registrants Only and All Registrants types: registered nexuses get access.
fn registrants_type(t: u8) -> bool {
    matches!(t, 5..=8)
}

fn all_registrants_type(t: u8) -> bool {
    matches!(t, pr_type::WRITE_EXCLUSIVE_AR | pr_type::EXCLUSIVE_ACCESS_AR)
}

fn conflict<T>() -> Result<T, Failure> {
    Err(Failure::ReservationConflict)
}

fn bad_cdb<T>(byte: u16, bit: Option<u8>) -> Result<T, Failure> {
    Err(Sense::invalid_cdb_field(byte, bit).into())
}

fn bad_param<T>(byte: u16, bit: Option<u8>) -> Result<T, Failure> {
    Err(Sense::invalid_param_field(byte, bit).into())
}

/// Refuses a CDB shorter than its opcode's length (a transport's bug, not an initiator's).
fn need(cdb: &[u8], len: usize) -> Result<(), Failure> {
    if cdb.len() < len {
        return bad_cdb(0, None);
    }
    Ok(())
}

/// How a command is treated by a persistent reservation it does not hold (SPC-4 table 67,
/// SBC-3 table 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Allowed whatever the reservation.
    Any,
    /// Allowed through Write Exclusive types, refused by Exclusive Access types.
    Read,
    /// Refused by every type (registrants pass the Registrants Only / All Registrants types).
    Write,
}

fn access(cdb: &[u8]) -> Access {
    use op::*;
    match cdb[0] {
        INQUIRY | REQUEST_SENSE | REPORT_LUNS | TEST_UNIT_READY | READ_CAPACITY_10 => Access::Any,
        SERVICE_ACTION_IN_16 => match cdb.get(1).map(|b| b & 0x1F) {
            Some(SAI_READ_CAPACITY_16) => Access::Any,
            _ => Access::Read, // GET LBA STATUS
        },
        // Spinning up (START=1, POWER CONDITION=0) is harmless; stopping or a power
        // condition change is not (SBC-3 table 13).
        START_STOP_UNIT => match cdb.get(4) {
            Some(b) if b & 0xF1 == 0x01 => Access::Any,
            _ => Access::Write,
        },
        // Allowing medium removal is harmless; preventing it is not (SBC-3 table 13).
        PREVENT_ALLOW_MEDIUM_REMOVAL => match cdb.get(4) {
            Some(b) if b & 0x03 == 0 => Access::Any,
            _ => Access::Write,
        },
        READ_6 | READ_10 | READ_12 | READ_16 | VERIFY_10 | VERIFY_12 | VERIFY_16 | MODE_SENSE_6 | MODE_SENSE_10
        | MAINTENANCE_IN | RECEIVE_COPY_RESULTS | PRE_FETCH_10 | PRE_FETCH_16 | READ_DEFECT_DATA_10
        | READ_DEFECT_DATA_12 => Access::Read,
        // Writes, WRITE SAME, UNMAP, COMPARE AND WRITE, SYNCHRONIZE CACHE, MODE SELECT, and
        // whatever is not known: conflict by default.
        _ => Access::Write,
    }
}

/// Commands another nexus may send while an SPC-2 RESERVE holds the unit (SPC-2 7.21).
/// RELEASE, RESERVE and PERSISTENT RESERVE IN/OUT are judged by their own handlers.
fn spc2_allowed(cdb: &[u8]) -> bool {
    use op::*;
    match cdb[0] {
        INQUIRY | REQUEST_SENSE | REPORT_LUNS => true,
        MAINTENANCE_IN => cdb.get(1).map(|b| b & 0x1F) == Some(MI_REPORT_SUPPORTED_OPCODES),
        _ => false,
    }
}

/// The iSCSI TransportID for `initiator` (SPC-4 7.6.4.6): format 00b for a bare iSCSI name,
/// 01b when the name carries the ",i,0x<ISID>" initiator port suffix. The name is
/// NUL-terminated and padded to a multiple of 4, with an ADDITIONAL LENGTH of at least 20.
fn transport_id(initiator: &str) -> Vec<u8> {
    let name = initiator.as_bytes();
    let name = &name[..name.len().min(MAX_TRANSPORT_NAME)];
    let format = if initiator.contains(",i,0x") { 0x40 } else { 0x00 };
    let additional = (name.len() + 1).div_ceil(4).max(5) * 4;
    let mut id = vec![0u8; 4 + additional];
    id[0] = format | PROTOCOL_ISCSI;
    id[2..4].copy_from_slice(&(additional as u16).to_be_bytes());
    id[4..4 + name.len()].copy_from_slice(name);
    id
}

/// What a PERSISTENT RESERVE OUT did to other nexuses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PrEffects {
    /// Nexuses that get a unit attention, with its (ASC, ASCQ).
    pub unit_attentions: Vec<(Nexus, (u8, u8))>,
    /// Nexuses whose tasks are aborted (PREEMPT AND ABORT).
    pub aborted: Vec<Nexus>,
}

impl PrEffects {
    fn ua(&mut self, nexus: Nexus, code: asc::Code) {
        self.unit_attentions.push((nexus, code));
    }
}

#[derive(Debug, Clone)]
struct Registration {
    nexus: Nexus,
    key: u64,
}

#[derive(Debug, Clone)]
struct Persistent {
    /// The nexus that holds it; for the All Registrants types every registrant holds it and
    /// this is only the one that established it.
    holder: Nexus,
    rtype: u8,
}

/// A unit's registrations and reservation.
#[derive(Debug, Default)]
pub struct Reservations {
    /// In registration order (READ KEYS and READ FULL STATUS report them so).
    registrations: Vec<Registration>,
    reservation: Option<Persistent>,
    /// PRgeneration: a wrapping counter of successful REGISTER*, CLEAR and PREEMPT*.
    generation: u32,
    /// The SPC-2 RESERVE holder.
    spc2: Option<Nexus>,
}

impl Reservations {
    /// No registrations, no reservation.
    pub fn new() -> Reservations {
        Reservations::default()
    }

    /// Whether any reservation (persistent or SPC-2) is held: when false, no command can
    /// conflict and the data path skips `check`.
    pub fn is_active(&self) -> bool {
        self.reservation.is_some() || self.spc2.is_some()
    }

    /// The current PRgeneration.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether `nexus` is registered, and with which key.
    pub fn registered_key(&self, nexus: &Nexus) -> Option<u64> {
        self.find(nexus).map(|i| self.registrations[i].key)
    }

    fn find(&self, nexus: &Nexus) -> Option<usize> {
        self.registrations.iter().position(|r| r.nexus == *nexus)
    }

    fn is_holder(&self, res: &Persistent, nexus: &Nexus) -> bool {
        if all_registrants_type(res.rtype) {
            self.find(nexus).is_some()
        } else {
            res.holder == *nexus
        }
    }

    /// Whether `cdb` from `nexus` conflicts with a reservation held by another nexus:
    /// `Err(Failure::ReservationConflict)` if it does. RESERVE, RELEASE and PERSISTENT
    /// RESERVE IN/OUT always pass here: their handlers apply the reservation rules themselves.
    pub fn check(&self, cdb: &[u8], nexus: &Nexus) -> Result<(), Failure> {
        use op::*;
        let Some(&opcode) = cdb.first() else {
            return Ok(());
        };
        if matches!(
            opcode,
            RESERVE_6 | RESERVE_10 | RELEASE_6 | RELEASE_10 | PERSISTENT_RESERVE_IN | PERSISTENT_RESERVE_OUT
        ) {
            return Ok(());
        }
        if let Some(holder) = &self.spc2 {
            if holder != nexus && !spc2_allowed(cdb) {
                return conflict();
            }
        }
        if let Some(res) = &self.reservation {
            if !self.is_holder(res, nexus) {
                let registrant = registrants_type(res.rtype) && self.find(nexus).is_some();
                let allowed = match access(cdb) {
                    Access::Any => true,
                    Access::Read => write_exclusive_type(res.rtype) || registrant,
                    Access::Write => registrant,
                };
                if !allowed {
                    return conflict();
                }
            }
        }
        Ok(())
    }

    /// PERSISTENT RESERVE IN: the full parameter data (the caller truncates it).
    pub fn pr_in(&self, cdb: &[u8], _nexus: &Nexus) -> Result<Vec<u8>, Failure> {
        need(cdb, 10)?;
        // SPC-2 5.5.1: while a RESERVE holds the unit, PR commands conflict from any nexus.
        if self.spc2.is_some() {
            return conflict();
        }
        match cdb[1] & 0x1F {
            in_sa::READ_KEYS => Ok(self.read_keys()),
            in_sa::READ_RESERVATION => Ok(self.read_reservation()),
            in_sa::REPORT_CAPABILITIES => Ok(Self::report_capabilities()),
            in_sa::READ_FULL_STATUS => Ok(self.read_full_status()),
            _ => bad_cdb(1, Some(4)),
        }
    }

    fn header(&self, additional: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + additional);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&(additional as u32).to_be_bytes());
        out
    }

    fn read_keys(&self) -> Vec<u8> {
        let mut out = self.header(8 * self.registrations.len());
        for r in &self.registrations {
            out.extend_from_slice(&r.key.to_be_bytes());
        }
        out
    }

    fn read_reservation(&self) -> Vec<u8> {
        let Some(res) = &self.reservation else {
            return self.header(0);
        };
        let mut out = self.header(16);
        // All Registrants reservations are reported with key zero (SPC-4 6.15.3.3).
        let rkey = if all_registrants_type(res.rtype) { 0 } else { self.registered_key(&res.holder).unwrap_or(0) };
        out.extend_from_slice(&rkey.to_be_bytes());
        out.extend_from_slice(&[0; 4]); // obsolete
        out.push(0);
        out.push(res.rtype); // LU_SCOPE (0) in the high nibble
        out.extend_from_slice(&[0; 2]); // obsolete
        out
    }

    fn report_capabilities() -> Vec<u8> {
        let mut out = vec![0u8; 8];
        // LENGTH
        out[1] = 8;
        // Byte 2: RLR_C, CRH, SIP_C, ATP_C and PTPL_C all zero: none of it is offered.
        // Byte 3: TMV (the type mask is valid); ALLOW COMMANDS 000b (no claim); PTPL_A zero.
        out[3] = 0x80;
        // Type mask: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; then EX_AC_AR.
        out[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
        out[5] = 0x01;
        out
    }

    fn read_full_status(&self) -> Vec<u8> {
        let mut descriptors = Vec::new();
        for r in &self.registrations {
            let holder = self.reservation.as_ref().filter(|res| self.is_holder(res, &r.nexus));
            let tid = transport_id(&r.nexus.initiator);
            descriptors.extend_from_slice(&r.key.to_be_bytes());
            descriptors.extend_from_slice(&[0; 4]);
            descriptors.push(if holder.is_some() { 0x01 } else { 0x00 }); // ALL_TG_PT 0, R_HOLDER
            descriptors.push(holder.map_or(0, |res| res.rtype)); // scope 0 | type
            descriptors.extend_from_slice(&[0; 4]);
            descriptors.extend_from_slice(&r.nexus.target_port.to_be_bytes());
            descriptors.extend_from_slice(&(tid.len() as u32).to_be_bytes());
            descriptors.extend_from_slice(&tid);
        }
        let mut out = self.header(descriptors.len());
        out.extend_from_slice(&descriptors);
        out
    }

    /// PERSISTENT RESERVE OUT with its parameter list. On success, the unit attentions to
    /// establish for other nexuses and (PREEMPT AND ABORT) the nexuses whose tasks to abort;
    /// the issuing nexus never appears in either.
    pub fn pr_out(&mut self, cdb: &[u8], params: &[u8], nexus: &Nexus) -> Result<PrEffects, Failure> {
        use out_sa::*;
        need(cdb, 10)?;
        if self.spc2.is_some() {
            return conflict();
        }
        let sa = cdb[1] & 0x1F;
        if sa > REGISTER_AND_IGNORE_EXISTING_KEY {
            return bad_cdb(1, Some(4)); // REGISTER AND MOVE, or reserved
        }
        let scope = cdb[2] >> 4;
        let rtype = cdb[2] & 0x0F;
        // SCOPE and TYPE are ignored by REGISTER*, CLEAR (and by RELEASE without a
        // reservation, but checking the scope early costs nothing).
        let scoped = matches!(sa, RESERVE | RELEASE | PREEMPT | PREEMPT_AND_ABORT);
        if scoped && scope != 0 {
            return bad_cdb(2, Some(7));
        }
        // RELEASE of a wrong type is its own error (INVALID RELEASE) against the holder.
        if scoped && sa != RELEASE && !valid_type(rtype) {
            return bad_cdb(2, Some(3));
        }
        let list_len = be32(cdb, 5) as usize;
        if list_len < PARAM_LIST_LEN || params.len() < PARAM_LIST_LEN {
            return Err(Sense::param_list_length().into());
        }
        let flags = params[20];
        if flags & SPEC_I_PT != 0 {
            return bad_param(20, Some(3));
        }
        if list_len != PARAM_LIST_LEN {
            return Err(Sense::param_list_length().into());
        }
        let registering = matches!(sa, REGISTER | REGISTER_AND_IGNORE_EXISTING_KEY);
        if registering && flags & ALL_TG_PT != 0 {
            return bad_param(20, Some(2));
        }
        if registering && flags & APTPL != 0 {
            return bad_param(20, Some(0));
        }
        let rkey = be64(params, 0);
        let sa_key = be64(params, 8);

        if registering {
            return self.register(nexus, rkey, sa_key, sa == REGISTER);
        }
        // Everything else needs a registration under the key given.
        match self.registered_key(nexus) {
            Some(k) if k == rkey => {}
            _ => return conflict(),
        }
        match sa {
            RESERVE => self.reserve_pr(nexus, rtype),
            RELEASE => self.release_pr(nexus, scope, rtype),
            CLEAR => Ok(self.clear(nexus)),
            _ => self.preempt(nexus, rtype, sa_key, sa == PREEMPT_AND_ABORT),
        }
    }

    fn register(&mut self, nexus: &Nexus, rkey: u64, sa_key: u64, check_key: bool) -> Result<PrEffects, Failure> {
        let mut effects = PrEffects::default();
        match self.find(nexus) {
            None => {
                if check_key && rkey != 0 {
                    return conflict();
                }
                // A zero service action key from an unregistered nexus does nothing.
                if sa_key != 0 {
                    self.registrations.push(Registration { nexus: nexus.clone(), key: sa_key });
                }
            }
            Some(i) => {
                if check_key && rkey != self.registrations[i].key {
                    return conflict();
                }
                if sa_key != 0 {
                    self.registrations[i].key = sa_key;
                } else {
                    self.registrations.remove(i);
                    self.after_removal(&mut effects);
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(effects)
    }

    /// After registrations were removed: a reservation whose holder is gone is released
    /// (SPC-4 5.13.11.2.3), an All Registrants one only with its last registrant. Releasing a
    /// Registrants Only reservation tells the remaining registrants.
    fn after_removal(&mut self, effects: &mut PrEffects) {
        let Some(res) = &self.reservation else {
            return;
        };
        if all_registrants_type(res.rtype) {
            if self.registrations.is_empty() {
                self.reservation = None;
            }
        } else if self.find(&res.holder).is_none() {
            if registrants_type(res.rtype) {
                for r in &self.registrations {
                    effects.ua(r.nexus.clone(), asc::RESERVATIONS_RELEASED);
                }
            }
            self.reservation = None;
        }
    }

    fn reserve_pr(&mut self, nexus: &Nexus, rtype: u8) -> Result<PrEffects, Failure> {
        match &self.reservation {
            // The holder may repeat its reservation, but not change its type.
            Some(res) if self.is_holder(res, nexus) && res.rtype == rtype => Ok(PrEffects::default()),
            Some(_) => conflict(),
            None => {
                self.reservation = Some(Persistent { holder: nexus.clone(), rtype });
                Ok(PrEffects::default())
            }
        }
    }

    fn release_pr(&mut self, nexus: &Nexus, scope: u8, rtype: u8) -> Result<PrEffects, Failure> {
        let mut effects = PrEffects::default();
        let Some(res) = &self.reservation else {
            return Ok(effects);
        };
        // A non-holder's RELEASE succeeds and does nothing.
        if !self.is_holder(res, nexus) {
            return Ok(effects);
        }
        if scope != 0 || rtype != res.rtype {
            return Err(Sense::new(key::ILLEGAL_REQUEST, INVALID_RELEASE_OF_PR).into());
        }
        if registrants_type(res.rtype) {
            for r in self.registrations.iter().filter(|r| r.nexus != *nexus) {
                effects.ua(r.nexus.clone(), asc::RESERVATIONS_RELEASED);
            }
        }
        self.reservation = None;
        Ok(effects)
    }

    fn clear(&mut self, nexus: &Nexus) -> PrEffects {
        let mut effects = PrEffects::default();
        for r in self.registrations.drain(..).filter(|r| r.nexus != *nexus) {
            effects.ua(r.nexus, asc::RESERVATIONS_PREEMPTED);
        }
        self.reservation = None;
        self.generation = self.generation.wrapping_add(1);
        effects
    }

    /// Removes the registrations `remove` selects, telling each removed nexus other than
    /// `nexus` that its registration was preempted; returns those nexuses.
    fn preempt_registrations(
        &mut self,
        nexus: &Nexus,
        effects: &mut PrEffects,
        remove: impl Fn(&Registration) -> bool,
    ) -> Vec<Nexus> {
        let mut preempted = Vec::new();
        self.registrations.retain(|r| {
            if !remove(r) {
                return true;
            }
            if r.nexus != *nexus {
                preempted.push(r.nexus.clone());
            }
            false
        });
        for n in &preempted {
            effects.ua(n.clone(), asc::REGISTRATIONS_PREEMPTED);
        }
        preempted
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-4 5.13.11.4).
    fn preempt(&mut self, nexus: &Nexus, rtype: u8, sa_key: u64, abort: bool) -> Result<PrEffects, Failure> {
        let mut effects = PrEffects::default();
        let current = self.reservation.as_ref().map(|res| {
            let all = all_registrants_type(res.rtype);
            let holder_key = if all { None } else { self.registered_key(&res.holder) };
            (all, holder_key, res.rtype)
        });
        let preempted = match current {
            // All Registrants with a zero key: everyone else goes, and the preempting nexus
            // gets a reservation of the requested type.
            Some((true, _, _)) if sa_key == 0 => {
                let preempted = self.preempt_registrations(nexus, &mut effects, |r| r.nexus != *nexus);
                self.reservation = Some(Persistent { holder: nexus.clone(), rtype });
                preempted
            }
            // Preempting the holder: its key's registrations go (not the preempting
            // nexus's own), the reservation moves, and if its type changed the remaining
            // registrants learn that the old one was released.
            Some((false, Some(holder_key), old_type)) if sa_key == holder_key => {
                let preempted =
                    self.preempt_registrations(nexus, &mut effects, |r| r.key == sa_key && r.nexus != *nexus);
                self.reservation = Some(Persistent { holder: nexus.clone(), rtype });
                if old_type != rtype {
                    for r in self.registrations.iter().filter(|r| r.nexus != *nexus) {
                        effects.ua(r.nexus.clone(), asc::RESERVATIONS_RELEASED);
                    }
                }
                preempted
            }
            // Preempting registrations only: a zero key names nobody.
            _ if sa_key == 0 => return bad_param(8, None),
            _ => {
                if !self.registrations.iter().any(|r| r.key == sa_key) {
                    return conflict();
                }
                let preempted = self.preempt_registrations(nexus, &mut effects, |r| r.key == sa_key);
                self.after_removal(&mut effects);
                preempted
            }
        };
        if abort {
            effects.aborted = preempted;
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(effects)
    }

    /// RESERVE (6/10): the unit for `nexus` alone. Conflicts while another nexus holds it or
    /// any persistent registration exists; the holder may repeat it.
    pub fn reserve(&mut self, cdb: &[u8], nexus: &Nexus) -> Result<(), Failure> {
        check_spc2_cdb(cdb)?;
        if !self.registrations.is_empty() || self.reservation.is_some() {
            return conflict();
        }
        match &self.spc2 {
            Some(holder) if holder != nexus => conflict(),
            _ => {
                self.spc2 = Some(nexus.clone());
                Ok(())
            }
        }
    }

    /// RELEASE (6/10): releases `nexus`'s reservation; from another nexus it does nothing.
    /// Conflicts while any persistent registration exists.
    pub fn release(&mut self, cdb: &[u8], nexus: &Nexus) -> Result<(), Failure> {
        check_spc2_cdb(cdb)?;
        if !self.registrations.is_empty() || self.reservation.is_some() {
            return conflict();
        }
        if self.spc2.as_ref() == Some(nexus) {
            self.spc2 = None;
        }
        Ok(())
    }

    /// A LOGICAL UNIT RESET: SPC-2 reservations are released, persistent ones stay.
    pub fn lun_reset(&mut self) {
        self.spc2 = None;
    }

    /// An I_T NEXUS RESET or loss for `nexus`: its SPC-2 reservation is released.
    /// Registrations and persistent reservations survive it (SPC-4 5.13.1).
    pub fn nexus_lost(&mut self, nexus: &Nexus) {
        if self.spc2.as_ref() == Some(nexus) {
            self.spc2 = None;
        }
    }
}

/// RESERVE/RELEASE (6/10) CDB fields this unit refuses: third-party reservations, extents
/// (obsolete since SPC-2) and LONGID (which only third-party reservations use).
fn check_spc2_cdb(cdb: &[u8]) -> Result<(), Failure> {
    let ten = matches!(cdb.first(), Some(&op::RESERVE_10) | Some(&op::RELEASE_10));
    need(cdb, if ten { 10 } else { 6 })?;
    if cdb[1] & 0x10 != 0 {
        return bad_cdb(1, Some(4)); // 3RDPTY
    }
    if ten && cdb[1] & 0x02 != 0 {
        return bad_cdb(1, Some(1)); // LONGID
    }
    if cdb[1] & 0x01 != 0 {
        return bad_cdb(1, Some(0)); // EXTENT
    }
    if ten {
        if cdb[7] != 0 || cdb[8] != 0 {
            return bad_cdb(7, None); // PARAMETER LIST LENGTH: only for LONGID
        }
    } else if cdb[0] == op::RESERVE_6 && (cdb[3] != 0 || cdb[4] != 0) {
        return bad_cdb(3, None); // EXTENT LIST LENGTH
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::cdb::be16;
    use crate::scsi::sense::Field;

    const A_KEY: u64 = 0xAAAA_0000_0000_0001;
    const B_KEY: u64 = 0xBBBB_0000_0000_0002;
    const C_KEY: u64 = 0xCCCC_0000_0000_0003;

    fn nx(name: &str) -> Nexus {
        Nexus { initiator: name.to_string(), target_port: 1 }
    }

    fn a() -> Nexus {
        nx("iqn.2024-01.org.example:a")
    }
    fn b() -> Nexus {
        nx("iqn.2024-01.org.example:b")
    }
    fn c() -> Nexus {
        nx("iqn.2024-01.org.example:c")
    }
    fn d() -> Nexus {
        nx("iqn.2024-01.org.example:d")
    }

    fn out_cdb(sa: u8, scope: u8, rtype: u8, len: u32) -> [u8; 10] {
        let mut cdb = [0u8; 10];
        cdb[0] = op::PERSISTENT_RESERVE_OUT;
        cdb[1] = sa;
        cdb[2] = (scope << 4) | rtype;
        cdb[5..9].copy_from_slice(&len.to_be_bytes());
        cdb
    }

    fn params(rkey: u64, sa_key: u64, flags: u8) -> [u8; 24] {
        let mut p = [0u8; 24];
        p[0..8].copy_from_slice(&rkey.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p[20] = flags;
        p
    }

    fn out(r: &mut Reservations, n: &Nexus, sa: u8, rtype: u8, rkey: u64, sa_key: u64) -> Result<PrEffects, Failure> {
        r.pr_out(&out_cdb(sa, 0, rtype, 24), &params(rkey, sa_key, 0), n)
    }

    fn register(r: &mut Reservations, n: &Nexus, k: u64) {
        out(r, n, out_sa::REGISTER, 0, 0, k).unwrap();
    }

    fn reserve(r: &mut Reservations, n: &Nexus, k: u64, t: u8) {
        out(r, n, out_sa::RESERVE, t, k, 0).unwrap();
    }

    fn in_cdb(sa: u8) -> [u8; 10] {
        let mut cdb = [0u8; 10];
        cdb[0] = op::PERSISTENT_RESERVE_IN;
        cdb[1] = sa;
        cdb[7..9].copy_from_slice(&0x1000u16.to_be_bytes());
        cdb
    }

    fn read_keys(r: &Reservations) -> (u32, Vec<u64>) {
        let d = r.pr_in(&in_cdb(in_sa::READ_KEYS), &a()).unwrap();
        let n = be32(&d, 4) as usize;
        assert_eq!(d.len(), 8 + n);
        (be32(&d, 0), d[8..].chunks(8).map(|k| be64(k, 0)).collect())
    }

    /// (key, type) of the persistent reservation.
    fn read_res(r: &Reservations) -> Option<(u64, u8)> {
        let d = r.pr_in(&in_cdb(in_sa::READ_RESERVATION), &a()).unwrap();
        match be32(&d, 4) {
            0 => {
                assert_eq!(d.len(), 8);
                None
            }
            16 => {
                assert_eq!(d.len(), 24);
                assert_eq!(d[21] >> 4, 0, "LU scope");
                Some((be64(&d, 8), d[21] & 0xF))
            }
            n => panic!("additional length {n}"),
        }
    }

    fn sense(f: Failure) -> Sense {
        match f {
            Failure::Check(s) => s,
            other => panic!("expected CHECK CONDITION, got {other:?}"),
        }
    }

    fn assert_cdb_field(f: Failure, byte: u16, bit: Option<u8>) {
        let s = sense(f);
        assert_eq!(s.key, key::ILLEGAL_REQUEST);
        assert_eq!((s.asc, s.ascq), asc::INVALID_FIELD_IN_CDB);
        assert_eq!(s.field, Some(Field::Cdb { byte, bit }));
    }

    fn assert_param_field(f: Failure, byte: u16, bit: Option<u8>) {
        let s = sense(f);
        assert_eq!(s.key, key::ILLEGAL_REQUEST);
        assert_eq!((s.asc, s.ascq), asc::INVALID_FIELD_IN_PARAM);
        assert_eq!(s.field, Some(Field::Param { byte, bit }));
    }

    fn assert_param_len(f: Failure) {
        let s = sense(f);
        assert_eq!(s.key, key::ILLEGAL_REQUEST);
        assert_eq!((s.asc, s.ascq), asc::PARAM_LIST_LENGTH);
    }

    fn rw(opcode: u8) -> [u8; 16] {
        let mut cdb = [0u8; 16];
        cdb[0] = opcode;
        cdb
    }

    fn read10() -> [u8; 16] {
        rw(op::READ_10)
    }
    fn write10() -> [u8; 16] {
        rw(op::WRITE_10)
    }

    fn spc2(opcode: u8) -> [u8; 10] {
        let mut cdb = [0u8; 10];
        cdb[0] = opcode;
        cdb
    }

    // ---- REGISTER / REGISTER AND IGNORE EXISTING KEY ----

    #[test]
    fn empty_unit_reports_nothing() {
        let r = Reservations::new();
        assert!(!r.is_active());
        assert_eq!(read_keys(&r), (0, vec![]));
        assert_eq!(read_res(&r), None);
        let fs = r.pr_in(&in_cdb(in_sa::READ_FULL_STATUS), &a()).unwrap();
        assert_eq!(fs, vec![0; 8]);
    }

    #[test]
    fn register_adds_keys_in_order_and_bumps_generation() {
        let mut r = Reservations::new();
        let e = out(&mut r, &a(), out_sa::REGISTER, 0, 0, A_KEY).unwrap();
        assert_eq!(e, PrEffects::default());
        register(&mut r, &b(), B_KEY);
        assert_eq!(read_keys(&r), (2, vec![A_KEY, B_KEY]));
        assert_eq!(r.registered_key(&a()), Some(A_KEY));
        assert_eq!(r.registered_key(&c()), None);
        // Registrations alone are not a reservation.
        assert!(!r.is_active());
        assert_eq!(r.check(&write10(), &c()), Ok(()));
    }

    #[test]
    fn register_from_unregistered_nexus_with_nonzero_key_conflicts() {
        let mut r = Reservations::new();
        assert_eq!(out(&mut r, &a(), out_sa::REGISTER, 0, 5, A_KEY), Err(Failure::ReservationConflict));
        assert_eq!(read_keys(&r), (0, vec![]));
    }

    #[test]
    fn register_with_wrong_current_key_conflicts() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        assert_eq!(out(&mut r, &a(), out_sa::REGISTER, 0, B_KEY, C_KEY), Err(Failure::ReservationConflict));
        assert_eq!(out(&mut r, &a(), out_sa::REGISTER, 0, 0, C_KEY), Err(Failure::ReservationConflict));
        assert_eq!(read_keys(&r), (1, vec![A_KEY]), "failed commands leave the generation alone");
    }

    #[test]
    fn register_replaces_and_removes_key() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        out(&mut r, &a(), out_sa::REGISTER, 0, A_KEY, C_KEY).unwrap();
        assert_eq!(read_keys(&r), (2, vec![C_KEY]));
        out(&mut r, &a(), out_sa::REGISTER, 0, C_KEY, 0).unwrap();
        assert_eq!(read_keys(&r), (3, vec![]));
    }

    #[test]
    fn register_zero_key_from_unregistered_nexus_is_a_no_op() {
        let mut r = Reservations::new();
        out(&mut r, &a(), out_sa::REGISTER, 0, 0, 0).unwrap();
        // Still a successful REGISTER: the generation counts it.
        assert_eq!(read_keys(&r), (1, vec![]));
    }

    #[test]
    fn register_and_ignore_existing_key() {
        let mut r = Reservations::new();
        let ignore = out_sa::REGISTER_AND_IGNORE_EXISTING_KEY;
        // The reservation key field is ignored, even from an unregistered nexus.
        out(&mut r, &a(), ignore, 0, 0xDEAD, A_KEY).unwrap();
        assert_eq!(r.registered_key(&a()), Some(A_KEY));
        out(&mut r, &a(), ignore, 0, 0xBEEF, B_KEY).unwrap();
        assert_eq!(r.registered_key(&a()), Some(B_KEY));
        out(&mut r, &a(), ignore, 0, 0, 0).unwrap();
        assert_eq!(r.registered_key(&a()), None);
        out(&mut r, &b(), ignore, 0, 7, 0).unwrap();
        assert_eq!(read_keys(&r), (4, vec![]));
    }

    #[test]
    fn nexus_is_initiator_and_target_port() {
        let mut r = Reservations::new();
        let a2 = Nexus { target_port: 2, ..a() };
        register(&mut r, &a(), A_KEY);
        register(&mut r, &a2, B_KEY);
        assert_eq!(read_keys(&r).1, vec![A_KEY, B_KEY]);
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE);
        assert_eq!(r.check(&write10(), &a()), Ok(()));
        assert_eq!(r.check(&write10(), &a2), Err(Failure::ReservationConflict));
    }

    #[test]
    fn same_key_on_two_nexuses_is_listed_twice() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), A_KEY);
        assert_eq!(read_keys(&r).1, vec![A_KEY, A_KEY]);
    }

    #[test]
    fn unregistering_the_holder_releases_without_ua() {
        for t in [pr_type::WRITE_EXCLUSIVE, pr_type::EXCLUSIVE_ACCESS] {
            let mut r = Reservations::new();
            register(&mut r, &a(), A_KEY);
            register(&mut r, &b(), B_KEY);
            reserve(&mut r, &a(), A_KEY, t);
            let e = out(&mut r, &a(), out_sa::REGISTER, 0, A_KEY, 0).unwrap();
            assert_eq!(e, PrEffects::default());
            assert_eq!(read_res(&r), None);
            assert!(!r.is_active());
        }
    }

    #[test]
    fn unregistering_a_registrants_only_holder_tells_the_registrants() {
        for t in [pr_type::WRITE_EXCLUSIVE_RO, pr_type::EXCLUSIVE_ACCESS_RO] {
            let mut r = Reservations::new();
            register(&mut r, &a(), A_KEY);
            register(&mut r, &b(), B_KEY);
            register(&mut r, &c(), C_KEY);
            reserve(&mut r, &a(), A_KEY, t);
            let e = out(&mut r, &a(), out_sa::REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0, 0).unwrap();
            assert_eq!(e.unit_attentions, vec![(b(), asc::RESERVATIONS_RELEASED), (c(), asc::RESERVATIONS_RELEASED)]);
            assert!(e.aborted.is_empty());
            assert_eq!(read_res(&r), None);
        }
    }

    #[test]
    fn unregistering_a_non_holder_keeps_the_reservation() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::EXCLUSIVE_ACCESS_RO);
        let e = out(&mut r, &b(), out_sa::REGISTER, 0, B_KEY, 0).unwrap();
        assert_eq!(e, PrEffects::default());
        assert_eq!(read_res(&r), Some((A_KEY, pr_type::EXCLUSIVE_ACCESS_RO)));
    }

    #[test]
    fn all_registrants_reservation_lasts_until_the_last_registrant_leaves() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE_AR);
        let e = out(&mut r, &a(), out_sa::REGISTER, 0, A_KEY, 0).unwrap();
        assert_eq!(e, PrEffects::default());
        assert_eq!(read_res(&r), Some((0, pr_type::WRITE_EXCLUSIVE_AR)));
        // b still holds it.
        assert_eq!(r.check(&write10(), &b()), Ok(()));
        assert_eq!(r.check(&write10(), &a()), Err(Failure::ReservationConflict));
        out(&mut r, &b(), out_sa::REGISTER, 0, B_KEY, 0).unwrap();
        assert_eq!(read_res(&r), None);
        assert!(!r.is_active());
    }

    #[test]
    fn holder_changing_its_key_keeps_the_reservation_under_the_new_key() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE);
        out(&mut r, &a(), out_sa::REGISTER, 0, A_KEY, C_KEY).unwrap();
        assert_eq!(read_res(&r), Some((C_KEY, pr_type::WRITE_EXCLUSIVE)));
    }

    // ---- RESERVE ----

    #[test]
    fn reserve_needs_a_registration_with_the_right_key() {
        let mut r = Reservations::new();
        assert_eq!(
            out(&mut r, &a(), out_sa::RESERVE, pr_type::WRITE_EXCLUSIVE, 0, 0),
            Err(Failure::ReservationConflict)
        );
        register(&mut r, &a(), A_KEY);
        assert_eq!(
            out(&mut r, &a(), out_sa::RESERVE, pr_type::WRITE_EXCLUSIVE, B_KEY, 0),
            Err(Failure::ReservationConflict)
        );
        assert_eq!(read_res(&r), None);
    }

    #[test]
    fn reserve_and_read_reservation() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        let e = out(&mut r, &a(), out_sa::RESERVE, pr_type::EXCLUSIVE_ACCESS, A_KEY, 0).unwrap();
        assert_eq!(e, PrEffects::default());
        assert!(r.is_active());
        let d = r.pr_in(&in_cdb(in_sa::READ_RESERVATION), &b()).unwrap();
        let mut expect = vec![0, 0, 0, 1, 0, 0, 0, 16];
        expect.extend_from_slice(&A_KEY.to_be_bytes());
        expect.extend_from_slice(&[0, 0, 0, 0, 0, pr_type::EXCLUSIVE_ACCESS, 0, 0]);
        assert_eq!(d, expect);
        // RESERVE does not count in the generation.
        assert_eq!(read_keys(&r).0, 1);
    }

    #[test]
    fn reserve_again_same_type_is_good_other_type_conflicts() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE);
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE);
        assert_eq!(
            out(&mut r, &a(), out_sa::RESERVE, pr_type::EXCLUSIVE_ACCESS, A_KEY, 0),
            Err(Failure::ReservationConflict)
        );
        assert_eq!(read_res(&r), Some((A_KEY, pr_type::WRITE_EXCLUSIVE)));
    }

    #[test]
    fn reserve_by_another_registrant_conflicts() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE_RO);
        for t in [pr_type::WRITE_EXCLUSIVE_RO, pr_type::WRITE_EXCLUSIVE] {
            assert_eq!(out(&mut r, &b(), out_sa::RESERVE, t, B_KEY, 0), Err(Failure::ReservationConflict));
        }
    }

    #[test]
    fn all_registrants_reserve_is_shared() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::EXCLUSIVE_ACCESS_AR);
        // Every registrant holds it: b may repeat it, not change its type.
        reserve(&mut r, &b(), B_KEY, pr_type::EXCLUSIVE_ACCESS_AR);
        assert_eq!(
            out(&mut r, &b(), out_sa::RESERVE, pr_type::WRITE_EXCLUSIVE_AR, B_KEY, 0),
            Err(Failure::ReservationConflict)
        );
        assert_eq!(read_res(&r), Some((0, pr_type::EXCLUSIVE_ACCESS_AR)), "AR reservations report key 0");
    }

    #[test]
    fn reserve_refuses_bad_type_and_scope() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        for t in [0u8, 2, 4, 9, 0xF] {
            let e = r.pr_out(&out_cdb(out_sa::RESERVE, 0, t, 24), &params(A_KEY, 0, 0), &a()).unwrap_err();
            assert_cdb_field(e, 2, Some(3));
        }
        let e = r.pr_out(&out_cdb(out_sa::RESERVE, 1, 1, 24), &params(A_KEY, 0, 0), &a()).unwrap_err();
        assert_cdb_field(e, 2, Some(7));
        assert_eq!(read_res(&r), None);
    }

    #[test]
    fn scope_and_type_are_ignored_by_register_and_clear() {
        let mut r = Reservations::new();
        r.pr_out(&out_cdb(out_sa::REGISTER, 2, 0xF, 24), &params(0, A_KEY, 0), &a()).unwrap();
        r.pr_out(&out_cdb(out_sa::CLEAR, 2, 0xF, 24), &params(A_KEY, 0, 0), &a()).unwrap();
        assert_eq!(read_keys(&r), (2, vec![]));
    }

    // ---- RELEASE ----

    #[test]
    fn release_without_reservation_or_by_non_holder_is_good_and_does_nothing() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        assert_eq!(out(&mut r, &a(), out_sa::RELEASE, pr_type::WRITE_EXCLUSIVE, A_KEY, 0), Ok(PrEffects::default()));
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE);
        // Even a mismatched type from a non-holder is no error.
        assert_eq!(out(&mut r, &b(), out_sa::RELEASE, pr_type::EXCLUSIVE_ACCESS, B_KEY, 0), Ok(PrEffects::default()));
        assert_eq!(read_res(&r), Some((A_KEY, pr_type::WRITE_EXCLUSIVE)));
    }

    #[test]
    fn release_needs_registration_and_key() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE);
        assert_eq!(
            out(&mut r, &b(), out_sa::RELEASE, pr_type::WRITE_EXCLUSIVE, 0, 0),
            Err(Failure::ReservationConflict)
        );
        assert_eq!(
            out(&mut r, &a(), out_sa::RELEASE, pr_type::WRITE_EXCLUSIVE, B_KEY, 0),
            Err(Failure::ReservationConflict)
        );
        assert!(read_res(&r).is_some());
    }

    #[test]
    fn release_with_wrong_type_is_invalid_release() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE);
        for t in [pr_type::EXCLUSIVE_ACCESS, 0, 2] {
            let s = sense(out(&mut r, &a(), out_sa::RELEASE, t, A_KEY, 0).unwrap_err());
            assert_eq!(s.key, key::ILLEGAL_REQUEST);
            assert_eq!((s.asc, s.ascq), (0x26, 0x04));
            assert_eq!(s.field, None);
        }
        assert_eq!(read_res(&r), Some((A_KEY, pr_type::WRITE_EXCLUSIVE)));
    }

    #[test]
    fn release_of_exclusive_types_gives_no_ua() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::EXCLUSIVE_ACCESS);
        let e = out(&mut r, &a(), out_sa::RELEASE, pr_type::EXCLUSIVE_ACCESS, A_KEY, 0).unwrap();
        assert_eq!(e, PrEffects::default());
        assert_eq!(read_res(&r), None);
        assert!(!r.is_active());
        assert_eq!(read_keys(&r), (2, vec![A_KEY, B_KEY]), "RELEASE keeps registrations and generation");
    }

    #[test]
    fn release_of_registrant_types_tells_the_other_registrants() {
        for t in [5, 6, 7, 8] {
            let mut r = Reservations::new();
            register(&mut r, &a(), A_KEY);
            register(&mut r, &b(), B_KEY);
            register(&mut r, &c(), C_KEY);
            reserve(&mut r, &a(), A_KEY, t);
            // For all-registrants types any registrant may release; use b for those.
            let (who, k) = if all_registrants_type(t) { (b(), B_KEY) } else { (a(), A_KEY) };
            let e = out(&mut r, &who, out_sa::RELEASE, t, k, 0).unwrap();
            let mut expect: Vec<_> =
                [a(), b(), c()].into_iter().filter(|n| *n != who).map(|n| (n, asc::RESERVATIONS_RELEASED)).collect();
            expect.sort_by(|x, y| x.0.initiator.cmp(&y.0.initiator));
            assert_eq!(e.unit_attentions, expect, "type {t}");
            assert_eq!(read_res(&r), None);
            // d is not registered: no UA for it.
            assert!(e.unit_attentions.iter().all(|(n, _)| *n != d()));
        }
    }

    // ---- CLEAR ----

    #[test]
    fn clear_removes_everything_and_tells_the_others() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        register(&mut r, &c(), C_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::EXCLUSIVE_ACCESS);
        let e = out(&mut r, &b(), out_sa::CLEAR, 0, B_KEY, 0).unwrap();
        assert_eq!(e.unit_attentions, vec![(a(), asc::RESERVATIONS_PREEMPTED), (c(), asc::RESERVATIONS_PREEMPTED)]);
        assert!(e.aborted.is_empty());
        assert_eq!(read_keys(&r), (4, vec![]));
        assert_eq!(read_res(&r), None);
        assert!(!r.is_active());
    }

    #[test]
    fn clear_needs_registration_and_key() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        assert_eq!(out(&mut r, &b(), out_sa::CLEAR, 0, 0, 0), Err(Failure::ReservationConflict));
        assert_eq!(out(&mut r, &a(), out_sa::CLEAR, 0, B_KEY, 0), Err(Failure::ReservationConflict));
        assert_eq!(read_keys(&r), (1, vec![A_KEY]));
    }

    // ---- PREEMPT / PREEMPT AND ABORT ----

    #[test]
    fn preempt_without_reservation_removes_registrations() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        register(&mut r, &c(), B_KEY);
        let e = out(&mut r, &a(), out_sa::PREEMPT, pr_type::WRITE_EXCLUSIVE, A_KEY, B_KEY).unwrap();
        assert_eq!(e.unit_attentions, vec![(b(), asc::REGISTRATIONS_PREEMPTED), (c(), asc::REGISTRATIONS_PREEMPTED)]);
        assert!(e.aborted.is_empty(), "plain PREEMPT aborts nothing");
        assert_eq!(read_keys(&r), (4, vec![A_KEY]));
        assert_eq!(read_res(&r), None, "no reservation is created");
    }

    #[test]
    fn preempt_errors() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        // Unregistered or wrong key.
        assert_eq!(
            out(&mut r, &b(), out_sa::PREEMPT, pr_type::WRITE_EXCLUSIVE, 0, A_KEY),
            Err(Failure::ReservationConflict)
        );
        assert_eq!(
            out(&mut r, &a(), out_sa::PREEMPT, pr_type::WRITE_EXCLUSIVE, B_KEY, A_KEY),
            Err(Failure::ReservationConflict)
        );
        // A key nobody holds.
        assert_eq!(
            out(&mut r, &a(), out_sa::PREEMPT, pr_type::WRITE_EXCLUSIVE, A_KEY, C_KEY),
            Err(Failure::ReservationConflict)
        );
        // Zero names nobody.
        let e = out(&mut r, &a(), out_sa::PREEMPT, pr_type::WRITE_EXCLUSIVE, A_KEY, 0).unwrap_err();
        assert_param_field(e, 8, None);
        // Bad type.
        let e = out(&mut r, &a(), out_sa::PREEMPT_AND_ABORT, 2, A_KEY, A_KEY).unwrap_err();
        assert_cdb_field(e, 2, Some(3));
        // Bad scope.
        let e = r.pr_out(&out_cdb(out_sa::PREEMPT, 1, 1, 24), &params(A_KEY, A_KEY, 0), &a()).unwrap_err();
        assert_cdb_field(e, 2, Some(7));
        assert_eq!(read_keys(&r), (1, vec![A_KEY]));
    }

    #[test]
    fn preempt_zero_key_against_a_single_holder_reservation_is_invalid() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE);
        let e = out(&mut r, &b(), out_sa::PREEMPT, pr_type::WRITE_EXCLUSIVE, B_KEY, 0).unwrap_err();
        assert_param_field(e, 8, None);
    }

    #[test]
    fn preempt_the_holder_moves_the_reservation() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        register(&mut r, &c(), C_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE);
        // Same type: a loses its registration, c is not told anything.
        let e = out(&mut r, &b(), out_sa::PREEMPT, pr_type::WRITE_EXCLUSIVE, B_KEY, A_KEY).unwrap();
        assert_eq!(e.unit_attentions, vec![(a(), asc::REGISTRATIONS_PREEMPTED)]);
        assert_eq!(read_res(&r), Some((B_KEY, pr_type::WRITE_EXCLUSIVE)));
        assert_eq!(read_keys(&r), (4, vec![B_KEY, C_KEY]));
        assert_eq!(r.check(&write10(), &b()), Ok(()));
        assert_eq!(r.check(&write10(), &a()), Err(Failure::ReservationConflict));
    }

    #[test]
    fn preempt_the_holder_with_a_new_type_releases_for_the_others() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        register(&mut r, &c(), C_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE);
        let e = out(&mut r, &b(), out_sa::PREEMPT, pr_type::EXCLUSIVE_ACCESS, B_KEY, A_KEY).unwrap();
        assert_eq!(e.unit_attentions, vec![(a(), asc::REGISTRATIONS_PREEMPTED), (c(), asc::RESERVATIONS_RELEASED)]);
        assert_eq!(read_res(&r), Some((B_KEY, pr_type::EXCLUSIVE_ACCESS)));
    }

    #[test]
    fn holder_preempting_its_own_key_changes_type_and_drops_key_sharers() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), A_KEY);
        register(&mut r, &c(), C_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE);
        let e = out(&mut r, &a(), out_sa::PREEMPT, pr_type::EXCLUSIVE_ACCESS_RO, A_KEY, A_KEY).unwrap();
        assert_eq!(e.unit_attentions, vec![(b(), asc::REGISTRATIONS_PREEMPTED), (c(), asc::RESERVATIONS_RELEASED)]);
        assert_eq!(read_keys(&r).1, vec![A_KEY, C_KEY]);
        assert_eq!(read_res(&r), Some((A_KEY, pr_type::EXCLUSIVE_ACCESS_RO)));
    }

    #[test]
    fn preempt_a_non_holder_key_leaves_the_reservation() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        register(&mut r, &c(), C_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::EXCLUSIVE_ACCESS_RO);
        let e = out(&mut r, &b(), out_sa::PREEMPT_AND_ABORT, pr_type::WRITE_EXCLUSIVE, B_KEY, C_KEY).unwrap();
        assert_eq!(e.unit_attentions, vec![(c(), asc::REGISTRATIONS_PREEMPTED)]);
        assert_eq!(e.aborted, vec![c()]);
        assert_eq!(read_res(&r), Some((A_KEY, pr_type::EXCLUSIVE_ACCESS_RO)));
        assert_eq!(read_keys(&r).1, vec![A_KEY, B_KEY]);
    }

    #[test]
    fn preempt_all_registrants_with_zero_key_takes_over() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        register(&mut r, &c(), C_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE_AR);
        let e = out(&mut r, &c(), out_sa::PREEMPT_AND_ABORT, pr_type::EXCLUSIVE_ACCESS, C_KEY, 0).unwrap();
        assert_eq!(e.unit_attentions, vec![(a(), asc::REGISTRATIONS_PREEMPTED), (b(), asc::REGISTRATIONS_PREEMPTED)]);
        assert_eq!(e.aborted, vec![a(), b()]);
        assert_eq!(read_keys(&r), (4, vec![C_KEY]));
        assert_eq!(read_res(&r), Some((C_KEY, pr_type::EXCLUSIVE_ACCESS)));
        assert_eq!(r.check(&read10(), &a()), Err(Failure::ReservationConflict));
    }

    #[test]
    fn preempt_all_registrants_with_a_key_removes_only_that_key() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::EXCLUSIVE_ACCESS_AR);
        let e = out(&mut r, &a(), out_sa::PREEMPT, pr_type::EXCLUSIVE_ACCESS_AR, A_KEY, B_KEY).unwrap();
        assert_eq!(e.unit_attentions, vec![(b(), asc::REGISTRATIONS_PREEMPTED)]);
        assert_eq!(read_res(&r), Some((0, pr_type::EXCLUSIVE_ACCESS_AR)));
        assert_eq!(r.check(&read10(), &b()), Err(Failure::ReservationConflict));
    }

    #[test]
    fn preempt_own_key_as_last_all_registrant_releases() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE_AR);
        let e = out(&mut r, &a(), out_sa::PREEMPT_AND_ABORT, pr_type::WRITE_EXCLUSIVE_AR, A_KEY, A_KEY).unwrap();
        assert_eq!(e, PrEffects::default(), "the issuing nexus gets neither a UA nor an abort");
        assert_eq!(read_keys(&r).1, Vec::<u64>::new());
        assert_eq!(read_res(&r), None);
        assert!(!r.is_active());
    }

    #[test]
    fn preempt_and_abort_aborts_the_preempted_holder() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::EXCLUSIVE_ACCESS);
        let e = out(&mut r, &b(), out_sa::PREEMPT_AND_ABORT, pr_type::EXCLUSIVE_ACCESS, B_KEY, A_KEY).unwrap();
        assert_eq!(e.aborted, vec![a()]);
        assert_eq!(e.unit_attentions, vec![(a(), asc::REGISTRATIONS_PREEMPTED)]);
        assert_eq!(read_res(&r), Some((B_KEY, pr_type::EXCLUSIVE_ACCESS)));
    }

    // ---- generation ----

    #[test]
    fn generation_counts_register_clear_preempt_only() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY); // 1
        register(&mut r, &b(), B_KEY); // 2
        out(&mut r, &b(), out_sa::REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0, C_KEY).unwrap(); // 3
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE);
        out(&mut r, &a(), out_sa::RELEASE, pr_type::WRITE_EXCLUSIVE, A_KEY, 0).unwrap();
        assert_eq!(r.generation(), 3);
        out(&mut r, &a(), out_sa::PREEMPT, pr_type::WRITE_EXCLUSIVE, A_KEY, C_KEY).unwrap(); // 4
        out(&mut r, &a(), out_sa::CLEAR, 0, A_KEY, 0).unwrap(); // 5
                                                                // Failures do not count.
        let _ = out(&mut r, &a(), out_sa::CLEAR, 0, A_KEY, 0);
        let _ = out(&mut r, &a(), out_sa::REGISTER, 0, 1, 2);
        let _ = r.pr_out(&out_cdb(out_sa::REGISTER, 0, 0, 23), &params(0, 1, 0), &a());
        assert_eq!(read_keys(&r).0, 5);
        assert!(r.pr_in(&in_cdb(in_sa::READ_FULL_STATUS), &a()).is_ok());
        assert_eq!(r.generation(), 5, "PR IN does not count");
    }

    #[test]
    fn generation_wraps() {
        let mut r = Reservations { generation: u32::MAX, ..Reservations::default() };
        register(&mut r, &a(), A_KEY);
        assert_eq!(r.generation(), 0);
    }

    // ---- PR OUT CDB and parameter list checks ----

    #[test]
    fn register_and_move_and_reserved_service_actions_are_refused() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        for sa in [out_sa::REGISTER_AND_MOVE, 0x08, 0x1F] {
            let e = r.pr_out(&out_cdb(sa, 0, 1, 24), &params(A_KEY, B_KEY, 0), &a()).unwrap_err();
            assert_cdb_field(e, 1, Some(4));
        }
    }

    #[test]
    fn parameter_list_length_must_be_24() {
        let mut r = Reservations::new();
        for len in [0u32, 8, 23, 25, 48] {
            let e = r.pr_out(&out_cdb(out_sa::REGISTER, 0, 0, len), &params(0, A_KEY, 0), &a()).unwrap_err();
            assert_param_len(e);
        }
        // Fewer bytes arrived than the CDB announced.
        let e = r.pr_out(&out_cdb(out_sa::REGISTER, 0, 0, 24), &params(0, A_KEY, 0)[..20], &a()).unwrap_err();
        assert_param_len(e);
        assert_eq!(read_keys(&r), (0, vec![]));
    }

    #[test]
    fn spec_i_pt_all_tg_pt_and_aptpl_are_refused() {
        let mut r = Reservations::new();
        let cdb = out_cdb(out_sa::REGISTER, 0, 0, 24);
        assert_param_field(r.pr_out(&cdb, &params(0, A_KEY, SPEC_I_PT), &a()).unwrap_err(), 20, Some(3));
        // SPEC_I_PT with a longer list is still the unsupported bit, not a length error.
        let mut long = params(0, A_KEY, SPEC_I_PT).to_vec();
        long.extend_from_slice(&[0; 28]);
        let e = r.pr_out(&out_cdb(out_sa::REGISTER, 0, 0, 52), &long, &a()).unwrap_err();
        assert_param_field(e, 20, Some(3));
        assert_param_field(r.pr_out(&cdb, &params(0, A_KEY, ALL_TG_PT), &a()).unwrap_err(), 20, Some(2));
        let ignore = out_cdb(out_sa::REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0, 24);
        assert_param_field(r.pr_out(&ignore, &params(0, A_KEY, APTPL), &a()).unwrap_err(), 20, Some(0));
        assert_eq!(read_keys(&r), (0, vec![]));
        // APTPL and ALL_TG_PT mean nothing to the other service actions.
        register(&mut r, &a(), A_KEY);
        let res = out_cdb(out_sa::RESERVE, 0, pr_type::WRITE_EXCLUSIVE, 24);
        r.pr_out(&res, &params(A_KEY, 0, APTPL | ALL_TG_PT), &a()).unwrap();
        assert!(r.is_active());
    }

    #[test]
    fn short_cdb_is_refused() {
        let mut r = Reservations::new();
        let cdb = out_cdb(out_sa::REGISTER, 0, 0, 24);
        assert_cdb_field(r.pr_out(&cdb[..6], &params(0, A_KEY, 0), &a()).unwrap_err(), 0, None);
        assert_cdb_field(r.pr_in(&in_cdb(0)[..6], &a()).unwrap_err(), 0, None);
    }

    // ---- PR IN ----

    #[test]
    fn pr_in_unknown_service_action() {
        let r = Reservations::new();
        for sa in [0x04, 0x1F] {
            assert_cdb_field(r.pr_in(&in_cdb(sa), &a()).unwrap_err(), 1, Some(4));
        }
    }

    #[test]
    fn report_capabilities() {
        let r = Reservations::new();
        let d = r.pr_in(&in_cdb(in_sa::REPORT_CAPABILITIES), &a()).unwrap();
        // LENGTH 8; CRH, SIP_C, ATP_C, PTPL_C zero; TMV; all six types; EX_AC_AR.
        assert_eq!(d, vec![0, 8, 0x00, 0x80, 0xEA, 0x01, 0, 0]);
    }

    #[test]
    fn read_full_status_bytes() {
        let mut r = Reservations::new();
        let short = Nexus { initiator: "iqn.x".into(), target_port: 3 };
        let port = Nexus { initiator: "iqn.2024-01.org.example:host1,i,0x23d000000001".into(), target_port: 0x0102 };
        register(&mut r, &short, A_KEY);
        register(&mut r, &port, B_KEY);
        reserve(&mut r, &port, B_KEY, pr_type::EXCLUSIVE_ACCESS_RO);
        let d = r.pr_in(&in_cdb(in_sa::READ_FULL_STATUS), &a()).unwrap();

        // First descriptor: not the holder; "iqn.x" padded to the minimum 20 bytes.
        let mut d1 = Vec::new();
        d1.extend_from_slice(&A_KEY.to_be_bytes());
        d1.extend_from_slice(&[0, 0, 0, 0, 0x00, 0x00, 0, 0, 0, 0, 0, 3, 0, 0, 0, 24]);
        d1.extend_from_slice(&[0x05, 0, 0, 20]);
        d1.extend_from_slice(b"iqn.x");
        d1.extend_from_slice(&[0; 15]);
        // Second: the holder; initiator port name with ISID, format 01b.
        let name = port.initiator.as_bytes();
        assert_eq!(name.len(), 46);
        let padded = 48; // 46 + NUL, rounded up to a multiple of 4
        let mut d2 = Vec::new();
        d2.extend_from_slice(&B_KEY.to_be_bytes());
        d2.extend_from_slice(&[0, 0, 0, 0, 0x01, pr_type::EXCLUSIVE_ACCESS_RO, 0, 0, 0, 0, 0x01, 0x02]);
        d2.extend_from_slice(&((4 + padded) as u32).to_be_bytes());
        d2.extend_from_slice(&[0x45, 0, 0, padded as u8]);
        d2.extend_from_slice(name);
        d2.extend_from_slice(&[0; 2]);

        let mut expect = Vec::new();
        expect.extend_from_slice(&2u32.to_be_bytes());
        expect.extend_from_slice(&((d1.len() + d2.len()) as u32).to_be_bytes());
        expect.extend_from_slice(&d1);
        expect.extend_from_slice(&d2);
        assert_eq!(d, expect);
    }

    #[test]
    fn read_full_status_marks_every_all_registrant_as_holder() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        register(&mut r, &b(), B_KEY);
        reserve(&mut r, &b(), B_KEY, pr_type::WRITE_EXCLUSIVE_AR);
        let d = r.pr_in(&in_cdb(in_sa::READ_FULL_STATUS), &a()).unwrap();
        let mut at = 8;
        let mut seen = 0;
        while at < d.len() {
            assert_eq!(d[at + 12], 0x01, "R_HOLDER");
            assert_eq!(d[at + 13], pr_type::WRITE_EXCLUSIVE_AR);
            at += 24 + be32(&d, at + 20) as usize;
            seen += 1;
        }
        assert_eq!((seen, at), (2, d.len()));
    }

    #[test]
    fn transport_id_padding() {
        // NUL always fits: a 19-byte name needs 20, a 20-byte name 24.
        assert_eq!(transport_id(&"x".repeat(19)).len(), 24);
        assert_eq!(transport_id(&"x".repeat(20)).len(), 28);
        let id = transport_id(&"x".repeat(23));
        assert_eq!((id.len(), be16(&id, 2)), (28, 24));
        assert_eq!(id[27], 0);
        let long = transport_id(&"y".repeat(400));
        assert_eq!(long.len(), 256);
        assert_eq!(long[255], 0);
    }

    // ---- the conflict table ----

    /// Outcome of a READ(10) and a WRITE(10) from the holder, a registered non-holder and an
    /// unregistered nexus, for each type.
    #[test]
    fn conflict_table_by_type() {
        use pr_type::*;
        let ok = Ok(());
        let no = Err(Failure::ReservationConflict);
        // (type, registered (read, write), unregistered (read, write))
        let table = [
            (WRITE_EXCLUSIVE, (&ok, &no), (&ok, &no)),
            (EXCLUSIVE_ACCESS, (&no, &no), (&no, &no)),
            (WRITE_EXCLUSIVE_RO, (&ok, &ok), (&ok, &no)),
            (EXCLUSIVE_ACCESS_RO, (&ok, &ok), (&no, &no)),
            (WRITE_EXCLUSIVE_AR, (&ok, &ok), (&ok, &no)),
            (EXCLUSIVE_ACCESS_AR, (&ok, &ok), (&no, &no)),
        ];
        for (t, reg, unreg) in table {
            let mut r = Reservations::new();
            register(&mut r, &a(), A_KEY);
            register(&mut r, &b(), B_KEY);
            reserve(&mut r, &a(), A_KEY, t);
            assert!(r.is_active());
            assert_eq!(r.check(&read10(), &a()), ok, "holder read, type {t}");
            assert_eq!(r.check(&write10(), &a()), ok, "holder write, type {t}");
            assert_eq!(&r.check(&read10(), &b()), reg.0, "registered read, type {t}");
            assert_eq!(&r.check(&write10(), &b()), reg.1, "registered write, type {t}");
            assert_eq!(&r.check(&read10(), &c()), unreg.0, "unregistered read, type {t}");
            assert_eq!(&r.check(&write10(), &c()), unreg.1, "unregistered write, type {t}");
        }
    }

    #[test]
    fn conflict_classes_of_commands() {
        use op::*;
        let mut we = Reservations::new();
        register(&mut we, &a(), A_KEY);
        reserve(&mut we, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE);
        let mut ea = Reservations::new();
        register(&mut ea, &a(), A_KEY);
        reserve(&mut ea, &a(), A_KEY, pr_type::EXCLUSIVE_ACCESS);
        let conflict = Err(Failure::ReservationConflict);
        let mut sai_cap = rw(SERVICE_ACTION_IN_16);
        sai_cap[1] = SAI_READ_CAPACITY_16;
        let mut sai_lba = rw(SERVICE_ACTION_IN_16);
        sai_lba[1] = SAI_GET_LBA_STATUS;
        let mut rsoc = rw(MAINTENANCE_IN);
        rsoc[1] = MI_REPORT_SUPPORTED_OPCODES;
        let mut start = rw(START_STOP_UNIT);
        start[4] = 0x01;
        let mut stop = rw(START_STOP_UNIT);
        stop[4] = 0x00;
        let mut power = rw(START_STOP_UNIT);
        power[4] = 0x31;

        let any = [
            rw(INQUIRY),
            rw(REQUEST_SENSE),
            rw(REPORT_LUNS),
            rw(TEST_UNIT_READY),
            rw(READ_CAPACITY_10),
            sai_cap,
            start,
            rw(PERSISTENT_RESERVE_IN),
            rw(PERSISTENT_RESERVE_OUT),
            rw(RESERVE_6),
            rw(RELEASE_10),
        ];
        let read = [
            rw(READ_6),
            rw(READ_10),
            rw(READ_12),
            rw(READ_16),
            rw(VERIFY_10),
            rw(VERIFY_16),
            rw(MODE_SENSE_6),
            rw(MODE_SENSE_10),
            sai_lba,
            rsoc,
        ];
        let write = [
            rw(WRITE_6),
            rw(WRITE_10),
            rw(WRITE_12),
            rw(WRITE_16),
            rw(WRITE_AND_VERIFY_10),
            rw(WRITE_AND_VERIFY_16),
            rw(WRITE_SAME_10),
            rw(WRITE_SAME_16),
            rw(UNMAP),
            rw(COMPARE_AND_WRITE),
            rw(SYNCHRONIZE_CACHE_10),
            rw(SYNCHRONIZE_CACHE_16),
            rw(MODE_SELECT_6),
            rw(MODE_SELECT_10),
            stop,
            power,
            rw(0xC0), // unknown: conflict by default
        ];
        for cdb in &any {
            assert_eq!(ea.check(cdb, &c()), Ok(()), "{:#x} through EA", cdb[0]);
        }
        for cdb in &read {
            assert_eq!(we.check(cdb, &c()), Ok(()), "{:#x} through WE", cdb[0]);
            assert_eq!(ea.check(cdb, &c()), conflict, "{:#x} through EA", cdb[0]);
        }
        for cdb in &write {
            assert_eq!(we.check(cdb, &c()), conflict, "{:#x} through WE", cdb[0]);
            assert_eq!(ea.check(cdb, &a()), Ok(()), "{:#x} from the holder", cdb[0]);
        }
        assert_eq!(ea.check(&[], &c()), Ok(()), "an empty CDB is not judged here");
    }

    // ---- SPC-2 RESERVE / RELEASE ----

    #[test]
    fn spc2_reserve_and_release() {
        let mut r = Reservations::new();
        r.reserve(&spc2(op::RESERVE_6), &a()).unwrap();
        assert!(r.is_active());
        // The holder may repeat it; another nexus conflicts.
        r.reserve(&spc2(op::RESERVE_10), &a()).unwrap();
        assert_eq!(r.reserve(&spc2(op::RESERVE_6), &b()), Err(Failure::ReservationConflict));
        assert_eq!(r.reserve(&spc2(op::RESERVE_10), &b()), Err(Failure::ReservationConflict));
        // A non-holder's RELEASE is a no-op.
        r.release(&spc2(op::RELEASE_6), &b()).unwrap();
        assert!(r.is_active());
        r.release(&spc2(op::RELEASE_10), &a()).unwrap();
        assert!(!r.is_active());
        r.reserve(&spc2(op::RESERVE_10), &b()).unwrap();
        assert_eq!(r.check(&read10(), &a()), Err(Failure::ReservationConflict));
    }

    #[test]
    fn spc2_conflicts_for_other_nexuses() {
        use op::*;
        let mut r = Reservations::new();
        r.reserve(&spc2(RESERVE_6), &a()).unwrap();
        let mut rsoc = rw(MAINTENANCE_IN);
        rsoc[1] = MI_REPORT_SUPPORTED_OPCODES;
        for cdb in [rw(INQUIRY), rw(REQUEST_SENSE), rw(REPORT_LUNS), rsoc, rw(RELEASE_6), rw(RELEASE_10)] {
            assert_eq!(r.check(&cdb, &b()), Ok(()), "{:#x}", cdb[0]);
        }
        for cdb in
            [read10(), write10(), rw(TEST_UNIT_READY), rw(READ_CAPACITY_10), rw(MODE_SENSE_6), rw(MAINTENANCE_IN)]
        {
            assert_eq!(r.check(&cdb, &b()), Err(Failure::ReservationConflict), "{:#x}", cdb[0]);
            assert_eq!(r.check(&cdb, &a()), Ok(()), "{:#x} from the holder", cdb[0]);
        }
    }

    #[test]
    fn spc2_reservation_makes_pr_commands_conflict_for_everyone() {
        let mut r = Reservations::new();
        r.reserve(&spc2(op::RESERVE_6), &a()).unwrap();
        for n in [a(), b()] {
            assert_eq!(r.pr_in(&in_cdb(in_sa::READ_KEYS), &n), Err(Failure::ReservationConflict));
            assert_eq!(out(&mut r, &n, out_sa::REGISTER, 0, 0, A_KEY), Err(Failure::ReservationConflict));
        }
        r.release(&spc2(op::RELEASE_6), &a()).unwrap();
        register(&mut r, &a(), A_KEY);
    }

    #[test]
    fn registrations_make_spc2_commands_conflict() {
        let mut r = Reservations::new();
        register(&mut r, &a(), A_KEY);
        for n in [a(), b()] {
            assert_eq!(r.reserve(&spc2(op::RESERVE_6), &n), Err(Failure::ReservationConflict));
            assert_eq!(r.release(&spc2(op::RELEASE_10), &n), Err(Failure::ReservationConflict));
        }
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE);
        assert_eq!(r.reserve(&spc2(op::RESERVE_10), &a()), Err(Failure::ReservationConflict));
        out(&mut r, &a(), out_sa::CLEAR, 0, A_KEY, 0).unwrap();
        r.reserve(&spc2(op::RESERVE_10), &a()).unwrap();
    }

    #[test]
    fn spc2_cdb_fields_are_checked() {
        let mut r = Reservations::new();
        let with = |opcode: u8, at: usize, v: u8| {
            let mut cdb = spc2(opcode);
            cdb[at] = v;
            cdb
        };
        for opcode in [op::RESERVE_6, op::RESERVE_10, op::RELEASE_6, op::RELEASE_10] {
            assert_cdb_field(r.reserve(&with(opcode, 1, 0x10), &a()).unwrap_err(), 1, Some(4));
            assert_cdb_field(r.release(&with(opcode, 1, 0x10), &a()).unwrap_err(), 1, Some(4));
            assert_cdb_field(r.reserve(&with(opcode, 1, 0x01), &a()).unwrap_err(), 1, Some(0));
        }
        for opcode in [op::RESERVE_10, op::RELEASE_10] {
            assert_cdb_field(r.reserve(&with(opcode, 1, 0x02), &a()).unwrap_err(), 1, Some(1));
            assert_cdb_field(r.release(&with(opcode, 1, 0x02), &a()).unwrap_err(), 1, Some(1));
            assert_cdb_field(r.reserve(&with(opcode, 8, 0x08), &a()).unwrap_err(), 7, None);
        }
        assert_cdb_field(r.reserve(&with(op::RESERVE_6, 4, 0x08), &a()).unwrap_err(), 3, None);
        assert_cdb_field(r.reserve(&spc2(op::RESERVE_10)[..6], &a()).unwrap_err(), 0, None);
        assert!(!r.is_active());
        // Bits RESERVE(6) does not define as 3RDPTY/EXTENT are left alone (SCSI-1 LUN field).
        r.reserve(&with(op::RESERVE_6, 1, 0xE0), &a()).unwrap();
        assert!(r.is_active());
    }

    #[test]
    fn lun_reset_drops_spc2_only() {
        let mut r = Reservations::new();
        r.reserve(&spc2(op::RESERVE_6), &a()).unwrap();
        r.lun_reset();
        assert!(!r.is_active());
        register(&mut r, &a(), A_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::EXCLUSIVE_ACCESS);
        r.lun_reset();
        assert!(r.is_active());
        assert_eq!(read_res(&r), Some((A_KEY, pr_type::EXCLUSIVE_ACCESS)));
        assert_eq!(read_keys(&r), (1, vec![A_KEY]));
    }

    #[test]
    fn nexus_loss_drops_only_that_nexus_spc2_reservation() {
        let mut r = Reservations::new();
        r.reserve(&spc2(op::RESERVE_6), &a()).unwrap();
        r.nexus_lost(&b());
        assert!(r.is_active());
        r.nexus_lost(&a());
        assert!(!r.is_active());
        // Registrations and persistent reservations survive it.
        register(&mut r, &a(), A_KEY);
        reserve(&mut r, &a(), A_KEY, pr_type::WRITE_EXCLUSIVE);
        r.nexus_lost(&a());
        assert_eq!(read_res(&r), Some((A_KEY, pr_type::WRITE_EXCLUSIVE)));
    }
}

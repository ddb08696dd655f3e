//! NVMe reservations (NVM Express Base 2.0 §8.19; NVM Command Set 1.0 §5.2 for the I/O
//! commands' behaviour): Reservation Register, Report, Acquire and Release, and the check of
//! every other I/O command against the namespace's reservation.
//!
//! State is per namespace and per *host* (its 128-bit Host Identifier): every controller of a
//! host shares its registration, as the spec requires. It lives behind a mutex because a
//! namespace is served by queue pairs on every reactor; the data path reads one atomic
//! ("is any reservation held?") and takes the mutex only while a reservation exists.
//!
//! Not offered: Persist Through Power Loss (nothing survives a restart: CPTPL "set" is refused
//! with Invalid Field and PTPLS reads 0), reservation notification log pages, and the abort
//! half of Preempt and Abort (it preempts; the model may abort the preempted hosts' commands).

use ferry_nvme::spec::{put16, put32, put64, sc, Command, Status};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Reservation types (RTYPE, NVMe Base 2.0 Figure 563).
pub mod rtype {
    /// Write Exclusive: only the holder writes.
    pub const WRITE_EXCLUSIVE: u8 = 1;
    /// Exclusive Access: only the holder reads or writes.
    pub const EXCLUSIVE_ACCESS: u8 = 2;
    /// Write Exclusive - Registrants Only.
    pub const WRITE_EXCLUSIVE_RO: u8 = 3;
    /// Exclusive Access - Registrants Only.
    pub const EXCLUSIVE_ACCESS_RO: u8 = 4;
    /// Write Exclusive - All Registrants: every registrant is a holder.
    pub const WRITE_EXCLUSIVE_AR: u8 = 5;
    /// Exclusive Access - All Registrants: every registrant is a holder.
    pub const EXCLUSIVE_ACCESS_AR: u8 = 6;
}

/// Reservation Register actions (RREGA, CDW10 bits 2:0).
pub mod rrega {
    /// Register a key.
    pub const REGISTER: u8 = 0;
    /// Unregister.
    pub const UNREGISTER: u8 = 1;
    /// Replace the key.
    pub const REPLACE: u8 = 2;
}

/// Reservation Acquire actions (RACQA, CDW10 bits 2:0).
pub mod racqa {
    /// Acquire.
    pub const ACQUIRE: u8 = 0;
    /// Preempt.
    pub const PREEMPT: u8 = 1;
    /// Preempt and Abort.
    pub const PREEMPT_AND_ABORT: u8 = 2;
}

/// Reservation Release actions (RRELA, CDW10 bits 2:0).
pub mod rrela {
    /// Release.
    pub const RELEASE: u8 = 0;
    /// Clear (every registration and the reservation).
    pub const CLEAR: u8 = 1;
}

/// Bytes of Reservation Register data (CRKEY, NRKEY).
pub const REGISTER_DATA_LEN: usize = 16;
/// Bytes of Reservation Acquire data (CRKEY, PRKEY).
pub const ACQUIRE_DATA_LEN: usize = 16;
/// Bytes of Reservation Release data (CRKEY).
pub const RELEASE_DATA_LEN: usize = 8;
/// Most hosts registered on one namespace at once: registrations outlive their controllers,
/// so a host cycling through host identifiers must not grow the table without bound.
pub const MAX_REGISTRANTS: usize = 1024;
/// The controller id reported for every registrant: the dynamic controller model (fabrics)
/// says FFFFh (NVMe Base 2.0 Figure 586).
const DYNAMIC_CNTLID: u16 = 0xffff;

/// Which command group an I/O command is in for the reservation check (NVM Command Set 1.0
/// Figure 15 "Command Behavior in the Presence of a Reservation").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read command group: Read, Compare, Verify.
    Read,
    /// Write command group: Write, Write Zeroes, Dataset Management, Flush (as SPDK).
    Write,
}

/// One registered host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Registrant {
    hostid: [u8; 16],
    key: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Generation (GEN): bumped by every successful Register, Preempt and Clear.
    generation: u32,
    /// In registration order.
    registrants: Vec<Registrant>,
    /// The reservation: its type and the host that holds it (for All Registrants types, the
    /// one that acquired it; every registrant is a holder then).
    reservation: Option<(u8, [u8; 16])>,
}

impl State {
    fn find(&self, hostid: &[u8; 16]) -> Option<usize> {
        self.registrants.iter().position(|r| &r.hostid == hostid)
    }

    fn is_holder(&self, hostid: &[u8; 16]) -> bool {
        match self.reservation {
            Some((t, _)) if all_registrants(t) => self.find(hostid).is_some(),
            Some((_, h)) => &h == hostid,
            None => false,
        }
    }

    /// Removes registrants with `key`, but never `keep`; returns how many went.
    fn remove_by_key(&mut self, key: u64, keep: &[u8; 16]) -> usize {
        let before = self.registrants.len();
        self.registrants.retain(|r| r.key != key || &r.hostid == keep);
        before - self.registrants.len()
    }

    /// After registrations went: a reservation whose holder is gone is released, except an
    /// All Registrants one, which stays while any registrant does.
    fn fix_holder(&mut self) {
        if let Some((t, h)) = self.reservation {
            if self.find(&h).is_none() {
                self.reservation = match self.registrants.first() {
                    Some(r) if all_registrants(t) => Some((t, r.hostid)),
                    _ => None,
                };
            }
        }
    }
}

fn valid_type(t: u8) -> bool {
    (1..=6).contains(&t)
}

fn all_registrants(t: u8) -> bool {
    matches!(t, rtype::WRITE_EXCLUSIVE_AR | rtype::EXCLUSIVE_ACCESS_AR)
}

fn conflict() -> Status {
    Status::generic(sc::RESERVATION_CONFLICT).dnr()
}

fn invalid_field() -> Status {
    Status::generic(sc::INVALID_FIELD).dnr()
}

/// A namespace's reservation state.
#[derive(Debug, Default)]
pub struct Reservations {
    /// Whether a reservation is held (the data path's only look when none is).
    held: AtomicBool,
    state: Mutex<State>,
}

/// What a host sees of one registration in a Reservation Report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrantInfo {
    /// The host identifier.
    pub hostid: [u8; 16],
    /// Its reservation key.
    pub key: u64,
    /// Whether it holds the reservation.
    pub holder: bool,
}

impl Reservations {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below is complete before it can panic (none can): the data is whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, st: &State) {
        self.held.store(st.reservation.is_some(), Ordering::Release);
    }

    /// Whether `hostid` may run a command of `access` group now: Ok, or Reservation Conflict.
    #[inline]
    pub fn check(&self, hostid: &[u8; 16], access: Access) -> Result<(), Status> {
        if !self.held.load(Ordering::Acquire) {
            return Ok(());
        }
        let st = self.lock();
        let Some((t, _)) = st.reservation else { return Ok(()) };
        let allowed = match t {
            rtype::WRITE_EXCLUSIVE => access == Access::Read || st.is_holder(hostid),
            rtype::EXCLUSIVE_ACCESS => st.is_holder(hostid),
            rtype::WRITE_EXCLUSIVE_RO | rtype::WRITE_EXCLUSIVE_AR => {
                access == Access::Read || st.find(hostid).is_some()
            }
            _ => st.find(hostid).is_some(), // Exclusive Access, Registrants Only / All Registrants
        };
        if allowed {
            Ok(())
        } else {
            Err(conflict())
        }
    }

    /// Reservation Register (`cmd`'s CDW10) with its 16 bytes of data (CRKEY, NRKEY).
    pub fn register(&self, hostid: &[u8; 16], cmd: &Command, data: &[u8; REGISTER_DATA_LEN]) -> Result<(), Status> {
        let cdw10 = cmd.cdw10();
        let action = (cdw10 & 0x7) as u8;
        let iekey = cdw10 & (1 << 3) != 0;
        // CPTPL: 0 no change, 2 clear (PTPL stays off); 1 is reserved and 3 (persist) is
        // not offered.
        if matches!(cdw10 >> 30, 1 | 3) || action > rrega::REPLACE {
            return Err(invalid_field());
        }
        let crkey = u64::from_le_bytes(data[0..8].try_into().expect("8 bytes"));
        let nrkey = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
        let mut st = self.lock();
        let me = st.find(hostid);
        match action {
            rrega::REGISTER => match me {
                // Registering again with the same key is no error; another key conflicts.
                Some(i) if st.registrants[i].key == nrkey => {}
                Some(_) => return Err(conflict()),
                None => {
                    if nrkey == 0 {
                        return Err(invalid_field());
                    }
                    if st.registrants.len() >= MAX_REGISTRANTS {
                        return Err(Status::generic(sc::INTERNAL));
                    }
                    st.registrants.push(Registrant { hostid: *hostid, key: nrkey });
                }
            },
            rrega::UNREGISTER => match me {
                Some(i) if iekey || st.registrants[i].key == crkey => {
                    st.registrants.remove(i);
                    st.fix_holder();
                }
                _ => return Err(conflict()),
            },
            _ => {
                if nrkey == 0 {
                    return Err(invalid_field());
                }
                match me {
                    Some(i) if iekey || st.registrants[i].key == crkey => st.registrants[i].key = nrkey,
                    Some(_) => return Err(conflict()),
                    // Replace with IEKEY by a host not registered registers it (as SPDK).
                    None if iekey => {
                        if st.registrants.len() >= MAX_REGISTRANTS {
                            return Err(Status::generic(sc::INTERNAL));
                        }
                        st.registrants.push(Registrant { hostid: *hostid, key: nrkey });
                    }
                    None => return Err(conflict()),
                }
            }
        }
        st.generation = st.generation.wrapping_add(1);
        self.publish(&st);
        Ok(())
    }

    /// Reservation Acquire (`cmd`'s CDW10) with its 16 bytes of data (CRKEY, PRKEY).
    pub fn acquire(&self, hostid: &[u8; 16], cmd: &Command, data: &[u8; ACQUIRE_DATA_LEN]) -> Result<(), Status> {
        let cdw10 = cmd.cdw10();
        let action = (cdw10 & 0x7) as u8;
        let iekey = cdw10 & (1 << 3) != 0;
        let t = (cdw10 >> 8) as u8;
        if action > racqa::PREEMPT_AND_ABORT || !valid_type(t) {
            return Err(invalid_field());
        }
        let crkey = u64::from_le_bytes(data[0..8].try_into().expect("8 bytes"));
        let prkey = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
        let mut st = self.lock();
        match st.find(hostid) {
            Some(i) if iekey || st.registrants[i].key == crkey => {}
            _ => return Err(conflict()),
        }
        if action == racqa::ACQUIRE {
            match st.reservation {
                None => st.reservation = Some((t, *hostid)),
                // The holder acquiring again with the same type: nothing to do.
                Some((cur, _)) if cur == t && st.is_holder(hostid) => {}
                Some(_) => return Err(conflict()),
            }
            self.publish(&st);
            return Ok(());
        }
        // Preempt (and Abort: the abort of the preempted hosts' commands is the model's).
        match st.reservation {
            Some((cur, holder)) if !all_registrants(cur) => {
                let holder_key = st.find(&holder).map(|i| st.registrants[i].key);
                if holder_key == Some(prkey) {
                    // Preempting the holder (possibly itself): its key's registrants go, the
                    // preempting host holds the reservation with the type asked.
                    st.remove_by_key(prkey, hostid);
                    st.reservation = Some((t, *hostid));
                } else if prkey == 0 {
                    return Err(invalid_field());
                } else if st.remove_by_key(prkey, hostid) == 0 {
                    return Err(conflict());
                }
            }
            Some(_) => {
                if prkey == 0 {
                    // Every other registrant goes; the preempting host holds it.
                    st.registrants.retain(|r| &r.hostid == hostid);
                    st.reservation = Some((t, *hostid));
                } else if st.remove_by_key(prkey, hostid) == 0 {
                    return Err(conflict());
                }
            }
            None => {
                if st.remove_by_key(prkey, hostid) == 0 {
                    return Err(conflict());
                }
            }
        }
        st.fix_holder();
        st.generation = st.generation.wrapping_add(1);
        self.publish(&st);
        Ok(())
    }

    /// Reservation Release (`cmd`'s CDW10) with its 8 bytes of data (CRKEY).
    pub fn release(&self, hostid: &[u8; 16], cmd: &Command, data: &[u8; RELEASE_DATA_LEN]) -> Result<(), Status> {
        let cdw10 = cmd.cdw10();
        let action = (cdw10 & 0x7) as u8;
        let iekey = cdw10 & (1 << 3) != 0;
        let t = (cdw10 >> 8) as u8;
        if action > rrela::CLEAR {
            return Err(invalid_field());
        }
        let crkey = u64::from_le_bytes(*data);
        let mut st = self.lock();
        match st.find(hostid) {
            Some(i) if iekey || st.registrants[i].key == crkey => {}
            _ => return Err(conflict()),
        }
        if action == rrela::CLEAR {
            st.registrants.clear();
            st.reservation = None;
            st.generation = st.generation.wrapping_add(1);
        } else if let Some((cur, _)) = st.reservation {
            // No reservation, or a registrant that does not hold it: success, no effect.
            if st.is_holder(hostid) {
                if cur != t {
                    return Err(invalid_field());
                }
                st.reservation = None;
            }
        }
        self.publish(&st);
        Ok(())
    }

    /// The generation, the reservation type (0: none) and every registration, in
    /// registration order.
    pub fn snapshot(&self) -> (u32, u8, Vec<RegistrantInfo>) {
        let st = self.lock();
        let regs = st
            .registrants
            .iter()
            .map(|r| RegistrantInfo { hostid: r.hostid, key: r.key, holder: st.is_holder(&r.hostid) })
            .collect();
        (st.generation, st.reservation.map_or(0, |(t, _)| t), regs)
    }

    /// The Reservation Report data structure (NVMe Base 2.0 Figures 584-587), at most `limit`
    /// bytes of it: the extended one (64-byte entries, 128-bit host identifiers) when `eds`;
    /// otherwise the 24-byte entries with 64-bit host identifiers, which only hosts whose
    /// identifiers fit in 64 bits have (Host Identifier Inconsistent Format otherwise: every
    /// fabrics host has a 128-bit one, and SPDK refuses EDS=0 there likewise).
    pub fn report(&self, eds: bool, limit: usize, out: &mut Vec<u8>) -> Result<(), Status> {
        let (generation, t, regs) = self.snapshot();
        if !eds && regs.iter().any(|r| r.hostid[8..].iter().any(|&b| b != 0)) {
            return Err(Status::generic(sc::HOSTID_INCONSISTENT).dnr());
        }
        let (header, entry) = if eds { (64, 64) } else { (24, 24) };
        let full = header + entry * regs.len();
        out.clear();
        out.resize(full.min(limit), 0);
        let mut whole = vec![0u8; header + entry];
        put32(&mut whole, 0, generation);
        whole[4] = t;
        put16(&mut whole, 5, regs.len() as u16);
        // PTPLS (byte 9): 0, reservations do not persist through power loss.
        let n = header.min(out.len());
        out[..n].copy_from_slice(&whole[..n]);
        for (i, r) in regs.iter().enumerate() {
            let at = header + i * entry;
            if at >= out.len() {
                break;
            }
            let e = &mut whole[header..header + entry];
            e.fill(0);
            put16(e, 0, DYNAMIC_CNTLID);
            e[2] = r.holder as u8;
            if eds {
                put64(e, 8, r.key);
                e[16..32].copy_from_slice(&r.hostid);
            } else {
                e[8..16].copy_from_slice(&r.hostid[..8]);
                put64(e, 16, r.key);
            }
            let n = entry.min(out.len() - at);
            out[at..at + n].copy_from_slice(&e[..n]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_nvme::spec::io;

    const A: [u8; 16] = [0xa; 16];
    const B: [u8; 16] = [0xb; 16];
    const C: [u8; 16] = [0xc; 16];

    fn reg(r: &Reservations, host: &[u8; 16], action: u8, iekey: bool, crkey: u64, nrkey: u64) -> Result<(), Status> {
        let mut c = Command::new(io::RESERVATION_REGISTER, 1);
        c.set_cdw10(action as u32 | (iekey as u32) << 3);
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&crkey.to_le_bytes());
        d[8..].copy_from_slice(&nrkey.to_le_bytes());
        r.register(host, &c, &d)
    }

    fn acq(r: &Reservations, host: &[u8; 16], action: u8, t: u8, crkey: u64, prkey: u64) -> Result<(), Status> {
        let mut c = Command::new(io::RESERVATION_ACQUIRE, 1);
        c.set_cdw10(action as u32 | (t as u32) << 8);
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&crkey.to_le_bytes());
        d[8..].copy_from_slice(&prkey.to_le_bytes());
        r.acquire(host, &c, &d)
    }

    fn rel(r: &Reservations, host: &[u8; 16], action: u8, t: u8, crkey: u64) -> Result<(), Status> {
        let mut c = Command::new(io::RESERVATION_RELEASE, 1);
        c.set_cdw10(action as u32 | (t as u32) << 8);
        r.release(host, &c, &crkey.to_le_bytes())
    }

    fn sc_of(r: Result<(), Status>) -> u8 {
        r.err().map_or(0, |s| s.sc)
    }

    /// The conflict table: for each type, (read, write) allowed for the holder, another
    /// registrant and a host not registered.
    #[test]
    fn every_type_follows_the_conflict_table() {
        use Access::{Read, Write};
        let table: [(u8, [(bool, bool); 3]); 6] = [
            (rtype::WRITE_EXCLUSIVE, [(true, true), (true, false), (true, false)]),
            (rtype::EXCLUSIVE_ACCESS, [(true, true), (false, false), (false, false)]),
            (rtype::WRITE_EXCLUSIVE_RO, [(true, true), (true, true), (true, false)]),
            (rtype::EXCLUSIVE_ACCESS_RO, [(true, true), (true, true), (false, false)]),
            (rtype::WRITE_EXCLUSIVE_AR, [(true, true), (true, true), (true, false)]),
            (rtype::EXCLUSIVE_ACCESS_AR, [(true, true), (true, true), (false, false)]),
        ];
        for (t, rows) in table {
            let r = Reservations::default();
            assert!(r.check(&C, Write).is_ok(), "no reservation: anyone writes");
            reg(&r, &A, rrega::REGISTER, false, 0, 1).unwrap();
            reg(&r, &B, rrega::REGISTER, false, 0, 2).unwrap();
            acq(&r, &A, racqa::ACQUIRE, t, 1, 0).unwrap();
            for (host, (read, write)) in [A, B, C].iter().zip(rows) {
                assert_eq!(r.check(host, Read).is_ok(), read, "type {t} host {:x} read", host[0]);
                assert_eq!(r.check(host, Write).is_ok(), write, "type {t} host {:x} write", host[0]);
                if !write {
                    assert_eq!(r.check(host, Write).unwrap_err().sc, sc::RESERVATION_CONFLICT);
                }
            }
            rel(&r, &A, rrela::RELEASE, t, 1).unwrap();
            assert!(r.check(&C, Write).is_ok(), "released: anyone writes again");
        }
    }

    #[test]
    fn register_unregister_and_replace_check_keys() {
        let r = Reservations::default();
        assert_eq!(sc_of(reg(&r, &A, rrega::REGISTER, false, 0, 0)), sc::INVALID_FIELD, "zero key");
        reg(&r, &A, rrega::REGISTER, false, 0, 5).unwrap();
        reg(&r, &A, rrega::REGISTER, false, 0, 5).expect("same key again: no error");
        assert_eq!(sc_of(reg(&r, &A, rrega::REGISTER, false, 0, 6)), sc::RESERVATION_CONFLICT, "other key");
        assert_eq!(sc_of(reg(&r, &A, rrega::REPLACE, false, 4, 7)), sc::RESERVATION_CONFLICT, "wrong crkey");
        reg(&r, &A, rrega::REPLACE, false, 5, 7).unwrap();
        reg(&r, &A, rrega::REPLACE, true, 0, 8).expect("IEKEY ignores crkey");
        assert_eq!(sc_of(reg(&r, &B, rrega::REPLACE, false, 0, 9)), sc::RESERVATION_CONFLICT, "not registered");
        assert_eq!(sc_of(reg(&r, &B, rrega::UNREGISTER, false, 0, 0)), sc::RESERVATION_CONFLICT);
        assert_eq!(sc_of(reg(&r, &A, rrega::UNREGISTER, false, 7, 0)), sc::RESERVATION_CONFLICT);
        let (generation, _, regs) = r.snapshot();
        assert_eq!((generation, regs.len(), regs[0].key), (4, 1, 8), "four successful registers (the repeat too)");
        reg(&r, &A, rrega::UNREGISTER, false, 8, 0).unwrap();
        assert_eq!(r.snapshot().2.len(), 0);
        let mut c = Command::new(io::RESERVATION_REGISTER, 1);
        for cdw10 in [3, 7, 1 << 30, 3 << 30] {
            c.set_cdw10(cdw10);
            assert_eq!(sc_of(r.register(&A, &c, &[1; 16])), sc::INVALID_FIELD, "cdw10 {cdw10:#x}");
        }
        c.set_cdw10(2 << 30);
        r.register(&A, &c, &[1; 16]).expect("CPTPL clear is fine");
    }

    #[test]
    fn acquire_release_and_clear() {
        let r = Reservations::default();
        assert_eq!(sc_of(acq(&r, &A, racqa::ACQUIRE, 1, 1, 0)), sc::RESERVATION_CONFLICT, "not registered");
        reg(&r, &A, rrega::REGISTER, false, 0, 1).unwrap();
        reg(&r, &B, rrega::REGISTER, false, 0, 2).unwrap();
        assert_eq!(sc_of(acq(&r, &A, racqa::ACQUIRE, 0, 1, 0)), sc::INVALID_FIELD, "type 0");
        assert_eq!(sc_of(acq(&r, &A, racqa::ACQUIRE, 7, 1, 0)), sc::INVALID_FIELD, "type 7");
        assert_eq!(sc_of(acq(&r, &A, 3, 1, 1, 0)), sc::INVALID_FIELD, "action 3");
        assert_eq!(sc_of(acq(&r, &A, racqa::ACQUIRE, 1, 9, 0)), sc::RESERVATION_CONFLICT, "wrong key");
        acq(&r, &A, racqa::ACQUIRE, 1, 1, 0).unwrap();
        acq(&r, &A, racqa::ACQUIRE, 1, 1, 0).expect("again, same type");
        assert_eq!(sc_of(acq(&r, &A, racqa::ACQUIRE, 2, 1, 0)), sc::RESERVATION_CONFLICT, "holder, other type");
        assert_eq!(sc_of(acq(&r, &B, racqa::ACQUIRE, 1, 2, 0)), sc::RESERVATION_CONFLICT, "held by another");
        rel(&r, &B, rrela::RELEASE, 1, 2).expect("not the holder: no effect");
        assert_eq!(r.snapshot().1, 1, "still reserved");
        assert_eq!(sc_of(rel(&r, &A, rrela::RELEASE, 2, 1)), sc::INVALID_FIELD, "wrong type");
        assert_eq!(sc_of(rel(&r, &A, rrela::RELEASE, 1, 5)), sc::RESERVATION_CONFLICT, "wrong key");
        assert_eq!(sc_of(rel(&r, &A, 2, 1, 1)), sc::INVALID_FIELD, "action 2");
        rel(&r, &A, rrela::RELEASE, 1, 1).unwrap();
        assert_eq!(r.snapshot().1, 0);
        // The holder unregistering releases a reservation of a single holder.
        acq(&r, &A, racqa::ACQUIRE, 1, 1, 0).unwrap();
        reg(&r, &A, rrega::UNREGISTER, false, 1, 0).unwrap();
        assert_eq!(r.snapshot().1, 0, "released with its holder's registration");
        assert!(r.check(&C, Access::Write).is_ok());
        // All Registrants: it stays while any registrant does.
        reg(&r, &A, rrega::REGISTER, false, 0, 1).unwrap();
        acq(&r, &A, racqa::ACQUIRE, rtype::WRITE_EXCLUSIVE_AR, 1, 0).unwrap();
        acq(&r, &B, racqa::ACQUIRE, rtype::WRITE_EXCLUSIVE_AR, 2, 0).expect("every registrant holds it");
        reg(&r, &A, rrega::UNREGISTER, false, 1, 0).unwrap();
        assert_eq!(r.snapshot().1, rtype::WRITE_EXCLUSIVE_AR, "B still registered");
        assert!(r.check(&C, Access::Write).is_err());
        reg(&r, &B, rrega::UNREGISTER, false, 2, 0).unwrap();
        assert_eq!(r.snapshot().1, 0, "the last registrant went");
        // Clear removes everything.
        reg(&r, &A, rrega::REGISTER, false, 0, 1).unwrap();
        reg(&r, &B, rrega::REGISTER, false, 0, 2).unwrap();
        acq(&r, &A, racqa::ACQUIRE, 2, 1, 0).unwrap();
        let g = r.snapshot().0;
        rel(&r, &B, rrela::CLEAR, 0, 2).unwrap();
        let (g2, t, regs) = r.snapshot();
        assert_eq!((g2, t, regs.len()), (g + 1, 0, 0));
    }

    #[test]
    fn preempt_takes_over_or_removes_registrations() {
        let r = Reservations::default();
        reg(&r, &A, rrega::REGISTER, false, 0, 1).unwrap();
        reg(&r, &B, rrega::REGISTER, false, 0, 2).unwrap();
        reg(&r, &C, rrega::REGISTER, false, 0, 3).unwrap();
        acq(&r, &A, racqa::ACQUIRE, rtype::WRITE_EXCLUSIVE, 1, 0).unwrap();
        // Not the holder's key, not 0: only that registrant goes.
        acq(&r, &B, racqa::PREEMPT, rtype::EXCLUSIVE_ACCESS, 2, 3).unwrap();
        let (_, t, regs) = r.snapshot();
        assert_eq!((t, regs.len()), (rtype::WRITE_EXCLUSIVE, 2), "C unregistered, A still holds");
        assert_eq!(sc_of(acq(&r, &B, racqa::PREEMPT, 1, 2, 0)), sc::INVALID_FIELD, "PRKEY 0, not the holder's");
        assert_eq!(sc_of(acq(&r, &B, racqa::PREEMPT, 1, 2, 42)), sc::RESERVATION_CONFLICT, "no such key");
        // The holder's key: the holder goes and B holds, with the new type.
        let g = r.snapshot().0;
        acq(&r, &B, racqa::PREEMPT_AND_ABORT, rtype::EXCLUSIVE_ACCESS, 2, 1).unwrap();
        let (g2, t, regs) = r.snapshot();
        assert_eq!((g2, t), (g + 1, rtype::EXCLUSIVE_ACCESS));
        assert_eq!(regs, vec![RegistrantInfo { hostid: B, key: 2, holder: true }]);
        assert!(r.check(&A, Access::Read).is_err(), "A preempted: exclusive access conflicts");
        // A holder preempting itself changes the type and keeps its registration.
        acq(&r, &B, racqa::PREEMPT, rtype::WRITE_EXCLUSIVE, 2, 2).unwrap();
        assert_eq!(r.snapshot().1, rtype::WRITE_EXCLUSIVE);
        assert_eq!(r.snapshot().2.len(), 1);
        // All Registrants with PRKEY 0: every other registrant goes.
        reg(&r, &A, rrega::REGISTER, false, 0, 1).unwrap();
        rel(&r, &B, rrela::RELEASE, 1, 2).unwrap();
        acq(&r, &B, racqa::ACQUIRE, rtype::EXCLUSIVE_ACCESS_AR, 2, 0).unwrap();
        acq(&r, &A, racqa::PREEMPT, rtype::WRITE_EXCLUSIVE, 1, 0).unwrap();
        let (_, t, regs) = r.snapshot();
        assert_eq!((t, regs), (rtype::WRITE_EXCLUSIVE, vec![RegistrantInfo { hostid: A, key: 1, holder: true }]));
        // No reservation: preempt just removes registrations with that key.
        reg(&r, &B, rrega::REGISTER, false, 0, 2).unwrap();
        rel(&r, &A, rrela::RELEASE, 1, 1).unwrap();
        acq(&r, &A, racqa::PREEMPT, 1, 1, 2).unwrap();
        assert_eq!(r.snapshot().2.len(), 1);
        assert_eq!(r.snapshot().1, 0, "a preempt without a reservation acquires nothing");
    }

    #[test]
    fn report_in_both_formats_and_truncated() {
        let r = Reservations::default();
        let mut small = [0u8; 16];
        small[0] = 0x11;
        reg(&r, &small, rrega::REGISTER, false, 0, 0x1234).unwrap();
        reg(&r, &B, rrega::REGISTER, false, 0, 0x5678).unwrap();
        acq(&r, &B, racqa::ACQUIRE, rtype::WRITE_EXCLUSIVE_RO, 0x5678, 0).unwrap();
        let mut out = Vec::new();
        r.report(true, 4096, &mut out).unwrap();
        assert_eq!(out.len(), 64 + 2 * 64);
        assert_eq!((out[0], out[4], out[5], out[6], out[9]), (2, rtype::WRITE_EXCLUSIVE_RO, 2, 0, 0));
        let e = &out[64..128];
        assert_eq!((e[0], e[1], e[2]), (0xff, 0xff, 0), "dynamic cntlid, not the holder");
        assert_eq!(u64::from_le_bytes(e[8..16].try_into().unwrap()), 0x1234);
        assert_eq!(&e[16..32], &small);
        let e = &out[128..192];
        assert_eq!((e[2], u64::from_le_bytes(e[8..16].try_into().unwrap()), &e[16..32]), (1, 0x5678, &B[..]));
        r.report(true, 100, &mut out).unwrap();
        assert_eq!(out.len(), 100, "cut to what the host asked for");
        assert_eq!(&out[80..96], &small, "host id of the first entry in the part that fits");
        assert_eq!(r.report(false, 4096, &mut out).unwrap_err().sc, sc::HOSTID_INCONSISTENT, "128-bit ids");
        reg(&r, &B, rrega::UNREGISTER, false, 0x5678, 0).unwrap();
        r.report(false, 4096, &mut out).unwrap();
        assert_eq!(out.len(), 24 + 24);
        assert_eq!((out[4], out[5]), (0, 1), "released with its holder; one registrant");
        assert_eq!(&out[24 + 8..24 + 16], &small[..8]);
        assert_eq!(u64::from_le_bytes(out[24 + 16..24 + 24].try_into().unwrap()), 0x1234);
    }
}

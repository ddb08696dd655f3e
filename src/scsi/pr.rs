//! Persistent reservations (PERSISTENT RESERVE IN/OUT, SPC-4 5.13, 6.15, 6.16) and SPC-2
//! RESERVE/RELEASE (6/10), kept per logical unit.

use super::sense::Failure;
use super::Nexus;

/// What a PERSISTENT RESERVE OUT did to other nexuses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PrEffects {
    /// Nexuses that get a unit attention, with its (ASC, ASCQ).
    pub unit_attentions: Vec<(Nexus, (u8, u8))>,
    /// Nexuses whose tasks are aborted (PREEMPT AND ABORT).
    pub aborted: Vec<Nexus>,
}

/// A unit's registrations and reservation.
#[derive(Debug, Default)]
pub struct Reservations {}

impl Reservations {
    /// No registrations, no reservation.
    pub fn new() -> Reservations {
        Reservations::default()
    }

    /// Whether any reservation (persistent or SPC-2) is held: when false, no command can
    /// conflict and the data path skips `check`.
    pub fn is_active(&self) -> bool {
        false
    }

    /// Whether `cdb` from `nexus` conflicts with a reservation held by another nexus.
    pub fn check(&self, _cdb: &[u8], _nexus: &Nexus) -> Result<(), Failure> {
        Ok(())
    }

    /// PERSISTENT RESERVE IN: the full parameter data (the caller truncates it).
    pub fn pr_in(&self, _cdb: &[u8], _nexus: &Nexus) -> Result<Vec<u8>, Failure> {
        Err(Failure::Check(super::Sense::invalid_opcode()))
    }

    /// PERSISTENT RESERVE OUT with its parameter list.
    pub fn pr_out(&mut self, _cdb: &[u8], _params: &[u8], _nexus: &Nexus) -> Result<PrEffects, Failure> {
        Err(Failure::Check(super::Sense::invalid_opcode()))
    }

    /// RESERVE (6/10).
    pub fn reserve(&mut self, _cdb: &[u8], _nexus: &Nexus) -> Result<(), Failure> {
        Err(Failure::Check(super::Sense::invalid_opcode()))
    }

    /// RELEASE (6/10).
    pub fn release(&mut self, _cdb: &[u8], _nexus: &Nexus) -> Result<(), Failure> {
        Err(Failure::Check(super::Sense::invalid_opcode()))
    }

    /// A LOGICAL UNIT RESET: SPC-2 reservations are released, persistent ones stay.
    pub fn lun_reset(&mut self) {}

    /// An I_T NEXUS RESET or loss for `nexus`: its SPC-2 reservation is released.
    pub fn nexus_lost(&mut self, _nexus: &Nexus) {}
}

//! SCSI status codes and sense data (SPC-4 4.5): the one way every command reports an error.
//!
//! Sense data is built in fixed format (response code 0x70), which every initiator accepts;
//! the sense-key-specific bytes carry a field pointer for "invalid field" errors so that an
//! initiator can tell which CDB or parameter byte was refused.

/// SCSI status byte values (SAM-5).
pub mod status {
    /// The command completed.
    pub const GOOD: u8 = 0x00;
    /// Sense data describes an error.
    pub const CHECK_CONDITION: u8 = 0x02;
    /// COMPARE AND WRITE found different data.
    pub const CONDITION_MET: u8 = 0x04;
    /// The logical unit is busy; retry later.
    pub const BUSY: u8 = 0x08;
    /// Another I_T nexus holds a reservation.
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    /// The task set is full.
    pub const TASK_SET_FULL: u8 = 0x28;
    /// The command was aborted.
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Sense keys (SPC-4 table 48).
pub mod key {
    /// No error.
    pub const NO_SENSE: u8 = 0x0;
    /// The unit is not ready.
    pub const NOT_READY: u8 = 0x2;
    /// An unrecovered medium error.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// A hardware failure.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// A bad CDB or parameter.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// Something changed (reset, capacity, LUN inventory).
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// The medium is write protected.
    pub const DATA_PROTECT: u8 = 0x7;
    /// An EXTENDED COPY stopped (the copy manager's errors).
    pub const COPY_ABORTED: u8 = 0xA;
    /// The command was aborted.
    pub const ABORTED_COMMAND: u8 = 0xB;
    /// COMPARE AND WRITE or VERIFY found different data.
    pub const MISCOMPARE: u8 = 0xE;
}

/// Additional sense code and qualifier pairs (SPC-4 annex D).
pub mod asc {
    /// (ASC, ASCQ)
    pub type Code = (u8, u8);
    /// No additional information.
    pub const NO_ADDITIONAL: Code = (0x00, 0x00);
    /// Logical unit not ready, cause not reportable.
    pub const LUN_NOT_READY: Code = (0x04, 0x00);
    /// Unrecovered read error.
    pub const UNRECOVERED_READ: Code = (0x11, 0x00);
    /// Write error.
    pub const WRITE_ERROR: Code = (0x0C, 0x00);
    /// Parameter list length error.
    pub const PARAM_LIST_LENGTH: Code = (0x1A, 0x00);
    /// Invalid command operation code.
    pub const INVALID_OPCODE: Code = (0x20, 0x00);
    /// Logical block address out of range.
    pub const LBA_OUT_OF_RANGE: Code = (0x21, 0x00);
    /// Invalid field in CDB.
    pub const INVALID_FIELD_IN_CDB: Code = (0x24, 0x00);
    /// Medium not present (a removable unit's medium is ejected).
    pub const MEDIUM_NOT_PRESENT: Code = (0x3A, 0x00);
    /// Medium removal prevented (PREVENT ALLOW MEDIUM REMOVAL is in force).
    pub const MEDIUM_REMOVAL_PREVENTED: Code = (0x53, 0x02);
    /// Not ready to ready change, medium may have changed (a medium was loaded).
    pub const MEDIUM_MAY_HAVE_CHANGED: Code = (0x28, 0x00);
    /// Logical unit not supported.
    pub const LUN_NOT_SUPPORTED: Code = (0x25, 0x00);
    /// Invalid field in parameter list.
    pub const INVALID_FIELD_IN_PARAM: Code = (0x26, 0x00);
    /// Write protected.
    pub const WRITE_PROTECTED: Code = (0x27, 0x00);
    /// Space allocation failed write protect (a thin unit out of space, SBC-4 4.7.3.7).
    pub const SPACE_ALLOCATION_FAILED: Code = (0x27, 0x07);
    /// Power on, reset, or bus device reset occurred.
    pub const POWER_ON_RESET: Code = (0x29, 0x00);
    /// Bus device reset function occurred (a logical unit reset).
    pub const BUS_DEVICE_RESET: Code = (0x29, 0x03);
    /// I_T nexus loss occurred.
    pub const I_T_NEXUS_LOSS: Code = (0x29, 0x07);
    /// Mode parameters changed.
    pub const MODE_PARAMETERS_CHANGED: Code = (0x2A, 0x01);
    /// Reservations preempted.
    pub const RESERVATIONS_PREEMPTED: Code = (0x2A, 0x03);
    /// Reservations released.
    pub const RESERVATIONS_RELEASED: Code = (0x2A, 0x04);
    /// Registrations preempted.
    pub const REGISTRATIONS_PREEMPTED: Code = (0x2A, 0x05);
    /// Capacity data has changed.
    pub const CAPACITY_CHANGED: Code = (0x2A, 0x09);
    /// Commands cleared by another initiator.
    pub const COMMANDS_CLEARED: Code = (0x2F, 0x00);
    /// Saving parameters not supported.
    pub const SAVING_NOT_SUPPORTED: Code = (0x39, 0x00);
    /// Reported LUNs data has changed.
    pub const REPORTED_LUNS_CHANGED: Code = (0x3F, 0x0E);
    /// Internal target failure.
    pub const INTERNAL_TARGET_FAILURE: Code = (0x44, 0x00);
    /// Miscompare during verify operation.
    pub const MISCOMPARE_VERIFY: Code = (0x1D, 0x00);
    /// Insufficient registration resources.
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Code = (0x55, 0x04);
    /// Logical unit not ready, sanitize in progress (SBC-4 4.11).
    pub const SANITIZE_IN_PROGRESS: Code = (0x04, 0x1B);
    /// Sanitize command failed (the unit is in sanitize failure mode).
    pub const SANITIZE_FAILED: Code = (0x31, 0x03);
    /// Logical unit does not respond to selection (removed).
    pub const LUN_NOT_RESPONDING: Code = (0x05, 0x00);
}

/// Which buffer a field pointer points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Byte (and optionally bit) of the CDB.
    Cdb {
        /// Byte offset.
        byte: u16,
        /// Bit, when one bit is wrong.
        bit: Option<u8>,
    },
    /// Byte (and optionally bit) of the parameter list (data-out).
    Param {
        /// Byte offset.
        byte: u16,
        /// Bit, when one bit is wrong.
        bit: Option<u8>,
    },
    /// PROGRESS INDICATION (SPC-4 4.5.2.4.4): how far an operation that makes the unit
    /// not ready has come, in 65536ths.
    Progress(u16),
}

/// One error to report as CHECK CONDITION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Its qualifier.
    pub ascq: u8,
    /// The INFORMATION field (e.g. the miscompare offset), when valid.
    pub information: Option<u64>,
    /// The field pointer (sense-key specific) for invalid-field errors.
    pub field: Option<Field>,
}

/// Size of fixed-format sense data as built here.
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    /// A sense of `key` with `code`.
    pub const fn new(key: u8, code: asc::Code) -> Sense {
        Sense { key, asc: code.0, ascq: code.1, information: None, field: None }
    }

    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
    pub const fn invalid_opcode() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_OPCODE).with_field(Field::Cdb { byte: 0, bit: None })
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB, pointing at `byte` (and `bit`).
    pub const fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB).with_field(Field::Cdb { byte, bit })
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST, pointing at `byte` (and `bit`).
    pub const fn invalid_param_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAM).with_field(Field::Param { byte, bit })
    }

    /// ILLEGAL REQUEST / PARAMETER LIST LENGTH ERROR.
    pub const fn param_list_length() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, asc::PARAM_LIST_LENGTH)
    }

    /// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const fn lba_out_of_range() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE)
    }

    /// ILLEGAL REQUEST / LOGICAL UNIT NOT SUPPORTED.
    pub const fn lun_not_supported() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, asc::LUN_NOT_SUPPORTED)
    }

    /// DATA PROTECT / WRITE PROTECTED.
    pub const fn write_protected() -> Sense {
        Sense::new(key::DATA_PROTECT, asc::WRITE_PROTECTED)
    }

    /// MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION at byte `offset` of the compared data.
    pub const fn miscompare(offset: u64) -> Sense {
        let mut s = Sense::new(key::MISCOMPARE, asc::MISCOMPARE_VERIFY);
        s.information = Some(offset);
        s
    }

    /// The same sense with a field pointer.
    pub const fn with_field(mut self, field: Field) -> Sense {
        self.field = Some(field);
        self
    }

    /// Fixed-format sense data (SPC-4 4.5.3), 18 bytes.
    pub fn to_fixed(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut s = [0u8; FIXED_SENSE_LEN];
        s[0] = 0x70; // current error, fixed format
        s[2] = self.key & 0x0F;
        if let Some(info) = self.information {
            s[0] |= 0x80; // VALID: the INFORMATION field means something
                          // Fixed format holds 4 bytes of INFORMATION; larger values are saturated.
            s[3..7].copy_from_slice(&(info.min(u32::MAX as u64) as u32).to_be_bytes());
        }
        s[7] = (FIXED_SENSE_LEN - 8) as u8; // additional sense length
        s[12] = self.asc;
        s[13] = self.ascq;
        if let Some(field) = self.field {
            let (cd, byte, bit) = match field {
                Field::Cdb { byte, bit } => (true, byte, bit),
                Field::Param { byte, bit } => (false, byte, bit),
                Field::Progress(p) => {
                    s[15] = 0x80; // SKSV
                    s[16..18].copy_from_slice(&p.to_be_bytes());
                    return s;
                }
            };
            // SKSV | C/D | BPV | bit pointer, then the field pointer.
            s[15] = 0x80 | if cd { 0x40 } else { 0 } | bit.map_or(0, |b| 0x08 | (b & 7));
            s[16..18].copy_from_slice(&byte.to_be_bytes());
        }
        s
    }
}

/// How a command failed, as a transport reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// CHECK CONDITION with this sense.
    Check(Sense),
    /// RESERVATION CONFLICT (no sense data).
    ReservationConflict,
    /// BUSY: the initiator retries.
    Busy,
}

impl From<Sense> for Failure {
    fn from(s: Sense) -> Self {
        Failure::Check(s)
    }
}

impl Failure {
    /// The status byte for it.
    pub fn status(&self) -> u8 {
        match self {
            Failure::Check(_) => status::CHECK_CONDITION,
            Failure::ReservationConflict => status::RESERVATION_CONFLICT,
            Failure::Busy => status::BUSY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_sense_carries_key_codes_and_field_pointer() {
        let s = Sense::invalid_cdb_field(2, Some(5)).to_fixed();
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], key::ILLEGAL_REQUEST);
        assert_eq!(s[7], 10);
        assert_eq!((s[12], s[13]), asc::INVALID_FIELD_IN_CDB);
        assert_eq!(s[15], 0x80 | 0x40 | 0x08 | 5);
        assert_eq!(&s[16..18], &[0, 2]);
        let p = Sense::invalid_param_field(300, None).to_fixed();
        assert_eq!(p[15], 0x80);
        assert_eq!(&p[16..18], &300u16.to_be_bytes());
        let m = Sense::miscompare(513).to_fixed();
        assert_eq!(m[0], 0xF0);
        assert_eq!(&m[3..7], &513u32.to_be_bytes());
        assert_eq!(m[2], key::MISCOMPARE);
    }
}

//! The SMART / Health Information log page (log identifier 02h, 512 bytes; NVMe Base 2.0
//! Figure 207), as a host reads it.

use crate::spec::{admin, le16, le32, le64, Command};

/// Length of the log page.
pub const LEN: usize = 512;
/// Its log identifier.
pub const LID: u8 = 0x02;

/// Get Log Page for the controller's SMART / Health Information (NSID FFFFFFFFh: the whole
/// controller).
pub fn get_log_page() -> Command {
    let mut c = Command::new(admin::GET_LOG_PAGE, 0);
    c.set_nsid(u32::MAX);
    c.set_cdw10(LID as u32 | (((LEN / 4 - 1) as u32) << 16));
    c
}

/// The fields of the log page (the 128-bit counters kept to their low 64 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    /// Critical warning bits.
    pub critical_warning: u8,
    /// Composite temperature in kelvin.
    pub temperature_kelvin: u16,
    /// Available spare, percent.
    pub available_spare: u8,
    /// Available spare threshold, percent.
    pub available_spare_threshold: u8,
    /// Percentage used.
    pub percentage_used: u8,
    /// Data units (1000 × 512 bytes) read.
    pub data_units_read: u64,
    /// Data units written.
    pub data_units_written: u64,
    /// Host read commands.
    pub host_read_commands: u64,
    /// Host write commands.
    pub host_write_commands: u64,
    /// Controller busy time, minutes.
    pub controller_busy_time: u64,
    /// Power cycles.
    pub power_cycles: u64,
    /// Power on hours.
    pub power_on_hours: u64,
    /// Unsafe shutdowns.
    pub unsafe_shutdowns: u64,
    /// Media and data integrity errors.
    pub media_errors: u64,
    /// Error log entries.
    pub num_err_log_entries: u64,
    /// Warning composite temperature time, minutes.
    pub warning_temperature_time: u32,
    /// Critical composite temperature time, minutes.
    pub critical_temperature_time: u32,
}

impl Health {
    /// Decodes the page (shorter data is refused: `None`).
    pub fn parse(d: &[u8]) -> Option<Health> {
        if d.len() < LEN {
            return None;
        }
        Some(Health {
            critical_warning: d[0],
            temperature_kelvin: le16(d, 1),
            available_spare: d[3],
            available_spare_threshold: d[4],
            percentage_used: d[5],
            data_units_read: le64(d, 32),
            data_units_written: le64(d, 48),
            host_read_commands: le64(d, 64),
            host_write_commands: le64(d, 80),
            controller_busy_time: le64(d, 96),
            power_cycles: le64(d, 112),
            power_on_hours: le64(d, 128),
            unsafe_shutdowns: le64(d, 144),
            media_errors: le64(d, 160),
            num_err_log_entries: le64(d, 176),
            warning_temperature_time: le32(d, 192),
            critical_temperature_time: le32(d, 196),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_from_their_offsets_and_short_pages_are_refused() {
        let mut d = [0u8; LEN];
        d[0] = 0x04;
        d[1..3].copy_from_slice(&300u16.to_le_bytes());
        d[3] = 100;
        d[64..72].copy_from_slice(&7u64.to_le_bytes());
        d[80..88].copy_from_slice(&9u64.to_le_bytes());
        d[196..200].copy_from_slice(&3u32.to_le_bytes());
        let h = Health::parse(&d).unwrap();
        assert_eq!((h.critical_warning, h.temperature_kelvin, h.available_spare), (4, 300, 100));
        assert_eq!((h.host_read_commands, h.host_write_commands, h.critical_temperature_time), (7, 9, 3));
        assert!(Health::parse(&d[..511]).is_none());
        let c = get_log_page();
        assert_eq!((c.opcode(), c.nsid(), c.cdw10()), (0x02, u32::MAX, 0x02 | (127 << 16)));
    }
}

//! The TCP transport's options: `nvmf_create_transport`'s keys with SPDK's defaults
//! (`lib/nvmf/tcp.c`: SPDK_NVMF_TCP_DEFAULT_*).

use super::NvmfError;
use serde::{Deserialize, Serialize};

/// `nvmf_create_transport` options for trtype TCP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpTransportOptions {
    /// Deepest I/O queue (entries).
    pub max_queue_depth: u16,
    /// I/O queues per controller.
    pub max_io_qpairs_per_ctrlr: u16,
    /// In-capsule data an I/O queue's command may carry (bytes).
    pub in_capsule_data_size: u32,
    /// Largest transfer of one command (bytes).
    pub max_io_size: u32,
    /// Buffer unit (bytes).
    pub io_unit_size: u32,
    /// Deepest admin queue (entries).
    pub max_aq_depth: u16,
    /// Shared data buffers (SPDK's pool; accepted, Ferry's buffers are pooled per reactor).
    pub num_shared_buffers: u32,
    /// Buffers cached per poll group (accepted).
    pub buf_cache_size: u32,
    /// DIF insert/strip (accepted; must be false).
    pub dif_insert_or_strip: bool,
    /// C2HData SUCCESS (no response capsule) when the host disabled SQ flow control.
    pub c2h_success: bool,
    /// SO_PRIORITY of connections (0-6).
    pub sock_priority: u32,
    /// Abort timeout (seconds; accepted).
    pub abort_timeout_sec: u32,
    /// ACK timeout (milliseconds; accepted).
    pub ack_timeout: u32,
    /// Control messages per poll group (accepted).
    pub control_msg_num: u32,
    /// Zero-copy send (accepted).
    pub zcopy: bool,
}

impl Default for TcpTransportOptions {
    fn default() -> Self {
        TcpTransportOptions {
            max_queue_depth: 128,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 4096,
            max_io_size: 131072,
            io_unit_size: 131072,
            max_aq_depth: 128,
            num_shared_buffers: 511,
            buf_cache_size: 32,
            dif_insert_or_strip: false,
            c2h_success: true,
            sock_priority: 0,
            abort_timeout_sec: 1,
            ack_timeout: 0,
            control_msg_num: 32,
            zcopy: false,
        }
    }
}

/// Largest in-capsule data size (SPDK_NVMF_TCP_MAX_IN_CAPSULE_DATA_SIZE... bounded so a
/// connection's receive buffer stays small).
pub const MAX_IN_CAPSULE_DATA_SIZE: u32 = 131072;
/// Largest transfer Ferry accepts for one command.
pub const MAX_IO_SIZE: u32 = 4 << 20;

impl TcpTransportOptions {
    /// Checks the values (SPDK's bounds where it has them).
    pub fn check(&self) -> Result<(), NvmfError> {
        let bad = |m: &str| Err(NvmfError::InvalidOption(m.to_string()));
        if self.max_queue_depth < 2 {
            return bad("max_queue_depth must be at least 2");
        }
        if !(2..=4096).contains(&self.max_aq_depth) {
            return bad("max_aq_depth must be from 2 to 4096");
        }
        if self.max_io_qpairs_per_ctrlr == 0 {
            return bad("max_io_qpairs_per_ctrlr must be at least 1");
        }
        if self.in_capsule_data_size > MAX_IN_CAPSULE_DATA_SIZE || !self.in_capsule_data_size.is_multiple_of(16) {
            return bad("in_capsule_data_size must be a multiple of 16 up to 131072");
        }
        if self.max_io_size < 4096 || self.max_io_size > MAX_IO_SIZE || !self.max_io_size.is_multiple_of(4096) {
            return bad("max_io_size must be a multiple of 4096 from 4096 to 4 MiB");
        }
        if self.io_unit_size == 0 {
            return bad("io_unit_size must not be 0");
        }
        if self.dif_insert_or_strip {
            return bad("dif_insert_or_strip is not supported");
        }
        if self.sock_priority > 6 {
            return bad("sock_priority must be from 0 to 6");
        }
        Ok(())
    }

    /// MAXH2CDATA announced in ICResp: at least 4096 and a multiple of 4 (Linux checks both).
    pub fn maxh2cdata(&self) -> u32 {
        self.max_io_size.clamp(ferry_nvme::tcp::MIN_MAXH2CDATA, 131072) & !3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_spdks_and_maxh2cdata_is_what_linux_accepts() {
        let o: TcpTransportOptions = serde_json::from_str("{}").unwrap();
        assert_eq!(o, TcpTransportOptions::default());
        assert_eq!((o.max_queue_depth, o.in_capsule_data_size, o.max_io_size), (128, 4096, 131072));
        o.check().unwrap();
        assert_eq!(o.maxh2cdata(), 131072);
        let small = TcpTransportOptions { max_io_size: 4096, ..Default::default() };
        assert_eq!(small.maxh2cdata(), 4096);
        assert!(TcpTransportOptions { in_capsule_data_size: 100, ..Default::default() }.check().is_err());
    }
}

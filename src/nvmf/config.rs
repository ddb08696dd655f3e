//! What `nvmf_create_transport` was given beyond the TCP transport's own options: SPDK's
//! transport-generic options, which `nvmf_get_transports` and `save_config` report back
//! (the transport itself keeps what it uses: `tcp::transport_options`).

use std::sync::Mutex;

/// SPDK's `spdk_nvmf_transport_opts` members the TCP transport does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenericOptions {
    /// Small iobuf buffers cached per poll group (Ferry has no iobuf pools: reported only).
    pub iobuf_small_cache_size: u32,
    /// Large iobuf buffers cached per poll group (reported only).
    pub iobuf_large_cache_size: u32,
    /// RDMA's data work-request pool (reported only).
    pub data_wr_pool_size: u32,
    /// Passthrough of unknown commands to the bdev refused (Ferry never passes through).
    pub disable_command_passthru: bool,
    /// Keep Alive granularity in 100 ms units.
    pub kas: u16,
    /// Smallest keep-alive timeout in ms (rounded up to a multiple of `kas`).
    pub min_kato: u32,
}

static GENERIC: Mutex<Option<GenericOptions>> = Mutex::new(None);

/// Records the generic options of the transport just created.
pub fn set_generic(o: GenericOptions) {
    *GENERIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(o);
}

/// The generic options of the transport, if one was created.
pub fn generic() -> Option<GenericOptions> {
    *GENERIC.lock().unwrap_or_else(|e| e.into_inner())
}

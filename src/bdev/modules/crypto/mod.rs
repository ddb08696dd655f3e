//! Encryption at rest, as SPDK's accel crypto keys and `vbdev_crypto`: named AES-XTS keys
//! (`keys.rs`, the `accel` subsystem of `save_config`), the cipher over logical blocks
//! (`xts.rs`), the crypto bdev (`backend.rs`) and the RPC methods (`rpc.rs`). Key handling is
//! described in docs/security.md.

pub mod backend;
pub mod keys;
pub mod rpc;
pub mod xts;

pub use rpc::METHODS;

/// The `accel` subsystem's part of `save_config`: the crypto keys.
pub fn write_accel_config() -> Vec<serde_json::Value> {
    keys::write_config()
}

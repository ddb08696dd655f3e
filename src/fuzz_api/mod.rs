//! Entry points of the fuzz targets in `fuzz/` (built with the `fuzz` feature, never in a
//! normal build). Each takes the fuzzer's bytes, drives the real code path with them and
//! panics when an invariant breaks; `scripts/fuzz/run.sh` builds and runs them under AFL++.
//! The unit tests at the bottom replay the committed seed corpora through the same functions,
//! so a target that stops reaching its code path fails `cargo test` too: each entry point
//! returns how many items reached its deepest stage (chains compared, commands completed,
//! responses checked, messages handled), and every corpus must reach it.
//!
//! - [`split_ring`], [`packed_ring`]: the ring walkers against their oracles (`ring_oracle`).
//! - [`scsi`]: CDB decoding and execution on a logical unit over a malloc bdev.
//! - [`rpc`]: JSON-RPC framing as a connection sees it, and dispatch.
//! - [`http`]: the metrics endpoint's request heads as a connection reads them, and its answers.
//! - [`vhost_user`]: a vhost-user message stream into a session, as a controller serves it.
//! - [`blobstore`]: the blobstore's metadata loader and checker on a device image.
//! - [`iscsi_login`]: iSCSI login texts, the login state machine (with CHAP) and Text Requests.
//! - [`iscsi_pdu`]: iSCSI PDU framing (lengths, digests) and header decoding.
//! - [`nvmf_tcp_pdu`]: NVMe/TCP PDU framing per connection state, capsule SGLs, H2CData windows.
//! - [`nvme_cmd`]: NVMe commands on a connected controller's admin and I/O queues (malloc namespace).
//! - [`vfio_user`]: a vfio-user client's message stream through the server's framing and session.
//! - [`nvme_prp`]: the VFIOUSER transport's PRP walker over guest memory the input makes.

mod blobstore;
mod http;
mod iscsi;
mod iscsi_pdu;
mod nvme_cmd;
mod nvme_prp;
mod nvmf_tcp_pdu;
mod rings;
mod rpc;
mod scsi;
mod vfio_user;
pub mod vhost_user;

pub use blobstore::blobstore;
pub use http::http;
pub use iscsi::iscsi_login;
pub use iscsi_pdu::iscsi_pdu;
pub use nvme_cmd::nvme_cmd;
pub use nvme_prp::nvme_prp;
pub use nvmf_tcp_pdu::nvmf_tcp_pdu;
pub use rings::{packed_ring, split_ring};
pub use rpc::rpc;
pub use scsi::scsi;
pub use vfio_user::vfio_user;
pub use vhost_user::vhost_user;

/// Little-endian reads from the front of the fuzzer's bytes (zero past the end).
pub(crate) struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    pub(crate) fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub(crate) fn u16(&mut self) -> u16 {
        let b = self.bytes(2);
        u16::from_le_bytes([b.first().copied().unwrap_or(0), b.get(1).copied().unwrap_or(0)])
    }

    pub(crate) fn u32(&mut self) -> u32 {
        self.u16() as u32 | (self.u16() as u32) << 16
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// Starts one unpinned reactor for the targets that need one (once per process: under AFL
/// that is after the fork server forked, as threads do not survive a fork).
pub(crate) fn reactor() {
    // Unit tests share one set of reactors per test binary.
    #[cfg(test)]
    crate::framework::testing::reactors();
    #[cfg(not(test))]
    static START: std::sync::Once = std::sync::Once::new();
    #[cfg(not(test))]
    START.call_once(|| {
        crate::framework::reactor::start(&crate::framework::Cpumask::parse("0x1").expect("mask"), false)
            .expect("start a reactor")
    });
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Runs every seed of `fuzz/corpus/<target>` through `f`; returns what each reached.
    fn replay(target: &str, f: fn(&[u8]) -> u64) -> Vec<u64> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
        let mut reached = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let run = std::panic::catch_unwind(|| f(&data));
            reached.push(run.unwrap_or_else(|_| panic!("seed {} failed (see the panic above)", path.display())));
        }
        assert!(!reached.is_empty(), "no seeds in {}", dir.display());
        reached
    }

    #[test]
    fn seed_corpora_pass_their_targets() {
        for (target, f) in [
            ("split_ring", super::split_ring as fn(&[u8]) -> u64),
            ("packed_ring", super::packed_ring),
            ("scsi", super::scsi),
            ("rpc", super::rpc),
            ("http", super::http),
            ("vhost_user", super::vhost_user),
            ("blobstore", super::blobstore),
            ("iscsi_login", super::iscsi_login),
            ("iscsi_pdu", super::iscsi_pdu),
            ("nvmf_tcp_pdu", super::nvmf_tcp_pdu),
            ("nvme_cmd", super::nvme_cmd),
            ("vfio_user", super::vfio_user),
            ("nvme_prp", super::nvme_prp),
        ] {
            let reached = replay(target, f);
            assert!(reached.iter().sum::<u64>() > 0, "the {target} seeds reach nothing past the first checks");
        }
        // Every iSCSI seed but the refusals logs in (CHAP ones through the challenge) and gets
        // its text requests answered.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/iscsi_login");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let reached = super::iscsi_login(&std::fs::read(&path).unwrap());
            let want = if path.ends_with("refusals") { 0 } else { 2 };
            assert!(reached >= want, "{}: reached {reached}", path.display());
        }
        // Every NVMe seed gets commands through the connected controller to success.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/nvme_cmd");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let reached = super::nvme_cmd(&std::fs::read(&path).unwrap());
            assert!(reached >= 4, "{}: {reached} commands succeeded", path.display());
        }
        // Each vhost-user handshake starts a queue that serves the request in its ring.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/vhost_user");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            for run in 0..20 {
                let reached = super::vhost_user(&data);
                assert!(reached >= super::vhost_user::COMPLETED, "{}: request not served in run {run}", path.display());
            }
        }
    }
}

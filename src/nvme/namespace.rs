//! A namespace: one bdev served under an NSID, with the identifiers hosts see.

use super::reservation::Reservations;
use crate::bdev::{Bdev, BdevChannel, BdevDesc, BdevError};
use uuid::Uuid;

/// A namespace of a subsystem, on an open bdev.
pub struct Namespace {
    /// Its namespace ID (1-based).
    pub nsid: u32,
    desc: BdevDesc,
    /// Namespace Globally Unique Identifier (Identify Namespace NGUID, descriptor type 2).
    pub nguid: [u8; 16],
    /// IEEE Extended Unique Identifier (all zero: not reported).
    pub eui64: [u8; 8],
    /// Namespace UUID (descriptor type 3); the bdev's unless given.
    pub uuid: Uuid,
    /// ANA group it belongs to (1-based; equal to nsid unless given, as SPDK does).
    pub anagrpid: u32,
    /// Its reservation state (registrations and the reservation), shared by every
    /// controller: see `nvme::reservation`.
    pub reservations: Reservations,
}

impl Namespace {
    /// Namespace `nsid` on `desc`. Identifiers left out come from the bdev's uuid (stable
    /// across restarts, so a host's multipath sees the same namespace again).
    pub fn new(
        nsid: u32,
        desc: BdevDesc,
        nguid: Option<[u8; 16]>,
        eui64: Option<[u8; 8]>,
        uuid: Option<Uuid>,
        anagrpid: Option<u32>,
    ) -> Namespace {
        let uuid = uuid.unwrap_or_else(|| desc.bdev().uuid());
        Namespace {
            nsid,
            nguid: nguid.unwrap_or(*uuid.as_bytes()),
            eui64: eui64.unwrap_or([0; 8]),
            uuid,
            anagrpid: anagrpid.unwrap_or(nsid),
            reservations: Reservations::default(),
            desc,
        }
    }

    /// The bdev it serves.
    pub fn bdev(&self) -> &Bdev {
        self.desc.bdev()
    }

    /// The open descriptor.
    pub fn desc(&self) -> &BdevDesc {
        &self.desc
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.desc.bdev().block_size()
    }

    /// Capacity in logical blocks (it can change: a resize raises the changed-namespace event).
    pub fn num_blocks(&self) -> u64 {
        self.desc.bdev().num_blocks()
    }

    /// Whether writes are refused (a read-only bdev, e.g. a snapshot).
    pub fn read_only(&self) -> bool {
        !self.desc.writable() || self.desc.bdev().backend().read_only()
    }

    /// This reactor's channel for I/O to it. Reactor threads only.
    pub fn channel(&self) -> Result<BdevChannel, BdevError> {
        self.desc.channel()
    }
}

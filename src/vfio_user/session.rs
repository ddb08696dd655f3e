//! One client's protocol state: whether VERSION was negotiated and what, its DMA mappings,
//! and the dispatch of each request to the [`Device`]. Independent of sockets, so tests and
//! the fuzz target drive it directly.

use super::dma::DmaMaps;
use super::wire::{self, cmd, dma_flags, Errno, Header, Limits, Request};
use super::Device;
use std::fs::File;
use std::sync::Arc;

/// What Ferry accepts in one message and at once.
pub const LIMITS: Limits = Limits { max_msg_fds: 16, max_data_xfer_size: 1 << 20, max_dma_maps: 1024 };

/// The largest message taken off the socket: a REGION_WRITE of the largest transfer.
pub const MAX_MESSAGE: usize = wire::HEADER_LEN + 16 + LIMITS.max_data_xfer_size as usize;

/// One complete message from the client.
pub struct Message {
    /// Header and payload.
    pub bytes: Vec<u8>,
    /// Fds that came with it.
    pub fds: Vec<File>,
}

impl Message {
    /// Its header (a message always holds one).
    pub fn header(&self) -> Header {
        Header::decode(&self.bytes)
    }
}

/// What handling a message produced.
#[derive(Default)]
pub struct Outcome {
    /// The reply (empty when none is due).
    pub reply: Vec<u8>,
    /// Fds sent with the reply.
    pub fds: Vec<File>,
    /// The connection must end (a stream that cannot be vfio-user).
    pub close: bool,
}

/// One client's state. See the module documentation.
pub struct Session {
    device: Arc<dyn Device>,
    dma: DmaMaps,
    limits: Limits,
    negotiated: bool,
}

impl Session {
    /// A new client of `device`.
    pub fn new(device: Arc<dyn Device>) -> Session {
        Session { device, dma: DmaMaps::new(LIMITS.max_dma_maps as usize), limits: LIMITS, negotiated: false }
    }

    /// The device served.
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.device
    }

    /// The negotiated REGION_READ/WRITE limit.
    pub fn max_xfer(&self) -> u32 {
        self.limits.max_data_xfer_size
    }

    /// Whether VERSION was negotiated.
    pub fn negotiated(&self) -> bool {
        self.negotiated
    }

    /// Handles one message. A command marked no-reply gets none, even on error.
    pub fn handle(&mut self, msg: Message) -> Outcome {
        let h = msg.header();
        if !h.is_command() {
            // Ferry never sends requests, so the client has nothing to reply to.
            tracing::warn!(
                command = h.command,
                flags = h.flags,
                "vfio-user: a reply or unknown message type from the client"
            );
            return Outcome { close: true, ..Outcome::default() };
        }
        let payload = &msg.bytes[wire::HEADER_LEN..];
        let result = match wire::parse(&h, payload, self.limits.max_data_xfer_size) {
            Err(e) => Err(e),
            Ok(req) => self.dispatch(&h, req, msg.fds),
        };
        let (reply, fds) = match result {
            Ok((payload, fds)) => (wire::reply(&h, &payload), fds),
            Err(Errno(e)) => {
                tracing::debug!(command = h.command, errno = e, "vfio-user: request refused");
                (wire::error_reply(&h, e), Vec::new())
            }
        };
        if h.no_reply() {
            return Outcome::default();
        }
        Outcome { reply, fds, close: false }
    }

    fn dispatch(&mut self, h: &Header, req: Request<'_>, mut fds: Vec<File>) -> Result<(Vec<u8>, Vec<File>), Errno> {
        let dev = self.device.clone();
        // Fds only travel with DMA_MAP and SET_IRQS; any others are closed (dropped) here.
        if !matches!(req, Request::DmaMap { .. } | Request::SetIrqs { .. }) && !fds.is_empty() {
            return Err(Errno(libc::EINVAL));
        }
        if !self.negotiated && !matches!(req, Request::Version { .. }) {
            return Err(Errno(libc::EINVAL));
        }
        let none = |p: Vec<u8>| Ok((p, Vec::new()));
        match req {
            Request::Version { major, minor, caps } => {
                if self.negotiated {
                    return Err(Errno(libc::EINVAL));
                }
                let (payload, agreed) = wire::version_reply(major, minor, caps, LIMITS)?;
                self.limits = agreed;
                self.dma.set_max(agreed.max_dma_maps as usize);
                self.negotiated = true;
                dev.connected();
                none(payload)
            }
            Request::DmaMap { flags, offset, address, size } => {
                if fds.len() > 1 {
                    return Err(Errno(libc::EINVAL));
                }
                self.dma.map(flags, offset, address, size, fds.pop()).map_err(|e| {
                    tracing::warn!(error = %e, "vfio-user: DMA_MAP refused");
                    Errno(e.errno())
                })?;
                dev.dma_changed(self.dma.table());
                none(Vec::new())
            }
            Request::DmaUnmap { argsz, flags, address, size } => {
                if flags & dma_flags::UNMAP_GET_DIRTY_BITMAP != 0 || flags & !(dma_flags::UNMAP_ALL | 1) != 0 {
                    return Err(Errno(libc::ENOTSUP));
                }
                let gone =
                    self.dma.unmap(address, size, flags & dma_flags::UNMAP_ALL != 0).map_err(|e| Errno(e.errno()))?;
                dev.dma_changed(self.dma.table());
                // dma_changed returned: no new DMA goes through the old table. Its regions
                // unmap once the I/O still holding them is done.
                drop(gone);
                // The reply echoes the request's entry.
                let mut p = Vec::with_capacity(24);
                p.extend_from_slice(&argsz.to_le_bytes());
                p.extend_from_slice(&flags.to_le_bytes());
                p.extend_from_slice(&address.to_le_bytes());
                p.extend_from_slice(&size.to_le_bytes());
                none(p)
            }
            Request::GetInfo { argsz } => {
                if (argsz as usize) < 16 {
                    return Err(Errno(libc::EINVAL));
                }
                none(wire::device_info_reply(dev.device_flags(), dev.num_regions(), dev.num_irqs()))
            }
            Request::GetRegionInfo { argsz, index } => {
                if (argsz as usize) < wire::REGION_INFO_LEN {
                    return Err(Errno(libc::EINVAL));
                }
                let (info, fd) = dev.region_info(index)?;
                let payload = wire::region_info_reply(index, &info, argsz);
                let fds =
                    if info.flags & wire::region_flags::MMAP != 0 { fd.into_iter().collect() } else { Vec::new() };
                Ok((payload, fds))
            }
            Request::GetIrqInfo { argsz, index } => {
                if (argsz as usize) < 16 {
                    return Err(Errno(libc::EINVAL));
                }
                let (flags, count) = dev.irq_info(index)?;
                none(wire::irq_info_reply(index, flags, count))
            }
            Request::SetIrqs { flags, index, start, count, data } => {
                if fds.len() > count as usize {
                    return Err(Errno(libc::EINVAL));
                }
                dev.set_irqs(index, flags, start, count, data, fds)?;
                none(Vec::new())
            }
            Request::RegionRead { region, offset, count } => {
                let mut buf = vec![0u8; count as usize];
                dev.region_read(region, offset, &mut buf)?;
                none(wire::region_access_reply(offset, region, count, &buf))
            }
            Request::RegionWrite { region, offset, data } => {
                dev.region_write(region, offset, data)?;
                none(wire::region_access_reply(offset, region, data.len() as u32, &[]))
            }
            Request::Reset => {
                dev.reset()?;
                none(Vec::new())
            }
            Request::Unsupported(c) => {
                tracing::debug!(command = c, id = h.id, "vfio-user: unsupported command");
                let _ = cmd::DEVICE_GET_REGION_IO_FDS; // answered ENOSYS like every unknown command
                Err(Errno(libc::ENOSYS))
            }
        }
    }

    /// The fast path on the event loop for `msg`: Some(outcome) when the device finished it
    /// there (a doorbell write), None when it must go to a worker.
    pub fn try_fast(&self, msg: &Message) -> Option<Outcome> {
        if !self.negotiated || !msg.fds.is_empty() {
            return None;
        }
        let h = msg.header();
        if h.command != cmd::REGION_WRITE || !h.is_command() {
            return None;
        }
        let Ok(Request::RegionWrite { region, offset, data }) =
            wire::parse(&h, &msg.bytes[wire::HEADER_LEN..], self.limits.max_data_xfer_size)
        else {
            return None;
        };
        let result = self.device.region_write_fast(region, offset, data)?;
        if h.no_reply() {
            return Some(Outcome::default());
        }
        let reply = match result {
            Ok(()) => wire::reply(&h, &wire::region_access_reply(offset, region, data.len() as u32, &[])),
            Err(Errno(e)) => wire::error_reply(&h, e),
        };
        Some(Outcome { reply, ..Outcome::default() })
    }

    /// The client is gone: its mappings go (after the device stopped using them).
    pub fn teardown(&mut self) {
        if self.negotiated {
            self.device.disconnected();
        }
        let _ = self.dma.unmap(0, 0, true);
        self.device.dma_changed(self.dma.table());
    }
}

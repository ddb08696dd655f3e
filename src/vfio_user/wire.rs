//! vfio-user messages on the wire (QEMU's `docs/interop/vfio-user.rst`, protocol 0.1): the
//! 16-byte header, the client's requests and the server's replies.
//!
//! Written here from the specification rather than taken from the rust-vmm `vfio_user`
//! crate: the crate keeps its message structs private to its blocking `Client` and `Server`
//! (only the command numbers and DMA flags are public), and Ferry's server runs on its own
//! event loop. Every length is checked against the message before a field is read; a
//! malformed request is an errno for its reply, never a panic.

use std::fmt;

/// Header size.
pub const HEADER_LEN: usize = 16;

/// Command numbers.
pub mod cmd {
    /// VFIO_USER_VERSION.
    pub const VERSION: u16 = 1;
    /// VFIO_USER_DMA_MAP.
    pub const DMA_MAP: u16 = 2;
    /// VFIO_USER_DMA_UNMAP.
    pub const DMA_UNMAP: u16 = 3;
    /// VFIO_USER_DEVICE_GET_INFO.
    pub const DEVICE_GET_INFO: u16 = 4;
    /// VFIO_USER_DEVICE_GET_REGION_INFO.
    pub const DEVICE_GET_REGION_INFO: u16 = 5;
    /// VFIO_USER_DEVICE_GET_REGION_IO_FDS.
    pub const DEVICE_GET_REGION_IO_FDS: u16 = 6;
    /// VFIO_USER_DEVICE_GET_IRQ_INFO.
    pub const DEVICE_GET_IRQ_INFO: u16 = 7;
    /// VFIO_USER_DEVICE_SET_IRQS.
    pub const DEVICE_SET_IRQS: u16 = 8;
    /// VFIO_USER_REGION_READ.
    pub const REGION_READ: u16 = 9;
    /// VFIO_USER_REGION_WRITE.
    pub const REGION_WRITE: u16 = 10;
    /// VFIO_USER_DMA_READ (server to client; never sent by Ferry).
    pub const DMA_READ: u16 = 11;
    /// VFIO_USER_DMA_WRITE (server to client; never sent by Ferry).
    pub const DMA_WRITE: u16 = 12;
    /// VFIO_USER_DEVICE_RESET.
    pub const DEVICE_RESET: u16 = 13;
    /// VFIO_USER_REGION_WRITE_MULTI (only when the server offers `write_multiple`).
    pub const REGION_WRITE_MULTI: u16 = 15;
}

/// Header flags.
pub mod flags {
    /// Bits 0-3: the message type.
    pub const TYPE_MASK: u32 = 0xf;
    /// Type: a command.
    pub const COMMAND: u32 = 0;
    /// Type: a reply.
    pub const REPLY: u32 = 1;
    /// The sender wants no reply.
    pub const NO_REPLY: u32 = 1 << 4;
    /// The reply reports an error (in the error field).
    pub const ERROR: u32 = 1 << 5;
}

/// `VFIO_DEVICE_FLAGS_*` of DEVICE_GET_INFO.
pub mod device_flags {
    /// The device supports DEVICE_RESET.
    pub const RESET: u32 = 1 << 0;
    /// A PCI device.
    pub const PCI: u32 = 1 << 1;
}

/// `VFIO_REGION_INFO_FLAG_*`.
pub mod region_flags {
    /// Readable.
    pub const READ: u32 = 1 << 0;
    /// Writable.
    pub const WRITE: u32 = 1 << 1;
    /// mmap-able through the fd sent with the reply.
    pub const MMAP: u32 = 1 << 2;
    /// A capability list follows.
    pub const CAPS: u32 = 1 << 3;
}

/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`.
pub const CAP_SPARSE_MMAP: u16 = 1;
/// `struct vfio_region_info` size.
pub const REGION_INFO_LEN: usize = 32;

/// `VFIO_IRQ_INFO_*`.
pub mod irq_info_flags {
    /// Signalled through an eventfd.
    pub const EVENTFD: u32 = 1 << 0;
    /// Supports MASK/UNMASK.
    pub const MASKABLE: u32 = 1 << 1;
    /// Masks itself after triggering.
    pub const AUTOMASKED: u32 = 1 << 2;
    /// Set as a whole.
    pub const NORESIZE: u32 = 1 << 3;
}

/// `VFIO_IRQ_SET_*` of DEVICE_SET_IRQS.
pub mod irq_set {
    /// No data: act on `start..start+count`.
    pub const DATA_NONE: u32 = 1 << 0;
    /// An array of `count` booleans.
    pub const DATA_BOOL: u32 = 1 << 1;
    /// Eventfds in the message's fds.
    pub const DATA_EVENTFD: u32 = 1 << 2;
    /// The data bits.
    pub const DATA_MASK: u32 = 0x7;
    /// Mask.
    pub const ACTION_MASK: u32 = 1 << 3;
    /// Unmask.
    pub const ACTION_UNMASK: u32 = 1 << 4;
    /// Trigger.
    pub const ACTION_TRIGGER: u32 = 1 << 5;
    /// The action bits.
    pub const ACTION_MASK_ALL: u32 = 0x38;
}

/// `VFIO_DMA_MAP_FLAG_*`.
pub mod dma_flags {
    /// The device may read the region.
    pub const READ: u32 = 1 << 0;
    /// The device may write the region.
    pub const WRITE: u32 = 1 << 1;
    /// DMA_UNMAP: every mapping (`VFIO_DMA_UNMAP_FLAG_ALL`).
    pub const UNMAP_ALL: u32 = 1 << 1;
    /// DMA_UNMAP: return the dirty bitmap (not supported).
    pub const UNMAP_GET_DIRTY_BITMAP: u32 = 1 << 0;
}

/// The PCI region indices of a vfio PCI device.
pub mod region {
    /// BAR 0.
    pub const BAR0: u32 = 0;
    /// BAR 4.
    pub const BAR4: u32 = 4;
    /// BAR 5.
    pub const BAR5: u32 = 5;
    /// Expansion ROM.
    pub const ROM: u32 = 6;
    /// PCI configuration space.
    pub const CONFIG: u32 = 7;
    /// VGA.
    pub const VGA: u32 = 8;
    /// Number of standard PCI regions.
    pub const COUNT: u32 = 9;
}

/// The PCI interrupt indices.
pub mod irq {
    /// INTx.
    pub const INTX: u32 = 0;
    /// MSI.
    pub const MSI: u32 = 1;
    /// MSI-X.
    pub const MSIX: u32 = 2;
    /// Error notification.
    pub const ERR: u32 = 3;
    /// Device request.
    pub const REQ: u32 = 4;
    /// Number of standard PCI interrupt types.
    pub const COUNT: u32 = 5;
}

/// The message header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Message ID, echoed in the reply.
    pub id: u16,
    /// Command.
    pub command: u16,
    /// Size of the whole message, header included.
    pub size: u32,
    /// Flags (type, no-reply, error).
    pub flags: u32,
    /// Errno of an error reply.
    pub error: u32,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Header {
    /// Decodes the first 16 bytes of `b` (which must hold them).
    pub fn decode(b: &[u8]) -> Header {
        Header { id: le16(b, 0), command: le16(b, 2), size: le32(b, 4), flags: le32(b, 8), error: le32(b, 12) }
    }

    /// The 16 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&self.id.to_le_bytes());
        b[2..4].copy_from_slice(&self.command.to_le_bytes());
        b[4..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.error.to_le_bytes());
        b
    }

    /// Whether the sender asked for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & flags::NO_REPLY != 0
    }

    /// Whether this is a command (not a reply).
    pub fn is_command(&self) -> bool {
        self.flags & flags::TYPE_MASK == flags::COMMAND
    }
}

/// A reply to the command with header `req` carrying `payload`.
pub fn reply(req: &Header, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        id: req.id,
        command: req.command,
        size: (HEADER_LEN + payload.len()) as u32,
        flags: flags::REPLY,
        error: 0,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(payload);
    out
}

/// An error reply (header only) to the command with header `req`.
pub fn error_reply(req: &Header, errno: i32) -> Vec<u8> {
    let h = Header {
        id: req.id,
        command: req.command,
        size: HEADER_LEN as u32,
        flags: flags::REPLY | flags::ERROR,
        error: errno as u32,
    };
    h.encode().to_vec()
}

/// A request the server could not decode: the errno of its error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

fn need(payload: &[u8], n: usize) -> Result<(), Errno> {
    if payload.len() < n {
        Err(Errno(libc::EINVAL))
    } else {
        Ok(())
    }
}

/// A decoded client command (its payload only; fds travel beside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// VERSION: the client's major and minor and its capabilities (JSON, NUL stripped).
    Version {
        /// Major version.
        major: u16,
        /// Minor version.
        minor: u16,
        /// The JSON text, if any.
        caps: Option<&'a str>,
    },
    /// DMA_MAP.
    DmaMap {
        /// READ/WRITE.
        flags: u32,
        /// Offset into the fd.
        offset: u64,
        /// DMA (guest-physical) address.
        address: u64,
        /// Size.
        size: u64,
    },
    /// DMA_UNMAP.
    DmaUnmap {
        /// argsz as sent (echoed back).
        argsz: u32,
        /// UNMAP_ALL, GET_DIRTY_BITMAP.
        flags: u32,
        /// DMA address.
        address: u64,
        /// Size.
        size: u64,
    },
    /// DEVICE_GET_INFO.
    GetInfo {
        /// Room for the reply payload.
        argsz: u32,
    },
    /// DEVICE_GET_REGION_INFO.
    GetRegionInfo {
        /// Room for the reply payload.
        argsz: u32,
        /// Region index.
        index: u32,
    },
    /// DEVICE_GET_IRQ_INFO.
    GetIrqInfo {
        /// Room for the reply payload.
        argsz: u32,
        /// Interrupt type index.
        index: u32,
    },
    /// DEVICE_SET_IRQS.
    SetIrqs {
        /// DATA_* | ACTION_*.
        flags: u32,
        /// Interrupt type index.
        index: u32,
        /// First vector.
        start: u32,
        /// Vectors.
        count: u32,
        /// The DATA_BOOL array (empty otherwise).
        data: &'a [u8],
    },
    /// REGION_READ.
    RegionRead {
        /// Region index.
        region: u32,
        /// Offset in the region.
        offset: u64,
        /// Bytes.
        count: u32,
    },
    /// REGION_WRITE.
    RegionWrite {
        /// Region index.
        region: u32,
        /// Offset in the region.
        offset: u64,
        /// The bytes written.
        data: &'a [u8],
    },
    /// DEVICE_RESET.
    Reset,
    /// Anything else (answered ENOSYS).
    Unsupported(u16),
}

/// Decodes a command's payload. `max_xfer` bounds REGION_READ/WRITE counts (the
/// negotiated `max_data_xfer_size`).
pub fn parse<'a>(h: &Header, payload: &'a [u8], max_xfer: u32) -> Result<Request<'a>, Errno> {
    let p = payload;
    Ok(match h.command {
        cmd::VERSION => {
            need(p, 4)?;
            let caps = match &p[4..] {
                [] => None,
                text => {
                    // The JSON is NUL-terminated; anything after the NUL is ignored.
                    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
                    Some(std::str::from_utf8(&text[..end]).map_err(|_| Errno(libc::EINVAL))?)
                }
            };
            Request::Version { major: le16(p, 0), minor: le16(p, 2), caps }
        }
        cmd::DMA_MAP => {
            need(p, 32)?;
            Request::DmaMap { flags: le32(p, 4), offset: le64(p, 8), address: le64(p, 16), size: le64(p, 24) }
        }
        cmd::DMA_UNMAP => {
            need(p, 24)?;
            Request::DmaUnmap { argsz: le32(p, 0), flags: le32(p, 4), address: le64(p, 8), size: le64(p, 16) }
        }
        cmd::DEVICE_GET_INFO => {
            need(p, 4)?;
            Request::GetInfo { argsz: le32(p, 0) }
        }
        cmd::DEVICE_GET_REGION_INFO => {
            need(p, 12)?;
            Request::GetRegionInfo { argsz: le32(p, 0), index: le32(p, 8) }
        }
        cmd::DEVICE_GET_IRQ_INFO => {
            need(p, 12)?;
            Request::GetIrqInfo { argsz: le32(p, 0), index: le32(p, 8) }
        }
        cmd::DEVICE_SET_IRQS => {
            need(p, 20)?;
            let (flags, index, start, count) = (le32(p, 4), le32(p, 8), le32(p, 12), le32(p, 16));
            let data_kind = flags & irq_set::DATA_MASK;
            let action = flags & irq_set::ACTION_MASK_ALL;
            // Exactly one data kind and one action (the flags are mutually exclusive).
            if data_kind.count_ones() != 1 || action.count_ones() != 1 || flags & !0x3f != 0 {
                return Err(Errno(libc::EINVAL));
            }
            let data = if data_kind == irq_set::DATA_BOOL {
                let n = count as usize;
                need(p, 20 + n)?;
                &p[20..20 + n]
            } else {
                &p[20..20]
            };
            Request::SetIrqs { flags, index, start, count, data }
        }
        cmd::REGION_READ => {
            need(p, 16)?;
            let count = le32(p, 12);
            if count > max_xfer {
                return Err(Errno(libc::E2BIG));
            }
            Request::RegionRead { offset: le64(p, 0), region: le32(p, 8), count }
        }
        cmd::REGION_WRITE => {
            need(p, 16)?;
            let count = le32(p, 12);
            if count > max_xfer {
                return Err(Errno(libc::E2BIG));
            }
            need(p, 16 + count as usize)?;
            Request::RegionWrite { offset: le64(p, 0), region: le32(p, 8), data: &p[16..16 + count as usize] }
        }
        cmd::DEVICE_RESET => Request::Reset,
        other => Request::Unsupported(other),
    })
}

/// The reply payload of a REGION_READ or REGION_WRITE: offset, region, count (and the data).
pub fn region_access_reply(offset: u64, region: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + data.len());
    p.extend_from_slice(&offset.to_le_bytes());
    p.extend_from_slice(&region.to_le_bytes());
    p.extend_from_slice(&count.to_le_bytes());
    p.extend_from_slice(data);
    p
}

/// A region as DEVICE_GET_REGION_INFO describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// READ/WRITE/MMAP flags (CAPS is added when there are sparse areas).
    pub flags: u32,
    /// Size in bytes (0: the region does not exist).
    pub size: u64,
    /// Offset to give mmap() with the region's fd.
    pub offset: u64,
    /// Sparse mmap areas (offset, size) within the region.
    pub sparse: Vec<(u64, u64)>,
}

/// The reply payload of DEVICE_GET_REGION_INFO for region `index`, cut to `argsz` bytes:
/// `argsz` in the reply always says how much the full answer needs, so a client whose
/// buffer was too small for the capabilities asks again.
pub fn region_info_reply(index: u32, info: &RegionInfo, argsz: u32) -> Vec<u8> {
    let mut caps = Vec::new();
    let mut flags = info.flags;
    if !info.sparse.is_empty() {
        flags |= region_flags::CAPS;
        // Header: id, version 1, next 0; then nr_areas, reserved; then the areas.
        caps.extend_from_slice(&CAP_SPARSE_MMAP.to_le_bytes());
        caps.extend_from_slice(&1u16.to_le_bytes());
        caps.extend_from_slice(&0u32.to_le_bytes());
        caps.extend_from_slice(&(info.sparse.len() as u32).to_le_bytes());
        caps.extend_from_slice(&0u32.to_le_bytes());
        for (off, size) in &info.sparse {
            caps.extend_from_slice(&off.to_le_bytes());
            caps.extend_from_slice(&size.to_le_bytes());
        }
    }
    let full = REGION_INFO_LEN + caps.len();
    let mut p = Vec::with_capacity(full);
    p.extend_from_slice(&(full as u32).to_le_bytes());
    let fits = full <= argsz as usize;
    // Without room for the capabilities, the reply says so through argsz and leaves them out.
    let shown_flags = if fits { flags } else { flags & !region_flags::CAPS };
    p.extend_from_slice(&shown_flags.to_le_bytes());
    p.extend_from_slice(&index.to_le_bytes());
    let cap_offset = if fits && !caps.is_empty() { REGION_INFO_LEN as u32 } else { 0 };
    p.extend_from_slice(&cap_offset.to_le_bytes());
    p.extend_from_slice(&info.size.to_le_bytes());
    p.extend_from_slice(&info.offset.to_le_bytes());
    if fits {
        p.extend_from_slice(&caps);
    }
    p
}

/// The reply payload of DEVICE_GET_INFO.
pub fn device_info_reply(flags: u32, num_regions: u32, num_irqs: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(16);
    p.extend_from_slice(&16u32.to_le_bytes());
    p.extend_from_slice(&flags.to_le_bytes());
    p.extend_from_slice(&num_regions.to_le_bytes());
    p.extend_from_slice(&num_irqs.to_le_bytes());
    p
}

/// The reply payload of DEVICE_GET_IRQ_INFO.
pub fn irq_info_reply(index: u32, flags: u32, count: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(16);
    p.extend_from_slice(&16u32.to_le_bytes());
    p.extend_from_slice(&flags.to_le_bytes());
    p.extend_from_slice(&index.to_le_bytes());
    p.extend_from_slice(&count.to_le_bytes());
    p
}

/// What the server negotiates in VERSION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fds the server takes with one message.
    pub max_msg_fds: u32,
    /// Largest REGION_READ/WRITE count.
    pub max_data_xfer_size: u32,
    /// Most DMA mappings at once.
    pub max_dma_maps: u32,
}

/// The protocol major version Ferry speaks.
pub const MAJOR: u16 = 0;
/// The highest minor version Ferry speaks.
pub const MINOR: u16 = 1;
/// The page size of DMA mappings.
pub const PAGE_SIZE: u64 = 4096;

/// The server's answer to VERSION: its version and capabilities, each a subset of what the
/// client proposed and no larger than Ferry's `ours`, so the reply is never longer than the
/// request (QEMU reads the reply into the request's buffer). The negotiated limits come
/// back with it.
pub fn version_reply(major: u16, minor: u16, caps: Option<&str>, ours: Limits) -> Result<(Vec<u8>, Limits), Errno> {
    if major != MAJOR {
        return Err(Errno(libc::ENOTSUP));
    }
    let proposed: serde_json::Value = match caps {
        None | Some("") => serde_json::json!({}),
        Some(text) => serde_json::from_str(text).map_err(|_| Errno(libc::EINVAL))?,
    };
    let theirs = proposed.get("capabilities").and_then(|c| c.as_object());
    let num = |key: &str| theirs.and_then(|c| c.get(key)).and_then(|v| v.as_u64());
    // Defaults the specification gives for capabilities a peer leaves out.
    let mut agreed = Limits { max_msg_fds: 1, max_data_xfer_size: 1 << 20, max_dma_maps: 65535 };
    let mut out = serde_json::Map::new();
    if let Some(n) = num("max_msg_fds") {
        let v = (n.min(ours.max_msg_fds as u64)) as u32;
        out.insert("max_msg_fds".into(), v.into());
    }
    // What the server receives: its own limit, whatever the client can take.
    agreed.max_msg_fds = ours.max_msg_fds;
    if let Some(n) = num("max_data_xfer_size") {
        let v = n.min(ours.max_data_xfer_size as u64) as u32;
        out.insert("max_data_xfer_size".into(), v.into());
        agreed.max_data_xfer_size = v;
    } else {
        agreed.max_data_xfer_size = agreed.max_data_xfer_size.min(ours.max_data_xfer_size);
    }
    if let Some(n) = num("max_dma_maps") {
        let v = n.min(ours.max_dma_maps as u64) as u32;
        out.insert("max_dma_maps".into(), v.into());
        agreed.max_dma_maps = v;
    } else {
        agreed.max_dma_maps = agreed.max_dma_maps.min(ours.max_dma_maps);
    }
    if let Some(n) = num("pgsizes") {
        if n & PAGE_SIZE == 0 {
            // The client cannot map 4 KiB pages: nothing in common.
            return Err(Errno(libc::ENOTSUP));
        }
        out.insert("pgsizes".into(), PAGE_SIZE.into());
    }
    let json = if theirs.is_some() { serde_json::json!({ "capabilities": out }).to_string() } else { String::new() };
    let mut p = Vec::with_capacity(4 + json.len() + 1);
    p.extend_from_slice(&MAJOR.to_le_bytes());
    p.extend_from_slice(&minor.min(MINOR).to_le_bytes());
    if !json.is_empty() {
        p.extend_from_slice(json.as_bytes());
        p.push(0);
    }
    Ok((p, agreed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Limits = Limits { max_msg_fds: 16, max_data_xfer_size: 1 << 20, max_dma_maps: 1024 };

    #[test]
    fn headers_round_trip_and_replies_echo_the_id() {
        let h = Header { id: 7, command: cmd::REGION_READ, size: 32, flags: flags::NO_REPLY, error: 0 };
        assert_eq!(Header::decode(&h.encode()), h);
        assert!(h.no_reply() && h.is_command());
        let r = reply(&h, &[1, 2, 3]);
        let rh = Header::decode(&r);
        assert_eq!((rh.id, rh.command, rh.size, rh.flags), (7, cmd::REGION_READ, 19, flags::REPLY));
        let e = Header::decode(&error_reply(&h, libc::EINVAL));
        assert_eq!((e.flags, e.error, e.size), (flags::REPLY | flags::ERROR, libc::EINVAL as u32, 16));
    }

    #[test]
    fn short_and_oversized_requests_are_errors() {
        let h = |command| Header { command, ..Header::default() };
        assert_eq!(parse(&h(cmd::DMA_MAP), &[0; 31], 4096), Err(Errno(libc::EINVAL)));
        let mut rw = vec![0u8; 16];
        rw[12..16].copy_from_slice(&8u32.to_le_bytes());
        // A write whose count runs past the message.
        assert_eq!(parse(&h(cmd::REGION_WRITE), &rw, 4096), Err(Errno(libc::EINVAL)));
        rw[12..16].copy_from_slice(&8192u32.to_le_bytes());
        assert_eq!(parse(&h(cmd::REGION_READ), &rw, 4096), Err(Errno(libc::E2BIG)));
        // SET_IRQS with two data kinds, or a boolean array that is not there.
        let mut irqs = vec![0u8; 20];
        irqs[4..8]
            .copy_from_slice(&(irq_set::DATA_NONE | irq_set::DATA_EVENTFD | irq_set::ACTION_TRIGGER).to_le_bytes());
        assert_eq!(parse(&h(cmd::DEVICE_SET_IRQS), &irqs, 4096), Err(Errno(libc::EINVAL)));
        irqs[4..8].copy_from_slice(&(irq_set::DATA_BOOL | irq_set::ACTION_TRIGGER).to_le_bytes());
        irqs[16..20].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(parse(&h(cmd::DEVICE_SET_IRQS), &irqs, 4096), Err(Errno(libc::EINVAL)));
        assert_eq!(parse(&h(99), &[], 4096), Ok(Request::Unsupported(99)));
    }

    #[test]
    fn version_reply_is_a_subset_no_longer_than_the_request() {
        // What QEMU 10.1 proposes.
        let qemu = r#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#;
        let (p, agreed) = version_reply(0, 1, Some(qemu), OURS).unwrap();
        assert!(p.len() <= 4 + qemu.len() + 1);
        assert_eq!(*p.last().unwrap(), 0, "NUL-terminated");
        let v: serde_json::Value = serde_json::from_slice(&p[4..p.len() - 1]).unwrap();
        let c = &v["capabilities"];
        assert_eq!((c["max_msg_fds"].as_u64(), c["max_dma_maps"].as_u64()), (Some(16), Some(1024)));
        assert!(c.get("write_multiple").is_none() && c.get("migration").is_none());
        assert_eq!(agreed, Limits { max_msg_fds: 16, max_data_xfer_size: 1 << 20, max_dma_maps: 1024 });
        assert_eq!(le16(&p, 2), 1);
        assert_eq!(version_reply(1, 0, None, OURS).unwrap_err(), Errno(libc::ENOTSUP));
        assert_eq!(version_reply(0, 1, Some("{"), OURS).unwrap_err(), Errno(libc::EINVAL));
        // No capabilities asked: none given, defaults apply.
        let (p, agreed) = version_reply(0, 0, None, OURS).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(agreed.max_msg_fds, 16);
    }

    #[test]
    fn region_info_leaves_capabilities_out_when_they_do_not_fit() {
        let info = RegionInfo {
            flags: region_flags::READ | region_flags::WRITE | region_flags::MMAP,
            size: 16384,
            offset: 0,
            sparse: vec![(0x1000, 0x1000)],
        };
        let short = region_info_reply(0, &info, 32);
        assert_eq!(short.len(), 32);
        assert_eq!(le32(&short, 0), 32 + 8 + 8 + 16, "argsz says what the full answer needs");
        assert_eq!(le32(&short, 4) & region_flags::CAPS, 0);
        let full = region_info_reply(0, &info, 64);
        assert_eq!(full.len(), 64);
        assert_eq!(le32(&full, 12), 32, "cap_offset");
        assert_eq!(le16(&full, 32), CAP_SPARSE_MMAP);
        assert_eq!((le32(&full, 40), le64(&full, 48), le64(&full, 56)), (1, 0x1000, 0x1000));
    }
}

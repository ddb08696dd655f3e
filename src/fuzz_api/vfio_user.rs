//! The vfio-user server's receive path as an endpoint serves it: the fuzzer's bytes as a
//! client's stream (a DMA_MAP message gets a small sealed memfd with it, as QEMU sends guest
//! memory), cut into messages and handled by `vfio_user::connection::serve_blocking` through
//! the session (version negotiation, DMA maps and unmaps, device, region and interrupt info,
//! region reads and writes, SET_IRQS, reset, unknown commands) against a PCI device with the
//! NVMe function's configuration space and a register BAR. Every reply is checked: a reply
//! header, the request's id, a size inside the message, and (for VERSION) no longer than the
//! request, which QEMU reads it into.

use crate::nvmf::vfio_user::pci::ConfigSpace;
use crate::vfio_user::connection::serve_blocking;
use crate::vfio_user::session::Session;
use crate::vfio_user::wire::{self, cmd, flags, Header, HEADER_LEN};
use crate::vfio_user::{Device, DmaTable, Errno, RegionInfo};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// A small PCI device: the NVMe function's configuration space, a 16 KiB register BAR0 and
/// eight MSI-X vectors.
struct FuzzDevice {
    config: Mutex<ConfigSpace>,
    bar0: Mutex<Vec<u8>>,
    vectors: Mutex<Vec<Option<File>>>,
}

impl Device for FuzzDevice {
    fn device_flags(&self) -> u32 {
        wire::device_flags::PCI | wire::device_flags::RESET
    }
    fn num_regions(&self) -> u32 {
        wire::region::COUNT
    }
    fn num_irqs(&self) -> u32 {
        wire::irq::COUNT
    }
    fn region_info(&self, index: u32) -> Result<(RegionInfo, Option<File>), Errno> {
        let rw = wire::region_flags::READ | wire::region_flags::WRITE;
        match index {
            wire::region::CONFIG => Ok((RegionInfo { flags: rw, size: 4096, ..Default::default() }, None)),
            wire::region::BAR0 => {
                Ok((RegionInfo { flags: rw, size: 0x4000, offset: 0, sparse: vec![(0x1000, 0x1000)] }, None))
            }
            i if i < wire::region::COUNT => Ok((RegionInfo::default(), None)),
            _ => Err(Errno(libc::EINVAL)),
        }
    }
    fn irq_info(&self, index: u32) -> Result<(u32, u32), Errno> {
        match index {
            wire::irq::MSIX => Ok((wire::irq_info_flags::EVENTFD, 8)),
            i if i < wire::irq::COUNT => Ok((0, 0)),
            _ => Err(Errno(libc::EINVAL)),
        }
    }
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        match index {
            wire::region::CONFIG => {
                self.config.lock().unwrap().read(offset, buf).then_some(()).ok_or(Errno(libc::EINVAL))
            }
            wire::region::BAR0 => {
                let bar = self.bar0.lock().unwrap();
                let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= bar.len() as u64);
                let end = end.ok_or(Errno(libc::EINVAL))?;
                buf.copy_from_slice(&bar[offset as usize..end as usize]);
                Ok(())
            }
            _ => Err(Errno(libc::EINVAL)),
        }
    }
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        match index {
            wire::region::CONFIG => {
                self.config.lock().unwrap().write(offset, data).then_some(()).ok_or(Errno(libc::EINVAL))
            }
            wire::region::BAR0 => {
                let mut bar = self.bar0.lock().unwrap();
                let end = offset.checked_add(data.len() as u64).filter(|&e| e <= bar.len() as u64);
                let end = end.ok_or(Errno(libc::EINVAL))?;
                bar[offset as usize..end as usize].copy_from_slice(data);
                Ok(())
            }
            _ => Err(Errno(libc::EINVAL)),
        }
    }
    fn region_write_fast(&self, index: u32, offset: u64, data: &[u8]) -> Option<Result<(), Errno>> {
        (index == wire::region::BAR0 && offset >= 0x1000).then(|| self.region_write(index, offset, data))
    }
    fn set_irqs(
        &self,
        index: u32,
        _flags: u32,
        start: u32,
        count: u32,
        _d: &[u8],
        fds: Vec<File>,
    ) -> Result<(), Errno> {
        if index != wire::irq::MSIX {
            return Err(Errno(libc::EINVAL));
        }
        let end = start.checked_add(count).filter(|&e| e <= 8).ok_or(Errno(libc::EINVAL))?;
        let mut v = self.vectors.lock().unwrap();
        let mut fds = fds.into_iter();
        for i in start..end {
            v[i as usize] = fds.next();
        }
        Ok(())
    }
    fn dma_changed(&self, table: Arc<DmaTable>) {
        // Every mapped region translates within itself.
        let _ = table.translate(0, 1, false);
    }
    fn reset(&self) -> Result<(), Errno> {
        *self.config.lock().unwrap() = ConfigSpace::new();
        Ok(())
    }
    fn disconnected(&self) {
        self.vectors.lock().unwrap().iter_mut().for_each(|v| *v = None);
    }
}

/// A sealed memfd of `size` bytes (guest memory, as QEMU shares it).
fn memfd(size: u64) -> File {
    let name = std::ffi::CString::new("ferry-fuzz-vfio-user").expect("name");
    // SAFETY: memfd_create with a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: the fd was just created and is ours.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).expect("size the memfd");
    // SAFETY: fcntl on our own fd with an integer argument.
    unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) };
    file
}

/// Checks the reply stream; returns the replies read.
fn check_replies(mut r: UnixStream, requests: Vec<(u16, u16, usize)>) -> u64 {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    let mut at = 0;
    let mut n = 0;
    // Replies come in the order of their requests (ids may repeat).
    let mut next = 0;
    while at + HEADER_LEN <= buf.len() {
        let h = Header::decode(&buf[at..]);
        assert_eq!(h.flags & flags::TYPE_MASK, flags::REPLY, "a reply");
        assert!(h.size as usize >= HEADER_LEN && at + h.size as usize <= buf.len(), "a whole reply");
        if h.flags & flags::ERROR != 0 {
            assert_eq!(h.size as usize, HEADER_LEN, "an error reply is a header only");
        }
        // A reply answers a later request with its id and command.
        let Some(pos) = requests[next..].iter().position(|(id, c, _)| *id == h.id && *c == h.command) else {
            panic!("a reply to no request: {h:?}");
        };
        let (_, command, size) = requests[next + pos];
        next += pos + 1;
        if command == cmd::VERSION && h.flags & flags::ERROR == 0 {
            assert!(h.size as usize <= size, "VERSION's reply fits the request's buffer");
        }
        at += h.size as usize;
        n += 1;
    }
    n
}

/// Input: the client's byte stream. Returns the messages the session handled.
pub fn vfio_user(data: &[u8]) -> u64 {
    // Cut the stream as the server will (by the header's size) to know which messages are
    // DMA_MAPs (they get an fd) and which ids replies may carry.
    let mut messages: Vec<(Vec<u8>, bool)> = Vec::new();
    let mut requests = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let rest = &data[at..];
        if rest.len() < HEADER_LEN {
            messages.push((rest.to_vec(), false));
            break;
        }
        let h = Header::decode(rest);
        let size = (h.size as usize).clamp(HEADER_LEN, rest.len());
        messages.push((rest[..size].to_vec(), h.command == cmd::DMA_MAP));
        requests.push((h.id, h.command, h.size as usize));
        at += size;
    }
    let (client, server) = UnixStream::pair().expect("socketpair");
    let reader = client.try_clone().expect("dup");
    let writer = std::thread::spawn(move || {
        let mut client = client;
        let guest = memfd(1 << 16);
        for (bytes, with_fd) in &messages {
            let sent = if *with_fd {
                client.send_with_fd(bytes.as_slice(), guest.as_raw_fd()).is_ok()
            } else {
                client.write_all(bytes).is_ok()
            };
            if !sent {
                break;
            }
        }
        let _ = client.shutdown(std::net::Shutdown::Write);
    });
    let checker = std::thread::spawn(move || check_replies(reader, requests));
    let device = Arc::new(FuzzDevice {
        config: Mutex::new(ConfigSpace::new()),
        bar0: Mutex::new(vec![0; 0x4000]),
        vectors: Mutex::new((0..8).map(|_| None).collect()),
    });
    let mut session = Session::new(device);
    let handled = serve_blocking(&server, &mut session);
    session.teardown();
    drop(server);
    writer.join().expect("writer");
    let replies = checker.join().expect("reply checks");
    assert!(replies <= handled as u64, "no more replies than messages");
    handled as u64
}

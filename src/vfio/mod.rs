//! The VFIO carrier of Ferry's userspace NVMe driver: an NVMe PCI function bound to `vfio-pci`
//! (`scripts/vfio-bind.sh`), driven from this process.
//!
//! [`open_pci`] checks the function (a well-formed address, an IOMMU group, bound to
//! `vfio-pci`, every function of its group on `vfio-pci` or no driver), opens a type1v2
//! container, the group and the device with the `vfio-ioctls` crate, maps BAR0 (so that a
//! register access or a doorbell is a plain volatile load or store), turns on bus mastering,
//! allocates the DMA arena and maps it in the IOMMU at [`ARENA_IOVA`], and enables MSI-X with
//! one eventfd per vector. The result implements [`PciFunction`], the contract of the NVMe
//! PCIe transport (`ferry_nvme::host::pcie`).
//!
//! The arena's IOVA is fixed, not its virtual address: an IOMMU's input addresses may be
//! narrower than a process's (QEMU's emulated VT-d had 39 bits), and the IOVA must stay clear
//! of the MSI window at 0xfee00000, which the kernel reserves.

#[cfg(test)]
mod tests;

use ferry_nvme::host::pcie::function::{DmaArena, PciFunction, RegAccess, RegOp};
use ferry_nvme::host::HostError;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use tracing::{debug, info, warn};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps, VfioRegionInfoCap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Where the function sees the DMA arena: 1 GiB, below any IOMMU's address-width limit and
/// clear of the MSI window.
pub const ARENA_IOVA: u64 = 0x4000_0000;

/// Where the MSI window starts (x86): no IOVA may reach it.
const MSI_WINDOW: u64 = 0xfee0_0000;

/// The largest DMA arena [`open_pci`] maps.
pub const MAX_ARENA: usize = (MSI_WINDOW - ARENA_IOVA) as usize;

const PAGE: usize = 4096;
const HUGE_PAGE: usize = 2 << 20;
const SYS_PCI: &str = "/sys/bus/pci/devices";

/// PCI command register: memory space and bus master enable.
const PCI_COMMAND: u64 = 0x4;
const PCI_COMMAND_MEMORY: u16 = 0x2;
const PCI_COMMAND_MASTER: u16 = 0x4;

/// Why a function could not be opened, with the step that failed.
#[derive(Debug, Error)]
pub enum VfioError {
    /// Not a PCI address.
    #[error("{0:?} is not a PCI address (DDDD:BB:DD.F or BB:DD.F)")]
    BadAddress(String),
    /// The arena's length is unusable.
    #[error("bad DMA arena length {len}: {why}")]
    BadArena {
        /// The length asked for.
        len: usize,
        /// What is wrong with it.
        why: String,
    },
    /// No such function.
    #[error("no PCI function {bdf} ({path} does not exist)")]
    NoDevice {
        /// The address.
        bdf: String,
        /// Its sysfs path.
        path: String,
    },
    /// The function is in no IOMMU group: no IOMMU in use.
    #[error(
        "{bdf} has no IOMMU group: no IOMMU in use (Intel: boot with intel_iommu=on; QEMU: -machine q35 \
         -device intel-iommu,intremap=on); VFIO without an IOMMU is not supported"
    )]
    NoIommuGroup {
        /// The address.
        bdf: String,
    },
    /// The function is not bound to vfio-pci.
    #[error("{bdf} is bound to {driver}, not vfio-pci (scripts/vfio-bind.sh {bdf} binds it)")]
    NotBound {
        /// The address.
        bdf: String,
        /// Its driver ("no driver" if none).
        driver: String,
    },
    /// Another function of the group holds it back.
    #[error("IOMMU group {group} of {bdf} is not viable: {other} is bound to {driver} (bind it to vfio-pci too)")]
    GroupNotViable {
        /// The address.
        bdf: String,
        /// The group.
        group: u32,
        /// The other function.
        other: String,
        /// Its driver.
        driver: String,
    },
    /// A VFIO ioctl failed.
    #[error("{bdf}: {step}: {source}")]
    Vfio {
        /// The address.
        bdf: String,
        /// What was being done.
        step: String,
        /// The crate's error.
        source: vfio_ioctls::VfioError,
    },
    /// A system call failed.
    #[error("{bdf}: {step}: {source}")]
    Os {
        /// The address.
        bdf: String,
        /// What was being done.
        step: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Locked memory is limited below what the arena needs.
    #[error(
        "{bdf}: RLIMIT_MEMLOCK allows {limit} bytes of pinned memory and the DMA arena needs {need}: raise it \
         (ulimit -l, systemd's LimitMEMLOCK=) or give ferryd CAP_IPC_LOCK"
    )]
    Memlock {
        /// The address.
        bdf: String,
        /// The limit after trying to raise it.
        limit: u64,
        /// The arena's length.
        need: u64,
    },
    /// BAR0 is unusable.
    #[error("{bdf}: BAR0 {why}")]
    Bar0 {
        /// The address.
        bdf: String,
        /// What is wrong.
        why: String,
    },
}

/// A PCI address in canonical form (`0000:00:04.0`), from `DDDD:BB:DD.F` or `BB:DD.F`, hex
/// digits only (it becomes a sysfs path).
pub fn parse_bdf(s: &str) -> Result<String, VfioError> {
    let bad = || VfioError::BadAddress(s.to_string());
    let hex = |t: &str, n: usize| t.len() == n && t.bytes().all(|b| b.is_ascii_hexdigit());
    let (rest, func) = s.rsplit_once('.').ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split(':').collect();
    let (domain, bus, dev) = match parts[..] {
        [d, b, v] => (d, b, v),
        [b, v] => ("0000", b, v),
        _ => return Err(bad()),
    };
    if !(hex(domain, 4) && hex(bus, 2) && hex(dev, 2) && hex(func, 1)) {
        return Err(bad());
    }
    let (dev_n, func_n) =
        (u8::from_str_radix(dev, 16).map_err(|_| bad())?, u8::from_str_radix(func, 16).map_err(|_| bad())?);
    if dev_n > 0x1f || func_n > 7 {
        return Err(bad());
    }
    Ok(format!("{}:{}:{}.{}", domain, bus, dev, func).to_ascii_lowercase())
}

/// The name of the driver `sysfs` (a function's sysfs directory) is bound to, if any.
fn driver_of(sysfs: &Path) -> Option<String> {
    let link = std::fs::read_link(sysfs.join("driver")).ok()?;
    link.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// The IOMMU group of the function at `sysfs`.
fn group_of(sysfs: &Path) -> Option<u32> {
    std::fs::read_link(sysfs.join("iommu_group")).ok()?.file_name()?.to_str()?.parse().ok()
}

/// Checks what can be checked before any ioctl: the function exists, has an IOMMU group, is
/// bound to vfio-pci, and no function of its group is on another driver. Returns its sysfs
/// path and group.
fn check_function(sys_root: &Path, bdf: &str) -> Result<(PathBuf, u32), VfioError> {
    let sysfs = sys_root.join(bdf);
    if !sysfs.exists() {
        return Err(VfioError::NoDevice { bdf: bdf.into(), path: sysfs.display().to_string() });
    }
    let group = group_of(&sysfs).ok_or_else(|| VfioError::NoIommuGroup { bdf: bdf.into() })?;
    let driver = driver_of(&sysfs);
    if driver.as_deref() != Some("vfio-pci") {
        return Err(VfioError::NotBound { bdf: bdf.into(), driver: driver.unwrap_or_else(|| "no driver".into()) });
    }
    // As the kernel's viability rule: functions on vfio-pci, pci-stub or no driver, and bridges.
    let members = sysfs.join("iommu_group/devices");
    for e in std::fs::read_dir(&members).map_err(|source| VfioError::Os {
        bdf: bdf.into(),
        step: "list the functions of its IOMMU group",
        source,
    })? {
        let Ok(e) = e else { continue };
        let other = e.path();
        let Some(drv) = driver_of(&other) else { continue };
        let bridge = std::fs::read_to_string(other.join("class")).is_ok_and(|c| c.trim().starts_with("0x0604"));
        if !(drv == "vfio-pci" || drv == "pci-stub" || bridge) {
            return Err(VfioError::GroupNotViable {
                bdf: bdf.into(),
                group,
                other: e.file_name().to_string_lossy().into_owned(),
                driver: drv,
            });
        }
    }
    Ok((sysfs, group))
}

/// Makes sure `need` bytes can be pinned: raises RLIMIT_MEMLOCK as far as allowed (the
/// process may hold CAP_IPC_LOCK instead, which VFIO's accounting honours).
fn ensure_memlock(bdf: &str, need: u64) -> Result<(), VfioError> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(VfioError::Os {
            bdf: bdf.into(),
            step: "read RLIMIT_MEMLOCK",
            source: std::io::Error::last_os_error(),
        });
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return Ok(());
    }
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        info!(bdf, "RLIMIT_MEMLOCK raised to unlimited for VFIO DMA mappings");
        return Ok(());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
            lim = raised;
        }
    }
    if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= need || has_cap_ipc_lock() {
        return Ok(());
    }
    Err(VfioError::Memlock { bdf: bdf.into(), limit: lim.rlim_cur, need })
}

/// Whether this process's effective capabilities include CAP_IPC_LOCK (VFIO then pins
/// without counting against RLIMIT_MEMLOCK).
fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim().to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// BAR0 as this process reaches it: mapped (`ptr`, the first `mapped` bytes), and through the
/// device fd's region for anything beyond the mapping (or all of it if BAR0 cannot be mapped).
struct Bar0 {
    ptr: *mut u8,
    mapped: usize,
    size: u64,
    /// BAR0's offset in the device fd.
    offset: u64,
}

impl Bar0 {
    fn check(&self, off: u32, width: u64) -> Result<(), HostError> {
        if !off.is_multiple_of(4) || u64::from(off) + width > self.size {
            return Err(HostError::Invalid(format!(
                "BAR0 access of {width} bytes at {off:#x} (BAR0 is {:#x})",
                self.size
            )));
        }
        Ok(())
    }

    fn read32(&self, dev: &File, off: u32) -> Result<u32, HostError> {
        self.check(off, 4)?;
        if (off as usize) + 4 <= self.mapped {
            // SAFETY: in the mapping (checked above), 4-byte aligned; MMIO must be volatile.
            return Ok(unsafe { std::ptr::read_volatile(self.ptr.add(off as usize) as *const u32) });
        }
        let mut b = [0u8; 4];
        dev.read_exact_at(&mut b, self.offset + u64::from(off))
            .map_err(|e| HostError::Io { context: "BAR0 read", message: e.to_string() })?;
        Ok(u32::from_le_bytes(b))
    }

    fn write32(&self, dev: &File, off: u32, v: u32) -> Result<(), HostError> {
        self.check(off, 4)?;
        if (off as usize) + 4 <= self.mapped {
            // SAFETY: in the mapping (checked above), 4-byte aligned; MMIO must be volatile.
            unsafe { std::ptr::write_volatile(self.ptr.add(off as usize) as *mut u32, v) };
            return Ok(());
        }
        dev.write_all_at(&v.to_le_bytes(), self.offset + u64::from(off))
            .map_err(|e| HostError::Io { context: "BAR0 write", message: e.to_string() })
    }
}

impl Drop for Bar0 {
    fn drop(&mut self) {
        if self.mapped > 0 {
            // SAFETY: our own mapping of BAR0, unused once its owner is dropped.
            unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.mapped) };
        }
    }
}

/// The DMA arena's mapping in this process.
struct Arena {
    ptr: *mut u8,
    len: usize,
}

impl Arena {
    /// Shared anonymous memory (never copied on write: a fork must not move pages the device
    /// writes), populated, on 2 MiB pages when the length allows and the system has them.
    fn new(bdf: &str, len: usize) -> Result<Arena, VfioError> {
        let base = libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        let map = |flags| {
            // SAFETY: a new anonymous mapping; nothing else is at the address the kernel picks.
            let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
            (p != libc::MAP_FAILED).then_some(p as *mut u8)
        };
        let ptr = match len.is_multiple_of(HUGE_PAGE).then(|| map(base | libc::MAP_HUGETLB)).flatten() {
            Some(p) => {
                debug!(bdf, len, "DMA arena on 2 MiB pages");
                p
            }
            None => map(base).ok_or_else(|| VfioError::Os {
                bdf: bdf.into(),
                step: "allocate the DMA arena",
                source: std::io::Error::last_os_error(),
            })?,
        };
        let arena = Arena { ptr, len };
        // SAFETY: our own mapping, its whole length.
        if unsafe { libc::madvise(ptr as *mut libc::c_void, len, libc::MADV_DONTFORK) } != 0 {
            return Err(VfioError::Os {
                bdf: bdf.into(),
                step: "keep the DMA arena out of forks",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(arena)
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the IOMMU mapping was removed first (VfioPciFunction::drop).
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// An NVMe PCI function bound to vfio-pci, opened by [`open_pci`].
pub struct VfioPciFunction {
    /// First, so it is unmapped first once Drop::drop ran.
    bar0: Bar0,
    bdf: String,
    group: u32,
    arena: Arena,
    /// Whether the arena is mapped in the IOMMU (undone in Drop).
    dma_mapped: bool,
    /// One eventfd per enabled MSI-X vector.
    irqs: Vec<EventFd>,
    /// A second handle on the device fd, for region reads and writes (config space, BAR0
    /// beyond its mapping).
    dev_file: File,
    /// Declared after everything that uses the device so it closes last but the container.
    device: VfioDevice,
    container: Arc<VfioContainer>,
}

// SAFETY: BAR0's and the arena's pointers are mappings owned by this value for its whole
// life; BAR0 is accessed only with volatile 32-bit loads and stores, which any thread may do,
// and the arena's contents are the driver's business (see DmaArena).
unsafe impl Send for VfioPciFunction {}
// SAFETY: as above.
unsafe impl Sync for VfioPciFunction {}

/// Opens the NVMe function `bdf` (bound to vfio-pci) for the userspace driver: a DMA arena of
/// `arena_len` bytes (a multiple of 4 KiB) at [`ARENA_IOVA`] and up to `vectors` MSI-X
/// vectors (as many as the function has, if fewer; none if 0).
pub fn open_pci(bdf: &str, arena_len: usize, vectors: u16) -> Result<Arc<VfioPciFunction>, VfioError> {
    open_pci_in(Path::new(SYS_PCI), bdf, arena_len, vectors)
}

/// [`open_pci`] with the PCI devices' sysfs directory given (tests).
fn open_pci_in(sys_root: &Path, bdf: &str, arena_len: usize, vectors: u16) -> Result<Arc<VfioPciFunction>, VfioError> {
    let bdf = parse_bdf(bdf)?;
    check_arena_len(arena_len)?;
    let (sysfs, group) = check_function(sys_root, &bdf)?;
    let b = bdf.as_str();
    let container = Arc::new(VfioContainer::new(None).map_err(|source| VfioError::Vfio {
        bdf: b.into(),
        step: "open the VFIO container /dev/vfio/vfio (type1v2; scripts/vfio-bind.sh loads the modules)".into(),
        source,
    })?);
    let ops: Arc<dyn VfioOps> = container.clone();
    let device = VfioDevice::new(&sysfs, ops, false).map_err(|source| {
        let step = match &source {
            vfio_ioctls::VfioError::OpenGroup(e, _) if e.raw_os_error() == Some(libc::EBUSY) => {
                format!("open /dev/vfio/{group} (busy: another process, or this one, has the group open)")
            }
            vfio_ioctls::VfioError::GroupViable => format!("group {group} is not viable"),
            vfio_ioctls::VfioError::ContainerSetIOMMU(_) => format!(
                "attach group {group} to a type1v2 container (vfio_iommu_type1 refuses groups without interrupt \
                 remapping: QEMU's intel-iommu needs intremap=on)"
            ),
            _ => format!("open the device in group {group}"),
        };
        VfioError::Vfio { bdf: b.into(), step, source }
    })?;
    // SAFETY: dup of a valid fd we keep; the File owns the duplicate.
    let dup = unsafe { libc::fcntl(device.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(VfioError::Os {
            bdf: b.into(),
            step: "duplicate the device fd",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `dup` is a new fd nothing else owns.
    let dev_file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(dup) };
    let bar0 = map_bar0(b, &device)?;
    let arena = Arena::new(b, arena_len)?;
    let mut f =
        VfioPciFunction { bar0, bdf, group, arena, dma_mapped: false, irqs: Vec::new(), dev_file, device, container };
    f.enable_bus_master()?;
    ensure_memlock(&f.bdf, arena_len as u64)?;
    // SAFETY: the arena is our own mapping, alive until after the unmap in Drop; from here on
    // it is only touched through raw pointers (DmaArena), never through references.
    unsafe { f.container.vfio_dma_map(ARENA_IOVA, arena_len, f.arena.ptr) }.map_err(|source| VfioError::Vfio {
        bdf: f.bdf.clone(),
        step: format!("map the DMA arena at IOVA {ARENA_IOVA:#x}"),
        source,
    })?;
    f.dma_mapped = true;
    f.enable_msix(vectors)?;
    info!(
        bdf = %f.bdf, group, bar0 = f.bar0.size, mapped = f.bar0.mapped, arena = arena_len, vectors = f.irqs.len(),
        "opened PCI function through VFIO"
    );
    Ok(Arc::new(f))
}

fn check_arena_len(len: usize) -> Result<(), VfioError> {
    let why = if len == 0 {
        "empty".to_string()
    } else if !len.is_multiple_of(PAGE) {
        "not a multiple of 4 KiB".to_string()
    } else if len > MAX_ARENA {
        format!("more than {MAX_ARENA} bytes fit between IOVA {ARENA_IOVA:#x} and the MSI window")
    } else {
        return Ok(());
    };
    Err(VfioError::BadArena { len, why })
}

/// Maps BAR0 (or the mappable area at its start, if the region is sparse), or leaves it to
/// region reads and writes if it cannot be mapped.
fn map_bar0(bdf: &str, device: &VfioDevice) -> Result<Bar0, VfioError> {
    let idx = VFIO_PCI_BAR0_REGION_INDEX;
    let (flags, size, offset) =
        (device.get_region_flags(idx), device.get_region_size(idx), device.get_region_offset(idx));
    let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    if size < 0x1008 || flags & rw != rw {
        return Err(VfioError::Bar0 {
            bdf: bdf.into(),
            why: format!("is not a readable and writable register BAR (size {size:#x}, flags {flags:#x})"),
        });
    }
    let mut bar = Bar0 { ptr: std::ptr::null_mut(), mapped: 0, size, offset };
    if flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
        warn!(bdf, "BAR0 cannot be mapped: every register access and doorbell is a system call");
        return Ok(bar);
    }
    // A sparse region maps only its areas: the one at offset 0 holds the registers and, on
    // every NVMe function seen so far, the doorbells (the MSI-X table sits after them).
    let len = device
        .get_region_caps(idx)
        .iter()
        .find_map(|c| match c {
            VfioRegionInfoCap::SparseMmap(s) => Some(s.areas.iter().find(|a| a.offset == 0).map_or(0, |a| a.size)),
            _ => None,
        })
        .unwrap_or(size);
    if len == 0 {
        warn!(bdf, "BAR0 has no mappable area at its start: register accesses are system calls");
        return Ok(bar);
    }
    // SAFETY: maps `len` bytes of the device fd at BAR0's region offset, as VFIO offers; the
    // mapping is ours until Drop.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            device.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(VfioError::Os { bdf: bdf.into(), step: "map BAR0", source: std::io::Error::last_os_error() });
    }
    bar.ptr = p as *mut u8;
    bar.mapped = len as usize;
    Ok(bar)
}

impl VfioPciFunction {
    /// The function's PCI address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// Its IOMMU group.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// How many MSI-X vectors have an eventfd.
    pub fn vectors(&self) -> u16 {
        self.irqs.len() as u16
    }

    fn config_read16(&self, off: u64) -> Result<u16, VfioError> {
        let base = self.device.get_region_offset(VFIO_PCI_CONFIG_REGION_INDEX);
        let mut b = [0u8; 2];
        self.dev_file.read_exact_at(&mut b, base + off).map_err(|source| VfioError::Os {
            bdf: self.bdf.clone(),
            step: "read PCI config space",
            source,
        })?;
        Ok(u16::from_le_bytes(b))
    }

    fn config_write16(&self, off: u64, v: u16) -> Result<(), VfioError> {
        let base = self.device.get_region_offset(VFIO_PCI_CONFIG_REGION_INDEX);
        self.dev_file.write_all_at(&v.to_le_bytes(), base + off).map_err(|source| VfioError::Os {
            bdf: self.bdf.clone(),
            step: "write PCI config space",
            source,
        })
    }

    /// Lets the function reach memory (vfio-pci enables the device, not its DMA).
    fn enable_bus_master(&self) -> Result<(), VfioError> {
        let cmd = self.config_read16(PCI_COMMAND)?;
        self.config_write16(PCI_COMMAND, cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)?;
        let now = self.config_read16(PCI_COMMAND)?;
        if now & PCI_COMMAND_MASTER == 0 {
            return Err(VfioError::Bar0 {
                bdf: self.bdf.clone(),
                why: format!("bus mastering did not turn on (command {now:#x})"),
            });
        }
        Ok(())
    }

    fn enable_msix(&mut self, vectors: u16) -> Result<(), VfioError> {
        if vectors == 0 {
            return Ok(());
        }
        let have = self.device.get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX).map_or(0, |i| i.count);
        let n = u32::from(vectors).min(have);
        if n == 0 {
            warn!(bdf = %self.bdf, "the function has no MSI-X: the driver polls");
            return Ok(());
        }
        let mut fds = Vec::with_capacity(n as usize);
        for _ in 0..n {
            fds.push(EventFd::new(EFD_NONBLOCK).map_err(|source| VfioError::Os {
                bdf: self.bdf.clone(),
                step: "create an MSI-X eventfd",
                source,
            })?);
        }
        self.device.enable_msix(fds.iter().collect()).map_err(|source| VfioError::Vfio {
            bdf: self.bdf.clone(),
            step: format!("enable {n} MSI-X vectors (of {have})"),
            source,
        })?;
        self.irqs = fds;
        Ok(())
    }
}

impl Drop for VfioPciFunction {
    fn drop(&mut self) {
        if !self.irqs.is_empty() {
            if let Err(e) = self.device.disable_msix() {
                warn!(bdf = %self.bdf, "disabling MSI-X: {e}");
            }
        }
        // No more DMA from here on, whatever state the driver left the controller in.
        if let Ok(cmd) = self.config_read16(PCI_COMMAND) {
            let _ = self.config_write16(PCI_COMMAND, cmd & !PCI_COMMAND_MASTER);
        }
        if self.dma_mapped {
            if let Err(e) = self.container.vfio_dma_unmap(ARENA_IOVA, self.arena.len) {
                warn!(bdf = %self.bdf, "unmapping the DMA arena: {e}");
            }
        }
        // BAR0's mapping goes next (the first field), before the device fd closes: a
        // mapping left behind would keep the device open and the group bound to the container.
        debug!(bdf = %self.bdf, "closed PCI function");
    }
}

impl PciFunction for VfioPciFunction {
    fn arena(&self) -> DmaArena {
        DmaArena { vaddr: self.arena.ptr, iova: ARENA_IOVA, len: self.arena.len }
    }

    /// MMIO: done at once. 64-bit registers are accessed as two 32-bit halves, low first, as
    /// Linux's `lo_hi_readq`/`lo_hi_writeq` (not every controller takes 8-byte accesses).
    fn start_reg(&self, access: RegAccess) -> Result<RegOp, HostError> {
        let dev = &self.dev_file;
        let v = match access {
            RegAccess::Read32(off) => u64::from(self.bar0.read32(dev, off)?),
            RegAccess::Read64(off) => {
                self.bar0.check(off, 8)?;
                let lo = self.bar0.read32(dev, off)?;
                let hi = self.bar0.read32(dev, off + 4)?;
                u64::from(lo) | (u64::from(hi) << 32)
            }
            RegAccess::Write32(off, v) => {
                self.bar0.write32(dev, off, v)?;
                0
            }
            RegAccess::Write64(off, v) => {
                self.bar0.check(off, 8)?;
                self.bar0.write32(dev, off, v as u32)?;
                self.bar0.write32(dev, off + 4, (v >> 32) as u32)?;
                0
            }
        };
        Ok(RegOp::Done(v))
    }

    fn poll_reg(&self, ticket: u64) -> Result<Option<u64>, HostError> {
        Err(HostError::Invalid(format!("no register access {ticket} is pending: VFIO accesses finish at once")))
    }

    /// A volatile store to BAR0. Queue entries written before it must reach memory first: on
    /// x86 stores are not reordered with other stores, so a compiler fence is enough; other
    /// architectures get a full fence.
    fn ring(&self, offset: u32, value: u32) -> Result<(), HostError> {
        #[cfg(target_arch = "x86_64")]
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(target_arch = "x86_64"))]
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.bar0.write32(&self.dev_file, offset, value)
    }

    fn irq_fd(&self, vector: u16) -> Option<RawFd> {
        self.irqs.get(usize::from(vector)).map(|e| e.as_raw_fd())
    }

    fn describe(&self) -> String {
        format!("PCIe {} (VFIO group {})", self.bdf, self.group)
    }
}

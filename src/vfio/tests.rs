//! What [`open_pci`] refuses before any VFIO ioctl, on a made-up sysfs tree (no IOMMU here),
//! and the host's own functions (none is on vfio-pci).

use super::*;
use std::os::unix::fs::symlink;

/// A scratch sysfs: `devices/BDF` entries with optional `driver` and `iommu_group` links, and
/// `groups/N/devices/BDF` links back to them.
struct FakeSys(PathBuf);

impl FakeSys {
    fn new(tag: &str) -> FakeSys {
        let root = std::env::temp_dir().join(format!("ferry-vfio-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("devices")).unwrap();
        std::fs::create_dir_all(root.join("drivers")).unwrap();
        FakeSys(root)
    }

    fn devices(&self) -> PathBuf {
        self.0.join("devices")
    }

    /// Function `bdf` of PCI class `class`, on `driver`, in `group`.
    fn function(&self, bdf: &str, class: &str, driver: Option<&str>, group: Option<u32>) {
        let dev = self.devices().join(bdf);
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("class"), format!("{class}\n")).unwrap();
        if let Some(d) = driver {
            let drv = self.0.join("drivers").join(d);
            std::fs::create_dir_all(&drv).unwrap();
            symlink(&drv, dev.join("driver")).unwrap();
        }
        if let Some(g) = group {
            let members = self.0.join(format!("groups/{g}/devices"));
            std::fs::create_dir_all(&members).unwrap();
            symlink(self.0.join(format!("groups/{g}")), dev.join("iommu_group")).unwrap();
            symlink(&dev, members.join(bdf)).unwrap();
        }
    }
}

impl Drop for FakeSys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const NVME: &str = "0x010802";

#[test]
fn addresses_are_parsed_strictly() {
    assert_eq!(parse_bdf("0000:00:04.0").unwrap(), "0000:00:04.0");
    assert_eq!(parse_bdf("00:04.0").unwrap(), "0000:00:04.0");
    assert_eq!(parse_bdf("0000:AF:1F.7").unwrap(), "0000:af:1f.7");
    for bad in [
        "",
        "0000:00:04",
        "00:04",
        "0000:00:20.0",
        "0000:00:04.8",
        "0:00:04.0",
        "0000:0:04.0",
        "0000:00:04.0 ",
        "../../0:00:04.0",
        "0000:00:04.0/..",
        "x000:00:04.0",
        "0000:00:00:04.0",
        "0000:00:04.00",
    ] {
        assert!(matches!(parse_bdf(bad), Err(VfioError::BadAddress(_))), "{bad:?} accepted");
    }
}

#[test]
fn arena_lengths_are_checked_before_anything_else() {
    for (len, want) in [(0, "empty"), (4095, "multiple of 4 KiB"), (MAX_ARENA + PAGE, "MSI window")] {
        let e = open_pci("0000:ff:1f.7", len, 1).err().expect("refused");
        assert!(matches!(e, VfioError::BadArena { .. }), "{e}");
        assert!(e.to_string().contains(want), "{len}: {e}");
    }
    check_arena_len(MAX_ARENA).unwrap();
    assert!(ARENA_IOVA + MAX_ARENA as u64 <= MSI_WINDOW);
}

#[test]
fn a_missing_function_is_named() {
    let e = open_pci("0000:ff:1f.7", 1 << 20, 1).err().expect("no such function");
    assert!(matches!(e, VfioError::NoDevice { .. }), "{e}");
    assert!(e.to_string().contains("no PCI function 0000:ff:1f.7"), "{e}");
    let e = open_pci("nvme0", 1 << 20, 1).err().unwrap();
    assert!(matches!(e, VfioError::BadAddress(_)), "{e}");
}

#[test]
fn each_unusable_function_says_why() {
    let sys = FakeSys::new("checks");
    sys.function("0000:00:02.0", NVME, Some("nvme"), None);
    sys.function("0000:00:03.0", NVME, Some("nvme"), Some(3));
    sys.function("0000:00:04.0", NVME, None, Some(4));
    // Group 5: the NVMe function on vfio-pci beside a function still on its own driver.
    sys.function("0000:00:05.0", NVME, Some("vfio-pci"), Some(5));
    sys.function("0000:00:05.1", "0x020000", Some("e1000e"), Some(5));
    // Group 6: beside a bridge on pcieport and an unbound function, which are fine.
    sys.function("0000:00:06.0", NVME, Some("vfio-pci"), Some(6));
    sys.function("0000:00:06.1", "0x060400", Some("pcieport"), Some(6));
    sys.function("0000:00:06.2", "0x020000", None, Some(6));
    let open = |bdf| open_pci_in(&sys.devices(), bdf, 1 << 20, 4).err().expect("refused");

    let e = open("0000:00:02.0");
    assert!(matches!(e, VfioError::NoIommuGroup { .. }), "{e}");
    assert!(e.to_string().contains("intel_iommu=on"), "{e}");
    let e = open("00:03.0");
    assert!(matches!(&e, VfioError::NotBound { driver, .. } if driver == "nvme"), "{e}");
    assert!(e.to_string().contains("scripts/vfio-bind.sh 0000:00:03.0"), "{e}");
    let e = open("0000:00:04.0");
    assert!(matches!(&e, VfioError::NotBound { driver, .. } if driver == "no driver"), "{e}");
    let e = open("0000:00:05.0");
    assert!(
        matches!(&e, VfioError::GroupNotViable { group: 5, other, driver, .. } if other == "0000:00:05.1" && driver == "e1000e"),
        "{e}"
    );
    // Group 6 passes the checks; what fails next is VFIO itself, whose step is named.
    let (_, group) = check_function(&sys.devices(), "0000:00:06.0").unwrap();
    assert_eq!(group, 6);
    if !Path::new("/dev/vfio/vfio").exists() {
        let e = open("0000:00:06.0");
        assert!(matches!(&e, VfioError::Vfio { step, .. } if step.contains("/dev/vfio/vfio")), "{e}");
    }
}

/// The host's own functions, whatever they are: none is usable without VFIO, and each is
/// refused for its own reason, with nothing left open.
#[test]
fn the_hosts_functions_are_refused_with_a_reason() {
    let Ok(entries) = std::fs::read_dir(SYS_PCI) else { return };
    for e in entries.flatten() {
        let bdf = e.file_name().to_string_lossy().into_owned();
        if driver_of(&e.path()).as_deref() == Some("vfio-pci") {
            continue; // someone's real VFIO setup: not ours to open
        }
        let err = open_pci(&bdf, 1 << 20, 1).err().unwrap_or_else(|| panic!("{bdf} opened"));
        assert!(matches!(err, VfioError::NoIommuGroup { .. } | VfioError::NotBound { .. }), "{bdf}: {err}");
    }
}

#[test]
fn memlock_is_raised_or_explained() {
    // As root (tests run as root) it is raised or CAP_IPC_LOCK covers it; either way the
    // arena's need passes.
    ensure_memlock("0000:00:04.0", 64 << 20).unwrap();
    let e = VfioError::Memlock { bdf: "0000:00:04.0".into(), limit: 8 << 20, need: 64 << 20 };
    assert!(e.to_string().contains("ulimit -l"), "{e}");
}

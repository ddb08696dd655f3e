//! The bdev of one namespace.

use super::channel::{CtrlrChannel, NsChannel};
use super::ctrlr::NvmeCtrlr;
use crate::bdev::{BackendChannel, Bdev, BdevBackend, BdevError, IoType};
use crate::framework;
use serde_json::{json, Value};
use std::sync::Arc;

/// One namespace of an attached controller.
pub struct NsBackend {
    pub ctrlr: Arc<NvmeCtrlr>,
    pub nsid: u32,
}

impl BdevBackend for NsBackend {
    fn module(&self) -> &'static str {
        "nvme"
    }

    fn product_name(&self) -> &'static str {
        "NVMe disk"
    }

    fn supports(&self, io_type: IoType) -> bool {
        let d = &self.ctrlr.shared.snapshot().data;
        match io_type {
            IoType::Read | IoType::Write | IoType::Flush | IoType::Reset => true,
            IoType::Unmap => d.dsm(),
            IoType::WriteZeroes => d.write_zeroes(),
        }
    }

    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        let ctrlr = self.ctrlr.clone();
        let ch = framework::get_channel(self.ctrlr.io_device, move || Ok::<_, BdevError>(CtrlrChannel::new(ctrlr)))?;
        Ok(Box::new(NsChannel { ch, nsid: self.nsid }))
    }

    fn config(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        // One attach makes every namespace's bdev: it is saved once, with the first.
        (self.nsid == self.ctrlr.first_nsid).then(|| ("bdev_nvme_attach_controller", self.ctrlr.params.saved()))
    }

    fn driver_specific(&self) -> Option<(&'static str, Value)> {
        let s = self.ctrlr.shared.snapshot();
        Some((
            "nvme",
            json!([{
                "trid": self.ctrlr.params.trid(),
                "ctrlr_data": {
                    "cntlid": s.cntlid,
                    "vendor_id": format!("{:#06x}", s.data.vid),
                    "model_number": s.data.model,
                    "serial_number": s.data.serial,
                    "firmware_revision": s.data.firmware,
                    "subnqn": s.data.subnqn,
                    // SPDK's four OACS bits (Identify Controller byte 256).
                    "oacs": {
                        "security": s.data.oacs & 1,
                        "format": (s.data.oacs >> 1) & 1,
                        "firmware": (s.data.oacs >> 2) & 1,
                        "ns_manage": (s.data.oacs >> 3) & 1,
                    },
                },
                "ns_data": { "id": self.nsid },
            }]),
        ))
    }

    fn write_cache(&self) -> bool {
        self.ctrlr.shared.snapshot().data.vwc
    }
}

//! A SCSI target device and its LUNs.
/// A target (being written).
pub struct ScsiTarget;

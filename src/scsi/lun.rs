//! A logical unit on a bdev.
/// A logical unit (being written).
pub struct ScsiLun;
